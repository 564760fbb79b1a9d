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
# # 02 · Multi-agent simulation and the future-oriented reward
#
# Stage 1 of RLFF-ESC. A *context* $s$ is a real ESConv dialogue prefix ending in a seeker turn (notebook 01).
# For each context the ESC policy samples $m$ candidate supporter replies $a_1..a_m$ (`simulation.num_candidates`).
# Each candidate is then rolled forward by three LLM agents:
#
# * the **ESC system model** writes the later supporter turns,
# * the **user simulator** plays the seeker (a persona built from emotion type, problem type and situation),
# * the **critic** (PPDPP's) judges after every seeker turn how the seeker feels: *worse / same / better / solved*,
#   valued $-1 / -0.5 / 0.5 / 1$. In `votes` mode it samples $n$ answers and averages the ones that name a label;
#   in `probs` mode it reads the probability of each answer from one scoring call and takes the expected value.
#
# A rollout stops when the critic's score $v_t$ exceeds the success threshold (goal reached) or after $T$ turns
# (`simulation.max_turns`); one turn is a supporter reply, the seeker's answer and the critic's judgement, and the
# candidate itself is turn 1. Where the conversation ended up becomes the candidate's **future-oriented reward**
#
# $$R_\text{fut}(s, a) = v_\text{end} + \lambda\,\frac{T - t_\text{end}}{T}\,\mathbb 1[\text{goal reached}],$$
#
# with $v_\text{end}$ the last critic score, $t_\text{end}$ the turns used and $\lambda$ `simulation.efficiency_weight`:
# a good reply is one after which the conversation goes well, and sooner is better. The classification label is
# $y = \mathbb 1[R_\text{fut} \ge \delta]$ with $\delta$ = `simulation.label_threshold` (`median` balances the labels).
# Only the *visible* reply (after `</think>`) ever reaches the user simulator or the critic.

# %% tags=["parameters"]
# The run: a params file (its relative paths start at the project root) and overrides as dotted
# keys, like the command line's --set, e.g. {"simulation.num_candidates": 2, "run_name": "smoke-m2"}.
# Give changed settings a new run_name: stages already run with other settings refuse to mix.
params_file = "../params/smoke.yaml"
overrides = {}

# %%
import pandas as pd

from rlff_utils import analysis, critic, runs
from rlff_utils import simulate as sim
from rlff_utils.agents import policy_messages
from rlff_utils.data import load_contexts
from rlff_utils.params import load_notebook_params
from rlff_utils.plots import plot_simulation
from rlff_utils.report import shown_path
from rlff_utils.reward.target import reward_frame
from rlff_utils.rollout import format_transcript, load_trajectories

params = load_notebook_params(params_file, overrides)
lay = runs.layout(params)
out_dir = lay.stage(runs.SIMULATION)
s = params.simulation
print(f"run {params.run_name!r}: m={s.num_candidates} candidates, T={s.max_turns} turns, critic {s.critic_mode}, "
      f"lambda={s.efficiency_weight}, delta={s.label_threshold}; writes {shown_path(out_dir, params)}/")
analysis.display_table(pd.DataFrame([
    {"role": role, "backend": getattr(params.models, role).backend, "model": getattr(params.models, role).name,
     "temperature": getattr(params.models, role).temperature,
     "max new tokens": getattr(params.models, role).max_new_tokens}
    for role in ("policy", "system", "user_sim", "critic")]), digits=2)

# %% [markdown]
# ## Contexts from notebook 01
#
# Each row is one dialogue prefix; its last turn is the seeker's, and the real supporter reply that followed is
# kept as a reference (never shown to the agents).

# %%
contexts = load_contexts(params)
shown = min(8, len(contexts))
simulated = min(len(contexts), s.max_contexts) if s.max_contexts else len(contexts)
print(f"{len(contexts)} contexts from notebook 01; the simulation rolls {simulated} of them "
      f"(simulation.max_contexts: {s.max_contexts or 'all'}) x {s.num_candidates} candidates; the first {shown} listed:")
