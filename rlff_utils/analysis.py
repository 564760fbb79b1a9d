"""Tables across runs: read what each stage wrote under ``outputs/<run>/`` and put it side by side.

Only files are read, never models, so the analysis notebook renders in seconds and can compare a
CPU smoke run with a paper-scale run produced elsewhere (copy its folder into ``outputs/``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd


def list_runs(output_root: Path, names: list[str] | None = None) -> list[Path]:
    """Run folders under ``output_root`` (those named, or every folder holding a stage's output)."""
    if names:
        missing = [n for n in names if not (output_root / n).is_dir()]
        if missing:
            raise FileNotFoundError(f"no run folder for {missing} under {output_root}")
        return [output_root / n for n in names]
    return sorted(p for p in output_root.iterdir() if p.is_dir() and any((p / s).is_dir() for s in ("data", "evaluation")))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def evaluation_table(runs: list[Path]) -> pd.DataFrame:
    """The paper's main table: one row per (run, dataset, system) with SR and AT (+ 95% CIs)."""
    rows = []
    for run in runs:
        for metrics_file in sorted((run / "evaluation").glob("*/metrics.json")):
            m = json.loads(metrics_file.read_text())
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
        for metrics_file in sorted((run / "evaluation").glob("*/metrics.json")):
            m = json.loads(metrics_file.read_text())
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
    (folder / f"{name}.md").write_text(table.to_markdown(index=False) if not table.empty else "(no rows)\n")
