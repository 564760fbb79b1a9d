"""The rule critic (``critic_mode: rule``): the planted signal, a verdict the policy can learn to earn.

A positive control for the whole method. The critic's verdict is not an LLM's opinion but a
documented function of the supporter's replies, so a run can check that a known reward flows from
the simulation through the reward model and GRPO to the evaluation (and a run with
``grpo.reward_model: random`` that it does not when the signal is cut); the experiment around it
is :mod:`rlff_utils.planted`.

The rule (why: acknowledging what the seeker feels — ESConv's "Reflection of feelings", or naming
how hard the situation is — is the most basic support skill, it is visible in one reply, and
SmolLM2-135M does it sometimes but not always, so a group of G = 4 answers usually holds both
kinds and there is room to learn; *asking* about feelings, a first version, SmolLM2 hardly ever
wrote: no signal to plant):

* a reply **acknowledges feelings** when it names an emotion or the weight of the situation
  (:data:`FEELING_WORDS`: feel, upset, sad, worried, anxious, overwhelmed, hard, difficult, sorry, ...);
* a reply **advises** when it contains advice words (you should, try to, I suggest, recommend,
  have you tried, why don't you, make sure, ...) and no question.

After each supporter turn the seeker's state is judged on the whole rollout so far:

* the *first* supporter turn (the candidate) acknowledges feelings → ``solved`` (goal reached);
* a later turn acknowledges feelings → ``better``;
* advice given before any acknowledgement in the rollout → ``worse``;
* otherwise → ``same``.

So a candidate that acknowledges feelings reaches the goal at turn 1 (R_fut = 1 + λ(T−1)/T); every
other candidate ends below 1 (``better`` at most), so the label R_fut ≥ 1 is exactly "the candidate
acknowledged the seeker's feelings".
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from ..text import SUPPORTER
from .labels import CriticResult, labelled_result

FEELING_WORDS = (
    "feel", "feels", "feeling", "feelings", "felt", "emotion", "emotions", "emotional", "upset", "sad", "sadness",
    "worried", "worry", "anxious", "anxiety", "stress", "stressed", "stressful", "hurt", "hurting", "lonely",
    "scared", "afraid", "angry", "overwhelmed", "overwhelming", "frustrated", "frustrating", "depressed",
    "heartbroken", "grief", "painful", "hard", "difficult", "tough", "sorry",
)
ADVICE_PATTERNS = (
    r"\byou should\b", r"\byou could\b", r"\btry to\b", r"\btry (?:and|some|a|to)\b", r"\bi suggest\b",
    r"\bi recommend\b", r"\brecommend\b", r"\bhave you tried\b", r"\bwhy don'?t you\b", r"\bmake sure\b",
    r"\byou need to\b", r"\bit'?s important to\b", r"\bconsider\b",
)
_FEELING = re.compile(r"\b(" + "|".join(FEELING_WORDS) + r")\b", re.IGNORECASE)
_ADVICE = re.compile("|".join(ADVICE_PATTERNS), re.IGNORECASE)


def acknowledges_feelings(reply: str) -> bool:
    """The reply names an emotion or the weight of the situation (a word of :data:`FEELING_WORDS`)."""
    return bool(_FEELING.search(reply or ""))


def gives_advice(reply: str) -> bool:
    return bool(_ADVICE.search(reply or "")) and "?" not in (reply or "")


def rule_label(supporter_turns: Sequence[str]) -> str:
    """The verdict after the last of the rollout's supporter turns (see the module docstring)."""
    if not supporter_turns:
        return "same"
    if acknowledges_feelings(supporter_turns[0]):
        return "solved"
    if len(supporter_turns) > 1 and acknowledges_feelings(supporter_turns[-1]):
        return "better"
    for reply in supporter_turns:
        if acknowledges_feelings(reply):
            break
        if gives_advice(reply):
            return "worse"
    return "same"


class RuleCritic:
    """The planted rule as a critic: judges a rollout (a state's ``rollout`` turns); no model."""

    mode = "rule"

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold

    def judge(self, states: list[dict[str, Any]], seeds: list[int] | None = None,
              seed: int | None = None) -> list[CriticResult]:
        """One result per state; the seeds are accepted for the common interface (no sampling)."""
        out = []
        for state in states:
            if "rollout" not in state:
                raise ValueError("critic mode 'rule' judges rollouts: the state has no 'rollout' turns")
            out.append(labelled_result(rule_label([t["text"] for t in state["rollout"] if t["speaker"] == SUPPORTER]),
                                       self.threshold))
        return out
