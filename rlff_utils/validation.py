"""The run's judges against real outcomes: validity cards (notebook 03, after training).

RLFF-ESC trains on the critic's verdicts and on a reward model that learned them, so both must
tell a seeker who was helped from one who was not. On real conversations with a known outcome
(:mod:`rlff_utils.outcomes`: ESConv conversations whose seeker's intensity fell by at least
``validation.min_intensity_drop``, against the ESConv authors' failed conversations) each judge in
``validation.judges`` gets a card (:mod:`rlff_utils.validity`: ROC-AUC with a stratified bootstrap
interval and Mann-Whitney p, Spearman with the intensity drop, mean score and top labels per group,
unparsable answers, conversations without a verdict, and the turn-count baseline):

* ``critic``: the simulation's critic (``models.critic``, ``simulation.critic_*``) on each real
  conversation's last ``data.max_history_turns`` turns, as it sees the end of a rollout;
* ``eval_critic`` (with ``critic`` in the judges): the evaluation's critic (``models.eval_critic``, ``evaluation.critic_*``) on
  the last ``1 + 2·evaluation.max_turns`` turns (the longest conversation it judges), carded
  separately only when it is another judge than the simulation's; ``validity.json`` names the card
  that applies to the evaluation's SR/AT either way;
* ``reward_model``: the reward model GRPO uses (``grpo.reward_model``; ``random``: the untrained
  head) scoring the real final supporter turn in its context;
* ``learned_critic``: the critic trained on real outcomes (:mod:`rlff_utils.critic.learned`), on the
  conversations it never saw; ``critic_heldout`` is the simulation's critic on the same ones when
  they are not the whole card set. It is trained before this step (notebook 03 calls
  :func:`rlff_utils.critic.train_learned_critic`); here it is only loaded.

Saved as ``validity.json`` (cards, settings, notes) and ``validity.csv`` (one row per
conversation: group, turns, drop, every judge's score and label), reused while the settings match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import critic, runs
from .outcomes import FAILED, SUCCESS, OutcomeError, intensity_drop, outcome_sets
from .reward.scorer import ScorerCache
from .reward.variants import stage_writer
from .rewards import load_reward_function, needs_trained_model
from .sampling import derive_seed
from .text import SUPPORTER, dialogue_turns
from .validity import SUMMARY_FIELDS, ValidityCard, card_from_dict, cards_frame, validity_card

if TYPE_CHECKING:  # pragma: no cover
    from .dialogues import Dialogue
    from .params import RunParams

BASE_COLUMNS = ["dialogue_id", "group", "heldout", "turns", "intensity_drop"]
BASELINE = "turn count"


@dataclass
class ValidityReport:
    """Every card of the run, the per-conversation scores behind them, and which card applies to
    the evaluation's critic."""

    cards: dict[str, ValidityCard]
    frame: pd.DataFrame
    evaluation_critic: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        return cards_frame(self.cards)

    def summaries(self) -> list[str]:
        return [c.summary() for c in self.cards.values()]


# --------------------------------------------------------------------------------------------
# Each judge's scores of the card's conversations
# --------------------------------------------------------------------------------------------


def _states(dialogues: list["Dialogue"]) -> list[dict[str, Any]]:
    return [{"situation": d.situation or "", "emotion_type": d.emotion_type or "", "problem_type": d.problem_type or "",
             "history": dialogue_turns(d)} for d in dialogues]


def critic_judgements(params: "RunParams", stage: str, dialogues: list["Dialogue"]) -> pd.DataFrame:
    """The stage's critic (LLM modes) on each real conversation's last turns (its window), each
    judgement seeded by its conversation: score, top label and unparsable answers per conversation."""
    judge = critic.for_stage(params, stage, window=params.critic_settings(stage).window)
    seeds = [derive_seed(params.seed, "critic card", stage, d.id) for d in dialogues]
    results = judge.judge(_states(dialogues), seeds=seeds)
    return pd.DataFrame({"score": [r.score for r in results], "label": [r.top_label for r in results],
                         "unparsed": [r.unparsed for r in results]})


def reward_model_scores(params: "RunParams", dialogues: list["Dialogue"], cache: ScorerCache | None = None) -> list[float]:
    """The GRPO reward model (``grpo.reward_model``) on each conversation's final supporter turn
    given the turns before it (NaN when the conversation has no supporter turn after the first)."""
    scorer = load_reward_function(params, cache=cache)
    histories, replies, owner = [], [], []
    for k, d in enumerate(dialogues):
        turns = dialogue_turns(d)
        last = max((i for i, t in enumerate(turns) if t["speaker"] == SUPPORTER and i > 0), default=None)
        if last is not None:
            histories.append(turns[:last])
            replies.append(turns[last]["text"])
            owner.append(k)
    out = np.full(len(dialogues), np.nan)
    out[owner] = scorer.score(histories, replies)
    return out.tolist()


def learned_critic_scores(params: "RunParams", dialogues: list["Dialogue"]) -> list[float]:
    """The learned critic's 2·P(helped) − 1 on each whole conversation (its window)."""
    return critic.load_learned_critic(params).score_states([dialogue_turns(d) for d in dialogues]).tolist()


