"""Tables across runs: read what each stage wrote under ``outputs/<run>/`` and put it side by side.

Only files are read, never models, so the analysis notebook renders in seconds and can compare a
CPU smoke run with a paper-scale run produced elsewhere (copy its folder into ``outputs/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from . import runs as _runs
from .runs import RunLayout, read_json


def list_runs(output_root: Path, names: list[str] | None = None) -> list[Path]:
    """Run folders under ``output_root`` (those named, or every folder holding a stage's output)."""
    if names:
        missing = [n for n in names if not (output_root / n).is_dir()]
        if missing:
            raise FileNotFoundError(f"no run folder for {missing} under {output_root}")
        return [output_root / n for n in names]
    return sorted(p for p in output_root.iterdir()
                  if p.is_dir() and any(RunLayout(p).record(s).is_file() for s in _runs.STAGES))


def _read_json(path: Path) -> Any:
    return read_json(path, default=None)


def evaluation_table(runs: list[Path]) -> pd.DataFrame:
    """The paper's main table: one row per (run, dataset, system) with SR and AT (+ 95% CIs)."""
    rows = []
    for run in runs:
        for metrics_file in RunLayout(run).all_system_metrics():
            m = read_json(metrics_file)
            rows.append(
                {
                    "run": run.name,
                    "dataset": m.get("dataset", ""),
                    "system": metrics_file.parent.name,
                    "cases": m["cases"],
                    "SR": m["SR"],
                    "SR_lo": m["SR_ci95"][0],
                    "SR_hi": m["SR_ci95"][1],
                    "AT": m["AT"],
                    "AT_lo": m["AT_ci95"][0],
                    "AT_hi": m["AT_ci95"][1],
                }
            )
    return pd.DataFrame(rows)


def sr_at_k_table(runs: list[Path]) -> pd.DataFrame:
    """Long table (run, system, k, SR@k) for the SR@k curves."""
    rows = []
    for run in runs:
        for metrics_file in RunLayout(run).all_system_metrics():
            m = read_json(metrics_file)
            rows += [{"run": run.name, "system": metrics_file.parent.name, "k": k, "SR@k": v} for k, v in enumerate(m["SR_at_k"], 1)]
    return pd.DataFrame(rows)


def format_main_table(table: pd.DataFrame) -> pd.DataFrame:
    """SR as a percentage and AT, each with its interval, in the paper's system × dataset shape."""
    if table.empty:
        return table
    t = table.copy()
    t["SR (%)"] = t.apply(lambda r: f"{100 * r.SR:.1f} [{100 * r.SR_lo:.1f}, {100 * r.SR_hi:.1f}]", axis=1)
    t["AT"] = t.apply(lambda r: f"{r.AT:.2f} [{r.AT_lo:.2f}, {r.AT_hi:.2f}]", axis=1)
    return t[["run", "dataset", "system", "cases", "SR (%)", "AT"]]


def write_table(table: pd.DataFrame, folder: Path, name: str) -> None:
    """CSV for tools, Markdown for README and reports."""
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / f"{name}.csv", index=False)
    (folder / f"{name}.md").write_text((table.to_markdown(index=False) if not table.empty else "(no rows)") + "\n")


def simulation_table(runs: list[Path]) -> pd.DataFrame:
    """Simulation statistics per run (from ``simulation/summary.json``)."""
    rows = []
    for run in runs:
        s = _read_json(RunLayout(run).simulation_summary)
        if s:
            rows.append({"run": run.name, **{k: s.get(k) for k in (
                "contexts", "trajectories", "success_rate", "mean_turns", "positive_rate",
                "label_threshold", "unparsed_answers", "seconds")}})
    return pd.DataFrame(rows)


def reward_model_table(runs: list[Path]) -> pd.DataFrame:
    """Reward-model variant comparison per run (from ``reward_model/comparison.csv``)."""
    frames = [pd.read_csv(RunLayout(run).rm_comparison).assign(run=run.name)
              for run in runs if RunLayout(run).rm_comparison.is_file()]
    if not frames:
        return pd.DataFrame()
    t = pd.concat(frames, ignore_index=True)
    return t[["run", *[c for c in t.columns if c != "run"]]]


def human_validation_table(runs: list[Path]) -> pd.DataFrame:
    """Spearman of reward-model and critic scores with the seekers' reported intensity drop."""
    rows = []
    for run in runs:
        for path in [RunLayout(run).human_validation]:
            v = _read_json(path)
            if isinstance(v, dict):
                rows.append({"run": run.name, **{k: x for k, x in v.items() if not isinstance(x, (list, dict))}})
    return pd.DataFrame(rows)


def grpo_curves(runs: list[Path]) -> pd.DataFrame:
    """GRPO training curves of every run (from ``policy/curves.csv``), long by step."""
    frames = [pd.read_csv(RunLayout(run).grpo_curves).assign(run=run.name)
              for run in runs if RunLayout(run).grpo_curves.is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN (an undefined metric) becomes null, floats are rounded for reading."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return None if obj != obj else round(obj, 3)
    return obj


def run_summary(run: Path) -> dict[str, Any]:
    """The few numbers printed at the end of a pipeline run and kept in ``summary.json``
    (undefined metrics are null)."""
    ev = evaluation_table([run])
    rm = reward_model_table([run])
    lay = RunLayout(run)
    sim = _read_json(lay.simulation_summary) or {}
    grpo = _read_json(lay.train_summary) or {}
    rm_cols = [c for c in ("variant", "accuracy", "f1", "roc_auc", "spearman", "pairwise_accuracy") if c in rm.columns]
    return _clean({
        "run": run.name,
        "evaluation": {r.system: {"SR": r.SR, "AT": r.AT, "cases": int(r.cases)} for r in ev.itertuples()},
        "reward_model": rm[rm_cols].to_dict("records") if len(rm) else [],
        "simulation": {k: sim.get(k) for k in ("trajectories", "success_rate", "positive_rate") if k in sim},
        "grpo": {k: grpo.get(k) for k in ("global_step", "seconds") if k in grpo},
        "report": str(lay.notebook("06_analysis").with_suffix(".html").relative_to(run.parent)),
    })
