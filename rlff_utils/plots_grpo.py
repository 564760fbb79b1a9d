"""Figures of notebook 04: GRPO training curves from the trainer's log history.

Kept apart from ``plots.py`` so the GRPO stage owns its figures; the analysis notebook can redraw
them from ``outputs/<run>/policy/curves.csv``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

# (title, [(column, std column or None, label)])
PANELS = [
    ("total reward R = R_fut + α·R_format", [("total_reward", "total_reward_std", "R")]),
    ("reward components", [("future_reward", "future_reward_std", "R_fut"), ("format_reward", "format_reward_std", "R_format")]),
    ("format compliance", [("format_compliance", None, "share of <think>…</think> + reply")]),
    ("groups without signal", [("frac_reward_zero_std", None, "frac_reward_zero_std")]),
    ("KL to the initial policy", [("kl", None, "KL")]),
    ("completion length (tokens)", [("completion_length", None, "mean length")]),
]


def plot_grpo_curves(curves: pd.DataFrame, path: str | Path | None = None):
    """Six panels, one per quantity the issue asks to watch; a shaded band is ±1 std over the
    step's completions. A panel whose column was never logged (e.g. KL with beta = 0) says so."""
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(2, 3, figsize=(16, 8), sharex=True)
    for ax, (title, series) in zip(axes.flat, PANELS):
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
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig
