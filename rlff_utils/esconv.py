"""ESConv (Liu et al., ACL 2021) in both of its layouts, PPDPP's evaluation split derived from
it, and the authors' failed conversations.

Layouts, detected per file and per turn from the content (never configured):

* **Hugging Face** (``thu-coai/esconv``, JSON Lines): turns ``{"text", "speaker": "usr"|"sys",
  "strategy"}``; on the hub each line sits in a ``text`` column.
* **Original release** (``ESConv.json``, ``FailedESConv.json``: one JSON list): turns
  ``{"speaker": "seeker"|"supporter"|"speaker"|"listener", "annotation": {"strategy"?,
  "feedback"?}, "content"}``. The seeker is ``seeker``/``speaker``; ``feedback`` is the seeker's
  1-5 rating of the help so far. Strategy names of that release that differ from the 8 ESConv
  strategies are mapped onto them (:data:`STRATEGY_ALIASES`); unknown ones are kept and counted.

Where ESConv comes from (:func:`decide_source`): a local folder holding
``{train,valid,test}.json``, or the hub through ``datasets`` (downloaded once, then cached).

PPDPP's 130-case test and valid splits (Deng et al., 2023) are 260 of the 1,300 ESConv
dialogues; ``resources/ppdpp_ids.json`` (built by ``tools/build_ppdpp_ids.py``) lists each
case's ESConv split, index and a digest of its fields, so the splits come out of whichever copy
of ESConv was loaded, identical to PPDPP's files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .dialogues import (
    ESCONV_STRATEGIES, SEEKER, SUPPORTER, DataError, Dialogue, LoadReport, Turn, broken_or_not_object,
    optional_text, parse_line, read_records, score_1_to_5, without_surrogates,
)

HUB_ID = "thu-coai/esconv"
SPLITS = ("train", "valid", "test")
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
PPDPP_FIELDS = ("emotion_type", "problem_type", "situation", "dialog")
PPDPP_IDS = "ppdpp_ids.json"
SURVEY_FIELDS = ("initial_emotion_intensity", "final_emotion_intensity", "empathy", "relevance")

_SPEAKERS = {"usr": SEEKER, "seeker": SEEKER, "speaker": SEEKER,
             "sys": SUPPORTER, "supporter": SUPPORTER, "listener": SUPPORTER}


def _strategy_key(name: str) -> str:
    return " ".join(name.strip().strip("[]").replace("-", " ").replace("_", " ").split()).lower()


# The original release's spellings (FailedESConv.json, ESConv.json) that differ from the
# Hugging Face copy's, and the strategy each one names.
STRATEGY_ALIASES = {
    "questions": "Question",
    "other": "Others",
    "direct guidance": "Providing Suggestions",
    "approval and reassurance": "Affirmation and Reassurance",
    "restatement": "Restatement or Paraphrasing",
    "paraphrasing": "Restatement or Paraphrasing",
}
_CANONICAL = {_strategy_key(s): s for s in ESCONV_STRATEGIES} | STRATEGY_ALIASES


def canonical_strategy(name: str) -> str | None:
    """The ESConv strategy ``name`` spells (case, brackets and aliases forgiven), or None."""
    return _CANONICAL.get(_strategy_key(name))


# --------------------------------------------------------------------------------------------
# One record -> one Dialogue
# --------------------------------------------------------------------------------------------


def _turn(t: Any, notes: LoadReport) -> Turn | str:
    """A Turn, or the reason this turn makes its dialogue unusable."""
    if not isinstance(t, dict):
        return "turn is not an object"
    speaker = _SPEAKERS.get(t["speaker"]) if isinstance(t.get("speaker"), str) else None
    if speaker is None:
        return "unknown speaker"
    original = "content" in t or "annotation" in t
    text = t.get("content") if original else t.get("text")
    if not isinstance(text, str) or not text.strip():
        return "null or empty text"
    ann = t.get("annotation") if original else t
    if not isinstance(ann, dict):
        if ann is not None:
            notes.repaired["annotation is not an object"] += 1
        ann = {}
    strategy = None
    if speaker == SUPPORTER and ann.get("strategy") not in (None, ""):
        raw = ann["strategy"]
        if not isinstance(raw, str):
            notes.repaired["non-text strategy dropped"] += 1
        else:
            strategy = canonical_strategy(raw)
            if strategy is None:
                strategy = raw.strip()
                notes.unknown_strategies[strategy] += 1
    feedback = None
    if speaker == SEEKER and ann.get("feedback") not in (None, ""):
        feedback = score_1_to_5(ann["feedback"])
        if feedback is None:
            notes.repaired["invalid feedback dropped"] += 1
    return Turn(speaker=speaker, text=text.strip(), strategy=strategy, feedback=feedback)


def _survey(value: Any, notes: LoadReport) -> dict[str, int | None]:
    """The seeker's survey (1-5 ratings, strings in the files); unreadable values dropped."""
    out: dict[str, int | None] = dict.fromkeys(SURVEY_FIELDS)
    if value is None:
        return out
    seeker = value.get("seeker") if isinstance(value, dict) else None
    if not isinstance(seeker, dict):
        if not (isinstance(value, dict) and seeker is None):
            notes.repaired["unreadable survey score dropped"] += 1
        return out
    for key in SURVEY_FIELDS:
        v = seeker.get(key)
        if v in (None, ""):
            continue
        out[key] = score_1_to_5(v)
        if out[key] is None:
            notes.repaired["unreadable survey score dropped"] += 1
    return out


