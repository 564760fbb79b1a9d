"""Held-out metrics of a reward model, and the table that compares the variants.

Metrics are written with :func:`rlff_utils.runs.write_json` (an undefined value becomes
``null``) and read back with :func:`read_metrics` (``null`` becomes NaN again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import runs
from .inputs import ranking_pairs
from .variants import NUM_LABELS

METRIC_KEYS = ("accuracy", "f1", "roc_auc", "spearman", "pairwise_accuracy", "positive_rate")
COMPARISON_COLUMNS = [
    "variant", "status", "n_train", "n_test", "accuracy", "f1", "roc_auc", "spearman",
    "pairwise_accuracy", "n_pairs", "epochs_run", "train_seconds", "notes",
]


def variant_metrics(pred: pd.DataFrame, variant: str) -> dict[str, Any]:
    """Held-out metrics of one variant's scores (``pred``: context_id, r_fut, label, score).

    Accuracy and F1 need a probability, so they exist for the classification head only (at 0.5);
    ROC-AUC, Spearman ρ against R_fut and pairwise accuracy on the ranking pairs (ties count
    half) are threshold-free and reported for every variant. Undefined values are NaN with a note.
    """
    from scipy.stats import spearmanr
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    notes: list[str] = []
    y, s, r = pred["label"].to_numpy(int), pred["score"].to_numpy(float), pred["r_fut"].to_numpy(float)
    m: dict[str, Any] = {
        "variant": variant,
        "n_test": int(len(pred)),
        "n_test_contexts": int(pred["context_id"].nunique()),
        "positive_rate": float(y.mean()) if len(y) else math.nan,
        "accuracy": math.nan,
        "f1": math.nan,
        "roc_auc": math.nan,
        "spearman": math.nan,
        "pairwise_accuracy": math.nan,
        "n_pairs": 0,
    }
    if not len(pred):
        m["notes"] = ["empty test split"]
        return m
    if NUM_LABELS[variant] == 2:
        yhat = (s >= 0.5).astype(int)
        m["accuracy"] = float(accuracy_score(y, yhat))
        m["f1"] = float(f1_score(y, yhat, zero_division=0))
        if yhat.sum() == 0:
            notes.append("F1: no test candidate predicted positive")
    if len(set(y)) < 2:
        notes.append(f"ROC-AUC undefined: every test label is {y[0]}")
    else:
        m["roc_auc"] = float(roc_auc_score(y, s))
    if np.ptp(r) == 0 or np.ptp(s) == 0:
        notes.append("Spearman undefined: " + ("R_fut" if np.ptp(r) == 0 else "the score") + " is constant on the test split")
    else:
        m["spearman"] = float(spearmanr(s, r).statistic)
    pairs = ranking_pairs(pred.reset_index(drop=True))
    m["n_pairs"] = int(len(pairs))
    if len(pairs):
        sc, sr = s[pairs["chosen"].to_numpy()], s[pairs["rejected"].to_numpy()]
        m["pairwise_accuracy"] = float(np.mean((sc > sr) + 0.5 * (sc == sr)))
    else:
        notes.append("pairwise accuracy undefined: no test context has candidates with different R_fut")
    m["notes"] = notes
    return m


def read_metrics(path: Path) -> dict[str, Any]:
    """A ``metrics.json`` with its undefined metrics (``null``) as NaN."""
    m = runs.read_json(path)
    return {k: (math.nan if v is None and k in METRIC_KEYS else v) for k, v in m.items()}


def read_predictions(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"context_id": str, "dialogue_id": str})


@dataclass
class VariantResult:
    """One variant's held-out evaluation (and, for a trained one, its training log)."""

    variant: str
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    log_history: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False


def comparison_table(results: dict[str, VariantResult | dict[str, Any]]) -> pd.DataFrame:
    """One row per variant (a skipped one: its ``skipped.json`` note as a dict)."""
    rows = []
    for v, r in results.items():
        m = r.metrics if isinstance(r, VariantResult) else r
        row = {c: m.get(c) for c in COMPARISON_COLUMNS}
        row["variant"] = v
        row["status"] = m.get("status") or ("reference" if v == "random" else "trained")
        row["notes"] = "; ".join(m.get("notes") or [])
        rows.append(row)
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    return table.astype({"n_train": "Int64", "n_test": "Int64", "n_pairs": "Int64"})
