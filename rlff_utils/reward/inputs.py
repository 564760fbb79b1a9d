"""What the reward model reads: the one input text, the reward frame, the split by dialogue, the
three training sets and their tokenisation.

Every input goes through :func:`format_input`, in training and in scoring, so the reward GRPO
sees is computed from exactly the text the model was trained on. The split is by dialogue (so by
context too): no dialogue contributes to two splits, or the held-out metrics would reward
memorising a conversation rather than judging a reply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..text import last_turns, transcript, visible_reply
from .target import load_reward_frame
from .variants import RewardModelError

if TYPE_CHECKING:  # pragma: no cover
    from ..params import RunParams

REQUIRED_COLUMNS = ("context_id", "candidate_index", "history", "candidate_reply", "r_fut", "label")
DEFAULT_HISTORY_TURNS = 8


# --------------------------------------------------------------------------------------------
# The input text
# --------------------------------------------------------------------------------------------


def format_input(history: list[dict], reply: str, max_history_turns: int = DEFAULT_HISTORY_TURNS) -> str:
    """The reward model's input text, used in training and in scoring alike.

    Only the reply's visible part is shown (reasoning and a strategy tag are removed), because
    the reward is about what the seeker reads. The most recent ``max_history_turns`` turns are
    kept; tokenisation truncates from the left, so an over-long input loses its oldest turns and
    never the reply.
    """
    turns = last_turns(history, max_history_turns)
    return f"Conversation:\n{transcript(turns)}\n\nReply to rate:\nSupporter: {visible_reply(reply or '')}"


def history_turns(params: "RunParams") -> int:
    """Context turns shown to the reward model."""
    return params.reward_model.max_history_turns or params.data.max_history_turns


# --------------------------------------------------------------------------------------------
# The reward frame and its split
# --------------------------------------------------------------------------------------------


def check_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The usable rows: required columns present, R_fut finite (a critic that named no label
    gives NaN, and such a candidate has no target). Raises on input no model can learn from."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise RewardModelError(f"reward frame lacks column(s) {missing}; expected {list(REQUIRED_COLUMNS)}")
    out = frame[np.isfinite(pd.to_numeric(frame["r_fut"], errors="coerce"))].copy()
    if out.empty:
        raise RewardModelError(f"no record with a finite r_fut among {len(frame)} records")
    out["r_fut"] = out["r_fut"].astype(float)
    out["label"] = out["label"].astype(int)
    out["candidate_index"] = out["candidate_index"].astype(int)
    if "dialogue_id" not in out.columns:
        out["dialogue_id"] = out["context_id"]
    out.attrs["dropped_nan"] = len(frame) - len(out)
    return out.reset_index(drop=True)


@dataclass
class RMSplits:
    """Train / validation / test rows of the reward frame, disjoint by dialogue."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    dropped_nan: int = 0

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        return [("train", self.train), ("valid", self.valid), ("test", self.test)]

    def summary(self) -> pd.DataFrame:
        rows = []
        for name, f in self.items():
            rows.append(
                {
                    "split": name,
                    "dialogues": f["dialogue_id"].nunique(),
                    "contexts": f["context_id"].nunique(),
                    "candidates": len(f),
                    "positive_rate": f["label"].mean() if len(f) else math.nan,
                    "mean_r_fut": f["r_fut"].mean() if len(f) else math.nan,
                    "ranking_pairs": len(ranking_pairs(f)),
                }
            )
        return pd.DataFrame(rows)

    def assignments(self) -> pd.DataFrame:
        return pd.concat(
            [f[["dialogue_id", "context_id"]].drop_duplicates().assign(split=n) for n, f in self.items()],
            ignore_index=True,
        )


