# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · GRPO training of the policy
#
# The last training stage of RLFF-ESC fine-tunes the emotional-support policy $\pi_\theta$ (LoRA on the
# policy model) with **Group Relative Policy Optimization**. For every training context $q$ the policy
# samples a group of $G$ answers $o_1,\dots,o_G$ (temperature 1.1 in the paper); each answer gets
#
# $$R(o_i) = R_\text{fut}(q, o_i) + \alpha\, R_\text{format}(o_i)$$
#
# * $R_\text{fut}$: the **future-oriented reward model** trained in notebook 03: how likely this reply is to
#   lead the simulated conversation to a good, quick resolution.
# * $R_\text{format} = 1$ when the answer first reasons in exactly one `<think>…</think>` block (non-empty)
#   and then gives a non-empty reply to the seeker, else 0 (paper: $\alpha = 0.5$).
#
# GRPO needs no value network: the group is its own baseline,
# $\hat A_i = \big(R(o_i) - \operatorname{mean}_j R(o_j)\big) / \operatorname{std}_j R(o_j)$, and the policy
# maximises the clipped objective with a KL penalty to the initial policy,
#
# $$\mathcal J(\theta) = \frac1G\sum_i \frac1{|o_i|}\sum_t \Big[\min\big(r_{i,t}\hat A_i,\
# \operatorname{clip}(r_{i,t}, 1\pm\epsilon)\hat A_i\big) - \beta\, \mathbb D_\text{KL}\big(\pi_\theta \,\|\, \pi_\text{ref}\big)\Big],
# \qquad r_{i,t} = \frac{\pi_\theta(o_{i,t}\mid q, o_{i,<t})}{\pi_{\theta_\text{old}}(o_{i,t}\mid q, o_{i,<t})}.$$
#
# TRL's `GRPOTrainer` runs this loop; its defaults ($\beta = 0$, `loss_type="dapo"`) are not the
# original GRPO, so the params set `beta` and `loss_type` explicitly and the run's protocol records them.
# Groups in which all $G$ answers get the same reward carry no signal (`frac_reward_zero_std`).

# %% tags=["parameters"]
# The run: a params file (its relative paths start at the project root) and overrides as dotted
# keys, like the command line's --set, e.g. {"simulation.num_candidates": 2, "run_name": "smoke-m2"}.
# Give changed settings a new run_name: stages already run with other settings refuse to mix.
params_file = "../params/smoke.yaml"
overrides = {}

# %%
from IPython.display import display
import pandas as pd

import warnings

from rlff_utils import analysis, grpo, runs
from rlff_utils.data import load_contexts
from rlff_utils.params import load_notebook_params
from rlff_utils.plots import plot_grpo_curves
from rlff_utils.report import shown_path

params = load_notebook_params(params_file, overrides)
layout = runs.layout(params)
print(f"run {params.run_name!r}: writes {shown_path(layout.stage(runs.POLICY), params)}/")

# %% [markdown]
# ## The setting
#
# Every knob comes from the params file: the project's own in `grpo:`, TRL's in `grpo.trainer:` (any
# `GRPOConfig` field, merged over the project's defaults). Ablations are switches there:
# `format_reward: false` (R = R_fut; the format reward is still computed with weight 0 so compliance stays
# comparable), `reward_model: random` (an untrained reward head) or `reward_model: ranking`.

# %%
card = grpo.protocol(params)
display(analysis.display_table(analysis.fields_table(card["objective"], value="objective")))
analysis.display_table(analysis.fields_table(
    {**params.grpo.model_dump(exclude={"trainer"}), **params.grpo.args}, value="setting",
    missing={"num_train_prompts": "every context", "accelerate_config": "one process, no accelerate"}))

