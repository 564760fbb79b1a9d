"""The critic package: answer parsing, votes and probs over a backend, the factory (critic/)."""

from __future__ import annotations

import math

import pytest

from rlff_utils import agents
from rlff_utils.backends import BackendStats
from rlff_utils.critic import CRITIC_LABELS, LLMCritic
from rlff_utils.critic.labels import parse_critic_answer, probs_result, sampled_votes, votes_result

# A state as the critic sees it: the case's fields and the dialogue so far.
CONTEXT = {
    "emotion_type": "anxiety",
    "problem_type": "job crisis",
    "situation": "I was laid off last week.",
    "history": [
        {"speaker": "seeker", "text": "Not great, I lost my job.", "strategy": None},
        {"speaker": "supporter", "text": "That sounds really hard.", "strategy": "Reflection of feelings"},
        {"speaker": "seeker", "text": "I don't know what to do now.", "strategy": None},
    ],
}


# ---- critic parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, label",
    [
        ("solved", "solved"),
        ("Better", "better"),
        (" The seeker feels the same.", "same"),
        ("worse!", "worse"),
        ("It is not solved yet, but the seeker feels better", "better"),
        ("The problem hasn't been solved; feels worse", "worse"),
        ("<think>maybe solved?</think> same", "same"),
        ("D", None),
        ("I cannot tell.", None),
        ("unsolvedness", None),
    ],
)
def test_parse_critic_answer(answer, label):
    assert parse_critic_answer(answer) == label


def test_votes_mean_over_parsed_answers_and_unparsed_counted():
    r = votes_result(["solved", "better", "gibberish", "Solved."], threshold=0.5)
    assert r.score == pytest.approx((1 + 0.5 + 1) / 3)
    assert r.success and r.unparsed == 1
    assert r.counts == {"worse": 0, "same": 0, "better": 1, "solved": 2}
    r = votes_result(["better", "better"], threshold=0.5)
    assert r.score == 0.5 and not r.success  # success needs score > threshold


def test_votes_all_unparsable_is_nan_not_success():
    r = votes_result(["??", "", "maybe"], threshold=0.5)
    assert math.isnan(r.score) and not r.success and r.unparsed == 3


def test_probs_expected_value():
    r = probs_result({"worse": 0.1, "same": 0.1, "better": 0.2, "solved": 0.6}, threshold=0.5)
    assert r.score == pytest.approx(-0.1 - 0.05 + 0.1 + 0.6)
    assert r.success and r.counts["solved"] == 1 and r.unparsed == 0
    assert math.isnan(probs_result(dict.fromkeys(CRITIC_LABELS, 0.0), 0.5).score)


class ScriptedBackend:
    """A ChatBackend whose answers come from a function: exact control for parsing tests."""

    def __init__(self, answer=None, probs=None):
        self.answer, self.probs, self.calls = answer, probs, []
        self.stats = BackendStats()

    def generate(self, conversations, n=1, temperature=None, max_new_tokens=None, stop=None, seed=None,
                 guided_choice=None, seeds=None):
        self.calls.append({"n": n, "temperature": temperature, "seed": seed, "seeds": seeds,
                           "guided_choice": guided_choice})
        return [[self.answer(c, i) for i in range(n)] for c in conversations]

    def score_choices(self, conversations, choices):
        self.calls.append({"choices": choices})
        return [[self.probs(c)[choice] for choice in choices] for c in conversations]


def test_critic_votes_mode_samples_n_and_parses():
    answers = ["solved", "better", "same", "nonsense"]
    backend = ScriptedBackend(answer=lambda conv, i: answers[i % 4])
    critic = LLMCritic(backend, "votes", samples=8, temperature=1.1, threshold=0.5, seed=3)
    [r] = critic.judge([CONTEXT])
    assert backend.calls[0]["n"] == 8 and backend.calls[0]["temperature"] == 1.1
    assert backend.calls[0]["guided_choice"] == list(CRITIC_LABELS)
    assert r.unparsed == 2 and r.score == pytest.approx((1 + 0.5 - 0.5) / 3) and not r.success
    critic.judge([CONTEXT])
    assert backend.calls[1]["seed"] != backend.calls[0]["seed"]  # fresh sampling per call
    critic.judge([CONTEXT], seed=5)
    assert backend.calls[2]["seed"] == 5
    critic.judge([CONTEXT, CONTEXT], seeds=[11, 12])  # one seed per judged context
    assert backend.calls[3]["seeds"] == [11, 12] and backend.calls[3]["seed"] is None


def test_critic_probs_mode_sums_surface_forms():
    probs = {"worse": 0.0, "Worse": 0.0, "same": 0.1, "Same": 0.1, "better": 0.1, "Better": 0.1,
             "solved": 0.3, "Solved": 0.3}
    backend = ScriptedBackend(probs=lambda conv: probs)
    [r] = LLMCritic(backend, "probs", threshold=0.5).judge([CONTEXT])
    assert set(backend.calls[0]["choices"]) == set(probs)
    assert r.score == pytest.approx(0.2 * -0.5 + 0.2 * 0.5 + 0.6 * 1.0)
    assert r.success


def test_critic_rejects_unknown_mode():
    with pytest.raises(ValueError, match="votes"):
        LLMCritic(ScriptedBackend(), "median")


