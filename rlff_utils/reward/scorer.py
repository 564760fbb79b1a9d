"""Scoring with a saved reward model.

:class:`RewardScorer` is the one way (history, reply) becomes a score. :func:`load_scorer` loads a
variant saved by notebook 03 (or the untrained ``random`` head); :class:`ScorerCache` keeps loaded
models for a caller that scores several times (a retrained adapter replaces its old copy). The
reward function GRPO trains on wraps a scorer: :class:`rlff_utils.rewards.RewardFunction`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import runs
from .backbone import load_backbone, load_rm_tokenizer, precision
from .inputs import format_input, history_turns
from .variants import NUM_LABELS, RewardModelError, check_variant

if TYPE_CHECKING:  # pragma: no cover
    from ..params import RunParams


class RewardScorer:
    """A sequence-classification reward model and the one way it turns (history, reply) into a
    score: P(positive) for a two-class head, the scalar output for a one-output head."""

    def __init__(self, model, tokenizer, variant: str, max_length: int, max_history_turns: int, batch_size: int = 16):
        self.model, self.tokenizer, self.variant = model.eval(), tokenizer, variant
        self.max_length, self.max_history_turns, self.batch_size = max_length, max_history_turns, batch_size

    def score_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros(0, dtype=np.float64)
        device = next(self.model.parameters()).device
        lengths = [len(t) for t in texts]
        order = np.argsort(lengths, kind="stable")[::-1]  # similar lengths together: less padding
        out = np.zeros(len(texts), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx], truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
                ).to(device)
                logits = self.model(**enc).logits.float()
                if logits.shape[-1] == 2:
                    scores = torch.softmax(logits, dim=-1)[:, 1]
                else:
                    scores = logits[:, 0]
                out[idx] = scores.cpu().numpy()
        return out

    def score(self, histories: list[list[dict]], replies: list[str]) -> np.ndarray:
        if len(histories) != len(replies):
            raise RewardModelError(f"{len(histories)} histories for {len(replies)} replies")
        return self.score_texts([format_input(h, r, self.max_history_turns) for h, r in zip(histories, replies)])

    def score_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return self.score(list(frame["history"]), list(frame["candidate_reply"]))


def predict(scorer: RewardScorer, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s identifiers and targets with the scorer's ``score`` beside them."""
    keep = [c for c in ("dialogue_id", "context_id", "candidate_index", "r_fut", "label") if c in frame.columns]
    return frame[keep].assign(score=scorer.score_frame(frame)).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def saved_adapter(params: "RunParams", variant: str) -> Path:
    """The adapter folder of a trained variant. FileNotFoundError saying why when it is absent;
    :class:`rlff_utils.runs.StaleStageError` when the stage was trained with other settings."""
    lay = runs.layout(params)
    adapter = lay.rm_adapter(check_variant(variant))
    if not (adapter / "adapter_config.json").is_file():
        skipped = runs.read_json(lay.rm_skipped(variant), default=None)
        reason = f" (skipped: {skipped.get('note', '')})" if skipped else ""
        raise FileNotFoundError(
            f"no trained {variant} reward model at {adapter}{reason}: run notebook 03 (reward model) "
            "with this variant in reward_model.variants"
        )
    runs.check_stage(params, runs.REWARD_MODEL)
    return adapter


def _cache_key(params: "RunParams", variant: str, device: str | None) -> tuple:
    prec = precision(params, device)
    if variant == "random":
        return ("random", params.models.reward_backbone.name, params.seed, params.reward_model.pooling, prec.device,
                str(prec.score_dtype))
    adapter = saved_adapter(params, variant)
    return (str(adapter), (adapter / "adapter_config.json").stat().st_mtime_ns, prec.device, str(prec.score_dtype))


def load_scorer(params: "RunParams", variant: str | None = None, device: str | None = None) -> RewardScorer:
    """The saved reward model of ``variant`` (default ``grpo.reward_model``; ``random``: an
    untrained head, nothing saved), LoRA merged for speed, in the precision of
    ``models.reward_backbone``."""
    variant = check_variant(variant or params.grpo.reward_model)
    role = params.models.reward_backbone
    prec = precision(params, device)
    if variant == "random":
        tok = load_rm_tokenizer(role.name)
        model = load_backbone(role.name, NUM_LABELS["random"], params.seed, tok.pad_token_id, prec.score_dtype,
                              params.reward_model.pooling)
        return RewardScorer(
            model.to(prec.device), tok, "random", params.reward_model.max_length, history_turns(params), role.batch_size
        )
    from peft import PeftModel

    adapter = saved_adapter(params, variant)
    config = runs.read_json(runs.layout(params).rm_config(variant))
    tok = load_rm_tokenizer(config["backbone"])
    base = load_backbone(config["backbone"], config["num_labels"], params.seed, tok.pad_token_id, prec.score_dtype,
                         config.get("pooling", "last"))
    model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().to(prec.device)
    return RewardScorer(model, tok, variant, config["max_length"], config["max_history_turns"], role.batch_size)


class ScorerCache:
    """Loaded scorers, keyed by what they were loaded from (adapter and its modification time, or
    the random head's seed) and the device and dtype. A retrained adapter replaces its old copy.
    Owned by whoever scores repeatedly; nothing is cached behind a caller's back."""

    def __init__(self) -> None:
        self._scorers: dict[tuple, RewardScorer] = {}

    def get(self, params: "RunParams", variant: str | None = None, device: str | None = None) -> RewardScorer:
        variant = check_variant(variant or params.grpo.reward_model)
        key = _cache_key(params, variant, device)
        if key not in self._scorers:
            for old in [k for k in self._scorers if k[0] == key[0]]:
                del self._scorers[old]
            self._scorers[key] = load_scorer(params, variant, device)
        return self._scorers[key]

    def clear(self) -> None:
        import gc

        self._scorers.clear()
        gc.collect()

    def __len__(self) -> int:
        return len(self._scorers)
