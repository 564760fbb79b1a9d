"""ESConv, PPDPP's evaluation split and ExTES in one dialogue schema; contexts; evaluation cases.

Every later stage reads only this schema, so adding a dataset means adding one loader here.
Loaders never crash on one bad record: it is skipped, counted by reason and reported, because
real copies of these datasets are messy (ExTES especially). A file that cannot be read at all
is a hard error naming the file.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SEEKER, SUPPORTER = "seeker", "supporter"

ESCONV_STRATEGIES = [
    "Question",
    "Restatement or Paraphrasing",
    "Reflection of feelings",
    "Self-disclosure",
    "Affirmation and Reassurance",
    "Providing Suggestions",
    "Information",
    "Others",
]
EXTES_STRATEGIES = [
    "Reflective Statements",
    "Clarification",
    "Emotional Validation",
    "Empathetic Statements",
    "Affirmation",
    "Offer Hope",
    "Avoid Judgment and Criticism",
    "Suggest Options",
    "Collaborative Planning",
    "Provide Different Perspectives",
    "Reframe Negative Thoughts",
    "Share Information",
    "Normalize Experiences",
    "Promote Self-Care Practices",
    "Stress Management",
    "Others",
]
STRATEGIES = {"esconv": ESCONV_STRATEGIES, "extes": EXTES_STRATEGIES}


class DataError(ValueError):
    """A dataset file that cannot be read at all (as opposed to one bad record)."""


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    speaker: Literal["seeker", "supporter"]
    text: str = Field(min_length=1)
    strategy: str | None = None


class Dialogue(BaseModel):
    """The one schema. ``problem_type``/``situation`` are ExTES's scene/description."""

    model_config = ConfigDict(extra="forbid")
    id: str
    dataset: Literal["esconv", "extes"]
    split: str
    emotion_type: str | None = None
    problem_type: str | None = None
    situation: str | None = None
    turns: list[Turn] = Field(min_length=1)
    initial_emotion_intensity: int | None = None
    final_emotion_intensity: int | None = None
    empathy: int | None = None
    relevance: int | None = None

    @field_validator("initial_emotion_intensity", "final_emotion_intensity", "empathy", "relevance", mode="before")
    @classmethod
    def _int_or_none(cls, v: Any) -> int | None:
        if v in (None, ""):
            return None
        return int(v)


