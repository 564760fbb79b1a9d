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
# # 05 · Evaluation: success rate, turns, response quality
#
# The interactive protocol of PPDPP (used by RLFF-ESC): every evaluation case starts with the seeker
# stating their situation. The system under test answers (its reasoning is stripped: the seeker only
# sees the reply), the **evaluation** user simulator answers as the seeker, and the **evaluation** critic
# judges after every seeker turn whether the problem is solved (worse / same / better / solved →
# −1 / −0.5 / 0.5 / 1). A conversation succeeds when the critic's score exceeds the threshold (0.5) and
# ends at the turn cap (paper: 8) otherwise.
#
# - **SR** — share of cases solved; **AT** — mean turns, failures counted as the cap;
# - **SR@k** — share solved within k turns; 95% intervals by bootstrap over cases.
#
# The evaluation simulator and critic are separate roles from the training ones (paper: GPT-4o), so the
# policy is not judged by the model whose judgements it was trained on. Systems compared: the vanilla
# prompt, chain-of-strategy prompting, the base model with the reasoning prompt, the RLFF-ESC policy
# (base + the adapter from notebook 04), and ablation adapters when they exist.

# %% tags=["parameters"]
# The run: a params file (its relative paths start at the project root) and overrides as dotted
# keys, like the command line's --set, e.g. {"simulation.num_candidates": 2, "run_name": "smoke-m2"}.
# Give changed settings a new run_name: stages already run with other settings refuse to mix.
params_file = "../params/smoke.yaml"
overrides = {}

# %%
import json
from IPython.display import display
import pandas as pd

from rlff_utils import evaluate, plots, runs
from rlff_utils.params import load_notebook_params

params = load_notebook_params(params_file, overrides)
lay = runs.layout(params)
print(json.dumps({k: v for k, v in params.evaluation.model_dump().items() if k != "systems"}, indent=1))
pd.DataFrame([s.model_dump() for s in params.evaluation.systems])

# %% [markdown]
# ## Run every system through the protocol (resumes per case)
#
# All systems advance together, turn by turn: one user-simulator call and one critic call per turn
# serve every system's conversations, while each system's own policy (prompt style, adapter) writes
# its supporter turns. Each system keeps its own `transcripts.jsonl` and `metrics.json`. Stored transcripts are
# reused only with the same settings (the stage's record, `evaluation/stage.json`, shown below).

# %%
table = evaluate.run_evaluation(params)
for s in table.attrs["skipped"]:
    print(f"skipped {s['system']}: {s['reason']}")
display(table.round(3))
fig = plots.plot_system_bars(table, lay.eval_figure("sr_at"))

# %%
pd.Series(runs.read_record(params.run_dir, runs.EVALUATION)["settings"], name="value").to_frame()

# %% [markdown]
# ### How far the critic behind these numbers can be trusted
#
# SR and AT are the evaluation critic's verdicts. Its validity card from notebook 03 (real conversations whose
# seekers were helped against failed ones) is saved in every system's `metrics.json` and in the stage's record
# (`critic_card`): an AUC near 0.5, or not above the turn-count baseline, means the critic cannot tell a helped
# seeker from one who was not, and the SR/AT above say more about the critic than about the support.

# %%
card = runs.read_record(params.run_dir, runs.EVALUATION).get("critic_card") or {}
pd.Series({k: v for k, v in card.items()}, name="evaluation critic's validity card", dtype=object).to_frame()

# %% [markdown]
# ## SR@k and success per emotion type

# %%
metrics = {s: runs.read_json(lay.system_metrics(s)) for s in table.system}
long = pd.DataFrame(
    [{"system": s, "k": k, "SR@k": v} for s, m in metrics.items() for k, v in enumerate(m["SR_at_k"], 1)]
)
fig = plots.plot_sr_at_k(long, lay.eval_figure("sr_at_k"))
per_emotion = pd.DataFrame({s: {e: v["SR"] for e, v in m["SR_by_emotion"].items()} for s, m in metrics.items()})
per_emotion.round(2)

# %% [markdown]
# ## The main system against each baseline, case by case
#
# Every system meets the same cases with the same simulator seeds, so the differences are paired: a
# bootstrap over cases resamples each case's two outcomes together (95% intervals).

# %%
main = evaluate.main_system(params)
paired = metrics.get(main, {}).get("paired_vs", {})
pd.DataFrame([{"system": main, "baseline": b, "cases": d["cases"],
               "SR difference (points)": None if d["SR_diff"] is None else f"{100 * d['SR_diff']:+.1f} "
               f"[{100 * d['SR_diff_ci95'][0]:+.1f}, {100 * d['SR_diff_ci95'][1]:+.1f}]",
               "AT difference": None if d["AT_diff"] is None else f"{d['AT_diff']:+.2f} "
               f"[{d['AT_diff_ci95'][0]:+.2f}, {d['AT_diff_ci95'][1]:+.2f}]"}
              for b, d in paired.items()])

# %% [markdown]
# ## The same conversations under a second critic (when `evaluation.contrast_critic` is set)
#
# `models.eval_critic` in the contrast mode re-judges every stored conversation after each of its turns,
# as if it had decided: e.g. the LLM critic beside the planted run's rule critic. The conversations
# stopped where the deciding critic said "solved", so on those the contrast critic's success is a lower
# bound. Agreement and Cohen's kappa compare the two verdicts per conversation (kappa is undefined
# when a critic gives every conversation the same verdict).

# %%
from rlff_utils import contrast

contrast_view = contrast.contrast_table(metrics)
contrast_view if len(contrast_view) else print("no contrast critic in this run")

# %% [markdown]
# ## The same case under the RLFF-ESC policy and the vanilla baseline, side by side
#
# Each row is one turn: both systems' supporter replies, the simulated seeker's answers and the critic's
# score after each (blank once a conversation has ended).

# %%
baseline = "vanilla" if "vanilla" in set(table.system) and main != "vanilla" else table.system.iloc[0]
pair = evaluate.side_by_side(params, baseline)
print(f"case {pair.attrs.get('case_id')}: " + "; ".join(f"{k}: {v}" for k, v in pair.attrs.get("outcomes", {}).items()))
pair.style.set_properties(**{"white-space": "pre-wrap", "text-align": "left"}).format(precision=2, na_rep="–")

# %% [markdown]
# ## Response quality: pairwise judge and a blind sheet for human annotators
#
# The paper's human-evaluation criteria (fluency, empathy, identification, suggestion, overall). An LLM
# judge compares the main system with each baseline on the same case **in both orders**; a win needs
# the preference in both orders, so position bias turns into ties instead of fake wins. Unparsable
# answers are counted, not guessed. The same pairs go to `human_sheet.csv` with randomised sides; the
# key is written apart (`human_sheet_key/key.csv`) and `evaluate.score_human_sheet` scores a filled sheet.

# %%
rates = evaluate.run_quality(params)
if len(rates):
    display(rates.round(2))
    fig = plots.plot_win_rates(rates, lay.eval_figure("win_rates"))
else:
    print("no baseline to compare with")
