"""Evaluation metrics on hand-made transcripts with known answers; judge and human sheet."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from rlff_utils import evaluate as ev


def rec(case, success, turns, emotion="sadness"):
    return {"case_id": case, "goal_reached": success, "turns_used": turns, "emotion_type": emotion,
            "situation": f"situation {case}",
            "history": [{"speaker": "seeker", "text": f"I feel bad ({case})"}],
            "turns": [{"speaker": "supporter", "text": "I hear you."}, {"speaker": "seeker", "text": "Thanks."}]}


RECORDS = [rec("a", True, 2), rec("b", True, 4), rec("c", False, 8, "anger"), rec("d", True, 1, "anger")]


def test_sr_at_and_sr_at_k_known_values():
    m = ev.metrics(RECORDS, cap=8, samples=200)
    assert m["SR"] == 0.75
    assert m["AT"] == (2 + 4 + 8 + 1) / 4
    assert m["SR_at_k"][:5] == [0.25, 0.5, 0.5, 0.75, 0.75] and m["SR_at_k"][-1] == 0.75
    assert m["SR_by_emotion"] == {"anger": {"cases": 2, "SR": 0.5}, "sadness": {"cases": 2, "SR": 1.0}}


def test_failures_count_as_the_cap():
    # a failure that stopped at turn 3 (e.g. a crash of the simulator) still costs the full cap
    assert ev.average_turns(ev.outcomes([rec("x", False, 3)]), cap=8) == 8


def test_bootstrap_interval_contains_the_point_estimate():
    values = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1]
    lo, hi = ev.bootstrap_ci(values, samples=500, seed=1)
    assert lo <= 0.7 <= hi and lo < hi
    assert ev.bootstrap_ci(values, samples=500, seed=1) == (lo, hi)
    assert ev.bootstrap_ci([1, 1, 1], samples=100) == (1.0, 1.0)
    assert all(math.isnan(x) for x in ev.bootstrap_ci([]))


@pytest.mark.parametrize(
    "text, verdict",
    [("A", "A"), ("B.", "B"), ("Tie", "tie"), ("Conversation B is better", "B"),
     ("<think>A seems kind</think> B", "B"), ("I cannot decide", None), ("", None)],
)
def test_parse_verdict(text, verdict):
    assert ev.parse_verdict(text) == verdict


def test_combine_orders_cancels_position_bias():
    assert ev.combine_orders("A", "B") == "win"
    assert ev.combine_orders("B", "A") == "lose"
    assert ev.combine_orders("A", "A") == "tie"  # always picks the first slot: position bias, not preference
    assert ev.combine_orders("tie", "B") == "tie"
    assert ev.combine_orders(None, "B") is None


class ScriptedJudge:
    """Prefers the conversation that mentions 'walk'; answers gibberish for 'suggestion'."""

    def __init__(self):
        self.calls = []

    def generate(self, conversations, n=1, temperature=None, max_new_tokens=None, seed=None, **kw):
        self.calls.append(len(conversations))
        out = []
        for conv in conversations:
            q = conv[-1]["content"]
            if "concrete suggestions" in q:
                out.append(["hmm, hard to say"])
                continue
            a = q.split("Conversation A:")[1].split("Conversation B:")[0]
            out.append(["A" if "walk" in a else "B"])
        return out


def test_pairwise_judge_both_orders_and_unparsable():
    ours, theirs = rec("a", True, 2), rec("a", False, 8)
    ours["turns"][0]["text"] = "Maybe a short walk would help?"
    judge = ScriptedJudge()
    table = ev.pairwise_judge(judge, [(ours, theirs)])
    assert judge.calls == [2 * len(ev.CRITERIA)]
    by = table.set_index("criterion")
    assert by.loc["empathy", "outcome"] == "win" and by.loc["overall", "outcome"] == "win"
    assert pd.isna(by.loc["suggestion", "outcome"])
    rates = ev.win_rates(table).set_index("criterion")
    assert rates.loc["suggestion", "unparsable"] == 1 and math.isnan(rates.loc["suggestion", "win"])
    assert rates.loc["empathy", "win"] == 1.0


def test_human_sheet_round_trip(tmp_path):
    pairs = [(rec(c, True, 2), rec(c, False, 8)) for c in "abcd"]
    sheet, key = tmp_path / "sheet.csv", tmp_path / "key.csv"
    ev.write_human_sheet(pairs, ["vanilla", "vanilla", "cos", "cos"], sheet, key, seed=3)
    blank = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    assert "vanilla" not in sheet.read_text() and list(blank.columns[-5:]) == list(ev.CRITERIA)
    keyf = pd.read_csv(key)
    assert set(keyf.system_side) == {1, 2}, "sides are randomised"
    # an annotator who always prefers our system, except 'fluency' tie and one blank cell
    for i, side in enumerate(keyf.system_side):
        for c in ev.CRITERIA:
            blank.loc[i, c] = "tie" if c == "fluency" else str(side)
    blank.loc[0, "overall"] = ""
    blank.to_csv(sheet, index=False)
    scores = ev.score_human_sheet(sheet, key).set_index(["baseline", "criterion"])
    assert scores.loc[("cos", "empathy"), "win"] == 1.0
    assert scores.loc[("vanilla", "fluency"), "tie"] == 1.0
    assert scores.loc[("vanilla", "overall"), "unparsable"] == 1 and scores.loc[("vanilla", "overall"), "judged"] == 1


# ---- the stage, on the tiny model --------------------------------------------------------


def _save_tiny_adapter(path):
    from peft import LoraConfig, get_peft_model

    from rlff_utils.models import load_causal_lm

    model, _ = load_causal_lm("tiny-random-smollm2")
    get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).save_pretrained(path)


def test_run_evaluation_stage_resumes_and_skips_missing_ablations(ci_params, tiny_model_path):
    import json

    from rlff_utils import data
    from rlff_utils.params import EvalSystem

    data.prepare_data(ci_params)
    _save_tiny_adapter(ci_params.run_dir / "policy" / "adapter")
    ci_params.evaluation.systems = [
        EvalSystem(name="vanilla", prompt="vanilla"),
        EvalSystem(name="rlff-esc", prompt="reasoning", adapter="policy"),
        EvalSystem(name="ablation-random-rm", prompt="reasoning", adapter="outputs/absent/policy/adapter"),
    ]
    table = ev.run_evaluation(ci_params)
    assert list(table.system) == ["vanilla", "rlff-esc"]
    assert table.attrs["skipped"][0]["system"] == "ablation-random-rm"
    out = ci_params.run_dir / "evaluation"
    records = ev.load_transcripts(ci_params, "rlff-esc")
    cap = ci_params.evaluation.max_turns
    assert len(records) == ci_params.evaluation.num_cases
    for r in records:
        assert r["history"][0]["speaker"] == "seeker" and 1 <= r["turns_used"] <= cap
        assert len(r["critic_scores"]) == r["turns_used"] and r["end_reason"] in ("goal", "max_turns")
        assert [t["speaker"] for t in r["turns"]] == ["supporter", "seeker"] * r["turns_used"]
    m = json.loads((out / "rlff-esc" / "metrics.json").read_text())
    assert m["protocol"]["evaluation"]["max_turns"] == cap and m["adapter"].endswith("adapter")
    assert m["SR"] == ev.success_rate(ev.outcomes(records)) and len(m["SR_at_k"]) == cap
    # a rerun resumes: nothing new is generated, the numbers are identical
    size = (out / "rlff-esc" / ev.TRANSCRIPTS).stat().st_size
    again = ev.run_evaluation(ci_params)
    assert (out / "rlff-esc" / ev.TRANSCRIPTS).stat().st_size == size
    assert again.SR.tolist() == table.SR.tolist()
    # systems share the lockstep batches but each keeps its own file; losing one file redoes
    # only that system
    for name in ("vanilla", "rlff-esc"):
        assert {r["system"] for r in ev.load_transcripts(ci_params, name)} == {name}
    (out / "vanilla" / ev.TRANSCRIPTS).unlink()
    ev.run_evaluation(ci_params)
    assert len(ev.load_transcripts(ci_params, "vanilla")) == ci_params.evaluation.num_cases
    assert (out / "rlff-esc" / ev.TRANSCRIPTS).stat().st_size == size
    rates = ev.run_quality(ci_params)
    assert set(rates.criterion) == set(ev.CRITERIA) and set(rates.baseline) == {"vanilla"}
    assert (out / "human_sheet.csv").exists() and (out / "human_sheet_key" / "key.csv").exists()
    assert "rlff-esc" not in (out / "human_sheet.csv").read_text()


def test_missing_policy_adapter_is_a_clear_error(ci_params, tiny_model_path):
    from rlff_utils import data

    data.prepare_data(ci_params)
    with pytest.raises(FileNotFoundError, match="run notebook 04"):
        ev.run_evaluation(ci_params)
