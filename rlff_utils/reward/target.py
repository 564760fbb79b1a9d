"""The reward models' target: the future-oriented reward R_fut and its label, per trajectory.

    R_fut = v_end + lambda * (T - t_end) / T * [goal reached]

v_end: the critic's last score (in [-1, 1]); t_end: turns used; T: the turn cap; lambda:
``simulation.efficiency_weight``. Reaching the goal sooner earns more. The classification label
is ``R_fut >= delta`` with delta = ``simulation.label_threshold`` (or the median R_fut of the run,
which balances the labels). A trajectory whose last judgement could not be parsed at all has no
v_end: it gets no reward and is left out of the reward dataset (and counted).

Everything is computed from the stored parts of a trajectory, so other lambda or delta never need
a new simulation. The simulation stage writes the result as ``reward_dataset.jsonl`` (notebook
03's input).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import TYPE_CHECKING, Any, Sequence

from .. import runs
from ..rollout import load_trajectories
from ..runs import RunLayout, json_ready, write_json

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..params import RunParams, SimulationParams

REWARD_COLUMNS = ("context_id", "candidate_index", "dialogue_id", "dataset", "emotion_type", "problem_type",
                  "situation", "history", "candidate", "candidate_reply", "final_score", "goal_reached",
                  "turns_used", "max_turns", "end_reason", "r_fut", "label")


def future_reward(final_score: float | None, goal_reached: bool, turns_used: int, max_turns: int, lam: float) -> float:
    """R_fut = v_end + lam * (T - t_end)/T * [goal reached]; NaN when v_end is unknown."""
    if final_score is None or not math.isfinite(final_score):
        return math.nan
    if not 1 <= turns_used <= max_turns:
        raise ValueError(f"turns_used={turns_used} outside 1..max_turns={max_turns}")
    bonus = lam * (max_turns - turns_used) / max_turns if goal_reached else 0.0
    return float(final_score) + bonus


def reward_frame(records: Sequence[dict[str, Any]], sim: "SimulationParams") -> "pd.DataFrame":
    """One row per trajectory with ``r_fut`` and ``label`` (0/1) added, every stored field kept.

    Trajectories without a final score are dropped (count in ``frame.attrs["dropped_unjudged"]``);
    the threshold actually used is ``frame.attrs["label_threshold"]``.
    """
    import pandas as pd

    frame = pd.DataFrame(list(records))
    if frame.empty:
        frame = pd.DataFrame(columns=["r_fut", "label"])
        frame.attrs.update(dropped_unjudged=0, label_threshold=math.nan)
        return frame
    frame["r_fut"] = [
        future_reward(r.get("final_score"), bool(r["goal_reached"]), int(r["turns_used"]),
                      int(r.get("max_turns") or sim.max_turns), sim.efficiency_weight)
        for r in frame.to_dict("records")
    ]
    unjudged = frame["r_fut"].isna()
    dropped = int(unjudged.sum())
    if dropped:
        warnings.warn(f"{dropped} trajectories have no final critic score (all answers unparsable): left out")
    frame = frame[~unjudged].reset_index(drop=True)
    delta = float(frame["r_fut"].median()) if sim.label_threshold == "median" else float(sim.label_threshold)
    frame["label"] = (frame["r_fut"] >= delta).astype(int)
    frame.attrs.update(dropped_unjudged=dropped, label_threshold=delta)
    return frame


def write_reward_dataset(records: Sequence[dict[str, Any]], sim: "SimulationParams",
                         run_dir: str | os.PathLike) -> "pd.DataFrame":
    """The run's reward dataset (context, candidate, R_fut, label and its parts) and its meta
    record (threshold used, rows, trajectories left out); returns the frame."""
    lay = RunLayout(run_dir)
    frame = reward_frame(records, sim)
    cols = [c for c in REWARD_COLUMNS if c in frame.columns]
    path = lay.reward_dataset
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in frame[cols].to_dict("records"):
            f.write(json.dumps(json_ready(row), ensure_ascii=False, allow_nan=False) + "\n")
    tmp.replace(path)
    meta = {"label_threshold": frame.attrs.get("label_threshold"), "dropped_unjudged": frame.attrs.get("dropped_unjudged"),
            "efficiency_weight": sim.efficiency_weight, "label_rule": str(sim.label_threshold), "rows": len(frame)}
    write_json(meta, lay.reward_dataset_meta)
    return frame


def load_reward_dataset(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The reward dataset the simulation stage wrote (notebook 03's input)."""
    path = RunLayout(run_dir).reward_dataset
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run notebook 02 (simulation) for this run first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_reward_frame(params: "RunParams") -> pd.DataFrame:
    """The simulation's records with ``r_fut`` and ``label``: the reward dataset notebook 02
    wrote (its label threshold is the one it reported), else computed from the trajectories by
    the same function."""
    import pandas as pd

    lay = runs.layout(params)
    if lay.reward_dataset.is_file():
        frame = pd.DataFrame(load_reward_dataset(params.run_dir))
    else:
        frame = reward_frame(load_trajectories(params.run_dir), params.simulation)
    if frame.empty:
        raise FileNotFoundError(f"no simulation records under {lay.stage(runs.SIMULATION)}: run notebook 02 first")
    return frame
