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
# The evaluation simulator and critic are roles of their own (`models.eval_user_sim`, `models.eval_critic`),
# separate from the training ones so that the policy need not be judged by the model whose judgements it
# was trained on: in the paper GPT-4o plays them. Which model plays each role in *this* run is listed
# below; where one model plays them all, the separation holds only in name. The systems a run can compare:
# the vanilla prompt, chain-of-strategy prompting, the base model with the reasoning prompt, the RLFF-ESC
# policy (base + the adapter from notebook 04) and ablation adapters (`evaluation.systems`); the table
# below lists those this run evaluated.

# %% tags=["parameters"]
# The run: a params file (its relative paths start at the project root) and overrides as dotted
# keys, like the command line's --set, e.g. {"simulation.num_candidates": 2, "run_name": "smoke-m2"}.
# Give changed settings a new run_name: stages already run with other settings refuse to mix.
params_file = "../params/smoke.yaml"
overrides = {}

# %%
from IPython.display import display
import pandas as pd

from rlff_utils import analysis, evaluate, human_eval, plots, runs
from rlff_utils.params import load_notebook_params

params = load_notebook_params(params_file, overrides)
lay = runs.layout(params)
roles = {"policy (every system's base)": "policy", "user simulator (evaluation)": "eval_user_sim",
         "critic (evaluation; decides SR/AT)": "eval_critic", "pairwise judge": "judge",
         "critic (training, notebook 02)": "critic"}
models = {label: getattr(params.models, role).name for label, role in roles.items()}
display(analysis.display_table(pd.DataFrame([{"role": k, "model": v} for k, v in models.items()])))
if len(set(models.values())) == 1:
    print(f"note: one model ({next(iter(models.values()))}) plays every role here, the judging ones included")
display(analysis.display_table(analysis.fields_table(
    params.evaluation.model_dump(exclude={"systems", "simulators"}), value="setting",
    missing={"contrast_critic": "none: one critic decides", "num_cases": "every case"})))
analysis.display_table(pd.DataFrame(
    [{"system": s.name, "prompt": s.prompt, "adapter": s.adapter or "none (the base model)"}
     for s in params.evaluation.systems]))

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
display(analysis.display_table(table))
fig = plots.plot_system_bars(table, lay.eval_figure("sr_at"))

# %%
analysis.display_table(analysis.fields_table(runs.read_record(params.run_dir, runs.EVALUATION)["settings"]))

# %% [markdown]
# ### How far the critic behind these numbers can be trusted
#
# SR and AT are the evaluation critic's verdicts. Its validity card from notebook 03 (real conversations whose
# seekers were helped against failed ones) is saved in every system's `metrics.json` and in the stage's record
# (`critic_card`): an AUC near 0.5, or not above the turn-count baseline, means the critic cannot tell a helped
# seeker from one who was not, and the SR/AT above say more about the critic than about the support.

# %%
card = runs.read_record(params.run_dir, runs.EVALUATION).get("critic_card") or {}
if card:
    display(analysis.display_table(analysis.fields_table(card, digits=2, value="evaluation critic's validity card", words=True)))
else:
    print("no validity card for the evaluation critic in this run")

# %% [markdown]
# ## SR@k and success per emotion type

# %%
metrics = {s: runs.read_json(lay.system_metrics(s)) for s in table.system}
long = pd.DataFrame(
    [{"system": s, "k": k, "SR@k": v} for s, m in metrics.items() for k, v in enumerate(m["SR_at_k"], 1)]
)
fig = plots.plot_sr_at_k(long, lay.eval_figure("sr_at_k"))
per_emotion = pd.DataFrame({s: {e: v["SR"] for e, v in m["SR_by_emotion"].items()} for s, m in metrics.items()})
analysis.display_table(per_emotion.reset_index(names="emotion"), digits=2,
                       caption="share of cases solved per emotion type")

# %% [markdown]
# ## The main system against each baseline, case by case
#
# Every system meets the same cases with the same simulator seeds, so the differences are paired: a
# bootstrap over cases resamples each case's two outcomes together (95% intervals).

