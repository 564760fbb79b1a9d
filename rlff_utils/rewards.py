"""Every reward function GRPO trains on, in TRL's reward-function signature (open-r1 style).

``f(prompts, completions, **columns) -> list[float]``, picklable, named by ``__name__`` (TRL logs
``rewards/<name>``). GRPO's reward is R = R_fut + α·R_format:

* :class:`RewardFunction` (``future_reward``): R_fut as the reward model ``grpo.reward_model``
  predicts it (:mod:`rlff_utils.reward.scorer`); ``random`` is its untrained head (the paper's
  ablation);
* :class:`RuleReward` (``future_reward`` too): the planted rule itself
  (:mod:`rlff_utils.critic.rule`), the oracle arm of a planted run (``grpo.reward_model: rule``);
* :func:`format_reward`: explicit reasoning before the reply (:func:`is_well_formed`).

:func:`reward_source` turns ``grpo.reward_model`` into one of the first two;
:func:`load_reward_function` does the same and fails at once when the model was never trained.
Every completion is read through :func:`rlff_utils.text.completion_text`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd

from .critic.rule import acknowledges_feelings
from .reward.scorer import RewardScorer, ScorerCache, load_scorer, saved_adapter
from .reward.variants import VARIANTS, RewardModelError, check_variant
from .text import SEEKER, SUPPORTER, completion_text

if TYPE_CHECKING:  # pragma: no cover
    from .params import RunParams


# --------------------------------------------------------------------------------------------
# R_format
# --------------------------------------------------------------------------------------------

_THINK_BLOCK = re.compile(r"\A\s*<think>(?P<reasoning>.*?)</think>(?P<reply>.*)\Z", re.DOTALL)


def is_well_formed(text: str) -> bool:
    """Exactly one ``<think>`` block, opening the answer, with non-empty reasoning, followed by a
    non-empty reply.

    Stricter than ``trl.rewards.think_format_reward``, which gives 1.0 to an empty reply
    (``<think>x</think>``) and to a stray second ``</think>``; both would let the policy collect the
    format reward without answering the seeker. Leading whitespace is allowed (tokenizers often
    emit it); anything else before ``<think>`` is not.
    """
    m = _THINK_BLOCK.match(text)
    if m is None:
        return False
    reasoning, reply = m.group("reasoning"), m.group("reply")
    if "<think>" in reasoning or "<think>" in reply or "</think>" in reply:
        return False
    return bool(reasoning.strip()) and bool(reply.strip())


def format_reward(completions: list, **kwargs) -> list[float]:
    """R_format in TRL's reward-function signature (module level, so it pickles)."""
    return [1.0 if is_well_formed(completion_text(c)) else 0.0 for c in completions]


# --------------------------------------------------------------------------------------------
# R_fut: the reward model, or the planted rule
# --------------------------------------------------------------------------------------------


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
    lazy :class:`RewardFunction`, or ``rule`` (:class:`RuleReward`, allowed only in planted runs). Nothing loads or is checked here (:func:`load_reward_function` checks)."""
    variant = variant or params.grpo.reward_model
    if variant == RULE:
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


class RuleReward:
    """GRPO's reward straight from the planted rule (1.0 when the completion acknowledges the
    seeker's feelings, else 0.0), in TRL's reward-function signature: the reward a perfect reward
    model would give. It separates the two halves of the machinery: GRPO + LoRA + evaluation
    learning a planted reward, and the reward model learning it from the simulation."""

    __name__ = "future_reward"  # the same curve name as the reward model's

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        if completions is None:
            raise ValueError("the rule reward needs `completions`")
        return [float(acknowledges_feelings(completion_text(c))) for c in completions]

    def score(self, histories, replies) -> list[float]:
        """The scorer interface (``RewardScorer.score``), for the validity card."""
        return [float(acknowledges_feelings(r)) for r in replies]
