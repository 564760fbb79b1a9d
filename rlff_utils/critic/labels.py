"""The critic's answers and what they are worth: labels, answer parsing, and the label maths.

PPDPP's critic (Deng et al. 2023) answers "has the seeker's problem been solved?" with one of four
labels valued worse −1, same −0.5, better 0.5, solved 1. Every critic of the package returns a
:class:`CriticResult`: a score in [−1, 1], success (score above the stage's threshold), counts per
label and the number of answers that named none. When no answer names a label the judgement
carries no information: its score is NaN, it never counts as success, and it is reported
(``unparsed``) instead of being silently scored as some label.

This module imports nothing of the project but :mod:`rlff_utils.text`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ..text import strip_reasoning

# PPDPP's answer values.
CRITIC_LABELS: dict[str, float] = {"worse": -1.0, "same": -0.5, "better": 0.5, "solved": 1.0}

# Surface forms scored per label when choices are scored; their probabilities are summed per label,
# so a model that prefers "Better" to "better" is read the same way.
CHOICE_FORMS: dict[str, tuple[str, ...]] = {k: (k, k.capitalize()) for k in CRITIC_LABELS}

_LABEL_RE = re.compile(r"\b(worse|same|better|solved)\b", re.IGNORECASE)
_NEGATED_SOLVED = re.compile(r"(\bnot|n't|\bnever)(\s+\w+){0,2}\s*$", re.IGNORECASE)


def parse_critic_answer(text: str) -> str | None:
    """The label an answer names first, or None. "not (yet) solved" does not name `solved`."""
    text = strip_reasoning(text)
    for m in _LABEL_RE.finditer(text):
        label = m.group(1).lower()
        if label == "solved" and _NEGATED_SOLVED.search(text[max(0, m.start() - 30): m.start()]):
            continue
        return label
    return None


@dataclass
class CriticResult:
    """One judgement. ``score`` is NaN when no answer named a label (see the module docstring)."""

    score: float
    success: bool
    counts: dict[str, int] = field(default_factory=dict)
    unparsed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def top_label(self) -> str | None:
        """The label with the most votes (None without a verdict)."""
        if not math.isfinite(self.score) or not any(self.counts.values()):
            return None
        return max(self.counts, key=self.counts.get)


def labelled_result(label: str, threshold: float) -> CriticResult:
    """A one-label verdict (a rule's): the label's value, counts one-hot."""
    score = CRITIC_LABELS[label]
    return CriticResult(score, score > threshold, {k: int(k == label) for k in CRITIC_LABELS}, 0)


def votes_result(answers: list[str], threshold: float) -> CriticResult:
    """Mean label value over the answers that name a label; NaN (not success) if none does."""
    labels = [parse_critic_answer(a) for a in answers]
    counts = Counter(label for label in labels if label)
    unparsed = sum(label is None for label in labels)
    parsed = sum(counts.values())
    if not parsed:
        return CriticResult(math.nan, False, {k: 0 for k in CRITIC_LABELS}, unparsed)
    score = sum(CRITIC_LABELS[k] * v for k, v in counts.items()) / parsed
    return CriticResult(score, score > threshold, {k: counts.get(k, 0) for k in CRITIC_LABELS}, unparsed)


def probs_result(probabilities: dict[str, float], threshold: float) -> CriticResult:
    """Expected label value under the (renormalised) label probabilities."""
    total = sum(probabilities.values())
    if not total or not math.isfinite(total):
        return CriticResult(math.nan, False, {k: 0 for k in CRITIC_LABELS}, 1)
    score = sum(CRITIC_LABELS[k] * p / total for k, p in probabilities.items())
    top = max(probabilities, key=probabilities.get)
    return CriticResult(score, score > threshold, {k: int(k == top) for k in CRITIC_LABELS}, 0)


def learned_result(score: float, threshold: float) -> CriticResult:
    """A learned critic's judgement: ``score`` = 2·P(helped) − 1; counts one-hot of its class."""
    if not math.isfinite(score):
        return CriticResult(math.nan, False, {}, 1)
    return CriticResult(float(score), score > threshold, {"helped": int(score >= 0), "not helped": int(score < 0)}, 0)


def label_distribution(scores: list[float], forms: list[tuple[str, str]]) -> dict[str, float]:
    """Probability per label from ``score_choices`` over the surface forms (summed per label)."""
    probs = dict.fromkeys(CRITIC_LABELS, 0.0)
    for (label, _), p in zip(forms, scores):
        probs[label] += p
    return probs


def sampled_votes(probabilities: dict[str, float], n: int, temperature: float, seed: int) -> list[str]:
    """``n`` labels drawn from the label distribution tempered by ``temperature`` (p^(1/T),
    renormalised; 0: the most probable label every time), by a generator of this judgement's
    own ``seed``. Empty when the distribution is undefined."""
    import numpy as np

    labels = list(probabilities)
    p = np.asarray([probabilities[k] for k in labels], dtype=float)
    if not np.isfinite(p).all() or p.sum() <= 0:
        return []
    if temperature <= 0:
        return [labels[int(p.argmax())]] * n
    logp = np.log(np.clip(p / p.sum(), 1e-300, None)) / temperature
    q = np.exp(logp - logp.max())
    rng = np.random.default_rng(seed)
    return [labels[i] for i in rng.choice(len(labels), size=n, p=q / q.sum())]
