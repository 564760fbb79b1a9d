"""Rollout engine, future-oriented reward, storage, kill-and-resume and seed determinism."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from rlff_utils.agents import Critic
from rlff_utils.backends import BackendStats
from rlff_utils.params import SimulationParams
from rlff_utils.simulate import (
    REWARD_DATASET,
    TRAJECTORIES,
    RoutedStore,
    Trajectory,
    TrajectoryStore,
    backend_seeker,
    backend_supporter,
    candidate_sampler,
    format_transcript,
    future_reward,
    load_reward_dataset,
    load_trajectories,
    reward_frame,
    rollout_to_store,
    routed_supporter,
    run_rollouts,
    run_simulation,
    simulation_trajectories,
    success_by_turn,
)

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


# ---- storage ------------------------------------------------------------------------------------


def test_store_torn_last_line_dropped_and_cut_before_append(tmp_path):
    store = TrajectoryStore(tmp_path / "t.jsonl")
    store.append([{"context_id": "a", "candidate_index": 0, "x": 1}, {"context_id": "a", "candidate_index": 1}])
    with store.path.open("a") as f:
        f.write('{"context_id": "b", "candidate_in')  # a write cut by a kill
    assert [r["candidate_index"] for r in store.load()] == [0, 1] and store.dropped_torn_line
    store.append([{"context_id": "b", "candidate_index": 0}])
    lines = store.path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    store.append([{"context_id": "a", "candidate_index": 0, "x": 2}])  # a repeated key: first wins
    assert len(store.load()) == 3 and store.load()[0]["x"] == 1
    assert store.done_keys() == {("a", 0), ("a", 1), ("b", 0)}


def test_store_keeps_a_whole_last_record_that_lacks_its_newline(tmp_path):
    store = TrajectoryStore(tmp_path / "t.jsonl")
    store.path.write_text('{"context_id": "a", "candidate_index": 0}\n{"context_id": "a", "candidate_index": 1}')
    assert len(store.load()) == 2
    store.append([{"context_id": "b", "candidate_index": 0}])
    assert store.done_keys() == {("a", 0), ("a", 1), ("b", 0)}


def test_store_corruption_in_the_middle_raises(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"context_id": "a", "candidate_index": 0}\nnot json\n{"context_id": "b", "candidate_index": 0}\n')
    with pytest.raises(ValueError, match="line 2"):
        TrajectoryStore(path).load()


def test_store_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        TrajectoryStore(tmp_path / "t.jsonl").append([{"context_id": "a", "candidate_index": 0, "s": math.nan}])


# ---- the lockstep engine with scripted agents ------------------------------------------------------


class Scripted:
    """A ChatBackend answering from a function of (conversation, sample index); records calls."""

    def __init__(self, answer, probs=None):
        self.answer, self.probs, self.calls = answer, probs, []
        self.stats = BackendStats()

    def generate(self, conversations, n=1, temperature=None, max_new_tokens=None, stop=None, seed=None,
                 guided_choice=None):
        self.calls.append({"convs": conversations, "n": n, "seed": seed})
        return [[self.answer(c, i) for i in range(n)] for c in conversations]

    def score_choices(self, conversations, choices):
        self.calls.append({"convs": conversations, "choices": choices})
        return [[self.probs(c).get(ch, 0.0) for ch in choices] for c in conversations]


CONTEXTS = [
    {"context_id": f"d{i}@2", "dialogue_id": f"d{i}", "dataset": "esconv", "emotion_type": "sadness",
     "problem_type": "breakup", "situation": f"situation {i}",
     "history": [{"speaker": "seeker", "text": "hi"}, {"speaker": "supporter", "text": "hello"},
                 {"speaker": "seeker", "text": f"I feel bad ({i})"}]}
    for i in range(3)
]


def _all_text(convs):
    return " ".join(m["content"] for c in convs for m in c)


def test_lockstep_rollouts_goal_max_turns_and_visible_replies_only():
    # candidate j of every context: "GOAL" for j == 0 (critic says solved at once), else plain.
    policy = Scripted(lambda c, i: f"<think>secret plan {i}</think>{'GOAL' if i == 0 else 'plain'} reply {i}")
    system = Scripted(lambda c, i: "<think>hidden</think>later supporter turn")
    seeker = Scripted(lambda c, i: "\nseeker answer\nSupporter: a turn the simulator should not write")
    critic_backend = Scripted(
        lambda c, i: "solved" if "GOAL" in c[-1]["content"] else ("better" if i % 2 else "same")
    )
    critic = Critic(critic_backend, "votes", samples=4, threshold=0.5)
    trajs = simulation_trajectories(CONTEXTS, num_candidates=2, max_turns=3)
    finished_batches = []
    run_rollouts(trajs, candidate_sampler(policy, "reasoning", 8), backend_supporter(system, "vanilla", 8),
                 backend_seeker(seeker, 8), critic, seed=1, on_finished=lambda ts: finished_batches.append(len(ts)))

    recs = [t.record() for t in trajs]
    goals = [r for r in recs if r["candidate_index"] == 0]
    others = [r for r in recs if r["candidate_index"] == 1]
    assert all(r["end_reason"] == "goal" and r["goal_reached"] and r["turns_used"] == 1 for r in goals)
    assert all(r["end_reason"] == "max_turns" and not r["goal_reached"] and r["turns_used"] == 3 for r in others)
    assert all(r["critic_scores"] == [1.0] for r in goals)
    assert all(r["critic_scores"] == [0.0, 0.0, 0.0] and r["critic_unparsed"] == [0, 0, 0] for r in others)
    assert goals[0]["candidate"].startswith("<think>secret plan 0</think>")
    assert goals[0]["candidate_reply"] == "GOAL reply 0"
    assert others[0]["turns"][0] == {"speaker": "supporter", "text": "plain reply 1",
                                     "raw": "<think>secret plan 1</think>plain reply 1"}
    assert [t["speaker"] for t in others[0]["turns"]] == ["supporter", "seeker"] * 3
    assert others[0]["turns"][1] == {"speaker": "seeker", "text": "seeker answer"}  # its first line only
    assert finished_batches == [3, 3]  # goals after turn 1, the rest at the cap

    # lockstep: one batched call per role per turn; finished trajectories drop out
    assert len(policy.calls) == 1 and policy.calls[0]["n"] == 2 and len(policy.calls[0]["convs"]) == 3
    assert [len(c["convs"]) for c in seeker.calls] == [6, 3, 3]
    assert [len(c["convs"]) for c in system.calls] == [3, 3]
    assert [len(c["convs"]) for c in critic_backend.calls] == [6, 3, 3]
    # only visible replies reach the user simulator and the critic
    for backend in (seeker, critic_backend, system):
        text = _all_text([conv for call in backend.calls for conv in call["convs"]])
        assert "secret" not in text and "hidden" not in text and "<think>" not in text
    assert "I feel bad (2)" in _all_text(seeker.calls[0]["convs"])


def test_critic_window_keeps_the_rollout_and_the_end_of_the_context():
    critic_backend = Scripted(lambda c, i: "same")
    same = Scripted(lambda c, i: "ok")
    trajs = simulation_trajectories(CONTEXTS[:1], num_candidates=1, max_turns=2)
    run_rollouts(trajs, backend_supporter(same, "vanilla", 8), backend_supporter(same, "vanilla", 8),
                 backend_seeker(same, 8), Critic(critic_backend, "votes", samples=1), critic_context_turns=1)
    last = critic_backend.calls[-1]["convs"][0][-1]["content"]
    assert "I feel bad (0)" in last and "hello" not in last  # context: its last turn only
    assert last.count("Supporter: ok") == 2 and last.count("Seeker: ok") == 2  # the whole rollout
    with pytest.raises(ValueError, match="fresh"):
        started = Trajectory(meta={}, history=[], max_turns=2, turns=[{"speaker": "seeker", "text": "x"}])
        run_rollouts([started], same, same, same, None)


def test_unparsable_critic_gives_no_score_and_no_success():
    critic = Critic(Scripted(lambda c, i: "no idea"), "votes", samples=3)
    trajs = simulation_trajectories(CONTEXTS[:1], num_candidates=1, max_turns=2)
    same = Scripted(lambda c, i: "ok")
    run_rollouts(trajs, backend_supporter(same, "vanilla", 8), backend_supporter(same, "vanilla", 8),
                 backend_seeker(same, 8), critic)
    r = trajs[0].record()
    assert r["critic_scores"] == [None, None] and r["critic_unparsed"] == [3, 3]
    assert r["end_reason"] == "max_turns" and r["final_score"] is None


def test_evaluation_shape_policy_writes_every_turn():
    """Evaluation: one opening seeker turn, the policy supporter on every turn."""
    policy = Scripted(lambda c, i: f"[Question] policy turn {sum(m['role'] == 'assistant' for m in c) + 1}")
    user = Scripted(lambda c, i: "tell me more")
    critic = Critic(Scripted(lambda c, i: "x", probs=lambda c: {"solved": 1.0} if "turn 2" in c[-1]["content"]
                             else {"same": 1.0}), "probs")
    case = {"case_id": "ppdpp-test-0001", "emotion_type": "fear", "problem_type": "school", "situation": "exams"}
    trajs = [Trajectory(meta=dict(case), history=[{"speaker": "seeker", "text": "exams"}], max_turns=4)]
    supporter = backend_supporter(policy, "strategy", 8)
    run_rollouts(trajs, supporter, supporter, backend_seeker(user, 8), critic, seed=0)
    r = trajs[0].record()
    assert [t["text"] for t in r["turns"] if t["speaker"] == "supporter"] == ["policy turn 1", "policy turn 2"]
    assert r["end_reason"] == "goal" and r["turns_used"] == 2 and r["critic_scores"] == [-0.5, 1.0]
    assert "[Question]" in policy.calls[0]["convs"][0][0]["content"] or "strateg" in policy.calls[0]["convs"][0][0]["content"]
    assert r["case_id"] == "ppdpp-test-0001"
    assert "policy turn 1" in format_transcript(r)


def test_systems_share_lockstep_batches_but_keep_their_own_policy_and_file(tmp_path):
    """Evaluation rolls several systems together: one seeker and one critic call per turn for
    all, each system's policy sees only its own conversations, each system writes its own file."""
    policies = {name: Scripted(lambda c, i, name=name: f"reply from {name}") for name in ("a", "b")}
    user = Scripted(lambda c, i: "ok")
    critic = Critic(Scripted(lambda c, i: "x", probs=lambda c: {"same": 1.0}), "probs")
    trajs = [Trajectory(meta={"case_id": f"c{i}", "system": name}, history=[{"speaker": "seeker", "text": "hi"}],
                        max_turns=2) for name in ("a", "b") for i in range(2)]
    supporter = routed_supporter({k: backend_supporter(p, "vanilla", 8) for k, p in policies.items()}, "system")
    stores = {k: TrajectoryStore(tmp_path / k / "t.jsonl", ("case_id",)) for k in policies}
    rollout_to_store(trajs, RoutedStore(stores, "system"), 8, supporter, supporter, backend_seeker(user, 8), critic)
    assert len(user.calls) == 2 and all(len(c["convs"]) == 4 for c in user.calls)  # 2 turns, all 4 together
    assert [len(c["convs"]) for c in policies["a"].calls] == [2, 2]
    for name in ("a", "b"):
        recs = stores[name].load()
        assert [r["case_id"] for r in recs] == ["c0", "c1"] and {r["system"] for r in recs} == {name}
        assert {t["text"] for r in recs for t in r["turns"] if t["speaker"] == "supporter"} == {f"reply from {name}"}
    assert RoutedStore(stores, "system").done_keys() == {(n, c) for n in "ab" for c in ("c0", "c1")}


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


