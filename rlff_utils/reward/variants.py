"""The reward-model variants, the error type, and the stage folder they live in.

Every artefact path comes from :class:`rlff_utils.runs.RunLayout`; every writer of the stage folder
goes through :func:`stage_writer` (the writer lock, and a refusal of results computed with other
settings), and the stage's entry, :func:`rlff_utils.reward.train.train_reward_models`, through
:func:`rlff_utils.runs.begin_stage`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .. import runs

if TYPE_CHECKING:  # pragma: no cover
    from ..params import RunParams

VARIANTS = ("classification", "regression", "ranking")
ALL_VARIANTS = (*VARIANTS, "random")
NUM_LABELS = {"classification": 2, "regression": 1, "ranking": 1, "random": 2}


class RewardModelError(ValueError):
    """Input a reward model cannot be trained or scored on; the message says what is wrong."""


def check_variant(variant: str, allowed: tuple[str, ...] = ALL_VARIANTS) -> str:
    if variant not in allowed:
        raise RewardModelError(f"unknown reward-model variant {variant!r}: use one of {', '.join(allowed)}")
    return variant


def variant_dir(params: "RunParams", variant: str) -> Path:
    """``outputs/<run>/reward_model/<variant>/`` (created)."""
    folder = runs.layout(params).variant_dir(check_variant(variant))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def stage_writer(params: "RunParams") -> Iterator[runs.RunLayout]:
    """Hold the reward-model stage's writer lock and refuse a folder whose results were computed
    with other settings (:class:`rlff_utils.runs.StaleStageError`), without touching its record:
    for the steps that write into the stage (one variant, the human validation) when called on
    their own. Re-entrant inside :func:`rlff_utils.runs.begin_stage`."""
    lay = runs.layout(params)
    with runs.stage_lock(lay.stage(runs.REWARD_MODEL)):
        runs.check_stage(params, runs.REWARD_MODEL)
        yield lay
