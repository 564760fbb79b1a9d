"""Prompt construction and reasoning stripping (the critic's own tests: test_critic.py)."""

from __future__ import annotations

import json

import pytest

from rlff_utils import agents
from rlff_utils.agents import critic_messages, policy_messages, seeker_messages
from rlff_utils.critic import CRITIC_LABELS
from rlff_utils.text import split_strategy, strip_reasoning, visible_reply
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
    path = agents.write_prompts(tmp_path / "stage" / "prompts.json", CRITIC_LABELS)
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
