"""The reward model and the critic against a human signal: ESConv's seeker survey.

After each ESConv conversation the seeker reported their emotional intensity before and after
(1–5). On real dialogues the simulation never used, :func:`validate_against_humans` computes the
Spearman ρ of (a) the reward model's mean score of the real supporter replies and (b) the critic's
judgement of the real dialogue with the seeker's intensity drop, each with a bootstrap interval.
Neither signal was trained on the survey, so this checks both against people rather than against
the simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import runs
from ..data import SUPPORTER
from .scorer import ScorerCache, load_scorer
from .variants import stage_writer

if TYPE_CHECKING:  # pragma: no cover
    from ..data import Dialogue
    from ..params import RunParams

FRAME_COLUMNS = ["dialogue_id", "initial_intensity", "final_intensity", "intensity_drop", "rm_score",
                 "critic_score", "turns_scored"]


@dataclass
class HumanValidation:
    """Per dialogue: the reward model's mean score over its real supporter turns, the critic's
    judgement of the whole real dialogue, and the seeker's own intensity drop (initial − final)."""

    frame: pd.DataFrame
    correlations: pd.DataFrame
    variant: str
    notes: list[str] = field(default_factory=list)


def human_validation_variant(params: "RunParams") -> str:
    """The variant GRPO will use, when it is a trained one; else the first trained variant."""
    g = params.grpo.reward_model
    return g if g in params.reward_model.variants else params.reward_model.variants[0]


# --------------------------------------------------------------------------------------------
# Step 1: the dialogues
# --------------------------------------------------------------------------------------------


def survey_dialogues(params: "RunParams") -> tuple[list["Dialogue"], list[str]]:
    """ESConv dialogues with both survey intensities, none that the simulation drew contexts
    from (those shaped the reward model), a seeded sample of ``human_validation_dialogues``."""
    import random

    from ..data import load_contexts, load_dialogues

    notes = []
    n = params.reward_model.human_validation_dialogues
    dialogues = [
        d for d in load_dialogues(params)
        if d.dataset == "esconv" and d.initial_emotion_intensity is not None and d.final_emotion_intensity is not None
    ]
    try:
        used = {c["dialogue_id"] for c in load_contexts(params)}
    except FileNotFoundError:
        used = set()
    fresh = [d for d in dialogues if d.id not in used]
    if len(fresh) < min(n, len(dialogues)):
        notes.append(f"only {len(fresh)} surveyed dialogues unused by the simulation; dialogues it used are included")
        fresh = dialogues
    fresh = sorted(fresh, key=lambda d: d.id)
    sample = random.Random(params.seed).sample(fresh, min(n, len(fresh)))
    return sorted(sample, key=lambda d: d.id), notes


def _spaced(positions: list[int], k: int | None) -> list[int]:
    if k is None or len(positions) <= k:
        return positions
    return sorted({positions[int(round(i))] for i in np.linspace(0, len(positions) - 1, k)})


# --------------------------------------------------------------------------------------------
# Step 2: the two signals per dialogue
# --------------------------------------------------------------------------------------------


def reward_model_scores(params: "RunParams", variant: str, dialogues: list["Dialogue"],
                        cache: ScorerCache | None = None) -> pd.DataFrame:
    """Per dialogue (index): the reward model's ``mean`` score over up to
    ``human_validation_turns`` evenly spaced real supporter replies, and their number (``size``)."""
    histories, replies, owner = [], [], []
    for d in dialogues:
        turns = [t.model_dump() for t in d.turns]
        positions = [i for i, t in enumerate(turns) if t["speaker"] == SUPPORTER and i > 0]
        for i in _spaced(positions, params.reward_model.human_validation_turns):
            histories.append(turns[:i])
            replies.append(turns[i]["text"])
            owner.append(d.id)
    scorer = cache.get(params, variant) if cache is not None else load_scorer(params, variant)
    per_turn = pd.DataFrame({"dialogue_id": owner, "score": scorer.score(histories, replies)})
    return per_turn.groupby("dialogue_id")["score"].agg(["mean", "size"])