def _variant(params, root, **sim):
    """The same run under another output root (stage 01 linked, not recomputed)."""
    from rlff_utils.params import load_params

    other = load_params(params.source, {"output_root": str(root), **{f"simulation.{k}": v for k, v in sim.items()}})
    other.run_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(params.run_dir / "data", other.run_dir / "data")
    return other


def test_run_simulation_writes_everything_and_resumes(prepared):
    s = run_simulation(prepared)
    out = prepared.run_dir / "simulation"
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
    for f in ("prompts.json", "protocol_card.json", "summary.json", REWARD_DATASET):
        assert (out / f).is_file()
    assert json.loads((out / "protocol_card.json").read_text())["simulation"]["num_candidates"] == sim.num_candidates
    again = run_simulation(prepared)
    assert again.new_trajectories == 0 and again.resumed == s.trajectories
    assert len((out / TRAJECTORIES).read_text().splitlines()) == s.trajectories


def test_same_params_same_trajectories(prepared, tmp_path):
    runs = [_variant(prepared, tmp_path / name, max_contexts=3) for name in ("a", "b")]
    for p in runs:
        run_simulation(p)
    a, b = (load_trajectories(p.run_dir) for p in runs)
    assert len(a) == 3 * prepared.simulation.num_candidates
    assert a == b  # same order too: lockstep batches are deterministic


