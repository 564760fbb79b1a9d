"""Resampling statistics shared by the stages: one percentile bootstrap for the project."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

# Resampled data (one [samples, n] array per input) -> one statistic per resample, shape [samples].
Statistic = Callable[..., np.ndarray]


def resampled_mean(values: np.ndarray) -> np.ndarray:
    return values.mean(axis=1)


def bootstrap_ci(
    *data: Sequence[float],
    stat: Statistic = resampled_mean,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over cases.

    ``data``: one or more equally long sequences, one value per case; a resample draws cases with
    replacement, the same rows from every sequence (paired data stays paired). ``stat`` gets one
    ``[samples, n]`` array per sequence and returns one value per resample (vectorised, e.g.
    ``lambda v: v.mean(axis=1)``). Resamples whose statistic is undefined (NaN, e.g. a correlation
    of constant ranks) are left out; (NaN, NaN) when there are no cases or no defined resample.
    """
    if not data:
        raise ValueError("bootstrap_ci needs at least one sequence of values")
    arrays = [np.asarray(d, dtype=float) for d in data]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"bootstrap_ci: sequences of different lengths {[len(a) for a in arrays]}")
    if n == 0:
        return (math.nan, math.nan)
    idx = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    values = np.asarray(stat(*(a[idx] for a in arrays)), dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return (math.nan, math.nan)
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def finite_mean(xs: Sequence[Any]) -> float:
    """The mean of the values that are numbers and finite (None and NaN are left out, booleans
    count as 0/1); NaN when none is: an empty or unjudged group has no mean, not a mean of 0."""
    vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return float(np.mean(vals)) if vals else math.nan


def hierarchical_bootstrap_ci(
    groups: Sequence[Sequence[float]],
    samples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of the mean of group means when the groups (seeds) are themselves a
    sample: each resample draws groups with replacement, then the values (cases) within each drawn
    group with replacement, and averages the group means. The interval so holds both the spread
    between seeds and the spread between cases; with one group it is the cases' interval alone.
    (NaN, NaN) without a non-empty group."""
    arrays = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not arrays:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    k = len(arrays)
    picks = rng.integers(0, k, size=(samples, k))
    stat = np.zeros(samples)
    for slot in range(k):  # each drawn slot resamples the cases of its group afresh
        means = np.stack([a[rng.integers(0, len(a), size=(samples, len(a)))].mean(axis=1) for a in arrays])
        stat += means[picks[:, slot], np.arange(samples)]
    stat /= k
    alpha = (1 - level) / 2
    return (float(np.quantile(stat, alpha)), float(np.quantile(stat, 1 - alpha)))
