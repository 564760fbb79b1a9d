"""Sweeps: expansion into runs, the shared-stage plan, the executors (local and submitit's local
one), resume and refusal of stale runs.

The runs execute through the real runner (``python -m rlff_utils.pipeline`` per job, papermill,
``--reuse-from``) on six stand-in notebooks: each writes its stage's record with the project's own
``runs.begin_stage`` from the resolved params the runner wrote, and appends (run, stage) to a
ledger, so what was computed where is read from the stage records and the ledger, without
loading a model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import pytest
import yaml

from rlff_utils import runs, sweep

ROOT = Path(__file__).resolve().parents[1]

_STAGE_CELL = '''
import json, yaml
from pathlib import Path
from rlff_utils import runs
class P:  # the resolved run as the stage record functions read it
    def __init__(self, d):
        self.d, self.run_name, self.source = d, d["run_name"], d.get("source")
        self.run_dir = Path(d["output_root"]) / d["run_name"]
    def model_dump(self, mode=None):
        return self.d
params = P(yaml.safe_load(Path(params_file).read_text()))
stage = {stage!r}
if stage != runs.REPORT:
    with runs.begin_stage(params, stage):
        (runs.layout(params).stage(stage) / "result.txt").write_text("done")
    with open({ledger!r}, "a") as f:
        f.write(json.dumps([params.run_name, stage]) + "\\n")
'''


def _notebooks(folder: Path, ledger: Path) -> Path:
    folder.mkdir()
    for number, stage in runs.NOTEBOOK_STAGE.items():
        nb = nbformat.v4.new_notebook()
        p = nbformat.v4.new_code_cell('params_file = ""\noverrides = {}')
        p.metadata["tags"] = ["parameters"]
        nb.cells = [p, nbformat.v4.new_code_cell(_STAGE_CELL.format(stage=stage, ledger=str(ledger)))]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / f"{number}_{stage}.ipynb")
    return folder


def _sweep_file(tmp_path: Path, **extra) -> Path:
    spec = {
        "name": "abl",
        "base": str(ROOT / "params" / "ci.yaml"),
        "output_root": str(tmp_path / "outputs"),
        "arms": [{"name": "alpha0", "set": {"grpo.format_weight": 0.0}},
                 {"name": "alpha1", "set": {"grpo.format_weight": 1.0}}],
        "seeds": {"key": "grpo.seed", "values": [0, 1]},
        "aggregate": {"reference": "alpha0"},
        **extra,
    }
    path = tmp_path / "abl.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _ledger(path: Path) -> list[tuple[str, str]]:
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()] if path.is_file() else []


def test_expansion_names_runs_and_crosses_arms_grid_and_seeds(tmp_path, data_dir):
    path = _sweep_file(tmp_path, grid={"grpo.lora_r": [4, 8]})
    specs = sweep.expand(sweep.read_sweep(path), path)
    assert [s.name for s in specs][:3] == ["abl-alpha0-lora_r4-s0", "abl-alpha0-lora_r4-s1", "abl-alpha0-lora_r8-s0"]
    assert len(specs) == 2 * 2 * 2
    s = specs[-1]
    assert s.arm == "alpha1-lora_r8" and s.seed == 1
    assert s.overrides["grpo.seed"] == 1 and s.overrides["grpo.format_weight"] == 1.0 and s.overrides["grpo.lora_r"] == 8


def test_bad_sweep_files_are_refused_with_the_field_named(tmp_path, data_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": "x.yaml", "seeds": [0, 0]}))
    with pytest.raises(sweep.SweepError, match="seeds.values.*listed twice"):
        sweep.read_sweep(bad)
    bad.write_text(yaml.safe_dump({"base": "x.yaml", "seeds": [0], "arms": [{"name": "a"}], "aggregate": {"reference": "b"}}))
    with pytest.raises(sweep.SweepError, match="reference 'b' is not an arm"):
        sweep.read_sweep(bad)
    # arms that differ only in a field the stage records leave out would copy each other
    path = _sweep_file(tmp_path, arms=[{"name": "a"}, {"name": "b", "set": {"grpo.trainer.max_steps": 3}}],
                       seeds=[0], aggregate={})
    with pytest.raises(sweep.SweepError, match="abl-a-s0 and abl-b-s0 would compute the same.*grpo.trainer.max_steps"):
        sweep.plan_sweep(path, check_files=False)
    path = _sweep_file(tmp_path, grid={"grpo.no_such_knob": [1]})
    with pytest.raises(sweep.SweepError, match="(?s)run abl-alpha0-no_such_knob1-s0.*grpo.no_such_knob: unknown key"):
        sweep.plan_sweep(path, check_files=False)


def test_plan_shares_data_simulation_and_reward_model_across_grpo_arms_and_seeds(tmp_path, data_dir):
    plan = sweep.plan_sweep(_sweep_file(tmp_path))
    leader, *others = plan.runs
    assert leader.name == "abl-alpha0-s0" and leader.source is None
    assert leader.shared_computes == [runs.DATA, runs.SIMULATION, runs.REWARD_MODEL]
    for run in others:
        assert run.source == leader.name and run.reused == [runs.DATA, runs.SIMULATION, runs.REWARD_MODEL]
        assert run.computes == [runs.POLICY, runs.EVALUATION, runs.REPORT]
    assert plan.sweep.seeds.varies() == [runs.POLICY, runs.EVALUATION]
    # the sweep's estimate counts the shared simulation once, GRPO and the evaluation per run
    from rlff_utils import cost

    text = cost.sweep_estimate_text(plan)
    sim_user = next(line for line in text.splitlines() if line.split()[:2] == ["simulation", "user_sim"])
    assert "runs)" not in sim_user and f"{48:,}" in sim_user      # 12 contexts x 2 candidates x 2 turns, once
    grpo = next(line for line in text.splitlines() if line.split()[:3] == ["policy", "policy", "(4"])
    assert f"{4 * 8:,}" in grpo                                      # 8 completions in each of 4 runs
    # with `seed` itself as the seed key, seeds share nothing; arms of one seed still share 01-03
    plan = sweep.plan_sweep(_sweep_file(tmp_path, seeds=[0, 1]))
    by = {r.name: r for r in plan.runs}
    assert by["abl-alpha0-s1"].source is None and by["abl-alpha1-s1"].source == "abl-alpha0-s1"
    waves = sweep.build_jobs(plan)
    assert [[j.name for j in w] for w in waves[:-1]] == [["shared:abl-alpha0-s0", "shared:abl-alpha0-s1"]]
    assert "--only=01,02,03" in waves[0][0].argv


@pytest.mark.slow
def test_local_sweep_computes_shared_stages_once_resumes_and_refuses_stale(tmp_path, data_dir, capsys):
    ledger = tmp_path / "ledger.jsonl"
    nbdir = _notebooks(tmp_path / "nb", ledger)
    path = _sweep_file(tmp_path)
    plan, results = sweep.run_sweep(path, "local", notebooks_dir=nbdir, aggregate=False)
    assert [r.status for r in results] == ["ok"] * 5, [(r.job, r.log) for r in results]
    computed = _ledger(ledger)
    for stage in (runs.DATA, runs.SIMULATION, runs.REWARD_MODEL):
        assert [run for run, s in computed if s == stage] == ["abl-alpha0-s0"]  # once, in the leader
    assert sorted(run for run, s in computed if s == runs.POLICY) == sorted(r.name for r in plan.runs)
    out = tmp_path / "outputs"
    for run in plan.runs[1:]:  # the others' shared stages are copies of the leader's, by the stage records
        for stage in (runs.DATA, runs.SIMULATION, runs.REWARD_MODEL):
            record = runs.read_record(out / run.name, stage)
            assert record["complete"] and record["copied_from"] == str((out / "abl-alpha0-s0").resolve())
        assert "copied_from" not in runs.read_record(out / run.name, runs.POLICY)
        assert runs.read_record(out / run.name, runs.POLICY)["settings"]["grpo"]["seed"] == run.spec.seed
        record = json.loads((out / run.name / "sweep.json").read_text())
        assert record["seed_key"] == "grpo.seed" and record["seed_varies"] == ["policy", "evaluation"]
        assert record["reuse_from"] == "abl-alpha0-s0"
    summary = json.loads((out / "sweeps" / "abl" / "sweep.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["ok"] * 4
    assert (out / "sweeps" / "abl" / "logs" / "abl-alpha1-s1.log").read_text().rstrip().endswith("exit status 0")

    # a rerun resumes: every run is finished, nothing is computed again
    plan, results = sweep.run_sweep(path, "local", notebooks_dir=nbdir, aggregate=False)
    assert results == [] and {r.status for r in plan.runs} == {"finished"}
    assert _ledger(ledger) == computed

    # a run folder holding other settings is refused; a failed run does not stop the others
    spec = yaml.safe_load(path.read_text())
    spec["arms"][1]["set"]["grpo.lora_alpha"] = 4     # alpha1's policy stages are now stale
    spec["seeds"]["values"] = [0, 1, 2]                # and a new seed
    path.write_text(yaml.safe_dump(spec))
    plan, results = sweep.run_sweep(path, "local", notebooks_dir=nbdir, aggregate=False)
    states = {r.name: r.status for r in plan.runs}
    assert states["abl-alpha1-s0"] == "stale" and "grpo.lora_alpha: 8 -> 4" in plan.by_name("abl-alpha1-s0").problem
    assert {r.run for r in results} == {"abl-alpha0-s2", "abl-alpha1-s2"}
    assert all(r.status == "ok" for r in results)
    new = _ledger(ledger)[len(computed):]
    assert {s for _, s in new} == {runs.POLICY, runs.EVALUATION}  # the new seed reuses 01-03
    rows = {r["run"]: r["status"] for r in json.loads((out / "sweeps" / "abl" / "sweep.json").read_text())["runs"]}
    assert rows["abl-alpha1-s1"] == "stale" and rows["abl-alpha0-s0"] == "finished" and rows["abl-alpha1-s2"] == "ok"


@pytest.mark.slow
def test_submitit_executor_runs_waves_and_isolates_a_failure(tmp_path, data_dir):
    """submitit's local executor: the shared job finishes before the run jobs are submitted; a run
    whose job fails is reported with its exit status and log, the others finish."""
    ledger = tmp_path / "ledger.jsonl"
    nbdir = _notebooks(tmp_path / "nb", ledger)
    path = _sweep_file(tmp_path, arms=[{"name": "a"}, {"name": "broken", "set": {"grpo.format_weight": 1.0}}],
                       seeds={"key": "grpo.seed", "values": [0]}, aggregate={})
    plan = sweep.plan_sweep(path, notebooks_dir=nbdir)
    waves = sweep.build_jobs(plan)
    bad = next(j for j in waves[-1] if j.run == "abl-broken-s0")
    bad.argv = [a.replace("--from=04", "--from=99") for a in bad.argv]   # the runner refuses: exit 1
    results = sweep.SubmititExecutor(tmp_path / "sub", "local").run(waves, report=lambda r: None)
    status = {r.job: (r.status, r.returncode) for r in results}
    assert status == {"shared:abl-a-s0": ("ok", 0), "run:abl-a-s0": ("ok", 0), "run:abl-broken-s0": ("failed", 1)}
    assert "no notebook numbered '99'" in Path(bad.log).read_text()
    order = [(run, s) for run, s in _ledger(ledger)]
    assert order[:3] == [("abl-a-s0", runs.DATA), ("abl-a-s0", runs.SIMULATION), ("abl-a-s0", runs.REWARD_MODEL)]
    assert (tmp_path / "sub" / "submitit").is_dir()


# --------------------------------------------------------------------------------------------
# Aggregation across seeds, on constructed evaluation files
# --------------------------------------------------------------------------------------------


def _write_sweep(root: Path, outcomes: dict[tuple[str, int], list[tuple[bool, int]]], reference: str = "ref") -> Path:
    """Run folders with evaluation/rlff-esc/transcripts.jsonl (case i: (goal_reached, turns_used))
    and the sweep folder's record, as a finished sweep leaves them."""
    plan = []
    for (arm, seed), cases in outcomes.items():
        run = f"x-{arm}-s{seed}"
        path = runs.RunLayout(root / run).transcripts("rlff-esc")
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps({"case_id": f"c{i}", "goal_reached": g, "turns_used": t}) + "\n"
                                for i, (g, t) in enumerate(cases)))
        plan.append({"run": run, "arm": arm, "seed": seed})
    folder = root / "sweeps" / "x"
    runs.write_json({"sweep": "x", "plan": plan, "aggregate": {"system": "rlff-esc", "reference": reference,
                                                              "bootstrap_samples": 2000}}, folder / "sweep.json")
    return folder


