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
# # 01 · Data preparation
#
# RLFF-ESC learns from **contexts**: prefixes of real emotional-support dialogues that end in a
# seeker turn. In the next notebook the policy answers each context several times and every answer
# is rolled forward by simulated agents to see where it leads.
#
# This notebook loads ESConv (and ExTES when configured) into one dialogue schema, samples the
# contexts, builds the evaluation cases (ESConv: PPDPP's 130-case test split, where the seeker opens
# with the case's situation) and writes everything to `outputs/<run>/data/`.
#
# ESConv comes from a local folder (`RLFF_DATA_DIR`) or from the Hugging Face hub (`thu-coai/esconv`,
# cached after the first download), as `data.esconv_source` says; PPDPP's split is rebuilt from it by
# the list of ESConv ids the project ships. Broken records are skipped and counted, never fatal.

# %% tags=["parameters"]
# The run: a params file (its relative paths start at the project root) and overrides as dotted
# keys, like the command line's --set, e.g. {"simulation.num_candidates": 2, "run_name": "smoke-m2"}.
# Give changed settings a new run_name: stages already run with other settings refuse to mix.
params_file = "../params/smoke.yaml"
overrides = {}

# %%
from IPython.display import display
import pandas as pd

from rlff_utils import analysis, data, plots
from rlff_utils.params import load_notebook_params
from rlff_utils.report import shown_path, shown_paths

params = load_notebook_params(params_file, overrides)
print(f"run {params.run_name!r}: writes {shown_path(params.run_dir / 'data', params)}/")

# %% [markdown]
# ## Load, build contexts and evaluation cases, save

# %%
prepared = data.prepare_data(params)
for dataset, source in prepared.sources.items():
    print(f"{dataset}: {shown_paths(str(source), params)}")


def counts(d: dict) -> str:
    return "; ".join(f"{k}: {v}" for k, v in d.items())


display(analysis.display_table(pd.DataFrame([
    {"file": shown_path(r.source, params), "layout": r.layout, "kept": r.kept, "skipped": sum(r.skipped.values()),
     "skip reasons": counts(r.skipped), "repaired": counts(r.repaired),
     "unknown strategies": counts(r.unknown_strategies)}
    for r in prepared.reports
])))
analysis.display_table(pd.DataFrame(
    {"dialogues": [len(prepared.dialogues)], "evaluation dialogues": [len(prepared.eval_dialogues)],
     "contexts": [len(prepared.contexts)], "evaluation cases": [len(prepared.eval_cases)]}
))

# %% [markdown]
# ## The corpus at a glance

# %%
frame = data.dialogues_frame(prepared.dialogues)
display(analysis.display_table(frame.groupby(["dataset", "split"]).agg(
    dialogues=("id", "count"), mean_turns=("turns", "mean")).reset_index(), digits=1))
strategies = pd.DataFrame(
    [{"dataset": ds, "strategy": s, "count": n} for (ds, s), n in data.strategy_counts(prepared.dialogues).items()]
).sort_values("count", ascending=False)
fig = plots.plot_data_overview(frame, strategies, params.run_dir / "data" / "overview.png")

# %% [markdown]
# The seeker's own survey (ESConv) gives a **human signal** of how much a conversation helped:
# initial minus final emotion intensity. Notebook 03 checks the reward model and the critic against it.

# %%
survey = frame.dropna(subset=["intensity_drop"])
print(f"{len(survey)} dialogues report both intensities; mean drop {survey.intensity_drop.mean():.2f}")
analysis.display_table(survey.groupby("emotion_type").intensity_drop.agg(["count", "mean"])
                       .sort_values("count", ascending=False).reset_index()
                       .rename(columns={"count": "dialogues", "mean": "mean intensity drop"}), digits=2)

# %% [markdown]
# ## A context and an evaluation case

# %%
ctx = prepared.contexts[0]
print(f"context {ctx['context_id']} ({ctx['emotion_type']}, {ctx['problem_type']})\nsituation: {ctx['situation']}\n")
for turn in ctx["history"][-6:]:
    print(f"{turn['speaker']:>9}: {turn['text']}")
print(f"\nreal reply ({ctx['reference_strategy']}): {ctx['reference_reply']}")
analysis.display_table(pd.DataFrame(prepared.eval_cases[:5]))
