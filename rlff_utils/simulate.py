"""The simulation stage (notebook 02): m candidates per context, rolled forward, scored by R_fut.

Stage 1 of RLFF-ESC. For each context (a dialogue prefix ending in a seeker turn) the ESC policy
samples m candidate supporter replies; each candidate is rolled forward by the ESC system model
(later supporter turns), the user simulator (seeker turns) and the critic (after every seeker
turn) until the critic's score exceeds the success threshold or T turns have passed; the
candidate is turn 1. The engine is :mod:`rlff_utils.rollout`; the target the reward models learn
(R_fut and its label) is :mod:`rlff_utils.reward.target`.

The stage goes through :func:`rlff_utils.runs.begin_stage`: stored trajectories are resumed only
when they were produced with the same settings (else :class:`~rlff_utils.runs.StaleStageError`,
nothing mixed), and one writer at a time. A resumed run writes the same trajectories as an
uninterrupted one. ``simulation.max_contexts`` and ``simulation.num_candidates`` only choose which
trajectories the stage holds (``runs.SELECTION``): changed, the stage grows (or shrinks) in place,
keeping every stored trajectory still wanted and rolling only the missing ones, each from the seeds
of its own identity; the new ones are rolled beside each other rather than beside the stored ones,
so they match a straight run's up to the last bits of padded batches.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from . import critic, runs
from .agents import PromptStyle, write_prompts
from .backends import ChatBackend, get_backend
from .data import load_contexts
from .reward.target import write_reward_dataset
from .rollout import (
    SIM_KEY,
    SeekerFn,
    SupporterFn,
    Trajectory,
    TrajectoryStore,
    backend_seeker,
    backend_supporter,
    candidate_sampler,
    rollout_to_store,
)
from .sampling import derive_seed
from .stats import finite_mean
from .text import SEEKER

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .params import RunParams

_META_FIELDS = ("context_id", "dialogue_id", "dataset", "emotion_type", "problem_type", "situation",
                "reference_reply", "reference_strategy")


def seeker_profile_of(choice: str | dict[str, float], run_seed: int, key: tuple) -> str:
    """The seeker profile of one trajectory: ``choice`` itself, or from a mix {profile: share} the
    one a uniform draw seeded by the trajectory's identity falls on (so a resumed or grown
    simulation gives every trajectory the profile a straight run gives it)."""
    if isinstance(choice, str):
        return choice
    names, total = sorted(choice), sum(choice.values())
    u, acc = derive_seed(run_seed, "seeker-profile", *key) / 2**31, 0.0
    for name in names:
        acc += choice[name] / total
        if u < acc:
            return name
    return names[-1]


def simulation_trajectories(contexts: Sequence[dict[str, Any]], num_candidates: int, max_turns: int,
                            seeker_profile: str | dict[str, float] = "cooperative",
                            run_seed: int = 0) -> list[Trajectory]:
    """m fresh trajectories per context, ordered by context then candidate index; a
    trajectory's identity is (context_id, candidate_index), its seeker profile is recorded."""
    return [
        Trajectory(meta={**{k: c.get(k, "") for k in _META_FIELDS}, "candidate_index": j,
                         "seeker_profile": seeker_profile_of(seeker_profile, run_seed, (c["context_id"], j))},
                   history=list(c["history"]), max_turns=max_turns, key=(c["context_id"], j))
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
    # per role: control strings removed and what was cut to fit its model's window (BackendStats.fitting)
    prompt_fitting: dict[str, dict[str, int]] = field(default_factory=dict)
    # per role: prompts sent (a generation call for n samples, or a scoring pass) and replies sampled
    requests: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)

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


@dataclass
class SimulationAgents:
    """The agents of training rollouts: the policy's candidate sampler (turn 1), the ESC system
    model (later supporter turns), the user simulator, the critic, and the chat backends by role
    (their token counts go into the summary)."""

    first: SupporterFn
    later: SupporterFn
    seeker: SeekerFn
    critic: critic.Critic
    backends: dict[str, ChatBackend]


def simulation_agents(params: "RunParams") -> SimulationAgents:
    """The simulation's agents from the params; roles that share a model share one engine. The
    critic's window is set per call (``critic_context_turns``: the context's last
    ``data.max_history_turns`` turns + the rollout). A learned critic must have been trained
    (:func:`rlff_utils.critic.train_learned_critic`): building the agents never trains one."""
    m, sim, turns = params.models, params.simulation, params.data.max_history_turns
    roles = ("policy", "system", "user_sim") + (() if sim.critic_mode == "learned" else ("critic",))
    backends = {role: get_backend(getattr(m, role), seed=params.seed) for role in roles}
    style: PromptStyle = "reasoning" if sim.reasoning_format else "vanilla"
    return SimulationAgents(
        first=candidate_sampler(backends["policy"], style, turns),
        later=backend_supporter(backends["system"], "vanilla", turns),
        seeker=backend_seeker(backends["user_sim"], turns),
        critic=critic.for_stage(params, "simulation", backends.get("critic")),
        backends=backends,
    )


