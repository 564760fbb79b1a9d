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
# # 06 · Analysis across runs
#
# Reads what the stages wrote under `outputs/` — every run there, or the runs named in
# `analysis.runs` — and puts them side by side: the main results table in the paper's shape
# (system × dataset: SR, AT, and the validity of the critic that decided them), SR@k curves, the simulated
# reward signal, the reward-model variant comparison, the judges' validity cards, GRPO curves, and the run card with time and memory per notebook.
# Only files are read (no model, no dataset), so this notebook renders in seconds and can compare a
# CPU smoke run with a paper-scale run copied from a GPU machine. Tables are written as CSV (numeric)
# and Markdown and figures as PNG to `outputs/<run>/report/`.

# %% tags=["parameters"]
# The run: a params file (its relative paths start at the project root) and overrides as dotted
# keys, like the command line's --set, e.g. {"simulation.num_candidates": 2, "run_name": "smoke-m2"}.
# Give changed settings a new run_name: stages already run with other settings refuse to mix.
params_file = "../params/smoke.yaml"
overrides = {}

# %%
from IPython.display import Markdown, display

from rlff_utils import analysis, human_eval, plots, report as run_report, runs as run_folders
from rlff_utils.params import load_notebook_params

# This notebook only reads a run's outputs: the dataset need not be present.
params = load_notebook_params(params_file, overrides, check_files=False)
layout = run_folders.layout(params)
out = layout.report
card = run_report.run_card(params)
runs = analysis.list_runs(params.resolve(params.output_root), params.analysis.runs)
display(Markdown("Runs compared: " + ", ".join(f"`{r.name}`" for r in runs)))

# %% [markdown]
# ## Main results: success rate and average turns (95% bootstrap intervals)
#
# `main_results.csv` holds the same numbers for tools: SR as a share (`sr`, `sr_lo`, `sr_hi`) and AT in
# turns (`at`, `at_lo`, `at_hi`).

# %%
main = analysis.evaluation_table(runs)
analysis.write_table(main, out, "main_results", shown=analysis.format_main_table(main))

# %%
if len(main):
    several = main["run"].nunique() > 1
    bars = main.assign(label=(main["run"] + " / " + main["system"]) if several else main["system"])
    plots.plot_system_bars(bars, layout.report_figure("sr_at"), label="label" if several else "system")
    long = analysis.sr_at_k_table(runs)
    long = long.assign(system_run=long["run"] + " / " + long["system"]) if several else long
    plots.plot_sr_at_k(long, layout.report_figure("sr_at_k"), hue="system_run" if several else "system");

# %% [markdown]
# ## Under other simulators and harder seekers
#
# Every system under each evaluation condition (a further simulator, or a seeker profile other than the
# headline's), on the same cases: SR and AT with 95% intervals, its rank by SR, and the main system's
# paired SR difference to it. A ranking that changes between conditions is a property of the simulator.

# %%
conds = analysis.conditions_table(runs)
if len(conds):
    display(analysis.write_table(conds, out, "conditions", digits=2))
    plots.plot_conditions(conds.assign(condition=conds["run"] + " · " + conds["condition"]) if conds["run"].nunique() > 1
                          else conds, layout.report_figure("conditions"));
else:
    print("no run here was evaluated under more than one condition (evaluation.simulators, evaluation.seeker_profiles)")

# %% [markdown]
# ## The simulated reward signal
#
# $R_\text{fut}$ of every candidate the simulation judged (the reward model's training targets; dashed: the
# label threshold $\delta$), and the simulation's statistics per run.

# %%
rewards = analysis.reward_dataset_table(runs)
plots.plot_r_fut_distribution(rewards, layout.report_figure("r_fut_distribution"));

# %%
analysis.write_table(analysis.simulation_table(runs), out, "simulation")

# %% [markdown]
# ## Reward model: variant comparison and scores against $R_\text{fut}$

# %%
analysis.write_table(analysis.reward_model_table(runs), out, "reward_models")

# %% [markdown]
# Each variant's score on the held-out candidates against the $R_\text{fut}$ the simulation measured for
# the same candidate: a useful reward model ranks them alike (Spearman ρ near 1).

# %%
plots.plot_rm_score_vs_r_fut(analysis.reward_model_predictions(runs), layout.report_figure("rm_score_vs_r_fut"));

# %% [markdown]
# ## Do the judges know a helped seeker? Validity cards
#
# Each run's critic, reward model and learned critic on real conversations with a known outcome (ESConv
# conversations whose seekers' intensity fell, against the authors' failed ones; notebook 03): ROC-AUC for
# "helped" with its 95% interval (0.5: chance), Spearman with the intensity drop, top labels per group,
# unparsable answers, and the turn-count baseline. `evaluation` marks the card of the critic behind the run's
# SR/AT (the main table's `critic AUC`).

# %%
analysis.write_table(analysis.validity_table(runs), out, "validity_cards", digits=2)

# %% [markdown]
# ## Human evaluation of this run
#
# When colleagues have returned answer files from the run's annotation page (`evaluation/human/answers/`):
# the main system's win / tie / lose shares against each baseline per criterion (95% bootstrap intervals
# over pairs), the annotators' agreement (Krippendorff's α per criterion) and the LLM judge's validity on
# human labels (Cohen's κ against the annotators' majority, with its interval), beside the critic's cards above.

# %%
if human_eval.ingest(params) is None:
    print("no answer file returned yet for this run's annotation page")
else:
    human = human_eval.results_tables(params)
    display(analysis.write_table(human["rates"], out, "human_rates", digits=2))
    analysis.write_table(human["agreement"], out, "human_agreement", digits=2)

# %% [markdown]
# ## Does the machinery learn? Planted-signal runs
#
# Only for planted runs (`params/planted*.yaml`, where a rule critic rewards acknowledging the seeker's
# feelings): the reward models' held-out ROC-AUC against the planted label (trained head and its untrained
# `random` start; its interval resamples the test contexts, whose candidates share a seeker turn), the share of rule-satisfying replies before and after GRPO on held-out prompts with the
# same sampling seeds, and the main system's paired SR difference to each baseline under the rule critic and
# under the LLM critic re-judging the same conversations. All with 95% bootstrap intervals. A working
# pipeline shows the signal in the positive run and none from GRPO in its negative control
# (`grpo.reward_model: random`).

# %%
planted = analysis.planted_table(runs)
if len(planted):
    analysis.write_table(planted, out, "planted_signal", shown=analysis.by_run_columns(planted))
else:
    print("no planted run among these")

# %% [markdown]
# ## GRPO training curves

# %%
curves = analysis.grpo_curves(runs)
if len(curves):
    plots.plot_grpo_curves(curves, layout.report_figure("grpo_curves"))
else:
    print("no GRPO run yet")

# %% [markdown]
# ## The run
#
# What was run, with what, on what; wall time and peak memory of each notebook that had finished when this
# page was made (this one is still running: `report/index.html`, written after it, has the full table). Peak
# memory per notebook is the kernel and its child processes, sampled every half second.
# `report/index.html` gathers this card, every report page, table, figure and the transcript browser.

# %%
display(analysis.display_table(analysis.run_card_table(card)))
analysis.display_table(analysis.timing_table(card), digits=0)

# %%
# summary.json: the few numbers the pipeline prints when it finishes
run_folders.write_json(analysis.run_summary(params.run_dir), layout.summary);
