"""Lockstep multi-agent rollouts, the future-oriented reward, resumable trajectory storage.

Stage 1 of RLFF-ESC. For each context (a dialogue prefix ending in a seeker turn) the ESC policy
samples m candidate supporter replies; each candidate is rolled forward by the ESC system model
(later supporter turns), the user simulator (seeker turns) and the critic (after every seeker
turn) until the critic's score exceeds the success threshold or T turns have passed. One *turn*
is one supporter reply, the seeker's answer and the critic's judgement; the candidate is turn 1.

Future-oriented reward, computed from the stored parts so variants never need re-simulation::

    R_fut = v_end + lambda * (T - t_end) / T * [goal reached]

v_end: the critic's last score (in [-1, 1]); t_end: turns used; T: the turn cap; lambda:
``simulation.efficiency_weight``. Reaching the goal sooner earns more. The classification label
is ``R_fut >= delta`` with delta = ``simulation.label_threshold`` (or the median R_fut of the run,
which balances the labels). A trajectory whose last judgement could not be parsed at all has no
v_end: it gets no reward and is left out of the reward dataset (and counted).

Lockstep: all live trajectories advance together, so every turn is one batched call per agent
role over all of them (instead of one call per agent per trajectory, as in PPDPP's loop);
trajectories that finish drop out. The same engine (:func:`run_rollouts`) drives evaluation:
there the policy writes *every* supporter turn from one opening seeker turn, which is only a
different pair of supporter providers (see :func:`backend_supporter`).

Storage: append-only JSON Lines, one record per finished trajectory, written and fsynced at the
end of every lockstep turn. A rerun skips the keys already stored; a process killed at any moment
loses at most the turn in flight, and a torn last line is dropped (and cut off before appending).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from tqdm.auto import tqdm

from .agents import (
    Critic,
    CriticResult,
    PromptStyle,
    policy_messages,
    seeker_messages,
    visible_reply,
    write_prompts,
)
from .data import SEEKER, SUPPORTER

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .backends import ChatBackend
    from .params import RunParams, SimulationParams

TRAJECTORIES = "trajectories.jsonl"
REWARD_DATASET = "reward_dataset.jsonl"
SIM_KEY = ("context_id", "candidate_index")


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (batch, turn, role...): same parts, same seed."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


# --------------------------------------------------------------------------------------------
# Future-oriented reward
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


class TrajectoryStore:
    """Append-only JSONL of finished trajectories keyed by ``key_fields``."""

    def __init__(self, path: str | Path, key_fields: Sequence[str] = SIM_KEY):
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self.dropped_torn_line = False

    def key(self, record: dict[str, Any]) -> tuple:
        return tuple(record[k] for k in self.key_fields)

    def load(self) -> list[dict[str, Any]]:
        """Every complete record (first one wins for a repeated key). A torn last line, the trace
        of a kill mid-write, is dropped; a broken line anywhere else is corruption and raises."""
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().split(b"\n")
        records, seen = [], set()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # no newline after it: the write was cut off
                    self.dropped_torn_line = True
                    continue
                raise ValueError(f"{self.path}: line {i + 1} is not valid JSON (file corrupted?)") from None
            k = self.key(rec)
            if k not in seen:
                seen.add(k)
                records.append(rec)
        return records

    def done_keys(self) -> set[tuple]:
        return {self.key(r) for r in self.load()}

    def _cut_torn_tail(self) -> None:
        """Before appending: drop a torn last line, or end a complete one that only lacks its
        newline (``load`` already counted it, so it must not be lost)."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            start = data.rfind(b"\n") + 1
            try:
                json.loads(data[start:])
            except json.JSONDecodeError:
                with self.path.open("r+b") as f:
                    f.truncate(start)
            else:
                with self.path.open("ab") as f:
                    f.write(b"\n")

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Write records as lines, then flush and fsync: after return they survive a kill."""
        lines = [json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records]
        if not lines:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        return len(lines)


class RoutedStore:
    """Several stores behind one, chosen by a record field: evaluation rolls every system out in
    the same lockstep batches (the user simulator and critic then serve all of them in one call)
    yet keeps one transcripts file per system."""

    def __init__(self, stores: dict[str, TrajectoryStore], field: str):
        self.stores, self.field = stores, field

    def key(self, record: dict[str, Any]) -> tuple:
        name = record[self.field]
        return (name, *self.stores[name].key(record))

    def done_keys(self) -> set[tuple]:
        return {(name, *k) for name, st in self.stores.items() for k in st.done_keys()}

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            groups[r[self.field]].append(r)
        return sum(self.stores[name].append(rs) for name, rs in groups.items())


def load_trajectories(run_dir: str | Path) -> list[dict[str, Any]]:
    """The simulation stage's finished trajectories of a run (``outputs/<run>``)."""
    path = Path(run_dir) / "simulation" / TRAJECTORIES
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run notebook 02 (simulation) for this run first")
    return TrajectoryStore(path).load()


