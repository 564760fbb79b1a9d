"""Analysis reads stage files across runs into the paper-shaped tables."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

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
    assert len(table) == 3 and table.set_index(["run", "system"]).loc[("a", "rlff-esc"), "sr"] == 0.5
    shown = analysis.format_main_table(table)
    assert shown.set_index(["run", "system"]).loc[("a", "rlff-esc"), "SR (%)"] == "50.0 [40.0, 60.0]"
    assert shown.set_index(["run", "system"]).loc[("a", "rlff-esc"), "AT"] == "5.50 [5.00, 6.00]"
    assert len(analysis.sr_at_k_table(runs)) == 6
    analysis.write_table(table, tmp_path / "report", "main", shown=shown)
    assert "50.0 [40.0, 60.0]" in (tmp_path / "report" / "main.md").read_text()
    summary = analysis.run_summary(tmp_path / "a")
    assert summary["evaluation"]["rlff-esc"] == {"SR": 0.5, "AT": 5.5, "cases": 10}
    assert summary["reward_model"][0]["roc_auc"] is None  # undefined metric, valid JSON
    json.dumps(summary, allow_nan=False)
    assert [r.name for r in analysis.list_runs(tmp_path, ["b"])] == ["b"]


def test_main_results_csv_is_numeric(tmp_path):
    _run(tmp_path, "a", {"vanilla": (0.2, 7.0), "rlff-esc": (0.5, 5.5)})
    table = analysis.evaluation_table(analysis.list_runs(tmp_path))
    analysis.write_table(table, tmp_path / "report", "main_results", shown=analysis.format_main_table(table))
    back = pd.read_csv(tmp_path / "report" / "main_results.csv")
    assert list(back.columns) == ["run", "dataset", "system", "cases", "sr", "sr_lo", "sr_hi", "at", "at_lo", "at_hi"]
    for col in ("sr", "sr_lo", "sr_hi", "at", "at_lo", "at_hi"):
        assert pd.api.types.is_float_dtype(back[col]), col
    assert pd.api.types.is_integer_dtype(back["cases"])
    row = back.set_index("system").loc["rlff-esc"]
    assert (row["sr"], row["sr_lo"], row["sr_hi"], row["at"]) == (0.5, 0.4, 0.6, 5.5)
    assert "[" not in (tmp_path / "report" / "main_results.csv").read_text()


def test_displayed_tables_use_one_missing_symbol_ints_and_intervals(tmp_path):
    # what reward_model/comparison.csv holds: a skipped variant without counts, an empty notes column
    csv = tmp_path / "comparison.csv"
    pd.DataFrame({"variant": ["classification", "ranking"], "status": ["trained", "skipped"],
                  "n_train": pd.array([24, None], dtype="Int64"), "accuracy": [0.75, math.nan],
                  "roc_auc": [math.nan, math.nan], "notes": ["", ""]}).to_csv(csv, index=False)
    frame = pd.read_csv(csv, dtype_backend="numpy_nullable")
    shown = analysis.display_frame(frame)
    assert list(shown.columns) == ["variant", "status", "n_train", "accuracy"]  # empty roc_auc and notes dropped
    assert shown["n_train"].tolist() == ["24", analysis.MISSING]
    assert shown["accuracy"].tolist() == ["0.750", analysis.MISSING]
    md = analysis.markdown_table(frame)
    assert "24.0" not in md and "nan" not in md.lower() and "<NA>" not in md and analysis.MISSING in md
    # intervals as [lo, hi], from *_ci95 pairs (the evaluation's table) or *_lo / *_hi columns
    ev = pd.DataFrame({"system": ["vanilla"], "SR": [1 / 3], "SR_ci95": [(0.0, 0.666667)], "cases": [6]})
    assert analysis.display_frame(ev)["SR"].tolist() == ["0.333 [0.000, 0.667]"]
    assert "(0.0, 0.666667)" not in analysis.markdown_table(ev)
    hv = analysis.display_frame(pd.DataFrame({"rm_spearman": [0.4], "rm_spearman_lo": [-0.2], "rm_spearman_hi": [0.9]}))
    assert hv.to_dict("records") == [{"rm_spearman": "0.400 [-0.200, 0.900]"}]


def test_json_records_keep_integers_and_dicts_become_columns(tmp_path):
    frame = analysis.records_frame([
        {"run": "a", "contexts": 8, "seconds": 12.5, "generated_tokens": {"policy": 1678, "critic": 20}},
        {"run": "b", "contexts": None, "seconds": None, "generated_tokens": {"policy": 5}},
    ])
    t = analysis.tidy(frame)
    assert list(t.columns) == ["run", "contexts", "seconds", "generated_tokens.policy", "generated_tokens.critic"]
    assert str(t["contexts"].dtype) == "Int64" and str(t["generated_tokens.critic"].dtype) == "Int64"
    shown = analysis.display_frame(frame)
    assert shown.loc[0, "contexts"] == "8" and shown.loc[1, "contexts"] == analysis.MISSING
    assert shown.loc[0, "seconds"] == "12.5"  # seconds: one decimal
    assert not any("{" in str(v) for v in shown.to_numpy().ravel())
    analysis.write_table(frame, tmp_path, "sim")
    text = (tmp_path / "sim.csv").read_text().splitlines()
    assert text[0] == "run,contexts,seconds,generated_tokens.policy,generated_tokens.critic"
    assert text[2] == "b,,,5,"  # missing: empty cells in CSV
    styler = analysis.display_table(frame)
    html = styler.to_html()
    assert "1678" in html and "nan" not in html.lower() and analysis.MISSING in html


def test_run_card_and_timing_tables():
    card = {"run": "ci", "description": "smallest run", "purpose": "test", "params_file": "params/ci.yaml",
            "git_commit": None, "seed": 0, "models": {"policy": "tiny"}, "packages": {"torch": "2.13.0"},
            "seconds_per_notebook": {"01_data_prep": 9.04, "02_simulation": 30.0},
            "peak_memory_mib_per_notebook": {"01_data_prep": 800.4}, "wall_seconds": 120.0, "peak_memory_mib": 2048.0}
    fields = analysis.run_card_table(card).set_index("field")["value"]
    assert fields["params file"] == "params/ci.yaml" and "git commit" not in fields.index
    assert fields["models"] == "policy: tiny" and fields["pipeline wall time"] == "2.0 min"
    timing = analysis.display_frame(analysis.timing_table(card), digits=0)
    assert timing.to_dict("records") == [
        {"notebook": "01_data_prep", "wall time (s)": "9", "peak memory (MiB)": "800"},
        {"notebook": "02_simulation", "wall time (s)": "30", "peak memory (MiB)": analysis.MISSING},
    ]


def test_validity_cards_across_runs_and_beside_every_sr(tmp_path):
    from rlff_utils import runs
    from rlff_utils.validity import validity_card

    _run(tmp_path, "a", {"vanilla": (0.2, 7.0), "rlff-esc": (0.5, 5.5)})
    _run(tmp_path, "b", {"rlff-esc": (0.4, 6.0)})
    critic = validity_card("critic (x, probs, last 4 turns)", [0.5, 1.0, 0.5, 0.4], [-0.5, 0.5, 0.2, 0.1],
                           baseline="turn count", baseline_success=[3, 4, 5, 6], baseline_failed=[4, 6, 3, 2], samples=50)
    learned = validity_card("learned critic (held-out)", [0.9, 0.8], [0.1, -0.2], samples=50)
    runs.write_json({"cards": {"critic": critic.as_dict(), "learned_critic": learned.as_dict()},
                     "evaluation_critic": {"card": "critic"}}, tmp_path / "a" / "reward_model" / "validity.json")
    for system in ("vanilla", "rlff-esc"):  # what run_evaluation writes beside SR/AT
        path = tmp_path / "a" / "evaluation" / system / "metrics.json"
        m = json.loads(path.read_text())
        path.write_text(json.dumps({**m, "critic_card": {"card": "critic", "auc": critic.auc, "auc_ci95": list(critic.auc_ci95)}}))
    table = analysis.validity_table(analysis.list_runs(tmp_path))
    assert list(table["card"]) == ["critic", "learned_critic"] and set(table["run"]) == {"a"}
    assert list(table["evaluation"]) == [True, False] and table["auc"].tolist() == [critic.auc, learned.auc]
    shown = analysis.display_frame(table, 2).set_index("card")
    assert shown.loc["critic", "auc"] == f"{critic.auc:.2f} [{critic.auc_ci95[0]:.2f}, {critic.auc_ci95[1]:.2f}]"
    main = analysis.evaluation_table(analysis.list_runs(tmp_path)).set_index(["run", "system"])
    assert main.loc[("a", "rlff-esc"), "critic_auc"] == critic.auc and main.loc[("a", "rlff-esc"), "critic_card"] == "critic"
    assert pd.isna(main.loc[("b", "rlff-esc"), "critic_auc"])  # no card in that run
    shown = analysis.format_main_table(analysis.evaluation_table(analysis.list_runs(tmp_path))).set_index(["run", "system"])
    assert shown.loc[("a", "vanilla"), "critic AUC"].startswith(f"{critic.auc:.2f} [")
    assert shown.loc[("b", "rlff-esc"), "critic AUC"] == analysis.MISSING


def _planted_run(root, name, reward_model, after):
    """A planted run's files as its stages write them (params snapshot, held-out RM predictions,
    compliance check, the main system's paired differences under both critics)."""
    import yaml

    run = root / name
    (run / "reward_model" / "classification").mkdir(parents=True)
    (run / "reward_model" / "random").mkdir(parents=True)
    (run / "policy").mkdir()
    (run / "evaluation" / "rlff-esc").mkdir(parents=True)
    (run / "evaluation" / "stage.json").write_text(json.dumps({"stage": "evaluation", "complete": True}))
    (run / "params.yaml").write_text(yaml.safe_dump({"purpose": "planted", "seed": 0, "grpo": {"reward_model": reward_model}}))
    labels = [1, 1, 1, 0, 0, 0]
    pd.DataFrame({"label": labels, "score": [0.9, 0.8, 0.7, 0.2, 0.1, 0.75], "r_fut": labels, "context_id": list("aabbcc")}
                 ).to_csv(run / "reward_model" / "classification" / "test_predictions.csv", index=False)
    pd.DataFrame({"label": labels, "score": [0.5] * 6, "r_fut": labels, "context_id": list("aabbcc")}
                 ).to_csv(run / "reward_model" / "random" / "test_predictions.csv", index=False)
    (run / "policy" / "planted_compliance.json").write_text(json.dumps(
        {"before": 0.2, "after": after, "difference": after - 0.2, "difference_ci95": [after - 0.3, after - 0.1],
         "prompts": 24, "samples_per_prompt": 4}))
    paired = {"vanilla": {"cases": 24, "SR_diff": 0.25, "SR_diff_ci95": [0.1, 0.4]}}
    (run / "evaluation" / "rlff-esc" / "metrics.json").write_text(json.dumps(
        {"cases": 24, "SR": 0.5, "SR_ci95": [0.3, 0.7], "AT": 1.5, "AT_ci95": [1.2, 1.8], "SR_at_k": [0.3, 0.5],
         "paired_vs": paired, "contrast_critic": {"paired_vs": {"vanilla": {"cases": 24, "SR_diff": 0.0,
                                                                            "SR_diff_ci95": [-0.1, 0.1]}}}}))
    return run


