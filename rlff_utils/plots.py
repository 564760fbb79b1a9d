"""Figures the notebooks show, every stage's in one place. Each ``plot_*`` function takes tidy
data, returns a matplotlib Figure and optionally saves it, so the analysis notebook can redraw
any stage's figure from the files a run wrote. Where a stage saves a figure into its run folder,
a function named after the figure takes the stage's result and the params and saves it under its
:class:`rlff_utils.runs.RunLayout` name, so a notebook makes each figure with one call.

Every figure follows the same rules: each axis is labelled in words with its unit; steps, turns
and k get integer ticks; a panel whose series is constant (or empty) says so inside the
panel (a text artist with gid :data:`NOTE`); lines that coincide are shifted sideways and named in
a note; legends sit outside the data area; titles name the datasets actually plotted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from . import grpo, runs

if TYPE_CHECKING:  # pragma: no cover
    from .params import RunParams
    from .reward.train import RewardModelReport
    from .validation import ValidityReport

NOTE = "rlff-note"  # gid of the in-panel notes (degenerate panels, coinciding lines)
DATASET_NAMES = {"esconv": "ESConv", "extes": "ExTES"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


# ---- conventions ------------------------------------------------------------------------------


def _save(fig, path: str | Path | None):
    """Save ``fig`` (when ``path``), with the run's purpose in its corner (:func:`mark_purpose`)."""
    if path is not None:
        mark_purpose(fig, _purpose_of(Path(path)))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


PURPOSE_MARK = "rlff-purpose"  # gid of the purpose text in a figure's corner


def _purpose_of(path: Path) -> str | None:
    """The purpose of the run a figure is saved in (its ``params.yaml``, up to three folders up)."""
    from .report import run_purpose

    for folder in list(path.parents)[:3]:
        if (folder / "params.yaml").is_file():
            return run_purpose(folder)
    return None


def mark_purpose(fig, purpose: str | None) -> None:
    """A smoke, planted or test run's figure says so in its lower-right corner, so a copied
    figure does not pass for a result."""
    from .report import INTERNAL_RUNS

    if purpose not in INTERNAL_RUNS or any(t.get_gid() == PURPOSE_MARK for t in fig.texts):
        return
    # below the figure's lower-right corner: the tight bounding box of the saved file grows to hold it
    fig.text(0.995, -0.01, f"{purpose} run: checks the code, not a result", ha="right", va="top", fontsize=8,
             color="#7a5c00", gid=PURPOSE_MARK,
             bbox={"boxstyle": "round,pad=0.25", "facecolor": "#fff3cd", "edgecolor": "#e0c36a"})


def system_colors(names: Iterable[str]) -> dict[str, tuple]:
    """One colour per evaluated system on every page and figure: the default systems
    (``EvaluationParams``' order) keep theirs, other systems take the next ones in order of
    appearance. A ``run / system`` label takes its system's colour."""
    from .params.schema import EvaluationParams

    palette = sns.color_palette("tab10", 10)
    known = [s.name for s in EvaluationParams().systems]
    out, extra = {}, len(known)
    for name in dict.fromkeys(map(str, names)):
        system = name.rsplit(" / ", 1)[-1]
        if system in known:
            out[name] = palette[known.index(system) % 10]
        else:
            out[name] = palette[extra % 10]
            extra += 1
    return out


def _subplots(nrows: int, ncols: int, figsize: tuple[float, float], **kw):
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", squeeze=False, **kw)
    for ax in axes.flat:
        ax.ticklabel_format(useOffset=False)  # a flat series reads 0.5, not 1e-12 + 5e-1
    return fig, axes


def integer_ticks(ax, axis: str = "x") -> None:
    """Ticks on whole numbers only (steps, turns, k), even when the axis spans one value."""
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def note(ax, text: str, where: str = "top"):
    """A grey note inside the panel (``where``: top, bottom or center), tagged :data:`NOTE`."""
    y = {"top": 0.93, "bottom": 0.07, "center": 0.5}[where]
    return ax.text(0.5, y, text, transform=ax.transAxes, ha="center", va="center", fontsize=8.5, color="#555555",
                   gid=NOTE, bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "#cccccc", "alpha": 0.9})


def notes(fig) -> list[str]:
    """The texts of every note in a figure (what the tests and a reader check)."""
    return [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == NOTE]


def _constant(values: Iterable) -> float | None:
    v = pd.Series(list(values), dtype=float).dropna()
    return float(v.iloc[0]) if len(v) and np.allclose(v, v.iloc[0]) else None


