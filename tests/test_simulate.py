"""The simulation stage: the future-oriented reward, and the stage on the tiny model (outputs,
determinism, kill and resume equal to a straight run, stale settings, one writer at a time)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from rlff_utils import runs
from rlff_utils.params import SimulationParams
from rlff_utils.reward.target import future_reward, load_reward_dataset, reward_frame
from rlff_utils.agents import PROMPTS
from rlff_utils.critic import CRITIC_LABELS
from rlff_utils.rollout import SIM_KEY, TrajectoryStore, load_trajectories
from rlff_utils.simulate import run_simulation, success_by_turn

# ---- the reward ----------------------------------------------------------------------------------


def test_future_reward_formula():
    # R_fut = v_end + lam * (T - t_end)/T * [goal]
    assert future_reward(1.0, True, 2, 8, 1.0) == pytest.approx(1.0 + 6 / 8)
    assert future_reward(0.75, True, 8, 8, 1.0) == pytest.approx(0.75)
    assert future_reward(0.6, True, 1, 4, 0.5) == pytest.approx(0.6 + 0.5 * 3 / 4)
    assert future_reward(0.4, False, 3, 8, 1.0) == pytest.approx(0.4)  # no bonus without the goal
    assert future_reward(-1.0, False, 8, 8, 2.0) == -1.0
    assert math.isnan(future_reward(None, False, 8, 8, 1.0))
    with pytest.raises(ValueError, match="turns_used"):
        future_reward(0.5, True, 9, 8, 1.0)


def _rec(i, score, goal, turns, T=4):
    return {"context_id": f"c{i}", "candidate_index": 0, "final_score": score, "goal_reached": goal,
            "turns_used": turns, "max_turns": T, "emotion_type": "sadness"}


def test_reward_frame_labels_fixed_and_median():
    recs = [_rec(0, 1.0, True, 1), _rec(1, 0.6, True, 4), _rec(2, -0.5, False, 4), _rec(3, 0.2, False, 4),
            _rec(4, None, False, 4)]
    with pytest.warns(UserWarning, match="1 trajectories have no final critic score"):
        frame = reward_frame(recs, SimulationParams(max_turns=4, efficiency_weight=1.0, label_threshold=0.5))
    assert frame["r_fut"].tolist() == pytest.approx([1.75, 0.6, -0.5, 0.2])
    assert frame["label"].tolist() == [1, 1, 0, 0]
    assert frame.attrs["dropped_unjudged"] == 1 and "emotion_type" in frame.columns
    frame = reward_frame(recs[:4], SimulationParams(max_turns=4, efficiency_weight=0.0, label_threshold="median"))
    assert frame.attrs["label_threshold"] == pytest.approx(0.4)
    assert frame["label"].tolist() == [1, 1, 0, 0]


def test_success_by_turn():
    frame = success_by_turn([_rec(0, 1.0, True, 1), _rec(1, 1.0, True, 3), _rec(2, 0.0, False, 4)])
    assert frame["success_within"].tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])


# ---- the stage on the tiny model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_dir, project_root):
    """params/ci.yaml with stage 01 written under a temporary output root (once per module)."""
    from rlff_utils.data import prepare_data
    from rlff_utils.params import load_params

    params = load_params(project_root / "params" / "ci.yaml", {"output_root": str(tmp_path_factory.mktemp("out"))})
    prepare_data(params)
    return params


def _variant(params, root, **overrides):
    """The same run under another output root (stage 01 linked, not recomputed); ``overrides``
    as dotted params paths (``simulation.max_contexts``...)."""
    from rlff_utils.params import load_params

    other = load_params(params.source, _overrides(root, **overrides))
    other.run_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(params.run_dir / "data", other.run_dir / "data")
    return other


def _overrides(root, **overrides):
    return {"output_root": str(root), **{k.replace("__", "."): v for k, v in overrides.items()}}


def test_run_simulation_writes_everything_and_resumes(prepared):
    s = run_simulation(prepared)
    lay = runs.layout(prepared)
    sim = prepared.simulation
    assert s.contexts == 12 and s.trajectories == 12 * sim.num_candidates == s.new_trajectories
    recs = load_trajectories(prepared.run_dir)
    required = {"context_id", "candidate_index", "dialogue_id", "dataset", "emotion_type", "problem_type",
                "situation", "history", "candidate", "candidate_reply", "turns", "critic_scores", "turns_used",
                "end_reason", "goal_reached", "final_score"}
    assert all(required <= set(r) for r in recs)
    assert all(len(r["critic_scores"]) == r["turns_used"] == len(r["turns"]) // 2 for r in recs)
    assert all(r["end_reason"] in ("goal", "max_turns") and 1 <= r["turns_used"] <= sim.max_turns for r in recs)
    assert {(r["context_id"], r["candidate_index"]) for r in recs} == {
        (c, j) for c in {r["context_id"] for r in recs} for j in range(sim.num_candidates)}
    rows = load_reward_dataset(prepared.run_dir)
    assert len(rows) == s.reward_rows > 0 and {"r_fut", "label", "candidate_reply", "history"} <= set(rows[0])
    assert {r["label"] for r in rows} == {0, 1}  # median threshold: both classes
    for path in (lay.prompts(runs.SIMULATION), lay.simulation_summary, lay.reward_dataset, lay.reward_dataset_meta):
        assert path.is_file()
    prompts = json.loads(lay.prompts(runs.SIMULATION).read_text())
    assert prompts["critic_labels"] == CRITIC_LABELS and prompts["templates"] == PROMPTS  # what the agents were told
    assert not lay.rollout_state(runs.SIMULATION).exists() and not lay.lock(runs.SIMULATION).exists()
    record = runs.read_record(prepared.run_dir, runs.SIMULATION)
    assert record["complete"] and record["settings"]["simulation"]["num_candidates"] == sim.num_candidates
    assert runs.read_json(lay.simulation_summary)["trajectories"] == s.trajectories
    again = run_simulation(prepared)
    assert again.new_trajectories == 0 and again.resumed == s.trajectories
    assert len(lay.trajectories.read_text().splitlines()) == s.trajectories


def test_same_params_same_trajectories(prepared, tmp_path):
    runs_ = [_variant(prepared, tmp_path / name, simulation__max_contexts=3) for name in ("a", "b")]
    for p in runs_:
        run_simulation(p)
    a, b = (load_trajectories(p.run_dir) for p in runs_)
    assert len(a) == 3 * prepared.simulation.num_candidates
    assert a == b  # same order too: lockstep batches are deterministic


# A run of the stage in its own process: float32 everywhere, 6 contexts x 4 candidates in
# batches of 4. The tiny model's critic scores lie around 0.34-0.35: with the threshold among
# them about half the trajectories reach the goal on turn 1 and the rest go on, so a kill lands
# in a batch that is partly stored and partly in flight. (A conversation's numbers depend, in
# the last bits, on the conversations padded beside it: only a resume that continues the same
# batch reproduces them.)
STAGE_SCRIPT = """
import json, sys
from rlff_utils.params import load_params
from rlff_utils.simulate import run_simulation
run_simulation(load_params(sys.argv[1], json.loads(sys.argv[2])))
"""
KILL_RUN = dict(simulation__num_candidates=4, simulation__batch_size=4, simulation__max_contexts=6,
                simulation__success_threshold=0.348,
                **{f"models__{role}__dtype": "float32" for role in ("policy", "system", "user_sim", "critic")})


def _stage_process(params, project_root, **popen):
    overrides = _overrides(params.run_dir.parent, **KILL_RUN)
    return subprocess.Popen([sys.executable, "-c", STAGE_SCRIPT, params.source, json.dumps(overrides)],
                            cwd=project_root, **popen)


def _by_key(path):
    """The store's lines (raw bytes, one record each), keyed by (context_id, candidate_index)."""
    lines = [line for line in path.read_bytes().split(b"\n") if line.strip()]
    keyed = {(json.loads(line)["context_id"], json.loads(line)["candidate_index"]): line for line in lines}
    assert len(keyed) == len(lines), "a key was written twice"
    return keyed


def test_sigkill_then_resume_equals_a_straight_run(prepared, project_root, tmp_path):
    """SIGKILL mid-run (mid-batch where possible), a torn last write, then a rerun: every record
    is byte-identical to the one an uninterrupted run with the same seed writes."""
    straight = _variant(prepared, tmp_path / "straight", **KILL_RUN)
    killed = _variant(prepared, tmp_path / "killed", **KILL_RUN)
    assert _stage_process(straight, project_root).wait(timeout=600) == 0

    lay = runs.layout(killed)
    proc = _stage_process(killed, project_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            n = lay.trajectories.read_bytes().count(b"\n") if lay.trajectories.exists() else 0
            if n >= 4 and (lay.rollout_state(runs.SIMULATION).exists() or n >= 12):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    survivors = TrajectoryStore(lay.trajectories, SIM_KEY).load()
    assert 4 <= len(survivors) < 24
    goals = runs.read_json(runs.layout(straight).simulation_summary)["success_rate"]
    assert 0.2 < goals < 0.9  # the run mixes early and late finishers, as intended
    before = lay.trajectories.read_bytes()
    with lay.trajectories.open("a") as f:  # and a write the kill cut in half
        f.write('{"context_id": "torn", "candid')

    assert _stage_process(killed, project_root).wait(timeout=600) == 0
    assert lay.trajectories.read_bytes().startswith(before)  # nothing written before the kill was touched
    resumed, reference = _by_key(lay.trajectories), _by_key(runs.layout(straight).trajectories)
    assert len(reference) == 24 and resumed.keys() == reference.keys()
    different = [k for k in reference if resumed[k] != reference[k]]
    assert not different, f"{len(different)} of 24 records differ from the straight run: {different[:3]}"
    summary = runs.read_json(lay.simulation_summary)
    assert summary["resumed"] == len(survivors) and summary["new_trajectories"] == 24 - len(survivors)
    assert runs.read_record(killed.run_dir, runs.SIMULATION)["complete"]


def test_other_settings_never_resume_stored_trajectories(prepared, tmp_path):
    params = _variant(prepared, tmp_path, simulation__max_contexts=1)
    run_simulation(params)
    lay = runs.layout(params)
    stored = lay.trajectories.read_bytes()
    changed = _reload(params, simulation__max_contexts=1, seed=7, simulation__max_turns=3)
    with pytest.raises(runs.StaleStageError) as err:
        run_simulation(changed)
    msg = str(err.value)
    assert "seed: 0 -> 7" in msg and "simulation.max_turns: 2 -> 3" in msg and "--force" in msg
    assert lay.trajectories.read_bytes() == stored  # untouched
    assert runs.read_record(params.run_dir, runs.SIMULATION)["settings"]["seed"] == 0

    s = run_simulation(changed, force=True)  # starts over
    recs = load_trajectories(params.run_dir)
    assert s.resumed == 0 and s.new_trajectories == len(recs) == params.simulation.num_candidates
    assert all(r["max_turns"] == 3 for r in recs)
    assert runs.read_record(params.run_dir, runs.SIMULATION)["settings"]["seed"] == 7


def _reload(params, **overrides):
    """The params of the same run folder with other settings."""
    from rlff_utils.params import load_params

    return load_params(params.source, _overrides(params.run_dir.parent, **overrides))


HOLD_SCRIPT = """
import json, sys, time
from rlff_utils import runs
from rlff_utils.params import load_params
with runs.begin_stage(load_params(sys.argv[1], json.loads(sys.argv[2])), runs.SIMULATION, require_upstream=False):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_one_writer_at_a_time_and_a_dead_writer_lock_is_taken_over(prepared, project_root, tmp_path):
    params = _variant(prepared, tmp_path, simulation__max_contexts=1)
    overrides = _overrides(tmp_path, simulation__max_contexts=1)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, params.source, json.dumps(overrides)],
                              cwd=project_root, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(runs.StageLockedError, match=f"pid {holder.pid} "):
            run_simulation(params)
        assert not runs.layout(params).trajectories.exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert runs.layout(params).lock(runs.SIMULATION).exists()  # left behind by the killed holder
    s = run_simulation(params)  # its pid is dead: the lock is taken over
    assert s.trajectories == params.simulation.num_candidates
    assert not runs.layout(params).lock(runs.SIMULATION).exists()


def test_simulation_grows_in_place_and_keeps_what_it_has(prepared, tmp_path, monkeypatch):
    """More candidates and more contexts: the stored trajectories stay byte for byte, only the
    missing ones are rolled, each the one a straight run of the larger simulation rolls (same
    identity, same seeds); fewer again: nothing is rolled and the reward dataset follows the
    selection. Any other change is still stale."""
    small = _variant(prepared, tmp_path / "grown", simulation__max_contexts=2, simulation__num_candidates=2)
    run_simulation(small)
    lay = runs.layout(small)
    before = lay.trajectories.read_bytes()

    from rlff_utils import simulate

    rolled, roll = [], simulate.rollout_to_store
    monkeypatch.setattr(simulate, "rollout_to_store", lambda trajs, *a, **k: (rolled.append(len(trajs)), roll(trajs, *a, **k))[1])
    more = _reload(small, simulation__max_contexts=2, simulation__num_candidates=3)  # fewer missing than stored
    assert runs.selection_changes(more, runs.SIMULATION) == {"simulation.num_candidates": (2, 3)}
    s = run_simulation(more)
    assert rolled == [2] and s.resumed == 4 and s.new_trajectories == 2 and s.trajectories == s.reward_rows == 6
    assert simulate._grown_from(more) is None  # finished: a rerun is a plain resume
    record = runs.read_record(small.run_dir, runs.SIMULATION)
    runs.write_json({**record, "complete": False}, runs.layout(small).record(runs.SIMULATION))
    assert simulate._grown_from(more) == {"simulation.num_candidates": 2}  # interrupted: still a growth
    runs.write_json(record, runs.layout(small).record(runs.SIMULATION))
    big = _reload(small, simulation__max_contexts=3, simulation__num_candidates=3)
    s = run_simulation(big)
    assert rolled == [2, 3]  # the missing ones only: no stored batch neighbour is rolled again
    assert s.resumed == 6 and s.new_trajectories == 3 and s.trajectories == s.reward_rows == 9
    assert lay.trajectories.read_bytes().startswith(before)  # nothing stored was touched
    record = runs.read_record(small.run_dir, runs.SIMULATION)
    assert record["complete"] and record["settings"]["simulation"]["num_candidates"] == 3
    assert record["grown_from"] == {"simulation.max_contexts": 2}
    assert runs.selection_changes(big, runs.SIMULATION) == {} and runs.stage_is_complete(big, runs.SIMULATION)

    straight = _variant(prepared, tmp_path / "straight", simulation__max_contexts=3, simulation__num_candidates=3)
    run_simulation(straight)
    grown = {(r["context_id"], r["candidate_index"]): r for r in load_trajectories(small.run_dir)}
    reference = {(r["context_id"], r["candidate_index"]): r for r in load_trajectories(straight.run_dir)}
    assert grown.keys() == reference.keys()
    assert all(grown[k]["candidate_reply"] == reference[k]["candidate_reply"] for k in reference)

    again = run_simulation(_reload(small, simulation__max_contexts=3, simulation__num_candidates=1))
    assert again.new_trajectories == 0 and again.trajectories == again.reward_rows == 3
    assert len(load_reward_dataset(small.run_dir)) == 3
    with pytest.raises(runs.StaleStageError, match="simulation.max_turns: 2 -> 3"):
        run_simulation(_reload(small, simulation__max_contexts=3, simulation__num_candidates=1, simulation__max_turns=3))