def run_simulation(params: "RunParams", contexts: Sequence[dict[str, Any]] | None = None,
                   force: bool = False) -> SimulationSummary:
    """Notebook 02's stage: roll m candidates per context, store trajectories, write the reward
    dataset and the summary. Resumes after the last stored trajectory when the stage's record
    matches the params, grows when only ``max_contexts``/``num_candidates`` changed (the record
    keeps the old values as ``grown_from``); other settings raise
    :class:`~rlff_utils.runs.StaleStageError` (``force``: start over)."""
    sim = params.simulation
    lay = runs.layout(params)
    contexts = list(load_contexts(params) if contexts is None else contexts)
    if sim.max_contexts:
        contexts = contexts[: sim.max_contexts]
    check_contexts(contexts)
    grown_from = None if force else _grown_from(params)
    with runs.begin_stage(params, runs.SIMULATION, force, extra={"grown_from": grown_from} if grown_from else None):
        write_prompts(lay.prompts(runs.SIMULATION), critic.CRITIC_LABELS)
        store = TrajectoryStore(lay.trajectories, SIM_KEY)
        wanted = simulation_trajectories(contexts, sim.num_candidates, sim.max_turns, sim.seeker_profile, params.seed)
        wanted_keys = {t.key for t in wanted}
        previous = [r for r in store.load() if store.key(r) in wanted_keys]
        # A plain run or resume rolls the fixed batches of the whole list (a resume matches a straight
        # run bit for bit); a growth rolls the missing ones only (no stored neighbour is rolled again).
        stored = {store.key(r) for r in previous}
        to_roll = [t for t in wanted if t.key not in stored] if grown_from else wanted
        t0 = time.perf_counter()
        backends: dict[str, Any] = {}
        if len(previous) < len(wanted):
            agents = simulation_agents(params)
            backends = agents.backends
            for b in backends.values():
                b.stats.reset()
            rollout_to_store(to_roll, store, sim.batch_size, agents.first, agents.later, agents.seeker, agents.critic,
                             seed=params.seed, desc="simulation", already=previous,
                             critic_context_turns=params.data.max_history_turns,
                             state_path=lay.rollout_state(runs.SIMULATION))
        seconds = time.perf_counter() - t0

        records = [r for r in store.load() if store.key(r) in wanted_keys]
        frame = write_reward_dataset(records, sim, lay.root)
        summary = _summary(contexts, records, previous, frame, seconds, lay, backends)
        if summary.unparsed_answers:
            warnings.warn(f"critic: {summary.unparsed_answers} sampled answers named no label (see critic_unparsed)")
        runs.write_json(summary.as_dict(), lay.simulation_summary)
    return summary


def _grown_from(params: "RunParams") -> dict[str, Any] | None:
    """The selection (``runs.SELECTION`` values) the stored trajectories were rolled for, when the
    params choose another one now or a growth was interrupted; None for a plain run or resume."""
    changed = runs.selection_changes(params, runs.SIMULATION)
    if changed:
        return {key: old for key, (old, _) in changed.items()}
    record = runs.read_record(runs.layout(params).root, runs.SIMULATION) or {}
    return None if record.get("complete") else record.get("grown_from")


def _summary(contexts, records, previous, frame, seconds, lay: runs.RunLayout, backends) -> SimulationSummary:
    judged = [s for r in records for s in r["critic_scores"]]
    return SimulationSummary(
        contexts=len(contexts),
        trajectories=len(records),
        new_trajectories=len(records) - len(previous),
        resumed=len(previous),
        success_rate=finite_mean([r["goal_reached"] for r in records]),
        mean_turns=finite_mean([r["turns_used"] for r in records]),
        judgements=len(judged),
        unparsed_answers=sum(sum(r.get("critic_unparsed", [])) for r in records),
        unjudged_trajectories=int(frame.attrs.get("dropped_unjudged", 0)),
        reward_rows=len(frame),
        label_threshold=float(frame.attrs.get("label_threshold", math.nan)),
        positive_rate=finite_mean(frame["label"].tolist()) if len(frame) else math.nan,
        seconds=round(seconds, 2),
        out_dir=str(lay.stage(runs.SIMULATION)),
        generated_tokens={role: b.stats.generated_tokens for role, b in backends.items()},
        prompt_tokens={role: b.stats.prompt_tokens for role, b in backends.items()},
        backend_seconds={role: round(b.stats.seconds, 2) for role, b in backends.items()},
        prompt_fitting={role: b.stats.fitting() for role, b in backends.items() if hasattr(b.stats, "fitting")},
        requests={role: b.stats.conversations for role, b in backends.items()},
        sequences={role: b.stats.sequences for role, b in backends.items()},
    )


# --------------------------------------------------------------------------------------------
# Tables for notebook 02
# --------------------------------------------------------------------------------------------


def success_by_turn(records: Sequence[dict[str, Any]]) -> "pd.DataFrame":
    """Share of trajectories that reached the goal within k turns, k = 1..T."""
    import pandas as pd

    if not records:
        return pd.DataFrame(columns=["turn", "success_within"])
    cap = max(int(r.get("max_turns") or r["turns_used"]) for r in records)
    rows = [{"turn": k, "success_within": finite_mean([bool(r["goal_reached"]) and r["turns_used"] <= k for r in records])}
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
