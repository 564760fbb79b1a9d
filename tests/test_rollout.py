"""The rollout engine with scripted agents: lockstep turns, visible replies only, seeds tied to a
trajectory's identity, the append-only store, resume of an interrupted batch."""

from __future__ import annotations

import json
import math

import pytest

from rlff_utils.critic import LLMCritic
from rlff_utils.backends import BackendStats
from rlff_utils.rollout import (
    SIM_KEY,
    RoutedStore,
    Trajectory,
    TrajectoryStore,
    TurnSeeds,
    backend_seeker,
    backend_supporter,
    candidate_sampler,
    format_transcript,
    rollout_to_store,
    routed_supporter,
    run_rollouts,
)
from rlff_utils.sampling import derive_seed
from rlff_utils.simulate import simulation_trajectories

# ---- storage ------------------------------------------------------------------------------------


def test_store_torn_last_line_dropped_and_cut_before_append(tmp_path):
    store = TrajectoryStore(tmp_path / "t.jsonl", SIM_KEY)
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
    store = TrajectoryStore(tmp_path / "t.jsonl", SIM_KEY)
    store.path.write_text('{"context_id": "a", "candidate_index": 0}\n{"context_id": "a", "candidate_index": 1}')
    assert len(store.load()) == 2
    store.append([{"context_id": "b", "candidate_index": 0}])
    assert store.done_keys() == {("a", 0), ("a", 1), ("b", 0)}


def test_store_corruption_in_the_middle_raises(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"context_id": "a", "candidate_index": 0}\nnot json\n{"context_id": "b", "candidate_index": 0}\n')
    with pytest.raises(ValueError, match="line 2"):
        TrajectoryStore(path, SIM_KEY).load()


def test_store_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        TrajectoryStore(tmp_path / "t.jsonl", SIM_KEY).append([{"context_id": "a", "candidate_index": 0, "s": math.nan}])


# ---- the lockstep engine with scripted agents ------------------------------------------------------


class Scripted:
    """A ChatBackend answering from a function of (conversation, sample index), or with
    ``seeded`` of (conversation, sample index, the conversation's seed); records calls."""

    def __init__(self, answer, probs=None, seeded=False):
        self.answer, self.probs, self.seeded, self.calls = answer, probs, seeded, []
        self.stats = BackendStats()

    def generate(self, conversations, n=1, temperature=None, max_new_tokens=None, stop=None, seed=None,
                 guided_choice=None, seeds=None):
        self.calls.append({"convs": conversations, "n": n, "seed": seed, "seeds": seeds})
        seeds = seeds or [None] * len(conversations)
        if self.seeded:
            return [[self.answer(c, i, s) for i in range(n)] for c, s in zip(conversations, seeds)]
        return [[self.answer(c, i) for i in range(n)] for c in conversations]

    def score_choices(self, conversations, choices):
        self.calls.append({"convs": conversations, "choices": choices})
        return [[p.get(ch, 0.0) for ch in choices] for p in map(self.probs, conversations)]


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
    critic = LLMCritic(critic_backend, "votes", samples=4, threshold=0.5)
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
                 backend_seeker(same, 8), LLMCritic(critic_backend, "votes", samples=1), critic_context_turns=1)
    last = critic_backend.calls[-1]["convs"][0][-1]["content"]
    assert "I feel bad (0)" in last and "hello" not in last  # context: its last turn only
    assert last.count("Supporter: ok") == 2 and last.count("Seeker: ok") == 2  # the whole rollout
    with pytest.raises(ValueError, match="lockstep"):  # half a turn: not a state to continue from
        started = Trajectory(meta={}, history=[], max_turns=2, key=("x",), turns=[{"speaker": "seeker", "text": "x"}])
        run_rollouts([started], same, same, same, None)


