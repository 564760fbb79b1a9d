"""Figures the notebooks show, every stage's in one place. Each ``plot_*`` function takes tidy
data, returns a matplotlib Figure and optionally saves it, so the analysis notebook can redraw
any stage's figure from the files a run wrote. Where a stage saves a figure into its run folder,
a function named after the figure takes the stage's result and the params and saves it under its
:class:`rlff_utils.runs.RunLayout` name, so a notebook makes each figure with one call.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import runs

if TYPE_CHECKING:  # pragma: no cover
    from .params import RunParams
    from .reward.train import RewardModelReport
    from .reward.validation import HumanValidation


def _save(fig, path: str | Path | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


# ---- data (notebook 01) ---------------------------------------------------------------------


def plot_data_overview(frame: pd.DataFrame, strategies: pd.DataFrame, path: str | Path | None = None):
    """Dialogue lengths, strategy use, emotion and problem types, and the seeker's reported
    emotion-intensity change: the signals later stages are trained and validated against."""
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    sns.histplot(frame, x="turns", hue="dataset", bins=30, ax=axes[0, 0])
    axes[0, 0].set_title("dialogue length (turns)")
    if len(strategies):
        sns.barplot(strategies, y="strategy", x="count", hue="dataset", ax=axes[0, 1])
    axes[0, 1].set_title("supporter strategies")
    order = frame["emotion_type"].value_counts().index[:12]
    sns.countplot(frame, y="emotion_type", order=order, ax=axes[0, 2])
    axes[0, 2].set_title("emotion types")
    order = frame["problem_type"].value_counts().index[:12]
    sns.countplot(frame, y="problem_type", order=order, ax=axes[1, 0])
    axes[1, 0].set_title("problem types (ExTES: scene)")
    survey = frame.dropna(subset=["initial_intensity", "final_intensity"])
    if len(survey):
        melted = survey.melt(value_vars=["initial_intensity", "final_intensity"], var_name="when", value_name="intensity")
        sns.countplot(melted, x="intensity", hue="when", ax=axes[1, 1])
        sns.countplot(survey, x="intensity_drop", ax=axes[1, 2])
    axes[1, 1].set_title("seeker emotion intensity (survey)")
    axes[1, 2].set_title("intensity drop (initial − final)")
    fig.tight_layout()
    return _save(fig, path)


# ---- evaluation and analysis (notebooks 05, 06) ---------------------------------------------


def plot_sr_at_k(long: pd.DataFrame, path: str | Path | None = None, hue: str = "system"):
    """SR@k curves: how fast each system solves cases, not only how often."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(long, x="k", y="SR@k", hue=hue, marker="o", ax=ax)
    ax.set_xlabel("turns k")
    ax.set_ylabel("solved within k turns")
    ax.set_ylim(0, 1)
    ax.set_title("SR@k")
    fig.tight_layout()
    return _save(fig, path)


