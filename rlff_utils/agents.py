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

Only the *visible* reply (:func:`visible_reply`) of a supporter ever reaches the user simulator or
the critic: explicit reasoning (``<think>...</think>``) and a strategy tag are the supporter's own.

Critic (PPDPP, Deng et al. 2023): the question "has the seeker's problem been solved?" with four
answers worse / same / better / solved valued -1 / -0.5 / 0.5 / 1. ``votes`` samples n answers
and averages the values of those that name a label (on the hf backend they are drawn from the
model's probabilities of the four labels, so every one names a label); ``probs`` reads the
probability of each answer from one scoring call and takes the expected value (no sampling noise).
When no sampled answer names a label the judgement carries no information: its score is NaN, it
never counts as success, and it is reported (``unparsed``) instead of being silently scored as
some label. ``learned`` replaces the question by a classifier trained on real seekers' outcomes
(:mod:`rlff_utils.reward.learned_critic`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .data import SEEKER, STRATEGIES, SUPPORTER
from .runs import write_json

if TYPE_CHECKING:  # pragma: no cover
    pass

PromptStyle = Literal["vanilla", "strategy", "reasoning"]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

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
    "transcript_line": "{speaker}: {text}",
    "judge_system": "You compare two emotional-support conversations with the same help seeker and answer briefly.",
    "judge_question": (
        "The seeker's situation: {situation}\n\n"
        "Conversation A:\n{a}\n\nConversation B:\n{b}\n\n"
        "{question} Answer with exactly one of: A, B, tie."
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

# Shown to the other agents in place of an empty turn (e.g. a reply cut off inside its reasoning).
EMPTY_TURN = "..."

SPEAKER_NAMES = {SEEKER: "Seeker", SUPPORTER: "Supporter"}

# PPDPP's answer values.
CRITIC_LABELS: dict[str, float] = {"worse": -1.0, "same": -0.5, "better": 0.5, "solved": 1.0}


def write_prompts(path: str | Path) -> Path:
    """Write every prompt template, the judge's criteria and the critic's answer values to
    ``path`` (a stage's ``RunLayout.prompts``)."""
    payload = {"templates": PROMPTS, "judge_criteria": JUDGE_CRITERIA, "critic_labels": CRITIC_LABELS,
               "strategies": STRATEGIES}
    return write_json(payload, path)


# --------------------------------------------------------------------------------------------
# Replies
# --------------------------------------------------------------------------------------------


def strip_reasoning(text: str) -> str:
    """The visible part of a reply: the text after the last ``</think>`` (all of it without one).

    An unclosed ``<think>`` means the reply never got past its reasoning (often a length cut):
    nothing of it is visible, so the result is empty rather than leaked reasoning.
    """
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1].strip()
    if THINK_OPEN in text:
        return ""
    return text.strip()


_STRATEGY_TAG = re.compile(r"^\s*\[[^\]\n]{1,60}\]\s*")


def split_strategy(text: str) -> tuple[str | None, str]:
    """(strategy, rest) for a reply starting with a ``[Strategy]`` tag, else (None, text)."""
    m = _STRATEGY_TAG.match(text)
    if not m:
        return None, text
    return m.group(0).strip()[1:-1].strip(), text[m.end():]


def visible_reply(text: str) -> str:
    """What the seeker sees of a supporter's raw output: reasoning and strategy tag removed."""
    return split_strategy(strip_reasoning(text))[1].strip()


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
    turns = list(context.get("history") or [])
    if max_history_turns is not None and len(turns) > max_history_turns:
        turns = turns[-max_history_turns:]
    return turns


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


def seeker_messages(context: dict[str, Any], max_history_turns: int = 12) -> list[dict[str, str]]:
    """The user simulator's conversation: persona prompt and the dialogue with the supporter as
    ``user``; the model's next message is the seeker's turn. Supporter turns must already be
    visible replies."""
    messages = _as_messages(_turns(context, max_history_turns), SEEKER)
    if not messages or messages[0]["role"] == "assistant":
        messages.insert(0, {"role": "user", "content": PROMPTS["seeker_opening"]})
    return [{"role": "system", "content": PROMPTS["seeker_role"].format(**_fields(context))}, *messages]


def transcript(turns: list[dict[str, Any]]) -> str:
    """Dialogue turns as the agents read them, one ``Speaker: text`` line per turn (visible text
    only; an empty turn shows as ``...``)."""
    return "\n".join(
        PROMPTS["transcript_line"].format(speaker=SPEAKER_NAMES[t["speaker"]], text=t["text"].strip() or EMPTY_TURN)
        for t in turns
    )


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


# --------------------------------------------------------------------------------------------
# Critic
# --------------------------------------------------------------------------------------------

_LABEL_RE = re.compile(r"\b(worse|same|better|solved)\b", re.IGNORECASE)
_NEGATED_SOLVED = re.compile(r"(\bnot|n't|\bnever)(\s+\w+){0,2}\s*$", re.IGNORECASE)


def parse_critic_answer(text: str) -> str | None:
    """The label an answer names first, or None. "not (yet) solved" does not name `solved`."""
    text = strip_reasoning(text)
    for m in _LABEL_RE.finditer(text):
        label = m.group(1).lower()
        if label == "solved" and _NEGATED_SOLVED.search(text[max(0, m.start() - 30): m.start()]):
            continue
        return label
    return None


@dataclass
class CriticResult:
    """One judgement. ``score`` is NaN when no answer named a label (see the module docstring)."""

    score: float
    success: bool
    counts: dict[str, int] = field(default_factory=dict)
    unparsed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def votes_result(answers: list[str], threshold: float) -> CriticResult:
    """Mean label value over the answers that name a label; NaN (not success) if none does."""
    labels = [parse_critic_answer(a) for a in answers]
    counts = Counter(label for label in labels if label)
    unparsed = sum(label is None for label in labels)
    parsed = sum(counts.values())
    if not parsed:
        return CriticResult(math.nan, False, {k: 0 for k in CRITIC_LABELS}, unparsed)
    score = sum(CRITIC_LABELS[k] * v for k, v in counts.items()) / parsed
    return CriticResult(score, score > threshold, {k: counts.get(k, 0) for k in CRITIC_LABELS}, unparsed)


# Surface forms scored per label in `probs` mode; their probabilities are summed per label, so a
# model that prefers "Better" to "better" is read the same way.
CHOICE_FORMS: dict[str, tuple[str, ...]] = {k: (k, k.capitalize()) for k in CRITIC_LABELS}


def probs_result(probabilities: dict[str, float], threshold: float) -> CriticResult:
    """Expected label value under the (renormalised) label probabilities."""
    total = sum(probabilities.values())
    if not total or not math.isfinite(total):
        return CriticResult(math.nan, False, {k: 0 for k in CRITIC_LABELS}, 1)
    score = sum(CRITIC_LABELS[k] * p / total for k, p in probabilities.items())
    top = max(probabilities, key=probabilities.get)
    return CriticResult(score, score > threshold, {k: int(k == top) for k in CRITIC_LABELS}, 0)


def _samples_label_distribution(backend: Any) -> bool:
    """Votes on this backend are drawn from its probabilities of the four labels (the in-process
    hf backend, which has no constrained decoding); vLLM constrains sampling itself (guided
    choice) and an API endpoint is parsed and counted."""
    from .backends import HFBackend

    return isinstance(backend, HFBackend)


def label_distribution(scores: list[float], forms: list[tuple[str, str]]) -> dict[str, float]:
    """Probability per label from ``score_choices`` over the surface forms (summed per label)."""
    probs = dict.fromkeys(CRITIC_LABELS, 0.0)
    for (label, _), p in zip(forms, scores):
        probs[label] += p
    return probs


def sampled_votes(probabilities: dict[str, float], n: int, temperature: float, seed: int) -> list[str]:
    """``n`` labels drawn from the label distribution tempered by ``temperature`` (p^(1/T),
    renormalised; 0: the most probable label every time), by a generator of this judgement's
    own ``seed``. Empty when the distribution is undefined."""
    import numpy as np

    labels = list(probabilities)
    p = np.asarray([probabilities[k] for k in labels], dtype=float)
    if not np.isfinite(p).all() or p.sum() <= 0:
        return []
    if temperature <= 0:
        return [labels[int(p.argmax())]] * n
    logp = np.log(np.clip(p / p.sum(), 1e-300, None)) / temperature
    q = np.exp(logp - logp.max())
    rng = np.random.default_rng(seed)
    return [labels[i] for i in rng.choice(len(labels), size=n, p=q / q.sum())]


def learned_result(score: float, threshold: float) -> CriticResult:
    """A learned critic's judgement: ``score`` = 2·P(helped) − 1; counts one-hot of its class."""
    if not math.isfinite(score):
        return CriticResult(math.nan, False, {}, 1)
    return CriticResult(float(score), score > threshold, {"helped": int(score >= 0), "not helped": int(score < 0)}, 0)


class Critic:
    """PPDPP's critic over any :class:`~rlff_utils.backends.ChatBackend`.

    ``mode="votes"``: ``samples`` answers at ``temperature``, mean label value. On the hf backend
    the answers are drawn from the model's probabilities of the four labels (one
    ``score_choices`` call, tempered by ``temperature``, seeded per judgement), so none is
    unparsable; vLLM samples under guided choice; an API endpoint's free answers are parsed and
    the unparsable ones counted.
    ``mode="probs"``: one ``score_choices`` call, expected value (deterministic).
    ``mode="rule"``: no model; the planted rule of :mod:`rlff_utils.planted` on the rollout's
    supporter turns (a positive control, see ``params/planted.yaml``).
    ``mode="learned"``: ``backend`` is a :class:`rlff_utils.reward.learned_critic.LearnedCritic`,
    a classifier trained on real seekers' outcomes; score 2·P(helped) − 1.
    ``counts`` in a result are label votes (votes) or a one-hot of the chosen label (probs, rule,
    learned).
    """

    MODES = ("votes", "probs", "rule", "learned")

    def __init__(
        self,
        backend: Any,
        mode: str,
        samples: int = 10,
        temperature: float = 1.1,
        threshold: float = 0.5,
        seed: int = 0,
        max_history_turns: int | None = None,
        max_new_tokens: int = 8,
    ):
        if mode not in self.MODES:
            raise ValueError(f"critic mode must be one of {', '.join(map(repr, self.MODES))}, not {mode!r}")
        self.backend, self.mode, self.samples = backend, mode, samples
        self.temperature, self.threshold, self.seed = temperature, threshold, seed
        self.max_history_turns, self.max_new_tokens = max_history_turns, max_new_tokens
        self._calls = 0

    @classmethod
    def for_stage(cls, params: Any, stage: Literal["simulation", "evaluation"], backend: Any = None,
                  max_history_turns: int | None = None, mode: str | None = None) -> "Critic":
        """The critic a stage's params configure: ``models.critic`` with ``simulation.critic_*``
        or ``models.eval_critic`` with ``evaluation.critic_*``; in ``learned`` mode the run's
        learned critic (trained in notebook 03). ``backend``: an already loaded one for the role.
        ``mode``: another mode than the stage's ``critic_mode`` (the evaluation's contrast critic)."""
        s = params.simulation if stage == "simulation" else params.evaluation
        mode = mode or s.critic_mode
        if mode == "learned":
            from .reward.learned_critic import load_learned_critic

            backend = load_learned_critic(params)
        elif backend is None:
            from .backends import get_backend

            backend = get_backend(params.models.critic if stage == "simulation" else params.models.eval_critic,
                                  seed=params.seed)
        return cls(backend, mode, s.critic_samples, s.critic_temperature, s.success_threshold,
                   seed=params.seed, max_history_turns=max_history_turns)

    def judge(self, contexts: list[dict[str, Any]], seed: int | None = None,
              seeds: list[int] | None = None) -> list[CriticResult]:
        """One result per context (``history`` = the dialogue so far). The votes' sampling is
        seeded per context by ``seeds`` (one each: a judgement then does not depend on the other
        contexts of the call), else by ``seed`` (+ the context's index), by default a fresh,
        reproducible seed per call."""
        if not contexts:
            return []
        if self.mode == "rule":
            return [self._rule(c) for c in contexts]
        if self.mode == "learned":
            histories = [_turns(c, self.max_history_turns) for c in contexts]
            return [learned_result(float(s), self.threshold) for s in self.backend.score_states(histories)]
        conversations = [critic_messages(c, self.max_history_turns) for c in contexts]
        if seed is None and seeds is None:
            seed = self.seed + 7919 * self._calls
        self._calls += 1
        forms = [(label, form) for label, fs in CHOICE_FORMS.items() for form in fs]
        if self.mode == "votes" and _samples_label_distribution(self.backend):
            if seeds is None:
                seeds = [seed + i for i in range(len(contexts))]
            rows = self.backend.score_choices(conversations, [form for _, form in forms])
            return [votes_result(sampled_votes(label_distribution(row, forms), self.samples, self.temperature, s) or
                                 [""] * self.samples, self.threshold)
                    for row, s in zip(rows, seeds)]
        if self.mode == "votes":
            answers = self.backend.generate(
                conversations,
                n=self.samples,
                temperature=self.temperature,
                max_new_tokens=self.max_new_tokens,
                seed=seed,
                seeds=seeds,
                guided_choice=list(CRITIC_LABELS),
            )
            return [votes_result(a, self.threshold) for a in answers]
        scores = self.backend.score_choices(conversations, [form for _, form in forms])
        return [probs_result(label_distribution(row, forms), self.threshold) for row in scores]

    def _rule(self, context: dict[str, Any]) -> CriticResult:
        from .planted import rule_label

        if "rollout" not in context:
            raise ValueError("critic mode 'rule' judges rollouts: the context has no 'rollout' turns")
        label = rule_label([t["text"] for t in context["rollout"] if t["speaker"] == SUPPORTER])
        score = CRITIC_LABELS[label]
        return CriticResult(score, score > self.threshold, {k: int(k == label) for k in CRITIC_LABELS}, 0)
