"""Prompts and parsing for the agents of a simulated support conversation, and for the judge.

Four roles talk in a rollout: the ESC policy (writes the candidate reply, and in evaluation every
supporter turn), the ESC system model (writes later supporter turns in training rollouts), the user
simulator (plays the seeker) and the critic (judges, after each seeker turn, whether the seeker's
problem is solved). After evaluation a judge compares two systems' conversations per criterion.
All prompt text lives in :data:`PROMPTS` and :data:`JUDGE_CRITERIA` so a run can write exactly
what its agents were told (:func:`write_prompts`) and a reader can review it in one place.

Conversations are OpenAI-style message lists. A dialogue is stored from the dialogue's point of
view (``speaker: seeker|supporter``) and mapped onto chat roles per agent: the supporter is the
``assistant`` for the policy and the system model, the seeker is the ``assistant`` for the user
simulator. Consecutive turns of one speaker are merged, because several chat templates refuse two
messages of one role in a row and ESConv has such turns.

Only the *visible* reply (:func:`rlff_utils.text.visible_reply`) of a supporter ever reaches the user simulator or
the critic: explicit reasoning (``<think>...</think>``) and a strategy tag are the supporter's own.

The critic's question is here with the other prompts; the critic itself (its answers, their values
and every way of judging) is :mod:`rlff_utils.critic`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from .dialogues import STRATEGIES
from .runs import write_json
from .text import EMPTY_TURN, SEEKER, SUPPORTER, TRANSCRIPT_LINE, last_turns, strip_reasoning, transcript

PromptStyle = Literal["vanilla", "strategy", "reasoning"]

# --------------------------------------------------------------------------------------------
# Prompts: every word the agents are told, in one place
# --------------------------------------------------------------------------------------------

PROMPTS: dict[str, str] = {
    "supporter_role": (
        "You are an emotional supporter talking with a help seeker who feels {emotion_type} "
        "because of {problem_type}. The seeker's situation: {situation}\n"
        "Help the seeker feel understood, reduce their distress and work through the problem. "
        "Reply with one or two short, warm sentences, as in a chat."
    ),
    "supporter_strategy": (
        "Before replying, choose the one support strategy that fits best from this list: "
        "{strategies}. Start your reply with the chosen strategy in square brackets, "
        "for example: [{example_strategy}] your reply."
    ),
    "supporter_reasoning": (
        "Before replying, think about the seeker's feelings, what they need now and which support "
        "strategy fits ({strategies}). Write your thinking inside <think> and </think>, then write "
        "only your reply to the seeker after </think>."
    ),
    "seeker_role": (
        "You are a person seeking emotional support in a chat. You feel {emotion_type} because of "
        "{problem_type}. Your situation: {situation}\n"
        "Stay in this role: talk about your own feelings and problem, react honestly to what the "
        "supporter says, and reply with only one short sentence."
    ),
    "seeker_opening": "(The chat starts now. Say what is on your mind.)",
    "critic_system": "You judge whether a help seeker's emotional problem has been solved in a support conversation.",
    "critic_question": (
        "The seeker feels {emotion_type} because of {problem_type}.\n"
        "Conversation:\n{transcript}\n\n"
        "How does the seeker feel at the end, compared with the start: worse, same, better (but the "
        "problem is not solved) or solved (the problem has been solved)? Answer with one word."
    ),
    "transcript_line": TRANSCRIPT_LINE,
    "judge_system": "You compare two emotional-support conversations with the same help seeker and answer briefly.",
    "judge_question": (
        "The seeker's situation: {situation}\n\n"
        "Conversation A:\n{a}\n\nConversation B:\n{b}\n\n"
        "{question} Answer with exactly one of: A, B, tie."
    ),
}

# Who the simulated seeker is beyond the case's persona: one instruction per profile, added to the
# seeker's role prompt. LLM seekers are overly cooperative (a more diverse simulator exposes drops a
# cooperative one hides, arXiv 2601.07698), so the evaluation can run every system against seekers
# who make support hard, each modelled on a pattern counselling practice and the ESC literature name:
SEEKER_PROFILES: dict[str, str] = {
    # the paper's seeker: today's prompt unchanged (open, answers what is asked)
    "cooperative": "",
    # resistance to help, sceptical of the supporter's motives and of talking as a remedy
    "resistant": (
        "You doubt that talking to a stranger can help. Be sceptical: question the supporter's advice and "
        "motives, and do not accept reassurance easily."
    ),
    # minimal disclosure: shame or guardedness, short answers, the problem must be drawn out
    "minimal_disclosure": (
        "You find it hard to open up. Answer briefly and vaguely, and only share details when the supporter "
        "earns your trust."
    ),
    # rumination: repetitive, circular focus on the distress and its causes
    "ruminating": (
        "You keep going back to what went wrong and why. Repeat your worries in new words and find it hard to "
        "think about anything else."
    ),
    # the help-rejecting complainer ("yes, but"): asks for help, then finds fault with every suggestion
    "yes_but": (
        "You want help, but every suggestion seems wrong for you: answer suggestions with 'yes, but' and a "
        "reason why it would not work."
    ),
    # emotional escalation: distress rises when the seeker does not feel understood
    "escalating": (
        "Your feelings are intense and grow stronger when you feel misunderstood or rushed. Say so when a reply "
        "misses what you feel."
    ),
}

# The paper's human-evaluation criteria, as the judge's questions.
JUDGE_CRITERIA: dict[str, str] = {
    "fluency": "Which supporter's replies are more fluent and natural?",
    "empathy": "Which supporter shows more empathy and understanding of the seeker's feelings?",
    "identification": "Which supporter better explores and identifies the seeker's real problem?",
    "suggestion": "Which supporter gives more helpful, concrete suggestions?",
    "overall": "Which supporter gives better emotional support overall?",
}
CRITERIA = tuple(JUDGE_CRITERIA)


def write_prompts(path: str | Path, critic_labels: dict[str, float]) -> Path:
    """Write every prompt template, the judge's criteria and the critic's answer values
    (:data:`rlff_utils.critic.CRITIC_LABELS`) to ``path`` (a stage's ``RunLayout.prompts``)."""
    payload = {"templates": PROMPTS, "judge_criteria": JUDGE_CRITERIA, "critic_labels": critic_labels,
               "seeker_profiles": SEEKER_PROFILES, "strategies": STRATEGIES}
    return write_json(payload, path)


# --------------------------------------------------------------------------------------------
# Conversations per agent
# --------------------------------------------------------------------------------------------


def _fields(context: dict[str, Any]) -> dict[str, str]:
    return {
        "emotion_type": context.get("emotion_type") or "distressed",
        "problem_type": context.get("problem_type") or "a personal problem",
        "situation": context.get("situation") or "not described",
    }


def _turns(context: dict[str, Any], max_history_turns: int | None) -> list[dict[str, Any]]:
    return last_turns(context.get("history"), max_history_turns)


def _as_messages(turns: list[dict[str, Any]], assistant_speaker: str) -> list[dict[str, str]]:
    """Map dialogue turns onto chat roles, merging consecutive turns of one speaker."""
    out: list[dict[str, str]] = []
    for t in turns:
        role = "assistant" if t["speaker"] == assistant_speaker else "user"
        text = t["text"].strip() or EMPTY_TURN
        if out and out[-1]["role"] == role:
            out[-1]["content"] += "\n" + text
        else:
            out.append({"role": role, "content": text})
    return out


def policy_messages(
    context: dict[str, Any],
    style: PromptStyle = "vanilla",
    dataset: str = "esconv",
    max_history_turns: int = 12,
) -> list[dict[str, str]]:
    """The supporter's conversation: role prompt (+ strategy or reasoning instruction) and the
    dialogue so far with the seeker as ``user``; the model's next message is the supporter turn.

    ``vanilla``: the role prompt alone. ``strategy``: chain-of-strategy prompting, the reply
    starts with one of the dataset's strategies in brackets. ``reasoning``: ``<think>`` first,
    then the reply (the format the GRPO policy learns).
    """
    if style not in ("vanilla", "strategy", "reasoning"):
        raise ValueError(f"unknown prompt style {style!r}: use vanilla, strategy or reasoning")
    dataset = context.get("dataset") or dataset
    strategies = STRATEGIES.get(dataset, STRATEGIES["esconv"])
    system = PROMPTS["supporter_role"].format(**_fields(context))
    if style == "strategy":
        system += "\n" + PROMPTS["supporter_strategy"].format(
            strategies="; ".join(strategies), example_strategy=strategies[0]
        )
    elif style == "reasoning":
        system += "\n" + PROMPTS["supporter_reasoning"].format(strategies="; ".join(strategies))
    return [{"role": "system", "content": system}, *_as_messages(_turns(context, max_history_turns), SUPPORTER)]


def seeker_messages(context: dict[str, Any], max_history_turns: int = 12,
                    profile: str | None = None) -> list[dict[str, str]]:
    """The user simulator's conversation: persona prompt (plus the instruction of the seeker
    ``profile``, default the context's ``seeker_profile``, else cooperative) and the dialogue with
    the supporter as ``user``; the model's next message is the seeker's turn. Supporter turns must
    already be visible replies."""
    profile = profile or context.get("seeker_profile") or "cooperative"
    if profile not in SEEKER_PROFILES:
        raise ValueError(f"unknown seeker profile {profile!r}: one of {', '.join(SEEKER_PROFILES)}")
    messages = _as_messages(_turns(context, max_history_turns), SEEKER)
    if not messages or messages[0]["role"] == "assistant":
        messages.insert(0, {"role": "user", "content": PROMPTS["seeker_opening"]})
    system = PROMPTS["seeker_role"].format(**_fields(context))
    if SEEKER_PROFILES[profile]:
        system += "\n" + SEEKER_PROFILES[profile]
    return [{"role": "system", "content": system}, *messages]


def critic_messages(context: dict[str, Any], max_history_turns: int | None = None) -> list[dict[str, str]]:
    """The critic's conversation: the dialogue as a transcript inside one question."""
    question = PROMPTS["critic_question"].format(
        transcript=transcript(_turns(context, max_history_turns)), **_fields(context)
    )
    return [{"role": "system", "content": PROMPTS["critic_system"]}, {"role": "user", "content": question}]


def judge_messages(situation: str, a: str, b: str, criterion: str) -> list[dict[str, str]]:
    """The judge's conversation: two transcripts (A, B) of the same case and one criterion's question."""
    question = PROMPTS["judge_question"].format(situation=situation, a=a, b=b, question=JUDGE_CRITERIA[criterion])
    return [{"role": "system", "content": PROMPTS["judge_system"]}, {"role": "user", "content": question}]


_VERDICT = re.compile(r"\b(tie|a|b)\b", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from a judge's answer (first one named), None when it names none."""
    m = _VERDICT.search(strip_reasoning(text).replace("Conversation ", ""))
    if not m:
        return None
    v = m.group(1).lower()
    return "tie" if v == "tie" else v.upper()