def test_unparsable_critic_gives_no_score_and_no_success():
    critic = LLMCritic(Scripted(lambda c, i: "no idea"), "votes", samples=3)
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
    critic = LLMCritic(Scripted(lambda c, i: "x", probs=lambda c: {"solved": 1.0} if "turn 2" in c[-1]["content"]
                             else {"same": 1.0}), "probs")
    case = {"case_id": "ppdpp-test-0001", "emotion_type": "fear", "problem_type": "school", "situation": "exams"}
    trajs = [Trajectory(meta=dict(case), history=[{"speaker": "seeker", "text": "exams"}], max_turns=4,
                        key=("sys", case["case_id"]))]
    supporter = backend_supporter(policy, "strategy", 8)
    run_rollouts(trajs, supporter, supporter, backend_seeker(user, 8), critic, seed=0)
    r = trajs[0].record()
    assert [t["text"] for t in r["turns"] if t["speaker"] == "supporter"] == ["policy turn 1", "policy turn 2"]
    assert r["end_reason"] == "goal" and r["turns_used"] == 2 and r["critic_scores"] == [-0.5, 1.0]
    assert "[Question]" in policy.calls[0]["convs"][0][0]["content"] or "strateg" in policy.calls[0]["convs"][0][0]["content"]
    assert r["case_id"] == "ppdpp-test-0001"
    shown = format_transcript(r)
    assert "policy turn 1" in shown and "critic: -0.50" in shown and "=> goal after 2 turn(s)" in shown


def test_systems_share_lockstep_batches_but_keep_their_own_policy_and_file(tmp_path):
    """Evaluation rolls several systems together: one seeker and one critic call per turn for
    all, each system's policy sees only its own conversations, each system writes its own file."""
    policies = {name: Scripted(lambda c, i, name=name: f"reply from {name}") for name in ("a", "b")}
    user = Scripted(lambda c, i: "ok")
    critic = LLMCritic(Scripted(lambda c, i: "x", probs=lambda c: {"same": 1.0}), "probs")
    trajs = [Trajectory(meta={"case_id": f"c{i}", "system": name}, history=[{"speaker": "seeker", "text": "hi"}],
                        max_turns=2, key=(name, f"c{i}")) for name in ("a", "b") for i in range(2)]
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


# ---- seeds: the trajectory's identity, never its batch ---------------------------------------------


def _seeded_agents():
    """Agents whose every answer names the seed it was drawn with (and the sample index)."""
    policy = Scripted(lambda c, i, s: f"candidate s{s} i{i}", seeded=True)
    system = Scripted(lambda c, i, s: f"system s{s}", seeded=True)
    user = Scripted(lambda c, i, s: f"seeker s{s}", seeded=True)
    critic = LLMCritic(Scripted(lambda c, i: "same"), "votes", samples=2)
    return policy, system, user, critic


def _roll(trajs, seed=0, batch=None):
    policy, system, user, critic = _seeded_agents()
    batch = batch or len(trajs)
    for start in range(0, len(trajs), batch):
        run_rollouts(trajs[start: start + batch], candidate_sampler(policy, "vanilla", 8),
                     backend_supporter(system, "vanilla", 8), backend_seeker(user, 8), critic, seed=seed)
    return {t.key: t.record() for t in trajs}, critic


def test_seeds_follow_the_trajectory_not_its_batch():
    together, critic = _roll(simulation_trajectories(CONTEXTS, num_candidates=3, max_turns=2))
    alone, _ = _roll(simulation_trajectories(CONTEXTS, num_candidates=3, max_turns=2), batch=1)
    # the last context alone, its candidates in reverse order: the same texts for the same keys
    reordered = simulation_trajectories(CONTEXTS[2:], num_candidates=3, max_turns=2)[::-1]
    tail, _ = _roll(reordered)
    assert together == alone and all(together[k] == v for k, v in tail.items())
    key = ("d1@2", 2)
    rec = together[key]
    # candidate j is sample j of the context's conversation, seeded by the context's identity
    assert rec["candidate"] == f"candidate s{TurnSeeds(0, 1, 'supporter')('d1@2')} i2"
    assert rec["turns"][1]["text"] == f"seeker s{derive_seed(0, *key, 1, 'seeker')}"
    assert rec["turns"][2]["text"] == f"system s{derive_seed(0, *key, 2, 'supporter')}"
    votes = critic.backend.calls[0]
    assert votes["seeds"][0] == derive_seed(0, "d0@2", 0, 1, "critic") and votes["seed"] is None
    texts = {t["text"] for r in together.values() for t in r["turns"]}
    assert len(texts) == len([t for r in together.values() for t in r["turns"]])  # all seeds distinct
    other_run, _ = _roll(simulation_trajectories(CONTEXTS, num_candidates=3, max_turns=2), seed=1)
    assert other_run[key]["candidate"] != rec["candidate"]