# %%
main = evaluate.main_system(params)
paired = metrics.get(main, {}).get("paired_vs", {})
analysis.display_table(pd.DataFrame([
    {"system": main, "baseline": b, "cases": d["cases"],
     "SR difference (points)": None if d["SR_diff"] is None else f"{100 * d['SR_diff']:+.1f} "
     f"[{100 * d['SR_diff_ci95'][0]:+.1f}, {100 * d['SR_diff_ci95'][1]:+.1f}]",
     "AT difference": None if d["AT_diff"] is None else f"{d['AT_diff']:+.2f} "
     f"[{d['AT_diff_ci95'][0]:+.2f}, {d['AT_diff_ci95'][1]:+.2f}]"}
    for b, d in paired.items()]), missing="undefined (no case with an outcome on both sides)")

# %% [markdown]
# ## Does the result survive another simulator or a harder seeker?
#
# LLM seeker simulators are overly cooperative, and policies trained against one simulator may not
# generalise to another. Every system is therefore also evaluated, on the same cases, under each further
# evaluation simulator (`evaluation.simulators`, with the first seeker profile) and against each further
# seeker profile (`evaluation.seeker_profiles`, with the default simulator): a *resistant* seeker doubts
# the help, a *minimal-disclosure* one shares little, a *ruminating* one circles back, a *yes-but* one
# rejects each suggestion, an *escalating* one grows more distressed when misunderstood (the profiles'
# instructions are in `rlff_utils.agents.SEEKER_PROFILES` and in the stage's `prompts.json`). Per condition:
# SR and AT with 95% intervals, the main system's paired SR difference to each system, and each system's
# rank by SR. A gain that holds under one condition only is a property of that simulator.

# %%
conditions = evaluate.condition_table(params)
if len(conditions):
    display(analysis.display_table(conditions.drop(columns=["condition"]), digits=2,
                                   missing="the main system itself (no difference to itself)"))
    plots.plot_conditions(conditions, lay.eval_figure("conditions"));
else:
    print("one evaluation condition in this run (evaluation.simulators and evaluation.seeker_profiles add more)")

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
analysis.display_table(contrast_view) if len(contrast_view) else print("no contrast critic in this run")

# %% [markdown]
# ## The same case under the RLFF-ESC policy and the vanilla baseline, side by side
#
# Each row is one turn: both systems' supporter replies, the simulated seeker's answers and the critic's
# score after each (blank once a conversation has ended).

# %%
baseline = "vanilla" if "vanilla" in set(table.system) and main != "vanilla" else table.system.iloc[0]
pair = evaluate.side_by_side(params, baseline)
print(f"case {pair.attrs.get('case_id')}: " + "; ".join(f"{k}: {v}" for k, v in pair.attrs.get("outcomes", {}).items()))
print("Every evaluated conversation, with filters and per-turn scores: report/transcripts.html.")
analysis.display_table(pair.reset_index(), digits=2, missing="no turn here (the seeker opens the case, or the conversation had ended)")

# %% [markdown]
# ## Response quality: pairwise judge and a blind page for human annotators
#
# The paper's human-evaluation criteria (fluency, empathy, identification, suggestion, overall). An LLM
# judge compares the main system with each baseline on the same case **in both orders**; a win needs
# the preference in both orders, so position bias turns into ties instead of fake wins. Unparsable
# answers are counted, not guessed. The same pairs go into a self-contained annotation page,
# `evaluation/human/annotate.html` (sides shuffled per pair, no system names; the key stays apart in
# `human/key.json`), to send to colleagues; their exported answer files go in `human/answers/`.

# %%
rates = evaluate.run_quality(params)
if len(rates):
    display(analysis.display_table(rates, digits=2))
    fig = plots.plot_win_rates(rates, lay.eval_figure("win_rates"))
else:
    print("no baseline to compare with")

# %% [markdown]
# ### Human evaluation: what the annotators returned
#
# Every answer file in `evaluation/human/answers/` (any number of annotators) is read through the key:
# win / tie / lose of the main system per baseline and criterion (each pair weighs the same; 95%
# bootstrap intervals over pairs), the annotators' agreement (Krippendorff's α, nominal: 1 perfect, 0
# chance) and the LLM judge's validity on human labels: Cohen's κ between its verdict and the
# annotators' majority. Until files come back this section says so.

# %%
if human_eval.ingest(params) is None:
    print("no answer file yet: send evaluation/human/annotate.html, put the returned files in evaluation/human/answers/")
else:
    human = human_eval.results_tables(params)
    display(analysis.display_table(human["rates"], digits=2))
    display(analysis.display_table(human["agreement"], digits=2, missing="undefined (see why) or no judge verdict"))
