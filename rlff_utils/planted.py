"""The planted signal: a deterministic rule critic whose verdict the policy can learn to earn.

A positive control for the whole method. With ``critic_mode: rule`` the critic's verdict is not
an LLM's opinion but a documented function of the supporter's replies, so a run can check that a
known reward flows from the simulation through the reward model and GRPO to the evaluation (and a
run with ``grpo.reward_model: random`` that it does not when the signal is cut).

The rule (why: acknowledging what the seeker feels — ESConv's "Reflection of feelings", or naming
how hard the situation is — is the most basic support skill, it is visible in one reply, and
SmolLM2-135M does it sometimes but not always: measured on the 96 candidates of a first planted
simulation, 28 (29%) acknowledge a feeling, so a group of G = 4 answers usually holds both
kinds and there is room to learn. A first version rewarded *asking* about feelings — a question and
a feeling word in one sentence — which SmolLM2 wrote in 0 of those 96 replies: no signal to plant):

* a reply **acknowledges feelings** when it names an emotion or the weight of the situation
  (:data:`FEELING_WORDS`: feel, upset, sad, worried, anxious, overwhelmed, hard, difficult, sorry, ...);
* a reply **advises** when it contains advice words (you should, try to, I suggest, recommend,
  have you tried, why don't you, make sure, ...) and no question.

After each supporter turn the seeker's state is judged on the whole rollout so far:

* the *first* supporter turn (the candidate) acknowledges feelings → ``solved`` (goal reached);
* a later turn acknowledges feelings → ``better``;
* advice given before any acknowledgement in the rollout → ``worse``;
* otherwise → ``same``.

So a candidate that acknowledges feelings reaches the goal at turn 1 (R_fut = 1 + λ(T−1)/T); every
other candidate ends below 1 (``better`` at most), so the label R_fut ≥ 1 is exactly "the candidate
acknowledged the seeker's feelings".
"""

from __future__ import annotations

import re
from typing import Any, Sequence

FEELING_WORDS = (
    "feel", "feels", "feeling", "feelings", "felt", "emotion", "emotions", "emotional", "upset", "sad", "sadness",
    "worried", "worry", "anxious", "anxiety", "stress", "stressed", "stressful", "hurt", "hurting", "lonely",
    "scared", "afraid", "angry", "overwhelmed", "overwhelming", "frustrated", "frustrating", "depressed",
    "heartbroken", "grief", "painful", "hard", "difficult", "tough", "sorry",
)
ADVICE_PATTERNS = (
    r"\byou should\b", r"\byou could\b", r"\btry to\b", r"\btry (?:and|some|a|to)\b", r"\bi suggest\b",
    r"\bi recommend\b", r"\brecommend\b", r"\bhave you tried\b", r"\bwhy don'?t you\b", r"\bmake sure\b",
    r"\byou need to\b", r"\bit'?s important to\b", r"\bconsider\b",
)
_FEELING = re.compile(r"\b(" + "|".join(FEELING_WORDS) + r")\b", re.IGNORECASE)
_ADVICE = re.compile("|".join(ADVICE_PATTERNS), re.IGNORECASE)


def acknowledges_feelings(reply: str) -> bool:
    """The reply names an emotion or the weight of the situation (a word of :data:`FEELING_WORDS`)."""
    return bool(_FEELING.search(reply or ""))


def gives_advice(reply: str) -> bool:
    return bool(_ADVICE.search(reply or "")) and "?" not in (reply or "")


def rule_label(supporter_turns: Sequence[str]) -> str:
    """The verdict after the last of the rollout's supporter turns (see the module docstring)."""
    if not supporter_turns:
        return "same"
    if acknowledges_feelings(supporter_turns[0]):
        return "solved"
    if len(supporter_turns) > 1 and acknowledges_feelings(supporter_turns[-1]):
        return "better"
    for reply in supporter_turns:
        if acknowledges_feelings(reply):
            break
        if gives_advice(reply):
            return "worse"
    return "same"


def rollout_supporter_turns(context: dict[str, Any], rollout_start: int) -> list[str]:
    """The supporter turns written after the real history (``history[rollout_start:]``)."""
    return [t["text"] for t in context["history"][rollout_start:] if t["speaker"] == "supporter"]


# --------------------------------------------------------------------------------------------
# Did the policy learn the rule? Before vs after GRPO on held-out prompts
# --------------------------------------------------------------------------------------------


