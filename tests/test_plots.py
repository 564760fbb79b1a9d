"""Every figure, built on small hand-made frames: labelled axes, integer steps/turns/k, notes on
degenerate panels and coinciding lines, legends off the data, titles that match the data."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from rlff_utils import grpo, plots
from rlff_utils.validity import validity_card


def _log_history(steps: int, format_reward: float = 0.0, kl: float | None = 0.0):
    """What TRL's GRPOTrainer logs, per step (the keys grpo.CURVE_COLUMNS reads) plus the final summary."""
    rng = np.random.default_rng(0)
    out = []
    for s in range(1, steps + 1):
        entry = {"step": s, "reward": 0.2 + 0.05 * s + rng.normal(0, 0.01), "reward_std": 0.1,
                 "rewards/future_reward/mean": 0.2 + 0.05 * s, "rewards/future_reward/std": 0.08,
                 "rewards/format_reward/mean": format_reward, "rewards/format_reward/std": 0.0,
                 "frac_reward_zero_std": 0.5, "completions/mean_length": 12.0 + s,
                 "completions/clipped_ratio": 1.0, "entropy": 2.0 - 0.01 * s, "loss": 0.0, "learning_rate": 1e-5}
        if kl is not None:
            entry["kl"] = kl
        out.append(entry)
    return out + [{"step": steps, "train_runtime": 10.0}]


def _data_frames(datasets=("esconv",)):
    rows = []
    for ds in datasets:
        for i in range(12):
            survey = ds == "esconv"
            rows.append({"id": f"{ds}{i}", "dataset": ds, "split": "train", "emotion_type": ["sadness", "anxiety"][i % 2],
                         "problem_type": ["job crisis", "breakup"][i % 2], "turns": 10 + i, "seeker_turns": 5,
                         "initial_intensity": 4 if survey else None, "final_intensity": (2 + i % 2) if survey else None,
                         "intensity_drop": (2 - i % 2) if survey else None})
    frame = pd.DataFrame(rows)
    for col in ("initial_intensity", "final_intensity", "intensity_drop"):
        frame[col] = frame[col].astype("Int64")
    strategies = pd.DataFrame([{"dataset": ds, "strategy": s, "count": n} for ds in datasets
                               for s, n in (("Question", 30), ("Reflection of feelings", 12))])
    return frame, strategies


def _sim_frames(success: bool):
    frame = pd.DataFrame({"r_fut": [0.1, 0.4, 0.6, 1.2] * 3, "end_reason": ["max_turns"] * 12,
                          "label": [0, 0, 1, 1] * 3, "emotion_type": ["sadness", "anxiety", "anger"] * 4})
    frame.attrs["label_threshold"] = 0.5
    by_turn = pd.DataFrame({"turn": [1, 2, 3], "success_within": [0.25, 0.5, 0.75] if success else [0.0, 0.0, 0.0]})
    return frame, by_turn


def _predictions():
    rows = []
    for v, slope in (("classification", 1.0), ("regression", 0.0), ("random", -0.3)):
        for i in range(8):
            rows.append({"run": "r", "variant": v, "r_fut": i / 8, "label": int(i >= 4), "score": 0.5 + slope * i / 16})
    return pd.DataFrame(rows)


def _validity():
    """A validity frame and cards: a critic that separates the groups, a reward model with one
    constant score, and the learned critic on the held-out half."""
    groups = ["success"] * 6 + ["failed"] * 6
    frame = pd.DataFrame({"dialogue_id": [str(i) for i in range(12)], "group": groups, "heldout": [i % 2 == 0 for i in range(12)],
                          "turns": [20 + i for i in range(12)], "intensity_drop": [2, 3, 2, 4, 2, 3] + [0, None, 1, 0, -1, None],
                          "critic_score": [0.5, 1.0, 0.5, 0.5, 1.0, -0.5, -0.5, 0.5, -1.0, -0.5, 0.5, -1.0],
                          "reward_model_score": [0.5] * 12,
                          "learned_critic_score": [0.8, None, 0.2, None, 0.9, None, -0.6, None, 0.1, None, -0.3, None]})
    cards = {}
    for key in ("critic", "reward_model", "learned_critic"):
        f = frame[frame["heldout"]] if key == "learned_critic" else frame
        cards[key] = validity_card(key, f[f.group == "success"][f"{key}_score"].tolist(),
                                   f[f.group == "failed"][f"{key}_score"].tolist(), baseline="turn count",
                                   baseline_success=f[f.group == "success"]["turns"].tolist(),
                                   baseline_failed=f[f.group == "failed"]["turns"].tolist(), samples=50)
    return frame, cards