# --------------------------------------------------------------------------------------------
# The lockstep engine
# --------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """One conversation being rolled forward. ``meta`` holds the key and descriptive fields
    (context_id, candidate_index, emotion_type, ...) and is copied into the stored record."""

    meta: dict[str, Any]
    history: list[dict[str, Any]]
    max_turns: int
    turns: list[dict[str, Any]] = field(default_factory=list)
    candidate: str | None = None
    critic_scores: list[float | None] = field(default_factory=list)
    critic_unparsed: list[int] = field(default_factory=list)
    end_reason: str | None = None

    def context(self, context_turns: int | None = None) -> dict[str, Any]:
        """What the agents see: the descriptive fields and the dialogue so far (with only the
        last ``context_turns`` turns of the starting history, when given; all rollout turns)."""
        history = self.history[-context_turns:] if context_turns else self.history
        return {**self.meta, "history": history + self.turns}

    @property
    def goal_reached(self) -> bool:
        return self.end_reason == "goal"

    def record(self) -> dict[str, Any]:
        final = self.critic_scores[-1] if self.critic_scores else None
        return {
            **self.meta,
            "history": self.history,
            "candidate": self.candidate,
            "candidate_reply": visible_reply(self.candidate or ""),
            "turns": self.turns,
            "critic_scores": self.critic_scores,
            "critic_unparsed": self.critic_unparsed,
            "turns_used": len(self.critic_scores),
            "max_turns": self.max_turns,
            "end_reason": self.end_reason,
            "goal_reached": self.goal_reached,
            "final_score": final,
        }


# (live trajectories, seed) -> one raw supporter output per trajectory
SupporterFn = Callable[[list[Trajectory], int], list[str]]
SeekerFn = Callable[[list[Trajectory], int], list[str]]


def backend_supporter(backend: "ChatBackend", style: PromptStyle, max_history_turns: int,
                      max_new_tokens: int | None = None) -> SupporterFn:
    """A supporter that writes each trajectory's next turn with ``backend`` in prompt ``style``
    (the ESC system model in training rollouts; the policy for every turn in evaluation)."""

    def supporter(trajs: list[Trajectory], seed: int) -> list[str]:
        convs = [policy_messages(t.context(), style, max_history_turns=max_history_turns) for t in trajs]
        return [s[0] for s in backend.generate(convs, n=1, max_new_tokens=max_new_tokens, seed=seed)]

    return supporter


def routed_supporter(supporters: dict[str, SupporterFn], field: str) -> SupporterFn:
    """One supporter per value of ``meta[field]`` (evaluation: per system), called on its own
    trajectories; the answers come back in the live trajectories' order."""

    def supporter(trajs: list[Trajectory], seed: int) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(trajs):
            groups[t.meta[field]].append(i)
        out = [""] * len(trajs)
        for name, idx in groups.items():
            for i, text in zip(idx, supporters[name]([trajs[i] for i in idx], seed)):
                out[i] = text
        return out

    return supporter


def candidate_sampler(backend: "ChatBackend", style: PromptStyle, max_history_turns: int) -> SupporterFn:
    """The first supporter turn of training rollouts: candidates sampled jointly per context,
    one call with ``n`` = the number of that context's trajectories in the batch (m normally;
    fewer when a resumed run has some candidates already)."""

    def sampler(trajs: list[Trajectory], seed: int) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(trajs):
            groups[t.meta["context_id"]].append(i)
        order = list(groups)
        convs = [policy_messages(trajs[groups[c][0]].context(), style, max_history_turns=max_history_turns)
                 for c in order]
        n = max(len(v) for v in groups.values())
        samples = backend.generate(convs, n=n, seed=seed)
        out = [""] * len(trajs)
        for c, texts in zip(order, samples):
            for j, i in enumerate(groups[c]):
                out[i] = texts[j]
        return out

    return sampler


