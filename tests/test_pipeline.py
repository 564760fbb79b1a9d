"""The pipeline runner executes notebooks with papermill and fails loudly, naming the copy."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from rlff_utils import pipeline, runs

ROOT = Path(__file__).resolve().parents[1]


def test_notebooks_are_committed_clean_and_parameterised():
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), path.name
        assert "params_file" in code[0].source and "overrides" in code[0].source
        assert not any(c.outputs or c.execution_count for c in code), f"{path.name} has outputs"


def test_select_stages():
    stages = pipeline.discover_stages(ROOT / "notebooks")
    assert stages[0].number == "01"
    assert [s.number for s in pipeline.select_stages(stages, only=["01"])] == ["01"]
    with pytest.raises(pipeline.PipelineError, match="no notebook numbered '99'"):
        pipeline.select_stages(stages, only=["99"])


def test_parse_set_keeps_types():
    assert pipeline.parse_set(["simulation.num_candidates=2", "data.datasets=[esconv]"]) == {
        "simulation.num_candidates": 2, "data.datasets": ["esconv"]}


@pytest.mark.slow
def test_notebook_01_runs_from_anywhere_and_refuses_stale_results(tmp_path, data_dir, project_root):
    """A params file outside the project, run from another directory with a relative data
    folder: the project's notebooks run, every path resolves against where the user ran."""
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "run.yaml").write_text((project_root / "params" / "ci.yaml").read_text())
    (tmp_path / "data").symlink_to(data_dir)
    env = {**os.environ, "RLFF_DATA_DIR": "data"}
    cmd = [sys.executable, "-m", "rlff_utils.pipeline", "exp/run.yaml", "--only", "01"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "outputs" / "run"
    out = run / "01_data_prep.ipynb"
    assert out.exists() and out.with_suffix(".html").exists() and (run / "data" / "contexts").is_dir()
    assert "IProgress not found" not in out.read_text()  # headless kernels: no ipywidgets hint
    res = json.loads((run / "resources.json").read_text())
    # the kernel loads torch, pandas and the data: more than a bare interpreter, far below the budget
    assert res["notebooks"] == ["01_data_prep"] and 100 < res["peak_kernel_rss_mib"] < 8 * 1024
    record = json.loads((run / "data" / "stage.json").read_text())
    assert record["complete"] and record["settings"]["data"]["esconv_dir"] == str((tmp_path / "data" / "esconv").resolve())

    stale = subprocess.run([*cmd, "--set", "data.max_contexts=5"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert stale.returncode == 1 and "data.max_contexts: 12 -> 5" in stale.stderr and "--force" in stale.stderr
    assert "[1/1]" not in stale.stdout  # refused before any kernel started
    forced = subprocess.run([*cmd, "--set", "data.max_contexts=5", "--force"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert json.loads((run / "data" / "stage.json").read_text())["settings"]["data"]["max_contexts"] == 5


def test_failing_notebook_names_the_executed_copy(tmp_path, ci_params):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell('params_file = ""\noverrides = {}')
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell("raise RuntimeError('stage exploded')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbdir / "01_boom.ipynb")
    with pytest.raises(pipeline.PipelineError) as err:
        pipeline.run_pipeline(ci_params.source, overrides={"output_root": str(tmp_path / "o")}, notebooks_dir=nbdir, html=False)
    assert "stage exploded" in str(err.value) and str(tmp_path / "o" / "ci" / "01_boom.ipynb") in str(err.value)


def test_cli_rejects_bad_params_before_running(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("simulation: {max_turns: 0}")
    r = subprocess.run([sys.executable, "-m", "rlff_utils.pipeline", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "simulation.max_turns" in r.stderr and "[1/" not in r.stdout


@pytest.mark.slow
def test_all_notebooks_run_on_ci_params(ci_params, tmp_path):
    """The whole method end to end on the tiny model: every stage's artefacts and the summary."""
    root = tmp_path / "outputs"
    executed = pipeline.run_pipeline(ci_params.source, overrides={"output_root": str(root)})
    run = root / "ci"
    assert [p.name for p in executed] == [f"{s.name}.ipynb" for s in pipeline.discover_stages(ROOT / "notebooks")]
    assert len(executed) == 6 and all(p.with_suffix(".html").exists() for p in executed)
    lay = runs.RunLayout(run)
    rows = [json.loads(line) for line in lay.reward_dataset.read_text().splitlines() if line.strip()]
    assert rows and all(math.isfinite(r["r_fut"]) and r["label"] in (0, 1) for r in rows)  # every judged candidate
    for variant in ci_params.reward_model.variants:
        m = json.loads(lay.rm_metrics(variant).read_text())
        assert m["variant"] == variant and m["n_test"] > 0, variant
    assert (lay.adapter / "adapter_config.json").exists()
    curves = pd.read_csv(lay.grpo_curves)
    assert list(curves["step"]) == list(range(1, ci_params.grpo.config.max_steps + 1))
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["evaluation"]) == {"vanilla", "chain-of-strategy", "base-reasoning", "rlff-esc"}
    cap = ci_params.evaluation.max_turns
    for system in summary["evaluation"]:
        v = json.loads(lay.system_metrics(system).read_text())  # the numbers with their intervals
        assert v["cases"] == summary["evaluation"][system]["cases"] == ci_params.evaluation.num_cases, system
        (sr_lo, sr_hi), (at_lo, at_hi) = v["SR_ci95"], v["AT_ci95"]
        assert 0 <= sr_lo <= v["SR"] <= sr_hi <= 1 and 1 <= at_lo <= v["AT"] <= at_hi <= cap, (system, v)
    assert (run / "report" / "main_results.md").read_text().count("| ci ") == 4
    _check_report(run)


def _check_report(run: Path) -> None:
    """The shareable renderings: no code, no stderr, math drawn offline, figures embedded, the
    reward curve in 06, and an index that links the six pages and carries the run card."""
    import re

    pages = sorted((run / "report").glob("[0-9][0-9]_*.html"))
    assert [p.stem for p in pages] == [s.name for s in pipeline.discover_stages(ROOT / "notebooks")]
    for page in pages:
        html = page.read_text()
        assert not re.search(r'class="[^"]*jp-InputArea-editor', html), f"{page.name}: a code cell's input"
        assert 'data-mime-type="application/vnd.jupyter.stderr"' not in html, page.name
        assert "jp-OutputArea-output" in html or page.stem == "01_data_prep"
        text = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S))
        assert "$$" not in text, page.name
        assert not re.search(r"<img[^>]+src=['\"](?!data:)", html), f"{page.name}: a figure is not embedded"
        assert "cdnjs" not in html and "cdn.jsdelivr" not in html, page.name
    analysis_page = (run / "report" / "06_analysis.html").read_text()
    assert "reward" in analysis_page.lower() and "data:image/png;base64" in analysis_page
    index = (run / "report" / "index.html").read_text()
    for page in pages:
        assert f"href='{page.name}'" in index
    for field in ("params file", "params sha256", "git commit", "date", "device", "packages", "wall time",
                  "a test run"):
        assert field in index, field


def test_a_stage_about_to_grow_under_later_results_is_refused_before_any_kernel(tmp_path, project_root):
    """Growing the simulation (runs.SELECTION) while the reward model holds results from its
    smaller version: refused before any notebook runs, with the two commands that do it; grown
    alone (--only 02), the check lets it through."""
    from rlff_utils.params import load_params
    from rlff_utils.pipeline import _refuse_growth_under_results, discover_stages, run_pipeline, select_stages

    ci = project_root / "params" / "ci.yaml"
    params = load_params(ci, {"output_root": str(tmp_path)})
    for stage in (runs.SIMULATION, runs.REWARD_MODEL):
        with runs.begin_stage(params, stage, require_upstream=False):
            pass
    grow = {"output_root": str(tmp_path), "simulation.num_candidates": 3}
    with pytest.raises(runs.StaleStageError,
                       match=r"'simulation' would grow \(simulation.num_candidates: 2 -> 3\), and 03_reward_model .*"
                             r"--only 02.*--from 03 --force"):
        run_pipeline(ci, start="02", overrides=grow, html=False)
    assert not list((tmp_path / params.run_name).glob("*.ipynb"))  # no notebook ran
    grown = load_params(ci, grow)
    stages = discover_stages(project_root / "notebooks")
    _refuse_growth_under_results(grown, runs.SIMULATION, select_stages(stages, only=["02"]))
    runs.check_stage(grown, runs.SIMULATION, reopen=True)  # a growth, not staleness, for the stage itself
    with pytest.raises(runs.StaleStageError, match="simulation.num_candidates: 2 -> 3"):
        runs.check_stage(grown, runs.SIMULATION)  # read as finished results, it is another selection