def plot_system_bars(table: pd.DataFrame, path: str | Path | None = None):
    """SR and AT per system with their bootstrap 95% intervals."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, metric in zip(axes, ("SR", "AT")):
        lo = table[f"{metric}_ci95"].map(lambda x: x[0])
        hi = table[f"{metric}_ci95"].map(lambda x: x[1])
        ax.bar(table["system"], table[metric], yerr=[table[metric] - lo, hi - table[metric]], capsize=4, color=sns.color_palette()[: len(table)])
        ax.set_title({"SR": "success rate (95% CI)", "AT": "average turns (95% CI; lower is better)"}[metric])
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return _save(fig, path)


def plot_win_rates(rates: pd.DataFrame, path: str | Path | None = None):
    """Stacked win / tie / lose shares of the main system against each baseline, per criterion."""
    baselines = list(dict.fromkeys(rates["baseline"]))
    fig, axes = plt.subplots(1, len(baselines), figsize=(5 * len(baselines), 3.8), squeeze=False)
    colors = {"win": "#4c9a2a", "tie": "#bbbbbb", "lose": "#c0392b"}
    for ax, b in zip(axes[0], baselines):
        g = rates[rates["baseline"] == b].set_index("criterion")[["win", "tie", "lose"]].fillna(0)
        left = pd.Series(0.0, index=g.index)
        for k in ("win", "tie", "lose"):
            ax.barh(g.index, g[k], left=left, color=colors[k], label=k)
            left += g[k]
        ax.set_xlim(0, 1)
        ax.set_title(f"vs {b}")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves_by_run(curves: pd.DataFrame, columns: list[str], path: str | Path | None = None):
    """One panel per logged quantity, one line per run (GRPO log history by step)."""
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    for ax, col in zip(axes[0], columns):
        sns.lineplot(curves.dropna(subset=[col]), x="step", y=col, hue="run", ax=ax, marker=".")
        ax.set_title(col)
    fig.tight_layout()
    return _save(fig, path)


# ---- simulation (notebook 02) ----------------------------------------------------------------


def plot_simulation(frame: pd.DataFrame, by_turn: pd.DataFrame, path: str | Path | None = None):
    """The reward signal the simulation produced: R_fut by outcome (the goal bonus separates the
    modes), how fast rollouts reach the goal, and the label balance per emotion type (a reward
    model learns little from a group whose labels are all one class)."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    if len(frame):
        sns.histplot(frame, x="r_fut", hue="end_reason", bins=20, multiple="stack", ax=axes[0])
        delta = frame.attrs.get("label_threshold")
        if delta is not None:
            axes[0].axvline(delta, color="black", linestyle="--", linewidth=1)
            axes[0].text(delta, axes[0].get_ylim()[1] * 0.95, " δ", va="top")
    axes[0].set_title("R_fut by end reason (dashed: label threshold δ)")
    if len(by_turn):
        sns.lineplot(by_turn, x="turn", y="success_within", marker="o", ax=axes[1])
        axes[1].set_xticks(by_turn["turn"])
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("goal reached within k turns")
    axes[1].set_title("success by turn")
    if len(frame):
        share = frame.groupby("emotion_type")["label"].agg(["mean", "size"]).sort_values("size", ascending=False)
        share = share.head(12)
        axes[2].barh(share.index, share["mean"], color="#4c9a2a", label="label 1")
        axes[2].barh(share.index, 1 - share["mean"], left=share["mean"], color="#c0392b", label="label 0")
        for i, n in enumerate(share["size"]):
            axes[2].text(1.01, i, f"n={n}", va="center", fontsize=8)
        axes[2].set_xlim(0, 1.15)
        axes[2].invert_yaxis()
        axes[2].legend(loc="lower right", fontsize=8)
    axes[2].set_title("label balance per emotion type")
    fig.tight_layout()
    return _save(fig, path)


# ---- reward model (notebook 03) ---------------------------------------------------------------


