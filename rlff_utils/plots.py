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
