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
# # Sweep · results across seeds
#
# One sweep (`python -m rlff_utils.sweep sweeps/<name>.yaml`) ran each arm under several seeds.
# Per arm, the table gives SR and AT of the evaluated system as the mean over seeds of each
# seed's mean over cases, with a 95% interval from a hierarchical bootstrap (resample the seeds,
# then the cases within each drawn seed), so the interval holds the spread between seeds as well as
# between cases. Each arm is also compared with the reference arm on the same seeds and the same
# cases: the paired difference, bootstrapped the same way. With fewer than three seeds an arm's
# interval says little about the spread between seeds; the table then says so.
#
# The sweep runner executes this notebook after the runs (it is not one of the numbered stages of
# a run); it reads only the sweep's record and what the runs wrote.

# %% tags=["parameters"]
# The sweep folder: <output_root>/sweeps/<name> (written by the sweep runner).
sweep_folder = ""

# %%
from pathlib import Path

from IPython.display import Image, Markdown, display

from rlff_utils import sweep_analysis

folder = Path(sweep_folder)
record = sweep_analysis.sweep_record(folder)
settings = record.get("aggregate") or {}
outcomes = sweep_analysis.sweep_outcomes(folder, settings.get("system"))
table = sweep_analysis.arm_table(outcomes, settings.get("reference"), settings.get("bootstrap_samples", 2000))
display(Markdown(f"**Sweep {record['sweep']}**: system `{settings.get('system')}`, reference arm "
                 f"`{settings.get('reference') or '–'}`, {outcomes['run'].nunique()} runs."))
warning = sweep_analysis.small_sample_warning(outcomes)
if warning:
    display(Markdown(f"**Warning:** {warning}."))

# %% [markdown]
# ## Per arm: SR and AT over seeds and cases, and the difference to the reference arm
#
# SR: share of cases solved; AT: turns to success, a failure counted as the turn cap (lower is
# better). `vs <reference>`: this arm minus the reference arm, case by case within each seed.

# %%
display(Markdown(sweep_analysis.markdown_table(table)))

# %%
display(Image(filename=str(sweep_analysis.plot_arms(table, folder / "aggregate.png", f"sweep {record['sweep']}"))))

# %% [markdown]
# ## Per seed
#
# Each arm's SR and AT under each seed: how far the seeds of one arm lie apart.

# %%
per_seed = (outcomes.groupby(["arm", "seed"], sort=False)[["success", "turns"]].mean()
            .rename(columns={"success": "SR", "turns": "AT"}).reset_index())
display(Markdown(per_seed.to_markdown(index=False, floatfmt=".2f")))

# %% [markdown]
# ## Planted runs: did GRPO teach the rule?
#
# A sweep of planted-signal runs also checks each trained policy directly: on held-out prompts,
# the share of its sampled replies that acknowledge the seeker's feelings (the planted rule), after
# GRPO and its gain over the base policy with the same sampling seeds (notebook 04). Pooled like
# SR: per arm the mean over seeds, a 95% interval that resamples seeds and then prompts, and the
# gain's paired difference to the reference arm on the same prompts and seeds. Absent for a sweep
# of other runs.

# %%
compliance = sweep_analysis.compliance_outcomes(folder)
if len(compliance):
    planted = sweep_analysis.arm_table(compliance, settings.get("reference"), settings.get("bootstrap_samples", 2000),
                                       metrics=sweep_analysis.COMPLIANCE_METRICS, paired=sweep_analysis.COMPLIANCE_PAIRED
                                       ).rename(columns={"cases": "prompts"})
    display(Markdown(sweep_analysis.markdown_table(planted)))
    display(Image(filename=str(sweep_analysis.plot_arms(
        planted, folder / "compliance.png", f"sweep {record['sweep']}: planted compliance",
        names=list(sweep_analysis.COMPLIANCE_METRICS.values()), unit="prompts"))))
    gains = (compliance.groupby(["arm", "seed"], sort=False)[["before", "after", "gain"]].mean().reset_index())
    display(Markdown(gains.to_markdown(index=False, floatfmt=".3f")))
else:
    display(Markdown("No run of this sweep has a planted compliance check."))
