"""The LLM critic: PPDPP's question over any chat backend, in ``votes`` or ``probs`` mode.

``votes``: ``samples`` answers at ``temperature``, mean label value. On the in-process hf backend
(no constrained decoding) the answers are drawn from the model's probabilities of the four labels
(one ``score_choices`` call, tempered by ``temperature``, seeded per judgement), so none is
unparsable; vLLM samples under structured choice (``guided_choice``); an API endpoint's free
answers are parsed and the unparsable ones counted.
``probs``: one ``score_choices`` call, the expected label value (deterministic).

The question is :func:`rlff_utils.agents.critic_messages` (every prompt lives in ``agents``).
"""

from __future__ import annotations

from typing import Any

from ..agents import critic_messages
from ..backends import HFBackend
from .labels import CHOICE_FORMS, CRITIC_LABELS, CriticResult, label_distribution, probs_result, sampled_votes, votes_result

LLM_MODES = ("votes", "probs")


class LLMCritic:
    """PPDPP's critic over a :class:`~rlff_utils.backends.ChatBackend` (see the module docstring).
    ``window``: the turns of a state's ``history`` it reads (None: all)."""

    def __init__(self, backend: Any, mode: str = "votes", samples: int = 10, temperature: float = 1.1,
                 threshold: float = 0.5, seed: int = 0, window: int | None = None, max_new_tokens: int = 8):
        if mode not in LLM_MODES:
            raise ValueError(f"LLM critic mode must be one of {', '.join(map(repr, LLM_MODES))}, not {mode!r}")
        self.backend, self.mode, self.samples = backend, mode, samples
        self.temperature, self.threshold, self.seed = temperature, threshold, seed
        self.window, self.max_new_tokens = window, max_new_tokens
        self._calls = 0

    def judge(self, states: list[dict[str, Any]], seeds: list[int] | None = None,
              seed: int | None = None) -> list[CriticResult]:
        """One result per state (``history`` = the dialogue so far). The votes' sampling is seeded
        per state by ``seeds`` (one each: a judgement then does not depend on the other states of
        the call), else by ``seed`` (+ the state's index), by default a fresh, reproducible seed
        per call."""
        if not states:
            return []
        conversations = [critic_messages(s, self.window) for s in states]
        if seed is None and seeds is None:
            seed = self.seed + 7919 * self._calls
        self._calls += 1
        forms = [(label, form) for label, fs in CHOICE_FORMS.items() for form in fs]
        if self.mode == "probs":
            scores = self.backend.score_choices(conversations, [form for _, form in forms])
            return [probs_result(label_distribution(row, forms), self.threshold) for row in scores]
        if isinstance(self.backend, HFBackend):  # votes drawn from the label distribution
            if seeds is None:
                seeds = [seed + i for i in range(len(states))]
            rows = self.backend.score_choices(conversations, [form for _, form in forms])
            return [votes_result(sampled_votes(label_distribution(row, forms), self.samples, self.temperature, s) or
                                 [""] * self.samples, self.threshold)
                    for row, s in zip(rows, seeds)]
        answers = self.backend.generate(conversations, n=self.samples, temperature=self.temperature,
                                        max_new_tokens=self.max_new_tokens, seed=seed, seeds=seeds,
                                        guided_choice=list(CRITIC_LABELS))
        return [votes_result(a, self.threshold) for a in answers]