KILL_SCRIPT = """
import sys
from rlff_utils.params import load_params
from rlff_utils.simulate import run_simulation
p = load_params(sys.argv[1], {"output_root": sys.argv[2], "simulation.num_candidates": 4,
                              "simulation.batch_size": 4, "simulation.max_contexts": 6})
run_simulation(p)
"""


def test_sigkill_mid_run_then_resume(prepared, project_root, tmp_path):
    params = _variant(prepared, tmp_path, num_candidates=4, batch_size=4, max_contexts=6)
    path = params.run_dir / "simulation" / TRAJECTORIES
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, prepared.source, str(tmp_path)], cwd=project_root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if path.exists() and path.read_bytes().count(b"\n") >= 4:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    survivors = TrajectoryStore(path).load()
    assert 4 <= len(survivors) < 24
    with path.open("a") as f:  # and a write the kill cut in half
        f.write('{"context_id": "torn", "candid')

    s = run_simulation(params)
    recs = [json.loads(line) for line in path.read_text().splitlines()]  # every line is whole JSON
    keys = [(r["context_id"], r["candidate_index"]) for r in recs]
    assert len(keys) == len(set(keys)) == 24 == s.trajectories
    assert s.resumed == len(survivors) and s.new_trajectories == 24 - len(survivors)
    assert recs[: len(survivors)] == survivors  # nothing written before the kill was touched
