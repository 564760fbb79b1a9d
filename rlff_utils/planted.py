"""The planted signal: a deterministic rule critic whose verdict the policy can learn to earn.

A positive control for the whole method. With ``critic_mode: rule`` the critic's verdict is not
an LLM's opinion but a documented function of the supporter's replies, so a run can check that a
known reward flows from the simulation through the reward model and GRPO to the evaluation (and a
run with ``grpo.reward_model: random`` that it does not when the signal is cut).

The rule (why: asking the seeker how they feel is the most basic support skill in ESConv — the
"Question" strategy — it is visible in one reply, and a small model produces it sometimes but not
always, so there is room to learn):

* a reply **asks about feelings** when it contains a question (``?``) and a feeling word
  (feel, feeling, felt, emotion, upset, sad, worried, anxious, ...) in the same sentence;
* a reply **advises** when it contains advice words (you should, try to, I suggest, recommend,
  have you tried, why don't you, make sure, ...) and no question.

After each supporter turn the seeker's state is judged on the whole rollout so far:

* the *first* supporter turn (the candidate) asks about feelings → ``solved`` (goal reached);
* any later turn asks about feelings → ``better``;
* advice given before any question in the rollout → ``worse``;
* otherwise → ``same``.

So a candidate that asks about feelings reaches the goal at turn 1 (R_fut = 1 + λ(T−1)/T), one that
advises first ends at −1, and the rest land in between depending on the later turns: the label
R_fut ≥ δ is, up to the later turns, "the candidate asked about the seeker's feelings".
"""

from __future__ import annotations

import re
from typing import Any, Sequence

FEELING_WORDS = (
    "feel", "feeling", "feelings", "felt", "emotion", "emotions", "emotional", "upset", "sad", "worried",
    "anxious", "stressed", "hurt", "lonely", "scared", "afraid", "angry", "overwhelmed", "frustrated", "mood",
)
ADVICE_PATTERNS = (
    r"\byou should\b", r"\byou could\b", r"\btry to\b", r"\btry (?:and|some|a|to)\b", r"\bi suggest\b",
    r"\bi recommend\b", r"\brecommend\b", r"\bhave you tried\b", r"\bwhy don'?t you\b", r"\bmake sure\b",
    r"\byou need to\b", r"\bit'?s important to\b", r"\bconsider\b",
)
_FEELING = re.compile(r"\b(" + "|".join(FEELING_WORDS) + r")\b", re.IGNORECASE)
_ADVICE = re.compile("|".join(ADVICE_PATTERNS), re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?]*[.!?]?")


def asks_about_feelings(reply: str) -> bool:
    """A question sentence that names a feeling."""
    for sentence in _SENTENCE.findall(reply or ""):
        if sentence.strip().endswith("?") and _FEELING.search(sentence):
            return True
    return False


def gives_advice(reply: str) -> bool:
    return bool(_ADVICE.search(reply or "")) and "?" not in (reply or "")


def rule_label(supporter_turns: Sequence[str]) -> str:
    """The verdict after the last of the rollout's supporter turns (see the module docstring)."""
    if not supporter_turns:
        return "same"
    if asks_about_feelings(supporter_turns[0]):
        return "solved"
    if len(supporter_turns) > 1 and asks_about_feelings(supporter_turns[-1]):
        return "better"
    for reply in supporter_turns:
        if "?" in reply:
            break
        if gives_advice(reply):
            return "worse"
    return "same"


def rollout_supporter_turns(context: dict[str, Any], rollout_start: int) -> list[str]:
    """The supporter turns written after the real history (``history[rollout_start:]``)."""
    return [t["text"] for t in context["history"][rollout_start:] if t["speaker"] == "supporter"]