def test_sampled_votes_follow_the_tempered_label_distribution():
    probs = {"worse": 0.1, "same": 0.2, "better": 0.3, "solved": 0.4}
    assert sampled_votes(probs, 5, 0.0, seed=1) == ["solved"] * 5  # T = 0: the most probable label
    draws = sampled_votes(probs, 4000, 1.0, seed=2)
    shares = {k: draws.count(k) / len(draws) for k in probs}
    assert all(abs(shares[k] - p) < 0.03 for k, p in probs.items())
    hot = sampled_votes(probs, 4000, 3.0, seed=2)  # high temperature flattens towards uniform
    assert hot.count("worse") / 4000 > shares["worse"] + 0.05
    assert sampled_votes(probs, 10, 1.0, seed=3) == sampled_votes(probs, 10, 1.0, seed=3)
    assert sampled_votes(dict.fromkeys(probs, math.nan), 3, 1.0, seed=0) == []


def test_votes_on_the_hf_backend_name_a_label_every_time_and_reproduce(tiny_model_path):
    """A random tiny model names no label when it writes freely; its votes are drawn from its
    probabilities of the four labels instead, seeded per judgement."""
    from rlff_utils.backends import get_backend
    from rlff_utils.params import ModelRole

    backend = get_backend(ModelRole(name="tiny-random-smollm2", batch_size=4))
    other = {**CONTEXT, "situation": "My dog is ill.", "history": CONTEXT["history"][:1]}
    critic = LLMCritic(backend, "votes", samples=12, temperature=1.1, threshold=0.5)
    first = critic.judge([CONTEXT, other], seeds=[5, 6])
    assert all(r.unparsed == 0 and sum(r.counts.values()) == 12 and math.isfinite(r.score) for r in first)
    assert [r.as_dict() for r in critic.judge([CONTEXT, other], seeds=[5, 6])] == [r.as_dict() for r in first]
    alone = critic.judge([other], seeds=[6])[0]  # a judgement depends on its own seed only
    assert alone.as_dict() == first[1].as_dict()
    many = [critic.judge([CONTEXT], seeds=[s])[0].counts for s in range(8)]
    assert len({tuple(c.values()) for c in many}) > 1  # other seeds, other votes
    free = backend.generate([agents.critic_messages(CONTEXT)], n=12, temperature=1.1, max_new_tokens=8, seed=5)[0]
    assert sum(parse_critic_answer(a) is None for a in free) > 6  # what parse-and-count would have faced


# ---- one factory for every stage's critic --------------------------------------------------------


def _params(tmp_path, **over):
    from rlff_utils.params import load_params

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    return load_params(root / "params" / "ci.yaml", {"output_root": str(tmp_path / "outputs"), **over})


def test_critic_settings_read_each_stage_and_refuse_another(tmp_path):
    p = _params(tmp_path, **{"simulation.critic_samples": 3, "evaluation.critic_mode": "probs",
                             "evaluation.max_turns": 4, "data.max_history_turns": 5})
    sim, ev = p.critic_settings("simulation"), p.critic_settings("evaluation")
    assert (sim.role, sim.samples, sim.window) == (p.models.critic, 3, 5)
    assert (ev.role, ev.mode, ev.window) == (p.models.eval_critic, "probs", 1 + 2 * 4)
    assert p.critic_settings("evaluation", mode="votes").mode == "votes"  # the contrast critic
    with pytest.raises(ValueError, match="'simulation' or the 'evaluation'"):
        p.critic_settings("grpo")


def test_for_stage_builds_each_mode_and_identity_names_the_judge(tmp_path):
    from rlff_utils import critic
    from rlff_utils.critic import RuleCritic

    backend = ScriptedBackend(answer=lambda conv, i: "solved")
    p = _params(tmp_path, **{"simulation.critic_mode": "votes", "simulation.critic_samples": 3,
                             "simulation.critic_temperature": 0.7})
    votes = critic.for_stage(p, "simulation", backend, window=2)
    assert isinstance(votes, LLMCritic) and (votes.samples, votes.temperature, votes.window) == (3, 0.7, 2)
    [r] = votes.judge([CONTEXT], seeds=[1])
    assert r.score == 1.0 and backend.calls[0]["n"] == 3
    assert "Not great" not in agents.critic_messages(CONTEXT, 2)[1]["content"]  # the window reached the prompt
    rule = critic.for_stage(p, "evaluation", mode="rule")
    assert isinstance(rule, RuleCritic) and rule.judge([{"rollout": [{"speaker": "supporter",
                                                                         "text": "That sounds so hard."}]}])[0].success
    assert critic.identity(p, "simulation")["samples"] == 3 and critic.identity(p, "simulation")["window"] == (
        p.data.max_history_turns)
    assert critic.identity(_params(tmp_path, **{"evaluation.critic_mode": "rule"}), "evaluation") == {"mode": "rule"}


def test_building_a_learned_critic_never_trains_one(tmp_path):
    """``critic_mode: learned`` without the training step: the critic (and the simulation's
    agents) refuse with the step to run, and nothing is written into the run folder."""
    from rlff_utils import critic, runs
    from rlff_utils.simulate import simulation_agents

    p = _params(tmp_path, **{"simulation.critic_mode": "learned"})
    with pytest.raises(FileNotFoundError, match="train_learned_critic"):
        critic.for_stage(p, "simulation")
    with pytest.raises(FileNotFoundError, match="train_learned_critic"):
        simulation_agents(p)
    lay = runs.layout(p)
    assert not lay.learned_critic_dir.exists() and not lay.learned_critic_metrics.exists()
    assert critic.learned_critic_wanted(p)