def esconv_dialogue(rec: Any, idx: int, split: str, id_prefix: str, report: LoadReport) -> Dialogue | None:
    """Record ``idx`` of a file (either layout) as a Dialogue with id ``<id_prefix>-<idx>``, or
    None (skipped and counted). Repairs are counted only for records that are kept."""
    reason = broken_or_not_object(rec)
    if reason:
        report.skip(reason, idx)
        return None
    dialog = rec.get("dialog")
    if not isinstance(dialog, list) or not dialog:
        report.skip("empty dialogue", idx)
        return None
    notes = LoadReport(report.source)
    turns = []
    for t in dialog:
        turn = _turn(t, notes)
        if isinstance(turn, str):
            report.skip(turn, idx)
            return None
        turns.append(turn)
    d = Dialogue(
        id=f"{id_prefix}-{idx:04d}",
        dataset="esconv",
        split=split,
        emotion_type=optional_text(rec, "emotion_type", notes),
        problem_type=optional_text(rec, "problem_type", notes),
        situation=optional_text(rec, "situation", notes),
        turns=turns,
        **_survey(rec.get("survey_score"), notes),
    )
    report.kept += 1
    report.repaired.update(notes.repaired)
    report.unknown_strategies.update(notes.unknown_strategies)
    return d


# --------------------------------------------------------------------------------------------
# Where ESConv comes from
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EsconvSource:
    """Where ESConv is read from: ``kind`` local (``folder``) or hub (``hub_id``); ``why``
    says how it was chosen."""

    kind: Literal["local", "hub"]
    folder: Path | None = None
    hub_id: str = HUB_ID
    why: str = ""

    def __str__(self) -> str:
        where = f"local folder {self.folder}" if self.kind == "local" else f"Hugging Face hub {self.hub_id}"
        return where + (f" ({self.why})" if self.why else "")


def decide_source(source: Literal["auto", "local", "hub"], folder: Path | None, hub_id: str = HUB_ID,
                  no_folder: str = "") -> EsconvSource:
    """``local``: the folder (which must exist); ``hub``: the hub; ``auto``: the folder when it
    exists, else the hub. ``no_folder`` says why there is no folder (e.g. an unset variable)."""
    if source == "hub":
        return EsconvSource("hub", hub_id=hub_id, why="configured")
    exists = folder is not None and folder.is_dir()
    if source == "local":
        if not exists:
            raise DataError(f"ESConv folder not found: {no_folder or folder}")
        return EsconvSource("local", folder=folder, hub_id=hub_id, why="configured")
    if exists:
        return EsconvSource("local", folder=folder, hub_id=hub_id, why="auto: the local folder exists")
    return EsconvSource("hub", hub_id=hub_id, why=f"auto: no local folder: {no_folder or f'{folder} not found'}")


@dataclass
class EsconvRecords:
    """ESConv as read: each split's records in file order (index = position), and reports."""

    source: EsconvSource
    splits: dict[str, list[Any]] = field(default_factory=dict)
    reports: dict[str, LoadReport] = field(default_factory=dict)


def _offline_message(source: EsconvSource, error: BaseException) -> str:
    local = source.why.removeprefix("auto: ") if source.why.startswith("auto") else "not used (data.esconv_source: hub)"
    return (
        f"ESConv could not be loaded.\n"
        f"  Hugging Face hub {source.hub_id}: {type(error).__name__}: {error}\n"
        f"  local copy: {local}\n"
        f"Either use a local copy: set RLFF_DATA_DIR=/path/to/data (a folder holding esconv/train.json, valid.json, "
        f"test.json: the {source.hub_id} files), or go online once (without HF_HUB_OFFLINE=1) so that `datasets` "
        f"downloads {source.hub_id} into its cache; later runs read the cache offline."
    )


def read_esconv(source: EsconvSource) -> EsconvRecords:
    """Every split's records from the chosen source (hub rows parsed like JSON Lines)."""
    out = EsconvRecords(source)
    if source.kind == "local":
        for split in SPLITS:
            report = LoadReport(str(source.folder / f"{split}.json"))
            out.splits[split] = read_records(source.folder / f"{split}.json", report)
            out.reports[split] = report
        return out
    import datasets

    try:
        hub = datasets.load_dataset(source.hub_id)
    except OSError as e:  # offline without a cached copy, hub unreachable, unknown id
        raise DataError(_offline_message(source, e)) from None
    for split in SPLITS:
        name = HUB_SPLITS[split]
        if name not in hub:
            raise DataError(f"{source.hub_id}: no split {name!r} (found {sorted(hub)})")
        report = LoadReport(f"{source.hub_id}:{name}", layout="hub rows (JSON text column)")
        rows = []
        for row in hub[name]:
            text = row.get("text")
            if isinstance(text, str):
                if text.strip():
                    rows.append(parse_line(text))
            else:
                rows.append(row)  # a structured copy: the row is the record
        out.splits[split], out.reports[split] = without_surrogates(rows, report), report
    return out


