"""Prompt construction, reasoning stripping and the PPDPP critic (parsing, votes, probs)."""

from __future__ import annotations

import json
import math

import pytest

from rlff_utils import agents
from rlff_utils.agents import (
    CRITIC_LABELS,
    Critic,
    critic_messages,
    parse_critic_answer,
    policy_messages,
    probs_result,
    seeker_messages,
    split_strategy,
    strip_reasoning,
    visible_reply,
    votes_result,
)
from rlff_utils.backends import BackendStats
from rlff_utils.data import ESCONV_STRATEGIES, EXTES_STRATEGIES

CONTEXT = {
    "context_id": "d1@3",
    "dataset": "esconv",
    "emotion_type": "anxiety",
    "problem_type": "job crisis",
    "situation": "I was laid off last week.",
    "history": [
        {"speaker": "supporter", "text": "Hello, how are you today?", "strategy": "Question"},
        {"speaker": "seeker", "text": "Not great.", "strategy": None},
        {"speaker": "seeker", "text": "I lost my job.", "strategy": None},
        {"speaker": "supporter", "text": "I'm sorry to hear that.", "strategy": "Affirmation and Reassurance"},
        {"speaker": "seeker", "text": "I don't know what to do now.", "strategy": None},
    ],
}


# ---- replies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, visible",
    [
        ("<think>she is scared</think> That sounds hard.", "That sounds hard."),
        ("plain reply  ", "plain reply"),
        ("<think>a</think>x</think> final", "final"),  # after the LAST closing tag
        ("<think>never closed, cut by the length limit", ""),  # reasoning is never leaked
        ("", ""),
    ],
)
def test_strip_reasoning(raw, visible):
    assert strip_reasoning(raw) == visible


def test_visible_reply_drops_reasoning_and_strategy_tag():
    assert visible_reply("<think>use a question</think>[Question] What happened next?") == "What happened next?"
    assert split_strategy("[Reflection of feelings] You feel lost.") == ("Reflection of feelings", "You feel lost.")
    assert split_strategy("No tag [here].") == (None, "No tag [here].")


# ---- prompt construction ----------------------------------------------------------------------


def test_policy_messages_roles_and_merging():
    msgs = policy_messages(CONTEXT, "vanilla")
    assert msgs[0]["role"] == "system"
    assert "anxiety" in msgs[0]["content"] and "job crisis" in msgs[0]["content"] and "laid off" in msgs[0]["content"]
    roles = [m["role"] for m in msgs[1:]]
    assert roles == ["assistant", "user", "assistant", "user"]  # two seeker turns merged into one
    assert msgs[2]["content"] == "Not great.\nI lost my job."
    assert msgs[-1] == {"role": "user", "content": "I don't know what to do now."}


def test_policy_messages_styles():
    vanilla = policy_messages(CONTEXT, "vanilla")[0]["content"]
    strategy = policy_messages(CONTEXT, "strategy")[0]["content"]
    reasoning = policy_messages(CONTEXT, "reasoning")[0]["content"]
    assert "<think>" not in vanilla and "[" not in vanilla
    assert strategy.startswith(vanilla) and all(s in strategy for s in ESCONV_STRATEGIES)
    assert reasoning.startswith(vanilla) and "<think>" in reasoning and "</think>" in reasoning
    extes = policy_messages({**CONTEXT, "dataset": "extes"}, "strategy")[0]["content"]
    assert all(s in extes for s in EXTES_STRATEGIES)
    with pytest.raises(ValueError, match="prompt style"):
        policy_messages(CONTEXT, "fancy")


def test_history_window_keeps_the_latest_turns():
    msgs = policy_messages(CONTEXT, "vanilla", max_history_turns=2)
    assert [m["content"] for m in msgs[1:]] == ["I'm sorry to hear that.", "I don't know what to do now."]


def test_seeker_messages_flip_roles_and_open_with_user():
    msgs = seeker_messages(CONTEXT)
    assert msgs[0]["role"] == "system" and "laid off" in msgs[0]["content"]
    assert msgs[1] == {"role": "user", "content": "Hello, how are you today?"}
    assert msgs[-1]["role"] == "assistant"  # the seeker's own last turn
    opening_only = seeker_messages({**CONTEXT, "history": [{"speaker": "seeker", "text": "Hi."}]})
    assert [m["role"] for m in opening_only] == ["system", "user", "assistant"]


def test_critic_messages_hold_the_transcript_and_the_four_answers():
    msgs = critic_messages(CONTEXT)
    q = msgs[-1]["content"]
    assert "Supporter: Hello, how are you today?" in q and "Seeker: I don't know what to do now." in q
    assert all(label in q for label in CRITIC_LABELS)
    empty = critic_messages({**CONTEXT, "history": [{"speaker": "supporter", "text": ""}]})
    assert "Supporter: ..." in empty[-1]["content"]


