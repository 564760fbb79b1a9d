"""Real conversations with known outcomes: the two groups of a validity card, and the learned
critic's labelled examples, split by conversation.

Outcomes come from the seekers themselves:

* **helped** — an ESConv conversation whose seeker's emotional intensity (survey, 1–5) fell by at
  least ``validation.min_intensity_drop`` points;
* **not helped** — a conversation the ESConv authors left out because the seeker was not helped
  (no drop in intensity, or empathy/relevance ≤ 2; ``data.esconv_failed_path``), or an ESConv
  conversation whose intensity did not fall (drop ≤ 0);
* per turn, where the original release kept it, the seeker's 1–5 **feedback** on the help so far:
  the conversation up to a turn rated ≥ ``feedback_high`` counts as helped, ≤ ``feedback_low`` as not.

:func:`outcome_sets` draws the card's groups (seeded samples of ``failed_conversations`` failed and
``success_conversations`` successful ones) and holds out ``learned_critic.heldout_fraction`` of each
group from the learned critic, which trains on the other conversations (``max_train_conversations``
of each outcome, seeded; by default every not-helped one and as many helped ones) with a validation
split for early stopping, all by conversation. ESConv conversations the simulation drew contexts from are
left out of every set: the reward model was trained on their continuations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .sampling import derive_seed
from .text import SEEKER

if TYPE_CHECKING:  # pragma: no cover
    from .dialogues import Dialogue
    from .params import RunParams

SUCCESS, FAILED = "success", "failed"  # the card's groups
HELPED, NOT_HELPED = 1, 0  # the learned critic's labels


class OutcomeError(ValueError):
    """Real outcomes that cannot make a card or train the learned critic; says what is missing."""


def intensity_drop(d: "Dialogue") -> int | None:
    """Initial − final emotional intensity (the seeker's survey), None without both."""
    if d.initial_emotion_intensity is None or d.final_emotion_intensity is None:
        return None
    return d.initial_emotion_intensity - d.final_emotion_intensity


def _sample(items: Sequence["Dialogue"], k: int | None, seed: int, what: str) -> list["Dialogue"]:
    """``k`` of ``items`` (all when None or more than there are), drawn by a seed of their own,
    in id order."""
    items = sorted(items, key=lambda d: d.id)
    if k is None or k >= len(items):
        return items
    rng = np.random.default_rng(derive_seed(seed, what))
    return sorted((items[i] for i in rng.choice(len(items), k, replace=False)), key=lambda d: d.id)


def _split(items: list["Dialogue"], fraction: float, seed: int, what: str) -> tuple[list["Dialogue"], list["Dialogue"]]:
    """(the ``fraction`` drawn, the rest), at least one drawn from a non-empty list."""
    if not items:
        return [], []
    n = min(len(items), max(1, round(fraction * len(items))))
    drawn = {d.id for d in _sample(items, n, seed, what)}
    return [d for d in items if d.id in drawn], [d for d in items if d.id not in drawn]


@dataclass
class OutcomeSets:
    """The card's two groups and the learned critic's conversations (disjoint from its held-out)."""

    success: list["Dialogue"]
    failed: list["Dialogue"]
    heldout: set[str]  # ids of the card's conversations the learned critic never trains on
    train: list[tuple["Dialogue", int]] = field(default_factory=list)  # (conversation, outcome label)
    valid: list[tuple["Dialogue", int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def card(self) -> list[tuple["Dialogue", str]]:
        return [(d, SUCCESS) for d in self.success] + [(d, FAILED) for d in self.failed]

    def assignments(self):
        """One row per conversation used: id, card group (or empty), learned-critic split, label."""
        import pandas as pd

        rows = {d.id: {"dialogue_id": d.id, "group": g, "split": "heldout" if d.id in self.heldout else "",
                       "label": HELPED if g == SUCCESS else NOT_HELPED} for d, g in self.card}
        for split, pairs in (("train", self.train), ("valid", self.valid)):
            for d, label in pairs:
                rows.setdefault(d.id, {"dialogue_id": d.id, "group": "", "label": label})["split"] = split
        return pd.DataFrame(list(rows.values()), columns=["dialogue_id", "group", "split", "label"])


def load_failed(params: "RunParams") -> list["Dialogue"]:
    from .esconv import load_esconv_failed

    path = params.data.esconv_failed_path
    if not path:
        raise OutcomeError("no failed conversations: set data.esconv_failed_path (or RLFF_DATA_DIR holding "
                           "esconv/failed/FailedESConv_dev.json)")
    return load_esconv_failed(params.resolve(path))[0]


def outcome_sets(params: "RunParams", dialogues: Sequence["Dialogue"] | None = None,
                 failed: Sequence["Dialogue"] | None = None, used: set[str] | None = None) -> OutcomeSets:
    """The run's real-outcome sets (see the module docstring). ``dialogues`` (default: the data
    stage's), ``failed`` (default: ``data.esconv_failed_path``) and ``used`` (ids the simulation
    drew contexts from; default: the data stage's contexts) are for tests."""
    v, lc, seed = params.validation, params.validation.learned_critic, params.seed
    notes: list[str] = []
    if dialogues is None:
        from .data import load_dialogues

        dialogues = load_dialogues(params)
    failed = list(load_failed(params) if failed is None else failed)
    if used is None:
        from .data import load_contexts

        try:
            used = {c["dialogue_id"] for c in load_contexts(params)}
        except FileNotFoundError:
            used = set()
    surveyed = [d for d in dialogues if d.dataset == "esconv" and intensity_drop(d) is not None and d.id not in used]
    helped = [d for d in surveyed if intensity_drop(d) >= v.min_intensity_drop]
    unhelped = [d for d in surveyed if intensity_drop(d) <= 0]
    if used:
        notes.append(f"{len(used)} ESConv conversations the run drew simulation contexts from are left out")
    if not failed or not helped:
        raise OutcomeError(f"a card needs both groups: {len(helped)} ESConv conversations with an intensity drop "
                           f">= {v.min_intensity_drop} and {len(failed)} failed conversations")
    card_failed = _sample(failed, v.failed_conversations, seed, "card-failed")
    card_success = _sample(helped, v.success_conversations or len(card_failed), seed, "card-success")
    if len(card_success) < (v.success_conversations or len(card_failed)):
        notes.append(f"only {len(card_success)} successful conversations available")
    held_s, _ = _split(card_success, lc.heldout_fraction, seed, "heldout-success")
    held_f, _ = _split(card_failed, lc.heldout_fraction, seed, "heldout-failed")
    heldout = {d.id for d in held_s + held_f}

    cap = lc.max_train_conversations
    negatives = _sample([d for d in failed + unhelped if d.id not in heldout], cap, seed, "train-failed")
    positives = _sample([d for d in helped if d.id not in heldout], cap or len(negatives), seed, "train-success")
    labelled = [(d, NOT_HELPED) for d in negatives] + [(d, HELPED) for d in positives]
    valid_ids: set[str] = set()
    for label in (HELPED, NOT_HELPED):  # stratified: both outcomes in the validation split
        group = [d for d, y in labelled if y == label]
        if len(group) >= 2:
            valid_ids |= {d.id for d in _split(group, lc.valid_fraction, seed, f"valid-{label}")[0]}
    return OutcomeSets(card_success, card_failed, heldout,
                       [(d, y) for d, y in labelled if d.id not in valid_ids],
                       [(d, y) for d, y in labelled if d.id in valid_ids], notes)


# --------------------------------------------------------------------------------------------
# Labelled states for the learned critic
# --------------------------------------------------------------------------------------------


def labelled_states(pairs: Sequence[tuple["Dialogue", int]], feedback_high: int | None = 4,
                    feedback_low: int | None = 2) -> list[dict[str, Any]]:
    """The learned critic's examples: each whole conversation with its outcome, and (when the
    thresholds are given) each prefix ending at a seeker turn whose feedback is ≥ ``feedback_high``
    (helped) or ≤ ``feedback_low`` (not helped). Rows: dialogue_id, kind, history, label."""
    rows = []
    for d, label in pairs:
        turns = [{"speaker": t.speaker, "text": t.text} for t in d.turns]
        rows.append({"dialogue_id": d.id, "kind": "conversation", "history": turns, "label": int(label)})
        if feedback_high is None or feedback_low is None:
            continue
        for i, t in enumerate(d.turns):
            if t.speaker != SEEKER or t.feedback is None or feedback_low < t.feedback < feedback_high:
                continue
            rows.append({"dialogue_id": d.id, "kind": f"feedback {t.feedback}", "history": turns[: i + 1],
                         "label": HELPED if t.feedback >= feedback_high else NOT_HELPED})
    return rows


def label_balance(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Examples per label and kind, for the learned critic's record."""
    out: dict[str, Any] = {"examples": len(rows), "helped": sum(r["label"] == HELPED for r in rows)}
    out["helped_share"] = out["helped"] / len(rows) if rows else math.nan
    out["feedback_prefixes"] = sum(r["kind"] != "conversation" for r in rows)
    return out
