"""Report renderings: no code, no stderr, math drawn offline, images embedded, a run card."""

from __future__ import annotations

import base64
import re

import nbformat
import pytest

from rlff_utils import report, runs
from rlff_utils.params import load_params

PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082")).decode()


def _executed_notebook(path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('params_file = "../params/smoke.yaml"\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell('params_file = "/somewhere/outputs/ci/params.yaml"\noverrides = {}')
    injected.metadata["tags"] = ["injected-parameters"]
    md = nbformat.v4.new_markdown_cell("The reward $$R_\\text{fut}(s, a) = v_\\text{end} + \\lambda\\,\\frac{T - t}{T}$$ "
                                       "with $\\delta$ and code `a $b$ c`.")
    code = nbformat.v4.new_code_cell("secret_source_line = 1")
    code.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="Loading weights: 100%|####| 30/30\n"),
        nbformat.v4.new_output("stream", name="stdout", text="kept line\n"),
        nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"}),
    ]
    nb.cells = [params, injected, md, code]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_report_page_has_no_code_no_stderr_and_offline_math(tmp_path):
    nb = _executed_notebook(tmp_path / "02_simulation.ipynb")
    full, page = report.render_notebook(nb, tmp_path / "report")
    text = page.read_text()
    assert "secret_source_line" not in text and "Loading weights" not in text and "kept line" in text
    assert "$$" not in re.sub(r"<[^>]+>", "", text) and "<math" in text
    assert "<mtext>fut</mtext>" in text  # the MathML arrives whole, not taken apart by the Markdown renderer
    assert "cdnjs" not in text and "mathjax" not in text.lower()  # nothing fetched from a CDN
    assert f"data:image/png;base64,{PNG[:20]}" in text
    assert "params.yaml" in text and "/somewhere" not in text  # parameters once, as a table, no machine path
    assert text.count("overrides") == 1
    # the full page keeps the code for the lab
    assert "secret_source_line" in full.read_text() and "<math" in full.read_text()


def test_math_in_code_is_left_alone():
    out = report.math_to_mathml("see `x = $y$` and $z$")
    assert "`x = $y$`" in out and out.count("<math") == 1


def test_index_links_pages_and_carries_the_run_card(tmp_path, project_root, data_dir):
    p = load_params(project_root / "params" / "ci.yaml", {"output_root": str(tmp_path / "outputs")})
    lay = runs.layout(p)
    lay.root.mkdir(parents=True)
    for name in ("01_data_prep", "06_analysis"):
        report.render_notebook(_executed_notebook(lay.notebook(name)), lay.report)
    for system, sr in (("rlff-esc", 0.5), ("vanilla", 0.25)):
        runs.write_json({"cases": 4, "SR": sr, "SR_ci95": [0.0, 1.0], "AT": 2.0, "AT_ci95": [1.5, 2.0]},
                        lay.system_metrics(system))
    runs.write_json({"01_data_prep": 9.0}, lay.timing)
    index = report.write_index(p)
    text = index.read_text()
    for page in ("01_data_prep.html", "06_analysis.html"):
        assert f"href='{page}'" in text
    for field in ("params file", "git commit", "date", "device", "packages", "torch"):
        assert field in text, field
    assert "a test run" in text  # purpose: test -> banner
    assert "SR 50.0% [0.0, 100.0]" in text and "+25.0 points" in text
    card = runs.read_json(lay.report / "run_card.json")
    assert card["params_file"] == "params/ci.yaml" and card["headline"]["best_baseline"] == "vanilla"


def test_run_card_sets_the_cost_estimate_beside_the_recorded_counts(tmp_path, project_root, data_dir):
    from rlff_utils import cost

    p = load_params(project_root / "params" / "ci.yaml", {"output_root": str(tmp_path / "outputs")})
    lay = runs.layout(p)
    lay.root.mkdir(parents=True)
    estimate = {(r.stage, r.role): r for r in cost.estimate(p)}
    est = estimate[(runs.EVALUATION, "policy")]
    runs.write_json({"policy": {"requests": est.requests - 1, "sequences": est.sequences - 1, "prompt_tokens": 1234,
                                "generated_tokens": est.generated_tokens // 4}}, lay.evaluation_usage)
    runs.write_json(cost.cost_record(p), lay.root / "cost.json")
    index = report.write_index(p).read_text()
    card = runs.read_json(lay.report / "run_card.json")
    rows = {(r["stage"], r["role"]): r for r in card["model_use"]}
    assert set(rows) == set(estimate)   # every estimated row, recorded or not
    row = rows[(runs.EVALUATION, "policy")]
    assert row["estimated"]["requests"] == est.requests and row["recorded"]["requests"] == est.requests - 1
    assert row["recorded"]["prompt_tokens"] == 1234
    assert row["generated_share_of_estimate"] == pytest.approx((est.generated_tokens // 4) / est.generated_tokens)
    assert rows[(runs.SIMULATION, "policy")]["recorded"] is None   # not run: nothing recorded
    assert "Model use: estimated and recorded" in index and "1,234" in index and "25%" in index
