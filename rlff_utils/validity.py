"""Validity cards: does a judge (the critic, the reward model, a baseline) tell real conversations
whose seekers were helped from real conversations whose seekers were not?

RLFF-ESC trains on the critic's verdicts, so the method rests on them tracking real outcomes.
A card compares a judge's scores on two groups of *real* conversations — successful ones
(ESConv, the seeker's reported emotional intensity fell by at least 2 points) and failed ones
(conversations the ESConv authors left out because the seeker reported no improvement or low
empathy/relevance) — and reports:

* ROC-AUC of the score for "successful" (0.5: chance; below 0.5: the judge prefers failures),
  with a stratified percentile-bootstrap 95% interval (each group resampled within itself) and
  the Mann-Whitney U p-value (two-sided; AUC = U / (n_pos n_neg));
* Spearman's rho with the intensity drop on the conversations that have one, with a bootstrap
  interval;
* mean score and top-label counts per group, the share of unparsable answers and of
  conversations left without a verdict;
* the same AUC for a trivial baseline (the number of turns) beside it, so length is never
  mistaken for judgement.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .stats import finite_mean

MIN_INTENSITY_DROP = 2


@dataclass
class ValidityCard:
    judge: str
    n_success: int
    n_failed: int
    auc: float
    auc_ci95: tuple[float, float]
    mann_whitney_p: float
    mean_score_success: float
    mean_score_failed: float
    spearman_drop: float = math.nan
    spearman_drop_ci95: tuple[float, float] = (math.nan, math.nan)
    n_with_drop: int = 0
    no_verdict_share: float = 0.0
    unparsed_answer_share: float | None = None
    top_labels_success: dict[str, int] = field(default_factory=dict)
    top_labels_failed: dict[str, int] = field(default_factory=dict)
    baseline: str | None = None
    baseline_auc: float = math.nan
    baseline_auc_ci95: tuple[float, float] = (math.nan, math.nan)
    protocol: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lo, hi = self.auc_ci95
        line = (f"{self.judge}: AUC {self.auc:.2f} [{lo:.2f}, {hi:.2f}] (n = {self.n_success} + {self.n_failed}, "
                f"Mann-Whitney p = {self.mann_whitney_p:.3g})")
        if self.baseline:
            blo, bhi = self.baseline_auc_ci95
            line += f"; {self.baseline}: AUC {self.baseline_auc:.2f} [{blo:.2f}, {bhi:.2f}]"
        return line


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted half (ROC-AUC)."""
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def auc_with_ci(pos: Sequence[float], neg: Sequence[float], samples: int = 1000, seed: int = 0,
                level: float = 0.95) -> tuple[float, tuple[float, float], float]:
    """(AUC, stratified bootstrap interval, Mann-Whitney two-sided p). NaN scores are left out."""
    from scipy.stats import mannwhitneyu

    p = np.asarray([x for x in pos if x is not None and math.isfinite(x)], dtype=float)
    n = np.asarray([x for x in neg if x is not None and math.isfinite(x)], dtype=float)
    auc = _auc(p, n)
    if math.isnan(auc):
        return auc, (math.nan, math.nan), math.nan
    rng = np.random.default_rng(seed)
    boots = np.array([_auc(rng.choice(p, len(p)), rng.choice(n, len(n))) for _ in range(samples)])
    alpha = (1 - level) / 2
    ci = (float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha)))
    pvalue = float(mannwhitneyu(p, n, alternative="two-sided").pvalue) if np.ptp(np.r_[p, n]) > 0 else 1.0
    return auc, ci, pvalue


def clustered_auc_ci(scores: Sequence[float], labels: Sequence[int], clusters: Sequence[Any], samples: int = 1000,
                     seed: int = 0, level: float = 0.95) -> tuple[float, tuple[float, float], int]:
    """(AUC, cluster-bootstrap interval, number of clusters). The interval resamples whole clusters
    with replacement (e.g. the candidates of one context, which share its seeker turn and are not
    independent), so it answers "another set of contexts" rather than "other candidates of these
    contexts"; resamples with one class only are left out. NaN scores are left out."""
    if not len(scores) == len(labels) == len(clusters):
        raise ValueError(f"clustered_auc_ci: {len(scores)} scores, {len(labels)} labels, {len(clusters)} clusters")
    frame = [(float(s), int(y), c) for s, y, c in zip(scores, labels, clusters)
             if s is not None and math.isfinite(float(s))]
    names = sorted({c for _, _, c in frame}, key=str)
    groups = [np.asarray([(s, y) for s, y, c in frame if c == name], dtype=float) for name in names]
    pooled = np.concatenate(groups) if groups else np.zeros((0, 2))
    auc = _auc(pooled[pooled[:, 1] == 1, 0], pooled[pooled[:, 1] == 0, 0])
    if math.isnan(auc):
        return auc, (math.nan, math.nan), len(names)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(samples):
        draw = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        value = _auc(draw[draw[:, 1] == 1, 0], draw[draw[:, 1] == 0, 0])
        if not math.isnan(value):
            boots.append(value)
    alpha = (1 - level) / 2
    ci = (float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))) if boots else (math.nan, math.nan)
    return auc, ci, len(names)


