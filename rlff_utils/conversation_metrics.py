"""SR, AT and SR@k of evaluated conversations, and the paired difference of two systems.

The PPDPP protocol's numbers (used by RLFF-ESC): SR, the share of cases that reached success; AT,
the mean turns with failures counted as the cap (a system cannot look fast by failing early);
SR@k, the share solved within k turns, k = 1..cap (the curve behind SR and AT). 95% intervals are
percentile bootstraps over cases (the cases, not the turns, are the sample); a paired difference
resamples cases keeping each case's two outcomes together. Read by the evaluation stage and by
the contrast critic alike (records: dicts with ``goal_reached``, ``turns_used``, ``case_id``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from .stats import bootstrap_ci


@dataclass(frozen=True)
class Outcome:
    """What the metrics need from one evaluated conversation."""

    success: bool
    turns: int
    emotion_type: str = ""


def outcomes(records: Iterable[dict[str, Any]]) -> list[Outcome]:
    return [Outcome(bool(r["goal_reached"]), int(r["turns_used"]), r.get("emotion_type") or "") for r in records]


def success_rate(outs: Sequence[Outcome]) -> float:
    return float(np.mean([o.success for o in outs])) if outs else math.nan


def average_turns(outs: Sequence[Outcome], cap: int) -> float:
    """Failures count as the cap, so a system cannot look fast by failing early."""
    return float(np.mean([o.turns if o.success else cap for o in outs])) if outs else math.nan


def sr_at_k(outs: Sequence[Outcome], cap: int) -> list[float]:
    """[SR@1, ..., SR@cap]: the share of cases solved within k turns."""
    return [float(np.mean([o.success and o.turns <= k for o in outs])) if outs else math.nan for k in range(1, cap + 1)]


def metrics(records: Sequence[dict[str, Any]], cap: int, samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """SR, AT (with bootstrap 95% intervals), SR@k and SR per emotion type for one system."""
    outs = outcomes(records)
    succ = [float(o.success) for o in outs]
    turns = [float(o.turns if o.success else cap) for o in outs]
    per_emotion: dict[str, list[Outcome]] = {}
    for o in outs:
        per_emotion.setdefault(o.emotion_type, []).append(o)
    return {
        "cases": len(outs),
        "SR": success_rate(outs),
        "SR_ci95": bootstrap_ci(succ, samples=samples, seed=seed),
        "AT": average_turns(outs, cap),
        "AT_ci95": bootstrap_ci(turns, samples=samples, seed=seed),
        "SR_at_k": sr_at_k(outs, cap),
        "SR_by_emotion": {e: {"cases": len(v), "SR": success_rate(v)} for e, v in sorted(per_emotion.items())},
    }


def paired_difference(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]], cap: int,
                      samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """SR and AT of ``ours`` minus ``theirs`` on the cases both have, with paired percentile
    bootstrap 95% intervals (a resample draws cases, keeping each case's two outcomes together:
    same cases, same simulator seeds, so the case-to-case variation cancels)."""
    a = {r["case_id"]: r for r in ours}
    b = {r["case_id"]: r for r in theirs}
    shared = [c for c in a if c in b]
    if not shared:
        return {"cases": 0, "SR_diff": None, "SR_diff_ci95": None, "AT_diff": None, "AT_diff_ci95": None}
    oa, ob = outcomes([a[c] for c in shared]), outcomes([b[c] for c in shared])
    sa, sb = [float(o.success) for o in oa], [float(o.success) for o in ob]
    ta, tb = [float(o.turns if o.success else cap) for o in oa], [float(o.turns if o.success else cap) for o in ob]
    diff = lambda x, y: (x - y).mean(axis=1)  # noqa: E731
    return {
        "cases": len(shared),
        "SR_diff": float(np.mean(sa) - np.mean(sb)),
        "SR_diff_ci95": bootstrap_ci(sa, sb, stat=diff, samples=samples, seed=seed),
        "AT_diff": float(np.mean(ta) - np.mean(tb)),
        "AT_diff_ci95": bootstrap_ci(ta, tb, stat=diff, samples=samples, seed=seed),
    }


def system_metrics(records: Sequence[dict[str, Any]], params) -> dict[str, Any]:
    """Metrics over all cases, and per dataset when there are several."""
    e = params.evaluation
    out = metrics(records, e.max_turns, e.bootstrap_samples, params.seed)
    datasets = sorted({r.get("dataset") or "" for r in records})
    out["dataset"] = "+".join(datasets)
    if len(datasets) > 1:
        out["by_dataset"] = {
            d: metrics([r for r in records if r.get("dataset") == d], e.max_turns, e.bootstrap_samples, params.seed)
            for d in datasets
        }
    return out


def condition_rows(saved: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of an evaluation's ``conditions.json`` (``{condition: {simulator, profile, main,
    systems: {name: metrics}}}``): per system and condition SR and AT with intervals, the main
    system's paired SR difference to the system, and the system's rank by SR (1 = best)."""
    rows = []
    for name, c in saved.items():
        systems, main = c["systems"], c.get("main")
        for s, m in systems.items():
            diff = (systems.get(main, {}).get("paired_vs") or {}).get(s) or {}
            rows.append({"condition": name, "simulator": c["simulator"], "seeker profile": c["profile"], "system": s,
                         "cases": m["cases"], "SR": m["SR"], "SR_ci95": m["SR_ci95"], "AT": m["AT"],
                         "AT_ci95": m["AT_ci95"], "rank by SR": 1 + sum(o["SR"] > m["SR"] for o in systems.values()),
                         "SR diff, main minus system": diff.get("SR_diff"),
                         "SR diff, main minus system_ci95": diff.get("SR_diff_ci95")})
    return rows
