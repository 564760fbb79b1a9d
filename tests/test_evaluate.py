"""Evaluation metrics on hand-made transcripts with known answers; judge and the human annotation kit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rlff_utils import conversation_metrics as cm
from rlff_utils import evaluate as ev
from rlff_utils import runs
from rlff_utils.agents import CRITERIA, JUDGE_CRITERIA
from rlff_utils.human_eval import HumanFolder
from rlff_utils.stats import bootstrap_ci


def rec(case, success, turns, emotion="sadness"):
    return {"case_id": case, "goal_reached": success, "turns_used": turns, "emotion_type": emotion,
            "situation": f"situation {case}",
            "history": [{"speaker": "seeker", "text": f"I feel bad ({case})"}],
            "turns": [{"speaker": "supporter", "text": "I hear you."}, {"speaker": "seeker", "text": "Thanks."}]}


RECORDS = [rec("a", True, 2), rec("b", True, 4), rec("c", False, 8, "anger"), rec("d", True, 1, "anger")]


def test_sr_at_and_sr_at_k_known_values():
    m = cm.metrics(RECORDS, cap=8, samples=200)
    assert m["SR"] == 0.75
    assert m["AT"] == (2 + 4 + 8 + 1) / 4
    assert m["SR_at_k"][:5] == [0.25, 0.5, 0.5, 0.75, 0.75] and m["SR_at_k"][-1] == 0.75
    assert m["SR_by_emotion"] == {"anger": {"cases": 2, "SR": 0.5}, "sadness": {"cases": 2, "SR": 1.0}}


def test_failures_count_as_the_cap():
    # a failure that stopped at turn 3 (e.g. a crash of the simulator) still costs the full cap
    assert cm.average_turns(cm.outcomes([rec("x", False, 3)]), cap=8) == 8


def test_bootstrap_interval_contains_the_point_estimate():
    values = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1]
    lo, hi = bootstrap_ci(values, samples=500, seed=1)
    assert lo <= 0.7 <= hi and lo < hi
    assert bootstrap_ci(values, samples=500, seed=1) == (lo, hi)
    assert bootstrap_ci([1, 1, 1], samples=100) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert cm.metrics(RECORDS, cap=8, samples=500, seed=1)["SR_ci95"] == bootstrap_ci(
        [1, 1, 0, 1], samples=500, seed=1)


def test_bootstrap_resamples_paired_cases_together():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    diff = bootstrap_ci(x, [v + 1 for v in x], stat=lambda a, b: (b - a).mean(axis=1), samples=200)
    assert diff == (1.0, 1.0)  # pairs never split: the difference is always exactly 1
    spread = bootstrap_ci([1.0, 9.0], stat=lambda a: np.where(a.std(axis=1) > 0, a.std(axis=1), np.nan), samples=200)
    assert spread == (4.0, 4.0)  # resamples of one repeated case (statistic undefined here) left out
    with pytest.raises(ValueError, match="different lengths"):
        bootstrap_ci([1, 2], [1])


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
    assert judge.calls == [2 * len(CRITERIA)]
    by = table.set_index("criterion")
    assert by.loc["empathy", "outcome"] == "win" and by.loc["overall", "outcome"] == "win"
    assert pd.isna(by.loc["suggestion", "outcome"])
    rates = ev.win_rates(table).set_index("criterion")
    assert rates.loc["suggestion", "unparsable"] == 1 and math.isnan(rates.loc["suggestion", "win"])
    assert rates.loc["empathy", "win"] == 1.0


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
    with runs.begin_stage(ci_params, runs.POLICY, require_upstream=False):  # a finished policy stage
        _save_tiny_adapter(runs.layout(ci_params).adapter)
    ci_params.evaluation.systems = [
        EvalSystem(name="vanilla", prompt="vanilla"),
        EvalSystem(name="rlff-esc", prompt="reasoning", adapter="policy"),
        EvalSystem(name="ablation-random-rm", prompt="reasoning", adapter="outputs/absent/policy/adapter"),
    ]
    table = ev.run_evaluation(ci_params)
    assert list(table.system) == ["vanilla", "rlff-esc"]
    assert table.attrs["skipped"][0]["system"] == "ablation-random-rm"
    lay = runs.layout(ci_params)
    records = ev.load_transcripts(ci_params, "rlff-esc")
    cap = ci_params.evaluation.max_turns
    assert len(records) == ci_params.evaluation.num_cases
    for r in records:
        assert r["history"][0]["speaker"] == "seeker" and 1 <= r["turns_used"] <= cap
        assert len(r["critic_scores"]) == r["turns_used"] and r["end_reason"] in ("goal", "max_turns")
        assert [t["speaker"] for t in r["turns"]] == ["supporter", "seeker"] * r["turns_used"]
    pair = ev.side_by_side(ci_params, "vanilla")
    assert list(pair.columns[:3]) == ["rlff-esc supporter", "rlff-esc seeker", "rlff-esc critic"]
    assert pair.index[0] == 0 and pair.loc[0, "vanilla seeker"] == pair.loc[0, "rlff-esc seeker"]  # same opening
    assert len(pair) == 1 + max(r["turns_used"] for r in records)
    m = json.loads(lay.system_metrics("rlff-esc").read_text())
    assert m["adapter"].endswith("adapter") and m["system"]["name"] == "rlff-esc"
    assert m["SR"] == cm.success_rate(cm.outcomes(records)) and len(m["SR_at_k"]) == cap
    record = runs.read_record(ci_params.run_dir, runs.EVALUATION)
    assert record["complete"] and record["settings"]["evaluation"]["max_turns"] == cap
    # the critic's validity card goes beside every SR/AT (none here: notebook 03 did not run)
    assert m["critic_card"] == record["critic_card"] == {"card": None, "note": "no validity card in this run (notebook 03)"}
    assert json.loads(lay.prompts(runs.EVALUATION).read_text())["judge_criteria"] == JUDGE_CRITERIA
    # a rerun resumes: nothing new is generated, the numbers are identical
    transcripts = lay.transcripts("rlff-esc").read_bytes()
    again = ev.run_evaluation(ci_params)
    assert lay.transcripts("rlff-esc").read_bytes() == transcripts
    assert again.SR.tolist() == table.SR.tolist()
    # systems share the lockstep batches but each keeps its own file; losing one file redoes
    # only that system, and it says again what it said (its seeds are its own)
    for name in ("vanilla", "rlff-esc"):
        assert {r["system"] for r in ev.load_transcripts(ci_params, name)} == {name}
    vanilla = sorted(lay.transcripts("vanilla").read_text().splitlines())
    lay.transcripts("vanilla").unlink()
    ev.run_evaluation(ci_params)
    assert sorted(lay.transcripts("vanilla").read_text().splitlines()) == vanilla
    assert lay.transcripts("rlff-esc").read_bytes() == transcripts
    rates = ev.run_quality(ci_params)
    assert set(rates.criterion) == set(CRITERIA) and set(rates.baseline) == {"vanilla"}
    human = HumanFolder.of(ci_params)
    assert human.page.exists() and human.key.exists() and lay.judgements.exists()
    assert "rlff-esc" not in human.page.read_text() and "vanilla" not in human.page.read_text()
    # other settings never resume these transcripts
    ci_params.evaluation.max_turns = cap + 1
    with pytest.raises(runs.StaleStageError, match=f"evaluation.max_turns: {cap} -> {cap + 1}"):
        ev.run_evaluation(ci_params)
    assert lay.transcripts("rlff-esc").read_bytes() == transcripts


def test_missing_policy_adapter_is_a_clear_error(ci_params, tiny_model_path):
    from rlff_utils import data

    data.prepare_data(ci_params)
    with pytest.raises(FileNotFoundError, match="run notebook 04"):
        ev.run_evaluation(ci_params)


def test_paired_difference_keeps_cases_together():
    def rec(case, success, turns):
        return {"case_id": case, "goal_reached": success, "turns_used": turns, "emotion_type": "x"}

    ours = [rec(f"c{i}", i % 2 == 0, 1) for i in range(20)]            # 10 of 20 succeed
    theirs = [rec(f"c{i}", i % 4 == 0, 1) for i in range(20)] + [rec("only-theirs", True, 1)]
    d = cm.paired_difference(ours, theirs, cap=3, samples=500)
    assert d["cases"] == 20 and d["SR_diff"] == pytest.approx(0.5 - 0.25)
    lo, hi = d["SR_diff_ci95"]
    assert lo <= 0.25 <= hi and lo > 0  # the 5 extra wins are never offset by a loss
    assert d["AT_diff"] < 0  # successes end at turn 1, failures count the cap
    same = cm.paired_difference(ours, ours, cap=3, samples=200)
    assert same["SR_diff"] == 0 and same["SR_diff_ci95"] == (0.0, 0.0)


def test_contrast_critic_rejudges_each_turn_and_agreement_is_per_conversation():
    from rlff_utils.contrast import agreement, rejudged

    records = [rec("a", True, 1), rec("b", False, 2), rec("c", False, 2)]
    scores = {("a", 1): 0.2, ("b", 1): 0.0, ("b", 2): 0.9, ("c", 1): None, ("c", 2): 0.5}
    again = rejudged(records, scores, threshold=0.5)
    # a: solved by the deciding critic at turn 1, not by the contrast; b: the contrast solves it at
    # turn 2; c: an unlabelled answer and a score equal to the threshold are not successes
    assert [(r["goal_reached"], r["turns_used"]) for r in again] == [(False, 1), (True, 2), (False, 2)]
    assert [r["goal_reached"] for r in records] == [True, False, False]  # the originals are untouched
    a = agreement(records, again)
    assert a["conversations"] == 3 and a["agreement"] == pytest.approx(1 / 3)
    assert a["cohen_kappa"] == pytest.approx(-0.5)
    assert math.isnan(agreement(records, records[:1] * 3)["cohen_kappa"])  # one verdict for all: undefined


def test_evaluation_under_the_rule_critic_with_the_llm_critic_for_contrast(ci_params, tiny_model_path):
    import json

    from rlff_utils import data
    from rlff_utils.contrast import contrast_critic
    from rlff_utils.params import EvalSystem

    data.prepare_data(ci_params)
    ci_params.evaluation.systems = [EvalSystem(name="vanilla", prompt="vanilla"),
                                    EvalSystem(name="base-reasoning", prompt="reasoning")]
    ci_params.evaluation.critic_mode = "rule"
    ci_params.evaluation.contrast_critic = "probs"
    ci_params.evaluation.success_threshold = 0.0
    table = ev.run_evaluation(ci_params)
    lay = runs.layout(ci_params)
    for name in ("vanilla", "base-reasoning"):
        records = ev.load_transcripts(ci_params, name)
        lines = lay.system_dir(name).joinpath("contrast_judgements.jsonl").read_text().splitlines()
        scores = {(x["case_id"], x["turn"]): x["score"] for x in map(json.loads, lines)}
        assert len(lines) == sum(r["turns_used"] for r in records) == len(scores)  # every turn, once
        # the stored score is the LLM critic's verdict on the conversation up to that turn
        r = records[0]
        ctx = {**r, "history": r["history"] + r["turns"][:2], "rollout": r["turns"][:2]}
        again = contrast_critic(ci_params).judge([ctx])[0]  # probs: deterministic
        assert scores[(r["case_id"], 1)] == pytest.approx(again.score)
        m = json.loads(lay.system_metrics(name).read_text())
        solved = [any((scores[(r["case_id"], t)] or -2) > 0.0 for t in range(1, r["turns_used"] + 1)) for r in records]
        c = m["contrast_critic"]
        assert c["mode"] == "probs" and c["SR"] == pytest.approx(sum(solved) / len(solved))
        assert c["agreement"]["agreement"] == pytest.approx(
            sum(s == r["goal_reached"] for s, r in zip(solved, records)) / len(records))
        assert m["critic_card"]  # the deciding critic's own numbers are still there
    assert "paired_vs" in json.loads(lay.system_metrics("base-reasoning").read_text())["contrast_critic"]
    assert "contrast_SR" in table.columns
    from rlff_utils.contrast import contrast_table

    shown = contrast_table({n: json.loads(lay.system_metrics(n).read_text()) for n in ("vanilla", "base-reasoning")})
    assert list(shown.system) == ["vanilla", "base-reasoning"] and "SR diff vs vanilla (points)" in shown.columns
    # a rerun resumes: nothing is judged again
    before = lay.system_dir("vanilla").joinpath("contrast_judgements.jsonl").read_bytes()
    ev.run_evaluation(ci_params)
    assert lay.system_dir("vanilla").joinpath("contrast_judgements.jsonl").read_bytes() == before