def test_write_prompts(tmp_path):
    path = agents.write_prompts(tmp_path / "stage" / "prompts.json")
    payload = json.loads(path.read_text())
    assert payload["templates"]["critic_question"] == agents.PROMPTS["critic_question"]
    assert payload["templates"]["judge_question"] == agents.PROMPTS["judge_question"]
    assert list(payload["judge_criteria"]) == list(agents.CRITERIA)
    assert payload["critic_labels"] == {"worse": -1.0, "same": -0.5, "better": 0.5, "solved": 1.0}


def test_judge_messages_show_both_conversations_and_the_criterion():
    msgs = agents.judge_messages("exams", "Seeker: hi", "Seeker: hello", "empathy")
    q = msgs[-1]["content"]
    assert msgs[0] == {"role": "system", "content": agents.PROMPTS["judge_system"]}
    assert q.index("Conversation A:\nSeeker: hi") < q.index("Conversation B:\nSeeker: hello")
    assert agents.JUDGE_CRITERIA["empathy"] in q and "exams" in q and q.endswith("A, B, tie.")
    with pytest.raises(KeyError):
        agents.judge_messages("x", "a", "b", "humour")


@pytest.mark.parametrize(
    "text, verdict",
    [("A", "A"), ("B.", "B"), ("Tie", "tie"), ("Conversation B is better", "B"),
     ("<think>A seems kind</think> B", "B"), ("I cannot decide", None), ("", None)],
)
def test_parse_verdict(text, verdict):
    assert agents.parse_verdict(text) == verdict


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
    critic = Critic(backend, "votes", samples=8, temperature=1.1, threshold=0.5, seed=3)
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
    [r] = Critic(backend, "probs", threshold=0.5).judge([CONTEXT])
    assert set(backend.calls[0]["choices"]) == set(probs)
    assert r.score == pytest.approx(0.2 * -0.5 + 0.2 * 0.5 + 0.6 * 1.0)
    assert r.success


def test_critic_rejects_unknown_mode():
    with pytest.raises(ValueError, match="votes"):
        Critic(ScriptedBackend(), "median")


def test_sampled_votes_follow_the_tempered_label_distribution():
    probs = {"worse": 0.1, "same": 0.2, "better": 0.3, "solved": 0.4}
    assert agents.sampled_votes(probs, 5, 0.0, seed=1) == ["solved"] * 5  # T = 0: the most probable label
    draws = agents.sampled_votes(probs, 4000, 1.0, seed=2)
    shares = {k: draws.count(k) / len(draws) for k in probs}
    assert all(abs(shares[k] - p) < 0.03 for k, p in probs.items())
    hot = agents.sampled_votes(probs, 4000, 3.0, seed=2)  # high temperature flattens towards uniform
    assert hot.count("worse") / 4000 > shares["worse"] + 0.05
    assert agents.sampled_votes(probs, 10, 1.0, seed=3) == agents.sampled_votes(probs, 10, 1.0, seed=3)
    assert agents.sampled_votes(dict.fromkeys(probs, math.nan), 3, 1.0, seed=0) == []


def test_votes_on_the_hf_backend_name_a_label_every_time_and_reproduce(tiny_model_path):
    """A random tiny model names no label when it writes freely; its votes are drawn from its
    probabilities of the four labels instead, seeded per judgement."""
    from rlff_utils.backends import get_backend
    from rlff_utils.params import ModelRole

    backend = get_backend(ModelRole(name="tiny-random-smollm2", batch_size=4))
    other = {**CONTEXT, "situation": "My dog is ill.", "history": CONTEXT["history"][:3]}
    critic = Critic(backend, "votes", samples=12, temperature=1.1, threshold=0.5)
    first = critic.judge([CONTEXT, other], seeds=[5, 6])
    assert all(r.unparsed == 0 and sum(r.counts.values()) == 12 and math.isfinite(r.score) for r in first)
    assert [r.as_dict() for r in critic.judge([CONTEXT, other], seeds=[5, 6])] == [r.as_dict() for r in first]
    alone = critic.judge([other], seeds=[6])[0]  # a judgement depends on its own seed only
    assert alone.as_dict() == first[1].as_dict()
    many = [critic.judge([CONTEXT], seeds=[s])[0].counts for s in range(8)]
    assert len({tuple(c.values()) for c in many}) > 1  # other seeds, other votes
    free = backend.generate([agents.critic_messages(CONTEXT)], n=12, temperature=1.1, max_new_tokens=8, seed=5)[0]
    assert sum(agents.parse_critic_answer(a) is None for a in free) > 6  # what parse-and-count would have faced
