"""The interface every backend implements, and the helpers they share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Conversation = list[dict[str, str]]


class BackendError(RuntimeError):
    """A backend could not answer (endpoint down, retries exhausted, missing capability)."""


@dataclass
class BackendStats:
    """Work done by one backend wrapper, for throughput figures (not a global)."""

    calls: int = 0
    conversations: int = 0
    sequences: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    def reset(self) -> None:
        self.__init__()


@runtime_checkable
class ChatBackend(Protocol):
    stats: BackendStats

    def generate(
        self,
        conversations: list[Conversation],
        n: int = 1,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
        guided_choice: list[str] | None = None,
        seeds: list[int] | None = None,
    ) -> list[list[str]]:
        """``[conversation][sample]`` replies. ``None`` settings fall back to the role's.
        ``guided_choice``: constrain each reply to one of these strings where the engine can
        (vLLM structured outputs); other engines generate freely and callers parse.
        ``seeds``: one per conversation, so a conversation's samples depend on its own seed only,
        never on which other conversations share the call; ``seed``: conversation i gets
        ``seed + i``. Give one or the other (neither: unseeded)."""
        ...

    def score_choices(self, conversations: list[Conversation], choices: list[str]) -> list[list[float]]:
        """Per conversation, the probability of each choice as the assistant's whole answer,
        renormalised over the choices (rows sum to 1; NaN when the engine saw none of them)."""
        ...


def trim_at_stop(text: str, stop: list[str] | None) -> str:
    """Cut ``text`` at the earliest stop string (engines may overshoot by a token or more)."""
    if stop:
        cuts = [i for s in stop if s and (i := text.find(s)) >= 0]
        if cuts:
            text = text[: min(cuts)]
    return text.strip()


def _row_seeds(count: int, seed: int | None, seeds: list[int] | None) -> list[int] | None:
    """One seed per conversation from ``seeds`` (checked) or ``seed`` (+ index); None: unseeded."""
    if seeds is None:
        return None if seed is None else [seed + i for i in range(count)]
    if seed is not None:
        raise ValueError("generate: pass seed or seeds, not both")
    if len(seeds) != count:
        raise ValueError(f"generate: {len(seeds)} seeds for {count} conversations")
    return [int(s) for s in seeds]


def _softmax(logps: list[float]) -> list[float]:
    finite = [x for x in logps if math.isfinite(x)]
    if not finite:
        return [math.nan] * len(logps)
    top = max(finite)
    exps = [math.exp(x - top) if math.isfinite(x) else 0.0 for x in logps]
    total = sum(exps)
    return [e / total for e in exps]