analysis.display_table(pd.DataFrame([
    {"context": c["context_id"], "emotion": c["emotion_type"], "problem": c["problem_type"],
     "history turns": len(c["history"]), "last seeker turn": c["history"][-1]["text"][:80]}
    for c in contexts[:shown]]))

# %% [markdown]
# What the policy sees for the first context (`policy_messages`, the same function GRPO and evaluation use;
# with `simulation.reasoning_format: true` the candidates carry a `<think>…</think>` block first). Every prompt
# template is written to `simulation/prompts.json`.

# %%
style = "reasoning" if s.reasoning_format else "vanilla"
for m in policy_messages(contexts[0], style, max_history_turns=params.data.max_history_turns):
    print(f"[{m['role']}] {m['content']}\n")

# %% [markdown]
# ## Lockstep rollouts
#
# All live trajectories advance together: every turn is **one batched call per agent role** over all of them
# (instead of one call per agent per trajectory), and finished trajectories drop out. Each finished trajectory is
# appended to `simulation/trajectories.jsonl` and fsynced at once, so an interrupted run continues where it
# stopped when this cell runs again (finished `(context_id, candidate_index)` keys are skipped, the batch in flight
# continues from its last finished turn). Every sampled token is seeded by the run seed, the trajectory's identity,
# the turn and the role, so the resumed run writes what an uninterrupted one would have written. Stored
# trajectories are reused only with the same settings: the stage's record (`simulation/stage.json`) holds them,
# and other settings stop the run with the list of changes (rerun with `--force`, or use another `run_name`).
#
# With `simulation.critic_mode: learned` the critic is a classifier trained on real seekers' outcomes
# (`rlff_utils.critic.learned`): it is trained first, as its own step (notebook 03 describes it; reused while its
# settings and data are unchanged), since building the simulation's critic only loads it.

# %%
if s.critic_mode == "learned":
    critic.train_learned_critic(params)
summary = sim.run_simulation(params, contexts)
analysis.display_table(analysis.fields_table({k: v for k, v in summary.as_dict().items() if k != "out_dir"}))

# %% [markdown]
# The settings this stage ran with (its record):

# %%
analysis.display_table(analysis.fields_table(runs.read_record(params.run_dir, runs.SIMULATION)["settings"]))

# %% [markdown]
# ## Two trajectories, read in full
#
# The end of the context, then the rollout with the critic's score after every seeker turn: the highest- and the
# lowest-rewarded candidates of the run.

# %%
records = load_trajectories(params.run_dir)
frame = reward_frame(records, params.simulation)
for rec in sim.pick_examples(frame, 2):
    print(format_transcript(rec))
    print(f"  R_fut = {rec['r_fut']:+.3f}, label = {rec['label']}\n")

# %% [markdown]
# ## The reward signal
#
# Left: $R_\text{fut}$ per trajectory, stacked by end reason (trajectories that reached the goal carry the
# efficiency bonus). Middle: share of rollouts that reached the goal within $k$ turns. Right: label balance per
# emotion type.

# %%
plot_simulation(frame, sim.success_by_turn(records), lay.simulation_png);

# %%
analysis.display_table(sim.outcome_table(frame).reset_index())

# %% [markdown]
# ## The reward dataset for notebook 03
#
# `simulation/reward_dataset.jsonl`: one row per judged candidate with its context, the raw and visible candidate,
# $R_\text{fut}$, the label and its parts ($v_\text{end}$, goal reached, $t_\text{end}$, $T$), so other
# $\lambda$ or $\delta$ can be computed without simulating again (`rlff_utils.reward.target.reward_frame`). Trajectories whose final
# judgement named no label (votes mode) have no $v_\text{end}$ and are left out; the count is in the summary above.

# %%
analysis.display_table(pd.DataFrame({"file": sorted(str(p.relative_to(params.run_dir)) for p in out_dir.iterdir()
                                                    if p.is_file())}))