def _eval_table():
    return pd.DataFrame({"system": ["vanilla", "rlff-esc", "chain-of-strategy"], "cases": [6, 6, 6],
                         "SR": [0.0, 0.0, 1 / 3], "SR_ci95": [(0.0, 0.0), (0.0, 0.0), (0.0, 2 / 3)],
                         "AT": [3.0, 3.0, 2.33], "AT_ci95": [(3.0, 3.0), (3.0, 3.0), (1.67, 3.0)]})


def _sr_at_k():
    return pd.DataFrame([{"system": s, "k": k, "SR@k": v} for s, curve in
                         (("vanilla", [0, 0, 0]), ("rlff-esc", [0, 0, 0]), ("base-reasoning", [0, 0, 0]),
                          ("chain-of-strategy", [0, 1 / 6, 1 / 3])) for k, v in enumerate(curve, 1)])


def _win_rates():
    return pd.DataFrame([{"baseline": b, "criterion": c, "win": w, "tie": 1 - w - 0.1, "lose": 0.1}
                         for b in ("vanilla", "chain-of-strategy") for c, w in (("empathy", 0.5), ("overall", 0.3))])


def _learning_log():
    return pd.DataFrame([{"variant": v, "epoch": e, "split": s, "loss": 1 / e + (0.1 if s == "valid" else 0)}
                         for v in ("classification", "ranking") for e in (1, 2, 3) for s in ("train", "valid")])


FIGURES = {
    "data_overview": lambda: plots.plot_data_overview(*_data_frames()),
    "data_overview_two_datasets": lambda: plots.plot_data_overview(*_data_frames(("esconv", "extes"))),
    "simulation": lambda: plots.plot_simulation(*_sim_frames(success=False)),
    "sr_at_k": lambda: plots.plot_sr_at_k(_sr_at_k()),
    "system_bars": lambda: plots.plot_system_bars(_eval_table()),
    "win_rates": lambda: plots.plot_win_rates(_win_rates()),
    "r_fut": lambda: plots.plot_r_fut_distribution(_sim_frames(True)[0].assign(run="r", label_threshold=0.5)),
    "rm_vs_r_fut": lambda: plots.plot_rm_score_vs_r_fut(_predictions()),
    "calibration": lambda: plots.plot_calibration(_predictions()),
    "score_distributions": lambda: plots.plot_score_distributions(_predictions()),
    "learning_curves": lambda: plots.plot_learning_curves(_learning_log()),
    "validity": lambda: plots.plot_validity(*_validity()),
    "grpo": lambda: plots.plot_grpo_curves(grpo.curves_frame(_log_history(4))),
    "grpo_one_step": lambda: plots.plot_grpo_curves(grpo.curves_frame(_log_history(1))),
    "grpo_runs": lambda: plots.plot_grpo_curves(pd.concat([grpo.curves_frame(_log_history(30)).assign(run="a"),
                                                          grpo.curves_frame(_log_history(12, 0.5)).assign(run="b")])),
}


@pytest.fixture(params=sorted(FIGURES))
def figure(request):
    fig = FIGURES[request.param]()
    fig.canvas.draw()
    yield request.param, fig
    plt.close(fig)


def test_every_axis_is_labelled_in_words_and_legends_sit_outside_the_data(figure):
    name, fig = figure
    for ax in fig.axes:
        assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), (name, ax.get_title())
        for label in (ax.get_xlabel(), ax.get_ylabel()):
            assert label not in {"frac_reward_zero_std", "success_within", "r_fut", "score", "count"}, (name, label)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    renderer = fig.canvas.get_renderer()
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            inner = ax.get_window_extent(renderer)
            overlap = min(box.x1, inner.x1) - max(box.x0, inner.x0) > 1 and min(box.y1, inner.y1) - max(box.y0, inner.y0) > 1
            assert not overlap, (name, ax.get_title(), [t.get_text() for t in leg.get_texts()])


def _ticks_are_integers(ax):
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    return bool(ticks) and all(float(t).is_integer() for t in ticks)


@pytest.mark.parametrize("name, xlabel", [
    ("grpo", "training step"), ("grpo_runs", "training step"), ("sr_at_k", "turns k"),
    ("simulation", "turn k of the rollout"), ("data_overview", "turns per dialogue"), ("grpo_one_step", "training step"),
])
def test_steps_turns_and_k_get_integer_ticks(name, xlabel):
    fig = FIGURES[name]()
    fig.canvas.draw()
    axes = [ax for ax in fig.axes if ax.get_xlabel() == xlabel]
    assert axes
    for ax in axes:
        assert _ticks_are_integers(ax), (name, ax.get_title(), list(ax.get_xticks()))
    plt.close(fig)


