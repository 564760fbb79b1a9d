"""Analysis reads stage files across runs into the paper-shaped tables."""

from __future__ import annotations

import json
import math

import pandas as pd

from rlff_utils import analysis


def _run(root, name, systems):
    for system, (sr, at) in systems.items():
        d = root / name / "evaluation" / system
        d.mkdir(parents=True)
        d.joinpath("metrics.json").write_text(json.dumps(
            {"cases": 10, "dataset": "esconv", "SR": sr, "SR_ci95": [sr - 0.1, sr + 0.1], "AT": at,
             "AT_ci95": [at - 0.5, at + 0.5], "SR_at_k": [sr / 2, sr]}))
    (root / name / "reward_model").mkdir(parents=True)
    (root / name / "evaluation" / "stage.json").write_text(json.dumps({"stage": "evaluation", "complete": True}))
    pd.DataFrame([{"variant": "classification", "accuracy": 0.7, "f1": 0.6, "roc_auc": math.nan, "spearman": 0.3,
                   "pairwise_accuracy": 0.6}]).to_csv(root / name / "reward_model" / "comparison.csv", index=False)


def test_tables_across_runs(tmp_path):
    _run(tmp_path, "a", {"vanilla": (0.2, 7.0), "rlff-esc": (0.5, 5.5)})
    _run(tmp_path, "b", {"rlff-esc": (0.4, 6.0)})
    (tmp_path / "not-a-run").mkdir()
    runs = analysis.list_runs(tmp_path)
    assert [r.name for r in runs] == ["a", "b"]
    table = analysis.evaluation_table(runs)
    assert len(table) == 3 and table.set_index(["run", "system"]).loc[("a", "rlff-esc"), "SR"] == 0.5
    shown = analysis.format_main_table(table)
    assert shown.set_index(["run", "system"]).loc[("a", "rlff-esc"), "SR (%)"] == "50.0 [40.0, 60.0]"
    assert len(analysis.sr_at_k_table(runs)) == 6
    analysis.write_table(shown, tmp_path / "report", "main")
    assert "rlff-esc" in (tmp_path / "report" / "main.md").read_text()
    summary = analysis.run_summary(tmp_path / "a")
    assert summary["evaluation"]["rlff-esc"] == {"SR": 0.5, "AT": 5.5, "cases": 10}
    assert summary["reward_model"][0]["roc_auc"] is None  # undefined metric, valid JSON
    json.dumps(summary, allow_nan=False)
    assert [r.name for r in analysis.list_runs(tmp_path, ["b"])] == ["b"]