def first_line(text: str) -> str:
    """The first non-empty line: a chat turn is one line, and small simulators that run on past
    it start writing the other side's turn or their own instructions."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def backend_seeker(backend: "ChatBackend", max_history_turns: int) -> SeekerFn:
    """The user simulator: the seeker's next turn (its first line) from its persona and the
    dialogue so far."""

    def seeker(trajs: list[Trajectory], seed: int) -> list[str]:
        convs = [seeker_messages(t.context(), max_history_turns) for t in trajs]
        return [first_line(s[0]) for s in backend.generate(convs, n=1, seed=seed)]

    return seeker


def run_rollouts(
    trajectories: list[Trajectory],
    first_supporter: SupporterFn,
    later_supporter: SupporterFn,
    seeker: SeekerFn,
    critic: Critic,
    seed: int = 0,
    on_finished: Callable[[list[Trajectory]], None] | None = None,
    on_turn: Callable[[int, list[Trajectory]], None] | None = None,
    critic_context_turns: int | None = None,
) -> list[Trajectory]:
    """Advance ``trajectories`` in lockstep until each reaches the goal or its turn cap.

    Each turn is one batched call per role over all live trajectories: supporter
    (``first_supporter`` on turn 1, ``later_supporter`` after), seeker, critic. The stored
    supporter text is the visible reply (``raw`` keeps the full output when it differs); the
    first supporter output is the trajectory's ``candidate``. A trajectory ends with
    ``end_reason="goal"`` when the critic says success, ``"max_turns"`` at its cap.
    ``on_finished`` receives the trajectories that ended on each turn (write them there);
    seeds are derived from ``seed`` and the turn, so a rerun on the same inputs repeats itself.
    The critic reads every rollout turn and the last ``critic_context_turns`` turns of the
    starting history (all of it when None), so it always sees where the rollout started.

    Training rollouts: ``first_supporter=candidate_sampler(policy)``,
    ``later_supporter=backend_supporter(system, "vanilla")``. Evaluation: both
    ``backend_supporter(policy_with_adapter, style)``, trajectories whose history is the case's
    opening seeker turn.
    """
    live = [t for t in trajectories if t.end_reason is None]
    if any(t.turns for t in live):
        raise ValueError("run_rollouts starts fresh trajectories: some already have rollout turns")
    turn = 0
    while live:
        turn += 1
        provider = first_supporter if turn == 1 else later_supporter
        raws = provider(live, derive_seed(seed, turn, "supporter"))
        for t, raw in zip(live, raws):
            visible = visible_reply(raw)
            entry = {"speaker": SUPPORTER, "text": visible}
            if raw.strip() != visible:
                entry["raw"] = raw
            if turn == 1:
                t.candidate = raw
            t.turns.append(entry)
        replies = seeker(live, derive_seed(seed, turn, "seeker"))
        for t, reply in zip(live, replies):
            t.turns.append({"speaker": SEEKER, "text": reply.strip()})
        results: list[CriticResult] = critic.judge([t.context(critic_context_turns) for t in live],
                                                   seed=derive_seed(seed, turn, "critic"))
        finished, still = [], []
        for t, r in zip(live, results):
            t.critic_scores.append(r.score if math.isfinite(r.score) else None)
            t.critic_unparsed.append(r.unparsed)
            if r.success:
                t.end_reason = "goal"
            elif len(t.critic_scores) >= t.max_turns:
                t.end_reason = "max_turns"
            (finished if t.end_reason else still).append(t)
        if on_turn:
            on_turn(turn, live)
        if finished and on_finished:
            on_finished(finished)
        live = still
    return trajectories


@dataclass
class RolloutProgress:
    """Running totals for the progress bar and the stage summary."""

    done: int = 0
    goals: int = 0
    judgements: int = 0
    unparsed_answers: int = 0
    unjudged: int = 0

    def add(self, trajs: list[Trajectory]) -> None:
        self.done += len(trajs)
        self.goals += sum(t.goal_reached for t in trajs)


def rollout_to_store(
    trajectories: list[Trajectory],
    store: TrajectoryStore | RoutedStore,
    batch_size: int,
    first_supporter: SupporterFn,
    later_supporter: SupporterFn,
    seeker: SeekerFn,
    critic: Critic,
    seed: int = 0,
    desc: str = "rollouts",
    already: Sequence[dict[str, Any]] = (),
    critic_context_turns: int | None = None,
) -> RolloutProgress:
    """Roll ``trajectories`` in lockstep batches of ``batch_size`` and append each one to
    ``store`` as it finishes (fsync per turn). Keys already in the store are skipped, so the
    call resumes where a killed run stopped. A tqdm bar over trajectories shows the live success
    rate (``already``: records from earlier runs, counted in the totals)."""
    done = store.done_keys()
    pending = [t for t in trajectories if store.key(t.meta) not in done]
    progress = RolloutProgress(done=len(already), goals=sum(bool(r.get("goal_reached")) for r in already))
    bar = tqdm(total=len(pending) + len(already), initial=len(already), desc=desc, unit="traj")

    def finished(trajs: list[Trajectory]) -> None:
        store.append([t.record() for t in trajs])
        progress.add(trajs)
        progress.unjudged += sum(t.critic_scores[-1] is None for t in trajs)
        bar.update(len(trajs))
        bar.set_postfix(success=f"{progress.goals / max(progress.done, 1):.1%}")

    def turn_done(turn: int, live: list[Trajectory]) -> None:
        progress.judgements += len(live)
        progress.unparsed_answers += sum(t.critic_unparsed[-1] for t in live)

    try:
        for b, start in enumerate(range(0, len(pending), batch_size)):
            run_rollouts(pending[start: start + batch_size], first_supporter, later_supporter, seeker, critic,
                         seed=derive_seed(seed, "batch", b), on_finished=finished, on_turn=turn_done,
                         critic_context_turns=critic_context_turns)
    finally:
        bar.close()
    return progress


# --------------------------------------------------------------------------------------------
# The stage (notebook 02)
# --------------------------------------------------------------------------------------------

_META_FIELDS = ("context_id", "dialogue_id", "dataset", "emotion_type", "problem_type", "situation",
                "reference_reply", "reference_strategy")


def simulation_trajectories(contexts: Sequence[dict[str, Any]], num_candidates: int, max_turns: int) -> list[Trajectory]:
    """m fresh trajectories per context, ordered by context then candidate index."""
    return [
        Trajectory(meta={**{k: c.get(k, "") for k in _META_FIELDS}, "candidate_index": j},
                   history=list(c["history"]), max_turns=max_turns)
        for c in contexts
        for j in range(num_candidates)
    ]


@dataclass
class SimulationSummary:
    """What the stage did: counts, rates, time, and where it wrote."""

    contexts: int
    trajectories: int
    new_trajectories: int
    resumed: int
    success_rate: float
    mean_turns: float
    judgements: int
    unparsed_answers: int
    unjudged_trajectories: int
    reward_rows: int
    label_threshold: float
    positive_rate: float
    seconds: float
    out_dir: str
    generated_tokens: dict[str, int] = field(default_factory=dict)
    prompt_tokens: dict[str, int] = field(default_factory=dict)
    backend_seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_contexts(contexts: Sequence[dict[str, Any]]) -> None:
    """Refuse contexts the rollouts cannot use, before any model loads."""
    if not contexts:
        raise ValueError("no contexts to simulate: notebook 01 produced none (check data.max_contexts)")
    required = ("context_id", "history")
    for i, c in enumerate(contexts):
        missing = [k for k in required if k not in c]
        if missing:
            raise ValueError(f"context #{i} lacks {missing}: expected records of rlff_utils.data.build_contexts")
        if not c["history"] or c["history"][-1]["speaker"] != SEEKER:
            raise ValueError(f"context {c['context_id']}: history must end with a seeker turn")
    ids = Counter(c["context_id"] for c in contexts)
    dup = [k for k, v in ids.items() if v > 1]
    if dup:
        raise ValueError(f"duplicate context ids: {dup[:5]}")


def simulation_agents(params: "RunParams"):
    """(candidate sampler, later supporter, seeker, critic, backends by role) for training
    rollouts; roles that share a model share one engine. The critic's window is set per call
    (``critic_context_turns``: the context's last ``data.max_history_turns`` turns + the rollout)."""
    from .backends import get_backend

    m, sim, turns = params.models, params.simulation, params.data.max_history_turns
    backends = {role: get_backend(getattr(m, role), seed=params.seed) for role in ("policy", "system", "user_sim", "critic")}
    style: PromptStyle = "reasoning" if sim.reasoning_format else "vanilla"
    critic = Critic(backends["critic"], sim.critic_mode, sim.critic_samples, sim.critic_temperature,
                    sim.success_threshold, seed=params.seed, max_history_turns=None)
    return (
        candidate_sampler(backends["policy"], style, turns),
        backend_supporter(backends["system"], "vanilla", turns),
        backend_seeker(backends["user_sim"], turns),
        critic,
        backends,
    )


def run_simulation(params: "RunParams", contexts: Sequence[dict[str, Any]] | None = None) -> SimulationSummary:
    """Notebook 02's stage: roll m candidates per context, store trajectories, write the reward
    dataset. Resumable: rerunning continues after the last stored trajectory."""
    from .data import load_contexts

    sim = params.simulation
    contexts = list(load_contexts(params) if contexts is None else contexts)
    if sim.max_contexts:
        contexts = contexts[: sim.max_contexts]
    check_contexts(contexts)
    out = params.stage_dir("simulation")
    write_prompts(out)
    (out / "protocol_card.json").write_text(json.dumps(params.protocol_card("simulation"), indent=2, default=str))

    store = TrajectoryStore(out / TRAJECTORIES, SIM_KEY)
    wanted = simulation_trajectories(contexts, sim.num_candidates, sim.max_turns)
    wanted_keys = {store.key(t.meta) for t in wanted}
    previous = [r for r in store.load() if store.key(r) in wanted_keys]
    t0 = time.perf_counter()
    progress = RolloutProgress()
    backends: dict[str, Any] = {}
    if len(previous) < len(wanted):
        first, later, seeker, critic, backends = simulation_agents(params)
        for b in backends.values():
            b.stats.reset()
        progress = rollout_to_store(wanted, store, sim.batch_size, first, later, seeker, critic,
                                    seed=params.seed, desc="simulation", already=previous,
                                    critic_context_turns=params.data.max_history_turns)
    seconds = time.perf_counter() - t0

    records = [r for r in store.load() if store.key(r) in wanted_keys]
    frame = write_reward_dataset(records, sim, out)
    judged = [s for r in records for s in r["critic_scores"]]
    summary = SimulationSummary(
        contexts=len(contexts),
        trajectories=len(records),
        new_trajectories=len(records) - len(previous),
        resumed=len(previous),
        success_rate=_mean([r["goal_reached"] for r in records]),
        mean_turns=_mean([r["turns_used"] for r in records]),
        judgements=len(judged),
        unparsed_answers=sum(sum(r.get("critic_unparsed", [])) for r in records),
        unjudged_trajectories=int(frame.attrs.get("dropped_unjudged", 0)),
        reward_rows=len(frame),
        label_threshold=float(frame.attrs.get("label_threshold", math.nan)),
        positive_rate=_mean(frame["label"].tolist()) if len(frame) else math.nan,
        seconds=round(seconds, 2),
        out_dir=str(out),
        generated_tokens={role: b.stats.generated_tokens for role, b in backends.items()},
        prompt_tokens={role: b.stats.prompt_tokens for role, b in backends.items()},
        backend_seconds={role: round(b.stats.seconds, 2) for role, b in backends.items()},
    )
    if summary.unparsed_answers:
        warnings.warn(f"critic: {summary.unparsed_answers} sampled answers named no label (see critic_unparsed)")
    (out / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2))
    return summary


