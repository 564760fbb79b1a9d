"""A second critic re-judges the evaluated conversations: the contrast beside the critic that ran them.

The evaluation's critic (``evaluation.critic_mode``) decides when a conversation stops. With
``evaluation.contrast_critic`` set, ``models.eval_critic`` in that mode judges the same stored
conversations again after every turn they hold, as if it had been the evaluator: a conversation
counts as solved at the first turn whose contrast score exceeds ``evaluation.success_threshold``.
The planted run uses it to read the LLM critic beside the rule critic that decides.

Caveat, said wherever the numbers appear: the conversations stopped where the *deciding* critic
said "solved", so the contrast critic never sees the turns a longer conversation would have had;
on those its success is a lower bound. Agreement (share and Cohen's kappa) is per conversation.

Judgements are appended per batch to ``evaluation/<system>/contrast_judgements.jsonl`` (keyed by
case and turn, seeded by the same identity), so a killed evaluation resumes without judging twice.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from . import critic, runs
from .conversation_metrics import paired_difference, system_metrics
from .rollout import TrajectoryStore
from .sampling import derive_seed

JUDGEMENT_KEY = ("case_id", "turn")


def _contexts(record: dict[str, Any], turn: int) -> dict[str, Any]:
    """What the critic read after ``turn`` (1-based) of a stored conversation."""
    rollout = record["turns"][: 2 * turn]
    return {**{k: v for k, v in record.items() if k not in ("history", "turns")},
            "history": list(record.get("history") or []) + rollout, "rollout": rollout}


def contrast_critic(params, backend: Any = None) -> critic.Critic:
    """``models.eval_critic`` in the mode ``evaluation.contrast_critic`` names."""
    return critic.for_stage(params, "evaluation", backend, mode=params.evaluation.contrast_critic)


def judge_transcripts(params, system: str, records: Sequence[dict[str, Any]],
                      judge: critic.Critic) -> dict[tuple, float | None]:
    """The contrast critic's score after every turn of every conversation of ``system``
    ({(case_id, turn): score}, None for an answer without a label); resumes from the store."""
    store = TrajectoryStore(runs.layout(params).system_dir(system) / "contrast_judgements.jsonl", JUDGEMENT_KEY)
    done = {store.key(r): r["score"] for r in store.load()}
    todo = [(r, t) for r in records for t in range(1, int(r["turns_used"]) + 1) if (r["case_id"], t) not in done]
    size = params.evaluation.batch_size
    for i in range(0, len(todo), size):
        batch = todo[i: i + size]
        results = judge.judge([_contexts(r, t) for r, t in batch],
                               seeds=[derive_seed(params.seed, "contrast-critic", system, r["case_id"], t) for r, t in batch])
        rows = [{"case_id": r["case_id"], "turn": t, "score": res.score if math.isfinite(res.score) else None,
                 "unparsed": res.unparsed} for (r, t), res in zip(batch, results)]
        store.append(rows)
        done.update({(x["case_id"], x["turn"]): x["score"] for x in rows})
    return done


def rejudged(records: Sequence[dict[str, Any]], scores: dict[tuple, float | None], threshold: float) -> list[dict[str, Any]]:
    """The records as the contrast critic would have ended them: solved at its first turn over
    ``threshold``, else unsolved after the turns the conversation has."""
    out = []
    for r in records:
        n = int(r["turns_used"])
        hit = next((t for t in range(1, n + 1)
                    if scores.get((r["case_id"], t)) is not None and scores[(r["case_id"], t)] > threshold), None)
        out.append({**r, "goal_reached": hit is not None, "turns_used": hit or n,
                    "end_reason": "goal" if hit else "max_turns"})
    return out


def agreement(first: Sequence[dict[str, Any]], second: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per conversation: share of identical success verdicts and Cohen's kappa (NaN when a
    critic gives one verdict to every conversation, where kappa is undefined)."""
    from sklearn.metrics import cohen_kappa_score

    a = [bool(r["goal_reached"]) for r in first]
    b = [bool(r["goal_reached"]) for r in second]
    if not a:
        return {"conversations": 0, "agreement": math.nan, "cohen_kappa": math.nan}
    kappa = float(cohen_kappa_score(a, b)) if len(set(a)) > 1 and len(set(b)) > 1 else math.nan
    return {"conversations": len(a), "agreement": sum(x == y for x, y in zip(a, b)) / len(a), "cohen_kappa": kappa}


def contrast_metrics(params, records_of: dict[str, list[dict[str, Any]]], main: str | None,
                     judge: critic.Critic | None = None) -> dict[str, dict[str, Any]]:
    """Per system: SR/AT/SR@k under the contrast critic (``judge``, default :func:`contrast_critic`)
    on the same conversations (95% bootstrap intervals), its agreement with the deciding critic,
    and for ``main`` the paired differences against every other system under the contrast critic."""
    e = params.evaluation
    judge = judge if judge is not None else contrast_critic(params)
    again = {name: rejudged(records, judge_transcripts(params, name, records, judge), e.success_threshold)
             for name, records in records_of.items()}
    out = {}
    for name, records in records_of.items():
        m = {"mode": e.contrast_critic, "model": params.models.eval_critic.name, "threshold": e.success_threshold,
             "note": "re-judged after the fact: conversations stopped where the deciding critic said solved",
             **system_metrics(again[name], params), "agreement": agreement(records, again[name])}
        if name == main:
            m["paired_vs"] = {other: paired_difference(again[name], theirs, e.max_turns, e.bootstrap_samples, params.seed)
                              for other, theirs in again.items() if other != main}
        out[name] = m
    return out


def contrast_table(metrics: dict[str, dict[str, Any]]) -> "Any":
    """One row per system (from its ``metrics.json``): SR under the deciding critic and under
    the contrast critic on the same conversations, with 95% intervals, and their agreement; for
    the main system the paired SR difference to each baseline under the contrast critic."""
    import pandas as pd

    def pct(v, ci):
        return None if v is None else f"{100 * v:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    rows = []
    for name, m in metrics.items():
        c = m.get("contrast_critic")
        if not c:
            continue
        rows.append({"system": name, "cases": m["cases"], "SR, deciding critic (%)": pct(m["SR"], m["SR_ci95"]),
                     f"SR, contrast critic ({c['mode']}) (%)": pct(c["SR"], c["SR_ci95"]),
                     "agreement": c["agreement"]["agreement"], "Cohen's kappa": c["agreement"]["cohen_kappa"],
                     **{f"SR diff vs {b} (points)": pct(d["SR_diff"], d["SR_diff_ci95"]) for b, d in (c.get("paired_vs") or {}).items()}})
    return pd.DataFrame(rows)
