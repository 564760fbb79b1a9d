"""ExTES (Zheng et al.) in the one dialogue schema.

``ExTES.json`` is a JSON list of ``{scene, description, content: [{User} | {AI, AI Strategy}]}``.
Real copies are messy (turns holding both speakers, ``null`` texts, misspelled strategies): each
broken dialogue is skipped and counted; strategy spellings are mapped onto the 16 documented ones
and unknown ones kept verbatim (and counted).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from .dialogues import (
    EXTES_STRATEGIES, SEEKER, SUPPORTER, Dialogue, LoadReport, Turn, broken_or_not_object, read_records,
)


def normalise_strategy(s: str | None) -> str | None:
    """Map case/spacing variants onto the 16 documented ExTES strategies; keep unknown ones
    verbatim (they are counted in the stats, not silently renamed)."""
    if not s:
        return None
    key = " ".join(s.replace("_", " ").split()).lower()
    for canon in EXTES_STRATEGIES:
        if key == canon.lower() or key.rstrip("s") == canon.lower().rstrip("s"):
            return canon
    return s.strip()


def _turn(t: Any, report: LoadReport) -> Turn | str:
    """A Turn, or the reason this turn makes its dialogue unusable."""
    if not isinstance(t, dict):
        return "turn is not an object"
    has_user, has_ai = "User" in t, "AI" in t
    if has_user and has_ai:
        return "turn with both speakers"
    if not (has_user or has_ai):
        return "turn with no speaker"
    text = t.get("User") if has_user else t.get("AI")
    if not isinstance(text, str) or not text.strip():
        return "null or empty text"
    strategy = t.get("AI Strategy") if has_ai else None
    if strategy is not None and not isinstance(strategy, str):
        report.repaired["non-text strategy dropped"] += 1
        strategy = None
    return Turn(speaker=SEEKER if has_user else SUPPORTER, text=text.strip(), strategy=normalise_strategy(strategy))


def load_extes(path: str | Path, test_fraction: float = 0.1, seed: int = 0) -> tuple[list[Dialogue], LoadReport]:
    """Every readable ExTES dialogue (id ``extes-<index in the file>``). ExTES has no official
    split; a seeded shuffle of the file's positions assigns ``test_fraction`` of it to ``test``."""
    path = Path(path)
    report = LoadReport(str(path))
    raw = read_records(path, report)
    order = list(range(len(raw)))
    random.Random(seed).shuffle(order)
    test_ids = set(order[: round(len(raw) * test_fraction)])
    out: list[Dialogue] = []
    for i, rec in enumerate(raw):
        reason = broken_or_not_object(rec)
        content = rec.get("content") if not reason else None
        if not reason and (not isinstance(content, list) or not content):
            reason = "empty dialogue"
        notes = LoadReport(report.source)
        turns = []
        for t in content if not reason else []:
            parsed = _turn(t, notes)
            if isinstance(parsed, str):
                reason = parsed
                break
            turns.append(parsed)
        if not reason and not (any(t.speaker == SEEKER for t in turns) and any(t.speaker == SUPPORTER for t in turns)):
            reason = "one speaker only"
        if reason:
            report.skip(reason, i)
            continue
        scene, desc = rec.get("scene"), rec.get("description")
        out.append(Dialogue(
            id=f"extes-{i:05d}",
            dataset="extes",
            split="test" if i in test_ids else "train",
            problem_type=scene if isinstance(scene, str) else None,
            situation=desc if isinstance(desc, str) else None,
            turns=turns,
        ))
        report.kept += 1
        report.repaired.update(notes.repaired)
        report.unknown_strategies.update(t.strategy for t in turns if t.strategy and t.strategy not in EXTES_STRATEGIES)
    report.require_some()
    return out, report