def test_planted_runs_side_by_side(tmp_path):
    _planted_run(tmp_path, "planted", "classification", after=0.6)
    _planted_run(tmp_path, "planted_negative", "random", after=0.2)
    _run(tmp_path, "smoke", {"vanilla": (0.2, 7.0)})  # not a planted run: no row
    table = analysis.planted_table(analysis.list_runs(tmp_path)).set_index("run")
    assert list(table.index) == ["planted", "planted_negative"]
    row = table.loc["planted"]
    assert row["grpo_reward_model"] == "classification" and row["rm_classification_auc"] == pytest.approx(8 / 9)
    assert row["rm_classification_auc_lo"] <= 8 / 9 <= row["rm_classification_auc_hi"]
    assert row["rm_random_auc"] == 0.5 and row["rm_test_contexts"] == 3  # a constant score ranks nothing
    assert row["compliance_diff"] == pytest.approx(0.4) and row["compliance_diff_lo"] == pytest.approx(0.3)
    assert row["sr_diff_rule_rlff-esc_vs_vanilla"] == 0.25 and row["sr_diff_contrast_rlff-esc_vs_vanilla_hi"] == 0.1
    assert table.loc["planted_negative", "compliance_diff"] == pytest.approx(0.0)
    shown = analysis.by_run_columns(table.reset_index()).set_index("figure")
    assert shown.loc["compliance_diff", "planted"] == "0.400 [0.300, 0.500]"
    assert analysis.run_summary(tmp_path / "planted")["planted"]["compliance_after"] == 0.6
    assert "planted" not in analysis.run_summary(tmp_path / "smoke")