def _mean(xs: Sequence[Any]) -> float:
    return float(sum(xs) / len(xs)) if len(xs) else math.nan


REWARD_COLUMNS = ("context_id", "candidate_index", "dialogue_id", "dataset", "emotion_type", "problem_type",
                  "situation", "history", "candidate", "candidate_reply", "final_score", "goal_reached",
                  "turns_used", "max_turns", "end_reason", "r_fut", "label")


def write_reward_dataset(records: Sequence[dict[str, Any]], sim: "SimulationParams", out: str | Path) -> "pd.DataFrame":
    """``reward_dataset.jsonl`` for notebook 03: context, candidate, R_fut, label and its parts."""
    frame = reward_frame(records, sim)
    cols = [c for c in REWARD_COLUMNS if c in frame.columns]
    path = Path(out) / REWARD_DATASET
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in frame[cols].to_dict("records"):
            f.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
    tmp.replace(path)
    meta = {"label_threshold": frame.attrs.get("label_threshold"), "dropped_unjudged": frame.attrs.get("dropped_unjudged"),
            "efficiency_weight": sim.efficiency_weight, "label_rule": str(sim.label_threshold), "rows": len(frame)}
    (Path(out) / "reward_dataset_meta.json").write_text(json.dumps(meta, indent=2))
    return frame


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_reward_dataset(run_dir: str | Path) -> list[dict[str, Any]]:
    """The reward dataset notebook 02 wrote (notebook 03's input)."""
    path = Path(run_dir) / "simulation" / REWARD_DATASET
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run notebook 02 (simulation) for this run first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# Readable output
# --------------------------------------------------------------------------------------------


