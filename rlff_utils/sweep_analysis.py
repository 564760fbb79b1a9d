"""A sweep's results across seeds: per arm the mean over seeds with an interval that holds both
the spread between seeds and between cases, and each arm's paired difference to a reference arm.

Inputs are what the runs wrote: each run folder's ``sweep.json`` (arm, seed; written by
:mod:`rlff_utils.sweep`) and the evaluated system's ``evaluation/<system>/transcripts.jsonl``
(one record per case: ``goal_reached``, ``turns_used``). Per case, success is 0/1 and the turns
are counted as ``conversation_metrics.average_turns`` counts them (a failure counts as the cap).

Intervals are hierarchical bootstraps (:func:`rlff_utils.stats.hierarchical_bootstrap_ci`):
resample seeds, then cases within each drawn seed. A paired difference subtracts, seed by seed
and case by case, the reference arm's outcome on the same case under the same seed, and is
bootstrapped the same way. With fewer than three seeds the interval cannot say much about the
spread between seeds: every table then carries a warning (:data:`FEW_SEEDS`).

The table has the shape of the paper's Table 3 (one row per arm: SR, AT, and here the difference
to the reference), written as CSV and JSON beside a figure in ``<output_root>/sweeps/<name>/``.

A sweep of planted runs has a second table: the planted compliance check of each run
(``policy/planted_compliance.json``: per held-out prompt, the share of sampled replies that
acknowledge the seeker's feelings before and after GRPO) pooled the same way, prompts in the place
of cases: per arm the share after GRPO, the gain (after - before, prompt by prompt) and the gain's
paired difference to the reference arm (``compliance.csv``, ``compliance.png``).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import runs
from .stats import hierarchical_bootstrap_ci

FEW_SEEDS = 3
METRICS = {"success": "SR", "turns": "AT"}
COMPLIANCE_METRICS = {"after": "compliance", "gain": "gain"}
# every run's "before" is the same base policy on the same prompts and sampling seeds, so the paired
# difference of the share after GRPO equals that of the gain: the gain's alone is shown
COMPLIANCE_PAIRED = {"gain"}


def sweep_record(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(f"no sweep record {path}: run the sweep first (python -m rlff_utils.sweep FILE)")
    return runs.read_json(path)


def case_outcomes(run_dir: str | Path, system: str, cap: int | None = None) -> pd.DataFrame:
    """One row per evaluated case of ``system`` in a run: case_id, success (0/1), turns (the cap
    for a failure; the cap is the run's evaluation.max_turns, or the largest turns seen)."""
    path = runs.RunLayout(run_dir).transcripts(system)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run has not evaluated {system!r}")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    frame = pd.DataFrame([{"case_id": str(r["case_id"]), "success": float(bool(r["goal_reached"])),
                           "turns_used": int(r["turns_used"])} for r in rows])
    if frame.empty:
        return frame.assign(turns=[])
    cap = cap or int(frame["turns_used"].max())
    frame["turns"] = np.where(frame["success"] > 0, frame["turns_used"], cap).astype(float)
    return frame.groupby("case_id", as_index=False)[["success", "turns"]].mean()


def _run_dirs(folder: str | Path, record: dict[str, Any] | None = None) -> list[tuple[dict[str, Any], Path]]:
    """Each planned run of the sweep (arm, seed) and its folder (beside ``sweeps/``)."""
    output_root = Path(folder).resolve().parents[1]
    return [(run, output_root / run["run"]) for run in (record or sweep_record(folder))["plan"]]


def sweep_outcomes(folder: str | Path, system: str | None = None) -> pd.DataFrame:
    """Every finished run's case outcomes, with its arm and seed (runs without an evaluation of
    the system are left out, with a warning)."""
    record = sweep_record(folder)
    system = system or record.get("system") or "rlff-esc"
    frames = []
    for run, run_dir in _run_dirs(folder, record):
        cap = _eval_cap(run_dir)
        try:
            frame = case_outcomes(run_dir, system, cap)
        except FileNotFoundError as e:
            warnings.warn(f"{run['run']} left out: {e}", stacklevel=2)
            continue
        frames.append(frame.assign(run=run["run"], arm=run["arm"], seed=run["seed"]))
    if not frames:
        raise FileNotFoundError(f"no run of the sweep in {folder} has evaluated {system!r}")
    return pd.concat(frames, ignore_index=True)


