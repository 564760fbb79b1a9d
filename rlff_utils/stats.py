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
