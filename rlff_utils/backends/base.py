"""The interface every backend implements, and the helpers they share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

from ..text import strip_chat_controls

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
    # what was done to prompts before the model saw them (:func:`fit_conversations`)
    control_strings_removed: int = 0
    trimmed_prompts: int = 0
    dropped_turns: int = 0
    cut_characters: int = 0

    def reset(self) -> None:
        self.__init__()

    def usage(self) -> dict[str, int]:
        """What the model was asked for: requests (prompts), sequences (sampled replies), prompt and
        generated tokens, in the cost estimate's terms (:mod:`rlff_utils.cost`)."""
        return {"requests": self.conversations, "sequences": self.sequences, "prompt_tokens": self.prompt_tokens,
                "generated_tokens": self.generated_tokens}

    def fitting(self) -> dict[str, int]:
        """What was removed from prompts: control strings, whole oldest turns, characters."""
        return {"control_strings_removed": self.control_strings_removed, "trimmed_prompts": self.trimmed_prompts,
                "dropped_turns": self.dropped_turns, "cut_characters": self.cut_characters}


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




# --------------------------------------------------------------------------------------------
# Prompts: untrusted control strings out, the whole prompt inside the model's window
# --------------------------------------------------------------------------------------------

CUT_MARK = " [...] "


def fit_conversations(conversations: list[Conversation], stats: BackendStats,
                      count_tokens: Callable[[Conversation], int] | None = None,
                      limit: int | None = None) -> list[Conversation]:
    """Every conversation as the model may read it: chat-template control strings removed from
    each message (data and simulated turns cannot open or close a message), then, with a token
    counter and a ``limit`` (the model's window minus the tokens it will generate), trimmed to fit
    (:func:`fit_window`). What was removed is counted in ``stats``."""
    out = []
    for conv in conversations:
        cleaned = []
        for message in conv:
            content, removed = strip_chat_controls(message.get("content") or "")
            stats.control_strings_removed += removed
            cleaned.append({**message, "content": content})
        out.append(fit_window(cleaned, count_tokens, limit, stats) if count_tokens and limit else cleaned)
    return out


def fit_window(conv: Conversation, count_tokens: Callable[[Conversation], int], limit: int,
               stats: BackendStats) -> Conversation:
    """``conv`` within ``limit`` tokens: first the oldest turns go (never the system message or
    the last message), then the longest message is cut in its middle (its start, often the
    instructions, and its end, the latest turns, stay) until the prompt fits."""
    n = count_tokens(conv)
    if n <= limit:
        return conv
    stats.trimmed_prompts += 1
    conv = [dict(m) for m in conv]
    while n > limit:
        turns = [i for i, m in enumerate(conv) if m.get("role") != "system"]
        if len(turns) <= 1:
            break
        del conv[turns[0]]
        stats.dropped_turns += 1
        n = count_tokens(conv)
    for _ in range(32):
        if n <= limit:
            return conv
        i = max(range(len(conv)), key=lambda j: len(conv[j]["content"]))
        text = conv[i]["content"]
        if len(text) <= len(CUT_MARK):
            break  # nothing left to cut
        rest = count_tokens([*conv[:i], {**conv[i], "content": CUT_MARK}, *conv[i + 1:]])
        share = max(0.0, (limit - rest) / max(1, n - rest))  # of this message's tokens that fit
        keep = int(len(text) * share * 0.95)
        head = keep // 3
        conv[i]["content"] = text[:head] + CUT_MARK + text[len(text) - (keep - head):] if keep else CUT_MARK.strip()
        stats.cut_characters += len(text) - keep
        n = count_tokens(conv)
    if n > limit:
        raise BackendError(f"a prompt of {n} tokens cannot be cut to the model's window of {limit} tokens "
                           "(the fixed part of the prompt alone is longer): raise max_model_len or lower max_new_tokens")
    return conv


def window_limit(window: int | None, reserve: int) -> int | None:
    """Tokens a prompt may take: the model's ``window`` minus what it generates (None: unknown)."""
    if not window:
        return None
    if window - reserve < 16:
        raise BackendError(f"max_new_tokens {reserve} leaves no room for a prompt in a window of {window} tokens")
    return window - reserve
