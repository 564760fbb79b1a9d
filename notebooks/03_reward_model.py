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
# # 03 · The future-oriented reward model
#
# Stage 2 of RLFF-ESC. Notebook 02 rolled every candidate reply $a$ of a context $s$ forward with a
# simulated seeker and scored where the conversation ended up:
#
# $$R_\text{fut}(s, a) = v_\text{end} + \lambda\,\frac{T - t_\text{end}}{T}\,\mathbb 1[\text{goal reached}],$$
#
# the critic's final judgement $v_\text{end}\in[-1, 1]$ plus a bonus for reaching the goal early. Simulating
# is far too slow to score the thousands of samples GRPO draws, so a model $r_\phi(s, a)$ learns to predict it
# from the context and the reply alone. Three ways to learn it, all on the same backbone with LoRA and a
# fresh score head:
#
# | variant | target | loss | score given to GRPO |
# |---|---|---|---|
# | **classification** (the paper's) | $y = \mathbb 1[R_\text{fut} \ge \delta]$ | $-\,y\log p_\phi - (1-y)\log(1-p_\phi)$ | $p_\phi(y{=}1 \mid s, a)$ |
# | **regression** | $R_\text{fut}$ | $(r_\phi - R_\text{fut})^2$ | $r_\phi$ |
# | **ranking** (Bradley–Terry) | pairs $a^+ \succ a^-$ of one context | $-\log\sigma\big(r_\phi(s,a^+) - r_\phi(s,a^-)\big)$ | $r_\phi$ |
#
# The paper found classification far better than ranking after GRPO (success rate 41.5 % vs 26.9 %) and a
# **random**, untrained reward model collapsing training (18.5 %); the random head is scored here as a
# reference. The classifier hands GRPO a *probability*, not the 0/1 label: with hard labels most groups of
# answers would tie, and a group without reward variance teaches nothing.

# %% tags=["parameters"]
# The run: a params file (its relative paths start at the project root) and overrides as dotted
# keys, like the command line's --set, e.g. {"simulation.num_candidates": 2, "run_name": "smoke-m2"}.
# Give changed settings a new run_name: stages already run with other settings refuse to mix.
params_file = "../params/smoke.yaml"
overrides = {}

# %%
import pandas as pd

from rlff_utils import analysis, critic, plots, rewards, runs, validation
from rlff_utils.params import load_notebook_params
from rlff_utils.report import shown_path
from rlff_utils.reward import inputs, scorer, train

params = load_notebook_params(params_file, overrides)
stage_dir = runs.layout(params).stage(runs.REWARD_MODEL)
print(f"run {params.run_name!r}: backbone {params.models.reward_backbone.name}, "
      f"variants {', '.join(params.reward_model.variants)}; writes {shown_path(stage_dir, params)}/")

# %% [markdown]
# ## The reward dataset and its split
#
# One row per simulated candidate. The split is by **dialogue** (so no context, and no shared history, is on
# two sides): held-out numbers then measure judging new conversations, not remembering old ones. The ranking
# pairs are all candidate pairs of one context whose $R_\text{fut}$ differ, the higher one preferred.

# %%
splits = inputs.run_splits(params)
analysis.display_table(splits.summary(), missing="not defined for this split")

# %% [markdown]
# Every input goes through one function, `format_input`, in training and when GRPO scores: the last
# turns of the context and the reply's *visible* part (a `<think>…</think>` block and a strategy tag are
# removed, since the seeker never reads them). Too-long inputs lose their oldest turns, never the reply.

# %%
row = splits.train.iloc[0]
print(inputs.format_input(row["history"], row["candidate_reply"], inputs.history_turns(params)))
print(f"\nR_fut = {row['r_fut']:.3f}, label = {row['label']}")

# %% [markdown]
# ## Training and the comparison
#
# Classification and regression: `AutoModelForSequenceClassification` + LoRA with transformers' `Trainer`;
# ranking: TRL's `RewardTrainer` on pre-tokenised pairs. All with early stopping on the validation loss and
# the run's seed. A variant already trained for this run with the same settings is reused; changed settings
# stop the stage with a message naming them (`reward_model.retrain: true` starts it over). Held-out metrics:
# accuracy and F1 of the classifier at $p = 0.5$; ROC-AUC against the label and
# Spearman $\rho$ against $R_\text{fut}$ for every variant (both ignore the score's scale); pairwise accuracy on
# the test split's ranking pairs (ties count ½). A value that is undefined reads "–": accuracy and F1 exist only
# for the classifier, the untrained random reference has no training figures, and a metric undefined on this
# split (for example AUC when every test label is equal) has its reason in the notes column.

# %%
report = train.train_reward_models(params)
analysis.display_table(report.comparison, missing="not defined for this variant (see the text above)")

# %%
plots.reward_learning_curves(report, params);

# %% [markdown]
# ### Scores by label
#
# A useful reward model separates the candidates the simulation judged good ($R_\text{fut} \ge \delta$) from the
# others; overlap is noise in GRPO's advantages.

# %%
plots.reward_score_distributions(report, params);