def test_hierarchical_bootstrap_holds_the_spread_between_seeds():
    from rlff_utils.stats import bootstrap_ci, hierarchical_bootstrap_ci

    # seeds that disagree completely, cases that agree within each seed: a case bootstrap of the
    # pooled cases is narrow-ish, one of a single seed is a point; resampling seeds is wide
    groups = [[0.0] * 10, [1.0] * 10, [0.5] * 10]
    lo, hi = hierarchical_bootstrap_ci(groups, samples=4000, seed=1)
    assert lo <= 0.2 and hi >= 0.8
    assert hierarchical_bootstrap_ci([[0.5] * 10], samples=500) == (0.5, 0.5)
    # one seed: the cases' own interval (same statistic, another random stream: close, not equal)
    cases = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    h, c = hierarchical_bootstrap_ci([cases], samples=4000), bootstrap_ci(cases, samples=4000)
    assert abs(h[0] - c[0]) <= 0.11 and abs(h[1] - c[1]) <= 0.11
    assert all(math.isnan(v) for v in hierarchical_bootstrap_ci([]))


def test_aggregate_means_over_seeds_paired_differences_and_few_seed_warning(tmp_path):
    from rlff_utils import sweep_analysis

    base = {0: [(True, 1)] * 2 + [(False, 4)] * 8,     # SR 0.2
            1: [(True, 2)] * 5 + [(False, 4)] * 5,     # SR 0.5
            2: [(True, 3)] * 8 + [(False, 4)] * 2}     # SR 0.8
    better = {0: [(True, 1), (True, 1), (True, 1)] + [(False, 4)] * 7,   # ref failed c2, better solves it
              1: [(True, 2)] * 5 + [(True, 1)] + [(False, 4)] * 4,
              2: [(True, 3)] * 8 + [(True, 1)] + [(False, 4)]}
    folder = _write_sweep(tmp_path, {**{("ref", s): c for s, c in base.items()},
                                     **{("better", s): c for s, c in better.items()}})
    sweep_analysis.write_aggregate(folder)
    saved = json.loads((folder / "aggregate.json").read_text())
    assert saved["warning"] is None
    arms = {a["arm"]: a for a in saved["arms"]}
    assert arms["ref"]["SR"] == pytest.approx((0.2 + 0.5 + 0.8) / 3)
    assert arms["better"]["SR"] == pytest.approx((0.3 + 0.6 + 0.9) / 3)
    # AT counts a failure as the cap (4): seed 0 ref = (2*1 + 8*4)/10
    assert arms["ref"]["AT"] == pytest.approx(((2 + 32) / 10 + (10 + 20) / 10 + (24 + 8) / 10) / 3)
    # paired: exactly one more solved case per seed, same cases: +0.1, and the interval is tight
    # around it, while each arm's own interval is wide (its seeds disagree)
    diff, (lo, hi) = arms["better"]["SR_vs_ref"], arms["better"]["SR_vs_ref_ci95"]
    assert diff == pytest.approx(0.1) and 0.0 <= lo <= 0.1 <= hi <= 0.31
    ref_lo, ref_hi = arms["ref"]["SR_ci95"]
    assert ref_hi - ref_lo > 0.4
    assert arms["better"]["AT_vs_ref"] < 0
    assert (folder / "aggregate.png").stat().st_size > 0 and (folder / "aggregate.csv").is_file()
    table = sweep_analysis.arm_table(sweep_analysis.sweep_outcomes(folder), "ref")
    md = sweep_analysis.markdown_table(table)
    assert "+0.10 [" in md and "| ref " in md and "nan" not in md.lower()
    ref_row = next(line for line in md.splitlines() if line.startswith("| ref "))
    assert ref_row.rstrip(" |").endswith("–")  # no difference of the reference arm to itself

    # two seeds: the table carries the warning
    few = _write_sweep(tmp_path / "few", {("ref", 0): base[0], ("ref", 1): base[1],
                                          ("better", 0): better[0], ("better", 1): better[1]})
    sweep_analysis.write_aggregate(few)
    warning = json.loads((few / "aggregate.json").read_text())["warning"]
    assert "fewer than 3 seeds" in warning and "ref (2)" in warning


