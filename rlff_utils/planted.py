"""The planted signal: a deterministic rule critic whose verdict the policy can learn to earn.

A positive control for the whole method. With ``critic_mode: rule`` the critic's verdict is not
an LLM's opinion but a documented function of the supporter's replies, so a run can check that a
known reward flows from the simulation through the reward model and GRPO to the evaluation (and a
run with ``grpo.reward_model: random`` that it does not when the signal is cut).

The rule (why: asking the seeker how they feel is the most basic support skill in ESConv — the
"Question" strategy — it is visible in one reply, and a small model produces it sometimes but not
always, so there is room to learn):

* a reply **asks about feelings** when it contains a question (``?``) and a feeling word
  (feel, feeling, felt, emotion, upset, sad, worried, anxious, ...) in the same sentence;
* a reply **advises** when it contains advice words (you should, try to, I suggest, recommend,
  have you tried, why don't you, make sure, ...) and no question.

After each supporter turn the seeker's state is judged on the whole rollout so far:

* the *first* supporter turn (the candidate) asks about feelings → ``solved`` (goal reached);
* any later turn asks about feelings → ``better``;
* advice given before any question in the rollout → ``worse``;
* otherwise → ``same``.

So a candidate that asks about feelings reaches the goal at turn 1 (R_fut = 1 + λ(T−1)/T), one that
advises first ends at −1, and the rest land in between depending on the later turns: the label
R_fut ≥ δ is, up to the later turns, "the candidate asked about the seeker's feelings".
"""

from __future__ import annotations

import re
from typing import Any, Sequence

FEELING_WORDS = (
    "feel", "feeling", "feelings", "felt", "emotion", "emotions", "emotional", "upset", "sad", "worried",
    "anxious", "stressed", "hurt", "lonely", "scared", "afraid", "angry", "overwhelmed", "frustrated", "mood",
)
ADVICE_PATTERNS = (
    r"\byou should\b", r"\byou could\b", r"\btry to\b", r"\btry (?:and|some|a|to)\b", r"\bi suggest\b",
    r"\bi recommend\b", r"\brecommend\b", r"\bhave you tried\b", r"\bwhy don'?t you\b", r"\bmake sure\b",
    r"\byou need to\b", r"\bit'?s important to\b", r"\bconsider\b",
)
_FEELING = re.compile(r"\b(" + "|".join(FEELING_WORDS) + r")\b", re.IGNORECASE)
_ADVICE = re.compile("|".join(ADVICE_PATTERNS), re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?]*[.!?]?")


def asks_about_feelings(reply: str) -> bool:
    """A question sentence that names a feeling."""
    for sentence in _SENTENCE.findall(reply or ""):
        if sentence.strip().endswith("?") and _FEELING.search(sentence):
            return True
    return False


def gives_advice(reply: str) -> bool:
    return bool(_ADVICE.search(reply or "")) and "?" not in (reply or "")


def rule_label(supporter_turns: Sequence[str]) -> str:
    """The verdict after the last of the rollout's supporter turns (see the module docstring)."""
    if not supporter_turns:
        return "same"
    if asks_about_feelings(supporter_turns[0]):
        return "solved"
    if len(supporter_turns) > 1 and asks_about_feelings(supporter_turns[-1]):
        return "better"
    for reply in supporter_turns:
        if "?" in reply:
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
    """Share of the policy's replies that ask about feelings, before (base policy) and after GRPO
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
    per_prompt = {k: [float(np.mean([asks_about_feelings(x) for x in row])) for row in v] for k, v in replies.items()}
    diff = lambda a, b: (a - b).mean(axis=1)  # noqa: E731
    result = {
        "rule": "asks about feelings (rlff_utils.planted.asks_about_feelings)",
        "prompts": len(cases), "samples_per_prompt": samples, "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_completion_length, "prompt_style": "reasoning",
        "before": float(np.mean(per_prompt["before"])), "after": float(np.mean(per_prompt["after"])),
        "difference": float(np.mean(per_prompt["after"]) - np.mean(per_prompt["before"])),
        "difference_ci95": bootstrap_ci(per_prompt["after"], per_prompt["before"], stat=diff, seed=params.seed),
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
    stratified bootstrap 95% intervals (trained classification head and its untrained ``random``
    start), the compliance before/after GRPO with the paired interval, and the main system's
    paired SR difference to each baseline under the deciding critic and the contrast critic."""
    from pathlib import Path

    import pandas as pd
    import yaml

    from .runs import RunLayout, read_json
    from .validity import auc_with_ci

    run = Path(run)
    lay = RunLayout(run)
    params = yaml.safe_load(lay.resolved_params.read_text(encoding="utf-8")) if lay.resolved_params.is_file() else {}
    if (params or {}).get("purpose") != "planted":
        return None
    out: dict[str, Any] = {"run": run.name, "grpo_reward_model": params.get("grpo", {}).get("reward_model")}
    for variant in ("classification", "random"):
        if lay.rm_predictions(variant).is_file():
            pred = pd.read_csv(lay.rm_predictions(variant))
            auc, ci, _ = auc_with_ci(pred.score[pred.label == 1].tolist(), pred.score[pred.label == 0].tolist(),
                                     seed=params.get("seed", 0))
            out.update({f"rm_{variant}_auc": auc, f"rm_{variant}_auc_lo": ci[0], f"rm_{variant}_auc_hi": ci[1],
                        "rm_test_candidates": len(pred)})
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
