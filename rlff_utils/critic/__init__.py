"""The critic: one home for judging a conversation state ("has the seeker's problem been solved?").

A critic judges states (a dict with the dialogue so far as ``history`` and, in a rollout, the
rollout's own turns as ``rollout``) and returns one :class:`CriticResult` per state: score in
[−1, 1], success above the stage's threshold, label counts, unparsable answers. Every critic has
the same interface, :class:`Critic` (``judge(states, seeds=None, seed=None)``), and a stage gets
its critic from :func:`for_stage`, built from the params (:meth:`RunParams.critic_settings`):

================ ==========================================================================
``critic_mode``  what judges (module)
================ ==========================================================================
``votes``        an LLM, n sampled answers averaged (:mod:`.llm`; PPDPP's critic)
``probs``        an LLM, the expected label value under its answer probabilities (:mod:`.llm`)
``rule``         the planted rule on the rollout's supporter turns, no model (:mod:`.rule`)
``learned``      a classifier trained on real seekers' outcomes (:mod:`.learned`)
================ ==========================================================================

The labels, their values and the answer parsing are :mod:`.labels` (no project imports). Building
a critic never trains one: the learned critic is trained by :func:`train_learned_critic`, a step
notebooks 02 (when the simulation's critic is learned) and 03 call; :func:`for_stage` only loads
it. :func:`identity` says what makes a stage's critic the judge it is (two stages with one
identity share a validity card).

Users: the rollout engine (typed against :class:`Critic` only), the simulation and evaluation
stages, the contrast critic, the validity cards and the planted experiment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..backends import get_backend
from ..runs import EXECUTION_FIELDS, json_ready
from .labels import CRITIC_LABELS, CriticResult
from .learned import LearnedCritic, learned_critic_wanted, load_learned_critic, train_learned_critic
from .llm import LLMCritic
from .rule import RuleCritic

if TYPE_CHECKING:  # pragma: no cover
    from ..params import RunParams

MODES = ("votes", "probs", "rule", "learned")

__all__ = ["CRITIC_LABELS", "Critic", "CriticResult", "LLMCritic", "LearnedCritic", "MODES", "RuleCritic",
           "for_stage", "identity", "learned_critic_wanted", "load_learned_critic", "train_learned_critic"]


class Critic(Protocol):
    """What every critic offers: one result per state; ``seeds`` (one per state) make a sampled
    judgement depend on its own state only, ``seed`` seeds a whole call."""

    mode: str
    threshold: float

    def judge(self, states: list[dict[str, Any]], seeds: list[int] | None = None,
              seed: int | None = None) -> list[CriticResult]: ...


def for_stage(params: "RunParams", stage: str, backend: Any = None, mode: str | None = None,
              window: int | None = None) -> Critic:
    """The critic a stage's params configure (:meth:`RunParams.critic_settings`): ``backend``, an
    already loaded one for the LLM role; ``mode``, another mode than the stage's (the evaluation's
    contrast critic); ``window``, the turns of a state it reads (None: all it is given). In
    ``learned`` mode the run's trained learned critic is loaded (an error naming the training step
    when there is none)."""
    s = params.critic_settings(stage, mode)
    if s.mode == "rule":
        return RuleCritic(s.threshold)
    if s.mode == "learned":
        return load_learned_critic(params, threshold=s.threshold, view=window)
    if s.mode not in MODES:
        raise ValueError(f"critic mode must be one of {', '.join(map(repr, MODES))}, not {s.mode!r}")
    backend = backend if backend is not None else get_backend(s.role, seed=params.seed)
    return LLMCritic(backend, s.mode, s.samples, s.temperature, s.threshold, seed=params.seed, window=window)


def identity(params: "RunParams", stage: str) -> dict[str, Any]:
    """What makes a stage's critic the judge it is (model, mode, sampling, window): two stages
    with the same identity share one validity card."""
    s = params.critic_settings(stage)
    if s.mode in ("learned", "rule"):
        return {"mode": s.mode}
    out = {"model": {k: v for k, v in s.role.model_dump().items() if k not in EXECUTION_FIELDS},
           "mode": s.mode, "window": s.window}
    if s.mode == "votes":
        out |= {"samples": s.samples, "temperature": s.temperature}
    return json_ready(out)
