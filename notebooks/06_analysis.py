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
# (system × dataset: SR, AT), SR@k curves, the reward-model variant comparison, the human-signal
# validation, GRPO curves and simulation statistics. Only files are read, so this notebook renders in
# seconds and can compare a CPU smoke run with a paper-scale run copied from a GPU machine.
# Tables are written as Markdown and CSV and figures as PNG to `outputs/<run>/report/`; the pipeline
# renders this notebook to HTML for sharing.

# %% tags=["parameters"]
params_file = "../params/smoke.yaml"
overrides = {}

# %%
import json
from IPython.display import Markdown, display

from rlff_utils import analysis, plots
from rlff_utils.params import load_params

params = load_params(params_file, overrides)
report = params.stage_dir("report")
runs = analysis.list_runs(params.resolve(params.output_root), params.analysis.runs)
print("runs:", [r.name for r in runs])

# %% [markdown]
# ## Main results: success rate and average turns (95% bootstrap intervals)

# %%
main = analysis.evaluation_table(runs)
analysis.write_table(analysis.format_main_table(main), report, "main_results")
display(Markdown((report / "main_results.md").read_text()))
if len(main):
    fig = plots.plot_sr_at_k(analysis.sr_at_k_table(runs).assign(system_run=lambda d: d.run + " / " + d.system),
                             report / "sr_at_k.png", hue="system_run")

# %% [markdown]
# ## Reward model: variant comparison and validation against the seekers' own reports

# %%
rm = analysis.reward_model_table(runs)
analysis.write_table(rm.round(3), report, "reward_models")
display(Markdown((report / "reward_models.md").read_text()))
human = analysis.human_validation_table(runs)
analysis.write_table(human.round(3), report, "human_signal_validation")
display(Markdown((report / "human_signal_validation.md").read_text()))

# %% [markdown]
# ## GRPO training curves

# %%
curves = analysis.grpo_curves(runs)
if len(curves):
    cols = [c for c in ("reward", "reward_std", "frac_reward_zero_std", "kl", "completion_length", "format_compliance") if c in curves.columns]
    fig = plots.plot_curves_by_run(curves, cols, report / "grpo_curves.png")
else:
    print("no GRPO run yet")

# %% [markdown]
# ## Simulation statistics

# %%
sim = analysis.simulation_table(runs)
analysis.write_table(sim.round(3), report, "simulation")
display(Markdown((report / "simulation.md").read_text()))

# %% [markdown]
# ## This run in a few numbers (also printed at the end of `make run`)

# %%
summary = analysis.run_summary(params.run_dir)
(params.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