# %% [markdown]
# ## The prompts
#
# Each training context becomes a conversational prompt: a system prompt asking for the reasoning in
# `<think>…</think>` and then the reply, followed by the dialogue so far (oldest turns dropped until it fits
# `max_prompt_length`). The dialogue history also travels as a column, because the reward model scores the
# reply in its context.

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    prompts = grpo.build_prompt_dataset(params)
built = len(load_contexts(params))
print(f"{len(prompts)} training prompts from the {built} contexts of notebook 01"
      + (f" (grpo.num_train_prompts: {params.grpo.num_train_prompts})" if params.grpo.num_train_prompts else ""))
for w in caught:  # prompts left out change what GRPO trains on: said here, not only in the log
    print(f"note: {w.message}")
print("The first prompt:")
for m in prompts[0]["prompt"]:
    print(f"[{m['role']}] {m['content']}\n")

# %% [markdown]
# ## Train
#
# One process: the trainer runs here, with a progress line (rewards, seconds per step, ETA) per logging
# step. With `grpo.num_processes > 1` this cell launches `accelerate launch --config_file
# configs/accelerate/zero2.yaml -m rlff_utils.grpo --params …` as a subprocess and prints the command.
# Checkpoints go to `policy/checkpoints/`: re-running this cell resumes from the last one, and a finished run
# (adapter saved) is skipped unless `grpo.run_grpo(params, force=True)`.

# %%
result = grpo.run_grpo(params)
print(f"adapter: {shown_path(result.adapter_dir, params)} (step {result.global_step}"
      + (f", {result.seconds:.0f} s)" if result.seconds else ", already trained)"))

# %% [markdown]
# ## Training curves
#
# From the trainer's log history: the total reward and $R_\text{fut}$ (band: ±1 std over the step's
# completions; a smoothed line on long runs), the share of well-formed answers, the share of groups without
# reward variance, the KL to the initial policy, the policy's token entropy, the completion length and the
# share of completions cut at `max_completion_length`. A panel that stays constant says so.

# %%
curves = grpo.curves_frame(result.log_history)
fig = plot_grpo_curves(curves, runs.layout(params).grpo_curves_png)
analysis.display_table(curves)

# %% [markdown]
# ## Before and after
#
# The same prompts answered by the initial policy (adapter disabled) and by the trained one, with the same
# sampling seed, with each answer's format reward and future-oriented reward. After only a handful of steps
# (the smoke run) the adapter has barely moved (see the KL curve) and both columns can read the same; they
# part as training proceeds.

# %%
samples = grpo.sample_before_after(params, n=3)
analysis.display_table(samples)

# %% [markdown]
# ## Planted-signal check (planted runs only)
#
# In a planted run (`params/planted.yaml`) the critic is a known rule: acknowledging the seeker's
# feelings solves the conversation. If the signal flows through the reward model into GRPO, the trained
# policy acknowledges feelings more often than the base policy on prompts it never trained on (the
# evaluation cases' openings), with the same sampling seeds for both.

# %%
if params.purpose == "planted":
    from rlff_utils import planted

    check = planted.compliance_before_after(params, prompts=24, samples=4)
    lo, hi = check["difference_ci95"]
    print(f"replies acknowledging feelings: before {check['before']:.1%}, after {check['after']:.1%}, "
          f"difference {100 * check['difference']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}] "
          f"({check['prompts']} held-out prompts x {check['samples_per_prompt']} samples, T={check['temperature']})")
else:
    print("not a planted run: nothing to check")

# %% [markdown]
# ## Artefacts
#
# `policy/adapter/` (the LoRA adapter; `grpo.load_policy(params)` returns base + adapter for generation,
# `merge=True` folds it in), `stage.json` (the settings and the objective), `grpo_config.json` (the effective TRL config),
# `log_history.json`, `curves.csv`/`curves.png`, `samples_before_after.jsonl`.

# %%
analysis.display_table(pd.DataFrame({"file": sorted(p.name + ("/" if p.is_dir() else "")
                                                    for p in layout.stage(runs.POLICY).iterdir())}))