# %% [markdown]
# ### Calibration of the classifier
#
# GRPO normalises rewards within a group, so calibration is not needed for training; it matters for reading
# $p_\phi$ as "chance this reply leads to a good outcome".

# %%
plots.reward_calibration(report, params);

# %% [markdown]
# ## The reward function GRPO uses
#
# `rewards.load_reward_function(params)` returns a picklable callable with TRL's reward-function signature
# `f(prompts, completions, history=..., **kwargs) -> list[float]` for the variant in `grpo.reward_model`. It
# loads the saved adapter once per process, scores in batches without gradients and strips reasoning before
# scoring. Here it scores all candidates of two held-out contexts, next to their simulated $R_\text{fut}$
# (the loaded model is kept in `scorers` for the validity cards below):

# %%
scorers = scorer.ScorerCache()
analysis.display_table(rewards.reward_examples(params, splits.test, n_contexts=2, cache=scorers))

# %% [markdown]
# ## Do the judges know a helped seeker? Validity cards on real conversations
#
# Everything above checks the reward model against the *simulator*, whose verdicts come from the critic. Both
# rest on one assumption: the critic's verdict tracks whether a real seeker was helped. Real conversations with
# a known outcome test it. **Helped**: ESConv conversations whose seeker reported an emotional intensity at
# least `validation.min_intensity_drop` points lower after the chat than before (a seeded sample). **Not
# helped**: the conversations the ESConv authors left out because the seeker reported no improvement or low
# empathy/relevance. (ESConv conversations the simulation drew contexts from are left out.) Each judge gets a
# card:
#
# * **ROC-AUC** of its score for "helped" (0.5: chance; below 0.5 it prefers the failures), with a stratified
#   bootstrap 95% interval and the Mann-Whitney p; Spearman $\rho$ with the intensity drop;
# * mean score and **top label** per group, the share of **unparsable answers** and of conversations left
#   **without a verdict**;
# * the same AUC for a **trivial baseline**, the number of turns, so length is never mistaken for judgement.
#
# The judges: the simulation's **critic** (its model, mode and window: each conversation's last
# `data.max_history_turns` turns, as it sees the end of a rollout), the **evaluation critic** when it is
# another judge (the card that applies to the SR/AT of notebook 05 is named in `validity.json`), the **reward
# model** GRPO uses (`grpo.reward_model`) scoring the real final supporter turn in its context, and the
# **learned critic**.
#
# ### The learned critic
#
# `critic_mode: learned` replaces the LLM's verdict by a classifier grounded in what seekers reported: a
# two-class head on the reward-model backbone (LoRA, the same trainer as the variants above) that reads a
# conversation's last `data.max_history_turns` turns. Its examples: whole conversations (helped: label 1; the
# failed ones: 0) and, where the seeker rated the help turn by turn, the conversation up to a rating
# $\ge 4$ (1) or $\le 2$ (0). Train and validation are split by conversation; its card is computed on
# conversations it never saw (`validation.learned_critic.heldout_fraction` of each card group). Its score
# $2\,P(\text{helped}) - 1 \in [-1, 1]$ keeps the critic's meaning, so success is still score $>$
# `success_threshold`. It is trained here, as a step of its own, once per run (reused while its settings and
# data are unchanged); the cards below only read it.

# %%
if critic.learned_critic_wanted(params):
    lc = critic.train_learned_critic(params)
    split = ", ".join(f"{n} {k}" for k, n in lc["conversations"].items())
    ex = lc["train"]
    print(f"learned critic: {'reused (same settings and data)' if lc['reused'] else 'trained'}; conversations: {split}; "
          f"{ex.get('examples')} training examples, {ex.get('helped')} of them helped, "
          f"{ex.get('feedback_prefixes')} from turn-by-turn ratings")

# %%
cards = validation.validity_cards(params, cache=scorers)
for note in cards.notes:
    print("note:", note)
for line in cards.summaries():
    print(line)
print("evaluation critic's card:", cards.evaluation_critic.get("card") or cards.evaluation_critic.get("note"))
analysis.display_table(cards.table(), digits=2, transpose=True)

# %% [markdown]
# Left: each judge's scores of the two groups (a judge that knows a helped seeker puts the left box higher);
# right: the ROC curves, with the turn-count baseline dashed and chance dotted.

# %%
plots.reward_validity(cards, params);

# %% [markdown]
# ## Artefacts
#
# Under `reward_model/`: per variant `adapter/` (LoRA + score head), `rm_config.json`, `metrics.json`,
# `test_predictions.csv`, `log_history.json`; `comparison.csv`, `splits.csv`, `validity.{json,csv}` (the cards
# and every judge's score per real conversation), `learned_critic/` (its adapter, config and record), the figures, and `stage.json` (the settings this stage ran with). Notebook 04 reads the adapter of
# `grpo.reward_model` through `rewards.load_reward_function`.

# %%
analysis.display_table(pd.DataFrame({"file": sorted(str(p.relative_to(params.run_dir)) for p in stage_dir.rglob("*")
                                                    if p.is_file() and "adapter" not in p.parts)}))