def _write_compliance(folder: Path, shares: dict[tuple[str, int], list[tuple[float, float]]]) -> None:
    """Each run's planted compliance check (prompt i: (before, after)), as notebook 04 writes it."""
    for (arm, seed), rows in shares.items():
        runs.write_json({"per_prompt": [{"case_id": f"p{i}", "before": b, "after": a} for i, (b, a) in enumerate(rows)]},
                        runs.RunLayout(folder.parents[1] / f"x-{arm}-s{seed}").planted_compliance)


def test_planted_compliance_pools_prompts_across_seeds_and_pairs_arms(tmp_path):
    from rlff_utils import sweep_analysis

    cases = [(True, 1), (False, 2)]
    folder = _write_sweep(tmp_path, {(arm, s): cases for arm in ("ref", "rule") for s in (0, 1, 2)})
    before = [0.25, 0.5, 0.0, 0.75]
    # the reference arm moves nothing; the rule arm gains 0.25 on every prompt under seeds 0 and 1,
    # and 0.5 under seed 2: gain 1/3, and the paired difference to the reference the same
    _write_compliance(folder, {("ref", s): [(b, b) for b in before] for s in (0, 1, 2)})
    _write_compliance(folder, {("rule", s): [(b, b + (0.5 if s == 2 else 0.25)) for b in before] for s in (0, 1, 2)})
    sweep_analysis.write_aggregate(folder)
    saved = json.loads((folder / "aggregate.json").read_text())
    arms = {a["arm"]: a for a in saved["compliance"]}
    assert arms["ref"]["gain"] == 0 and arms["ref"]["prompts"] == 4 and arms["ref"]["seeds"] == 3
    assert arms["rule"]["gain"] == pytest.approx(1 / 3)
    assert arms["rule"]["gain_vs_ref"] == pytest.approx(1 / 3)
    lo, hi = arms["rule"]["gain_vs_ref_ci95"]
    assert 0.25 <= lo <= 1 / 3 <= hi <= 0.5   # the seeds disagree (0.25 vs 0.5): the interval spans them
    assert arms["rule"]["compliance"] == pytest.approx(sum(before) / 4 + 1 / 3)
    assert "compliance_vs_ref" not in arms["rule"]   # equal to the gain's: not repeated
    assert (folder / "compliance.png").stat().st_size > 0 and (folder / "compliance.csv").is_file()

    # a sweep without planted checks has no compliance table (and a run without per-prompt shares is left out)
    plain = _write_sweep(tmp_path / "plain", {("ref", 0): cases, ("rule", 0): cases})
    sweep_analysis.write_aggregate(plain)
    assert "compliance" not in json.loads((plain / "aggregate.json").read_text())
    assert sweep_analysis.compliance_outcomes(plain).empty