def note_if_constant(ax, values: Iterable, n: int, unit: str = "steps", what: str | None = None) -> str | None:
    """Mark a panel whose series is one value over ``n`` ``unit`` (or empty); placed away from the line.
    ``what`` words a constant 0 ("no format-compliant completion in 4 steps")."""
    values = list(values)
    if not any(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values):
        return note(ax, "no value logged", "center").get_text()
    c = _constant(values)
    if c is None:
        return None
    text = f"no {what} in {n} {unit}" if (what and c == 0) else f"constant {c:.4g} over {n} {unit}"
    lo, hi = ax.get_ylim()
    upper = hi > lo and (c - lo) / (hi - lo) > 0.5
    return note(ax, text, "bottom" if upper else "top").get_text()


def legend_outside(ax, title: str | None = None, **kw):
    """The axes' legend to the right of its data area (seaborn's legend is moved there too)."""
    if ax.get_legend() is not None and not kw.get("handles"):
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False, fontsize=8,
                        title=title if title is not None else ax.get_legend().get_title().get_text())
        return ax.get_legend()
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False, fontsize=8, title=title, **kw)


def dataset_label(datasets: Iterable[str]) -> str:
    names = [DATASET_NAMES.get(d, d) for d in sorted({d for d in datasets if isinstance(d, str) and d})]
    return " + ".join(names) if names else "no dataset"