def compliance_before_after(params, prompts: int = 16, samples: int = 4) -> dict[str, Any]:
    """Share of the policy's replies that acknowledge feelings, before (base policy) and after GRPO
    (base + this run's adapter), on held-out prompts (the evaluation cases' openings, never
    trained on) in the prompt style GRPO trains, with the same sampling seed per (prompt, sample)
    for both; the difference carries a paired bootstrap 95% interval over prompts. Written to the
    policy stage folder."""
    import numpy as np

    from . import runs
    from .agents import policy_messages, visible_reply
    from .backends import get_backend
    from .data import load_eval_cases
    from .rollout import derive_seed
    from .stats import bootstrap_ci

    lay = runs.layout(params)
    if not (lay.adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no trained adapter in {lay.adapter}: run notebook 04 first")
    cases = load_eval_cases(params)[:prompts]
    cfg = params.grpo.config
    role = params.models.policy.model_copy(update={"temperature": cfg.temperature,
                                                   "max_new_tokens": cfg.max_completion_length})
    convs = [policy_messages(c, "reasoning", max_history_turns=params.data.max_history_turns) for c in cases]
    seeds = [derive_seed(params.seed, "planted-compliance", c["case_id"]) for c in cases]
    replies = {}
    for name, adapter in (("before", None), ("after", str(lay.adapter))):
        backend = get_backend(role, adapter=adapter, seed=params.seed)
        out = backend.generate(convs, n=samples, seeds=seeds)
        replies[name] = [[visible_reply(x) for x in row] for row in out]
    per_prompt = {k: [float(np.mean([acknowledges_feelings(x) for x in row])) for row in v] for k, v in replies.items()}
    diff = lambda a, b: (a - b).mean(axis=1)  # noqa: E731
    result = {
        "rule": "acknowledges feelings (rlff_utils.planted.acknowledges_feelings)",
        "prompts": len(cases), "samples_per_prompt": samples, "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_completion_length, "prompt_style": "reasoning",
        "before": float(np.mean(per_prompt["before"])), "after": float(np.mean(per_prompt["after"])),
        "difference": float(np.mean(per_prompt["after"]) - np.mean(per_prompt["before"])),
        "difference_ci95": bootstrap_ci(per_prompt["after"], per_prompt["before"], stat=diff, seed=params.seed),
        "before_ci95": bootstrap_ci(per_prompt["before"], seed=params.seed),
        "after_ci95": bootstrap_ci(per_prompt["after"], seed=params.seed),
        "examples": [{"case_id": c["case_id"], "before": b[0], "after": a[0]}
                     for c, b, a in list(zip(cases, replies["before"], replies["after"]))[:3]],
    }
    runs.write_json(result, lay.planted_compliance)
    return result


# --------------------------------------------------------------------------------------------
# A planted run's figures, read back from its folder (notebook 06 compares the positive run
# with its negative control)
# --------------------------------------------------------------------------------------------


def planted_summary(run) -> dict[str, Any] | None:
    """The figures the planted-signal check asks for, from the files a planted run wrote (None
    for another kind of run): the reward models' held-out ROC-AUC against the planted label with
    95% intervals that resample the test contexts, whose candidates share a seeker turn (trained
    classification head and its untrained ``random`` start), the compliance before/after GRPO with
    the paired interval, and the main system's paired SR difference to each baseline under the
    deciding critic and the contrast critic."""
    from pathlib import Path

    import pandas as pd
    import yaml

    from .runs import RunLayout, read_json
    from .validity import clustered_auc_ci

    run = Path(run)
    lay = RunLayout(run)
    params = yaml.safe_load(lay.resolved_params.read_text(encoding="utf-8")) if lay.resolved_params.is_file() else {}
    if (params or {}).get("purpose") != "planted":
        return None
    out: dict[str, Any] = {"run": run.name, "grpo_reward_model": params.get("grpo", {}).get("reward_model")}
    for variant in ("classification", "random"):
        if lay.rm_predictions(variant).is_file():
            pred = pd.read_csv(lay.rm_predictions(variant))
            auc, ci, contexts = clustered_auc_ci(pred.score.tolist(), pred.label.tolist(), pred.context_id.tolist(),
                                                 seed=params.get("seed", 0))
            out.update({f"rm_{variant}_auc": auc, f"rm_{variant}_auc_lo": ci[0], f"rm_{variant}_auc_hi": ci[1],
                        "rm_test_candidates": len(pred), "rm_test_contexts": contexts})
    c = read_json(lay.planted_compliance, default=None)
    if c:
        out.update({"compliance_before": c["before"], "compliance_after": c["after"], "compliance_diff": c["difference"],
                    "compliance_diff_lo": c["difference_ci95"][0], "compliance_diff_hi": c["difference_ci95"][1],
                    "compliance_prompts": c["prompts"], "compliance_samples": c["samples_per_prompt"]})
    for metrics_file in lay.all_system_metrics():
        m = read_json(metrics_file)
        for critic, block in (("rule", m), ("contrast", m.get("contrast_critic") or {})):
            for baseline, d in (block.get("paired_vs") or {}).items():
                ci = d.get("SR_diff_ci95") or [None, None]
                key = f"sr_diff_{critic}_{metrics_file.parent.name}_vs_{baseline}"
                out.update({key: d.get("SR_diff"), f"{key}_lo": ci[0], f"{key}_hi": ci[1], "eval_cases": d.get("cases")})
    return out


# --------------------------------------------------------------------------------------------
# The rule as GRPO's reward (``grpo.reward_model: rule``): the oracle arm of the planted run
# --------------------------------------------------------------------------------------------


class RuleReward:
    """GRPO's reward straight from the planted rule (1.0 when the completion acknowledges the
    seeker's feelings, else 0.0), in TRL's reward-function signature: the reward a perfect reward
    model would give. It separates the two halves of the machinery: GRPO + LoRA + evaluation
    learning a planted reward, and the reward model learning it from the simulation."""

    __name__ = "future_reward"  # the same curve name as the reward model's

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        from .reward.scorer import completion_text

        if completions is None:
            raise ValueError("the rule reward needs `completions`")
        return [float(acknowledges_feelings(completion_text(c))) for c in completions]

    def score(self, histories, replies) -> list[float]:
        """The scorer interface (``RewardScorer.score``), for the validity card."""
        return [float(acknowledges_feelings(r)) for r in replies]