@pytest.mark.slow
def test_sweep_notebook_renders_the_aggregate(tmp_path):
    from rlff_utils import pagecheck, sweep

    cases = [(True, 1), (False, 2), (True, 2)]
    folder = _write_sweep(tmp_path, {("ref", 0): cases, ("ref", 1): cases, ("b", 0): cases[::-1], ("b", 1): cases})
    _write_compliance(folder, {(arm, s): [(0.25, 0.5), (0.0, 0.25)] for arm in ("ref", "b") for s in (0, 1)})
    page = sweep.execute_aggregate_notebook(folder)
    html = page.read_text(encoding="utf-8")
    assert "fewer than 3 seeds" in html and "SR vs ref" in html and html.count("<img") == 2
    assert "gain vs ref" in html and "did GRPO teach the rule" in html
    # a reader's page like a run's: no machine path (the sweep folder is a parameter), no code names
    assert pagecheck.lint_report(folder / "report", banner=False) == {}
    assert page == folder / "report" / "sweep.html" and "sweep_analysis" not in html  # the reader's page
    assert "sweep_analysis" in (folder / "sweep.html").read_text(encoding="utf-8")   # the full page


def test_local_executor_runs_one_job_per_visible_gpu_and_blocks_dependents(monkeypatch):
    """Two GPUs: two jobs at a time, each with its own CUDA_VISIBLE_DEVICES; a failed shared job
    blocks the runs that reuse it, not the others."""
    import threading
    import time

    active, seen, lock = [0], [], threading.Lock()
    peak = [0]

    def fake(job, env=None):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            seen.append((job.name, (env or {}).get("CUDA_VISIBLE_DEVICES")))
        time.sleep(0.3)
        with lock:
            active[0] -= 1
        return 1 if job.name == "shared:b" else 0

    monkeypatch.setattr(sweep, "execute_job", fake)
    waves = [[sweep.Job("shared:a", "shared", "a", [], "a.log"), sweep.Job("shared:b", "shared", "b", [], "b.log")],
             [sweep.Job(f"run:{r}", "run", r, [], f"{r}.log", after=[f"shared:{s}"]) for r, s in
              (("a", "a"), ("a2", "a"), ("b", "b"), ("b2", "b"))]]
    results = {r.job: r.status for r in sweep.LocalExecutor(gpus=["0", "1"]).run(waves, report=lambda r: None)}
    assert results == {"shared:a": "ok", "shared:b": "failed", "run:a": "ok", "run:a2": "ok",
                       "run:b": "blocked", "run:b2": "blocked"}
    assert peak[0] == 2 and {gpu for _, gpu in seen} == {"0", "1"}
    assert sorted(name for name, _ in seen) == ["run:a", "run:a2", "shared:a", "shared:b"]


