"""Figures the notebooks show. Each function takes tidy data, returns a matplotlib Figure and
optionally saves it, so notebooks stay one call per figure and the analysis notebook can
redraw any stage's figure from the files a run wrote."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


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
