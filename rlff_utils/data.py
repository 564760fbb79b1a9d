"""The data stage: every dataset in one dialogue schema, contexts, evaluation cases.

The schema and file reading live in ``dialogues.py``, the loaders in ``esconv.py`` (ESConv in
both layouts, PPDPP's split, the failed conversations) and ``extes.py``; this module decides
where ESConv comes from (:func:`esconv_source`), builds what the later stages read and writes it
through the run-folder contract (``runs.RunLayout``: dialogues, contexts, eval_cases, stats).
"""

from __future__ import annotations

import json
import os
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import runs
from .dialogues import (  # noqa: F401 - the schema, re-exported as the data API
    ESCONV_STRATEGIES, EXTES_STRATEGIES, SEEKER, STRATEGIES, SUPPORTER, DataError, Dialogue, LoadReport, Turn,
    long_turns,
)
from .esconv import (  # noqa: F401 - loaders, re-exported as the data API
    EsconvSource, decide_source, esconv_dialogues, load_esconv, load_esconv_failed, load_ppdpp,
    ppdpp_from_esconv, read_esconv,
)
from .extes import load_extes  # noqa: F401


def esconv_source(params) -> EsconvSource:
    """Where this run reads ESConv: ``data.esconv_source`` ``local`` (``data.esconv_dir``, which
    must exist), ``hub`` (``data.esconv_hub_id`` through ``datasets``, cached), or ``auto``: the
    local folder when it is configured and exists (e.g. ``RLFF_DATA_DIR`` is set), else the hub.
    ``data.esconv_dir`` None stands for ``$RLFF_DATA_DIR/esconv`` when that variable is set."""
    p = params.data
    folder, why = None, ""
    configured = p.esconv_dir if p.esconv_dir is not None else (
        str(Path(os.environ["RLFF_DATA_DIR"]) / "esconv") if os.environ.get("RLFF_DATA_DIR") else None)
    if configured is None:
        why = "data.esconv_dir is not given and RLFF_DATA_DIR is not set"
    else:
        folder = params.resolve(configured)
    if folder is not None and not folder.is_dir():
        why = f"data.esconv_dir: folder not found: {folder}"
    return decide_source(p.esconv_source, folder, p.esconv_hub_id, why)


# --------------------------------------------------------------------------------------------
# Contexts and evaluation cases
# --------------------------------------------------------------------------------------------


# What a prompt shows of a turn (a seeker's rating of the help is for validation, not prompts).
PROMPT_TURN_FIELDS = {"speaker", "text", "strategy"}


def context_positions(d: Dialogue, min_history_turns: int) -> list[int]:
    """Indices of seeker turns answered by a supporter turn, with enough history before them."""
    return [
        i
        for i in range(min_history_turns, len(d.turns) - 1)
        if d.turns[i].speaker == SEEKER and d.turns[i + 1].speaker == SUPPORTER
    ]