# --------------------------------------------------------------------------------------------
# Cards
# --------------------------------------------------------------------------------------------


def _card(params: "RunParams", judge: str, frame: pd.DataFrame, key: str, answers_each: int | None,
          protocol: dict[str, Any]) -> ValidityCard:
    """One judge's card over ``frame``'s conversations (its ``<key>_score`` / ``_label`` /
    ``_unparsed`` columns)."""
    s, f = frame[frame["group"] == SUCCESS], frame[frame["group"] == FAILED]
    with_drop = frame[frame["intensity_drop"].notna()]
    labels = f"{key}_label" in frame.columns
    unparsed = f"{key}_unparsed" in frame.columns and answers_each
    return validity_card(
        judge, s[f"{key}_score"].tolist(), f[f"{key}_score"].tolist(),
        drops=with_drop["intensity_drop"].astype(float).tolist(), drop_scores=with_drop[f"{key}_score"].tolist(),
        success_labels=s[f"{key}_label"].tolist() if labels else None,
        failed_labels=f[f"{key}_label"].tolist() if labels else None,
        unparsed_answers=int(frame[f"{key}_unparsed"].sum()) if unparsed else None,
        answers=len(frame) * answers_each if unparsed else None,
        baseline=BASELINE, baseline_success=s["turns"].astype(float).tolist(),
        baseline_failed=f["turns"].astype(float).tolist(),
        samples=params.validation.bootstrap_samples, seed=params.seed,
        protocol={"min_intensity_drop": params.validation.min_intensity_drop, **protocol})


def _critic_protocol(params: "RunParams", stage: str) -> tuple[str, dict[str, Any], int]:
    s = params.critic_settings(stage)
    name = "critic" if stage == "simulation" else "evaluation critic"
    votes = s.mode == "votes"
    sampling = f", {s.samples} votes at T = {s.temperature}" if votes else ""
    protocol = {"model": s.role.name, "backend": s.role.backend, "mode": s.mode, "window": s.window,
                "samples": s.samples if votes else None, "temperature": s.temperature if votes else None}
    return f"{name} ({s.role.name}, {s.mode}{sampling}, last {s.window} turns)", protocol, s.samples if votes else 1


def card_settings(params: "RunParams") -> dict[str, Any]:
    """What the saved cards depend on beyond the stage record: the judges' identities, the reward
    model GRPO uses (and which training of it), the learned critic's training."""
    lay = runs.layout(params)
    variant = params.grpo.reward_model
    adapter = lay.rm_adapter(variant) / "adapter_config.json" if needs_trained_model(variant) else None
    learned = runs.read_json(lay.learned_critic_metrics, default=None)
    return runs.json_ready({
        "validation": params.validation.model_dump(), "seed": params.seed,
        "critic": critic.identity(params, "simulation"), "eval_critic": critic.identity(params, "evaluation"),
        "reward_model": variant, "model_version": adapter.stat().st_mtime_ns if adapter and adapter.is_file() else None,
        "learned_critic": (learned or {}).get("fingerprint"),
    })


def _saved(lay: runs.RunLayout, settings: dict[str, Any]) -> ValidityReport | None:
    saved = runs.read_json(lay.validity, default=None)
    if not saved or saved.get("settings") != settings or not lay.validity_csv.is_file():
        return None
    frame = pd.read_csv(lay.validity_csv, dtype={"dialogue_id": str, "group": str})
    cards = {k: card_from_dict(v) for k, v in saved.get("cards", {}).items()}
    return ValidityReport(cards, frame, saved.get("evaluation_critic", {}), saved.get("notes", []))


def _base_frame(sets) -> pd.DataFrame:
    return pd.DataFrame([{"dialogue_id": d.id, "group": g, "heldout": d.id in sets.heldout, "turns": len(d.turns),
                          "intensity_drop": intensity_drop(d)} for d, g in sets.card], columns=BASE_COLUMNS)


def _llm_critic_mode(params: "RunParams", stage: str) -> bool:
    return params.critic_settings(stage).mode in ("votes", "probs")


