"""The multi-agent rollout engine under the simulation (notebook 02) and the evaluation (05).

A :class:`Trajectory` is one conversation rolled forward from a starting history by a supporter
(the ESC system model in training rollouts, the policy under test in evaluation), the user
simulator (seeker turns) and the critic (a judgement after every seeker turn), until the critic's
score exceeds the success threshold or the turn cap is reached. One *turn* is one supporter reply,
the seeker's answer and the critic's judgement.

Lockstep: all live trajectories advance together, so every turn is one batched call per agent
role over all of them (instead of one call per agent per trajectory, as in PPDPP's loop);
trajectories that finish drop out. Training rollouts and evaluation differ only in their
supporters: :func:`candidate_sampler` + :func:`backend_supporter` (system model) for the first,
:func:`backend_supporter` (policy) on every turn for the second.

Seeds: every sampled token of a trajectory comes from a seed derived from the run seed, the
trajectory's identity (its ``key``: context id and candidate index, or system and case id), the
turn and the role (:class:`TurnSeeds`); the candidates of one context are the samples of one
call seeded by the context's identity, candidate j being sample j. The backends seed each
conversation (and sample) on its own, so what a trajectory says never depends on its batch.

Storage and resume (:func:`rollout_to_store`): finished trajectories are appended to an
append-only JSON Lines store and fsynced at the end of every turn; a rerun skips stored keys.
Batches are fixed slices of the full list, and after every turn the batch's live trajectories
are written to a small state file, so a rerun continues the interrupted batch from its last
finished turn with the same conversations side by side: a run killed at any moment loses at most
the turn in flight, and, resumed, writes the same records an uninterrupted run writes.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from tqdm.auto import tqdm

from .agents import PromptStyle, policy_messages, seeker_messages
from .runs import RunLayout, json_ready, read_json, write_json
from .sampling import derive_seed
from .text import SEEKER, SUPPORTER, first_line, visible_reply

if TYPE_CHECKING:  # pragma: no cover
    from .backends import ChatBackend
    from .critic import Critic

# A simulated trajectory's identity: the context and the candidate's index in it.
SIM_KEY = ("context_id", "candidate_index")


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


class TrajectoryStore:
    """Append-only JSONL of finished trajectories keyed by ``key_fields``."""

    def __init__(self, path: str | Path, key_fields: Sequence[str]):
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


def load_trajectories(run_dir: str | Path) -> list[dict[str, Any]]:
    """The simulation stage's finished trajectories of a run (``outputs/<run>``)."""
    path = RunLayout(run_dir).trajectories
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run notebook 02 (simulation) for this run first")
    return TrajectoryStore(path, SIM_KEY).load()


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


# --------------------------------------------------------------------------------------------
# Trajectories, seeds, agents
# --------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """One conversation being rolled forward. ``key`` is its identity (seeds derive from it);
    ``meta`` holds the descriptive fields (context_id, candidate_index, emotion_type, ...) and is
    copied into the stored record."""

    meta: dict[str, Any]
    history: list[dict[str, Any]]
    max_turns: int
    key: tuple
    turns: list[dict[str, Any]] = field(default_factory=list)
    candidate: str | None = None
    critic_scores: list[float | None] = field(default_factory=list)
    critic_unparsed: list[int] = field(default_factory=list)
    end_reason: str | None = None

    def context(self, context_turns: int | None = None) -> dict[str, Any]:
        """What the agents see: the descriptive fields and the dialogue so far (with only the
        last ``context_turns`` turns of the starting history, when given; all rollout turns)."""
        history = self.history[-context_turns:] if context_turns else self.history
        return {**self.meta, "history": history + self.turns, "rollout": list(self.turns)}

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

    def state(self) -> dict[str, Any]:
        """Everything needed to continue this trajectory in another process (JSON types)."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Trajectory":
        return cls(**{**state, "key": tuple(state["key"])})


@dataclass(frozen=True)
class TurnSeeds:
    """The seeds of one role on one turn: ``seeds(*identity)`` is derived from the run seed, the
    identity, the turn and the role; ``seeds.of(trajs)`` gives one per trajectory (its key)."""

    run_seed: int
    turn: int
    role: str

    def __call__(self, *identity: Any) -> int:
        return derive_seed(self.run_seed, *identity, self.turn, self.role)

    def of(self, trajs: Sequence[Trajectory]) -> list[int]:
        return [self(*t.key) for t in trajs]


# (live trajectories, this turn's seeds) -> one raw output per trajectory
SupporterFn = Callable[[list[Trajectory], TurnSeeds], list[str]]
SeekerFn = Callable[[list[Trajectory], TurnSeeds], list[str]]