def compliance_outcomes(folder: str | Path) -> pd.DataFrame:
    """Every finished planted run's compliance check: one row per run and held-out prompt (as
    ``case_id``) with ``before``, ``after`` and ``gain`` (shares of the prompt's samples), its arm
    and seed. Empty when no run of the sweep has a check with per-prompt shares."""
    frames = []
    for run, run_dir in _run_dirs(folder):
        saved = runs.read_json(runs.RunLayout(run_dir).planted_compliance, default=None)
        if not saved or not saved.get("per_prompt"):
            continue
        frame = pd.DataFrame(saved["per_prompt"]).astype({"case_id": str, "before": float, "after": float})
        frames.append(frame.assign(gain=frame["after"] - frame["before"], run=run["run"], arm=run["arm"],
                                   seed=run["seed"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _eval_cap(run_dir: Path) -> int | None:
    record = runs.read_record(run_dir, runs.EVALUATION) if (run_dir / runs.EVALUATION).is_dir() else None
    return (((record or {}).get("settings") or {}).get("evaluation") or {}).get("max_turns")


def _groups(frame: pd.DataFrame, column: str) -> list[np.ndarray]:
    return [g[column].to_numpy() for _, g in frame.groupby("seed", sort=True)]


def arm_table(outcomes: pd.DataFrame, reference: str | None = None, samples: int = 2000,
              seed: int = 0, metrics: dict[str, str] | None = None, paired: set[str] | None = None) -> pd.DataFrame:
    """Per arm: seeds, cases, each metric (default SR and AT; ``metrics``: outcome column → name)
    as the mean over seeds of the per-seed means with a hierarchical interval, and the paired
    difference to ``reference`` (same seeds and cases) with its interval, for every metric or the
    names in ``paired``."""
    rows = []
    for arm, frame in outcomes.groupby("arm", sort=False):
        row: dict[str, Any] = {"arm": arm, "seeds": frame["seed"].nunique(),
                               "cases": int(frame.groupby("seed")["case_id"].nunique().min())}
        for column, name in (metrics or METRICS).items():
            row[name] = float(np.mean([g.mean() for g in _groups(frame, column)]))
            row[f"{name}_ci95"] = hierarchical_bootstrap_ci(_groups(frame, column), samples, seed)
            if reference is not None and arm != reference and (paired is None or name in paired):
                diff = paired_differences(outcomes, arm, reference, column)
                row[f"{name}_vs_{reference}"] = float(np.mean([g.mean() for g in diff])) if diff else math.nan
                row[f"{name}_vs_{reference}_ci95"] = hierarchical_bootstrap_ci(diff, samples, seed)
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(outcomes: pd.DataFrame, arm: str, reference: str, column: str) -> list[np.ndarray]:
    """Per seed both arms ran, the differences arm - reference on the cases both evaluated."""
    ours, theirs = (outcomes[outcomes["arm"] == a] for a in (arm, reference))
    if theirs.empty:
        raise ValueError(f"reference arm {reference!r} has no evaluated run; arms: {sorted(outcomes['arm'].unique())}")
    joined = ours.merge(theirs, on=["seed", "case_id"], suffixes=("", "_ref"))
    return [(g[column] - g[f"{column}_ref"]).to_numpy() for _, g in joined.groupby("seed", sort=True)]


def small_sample_warning(outcomes: pd.DataFrame) -> str | None:
    """A warning when an arm has fewer than :data:`FEW_SEEDS` seeds."""
    seeds = outcomes.groupby("arm")["seed"].nunique()
    few = seeds[seeds < FEW_SEEDS]
    if few.empty:
        return None
    return (f"fewer than {FEW_SEEDS} seeds for {', '.join(f'{a} ({n})' for a, n in few.items())}: the intervals "
            "hold the spread between cases, but say little about the spread between seeds")


def plot_arms(table: pd.DataFrame, path: str | Path, title: str = "", names: list[str] | None = None,
              unit: str = "cases") -> Path:
    """Each metric per arm with its interval (default SR and AT: the Table 3 shape as a figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = names or list(METRICS.values())
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 0.5 * len(table) + 2), squeeze=False)
    y = np.arange(len(table))
    for ax, name in zip(axes[0], names):
        lo = [c[0] for c in table[f"{name}_ci95"]]
        hi = [c[1] for c in table[f"{name}_ci95"]]
        ax.errorbar(table[name], y, xerr=[table[name] - lo, np.array(hi) - table[name]], fmt="o", capsize=4)
        ax.set_yticks(y, table["arm"])
        ax.set_xlabel(name.replace("_", " "))
        ax.invert_yaxis()
    fig.suptitle(f"{title}\nmean over seeds; 95% interval from resampling seeds, then {unit}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_aggregate(folder: str | Path) -> Path:
    """Aggregate a sweep folder: ``aggregate.csv`` / ``aggregate.json`` (the table and any
    warning) and ``aggregate.png``. Returns the JSON's path."""
    folder = Path(folder)
    record = sweep_record(folder)
    settings = record.get("aggregate") or {}
    outcomes = sweep_outcomes(folder, settings.get("system"))
    table = arm_table(outcomes, settings.get("reference"), settings.get("bootstrap_samples", 2000))
    warning = small_sample_warning(outcomes)
    table.to_csv(folder / "aggregate.csv", index=False)
    plot_arms(table, folder / "aggregate.png", f"sweep {record['sweep']}: {settings.get('system', 'rlff-esc')}")
    out = {"sweep": record["sweep"], "system": settings.get("system"), "reference": settings.get("reference"),
           "warning": warning, "arms": table.to_dict(orient="records")}
    planted = compliance_outcomes(folder)
    if len(planted):
        compliance = arm_table(planted, settings.get("reference"), settings.get("bootstrap_samples", 2000),
                               metrics=COMPLIANCE_METRICS, paired=COMPLIANCE_PAIRED).rename(columns={"cases": "prompts"})
        compliance.to_csv(folder / "compliance.csv", index=False)
        plot_arms(compliance, folder / "compliance.png", f"sweep {record['sweep']}: planted compliance",
                  names=list(COMPLIANCE_METRICS.values()), unit="prompts")
        out["compliance"] = compliance.to_dict(orient="records")
    return runs.write_json(out, folder / "aggregate.json")


def markdown_table(table: pd.DataFrame) -> str:
    """The table as Markdown, intervals as ``x [lo, hi]``, columns in words (``SR vs negative``;
    for the README and the notebook)."""
    unit = "prompts" if "prompts" in table else "cases"
    shown = pd.DataFrame({"arm": table["arm"], "seeds": table["seeds"], unit: table[unit]})
    for column in table.columns:
        if column.endswith("_ci95"):
            name = column.removesuffix("_ci95")
            sign = "+" if "_vs_" in name or name == "gain" else ""
            shown[name.replace("_vs_", " vs ")] = [_cell(v, lo, hi, sign)
                                                   for v, (lo, hi) in zip(table[name], _pairs(table[column]))]
    return shown.to_markdown(index=False)


def _cell(value: float, lo: float, hi: float, sign: str) -> str:
    """``x [lo, hi]``; "–" where there is no value (the reference arm's difference to itself)."""
    if value is None or not math.isfinite(float(value)):
        return "–"
    ci = "" if lo is None or not math.isfinite(float(lo)) else f" [{lo:{sign}.2f}, {hi:{sign}.2f}]"
    return f"{value:{sign}.2f}{ci}"


def _pairs(column: pd.Series) -> list[tuple[float, float]]:
    return [tuple(c) if isinstance(c, (tuple, list)) else (math.nan, math.nan) for c in column]
