"""Validity cards: the math on synthetic scores with known answers; the real-outcome sets; the
cards of every judge (critic, evaluation critic, reward model, learned critic) on real
conversations with the tiny model; the learned critic learning a signal and judging as a critic."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlff_utils import runs
from rlff_utils.dialogues import Dialogue, Turn
from rlff_utils.outcomes import FAILED, HELPED, NOT_HELPED, SUCCESS, OutcomeSets, labelled_states, outcome_sets
from rlff_utils.params import load_params
from rlff_utils.validation import evaluation_card
from rlff_utils.validity import auc_with_ci, card_from_dict, cards_frame, spearman_with_ci, validity_card

ROOT = Path(__file__).resolve().parents[1]


def test_perfect_inverted_and_chance_auc():
    rng = np.random.default_rng(0)
    good, bad = rng.uniform(0.6, 1.0, 80), rng.uniform(-1.0, 0.4, 80)
    auc, (lo, hi), p = auc_with_ci(good, bad, samples=300)
    assert auc == 1.0 and lo == hi == 1.0 and p < 1e-10
    auc, (lo, hi), p = auc_with_ci(bad, good, samples=300)
    assert auc == 0.0 and hi == 0.0 and p < 1e-10
    same_a, same_b = rng.normal(0, 1, 400), rng.normal(0, 1, 400)
    auc, (lo, hi), p = auc_with_ci(same_a, same_b, samples=300)
    assert abs(auc - 0.5) < 0.06 and lo < 0.5 < hi and p > 0.05


def test_ties_count_half_and_constant_scores_are_chance():
    auc, ci, p = auc_with_ci([0.5] * 10, [0.5] * 12, samples=50)
    assert auc == 0.5 and ci == (0.5, 0.5) and p == 1.0


def test_card_counts_missing_verdicts_and_labels_and_baseline():
    card = validity_card(
        "critic", [1.0, 0.5, None, 0.5], [-1.0, -0.5, math.nan],
        success_labels=["solved", "better", None, "better"], failed_labels=["worse", "same", None],
        unparsed_answers=3, answers=30,
        drops=[3, 2, 0, -1], drop_scores=[1.0, 0.5, -0.5, -1.0],
        baseline="turn count", baseline_success=[10, 12, 14, 16], baseline_failed=[11, 13, 15],
        samples=200)
    assert card.auc == 1.0 and card.n_success == 4 and card.n_failed == 3
    assert card.no_verdict_share == pytest.approx(2 / 7) and card.unparsed_answer_share == pytest.approx(0.1)
    assert card.top_labels_success == {"better": 2, "solved": 1}
    assert card.spearman_drop == pytest.approx(1.0) and card.n_with_drop == 4
    assert 0.3 < card.baseline_auc < 0.7
    assert "AUC 1.00" in card.summary() and "turn count" in card.summary()


def test_spearman_interval_contains_the_estimate_and_handles_constants():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    rho, (lo, hi), n = spearman_with_ci(x, x + rng.normal(scale=0.5, size=200), samples=300)
    assert n == 200 and lo <= rho <= hi and rho > 0.8
    assert math.isnan(spearman_with_ci([1, 1, 1, 1], [1, 2, 3, 4])[0])
    widths = []  # the interval narrows with more data
    for n in (20, 400):
        a = rng.normal(size=n)
        _, (lo, hi), _ = spearman_with_ci(a, a + rng.normal(scale=1.5, size=n), samples=300, seed=1)
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_card_round_trips_through_json_and_tables():
    card = validity_card("critic", [1.0, 0.5, None], [-1.0, 0.5], success_labels=["solved", "better", None],
                         failed_labels=["worse", "better"], baseline="turn count", baseline_success=[3, 4, 5],
                         baseline_failed=[4, 6], samples=50)
    back = card_from_dict(runs.json_ready(card.as_dict()))
    assert back.auc == card.auc and back.auc_ci95 == card.auc_ci95 and back.top_labels_failed == {"worse": 1, "better": 1}
    assert math.isnan(back.spearman_drop)
    table = cards_frame({"critic": card})
    row = table.iloc[0]
    assert row["card"] == "critic" and row["auc_lo"] == card.auc_ci95[0] and row["top_labels_success"] == "better 1, solved 1"


# ---- real-outcome sets ------------------------------------------------------------------------


def _dialogue(i: int, helped: bool, feedback: list[int | None] | None = None, drop: int | None = None) -> Dialogue:
    """A conversation whose last seeker turn says how it went: a signal any classifier learns."""
    feedback = feedback or [None, None]
    end = "Thank you so much, I feel much better now and I know what to do." if helped else \
        "This did not help at all, I still feel awful and alone."
    turns = [Turn(speaker="seeker", text=f"I am worried about problem number {i}.", feedback=feedback[0]),
             Turn(speaker="supporter", text="Tell me more about it."),
             Turn(speaker="seeker", text="It keeps me up at night.", feedback=feedback[1]),
             Turn(speaker="supporter", text="That sounds hard."),
             Turn(speaker="seeker", text=end)]
    if drop is None:
        drop = 3 if helped else 0
    return Dialogue(id=f"{'esconv-train' if helped else 'esconv-failed'}-{i:04d}", dataset="esconv",
                    split="train" if helped else "failed", turns=turns,
                    initial_emotion_intensity=5 if drop is not None else None,
                    final_emotion_intensity=5 - drop if drop is not None else None)


def _ci_params(tmp: Path, **overrides):
    base = {"output_root": str(tmp / "outputs"), "data.max_dialogues": 120, "grpo.reward_model": "random"}
    return load_params(ROOT / "params" / "ci.yaml", {**base, **overrides})


def test_outcome_sets_are_seeded_disjoint_and_hold_out_the_card(tmp_path, data_dir):
    params = _ci_params(tmp_path, **{"validation.failed_conversations": 10, "validation.success_conversations": 8,
                                     "validation.learned_critic.heldout_fraction": 0.5,
                                     "validation.learned_critic.max_train_conversations": None})
    helped = [_dialogue(i, True, drop=2 + i % 3) for i in range(40)] + [_dialogue(100 + i, True, drop=1) for i in range(5)]
    failed = [_dialogue(i, False) for i in range(30)]
    sets = outcome_sets(params, helped, failed, used={helped[0].id})
    assert (len(sets.success), len(sets.failed)) == (8, 10)
    assert helped[0].id not in {d.id for d in sets.success} | {d.id for d, _ in sets.train + sets.valid}
    assert all(int(d.id[-4:]) < 100 for d in sets.success)  # drop 1 is neither helped nor not helped
    assert len(sets.heldout & {d.id for d in sets.success}) == 4 and len(sets.heldout & {d.id for d in sets.failed}) == 5
    trained = {d.id for d, _ in sets.train} | {d.id for d, _ in sets.valid}
    assert not trained & sets.heldout and not {d.id for d, _ in sets.train} & {d.id for d, _ in sets.valid}
    labels = [y for _, y in sets.train + sets.valid]
    assert labels.count(NOT_HELPED) == 25 and labels.count(HELPED) == 25  # every other failed one, as many helped
    assert {y for _, y in sets.valid} == {HELPED, NOT_HELPED}
    again = outcome_sets(params, helped, failed, used={helped[0].id})
    assert [d.id for d in again.success] == [d.id for d in sets.success] and again.heldout == sets.heldout
    other = outcome_sets(params.model_copy(update={"seed": 1}), helped, failed, used={helped[0].id})
    assert [d.id for d in other.success] != [d.id for d in sets.success]
    table = sets.assignments()  # a card conversation neither held out nor drawn for training has no split
    assert set(table["split"]) <= {"heldout", "train", "valid", ""} and table["dialogue_id"].is_unique
    assert set(table[table["split"] == "heldout"]["dialogue_id"]) == sets.heldout
    assert len(table[table["split"].isin(["train", "valid"])]) == 50


def test_feedback_prefixes_end_at_the_rated_seeker_turn():
    d = _dialogue(1, False, feedback=[5, 3])
    rows = labelled_states([(d, NOT_HELPED)], feedback_high=4, feedback_low=2)
    assert [(r["kind"], r["label"], len(r["history"])) for r in rows] == [("conversation", 0, 5), ("feedback 5", 1, 1)]
    rows = labelled_states([(_dialogue(2, True, feedback=[1, 2]), HELPED)], 4, 2)
    assert [(r["kind"], r["label"], len(r["history"])) for r in rows] == [
        ("conversation", 1, 5), ("feedback 1", 0, 1), ("feedback 2", 0, 3)]
    assert len(labelled_states([(d, NOT_HELPED)], None, None)) == 1


# ---- the learned critic on the tiny model -----------------------------------------------------


@pytest.fixture()
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_learned_critic_learns_trains_once_and_judges_as_a_critic(tmp_path, data_dir, tiny_model_path,
                                                                   _one_torch_thread):
    from rlff_utils import critic
    from rlff_utils.critic import load_learned_critic, train_learned_critic

    params = _ci_params(tmp_path, **{"evaluation.critic_mode": "learned", "validation.learned_critic.epochs": 4,
                                     "validation.learned_critic.learning_rate": 3e-3,
                                     "validation.learned_critic.batch_size": 8})
    helped = [_dialogue(i, True) for i in range(40)]
    failed = [_dialogue(i, False, feedback=[4, 1]) for i in range(40)]
    sets = OutcomeSets(helped[:6], failed[:6], {d.id for d in helped[:6] + failed[:6]},
                       train=[(d, HELPED) for d in helped[6:34]] + [(d, NOT_HELPED) for d in failed[6:34]],
                       valid=[(d, HELPED) for d in helped[34:]] + [(d, NOT_HELPED) for d in failed[34:]])
    with pytest.raises(FileNotFoundError, match="notebook 03"):
        load_learned_critic(params)
    record = train_learned_critic(params, sets)
    assert not record["reused"] and record["train"]["feedback_prefixes"] == 2 * 28
    lay = runs.layout(params)
    assert (lay.learned_critic_adapter / "adapter_config.json").is_file() and not lay.learned_critic_checkpoints.exists()
    mtime = lay.learned_critic_metrics.stat().st_mtime_ns
    assert train_learned_critic(params, sets)["reused"] and lay.learned_critic_metrics.stat().st_mtime_ns == mtime

    judge = critic.for_stage(params, "evaluation")  # evaluation.critic_mode: learned
    contexts = [{"history": [t.model_dump() for t in d.turns]} for d in helped[:6] + failed[:6]]
    results = judge.judge(contexts)
    scores = np.array([r.score for r in results])
    assert np.all((scores >= -1) & (scores <= 1)) and all(r.unparsed == 0 for r in results)
    auc, _, _ = auc_with_ci(scores[:6], scores[6:], samples=20)
    assert auc >= 0.9, scores  # held-out conversations it never saw
    assert [r.success for r in results] == [s > params.evaluation.success_threshold for s in scores]

    changed = _ci_params(tmp_path, **{"evaluation.critic_mode": "learned", "validation.learned_critic.epochs": 1})
    with pytest.raises(runs.StaleStageError, match="other settings"):
        load_learned_critic(changed)


def test_no_failed_conversation_left_to_train_on_is_a_clear_error(tmp_path, data_dir):
    from rlff_utils.outcomes import OutcomeError
    from rlff_utils.critic import train_learned_critic

    params = _ci_params(tmp_path, **{"validation.failed_conversations": None})
    sets = outcome_sets(params, [_dialogue(i, True) for i in range(20)], [_dialogue(i, False) for i in range(5)], set())
    with pytest.raises(OutcomeError, match="heldout_fraction"):
        train_learned_critic(params, sets)


# ---- every judge's card on real conversations --------------------------------------------------


def test_cards_of_every_judge_on_real_conversations(tmp_path, data_dir, tiny_model_path, _one_torch_thread):
    """The tiny model's critic (probs), the evaluation critic (another window: its own card), the
    untrained reward model and the learned critic on 6 + 6 real conversations."""
    from rlff_utils import plots, validation
    from rlff_utils.critic import train_learned_critic
    from rlff_utils.data import prepare_data

    params = _ci_params(tmp_path)
    prepare_data(params)
    untrained = validation.validity_cards(params)  # the cards never train the learned critic
    assert "learned_critic" not in untrained.cards and any("not trained" in n for n in untrained.notes)
    assert not runs.layout(params).learned_critic_metrics.exists()
    train_learned_critic(params)  # notebook 03's step before the cards
    report = validation.validity_cards(params)
    assert set(report.cards) == {"critic", "eval_critic", "reward_model", "learned_critic"}, report.notes
    for key, card in report.cards.items():
        assert (card.n_success, card.n_failed) == (6, 6), key  # ci: 6 + 6, all held out from the learned critic
        assert 0.0 <= card.auc <= 1.0 and card.auc_ci95[0] <= card.auc <= card.auc_ci95[1], key
        assert math.isfinite(card.mean_score_success) and math.isfinite(card.mean_score_failed), key
        assert card.baseline == "turn count" and 0.0 <= card.baseline_auc <= 1.0
        assert card.no_verdict_share == 0.0
    critic = report.cards["critic"]
    assert critic.unparsed_answer_share == 0.0
    assert sum(critic.top_labels_success.values()) == 6 and sum(critic.top_labels_failed.values()) == 6
    assert critic.protocol["window"] == params.data.max_history_turns
    assert report.cards["eval_critic"].protocol["window"] == 1 + 2 * params.evaluation.max_turns
    assert report.cards["learned_critic"].n_with_drop >= 6  # every successful one has a survey drop

    frame = report.frame
    assert (frame["group"] == SUCCESS).sum() == 6 and (frame["group"] == FAILED).sum() == 6
    assert frame[frame["group"] == SUCCESS]["intensity_drop"].ge(params.validation.min_intensity_drop).all()
    assert frame["dialogue_id"].str.startswith("esconv-failed").sum() == 6 and frame["heldout"].all()
    assert frame["critic_score"].between(-1, 1).all() and frame["reward_model_score"].between(0, 1).all()

    lay = runs.layout(params)
    saved = runs.read_json(lay.validity)
    assert set(saved["cards"]) == set(report.cards) and saved["evaluation_critic"]["card"] == "eval_critic"
    assert len(pd.read_csv(lay.validity_csv)) == 12
    card = evaluation_card(params)
    assert card["card"] == "eval_critic" and card["auc"] == pytest.approx(report.cards["eval_critic"].auc)
    fig = plots.reward_validity(report, params)
    assert lay.rm_figure("validity").stat().st_size > 1000 and len(fig.axes) == 5

    mtime = lay.validity.stat().st_mtime_ns
    again = validation.validity_cards(params)  # same settings: read back, nothing recomputed
    assert lay.validity.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(again.table(), report.table())

    same_window = _ci_params(tmp_path, **{"evaluation.max_turns": 1, "validation.judges": ["critic"]})
    assert evaluation_card(same_window)["card"] is None  # the saved cards were for another evaluation critic


def test_clustered_auc_interval_resamples_whole_contexts():
    """The AUC is the plain ROC-AUC; the interval resamples contexts, so when how well the scores
    separate depends on the context (here: a per-context effect of the label), it is wider than
    an interval that resamples candidates, which treats 10 candidates of a context as 10 contexts."""
    from sklearn.metrics import roc_auc_score

    from rlff_utils.validity import clustered_auc_ci

    rng = np.random.default_rng(1)
    contexts = np.repeat(np.arange(8), 10)
    labels = np.tile([1, 0], 40)
    scores = rng.normal(0.5, 1.5, 8)[contexts] * labels + rng.normal(0, 0.3, 80)
    auc, (lo, hi), n = clustered_auc_ci(scores.tolist(), labels.tolist(), contexts.tolist(), samples=400)
    assert n == 8 and auc == pytest.approx(roc_auc_score(labels, scores))
    _, (slo, shi), _ = auc_with_ci(scores[labels == 1].tolist(), scores[labels == 0].tolist(), samples=400)
    assert lo < auc < hi and (hi - lo) > 1.5 * (shi - slo)
    # one candidate per context: the same as resampling candidates, about as wide as the stratified one
    _, (ulo, uhi), n = clustered_auc_ci(scores.tolist(), labels.tolist(), list(range(80)), samples=400)
    assert n == 80 and 0.5 < (uhi - ulo) / (shi - slo) < 2
    with pytest.raises(ValueError, match="3 scores, 2 labels"):
        clustered_auc_ci([0.1, 0.2, 0.3], [0, 1], ["a", "b", "c"])