def _compute(params: "RunParams", cache: ScorerCache | None) -> ValidityReport:
    """Score the card's conversations with every judge and make the cards."""
    v = params.validation
    sets = outcome_sets(params)
    notes = list(sets.notes)
    dialogues = [d for d, _ in sets.card]
    frame = _base_frame(sets)
    cards: dict[str, ValidityCard] = {}
    held = frame["heldout"].to_numpy(bool)
    modes = {params.simulation.critic_mode, params.evaluation.critic_mode}

    def add_critic(key: str, stage: str) -> None:
        judge, protocol, answers = _critic_protocol(params, stage)
        j = critic_judgements(params, stage, dialogues)
        for col in ("score", "label", "unparsed"):
            frame[f"{key}_{col}"] = j[col].to_numpy()
        cards[key] = _card(params, judge, frame, key, answers, {**protocol, "conversations": "all"})
        if key == "critic" and "learned_critic" in v.judges and not held.all():
            cards["critic_heldout"] = _card(params, judge + " on the learned critic's held-out", frame[held], key,
                                            answers, {**protocol, "conversations": "learned critic's held-out"})

    if "critic" in v.judges:
        if _llm_critic_mode(params, "simulation"):
            add_critic("critic", "simulation")
        else:
            notes.append(f"simulation critic mode {params.simulation.critic_mode!r}: no LLM critic to card"
                         + (" (its card is the learned critic's)" if params.simulation.critic_mode == "learned" else ""))
    evaluation = {"identity": critic.identity(params, "evaluation"), "card": None}
    if params.evaluation.critic_mode == "learned":
        evaluation["card"] = "learned_critic"
    elif not _llm_critic_mode(params, "evaluation"):
        evaluation["note"] = f"evaluation critic mode {params.evaluation.critic_mode!r} judges rollouts only: no card"
    elif "critic" not in v.judges:
        evaluation["note"] = "the critics are not carded ('critic' is not in validation.judges)"
    elif critic.identity(params, "evaluation") == critic.identity(params, "simulation") and "critic" in cards:
        evaluation["card"] = "critic"
    else:
        add_critic("eval_critic", "evaluation")
        evaluation["card"] = "eval_critic"

    if "reward_model" in v.judges:
        frame["reward_model_score"] = reward_model_scores(params, dialogues, cache)
        cards["reward_model"] = _card(params, f"reward model ({params.grpo.reward_model}, final supporter turn)", frame,
                                      "reward_model", None, {"variant": params.grpo.reward_model, "conversations": "all"})
    if "learned_critic" in v.judges or "learned" in modes:
        record = runs.read_json(runs.layout(params).learned_critic_metrics, default=None)
        if not record:
            notes.append("learned critic: not trained, no card (its training step, "
                         "rlff_utils.critic.train_learned_critic, comes first in notebook 03)")
            return ValidityReport(cards, frame, _applies(evaluation, cards), notes)
        scores = np.full(len(frame), np.nan)
        scores[held] = learned_critic_scores(params, [d for d, h in zip(dialogues, held) if h])
        frame["learned_critic_score"] = scores
        frame["learned_critic_label"] = [None if not h else ("helped" if s >= 0 else "not helped")
                                         for s, h in zip(scores, held)]
        cards["learned_critic"] = _card(
            params, "learned critic (held-out)", frame[held], "learned_critic", None,
            {"window": params.data.max_history_turns, "score": "2 P(helped) - 1", "conversations": "held-out",
             "trained_on": record.get("conversations"), "examples": record.get("train")})
    return ValidityReport(cards, frame, _applies(evaluation, cards), notes)


def _applies(evaluation: dict[str, Any], cards: dict[str, ValidityCard]) -> dict[str, Any]:
    if evaluation["card"] and evaluation["card"] not in cards:
        evaluation["note"] = f"card {evaluation['card']!r} was not computed (see validation.judges and the notes)"
        evaluation["card"] = None
    return evaluation


def validity_cards(params: "RunParams", force: bool | None = None, cache: ScorerCache | None = None) -> ValidityReport:
    """Every judge's card (see the module docstring), the learned critic's included when it was
    trained (:func:`rlff_utils.critic.train_learned_critic`, the step before); saved as
    ``validity.{json,csv}`` and reused while :func:`card_settings` are unchanged, unless ``force``
    (default ``reward_model.retrain``). Without the failed conversations (or with no judge) the
    report is empty and says why."""
    force = params.reward_model.retrain if force is None else force
    with stage_writer(params) as lay:
        if not params.validation.judges:
            return ValidityReport({}, pd.DataFrame(columns=BASE_COLUMNS), {}, ["validation.judges is empty: no card"])
        settings = card_settings(params)
        if not force and (saved := _saved(lay, settings)):
            return saved
        try:
            report = _compute(params, cache)
        except OutcomeError as e:
            report = ValidityReport({}, pd.DataFrame(columns=BASE_COLUMNS), {}, [f"no card: {e}"])
        report.frame.to_csv(lay.validity_csv, index=False)
        runs.write_json({"settings": settings, "cards": {k: c.as_dict() for k, c in report.cards.items()},
                         "evaluation_critic": report.evaluation_critic, "notes": report.notes}, lay.validity)
        return report


def evaluation_card(params: Any) -> dict[str, Any]:
    """The card of the evaluation's critic, for every SR/AT it decides (its key in the run's
    ``validity.json`` and the card's headline numbers), or ``{"card": None, "note": why}``."""
    saved = runs.read_json(runs.layout(params).validity, default=None)
    if not saved:
        return {"card": None, "note": "no validity card in this run (notebook 03)"}
    applies = saved.get("evaluation_critic") or {}
    if applies.get("identity") != critic.identity(params, "evaluation"):
        return {"card": None, "note": "the run's cards were computed for another evaluation critic: rerun notebook 03"}
    key = applies.get("card")
    card = (saved.get("cards") or {}).get(key) if key else None
    if not card:
        return {"card": None, "note": applies.get("note") or "no card for the evaluation critic"}
    return {"card": key, **{k: card.get(k) for k in SUMMARY_FIELDS}}