def format_transcript(record: dict[str, Any], context_turns: int = 4) -> str:
    """A trajectory as text: the end of its context, the rollout with critic scores, the outcome."""
    lines = [f"[{record.get('context_id', record.get('case_id', ''))} #{record.get('candidate_index', '')}] "
             f"{record.get('emotion_type', '')} / {record.get('problem_type', '')}"]
    hist = record.get("history", [])
    if len(hist) > context_turns:
        lines.append(f"  ... ({len(hist) - context_turns} earlier turns)")
    for t in hist[-context_turns:]:
        lines.append(f"  {t['speaker']:>9}: {t['text']}")
    lines.append("  --- rollout ---")
    scores = iter(record.get("critic_scores", []))
    for t in record.get("turns", []):
        lines.append(f"  {t['speaker']:>9}: {t['text']}")
        if t["speaker"] == SEEKER:
            s = next(scores, None)
            lines.append(f"  {'critic':>9}: {'n/a' if s is None else f'{s:+.2f}'}")
    lines.append(f"  => {record.get('end_reason')} after {record.get('turns_used')} turn(s)")
    return "\n".join(lines)


def success_by_turn(records: Sequence[dict[str, Any]]) -> "pd.DataFrame":
    """Share of trajectories that reached the goal within k turns, k = 1..T."""
    import pandas as pd

    if not records:
        return pd.DataFrame(columns=["turn", "success_within"])
    cap = max(int(r.get("max_turns") or r["turns_used"]) for r in records)
    rows = [{"turn": k, "success_within": _mean([bool(r["goal_reached"]) and r["turns_used"] <= k for r in records])}
            for k in range(1, cap + 1)]
    return pd.DataFrame(rows)