def esconv_dialogues(records: EsconvRecords) -> tuple[list[Dialogue], list[LoadReport]]:
    """All dialogues of every split (ids ``esconv-<split>-<index>``); a split with no readable
    dialogue is a DataError naming its file."""
    dialogues, reports = [], []
    for split in SPLITS:
        report = records.reports[split]
        for i, rec in enumerate(records.splits[split]):
            d = esconv_dialogue(rec, i, split, f"esconv-{split}", report)
            if d:
                dialogues.append(d)
        report.require_some()
        reports.append(report)
    return dialogues, reports


def load_esconv(path: str | Path | None = None, source: Literal["auto", "local", "hub"] = "local",
                hub_id: str = HUB_ID) -> tuple[list[Dialogue], list[LoadReport]]:
    """All ESConv dialogues (train/valid/test) from a local folder or the hub."""
    return esconv_dialogues(read_esconv(decide_source(source, Path(path) if path else None, hub_id)))


# --------------------------------------------------------------------------------------------
# PPDPP's evaluation split
# --------------------------------------------------------------------------------------------


def case_digest(rec: dict[str, Any]) -> str:
    """A short fingerprint of a PPDPP case's fields (which ESConv record it is)."""
    payload = json.dumps({k: rec.get(k) for k in PPDPP_FIELDS}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def ppdpp_ids() -> dict[str, Any]:
    """The shipped list: ``{"test": [[split, index, digest], ...], "valid": [...]}``."""
    return json.loads(resources.files("rlff_utils.resources").joinpath(PPDPP_IDS).read_text(encoding="utf-8"))


def ppdpp_records(records: EsconvRecords, split: Literal["test", "valid"]) -> list[dict[str, Any] | None]:
    """PPDPP's ``esc-<split>.txt`` records rebuilt from ESConv, in PPDPP's order, with PPDPP's
    fields; None where this copy of ESConv lacks the case (missing, broken or changed). A case
    found elsewhere than its listed position (a reordered copy) is found by its digest."""
    by_digest: dict[str, dict[str, Any]] | None = None
    out: list[dict[str, Any] | None] = []
    for esconv_split, index, digest in ppdpp_ids()[split]:
        rows = records.splits.get(esconv_split, [])
        rec = rows[index] if index < len(rows) else None
        if not (isinstance(rec, dict) and case_digest(rec) == digest):
            if by_digest is None:
                by_digest = {case_digest(r): r for rows in records.splits.values() for r in rows if isinstance(r, dict)}
            rec = by_digest.get(digest)
        out.append({k: rec.get(k) for k in PPDPP_FIELDS} if rec is not None else None)
    return out


def ppdpp_from_esconv(records: EsconvRecords, split: Literal["test", "valid"] = "test") -> tuple[list[Dialogue], LoadReport]:
    """PPDPP's 130-case split as Dialogues (ids ``ppdpp-<split>-<index>``), from ESConv."""
    report = LoadReport(f"PPDPP esc-{split} from ESConv ({records.source.kind})", layout="ESConv records by id list")
    out = []
    for i, rec in enumerate(ppdpp_records(records, split)):
        if rec is None:
            report.skip("case not in this ESConv copy", i)
            continue
        d = esconv_dialogue(rec, i, f"ppdpp_{split}", f"ppdpp-{split}", report)
        if d:
            out.append(d)
    report.require_some()
    return out, report


def load_ppdpp(folder: str | Path, split: Literal["test", "valid"] = "test") -> tuple[list[Dialogue], LoadReport]:
    """PPDPP's own files (``esc-test.txt`` / ``esc-valid.txt``), for checking the derived split."""
    file = Path(folder) / f"esc-{split}.txt"
    report = LoadReport(str(file))
    rows = read_records(file, report)
    out = [d for i, rec in enumerate(rows) if (d := esconv_dialogue(rec, i, f"ppdpp_{split}", f"ppdpp-{split}", report))]
    report.require_some()
    return out, report


# --------------------------------------------------------------------------------------------
# The failed conversations
# --------------------------------------------------------------------------------------------


def load_esconv_failed(path: str | Path) -> tuple[list[Dialogue], LoadReport]:
    """``FailedESConv*.json``: conversations the ESConv authors left out because the seeker was
    not helped (split ``failed``, ids ``esconv-failed-<index>``), in the original layout."""
    path = Path(path)
    report = LoadReport(str(path))
    rows = read_records(path, report)
    out = [d for i, rec in enumerate(rows) if (d := esconv_dialogue(rec, i, "failed", "esconv-failed", report))]
    report.require_some()
    return out, report