def plot_calibration(predictions: pd.DataFrame, path: str | Path | None = None, n_bins: int = 5):
    """Reliability of P(positive) for the two-class heads (trained and random): mean predicted
    probability per bin against the observed positive rate, with the bins' sizes underneath."""
    from sklearn.calibration import calibration_curve

    from .reward.variants import NUM_LABELS

    probs = predictions[predictions["variant"].map(lambda v: NUM_LABELS.get(v) == 2)]
    fig, (ax, ax_hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=[3, 1.3], sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    for v, g in probs.groupby("variant"):
        if g["label"].nunique() < 2:
            continue
        frac, mean_p = calibration_curve(g["label"], g["score"], n_bins=n_bins, strategy="uniform")
        ax.plot(mean_p, frac, marker="o", label=v)
    ax.set(ylabel="observed positive rate", title="calibration on the test split", xlim=(0, 1), ylim=(-0.02, 1.02))
    ax.legend(loc="upper left", fontsize=8)
    if len(probs):
        sns.histplot(probs, x="score", hue="variant", bins=np.linspace(0, 1, 21), element="step", ax=ax_hist)
    ax_hist.set(xlabel="predicted P(R_fut ≥ δ)")
    fig.tight_layout()
    return _save(fig, path)


def plot_score_distributions(predictions: pd.DataFrame, path: str | Path | None = None):
    """Each variant's held-out scores split by the simulated label: separated boxes are what a
    useful reward model looks like; overlapping ones give GRPO noise."""
    variants = list(dict.fromkeys(predictions["variant"]))
    fig, axes = plt.subplots(1, max(1, len(variants)), figsize=(3.6 * max(1, len(variants)), 3.8), squeeze=False)
    order = ["R_fut < δ", "R_fut ≥ δ"]
    for ax, v in zip(axes[0], variants):
        g = predictions[predictions["variant"] == v].assign(label=lambda f: f["label"].map(dict(enumerate(order))))
        sns.boxplot(g, x="label", y="score", order=order, ax=ax, color="white", showfliers=False)
        sns.stripplot(g, x="label", y="score", order=order, ax=ax, hue="label", hue_order=order, legend=False, alpha=0.7)
        ax.set(title=v, xlabel="", ylabel="score" if ax is axes[0][0] else "")
    fig.suptitle("held-out scores by simulated label")
    fig.tight_layout()
    return _save(fig, path)


def plot_learning_curves(log: pd.DataFrame, path: str | Path | None = None):
    """Training and validation loss per variant (losses differ by variant: CE, MSE, BT)."""
    variants = list(dict.fromkeys(log["variant"])) or ["(none)"]
    fig, axes = plt.subplots(1, len(variants), figsize=(3.8 * len(variants), 3.4), squeeze=False)
    for ax, v in zip(axes[0], variants):
        g = log[log["variant"] == v]
        if len(g):
            sns.lineplot(g, x="epoch", y="loss", hue="split", marker="o", ax=ax)
        ax.set(title=v)
    fig.tight_layout()
    return _save(fig, path)


def plot_human_validation(hv: "HumanValidation", path: str | Path | None = None):
    """The reward model's and the critic's view of real dialogues against the seeker's reported
    intensity drop; ρ in each title."""
    rho = {r["signal"]: r for r in hv.correlations.to_dict("records")}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, col, signal in (
        (axes[0], "rm_score", f"reward model ({hv.variant})"),
        (axes[1], "critic_score", "critic"),
    ):
        f = hv.frame.dropna(subset=[col, "intensity_drop"])
        if len(f):
            sns.regplot(f, x="intensity_drop", y=col, x_jitter=0.15, ax=ax, scatter_kws={"alpha": 0.6})
        r = rho.get(signal, {})
        value = r.get("spearman")
        rho_txt = "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"
        ax.set(
            title=f"{signal}: Spearman ρ = {rho_txt} (n = {r.get('n', 0)})",
            xlabel="seeker's intensity drop (initial − final)",
            ylabel=col.replace("_", " "),
        )
    fig.tight_layout()
    return _save(fig, path)


def reward_learning_curves(report: "RewardModelReport", params: "RunParams"):
    """``reward_model/learning_curves.png``."""
    return plot_learning_curves(report.log_frame(), runs.layout(params).rm_figure("learning_curves"))


def reward_score_distributions(report: "RewardModelReport", params: "RunParams"):
    """``reward_model/score_distributions.png``."""
    return plot_score_distributions(report.predictions, runs.layout(params).rm_figure("score_distributions"))


def reward_calibration(report: "RewardModelReport", params: "RunParams"):
    """``reward_model/calibration.png``."""
    return plot_calibration(report.predictions, runs.layout(params).rm_figure("calibration"))


def reward_human_validation(hv: "HumanValidation", params: "RunParams"):
    """``reward_model/human_validation.png``."""
    return plot_human_validation(hv, runs.layout(params).rm_figure("human_validation"))


# ---- GRPO (notebook 04) ------------------------------------------------------------------------

# (title, [(column, std column or None, label)])
GRPO_PANELS = [
    ("total reward R = R_fut + α·R_format", [("total_reward", "total_reward_std", "R")]),
    ("reward components", [("future_reward", "future_reward_std", "R_fut"), ("format_reward", "format_reward_std", "R_format")]),
    ("format compliance", [("format_compliance", None, "share of <think>…</think> + reply")]),
    ("groups without signal", [("frac_reward_zero_std", None, "frac_reward_zero_std")]),
    ("KL to the initial policy", [("kl", None, "KL")]),
    ("completion length (tokens)", [("completion_length", None, "mean length")]),
]


def plot_grpo_curves(curves: pd.DataFrame, path: str | Path | None = None):
    """GRPO training curves from the trainer's log history (``policy/curves.csv``): six panels,
    one per quantity worth watching; a shaded band is ±1 std over the step's completions. A
    panel whose column was never logged (e.g. KL with beta = 0) says so."""
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(2, 3, figsize=(16, 8), sharex=True)
    for ax, (title, series) in zip(axes.flat, GRPO_PANELS):
        drawn = False
        for col, std, label in series:
            if col not in curves or curves[col].isna().all():
                continue
            data = curves[["step", col]].dropna()
            ax.plot(data["step"], data[col], marker="o", ms=3, label=label)
            if std and std in curves and not curves[std].isna().all():
                s = curves.loc[data.index, std].fillna(0)
                ax.fill_between(data["step"], data[col] - s, data[col] + s, alpha=0.2)
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
        elif len(series) > 1 or std:
            ax.legend(fontsize=8)
        if series[0][0] in ("format_compliance", "frac_reward_zero_std"):
            ax.set_ylim(-0.05, 1.05)  # shares
        ax.set_title(title, fontsize=10)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    return _save(fig, path)