def critic_scores(params: "RunParams", dialogues: list["Dialogue"]) -> list[float]:
    """The simulation's critic on each whole real dialogue, seeing its last
    ``data.max_history_turns`` turns as at the end of a rollout (NaN when it named no label)."""
    from ..agents import Critic
    from ..backends import get_backend

    sim = params.simulation
    critic = Critic(
        get_backend(params.models.critic, seed=params.seed),
        sim.critic_mode,
        samples=sim.critic_samples,
        temperature=sim.critic_temperature,
        threshold=sim.success_threshold,
        seed=params.seed,
        max_history_turns=params.data.max_history_turns,  # what the simulation's critic sees
    )
    contexts = [
        {"situation": d.situation or "", "emotion_type": d.emotion_type or "", "problem_type": d.problem_type or "",
         "history": [t.model_dump() for t in d.turns]}
        for d in dialogues
    ]
    return [j.score for j in critic.judge(contexts)]


def dialogue_frame(dialogues: list["Dialogue"], rm_scores: pd.DataFrame, critic: list[float]) -> pd.DataFrame:
    """One row per dialogue: the survey, the reward model's mean and the critic's score."""
    return pd.DataFrame(
        {
            "dialogue_id": [d.id for d in dialogues],
            "initial_intensity": [d.initial_emotion_intensity for d in dialogues],
            "final_intensity": [d.final_emotion_intensity for d in dialogues],
            "intensity_drop": [d.initial_emotion_intensity - d.final_emotion_intensity for d in dialogues],
            "rm_score": [rm_scores["mean"].get(d.id, math.nan) for d in dialogues],
            "critic_score": critic,
            "turns_scored": [int(rm_scores["size"].get(d.id, 0)) for d in dialogues],
        },
        columns=FRAME_COLUMNS,
    )


# --------------------------------------------------------------------------------------------
# Step 3: correlations
# --------------------------------------------------------------------------------------------