@dataclass
class LoadReport:
    """What a loader kept and what it skipped, by reason (with a few example record indices)."""

    source: str
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)

    def skip(self, reason: str, index: int) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(index)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "kept": self.kept, "skipped": dict(self.skipped), "examples": self.examples}

    def __str__(self) -> str:
        skipped = ", ".join(f"{r}: {n}" for r, n in self.skipped.most_common()) or "none"
        return f"{self.source}: kept {self.kept}, skipped {sum(self.skipped.values())} ({skipped})"


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[Any]:
    """JSON Lines (ESConv and PPDPP use `.json`/`.txt` names for JSONL). Bad lines become None
    so the caller can count them as broken records with their line number."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows: list[Any] = []
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    rows.append(None)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    return rows


_ESCONV_SPEAKERS = {"usr": SEEKER, "seeker": SEEKER, "sys": SUPPORTER, "supporter": SUPPORTER}


def _esconv_dialogue(rec: Any, idx: int, dataset_split: str, id_prefix: str, report: LoadReport) -> Dialogue | None:
    if isinstance(rec, dict) and isinstance(rec.get("text"), str) and "dialog" not in rec:
        try:  # the hub copy stores each dialogue as a JSON string in a `text` column
            rec = json.loads(rec["text"])
        except json.JSONDecodeError:
            rec = None
    if not isinstance(rec, dict):
        report.skip("not a JSON object", idx)
        return None
    dialog = rec.get("dialog")
    if not isinstance(dialog, list) or not dialog:
        report.skip("empty dialogue", idx)
        return None
    turns = []
    for t in dialog:
        speaker = _ESCONV_SPEAKERS.get(t.get("speaker")) if isinstance(t, dict) else None
        text = t.get("text") if isinstance(t, dict) else None
        if speaker is None:
            report.skip("unknown speaker", idx)
            return None
        if not isinstance(text, str) or not text.strip():
            report.skip("null or empty text", idx)
            return None
        turns.append(Turn(speaker=speaker, text=text.strip(), strategy=t.get("strategy") if speaker == SUPPORTER else None))
    seeker_survey = ((rec.get("survey_score") or {}).get("seeker")) or {}
    try:
        d = Dialogue(
            id=f"{id_prefix}-{idx:04d}",
            dataset="esconv",
            split=dataset_split,
            emotion_type=rec.get("emotion_type"),
            problem_type=rec.get("problem_type"),
            situation=rec.get("situation"),
            turns=turns,
            initial_emotion_intensity=seeker_survey.get("initial_emotion_intensity"),
            final_emotion_intensity=seeker_survey.get("final_emotion_intensity"),
            empathy=seeker_survey.get("empathy"),
            relevance=seeker_survey.get("relevance"),
        )
    except (ValidationError, ValueError, TypeError):
        report.skip("invalid fields", idx)
        return None
    report.kept += 1
    return d


def load_esconv(
    path: str | Path | None = None, source: Literal["local", "hub"] = "local", hub_id: str = "thu-coai/esconv"
) -> tuple[list[Dialogue], list[LoadReport]]:
    """All ESConv dialogues (train/valid/test) from a local folder in the `thu-coai/esconv`
    layout, or from the hub when online."""
    dialogues, reports = [], []
    for split in ("train", "valid", "test"):
        if source == "hub":
            import datasets

            hub_split = {"valid": "validation"}.get(split, split)
            rows: Iterable[Any] = datasets.load_dataset(hub_id, split=hub_split)
            report = LoadReport(f"{hub_id}:{hub_split}")
        else:
            file = Path(path or ".") / f"{split}.json"
            rows = _read_jsonl(file)
            report = LoadReport(str(file))
        for i, rec in enumerate(rows):
            d = _esconv_dialogue(rec, i, split, f"esconv-{split}", report)
            if d:
                dialogues.append(d)
        reports.append(report)
    return dialogues, reports


def load_ppdpp(folder: str | Path, split: Literal["test", "valid"] = "test") -> tuple[list[Dialogue], LoadReport]:
    """PPDPP's 130-case ESConv evaluation split (`esc-test.txt` / `esc-valid.txt`)."""
    file = Path(folder) / f"esc-{split}.txt"
    report = LoadReport(str(file))
    out = [d for i, rec in enumerate(_read_jsonl(file)) if (d := _esconv_dialogue(rec, i, f"ppdpp_{split}", f"ppdpp-{split}", report))]
    return out, report


def _extes_turn(t: Any) -> Turn | str:
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
        strategy = None
    return Turn(speaker=SEEKER if has_user else SUPPORTER, text=text.strip(), strategy=_normalise_strategy(strategy))


def _normalise_strategy(s: str | None) -> str | None:
    """Map case/spacing variants onto the 16 documented ExTES strategies; keep unknown ones
    verbatim (they are counted in the stats, not silently renamed)."""
    if not s:
        return None
    key = " ".join(s.replace("_", " ").split()).lower()
    for canon in EXTES_STRATEGIES:
        if key == canon.lower() or key.rstrip("s") == canon.lower().rstrip("s"):
            return canon
    return s.strip()