def backend_supporter(backend: "ChatBackend", style: PromptStyle, max_history_turns: int,
                      max_new_tokens: int | None = None) -> SupporterFn:
    """A supporter that writes each trajectory's next turn with ``backend`` in prompt ``style``
    (the ESC system model in training rollouts; the policy for every turn in evaluation)."""

    def supporter(trajs: list[Trajectory], seeds: TurnSeeds) -> list[str]:
        convs = [policy_messages(t.context(), style, max_history_turns=max_history_turns) for t in trajs]
        return [s[0] for s in backend.generate(convs, n=1, max_new_tokens=max_new_tokens, seeds=seeds.of(trajs))]

    return supporter


def routed_supporter(supporters: dict[str, SupporterFn], field: str) -> SupporterFn:
    """One supporter per value of ``meta[field]`` (evaluation: per system), called on its own
    trajectories; the answers come back in the live trajectories' order."""

    def supporter(trajs: list[Trajectory], seeds: TurnSeeds) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(trajs):
            groups[t.meta[field]].append(i)
        out = [""] * len(trajs)
        for name, idx in groups.items():
            for i, text in zip(idx, supporters[name]([trajs[i] for i in idx], seeds)):
                out[i] = text
        return out

    return supporter


def candidate_sampler(backend: "ChatBackend", style: PromptStyle, max_history_turns: int) -> SupporterFn:
    """The first supporter turn of training rollouts: the candidates of a context are the
    samples of one conversation seeded by the context's identity, candidate j being sample j, so
    a candidate is the same whichever of its siblings share the batch (one call, ``n`` = the
    highest candidate index in the batch + 1; m normally)."""

    def sampler(trajs: list[Trajectory], seeds: TurnSeeds) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, t in enumerate(trajs):
            groups[t.meta["context_id"]].append(i)
        order = list(groups)
        convs = [policy_messages(trajs[groups[c][0]].context(), style, max_history_turns=max_history_turns)
                 for c in order]
        n = 1 + max(int(t.meta["candidate_index"]) for t in trajs)
        samples = backend.generate(convs, n=n, seeds=[seeds(c) for c in order])
        out = [""] * len(trajs)
        for c, texts in zip(order, samples):
            for i in groups[c]:
                out[i] = texts[int(trajs[i].meta["candidate_index"])]
        return out

    return sampler


def backend_seeker(backend: "ChatBackend", max_history_turns: int) -> SeekerFn:
    """The user simulator: the seeker's next turn (its first line) from its persona and the
    dialogue so far."""

    def seeker(trajs: list[Trajectory], seeds: TurnSeeds) -> list[str]:
        convs = [seeker_messages(t.context(), max_history_turns) for t in trajs]
        return [first_line(s[0]) for s in backend.generate(convs, n=1, seeds=seeds.of(trajs))]

    return seeker


# --------------------------------------------------------------------------------------------
# The lockstep loop
# --------------------------------------------------------------------------------------------


def run_rollouts(
    trajectories: list[Trajectory],
    first_supporter: SupporterFn,
    later_supporter: SupporterFn,
    seeker: SeekerFn,
    critic: Critic,
    seed: int = 0,
    on_finished: Callable[[list[Trajectory]], None] | None = None,
    on_turn: Callable[[int, list[Trajectory], list[Trajectory]], None] | None = None,
    critic_context_turns: int | None = None,
) -> list[Trajectory]:
    """Advance ``trajectories`` in lockstep until each reaches the goal or its turn cap.

    Each turn is one batched call per role over all live trajectories: supporter
    (``first_supporter`` on turn 1, ``later_supporter`` after), seeker, critic. The stored
    supporter text is the visible reply (``raw`` keeps the full output when it differs); the
    first supporter output is the trajectory's ``candidate``. A trajectory ends with
    ``end_reason="goal"`` when the critic says success, ``"max_turns"`` at its cap.
    After each turn ``on_finished`` receives the trajectories that ended on it (write them
    there), then ``on_turn(turn, judged, still_live)``. Seeds: see the module docstring.
    The critic reads every rollout turn and the last ``critic_context_turns`` turns of the
    starting history (all of it when None), so it always sees where the rollout started.
    Live trajectories that already hold turns (a resumed batch) continue from there; they must
    all have completed the same number of turns.
    """
    live = [t for t in trajectories if t.end_reason is None]
    completed = {len(t.critic_scores) for t in live}
    if len(completed) > 1 or any(len(t.turns) != 2 * len(t.critic_scores) for t in live):
        raise ValueError("run_rollouts advances trajectories in lockstep: the live ones must all have completed "
                         f"the same number of whole turns (completed: {sorted(completed)})")
    turn = completed.pop() if completed else 0
    while live:
        turn += 1
        provider = first_supporter if turn == 1 else later_supporter
        raws = provider(live, TurnSeeds(seed, turn, "supporter"))
        for t, raw in zip(live, raws):
            visible = visible_reply(raw)
            entry = {"speaker": SUPPORTER, "text": visible}
            if raw.strip() != visible:
                entry["raw"] = raw
            if turn == 1:
                t.candidate = raw
            t.turns.append(entry)
        replies = seeker(live, TurnSeeds(seed, turn, "seeker"))
        for t, reply in zip(live, replies):
            t.turns.append({"speaker": SEEKER, "text": reply.strip()})
        results = critic.judge([t.context(critic_context_turns) for t in live],
                               seeds=TurnSeeds(seed, turn, "critic").of(live))
        finished, still = [], []
        for t, r in zip(live, results):
            t.critic_scores.append(r.score if math.isfinite(r.score) else None)
            t.critic_unparsed.append(r.unparsed)
            if r.success:
                t.end_reason = "goal"
            elif len(t.critic_scores) >= t.max_turns:
                t.end_reason = "max_turns"
            (finished if t.end_reason else still).append(t)
        if finished and on_finished:
            on_finished(finished)
        if on_turn:
            on_turn(turn, live, still)
        live = still
    return trajectories


