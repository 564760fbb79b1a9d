"""Scoring with a saved reward model, and the reward function GRPO trains on.

:class:`RewardScorer` is the one way (history, reply) becomes a score. :func:`load_scorer` loads a
variant saved by notebook 03 (or the untrained ``random`` head); :class:`ScorerCache` keeps loaded
models for a caller that scores several times (a retrained adapter replaces its old copy).
:class:`RewardFunction` is R_fut in TRL's reward-function signature; GRPO imports this module only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from .. import runs
from ..data import SEEKER, SUPPORTER
from .backbone import load_backbone, load_rm_tokenizer, precision
from .inputs import format_input, history_turns
from .variants import NUM_LABELS, VARIANTS, RewardModelError, check_variant

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
    card = runs.read_json(runs.layout(params).rm_config(variant))
    tok = load_rm_tokenizer(card["backbone"])
    base = load_backbone(card["backbone"], card["num_labels"], params.seed, tok.pad_token_id, prec.score_dtype,
                         card.get("pooling", "last"))
    model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().to(prec.device)
    return RewardScorer(model, tok, variant, card["max_length"], card["max_history_turns"], role.batch_size)


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


# --------------------------------------------------------------------------------------------
# The GRPO reward function
# --------------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """A TRL completion as text: plain text, or a conversational list of messages (the assistant's
    contents joined). Every reward function of the project reads completions through this."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "\n".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")
    raise RewardModelError(f"cannot read a completion of type {type(completion).__name__}")


def _history_from_prompt(prompt: Any) -> list[dict]:
    """Dialogue turns recovered from a conversational prompt (user = seeker, assistant = supporter),
    for callers that do not pass the ``history`` column."""
    if not isinstance(prompt, list):
        raise RewardModelError(
            "plain-text prompts do not say who said what: pass the dataset's `history` column "
            "(a list of {speaker, text} turns per sample) to the reward function"
        )
    roles = {"user": SEEKER, "assistant": SUPPORTER}
    return [{"speaker": roles[m["role"]], "text": m.get("content") or ""} for m in prompt if m.get("role") in roles]


class RewardFunction:
    """R_fut for GRPO in TRL's reward-function signature.

    Picklable (holds the params and the variant; the model loads on first call in whichever
    process calls it, from ``cache`` when one is given), batched, no grad. Scores are soft:
    classification returns P(positive), because 0/1 labels would leave many GRPO groups with zero
    reward variance, hence no signal.
    """

    def __init__(self, params: "RunParams", variant: str, cache: ScorerCache | None = None):
        self.params, self.variant = params, check_variant(variant)
        self.__name__ = "future_reward"  # TRL logs rewards/<__name__>
        self._cache = cache
        self._scorer: RewardScorer | None = None

    @property
    def scorer(self) -> RewardScorer:
        if self._scorer is None:
            load = self._cache.get if self._cache is not None else load_scorer
            self._scorer = load(self.params, self.variant)
        return self._scorer

    def __call__(self, prompts=None, completions=None, history=None, **kwargs) -> list[float]:
        if completions is None:
            raise RewardModelError("the reward function needs `completions`")
        replies = [completion_text(c) for c in completions]
        if history is None:
            if prompts is None:
                raise RewardModelError("pass `history` (or conversational `prompts`) with the completions")
            history = [_history_from_prompt(p) for p in prompts]
        return self.score(list(history), replies)

    def score(self, histories: list[list[dict]], replies: list[str]) -> list[float]:
        """The reward of each (history, reply): what a caller outside GRPO scores with."""
        return [float(x) for x in self.scorer.score(histories, replies)]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_scorer": None, "_cache": None}  # models never cross processes

    def __repr__(self) -> str:
        return f"RewardFunction(variant={self.variant!r}, run={self.params.run_name!r})"


RULE = "rule"  # ``grpo.reward_model: rule``: the planted run's oracle arm, no model


def needs_trained_model(variant: str) -> bool:
    """Whether the reward source ``variant`` is a model notebook 03 trained (``random`` is an
    untrained head, ``rule`` the planted rule: neither reads the reward-model stage)."""
    return variant in VARIANTS


def reward_source(
    params: "RunParams", variant: str | None = None, cache: ScorerCache | None = None
) -> Callable[..., list[float]]:
    """What ``grpo.reward_model`` (or ``variant``) names, as a reward function
    ``f(prompts, completions, history=None, **kw) -> list[float]`` with ``f.score(histories,
    replies)`` for callers outside GRPO: a trained variant or ``random`` (its untrained head) as a
    lazy :class:`RewardFunction`, or ``rule`` (:class:`rlff_utils.planted.RuleReward`, allowed only
    in planted runs). Nothing loads or is checked here (:func:`load_reward_function` checks)."""
    variant = variant or params.grpo.reward_model
    if variant == RULE:
        from ..planted import RuleReward

        return RuleReward()
    return RewardFunction(params, check_variant(variant), cache)


def load_reward_function(
    params: "RunParams", variant: str | None = None, cache: ScorerCache | None = None
) -> Callable[..., list[float]]:
    """:func:`reward_source`, failing now, not at the first GRPO step, when the variant was never
    trained (or was trained with other settings)."""
    variant = variant or params.grpo.reward_model
    if needs_trained_model(variant):
        saved_adapter(params, variant)
    return reward_source(params, variant, cache)


def reward_examples(
    params: "RunParams", frame: pd.DataFrame, n_contexts: int = 2, variant: str | None = None,
    cache: ScorerCache | None = None,
) -> pd.DataFrame:
    """The GRPO reward function on every candidate of the first ``n_contexts`` contexts of
    ``frame``, next to their simulated R_fut: what GRPO will see for a group of answers."""
    f = load_reward_function(params, variant, cache)
    rows = frame[frame["context_id"].isin(list(dict.fromkeys(frame["context_id"]))[:n_contexts])]
    rewards = f(prompts=None, completions=list(rows["candidate_reply"]), history=list(rows["history"]))
    return rows.assign(reward=rewards)[["context_id", "candidate_index", "candidate_reply", "r_fut", "label", "reward"]]