def load_extes(path: str | Path, test_fraction: float = 0.1, seed: int = 0) -> tuple[list[Dialogue], LoadReport]:
    """`ExTES.json`: a JSON list of `{scene, description, content: [{User} | {AI, AI Strategy}]}`.
    ExTES has no official split; a seeded shuffle assigns `test_fraction` of it to `test`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file: {e}") from None
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a JSON list of dialogues, got {type(raw).__name__}")
    report = LoadReport(str(path))
    order = list(range(len(raw)))
    random.Random(seed).shuffle(order)
    n_test = round(len(raw) * test_fraction)
    test_ids = set(order[:n_test])
    out: list[Dialogue] = []
    for i, rec in enumerate(raw):
        if not isinstance(rec, dict):
            report.skip("not a JSON object", i)
            continue
        content = rec.get("content")
        if not isinstance(content, list) or not content:
            report.skip("empty dialogue", i)
            continue
        turns, reason = [], None
        for t in content:
            parsed = _extes_turn(t)
            if isinstance(parsed, str):
                reason = parsed
                break
            turns.append(parsed)
        if reason:
            report.skip(reason, i)
            continue
        if not any(t.speaker == SEEKER for t in turns) or not any(t.speaker == SUPPORTER for t in turns):
            report.skip("one speaker only", i)
            continue
        scene, desc = rec.get("scene"), rec.get("description")
        out.append(
            Dialogue(
                id=f"extes-{i:05d}",
                dataset="extes",
                split="test" if i in test_ids else "train",
                problem_type=scene if isinstance(scene, str) else None,
                situation=desc if isinstance(desc, str) else None,
                turns=turns,
            )
        )
        report.kept += 1
    return out, report


# --------------------------------------------------------------------------------------------
# Contexts and evaluation cases
# --------------------------------------------------------------------------------------------


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
                    "history": [t.model_dump() for t in d.turns[: i + 1]],
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


def load_all(params) -> PreparedData:
    """Load every dataset in params, build contexts and evaluation cases (no writing)."""
    p = params.data
    dialogues: list[Dialogue] = []
    eval_dialogues: list[Dialogue] = []
    reports: list[LoadReport] = []
    if "esconv" in p.datasets:
        source = ("local" if p.esconv_dir else "hub") if p.esconv_source == "auto" else p.esconv_source
        esc, rep = load_esconv(p.esconv_dir if source == "local" else None, source, p.esconv_hub_id)
        reports += rep
        if p.eval_split == "test":
            eval_dialogues += [d for d in esc if d.split == "test"]
        else:
            ev, rep1 = load_ppdpp(params.resolve(p.ppdpp_dir), p.eval_split.removeprefix("ppdpp_"))
            eval_dialogues += ev
            reports.append(rep1)
        dialogues += esc[: p.max_dialogues] if p.max_dialogues else esc
    if "extes" in p.datasets:
        ext, rep = load_extes(params.resolve(p.extes_path), p.extes_test_fraction, params.seed)
        reports.append(rep)
        eval_dialogues += [d for d in ext if d.split == "test"]
        dialogues += ext[: p.max_dialogues] if p.max_dialogues else ext
    train_like = [d for d in dialogues if d.split in p.context_splits]
    contexts = build_contexts(train_like, p.contexts_per_dialogue, p.min_history_turns, p.max_contexts, params.seed)
    eval_cases = build_eval_cases(eval_dialogues, p.max_eval_cases)
    return PreparedData(dialogues, eval_dialogues, contexts, eval_cases, reports)


def save_records(records: list[dict[str, Any]], folder: Path) -> None:
    """A `datasets.Dataset` on disk (for `load_from_disk`) plus a JSONL copy for other tools."""
    import datasets

    datasets.Dataset.from_list(records).save_to_disk(str(folder))
    with (folder.parent / f"{folder.name}.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def load_records(folder: Path) -> list[dict[str, Any]]:
    import datasets

    if not Path(folder).exists():
        raise FileNotFoundError(f"{folder} not found: run notebook 01 (data prep) for this run first")
    return datasets.load_from_disk(str(folder)).to_list()


def prepare_data(params) -> PreparedData:
    """Notebook 01's stage: load, build, write `outputs/<run>/data/`."""
    prepared = load_all(params)
    out = params.stage_dir("data")
    save_records([d.model_dump() for d in prepared.dialogues], out / "dialogues")
    save_records(prepared.contexts, out / "contexts")
    save_records(prepared.eval_cases, out / "eval_cases")
    stats = {
        "dialogues": len(prepared.dialogues),
        "eval_dialogues": len(prepared.eval_dialogues),
        "contexts": len(prepared.contexts),
        "eval_cases": len(prepared.eval_cases),
        "load_reports": [r.as_dict() for r in prepared.reports],
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    return prepared


def load_contexts(params) -> list[dict[str, Any]]:
    return load_records(params.run_dir / "data" / "contexts")


def load_eval_cases(params) -> list[dict[str, Any]]:
    return load_records(params.run_dir / "data" / "eval_cases")


def load_dialogues(params) -> list[Dialogue]:
    return [Dialogue.model_validate(r) for r in load_records(params.run_dir / "data" / "dialogues")]