def test_derive_seed_is_stable_and_31_bit():
    assert derive_seed(0, "d1@2", 2, 1, "seeker") == derive_seed(0, "d1@2", 2, 1, "seeker")
    assert derive_seed(0, "d1@2", 2, 1, "seeker") != derive_seed(0, "d1@2", 2, 1, "critic")
    assert derive_seed(3, "a") == 232107275  # the same on every machine and in every process
    assert all(0 <= derive_seed(i) < 2**31 for i in range(100))


# ---- resume: an interrupted batch continues where it stopped ---------------------------------------


class Killed(Exception):
    pass


def _store_run(tmp_path, kill_at_call=None, batch_size=4):
    """rollout_to_store over 3 contexts x 2 candidates, T=3; the critic fails (a kill) at its
    ``kill_at_call``-th call. Success comes at a turn that depends on the trajectory's seed."""
    policy, system, user, _ = _seeded_agents()
    calls = {"n": 0}

    def probs(conv):
        calls["n"] += 1
        if calls["n"] == kill_at_call:
            raise Killed
        last = conv[-1]["content"].rsplit("Seeker: seeker s", 1)[1]
        return {"solved": 1.0} if int(last.split()[0]) % 3 == 0 else {"same": 1.0}

    critic = LLMCritic(Scripted(lambda c, i: "x", probs=probs), "probs")
    store = TrajectoryStore(tmp_path / "t.jsonl", SIM_KEY)
    trajs = simulation_trajectories(CONTEXTS, num_candidates=2, max_turns=3)
    rollout_to_store(trajs, store, batch_size, candidate_sampler(policy, "vanilla", 8),
                     backend_supporter(system, "vanilla", 8), backend_seeker(user, 8), critic,
                     state_path=tmp_path / "state.json")
    return store


@pytest.mark.parametrize("keep_state", [True, False])
def test_resumed_batches_write_what_a_straight_run_writes(tmp_path, keep_state):
    """Killed inside every judgement in turn, then rerun: the same records, each once. Without
    the state file (a kill between the append and the state write) the batch is rolled again
    whole and only its missing keys are written."""
    straight = _store_run(tmp_path / "straight").path.read_text().splitlines()
    assert len(straight) == 6 and not (tmp_path / "straight" / "state.json").exists()
    kills = 0
    for kill_at in range(1, 30):
        folder = tmp_path / f"kill{kill_at}"
        try:
            _store_run(folder, kill_at_call=kill_at)
        except Killed:
            kills += 1
        else:
            break
        if not keep_state:
            (folder / "state.json").unlink(missing_ok=True)
        resumed = _store_run(folder).path.read_text().splitlines()
        assert sorted(resumed) == sorted(straight), f"kill in judgement {kill_at}"
        assert not (folder / "state.json").exists()
    assert kills >= 8  # every batch was interrupted in several turns


def test_state_of_the_batch_in_flight(tmp_path):
    """After a turn, the batch's live trajectories are on disk; the rerun starts from there."""
    with pytest.raises(Killed):
        _store_run(tmp_path, kill_at_call=5)  # the first batch judges 4 conversations on turn 1
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["keys"] == [["d0@2", 0], ["d0@2", 1], ["d1@2", 0], ["d1@2", 1]]
    stored = {(r["context_id"], r["candidate_index"]) for r in TrajectoryStore(tmp_path / "t.jsonl", SIM_KEY).load()}
    live = {tuple(t["key"]) for t in state["live"]}
    assert live and not live & stored and len(live | stored) == 4  # each either stored or in flight
    assert all(len(t["critic_scores"]) == 1 and len(t["turns"]) == 2 for t in state["live"])
    restored = Trajectory.from_state(state["live"][0])
    assert isinstance(restored.key, tuple) and restored.state() == {**state["live"][0], "key": restored.key}