def _metric(table: pd.DataFrame, name: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(value, lo, hi) of a metric from ``NAME`` + ``NAME_ci95`` pairs or ``name``/``name_lo``/``name_hi``."""
    if name in table and f"{name}_ci95" in table:
        ci = table[f"{name}_ci95"].map(lambda x: x if isinstance(x, (list, tuple)) else (math.nan, math.nan))
        return table[name].astype(float), ci.map(lambda x: x[0]).astype(float), ci.map(lambda x: x[1]).astype(float)
    low = name.lower()
    return table[low].astype(float), table[f"{low}_lo"].astype(float), table[f"{low}_hi"].astype(float)


# ---- data (notebook 01) ---------------------------------------------------------------------


def plot_data_overview(frame: pd.DataFrame, strategies: pd.DataFrame, path: str | Path | None = None):
    """Dialogue lengths, strategy use, emotion and problem types, and the seeker's reported
    emotion-intensity change: the signals later stages are trained and validated against."""
    datasets = sorted(frame["dataset"].dropna().unique()) if "dataset" in frame else []
    several = len(datasets) > 1
    fig, axes = _subplots(2, 3, (18, 9))
    ax = axes[0, 0]
    sns.histplot(frame, x="turns", hue="dataset" if several else None, bins=30, ax=ax)
    ax.set(title="dialogue length", xlabel="turns per dialogue", ylabel="dialogues")
    integer_ticks(ax)
    if several:
        legend_outside(ax, "dataset")
    ax = axes[0, 1]
    if len(strategies):
        sns.barplot(strategies, y="strategy", x="count", hue="dataset" if several else None, ax=ax)
        if several:
            legend_outside(ax, "dataset")
    else:
        note(ax, "no strategy annotations", "center")
    ax.set(title="supporter strategies", xlabel="supporter turns", ylabel="strategy")
    for ax, col, what in ((axes[0, 2], "emotion_type", "emotion type"), (axes[1, 0], "problem_type", "problem type")):
        order = frame[col].value_counts().index[:12]
        sns.countplot(frame, y=col, order=order, ax=ax)
        ax.set(xlabel="dialogues", ylabel=what)
    axes[0, 2].set_title("emotion types (12 most frequent)")
    # ExTES has no problem type: its scene fills the field
    axes[1, 0].set_title({"esconv": "problem types", "extes": "scenes (ExTES)"}.get(
        datasets[0] if len(datasets) == 1 else "", "problem types (ESConv) and scenes (ExTES)"))
    survey = frame.dropna(subset=["initial_intensity", "final_intensity"])
    ax = axes[1, 1]
    if len(survey):
        melted = survey.melt(value_vars=["initial_intensity", "final_intensity"], var_name="when", value_name="intensity")
        melted["when"] = melted["when"].map({"initial_intensity": "before", "final_intensity": "after"})
        sns.countplot(melted, x="intensity", hue="when", hue_order=["before", "after"], ax=ax)
        legend_outside(ax, "reported")
        sns.countplot(survey, x="intensity_drop", ax=axes[1, 2])
    else:
        for a in axes[1, 1:]:
            note(a, f"no seeker survey in {dataset_label(datasets)}", "center")
    ax.set(title="seeker's emotion intensity (survey)", xlabel="intensity (1 = weak … 5 = strong)", ylabel="dialogues")
    axes[1, 2].set(title="intensity drop", xlabel="initial − final intensity (points)", ylabel="dialogues")
    fig.suptitle(f"{dataset_label(datasets)}: {len(frame):,} dialogues")
    return _save(fig, path)


# ---- evaluation and analysis (notebooks 05, 06) ---------------------------------------------


def plot_sr_at_k(long: pd.DataFrame, path: str | Path | None = None, hue: str = "system"):
    """SR@k curves: how fast each system solves cases, not only how often. Curves that coincide
    (several systems at 0, say) are shifted sideways by a small amount and named in a note."""
    fig, axs = _subplots(1, 1, (7.5, 4.5))
    ax = axs[0, 0]
    names = list(dict.fromkeys(long[hue])) if len(long) else []
    width = min(0.3, 0.08 * max(len(names) - 1, 0))
    for i, name in enumerate(names):
        g = long[long[hue] == name].sort_values("k")
        dx = (i / (len(names) - 1) - 0.5) * width if len(names) > 1 else 0.0
        ax.plot(g["k"] + dx, g["SR@k"], marker=MARKERS[i % len(MARKERS)], ms=6, lw=1.5, label=name, alpha=0.9,
                color=system_colors(names)[str(name)])
    ax.set(xlabel="turns k", ylabel="share of cases solved within k turns", ylim=(-0.03, 1.03), title="SR@k")
    integer_ticks(ax)
    if names:
        legend_outside(ax, hue.replace("_", " "))
        curves = {n: tuple(np.round(long[long[hue] == n].sort_values("k")["SR@k"].astype(float), 6)) for n in names}
        groups: dict[tuple, list[str]] = {}
        for n, c in curves.items():
            groups.setdefault(c, []).append(n)
        same = [g for g in groups.values() if len(g) > 1]
        if same:
            text = "\n".join("same curve (shifted sideways): " + ", ".join(g) for g in same)
            ax.text(1.02, 0.0, text, transform=ax.transAxes, ha="left", va="bottom", fontsize=8, color="#555555",
                    gid=NOTE, wrap=True)
    else:
        note(ax, "no evaluated system", "center")
    return _save(fig, path)


def plot_system_bars(table: pd.DataFrame, path: str | Path | None = None, label: str = "system"):
    """SR and AT per system with their bootstrap 95% intervals (``SR``/``SR_ci95`` columns as the
    evaluation writes them, or ``sr``/``sr_lo``/``sr_hi`` as :func:`rlff_utils.analysis.evaluation_table`)."""
    fig, axes = _subplots(1, 2, (12, 4.4))
    names = table[label].astype(str).tolist()
    colors = [system_colors(names)[n] for n in names]
    for ax, metric, scale, ylabel, title in (
        (axes[0, 0], "SR", 100.0, "success rate (% of cases)", "success rate (95% CI)"),
        (axes[0, 1], "AT", 1.0, "average turns (turns)", "average turns (95% CI; lower is better)"),
    ):
        value, lo, hi = (s * scale for s in _metric(table, metric))
        err = [(value - lo).clip(lower=0).fillna(0), (hi - value).clip(lower=0).fillna(0)]
        x = np.arange(len(names))
        ax.bar(x, value.fillna(0), yerr=err, capsize=4, color=colors[: len(names)])
        for xi, v in zip(x, value):
            ax.annotate("n/a" if pd.isna(v) else f"{v:.1f}" if scale != 1 else f"{v:.2f}", (xi, 0 if pd.isna(v) else v),
                        xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set(xlabel=label.replace("_", " "), ylabel=ylabel, title=title)
        c = _constant(value)
        if metric == "SR":
            ax.set_ylim(0, 118)  # headroom for the value labels and a note
            ax.set_yticks(range(0, 101, 20))
        else:
            ax.set_ylim(0, 1.3 * float(np.nanmax([hi.max(), value.max(), 0.0]) or 1.0))
        if len(names) > 1 and c is not None:
            note(ax, f"the same for every {label.replace('_', ' ')}: {c:.3g}", "top")
    return _save(fig, path)


def plot_win_rates(rates: pd.DataFrame, path: str | Path | None = None):
    """Stacked win / tie / lose shares of the main system against each baseline, per criterion."""
    baselines = list(dict.fromkeys(rates["baseline"]))
    fig, axes = _subplots(1, max(len(baselines), 1), (4.6 * max(len(baselines), 1) + 1.5, 3.8), sharey=True)
    colors = {"win": "#4c9a2a", "tie": "#bbbbbb", "lose": "#c0392b"}
    for ax, b in zip(axes[0], baselines):
        g = rates[rates["baseline"] == b].set_index("criterion")[["win", "tie", "lose"]]
        empty = g.isna().all(axis=1)
        g = g.fillna(0)
        left = pd.Series(0.0, index=g.index)
        for k in ("win", "tie", "lose"):
            ax.barh(g.index, g[k], left=left, color=colors[k])
            left += g[k]
        ax.set(xlim=(0, 1), title=f"vs {b}", xlabel="share of judged pairs", ylabel="criterion")
        if empty.all():
            note(ax, "no parsable judgement", "center")
        elif (g["tie"] == 1).all():
            note(ax, "every judged pair a tie", "center")
        for criterion in g.index[empty] if not empty.all() else []:
            ax.text(0.5, criterion, "no parsable judgement", ha="center", va="center", fontsize=8,
                    color="#555555", gid=NOTE)
    fig.legend(handles=[Patch(color=c, label=k) for k, c in colors.items()], loc="outside right upper", frameon=False, fontsize=8)
    return _save(fig, path)


def plot_r_fut_distribution(frame: pd.DataFrame, path: str | Path | None = None):
    """R_fut of every judged candidate of the simulation (``analysis.reward_dataset_table``), by
    end reason (one run) or by run (several); dashed: the label threshold δ."""
    fig, axs = _subplots(1, 1, (8, 4.2))
    ax = axs[0, 0]
    runs_ = list(dict.fromkeys(frame["run"])) if "run" in frame and len(frame) else []
    hue = "run" if len(runs_) > 1 else ("end_reason" if "end_reason" in frame else None)
    if len(frame):
        sns.histplot(frame, x="r_fut", hue=hue, bins=20, multiple="stack" if hue == "end_reason" else "layer", ax=ax)
        integer_ticks(ax, "y")  # counts of candidates
        if hue:
            legend_outside(ax, hue.replace("_", " "))
        for r, g in frame.groupby("run") if "run" in frame else []:
            delta = _constant(g["label_threshold"]) if "label_threshold" in g else None
            if delta is not None:
                ax.axvline(delta, color="black", ls="--", lw=1)
                ax.annotate(f" δ = {delta:.2f}" + (f" ({r})" if len(runs_) > 1 else ""), (delta, 1), xycoords=("data", "axes fraction"),
                            va="top", fontsize=8)
        c = _constant(frame["r_fut"])
        if c is not None:
            note(ax, f"all {len(frame)} candidates have R_fut = {c:g}", "top")
    else:
        note(ax, "no reward dataset (notebook 02 has not run)", "center")
    ax.set(title="R_fut of the simulated candidates (dashed: label threshold δ)",
           xlabel="R_fut (future-oriented reward of a candidate)", ylabel="candidate replies")
    return _save(fig, path)


def plot_rm_score_vs_r_fut(predictions: pd.DataFrame, path: str | Path | None = None):
    """Each reward-model variant's held-out score against the R_fut the simulation measured
    for the same candidate (``analysis.reward_model_predictions``); Spearman ρ in the title."""
    variants = list(dict.fromkeys(predictions["variant"])) if len(predictions) else []
    n = max(len(variants), 1)
    fig, axes = _subplots(1, n, (3.9 * n + 1.2, 3.9))
    several = "run" in predictions and predictions["run"].nunique() > 1
    for ax, v in zip(axes[0], variants):
        g = predictions[predictions["variant"] == v].dropna(subset=["r_fut", "score"])
        sns.scatterplot(g, x="r_fut", y="score", hue="run" if several else None, ax=ax, alpha=0.75, legend=ax is axes[0, -1])
        ok = len(g) > 2 and g["r_fut"].nunique() > 1 and g["score"].nunique() > 1
        rho = g["r_fut"].corr(g["score"], method="spearman") if ok else math.nan
        ax.set(title=f"{v}: Spearman ρ = {'n/a' if pd.isna(rho) else f'{rho:.2f}'} (n = {len(g)})",
               xlabel="R_fut of the candidate (simulation)", ylabel="reward-model score")
        c = _constant(g["score"])
        if c is not None and len(g):
            note(ax, f"constant score {c:.3g}: no ranking", "top")
        elif not len(g):
            note(ax, "no held-out prediction", "center")
    if several:
        legend_outside(axes[0, -1], "run")
    if not variants:
        note(axes[0, 0], "no reward-model predictions (notebook 03 has not run)", "center")
        axes[0, 0].set(xlabel="R_fut of the candidate (simulation)", ylabel="reward-model score")
    return _save(fig, path)


# ---- simulation (notebook 02) ----------------------------------------------------------------


def plot_simulation(frame: pd.DataFrame, by_turn: pd.DataFrame, path: str | Path | None = None):
    """The reward signal the simulation produced: R_fut by outcome (the goal bonus separates the
    modes), how fast rollouts reach the goal, and the label balance per emotion type (a reward
    model learns little from a group whose labels are all one class)."""
    fig, axes = _subplots(1, 3, (18, 4.8))
    ax = axes[0, 0]
    if len(frame):
        sns.histplot(frame, x="r_fut", hue="end_reason", bins=20, multiple="stack", ax=ax)
        legend_outside(ax, "end reason")
        delta = frame.attrs.get("label_threshold")
        if delta is not None:
            ax.axvline(delta, color="black", linestyle="--", linewidth=1)
            ax.annotate(f" δ = {delta:.2f}", (delta, 1), xycoords=("data", "axes fraction"), va="top", fontsize=8)
    ax.set(title="R_fut by end reason (dashed: label threshold δ)", xlabel="R_fut (future-oriented reward)",
           ylabel="trajectories")
    ax = axes[0, 1]
    ax.set_ylim(-0.03, 1.03)
    if len(by_turn):
        ax.plot(by_turn["turn"], by_turn["success_within"], marker="o")
        c = _constant(by_turn["success_within"])
        if c == 0:
            note(ax, f"flat: no rollout reached the goal in {int(by_turn['turn'].max())} turns", "top")
        elif c is not None:
            note_if_constant(ax, by_turn["success_within"], len(by_turn), "turns")
    else:
        note(ax, "no trajectory", "center")
    integer_ticks(ax)
    ax.set(title="success by turn", xlabel="turn k of the rollout", ylabel="share of rollouts at the goal by turn k")
    ax = axes[0, 2]
    if len(frame):
        share = frame.groupby("emotion_type")["label"].agg(["mean", "size"]).sort_values("size", ascending=False).head(12)
        ax.barh(share.index, share["mean"], color="#4c9a2a", label="label 1 (R_fut ≥ δ)")
        ax.barh(share.index, 1 - share["mean"], left=share["mean"], color="#c0392b", label="label 0")
        for i, n in enumerate(share["size"]):
            ax.text(1.01, i, f"n={n}", va="center", fontsize=8)
        ax.set_xlim(0, 1.12)
        ax.invert_yaxis()
        legend_outside(ax)
    ax.set(title="label balance per emotion type", xlabel="share of candidates", ylabel="emotion type")
    return _save(fig, path)


# ---- reward model (notebook 03) ---------------------------------------------------------------


def plot_calibration(predictions: pd.DataFrame, path: str | Path | None = None, n_bins: int = 5):
    """Reliability of P(positive) for the two-class heads (trained and random): mean predicted
    probability per bin against the observed positive rate, with the bins' sizes underneath."""
    from sklearn.calibration import calibration_curve

    from .reward.variants import NUM_LABELS

    probs = predictions[predictions["variant"].map(lambda v: NUM_LABELS.get(v) == 2)]
    fig, (ax, ax_hist) = plt.subplots(2, 1, figsize=(6.8, 6.5), height_ratios=[3, 1.3], sharex=True, layout="constrained")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    drawn = 0
    for v, g in probs.groupby("variant"):
        if g["label"].nunique() < 2:
            continue
        frac, mean_p = calibration_curve(g["label"], g["score"], n_bins=n_bins, strategy="uniform")
        ax.plot(mean_p, frac, marker="o", label=v)
        drawn += 1
    ax.set(xlabel="mean predicted P(R_fut ≥ δ) in the bin", ylabel="observed share with label 1",
           title="calibration on the test split", xlim=(0, 1), ylim=(-0.02, 1.02))
    if not drawn:
        note(ax, "no two-class variant with both labels in the test split", "center")
    legend_outside(ax)
    if len(probs):
        sns.histplot(probs, x="score", hue="variant", bins=np.linspace(0, 1, 21), element="step", ax=ax_hist)
        legend_outside(ax_hist, "variant")
    ax_hist.set(xlabel="predicted P(R_fut ≥ δ)", ylabel="test examples")
    return _save(fig, path)


def plot_score_distributions(predictions: pd.DataFrame, path: str | Path | None = None):
    """Each variant's held-out scores split by the simulated label: separated boxes are what a
    useful reward model looks like; overlapping ones give GRPO noise."""
    variants = list(dict.fromkeys(predictions["variant"]))
    fig, axes = _subplots(1, max(1, len(variants)), (3.6 * max(1, len(variants)), 3.9))
    order = ["R_fut < δ", "R_fut ≥ δ"]
    for ax, v in zip(axes[0], variants):
        g = predictions[predictions["variant"] == v].assign(label=lambda f: f["label"].map(dict(enumerate(order))))
        sns.boxplot(g, x="label", y="score", order=order, ax=ax, color="white", showfliers=False)
        sns.stripplot(g, x="label", y="score", order=order, ax=ax, hue="label", hue_order=order, legend=False, alpha=0.7)
        ax.set(title=v, xlabel="simulated label", ylabel="reward-model score")
        for i, label in enumerate(order):
            if not (g["label"] == label).any():
                ax.text(i, 0.5, "no held-out\ncandidate", transform=ax.get_xaxis_transform(), ha="center",
                        va="center", fontsize=8, color="#555555", gid=NOTE)
        c = _constant(g["score"])
        if c is not None:
            note(ax, f"constant score {c:.3g}", "top")
    fig.suptitle("held-out scores by simulated label")
    return _save(fig, path)


def plot_learning_curves(log: pd.DataFrame, path: str | Path | None = None):
    """Training and validation loss per variant (losses differ by variant: CE, MSE, BT)."""
    variants = list(dict.fromkeys(log["variant"])) or ["(none)"]
    fig, axes = _subplots(1, len(variants), (3.8 * len(variants) + 1, 3.5))
    for ax, v in zip(axes[0], variants):
        g = log[log["variant"] == v]
        if len(g):
            sns.lineplot(g, x="epoch", y="loss", hue="split", marker="o", ax=ax, legend=ax is axes[0, -1])
        else:
            note(ax, "no training log", "center")
        ax.set(title=v, xlabel="epoch (fractions: logged within an epoch)", ylabel="loss (the variant's own)")
    if axes[0, -1].get_legend() is not None:
        legend_outside(axes[0, -1], "split")
    return _save(fig, path)


def _card_scores(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """The conversations and scores behind card ``key`` of a validity frame: group, score (NaN:
    no verdict), on the held-out conversations for the learned critic's cards."""
    column = "critic" if key == "critic_heldout" else key
    f = frame[frame["heldout"].astype(bool)] if key in ("critic_heldout", "learned_critic") else frame
    return f.assign(score=pd.to_numeric(f.get(f"{column}_score"), errors="coerce"))[["group", "score", "turns"]]


VALIDITY_GROUPS = {"success": "helped (intensity drop)", "failed": "not helped (failed)"}


def plot_validity(frame: pd.DataFrame, cards: dict, path: str | Path | None = None):
    """Each judge's scores of real conversations by outcome group (one panel per judge), and the
    ROC curves of every card with the turn-count baseline (last panel). ``cards``: key ->
    :class:`rlff_utils.validity.ValidityCard` (a :class:`~rlff_utils.validation.ValidityReport`'s)."""
    from sklearn.metrics import roc_curve

    keys = [k for k in cards if k != "critic_heldout"] or ["(none)"]
    fig, axes = _subplots(1, len(keys) + 1, (3.4 * len(keys) + 4.6, 3.9))
    order = list(VALIDITY_GROUPS.values())
    for ax, key in zip(axes[0], keys):
        if key not in cards:
            note(ax, "no card: see the notes", "center")
            ax.set(title="validity", xlabel="seeker's outcome", ylabel="judge's score")
            continue
        g = _card_scores(frame, key).dropna(subset=["score"]).assign(outcome=lambda f: f["group"].map(VALIDITY_GROUPS))
        if len(g):
            sns.boxplot(g, x="outcome", y="score", order=order, ax=ax, color="white", showfliers=False)
            sns.stripplot(g, x="outcome", y="score", order=order, ax=ax, hue="outcome", hue_order=order, legend=False,
                          alpha=0.6, size=3.5)
            c = _constant(g["score"])
            if c is not None:
                note(ax, f"constant score {c:.3g}", "top")
        else:
            note(ax, "no verdict", "center")
        card = cards[key]
        lo, hi = card.auc_ci95
        ax.set(title=f"{key.replace('_', ' ')}: AUC {card.auc:.2f} [{lo:.2f}, {hi:.2f}]", xlabel="seeker's outcome",
               ylabel="judge's score (its own scale)")
        ax.tick_params(axis="x", labelsize=8)
    ax = axes[0, -1]
    ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls=":", label="chance (AUC 0.5)")
    for i, (key, card) in enumerate(cards.items()):
        g = _card_scores(frame, key).dropna(subset=["score"])
        y = (g["group"] == "success").astype(int)
        if y.nunique() == 2:
            fpr, tpr, _ = roc_curve(y, g["score"])
            ax.plot(fpr, tpr, marker=MARKERS[i % len(MARKERS)], markersize=3, lw=1.4,
                    label=f"{key.replace('_', ' ')} (AUC {card.auc:.2f})")
    base = frame.dropna(subset=["turns"])
    if (base["group"] == "success").any() and (base["group"] == "failed").any():
        fpr, tpr, _ = roc_curve((base["group"] == "success").astype(int), base["turns"].astype(float))
        auc = next((c.baseline_auc for c in cards.values() if c.baseline), math.nan)
        ax.plot(fpr, tpr, color="#555555", ls="--", lw=1, label=f"turn count (baseline, AUC {auc:.2f})")
    ax.set(title="ROC: helped vs not helped", xlabel="false-positive rate\n(not-helped ones above the cut)",
           ylabel="true-positive rate\n(helped ones above the cut)", xlim=(0, 1), ylim=(0, 1.02))
    legend_outside(ax, "judge")
    fig.suptitle("validity on real ESConv conversations")
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


def reward_validity(report: "ValidityReport", params: "RunParams"):
    """``reward_model/validity.png``."""
    return plot_validity(report.frame, report.cards, runs.layout(params).rm_figure("validity"))


# ---- GRPO (notebooks 04, 06) -----------------------------------------------------------------


@dataclass(frozen=True)
class CurvePanel:
    title: str
    column: str
    ylabel: str
    std: str | None = None  # ±1 std band (over the step's completions)
    share: bool = False  # a share in [0, 1]
    zero_means: str | None = None  # how a constant 0 reads ("format-compliant completion")
    smooth: bool = False


def grpo_panels() -> list[CurvePanel]:
    """The panels of :func:`plot_grpo_curves`, over the columns :data:`rlff_utils.grpo.CURVE_COLUMNS` names."""
    c = grpo.CURVE_COLUMNS
    return [
        CurvePanel("total reward", c["reward"], "mean reward (R_fut + α·R_format)", c["reward_std"], smooth=True),
        CurvePanel("future-oriented reward", c["rewards/future_reward/mean"], "mean R_fut (reward-model score)",
                   c["rewards/future_reward/std"], smooth=True),
        CurvePanel("format compliance", "format_compliance", "share of completions well formed", share=True,
                   zero_means="format-compliant completion"),
        CurvePanel("groups without signal", c["frac_reward_zero_std"], "share of groups with equal rewards", share=True),
        CurvePanel("KL to the initial policy", c["kl"], "KL(π_θ ‖ π_ref) (nats per token)"),
        CurvePanel("policy entropy", c["entropy"], "mean token entropy (nats)"),
        CurvePanel("completion length", c["completions/mean_length"], "mean completion length (tokens)"),
        CurvePanel("completions cut at the length cap", c["completions/clipped_ratio"], "share of completions truncated",
                   share=True, zero_means="truncated completion"),
    ]


def smooth(values: pd.Series) -> pd.Series | None:
    """Light smoothing of a long curve (centred rolling mean over ~5% of the steps, at least 3);
    None when the curve is too short to need it (fewer than 10 points)."""
    n = len(values)
    if n < 10:
        return None
    return values.rolling(max(3, n // 20), center=True, min_periods=1).mean()


def plot_grpo_curves(curves: pd.DataFrame, path: str | Path | None = None):
    """GRPO training curves from the trainer's log history (``policy/curves.csv``, one run, or
    several with a ``run`` column): reward ± 1 std (band: spread over the step's completions; a
    smoothed line on long runs), R_fut, format compliance, groups without signal, KL, entropy,
    completion length and truncation. A panel that was never logged or stays constant says so."""
    panels = grpo_panels()
    fig, axes = _subplots(2, 4, (19, 8))
    by_run = list(curves.groupby("run", sort=False)) if "run" in curves and len(curves) else [(None, curves)]
    palette = dict(zip([r for r, _ in by_run], sns.color_palette(n_colors=max(len(by_run), 1))))
    smoothed_any = banded_any = False
    for ax, p in zip(axes.flat, panels):
        lengths, constants = [], []
        for run, g in by_run:
            if p.column not in g or g[p.column].isna().all():
                continue
            data = g[["step", p.column] + ([p.std] if p.std and p.std in g else [])].dropna(subset=[p.column]).sort_values("step")
            color = palette[run]
            sm = smooth(data[p.column]) if p.smooth else None
            ax.plot(data["step"], data[p.column], marker="o", ms=3, color=color, lw=1 if sm is not None else 1.5,
                    alpha=0.45 if sm is not None else 1.0)
            if sm is not None:
                ax.plot(data["step"], sm, color=color, lw=2)
                smoothed_any = True
            if p.std and p.std in data and data[p.std].notna().any():
                s = data[p.std].fillna(0)
                ax.fill_between(data["step"], data[p.column] - s, data[p.column] + s, color=color, alpha=0.18, lw=0)
                banded_any = True
            lengths.append(len(data))
            constants.append(_constant(data[p.column]))
        if p.share:
            ax.set_ylim(-0.05, 1.05)
        ax.set(title=p.title, xlabel="training step", ylabel=p.ylabel)
        integer_ticks(ax)
        if not lengths:
            reason = " (β = 0: no reference model)" if p.column == grpo.CURVE_COLUMNS["kl"] else ""
            note(ax, f"not logged{reason}", "center")
        elif all(c is not None for c in constants) and np.allclose(constants, constants[0]):
            if not p.share:  # centre the flat line instead of magnifying float noise
                pad = max(0.05 * abs(constants[0]), 0.05)
                ax.set_ylim(constants[0] - pad, constants[0] + pad)
            note_if_constant(ax, [constants[0]], max(lengths), "steps", p.zero_means)
    handles = [plt.Line2D([], [], color="grey", marker="o", ms=3, lw=1, label="per logged step")]
    if smoothed_any:
        handles.append(plt.Line2D([], [], color="grey", lw=2, label="smoothed (rolling mean)"))
    if banded_any:
        handles.append(Patch(color="grey", alpha=0.25, label="±1 std over the step's completions"))
    if len(by_run) > 1:
        handles += [plt.Line2D([], [], color=palette[r], lw=2, label=str(r)) for r, _ in by_run]
    fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=8)
    fig.suptitle("GRPO training" + (f" ({by_run[0][0]})" if len(by_run) == 1 and by_run[0][0] else ""))
    return _save(fig, path)


def plot_conditions(table: pd.DataFrame, path: str | Path | None = None):
    """SR of every system under every evaluation condition (simulator · seeker profile), with
    95% intervals: does a system's place survive another simulator or a harder seeker?
    ``table``: :func:`rlff_utils.evaluate.condition_table`."""
    fig, axes = _subplots(1, 1, (max(6.0, 1.6 * table["condition"].nunique() + 3), 4.2))
    ax = axes[0, 0]
    conds = list(dict.fromkeys(table["condition"]))
    names = list(dict.fromkeys(table["system"]))
    colors = system_colors(names)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        rows = table[table["system"] == name].set_index("condition").reindex(conds)
        x = np.arange(len(conds)) + (i - (len(names) - 1) / 2) * width
        sr = 100 * rows["SR"].astype(float)
        lo = 100 * rows["SR_ci95"].map(lambda c: c[0] if isinstance(c, (list, tuple)) else np.nan)
        hi = 100 * rows["SR_ci95"].map(lambda c: c[1] if isinstance(c, (list, tuple)) else np.nan)
        ax.errorbar(x, sr, yerr=[(sr - lo).clip(lower=0).fillna(0), (hi - sr).clip(lower=0).fillna(0)], fmt="o",
                    capsize=3, color=colors[name], label=name)
    c = _constant(100 * table["SR"].astype(float))
    if c is not None and len(table) > 1:
        note(ax, f"the same under every condition for every system: {c:.3g}%", "top")
    ax.set_xticks(np.arange(len(conds)), [c.replace(".", "\n", 1) for c in conds])
    ax.set(xlabel="condition (simulator, seeker profile)", ylabel="success rate (% of cases)",
           title="success rate per evaluation condition (95% CI)", ylim=(-5, 105))
    legend_outside(ax, "system")
    return _save(fig, path)