def spearman_with_ci(x: Sequence[float], y: Sequence[float], samples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, tuple[float, float], int]:
    """Spearman's rho on the finite pairs, a percentile bootstrap interval, and n."""
    from scipy.stats import spearmanr

    pairs = np.asarray([(a, b) for a, b in zip(x, y)
                        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)], dtype=float)
    if len(pairs) < 3 or np.ptp(pairs[:, 0]) == 0 or np.ptp(pairs[:, 1]) == 0:
        return math.nan, (math.nan, math.nan), len(pairs)
    rho = float(spearmanr(pairs[:, 0], pairs[:, 1]).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(samples):
        s = pairs[rng.integers(0, len(pairs), len(pairs))]
        if np.ptp(s[:, 0]) > 0 and np.ptp(s[:, 1]) > 0:
            boots.append(spearmanr(s[:, 0], s[:, 1]).statistic)
    alpha = (1 - level) / 2
    ci = (float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))) if boots else (math.nan, math.nan)
    return rho, ci, len(pairs)


def validity_card(
    judge: str,
    success_scores: Sequence[float | None],
    failed_scores: Sequence[float | None],
    *,
    drops: Sequence[float | None] | None = None,
    drop_scores: Sequence[float | None] | None = None,
    success_labels: Sequence[str | None] | None = None,
    failed_labels: Sequence[str | None] | None = None,
    unparsed_answers: int | None = None,
    answers: int | None = None,
    baseline: str | None = None,
    baseline_success: Sequence[float] | None = None,
    baseline_failed: Sequence[float] | None = None,
    samples: int = 1000,
    seed: int = 0,
    protocol: dict[str, Any] | None = None,
) -> ValidityCard:
    """The card for one judge. ``None``/NaN scores are conversations without a verdict: counted,
    left out of the AUC. ``drops``/``drop_scores``: intensity drop and the judge's score of every
    conversation that has a drop (for Spearman)."""
    auc, ci, p = auc_with_ci([s for s in success_scores if s is not None], [s for s in failed_scores if s is not None],
                             samples, seed)
    all_scores = [*success_scores, *failed_scores]
    no_verdict = sum(1 for s in all_scores if s is None or not math.isfinite(s))
    card = ValidityCard(
        judge=judge,
        n_success=len(success_scores),
        n_failed=len(failed_scores),
        auc=auc,
        auc_ci95=ci,
        mann_whitney_p=p,
        mean_score_success=finite_mean(success_scores),
        mean_score_failed=finite_mean(failed_scores),
        no_verdict_share=no_verdict / len(all_scores) if all_scores else math.nan,
        unparsed_answer_share=(unparsed_answers / answers) if answers else None,
        top_labels_success=dict(Counter(x for x in (success_labels or []) if x)),
        top_labels_failed=dict(Counter(x for x in (failed_labels or []) if x)),
        protocol=dict(protocol or {}),
    )
    if drops is not None and drop_scores is not None:
        card.spearman_drop, card.spearman_drop_ci95, card.n_with_drop = spearman_with_ci(drop_scores, drops, samples, seed)
    if baseline and baseline_success is not None and baseline_failed is not None:
        card.baseline = baseline
        card.baseline_auc, card.baseline_auc_ci95, _ = auc_with_ci(baseline_success, baseline_failed, samples, seed)
    return card


def _labels(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def cards_frame(cards: Sequence[ValidityCard] | Mapping[str, ValidityCard]):
    """Cards side by side (one row each; with a mapping, its keys in a ``card`` column), numeric:
    intervals as ``_lo`` / ``_hi`` columns beside the value, top labels as text."""
    import pandas as pd

    items = list(cards.items()) if isinstance(cards, Mapping) else [(None, c) for c in cards]
    rows = []
    for key, c in items:
        rows.append({
            **({"card": key} if key is not None else {}),
            "judge": c.judge, "n_success": c.n_success, "n_failed": c.n_failed,
            "auc": c.auc, "auc_lo": c.auc_ci95[0], "auc_hi": c.auc_ci95[1], "mann_whitney_p": c.mann_whitney_p,
            "spearman_drop": c.spearman_drop, "spearman_drop_lo": c.spearman_drop_ci95[0],
            "spearman_drop_hi": c.spearman_drop_ci95[1], "n_with_drop": c.n_with_drop,
            "mean_success": c.mean_score_success, "mean_failed": c.mean_score_failed,
            "top_labels_success": _labels(c.top_labels_success), "top_labels_failed": _labels(c.top_labels_failed),
            "no_verdict_share": c.no_verdict_share, "unparsed_answer_share": c.unparsed_answer_share,
            "baseline": c.baseline, "baseline_auc": c.baseline_auc, "baseline_auc_lo": c.baseline_auc_ci95[0],
            "baseline_auc_hi": c.baseline_auc_ci95[1],
        })
    return pd.DataFrame(rows)


def card_from_dict(d: dict[str, Any]) -> ValidityCard:
    """A card read back from JSON (``null`` → NaN, lists → intervals)."""
    def num(x: Any) -> float:
        return math.nan if x is None else float(x)

    def pair(x: Any) -> tuple[float, float]:
        return (num(x[0]), num(x[1])) if x else (math.nan, math.nan)

    fields = dict(d)
    for k in ("auc", "mann_whitney_p", "mean_score_success", "mean_score_failed", "spearman_drop", "baseline_auc",
              "no_verdict_share"):
        if k in fields:
            fields[k] = num(fields[k])
    for k in ("auc_ci95", "spearman_drop_ci95", "baseline_auc_ci95"):
        if k in fields:
            fields[k] = pair(fields[k])
    return ValidityCard(**fields)


# The fields of a card a run's headline quotes beside the SR/AT it decides.
SUMMARY_FIELDS = ("judge", "n_success", "n_failed", "auc", "auc_ci95", "mann_whitney_p", "spearman_drop",
                  "unparsed_answer_share", "no_verdict_share", "baseline", "baseline_auc")