# --------------------------------------------------------------------------------------------
# Batches into a store, with resume
# --------------------------------------------------------------------------------------------


@dataclass
class RolloutProgress:
    """Running totals for the progress bar and the stage summary (``judgements`` and
    ``unparsed_answers``: the critic work done in this call)."""

    done: int = 0
    goals: int = 0
    judgements: int = 0
    unparsed_answers: int = 0
    unjudged: int = 0

    def add(self, trajs: list[Trajectory]) -> None:
        self.done += len(trajs)
        self.goals += sum(t.goal_reached for t in trajs)
        self.unjudged += sum(t.critic_scores[-1] is None for t in trajs)


def _resumed_batch(state: dict[str, Any] | None, keys: list[tuple]) -> list[Trajectory] | None:
    """The live trajectories saved for this batch (same keys in the same order), else None."""
    if not state or state.get("keys") != json_ready(keys):
        return None
    return [Trajectory.from_state(s) for s in state["live"]]


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
    state_path: str | Path | None = None,
) -> RolloutProgress:
    """Roll ``trajectories`` in lockstep batches of ``batch_size`` and append each one to
    ``store`` as it finishes (fsync per turn); keys already stored are never written again.

    Batches are fixed slices of ``trajectories``; a batch whose keys are all stored is skipped.
    With ``state_path`` the live trajectories of the batch in flight are saved after every turn,
    and a rerun continues that batch from there; without it (or when the state belongs to
    another batch) a partly stored batch is rolled again whole and only its missing keys are
    written. Either way every trajectory runs beside the same ones as in an uninterrupted run.
    A tqdm bar shows the live success rate (``already``: records from earlier runs, counted in
    the totals)."""
    keys = [store.key(t.meta) for t in trajectories]
    if len(set(keys)) != len(keys):
        raise ValueError("rollout_to_store: trajectories with the same key")
    done = store.done_keys()
    state_file = Path(state_path) if state_path else None
    state = read_json(state_file, default=None) if state_file else None
    progress = RolloutProgress(done=len(already), goals=sum(bool(r.get("goal_reached")) for r in already))
    pending = sum(k not in done for k in keys)
    bar = tqdm(total=pending + len(already), initial=len(already), desc=desc, unit="traj")

    def finished(trajs: list[Trajectory]) -> None:
        new = [t for t in trajs if store.key(t.meta) not in done]
        store.append([t.record() for t in new])
        done.update(store.key(t.meta) for t in new)
        progress.add(new)
        bar.update(len(new))
        bar.set_postfix(success=f"{progress.goals / max(progress.done, 1):.1%}")

    try:
        for start in range(0, len(trajectories), batch_size):
            batch_keys = keys[start: start + batch_size]
            if all(k in done for k in batch_keys):
                continue
            batch = _resumed_batch(state, batch_keys) or trajectories[start: start + batch_size]

            def turn_done(turn: int, judged: list[Trajectory], still: list[Trajectory], batch_keys=batch_keys) -> None:
                progress.judgements += len(judged)
                progress.unparsed_answers += sum(t.critic_unparsed[-1] for t in judged)
                if state_file and still:
                    write_json({"keys": batch_keys, "live": [t.state() for t in still]}, state_file)
                elif state_file:  # the batch is stored
                    state_file.unlink(missing_ok=True)

            run_rollouts(batch, first_supporter, later_supporter, seeker, critic, seed=seed, on_finished=finished,
                         on_turn=turn_done, critic_context_turns=critic_context_turns)
        if state_file:  # left by a batch that was complete but for its state's removal
            state_file.unlink(missing_ok=True)
    finally:
        bar.close()
    return progress


# --------------------------------------------------------------------------------------------
# Reading a stored trajectory
# --------------------------------------------------------------------------------------------


def format_transcript(record: dict[str, Any], context_turns: int = 4) -> str:
    """A stored trajectory for reading: the end of its context, the rollout with the critic's
    score after every seeker turn, the outcome."""
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