def split_by_context(
    frame: pd.DataFrame, valid_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> RMSplits:
    """Seeded split of whole dialogues (hence whole contexts) into train / valid / test.

    Grouping by dialogue rather than by context also keeps two contexts cut from one dialogue
    (which share their history) on one side. Each split gets at least one group.
    """
    frame = check_frame(frame)
    groups = sorted(frame["dialogue_id"].unique())
    n = len(groups)
    n_test = max(1, round(n * test_fraction))
    n_valid = max(1, round(n * valid_fraction))
    if n - n_test - n_valid < 1:
        raise RewardModelError(
            f"too few dialogues to split: {n} (need at least 3, one per split; with valid_fraction="
            f"{valid_fraction} and test_fraction={test_fraction} this needs {n_test + n_valid + 1}); "
            "simulate more contexts"
        )
    order = np.random.default_rng(seed).permutation(n)
    test_ids = {groups[i] for i in order[:n_test]}
    valid_ids = {groups[i] for i in order[n_test : n_test + n_valid]}
    which = frame["dialogue_id"].map(lambda g: "test" if g in test_ids else "valid" if g in valid_ids else "train")
    parts = {s: frame[which == s].reset_index(drop=True) for s in ("train", "valid", "test")}
    return RMSplits(parts["train"], parts["valid"], parts["test"], frame.attrs.get("dropped_nan", 0))


def run_splits(params: "RunParams", frame: pd.DataFrame | None = None) -> RMSplits:
    """The run's split of ``frame`` (default: this run's simulation records), by its params."""
    rm = params.reward_model
    frame = load_reward_frame(params) if frame is None else frame
    return split_by_context(frame, rm.valid_fraction, rm.test_fraction, params.seed)


def ranking_pairs(frame: pd.DataFrame, max_per_context: int | None = None, min_gap: float = 1e-9) -> pd.DataFrame:
    """Every pair of candidates of one context whose R_fut differ: (chosen, rejected) row indices
    into ``frame``, the higher R_fut chosen. With ``max_per_context``, the pairs with the largest
    gaps are kept (the clearest preferences)."""
    cols = ["context_id", "chosen", "rejected", "gap"]
    if frame.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for ctx, idx in frame.groupby("context_id", sort=True).groups.items():
        idx = list(idx)
        r = frame.loc[idx, "r_fut"].to_numpy()
        pairs = []
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                gap = r[a] - r[b]
                if abs(gap) > min_gap:
                    chosen, rejected = (idx[a], idx[b]) if gap > 0 else (idx[b], idx[a])
                    pairs.append((ctx, chosen, rejected, abs(gap)))
        pairs.sort(key=lambda p: (-p[3], p[1], p[2]))
        rows += pairs[:max_per_context] if max_per_context else pairs
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------------------------
# The three training sets
# --------------------------------------------------------------------------------------------


def _texts(frame: pd.DataFrame, max_history_turns: int) -> list[str]:
    return [format_input(h, r, max_history_turns) for h, r in zip(frame["history"], frame["candidate_reply"])]


def classification_dataset(frame: pd.DataFrame, max_history_turns: int = DEFAULT_HISTORY_TURNS):
    """``datasets.Dataset`` with ``text`` and integer ``label`` (1 when R_fut ≥ δ)."""
    import datasets

    return datasets.Dataset.from_dict(
        {"text": _texts(frame, max_history_turns), "label": [int(x) for x in frame["label"]]}
    )


def regression_dataset(frame: pd.DataFrame, max_history_turns: int = DEFAULT_HISTORY_TURNS):
    """``datasets.Dataset`` with ``text`` and float ``label`` = R_fut."""
    import datasets

    return datasets.Dataset.from_dict(
        {"text": _texts(frame, max_history_turns), "label": [float(x) for x in frame["r_fut"]]}
    )


def ranking_dataset(
    frame: pd.DataFrame, max_history_turns: int = DEFAULT_HISTORY_TURNS, max_pairs_per_context: int | None = None
):
    """``datasets.Dataset`` of preference pairs: ``chosen`` / ``rejected`` texts (TRL's columns)."""
    import datasets

    pairs = ranking_pairs(frame, max_pairs_per_context)
    texts = dict(zip(frame.index, _texts(frame, max_history_turns)))
    return datasets.Dataset.from_dict(
        {
            "context_id": list(pairs["context_id"]),
            "chosen": [texts[i] for i in pairs["chosen"]],
            "rejected": [texts[i] for i in pairs["rejected"]],
        }
    )


# --------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------


def _ids(tok, texts: list[str], max_length: int) -> dict[str, list]:
    texts = list(texts)
    if not texts:  # tokenizers refuse an empty batch
        return {"input_ids": [], "attention_mask": []}
    return dict(tok(texts, truncation=True, max_length=max_length))


def tokenize_labelled(ds, tok, max_length: int):
    """``input_ids`` / ``attention_mask`` / ``labels`` for transformers' ``Trainer``."""
    import datasets

    enc = _ids(tok, ds["text"], max_length)
    return datasets.Dataset.from_dict(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": list(ds["label"])}
    )


def tokenize_pairs(ds, tok, max_length: int):
    """Pre-tokenised pairs (``chosen_ids``/``rejected_ids``), so TRL tokenises nothing itself and
    the ranking model reads exactly the tokens the scorer gives it at scoring time."""
    import datasets

    return datasets.Dataset.from_dict(
        {
            "chosen_ids": _ids(tok, ds["chosen"], max_length)["input_ids"],
            "rejected_ids": _ids(tok, ds["rejected"], max_length)["input_ids"],
        }
    )


def training_sets(variant: str, splits: RMSplits, tok, params: "RunParams") -> tuple[object, object, list[str]]:
    """Tokenised (train, valid) sets of ``variant`` and notes on what the data allows. Raises
    :class:`RewardModelError` on data no model of this variant can learn from."""
    rm, turns = params.reward_model, history_turns(params)
    notes: list[str] = []
    if variant == "ranking":
        train = ranking_dataset(splits.train, turns, rm.max_pairs_per_context)
        valid = ranking_dataset(splits.valid, turns, rm.max_pairs_per_context)
        if len(train) == 0:
            raise RewardModelError(
                "no ranking pairs in the training split: every context's candidates have the same R_fut"
            )
        return tokenize_pairs(train, tok, rm.max_length), tokenize_pairs(valid, tok, rm.max_length), notes
    build = classification_dataset if variant == "classification" else regression_dataset
    train, valid = build(splits.train, turns), build(splits.valid, turns)
    if variant == "classification" and len(set(train["label"])) < 2:
        notes.append(f"every training label is {train['label'][0]}: the classifier can only learn a constant")
    return tokenize_labelled(train, tok, rm.max_length), tokenize_labelled(valid, tok, rm.max_length), notes
