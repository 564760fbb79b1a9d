"""Text of a conversation as the agents and judges read it: the bottom layer of the package.

Every module that turns turns into text reads it here, so the simulation, the reward model, the
critics and GRPO's reward functions all see one and the same thing: the *visible* part of a
supporter's reply (:func:`visible_reply`: explicit reasoning and a strategy tag are the
supporter's own), the last turns of a conversation (:func:`last_turns`), a ``Speaker: text``
transcript (:func:`transcript`), a TRL completion as text (:func:`completion_text`) and a
dialogue of the schema as plain turns (:func:`dialogue_turns`).

This module imports nothing of the project (a test checks the package's import graph).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

SEEKER, SUPPORTER = "seeker", "supporter"
SPEAKER_NAMES = {SEEKER: "Seeker", SUPPORTER: "Supporter"}

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# Shown to the other agents in place of an empty turn (e.g. a reply cut off inside its reasoning).
EMPTY_TURN = "..."

# One line of a transcript (also listed with the prompts a run writes, see agents.PROMPTS).
TRANSCRIPT_LINE = "{speaker}: {text}"


# --------------------------------------------------------------------------------------------
# Replies
# --------------------------------------------------------------------------------------------


def strip_reasoning(text: str) -> str:
    """The visible part of a reply: the text after the last ``</think>`` (all of it without one).

    An unclosed ``<think>`` means the reply never got past its reasoning (often a length cut):
    nothing of it is visible, so the result is empty rather than leaked reasoning.
    """
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1].strip()
    if THINK_OPEN in text:
        return ""
    return text.strip()


_STRATEGY_TAG = re.compile(r"^\s*\[[^\]\n]{1,60}\]\s*")


def split_strategy(text: str) -> tuple[str | None, str]:
    """(strategy, rest) for a reply starting with a ``[Strategy]`` tag, else (None, text)."""
    m = _STRATEGY_TAG.match(text)
    if not m:
        return None, text
    return m.group(0).strip()[1:-1].strip(), text[m.end():]


def visible_reply(text: str) -> str:
    """What the seeker sees of a supporter's raw output: reasoning and strategy tag removed."""
    return split_strategy(strip_reasoning(text))[1].strip()


def first_line(text: str) -> str:
    """The first non-empty line: a chat turn is one line, and small simulators that run on past
    it start writing the other side's turn or their own instructions."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def completion_text(completion: Any) -> str:
    """A TRL completion as text: plain text, or a conversational list of messages (the assistant's
    contents joined). Every reward function of the project reads completions through this."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "\n".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")
    raise TypeError(f"cannot read a completion of type {type(completion).__name__}")


# --------------------------------------------------------------------------------------------
# Turns
# --------------------------------------------------------------------------------------------


def last_turns(turns: Iterable[dict[str, Any]] | None, n: int | None) -> list[dict[str, Any]]:
    """The last ``n`` turns (all of them when ``n`` is None or 0): every window of the project
    (the agents' history, the critic's view, the reward model's and the learned critic's input)."""
    turns = list(turns or [])
    return turns[-n:] if n else turns


def dialogue_turns(dialogue: Any) -> list[dict[str, str]]:
    """A dialogue of the schema (:class:`rlff_utils.dialogues.Dialogue`) as plain
    ``{speaker, text}`` turns, the form every agent and judge reads."""
    return [{"speaker": t.speaker, "text": t.text} for t in dialogue.turns]


def transcript(turns: Sequence[dict[str, Any]]) -> str:
    """Dialogue turns as the agents read them, one ``Speaker: text`` line per turn (visible text
    only; an empty turn shows as ``...``)."""
    return "\n".join(
        TRANSCRIPT_LINE.format(speaker=SPEAKER_NAMES[t["speaker"]], text=t["text"].strip() or EMPTY_TURN)
        for t in turns
    )


# --------------------------------------------------------------------------------------------
# Untrusted text: chat control strings, bidirectional controls, credentials
# --------------------------------------------------------------------------------------------

# The control strings of the chat templates in use (ChatML's <|im_start|>/<|im_end|>, Llama 3's
# <|start_header_id|>/<|eot_id|>, <|endoftext|>, Gemma's turn markers): inside a turn's text a
# tokenizer would read them as real control tokens, letting data open or close a message.
CHAT_CONTROL = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>|<(?:start|end)_of_turn>")


def strip_chat_controls(text: str) -> tuple[str, int]:
    """``text`` without chat-template control strings, and how many were removed. Applied to
    every untrusted text (dataset turns, simulated turns, chat input) before a template sees it."""
    cleaned, count = CHAT_CONTROL.subn("", text)
    return cleaned, count


# Unicode's bidirectional embedding, override and isolate controls (and the marks): data holding
# them would reorder the text around them on a page (a right-to-left override flips what follows).
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def neutralise_bidi(text: str) -> str:
    """Every bidirectional control in ``text`` shown as its code point (``[U+202E]``), so rendered
    data reads in the order it was written."""
    return BIDI_CONTROLS.sub(lambda m: f"[U+{ord(m.group(0)):04X}]", text)


_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@'\"<>]+)@")


def url_credentials(url: str) -> tuple[str, str | None]:
    """``(url without its user:password@, that user:password)``; ``(url, None)`` without one."""
    m = _URL_CREDENTIALS.search(url)
    if not m:
        return url, None
    return url[: m.start("userinfo")] + url[m.end():], m.group("userinfo")


def redact_credentials(text: str) -> str:
    """``text`` with the user and password of every URL (``http://user:pw@host``) replaced by ``***``."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", text)


def shareable(text: str) -> str:
    """Text for a page or file others read: bidirectional controls shown, URL credentials hidden."""
    return redact_credentials(neutralise_bidi(text))
