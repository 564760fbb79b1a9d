"""The planted-signal experiment: a positive control for the whole method.

With ``simulation.critic_mode: rule`` (``params/planted.yaml``) the critic is a documented rule,
:mod:`rlff_utils.critic.rule`: a candidate that acknowledges the seeker's feelings reaches the goal
at once. A run can then check that this known reward flows from the simulation through the reward
model and GRPO to the evaluation, and a run with ``grpo.reward_model: random`` (its negative
control) that it does not when the signal is cut; ``grpo.reward_model: rule``
(:class:`rlff_utils.rewards.RuleReward`) is the oracle arm.

This module is the experiment's own step: did the policy learn the rule
(:func:`compliance_before_after`, notebook 04)? The run's figures side by side are
:func:`rlff_utils.analysis.planted_summary` (notebook 06).
"""

from __future__ import annotations

from typing import Any

from . import runs
from .agents import policy_messages
from .backends import get_backend
from .critic.rule import acknowledges_feelings
from .data import load_eval_cases
from .sampling import derive_seed
from .stats import bootstrap_ci
from .text import visible_reply


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
        "rule": "acknowledges feelings (rlff_utils.critic.rule.acknowledges_feelings)",
        "prompts": len(cases), "samples_per_prompt": samples, "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_completion_length, "prompt_style": "reasoning",
        "before": float(np.mean(per_prompt["before"])), "after": float(np.mean(per_prompt["after"])),
        "difference": float(np.mean(per_prompt["after"]) - np.mean(per_prompt["before"])),
        "difference_ci95": bootstrap_ci(per_prompt["after"], per_prompt["before"], stat=diff, seed=params.seed),
        "before_ci95": bootstrap_ci(per_prompt["before"], seed=params.seed),
        "after_ci95": bootstrap_ci(per_prompt["after"], seed=params.seed),
        # per prompt (the share of its samples that acknowledge feelings): what a sweep pools across
        # seeds (sweep_analysis.compliance_table resamples seeds, then prompts)
        "per_prompt": [{"case_id": str(c["case_id"]), "before": b, "after": a}
                       for c, b, a in zip(cases, per_prompt["before"], per_prompt["after"])],
        "examples": [{"case_id": c["case_id"], "before": b[0], "after": a[0]}
                     for c, b, a in list(zip(cases, replies["before"], replies["after"]))[:3]],
    }
    runs.write_json(result, lay.planted_compliance)
    return result