def spearman_bootstrap_ci(x, y, samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of Spearman's rho, resampling (x, y) pairs: with a few dozen
    dialogues the p-value alone hides how wide the plausible range is. Resamples whose ranks are
    constant (rho undefined) are left out; ``scipy.stats.bootstrap`` would instead return NaN for
    the whole interval as soon as one resample is constant, which small samples hit often."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(samples, len(x)))
    rx, ry = rankdata(x[idx], axis=1), rankdata(y[idx], axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    denom = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    rho = np.divide((rx * ry).sum(1), denom, out=np.full(samples, np.nan), where=denom > 0)
    rho = rho[np.isfinite(rho)]
    if not len(rho):
        return (math.nan, math.nan)
    lo, hi = np.quantile(rho, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def spearman_row(signal: str, x: pd.Series, y: pd.Series, seed: int = 0) -> dict[str, Any]:
    """ρ, its p-value and bootstrap interval over the pairs where both values exist, or a note
    saying why the correlation is undefined."""
    from scipy.stats import spearmanr

    ok = x.notna() & y.notna()
    x, y = x[ok], y[ok]
    row = {"signal": signal, "n": int(ok.sum()), "spearman": math.nan, "p_value": math.nan,
           "ci95_low": math.nan, "ci95_high": math.nan, "note": ""}
    if len(x) < 3:
        row["note"] = "fewer than 3 dialogues with both values"
    elif x.nunique() < 2 or y.nunique() < 2:
        row["note"] = "constant input: correlation undefined"
    else:
        res = spearmanr(x, y)
        row["spearman"], row["p_value"] = float(res.statistic), float(res.pvalue)
        row["ci95_low"], row["ci95_high"] = spearman_bootstrap_ci(x, y, seed=seed)
    return row


def correlations(frame: pd.DataFrame, variant: str, seed: int) -> pd.DataFrame:
    """Reward model vs intensity drop, critic vs intensity drop, reward model vs critic."""
    return pd.DataFrame([
        spearman_row(f"reward model ({variant})", frame["rm_score"], frame["intensity_drop"], seed),
        spearman_row("critic", frame["critic_score"], frame["intensity_drop"], seed),
        spearman_row("reward model vs critic", frame["rm_score"], frame["critic_score"], seed),
    ])


def headline(frame: pd.DataFrame, rho: pd.DataFrame, variant: str) -> dict[str, Any]:
    """Flat numbers, for tables across runs."""
    rm, critic = rho.iloc[0], rho.iloc[1]
    stats = ("spearman", "ci95_low", "ci95_high", "p_value")
    return {"variant": variant, "dialogues": int(len(frame)), **{f"rm_{k}": rm[k] for k in stats},
            **{f"critic_{k}": critic[k] for k in stats}, "n_critic": int(critic["n"])}


# --------------------------------------------------------------------------------------------
# The step of notebook 03: cached by its settings
# --------------------------------------------------------------------------------------------


def validation_settings(params: "RunParams", variant: str) -> dict[str, Any]:
    """What the saved validation depends on beyond the stage record (which variant, and which
    training of it), so a retrained or other variant is validated again."""
    adapter = runs.layout(params).rm_adapter(variant) / "adapter_config.json"
    rm = params.reward_model
    return {
        "variant": variant,
        "model_version": adapter.stat().st_mtime_ns if adapter.is_file() else None,
        "dialogues": rm.human_validation_dialogues,
        "turns_per_dialogue": rm.human_validation_turns,
        "critic": params.models.critic.name,
        "critic_mode": params.simulation.critic_mode,
        "critic_turns": params.data.max_history_turns,
        "seed": params.seed,
    }


def _saved(lay: runs.RunLayout, settings: dict[str, Any]) -> HumanValidation | None:
    saved = runs.read_json(lay.human_validation, default=None)
    if not saved or not lay.human_validation_csv.is_file() or saved.get("settings") != runs.json_ready(settings):
        return None
    frame = pd.read_csv(lay.human_validation_csv, dtype={"dialogue_id": str})
    rho = pd.DataFrame(saved["correlations"]).astype({"spearman": float, "p_value": float,
                                                      "ci95_low": float, "ci95_high": float})
    return HumanValidation(frame, rho, settings["variant"], saved.get("notes", []))


def validate_against_humans(
    params: "RunParams", variant: str | None = None, force: bool | None = None, cache: ScorerCache | None = None
) -> HumanValidation:
    """Both training signals against the seeker survey (see the module's docstring). Saved as
    ``human_validation.{csv,json}`` and reused while :func:`validation_settings` are unchanged,
    unless ``force`` (default ``reward_model.retrain``)."""
    force = params.reward_model.retrain if force is None else force
    variant = variant or human_validation_variant(params)
    settings = validation_settings(params, variant)
    with stage_writer(params) as lay:
        if not force and (saved := _saved(lay, settings)):
            return saved
        dialogues, notes = survey_dialogues(params)
        if dialogues:
            rm_scores = reward_model_scores(params, variant, dialogues, cache)
            critic = critic_scores(params, dialogues)
            frame = dialogue_frame(dialogues, rm_scores, critic)
            unparsed = sum(1 for s in critic if not math.isfinite(s))
            if unparsed:
                notes.append(f"critic named no label for {unparsed} dialogue(s): left out of its correlation")
        else:
            notes.append("no ESConv dialogue with both survey intensities (or human_validation_dialogues is 0)")
            frame = pd.DataFrame(columns=FRAME_COLUMNS)
        rho = correlations(frame, variant, params.seed)
        frame.to_csv(lay.human_validation_csv, index=False)
        record = {**headline(frame, rho, variant), "settings": settings, "correlations": rho.to_dict("records"),
                  "notes": notes}
        runs.write_json(record, lay.human_validation)
        return HumanValidation(frame, rho, variant, notes)