def build_contexts(
    dialogues: Iterable[Dialogue],
    per_dialogue: int,
    min_history_turns: int,
    max_contexts: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Dialogue prefixes ending in a seeker turn, with the real supporter reply as reference.

    Positions are sampled per dialogue with an RNG keyed by (seed, dialogue id), so adding a
    dialogue never changes the contexts drawn from another; the cap is applied after a seeded
    shuffle, so a smaller cap gives a subset of a larger one.
    """
    out = []
    for d in dialogues:
        positions = context_positions(d, min_history_turns)
        rng = random.Random(f"{seed}:{d.id}")
        for i in sorted(rng.sample(positions, min(per_dialogue, len(positions)))):
            ref = d.turns[i + 1]
            out.append(
                {
                    "context_id": f"{d.id}@{i}",
                    "dialogue_id": d.id,
                    "dataset": d.dataset,
                    "emotion_type": d.emotion_type or "",
                    "problem_type": d.problem_type or "",
                    "situation": d.situation or "",
                    "history": [t.model_dump(include=PROMPT_TURN_FIELDS) for t in d.turns[: i + 1]],
                    "reference_reply": ref.text,
                    "reference_strategy": ref.strategy or "",
                }
            )
    if max_contexts is not None and len(out) > max_contexts:
        random.Random(seed).shuffle(out)
        out = sorted(out[:max_contexts], key=lambda c: c["context_id"])
    return out


def build_eval_cases(dialogues: Iterable[Dialogue], max_cases: int | None = None) -> list[dict[str, Any]]:
    """PPDPP protocol: the seeker opens with the case's situation; the rest is simulated."""
    cases = []
    for d in dialogues:
        opening = d.situation or next(t.text for t in d.turns if t.speaker == SEEKER)
        cases.append(
            {
                "case_id": d.id,
                "dataset": d.dataset,
                "emotion_type": d.emotion_type or "",
                "problem_type": d.problem_type or "",
                "situation": d.situation or "",
                "opening": opening,
            }
        )
    return cases[:max_cases] if max_cases else cases


def dialogues_frame(dialogues: Iterable[Dialogue]):
    """One row per dialogue: the columns the data notebook plots."""
    import pandas as pd

    rows = []
    for d in dialogues:
        rows.append(
            {
                "id": d.id,
                "dataset": d.dataset,
                "split": d.split,
                "emotion_type": d.emotion_type,
                "problem_type": d.problem_type,
                "turns": len(d.turns),
                "seeker_turns": sum(t.speaker == SEEKER for t in d.turns),
                "initial_intensity": d.initial_emotion_intensity,
                "final_intensity": d.final_emotion_intensity,
                "intensity_drop": (
                    d.initial_emotion_intensity - d.final_emotion_intensity
                    if d.initial_emotion_intensity is not None and d.final_emotion_intensity is not None
                    else None
                ),
            }
        )
    frame = pd.DataFrame(rows)
    for col in ("initial_intensity", "final_intensity", "intensity_drop"):
        frame[col] = frame[col].astype("Int64")  # survey scores are integers, missing for some
    return frame


def strategy_counts(dialogues: Iterable[Dialogue]) -> Counter:
    return Counter((d.dataset, t.strategy) for d in dialogues for t in d.turns if t.strategy)


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    dialogues: list[Dialogue]
    eval_dialogues: list[Dialogue]
    contexts: list[dict[str, Any]]
    eval_cases: list[dict[str, Any]]
    reports: list[LoadReport]
    sources: dict[str, str] = field(default_factory=dict)


def load_all(params) -> PreparedData:
    """Load every dataset in params, build contexts and evaluation cases (no writing)."""
    p = params.data
    dialogues: list[Dialogue] = []
    eval_dialogues: list[Dialogue] = []
    reports: list[LoadReport] = []
    sources: dict[str, str] = {}
    if "esconv" in p.datasets:
        source = esconv_source(params)
        sources["esconv"] = str(source)
        records = read_esconv(source)
        esc, rep = esconv_dialogues(records)
        reports += rep
        if p.eval_split == "test":
            eval_dialogues += [d for d in esc if d.split == "test"]
        else:
            ev, rep1 = ppdpp_from_esconv(records, p.eval_split.removeprefix("ppdpp_"))
            eval_dialogues += ev
            reports.append(rep1)
        dialogues += esc[: p.max_dialogues] if p.max_dialogues else esc
    if "extes" in p.datasets:
        path = params.resolve(p.extes_path)
        sources["extes"] = str(path)
        ext, rep = load_extes(path, p.extes_test_fraction, params.seed)
        reports.append(rep)
        eval_dialogues += [d for d in ext if d.split == "test"]
        dialogues += ext[: p.max_dialogues] if p.max_dialogues else ext
    train_like = [d for d in dialogues if d.split in p.context_splits]
    contexts = build_contexts(train_like, p.contexts_per_dialogue, p.min_history_turns, p.max_contexts, params.seed)
    if not contexts:
        raise DataError(
            f"no contexts: {len(train_like)} dialogues in splits {p.context_splits} have no seeker turn answered by "
            f"the supporter after {p.min_history_turns} turns (check data.context_splits, data.min_history_turns, "
            "data.max_dialogues)")
    eval_cases = build_eval_cases(eval_dialogues, p.max_eval_cases)
    return PreparedData(dialogues, eval_dialogues, contexts, eval_cases, reports, sources)


def save_records(records: list[dict[str, Any]], folder: Path) -> None:
    """A `datasets.Dataset` on disk (for `load_from_disk`) plus a JSONL copy for other tools."""
    import datasets

    datasets.Dataset.from_list(records).save_to_disk(str(folder))
    with (folder.parent / f"{folder.name}.jsonl").open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def load_records(folder: Path) -> list[dict[str, Any]]:
    import datasets

    if not Path(folder).exists():
        raise FileNotFoundError(f"{folder} not found: run notebook 01 (data prep) for this run first")
    return datasets.load_from_disk(str(folder)).to_list()


def prepare_data(params, force: bool = False) -> PreparedData:
    """Notebook 01's stage: load, build and write ``outputs/<run>/data/`` (through
    ``runs.begin_stage``: a folder holding data built with other settings is refused unless
    ``force``). ``stats.json`` holds the counts, the sources and every load report."""
    lay = runs.layout(params)
    with runs.begin_stage(params, runs.DATA, force):
        prepared = load_all(params)
        save_records([d.model_dump() for d in prepared.dialogues], lay.dialogues)
        save_records(prepared.contexts, lay.contexts)
        save_records(prepared.eval_cases, lay.eval_cases)
        runs.write_json({
            "dialogues": len(prepared.dialogues),
            "eval_dialogues": len(prepared.eval_dialogues),
            "contexts": len(prepared.contexts),
            "eval_cases": len(prepared.eval_cases),
            "sources": prepared.sources,
            "load_reports": [r.as_dict() for r in prepared.reports],
            "long_turns": (outliers := long_turns(prepared.dialogues)),
        }, lay.data_stats)
        if outliers["count"]:
            warnings.warn(f"{outliers['count']} turns are longer than {outliers['limit_chars']} characters (the longest "
                          f"{outliers['longest_chars']}; examples in stats.json, long_turns): prompts holding them are "
                          "cut to each model's window")
    return prepared


def load_contexts(params) -> list[dict[str, Any]]:
    return load_records(runs.layout(params).contexts)


def load_eval_cases(params) -> list[dict[str, Any]]:
    return load_records(runs.layout(params).eval_cases)


def load_dialogues(params) -> list[Dialogue]:
    return [Dialogue.model_validate(r) for r in load_records(runs.layout(params).dialogues)]