def test_an_interrupted_job_stops_the_local_sweep(monkeypatch):
    """A job stopped by Ctrl-C (exit 130) stops the sweep: no later job starts."""
    started = []

    def fake(job, env=None):
        started.append(job.name)
        return 130 if job.name == "run:a" else 0

    monkeypatch.setattr(sweep, "execute_job", fake)
    waves = [[sweep.Job("run:a", "run", "a", [], "a.log")], [sweep.Job("run:b", "run", "b", [], "b.log")]]
    results = sweep.LocalExecutor(gpus=[]).run(waves, report=lambda r: None)
    assert started == ["run:a"] and [(r.job, r.status, r.returncode) for r in results] == [("run:a", "failed", 130)]


def test_grpo_seed_and_prices_keep_older_stage_records_valid(tmp_path, data_dir):
    """grpo.seed (default: the run's seed) and price_per_mtok came after runs were recorded: a
    record without them is not stale at their defaults; another GRPO seed is a change; a price
    never is. GRPO's trainer takes grpo.seed."""
    from rlff_utils.params import load_params

    p = load_params(ROOT / "params" / "ci.yaml", {"output_root": str(tmp_path)})
    assert p.grpo.config.seed == 0
    with runs.begin_stage(p, runs.POLICY, require_upstream=False):
        (runs.layout(p).stage(runs.POLICY) / "adapter.txt").write_text("x")
    path = runs.layout(p).record(runs.POLICY)
    record = json.loads(path.read_text())
    del record["settings"]["grpo"]["seed"]            # as written before the key existed
    path.write_text(json.dumps(record))
    assert runs.check_stage(p, runs.POLICY)["complete"]
    priced = load_params(ROOT / "params" / "ci.yaml", {"output_root": str(tmp_path),
                                                       "models.policy.price_per_mtok": {"input": 1, "output": 2}})
    assert runs.check_stage(priced, runs.POLICY)["complete"]
    seeded = load_params(ROOT / "params" / "ci.yaml", {"output_root": str(tmp_path), "grpo.seed": 3})
    assert seeded.grpo.config.seed == 3 and seeded.grpo.config.data_seed == 3
    with pytest.raises(runs.StaleStageError, match="grpo.seed: '<absent>' -> 3"):
        runs.check_stage(seeded, runs.POLICY)