def test_grpo_figure_has_the_reward_panel_from_the_columns_grpo_writes(tmp_path):
    curves = grpo.curves_frame(_log_history(4, format_reward=0.0, kl=None))
    curves.to_csv(tmp_path / "curves.csv", index=False)  # what the policy stage writes, read back like 06 does
    fig = plots.plot_grpo_curves(pd.read_csv(tmp_path / "curves.csv"), tmp_path / "curves.png")
    by_title = {ax.get_title(): ax for ax in fig.axes}
    reward = by_title["total reward"]
    assert reward.get_ylabel() == "mean reward (R_fut + α·R_format)"
    assert len(reward.lines) == 1 and list(reward.lines[0].get_ydata()) == list(curves[grpo.CURVE_COLUMNS["reward"]])
    assert reward.collections, "the ±1 std band is drawn"
    for title in ("policy entropy", "completions cut at the length cap", "future-oriented reward"):
        assert by_title[title].lines, title
    texts = {title: [t.get_text() for t in ax.texts if t.get_gid() == plots.NOTE] for title, ax in by_title.items()}
    assert texts["format compliance"] == ["no format-compliant completion in 4 steps"]
    assert texts["KL to the initial policy"] == ["not logged (β = 0: no reference model)"]
    assert texts["groups without signal"] == ["constant 0.5 over 4 steps"]
    assert texts["total reward"] == []  # a moving curve carries no note
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    plt.close(fig)


def test_long_grpo_runs_get_a_smoothed_reward_line():
    fig = plots.plot_grpo_curves(grpo.curves_frame(_log_history(40)))
    reward = next(ax for ax in fig.axes if ax.get_title() == "total reward")
    assert len(reward.lines) == 2  # raw per step (faint) + rolling mean
    assert reward.lines[0].get_alpha() < 1 and reward.lines[1].get_alpha() in (None, 1.0)
    plt.close(fig)


def test_constant_series_are_noted_and_moving_ones_are_not():
    fig = plots.plot_simulation(*_sim_frames(success=False))
    assert plots.notes(fig) == ["flat: no rollout reached the goal in 3 turns"]
    plt.close(fig)
    fig = plots.plot_simulation(*_sim_frames(success=True))
    assert plots.notes(fig) == []
    plt.close(fig)
    fig = plots.plot_validity(*_validity())
    assert plots.notes(fig) == ["constant score 0.5"]  # the reward-model panel
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("critic: AUC 0.83 [") and titles[-1] == "ROC: helped vs not helped"
    assert len(fig.axes[-1].lines) == 1 + 3 + 1  # chance, three judges, the turn-count baseline
    plt.close(fig)


def test_coinciding_sr_at_k_curves_are_shifted_apart_and_named():
    fig = plots.plot_sr_at_k(_sr_at_k())
    ax = fig.axes[0]
    xs = {line.get_label(): tuple(line.get_xdata()) for line in ax.lines}
    zero = [xs[s] for s in ("vanilla", "rlff-esc", "base-reasoning")]
    assert len(set(zero)) == 3, "the three all-zero curves are drawn at distinct x"
    assert all(abs(a - round(a)) < 0.2 for x in zero for a in x)  # still next to their k
    assert len({line.get_marker() for line in ax.lines}) == 4
    (text,) = plots.notes(fig)
    assert all(s in text for s in ("vanilla", "rlff-esc", "base-reasoning")) and "chain-of-strategy" not in text
    plt.close(fig)


def test_data_overview_titles_follow_the_datasets():
    fig = plots.plot_data_overview(*_data_frames(("esconv",)))
    titles = " ".join(ax.get_title() for ax in fig.axes) + fig.get_suptitle()
    assert "ExTES" not in titles and "ESConv" in fig.get_suptitle()
    plt.close(fig)
    fig = plots.plot_data_overview(*_data_frames(("extes",)))
    assert "scenes (ExTES)" in [ax.get_title() for ax in fig.axes]
    assert any("no seeker survey in ExTES" in t for t in plots.notes(fig))
    plt.close(fig)
    fig = plots.plot_data_overview(*_data_frames(("esconv", "extes")))
    assert "ESConv + ExTES" in fig.get_suptitle()
    plt.close(fig)


def test_rm_score_vs_r_fut_titles_carry_spearman_and_flag_constant_scores():
    fig = plots.plot_rm_score_vs_r_fut(_predictions())
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "classification: Spearman ρ = 1.00 (n = 8)"
    assert titles[1].startswith("regression: Spearman ρ = n/a")
    assert plots.notes(fig) == ["constant score 0.5: no ranking"]
    plt.close(fig)