def outcome_table(frame: "pd.DataFrame", by: str = "emotion_type") -> "pd.DataFrame":
    """Per group (and overall): trajectories, success rate, mean turns, mean R_fut, label-1 share."""
    import pandas as pd

    if not len(frame):
        return pd.DataFrame()
    agg = dict(trajectories=("r_fut", "size"), success_rate=("goal_reached", "mean"), mean_turns=("turns_used", "mean"),
               mean_r_fut=("r_fut", "mean"), positive_rate=("label", "mean"))
    table = frame.groupby(by).agg(**agg).sort_values("trajectories", ascending=False)
    overall = frame.assign(**{by: "(all)"}).groupby(by).agg(**agg)
    return pd.concat([table, overall])


def pick_examples(frame: "pd.DataFrame", n: int = 2) -> list[dict[str, Any]]:
    """Trajectories worth reading: the highest and lowest R_fut first, then the next ones."""
    if not len(frame):
        return []
    ranked = frame.sort_values("r_fut", ascending=False).to_dict("records")
    picks, lo, hi = [], len(ranked) - 1, 0
    while len(picks) < min(n, len(ranked)):
        picks.append(ranked[hi] if len(picks) % 2 == 0 else ranked[lo])
        hi, lo = (hi + 1, lo) if len(picks) % 2 else (hi, lo - 1)
    return picks
