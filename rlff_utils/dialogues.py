"""The one dialogue schema every dataset becomes, the load report, and reading dataset files.

Every later stage reads only :class:`Dialogue`, so adding a dataset means adding one loader
(``esconv.py``, ``extes.py``). Loaders never crash on one bad record: it is skipped, counted by
reason and reported, because real copies of these datasets are messy. A file with no readable
record at all is a hard :class:`DataError` naming the file and the commonest reasons.

:func:`read_records` reads a file whatever its layout (one JSON list, or JSON Lines), detected
from the content: bytes that are not UTF-8 are replaced (and counted), a line that is not JSON
stays a numbered broken record, so a record's index is its position in the file whatever
happens to its neighbours.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .text import SEEKER, SUPPORTER, strip_chat_controls  # noqa: F401 - the speakers of the schema

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
    """A dataset that cannot be read at all (as opposed to one bad record)."""


class Turn(BaseModel):
    """One utterance. ``feedback``: the seeker's 1-5 rating of the help so far (ESConv's
    original release, on some seeker turns)."""

    model_config = ConfigDict(extra="forbid")
    speaker: Literal["seeker", "supporter"]
    text: str = Field(min_length=1)
    strategy: str | None = None
    feedback: int | None = Field(None, ge=1, le=5)


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
    """What a loader read: records kept, records skipped by reason (with a few example record
    indices), records kept after a repair by kind (a value dropped, bytes replaced), and
    strategy names outside the dataset's documented set (kept verbatim)."""

    source: str
    layout: str = ""
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)
    repaired: Counter = field(default_factory=Counter)
    unknown_strategies: Counter = field(default_factory=Counter)

    def skip(self, reason: str, index: int) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(index)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "layout": self.layout, "kept": self.kept, "skipped": dict(self.skipped),
                "examples": self.examples, "repaired": dict(self.repaired),
                "unknown_strategies": dict(self.unknown_strategies)}

    def top_reasons(self, k: int = 3) -> str:
        return ", ".join(f"{n} x {r} (e.g. record {self.examples[r][0]})" for r, n in self.skipped.most_common(k))

    def require_some(self) -> None:
        """A file that yielded no dialogue at all is unusable: say why, naming the file."""
        if self.kept:
            return
        if not self.skipped:
            raise DataError(f"{self.source}: no records in the file (empty)")
        raise DataError(f"{self.source}: no readable dialogue among {sum(self.skipped.values())} records "
                        f"({self.layout or 'unknown layout'}): {self.top_reasons()}")

    def __str__(self) -> str:
        skipped = ", ".join(f"{r}: {n}" for r, n in self.skipped.most_common()) or "none"
        text = f"{self.source}: kept {self.kept}, skipped {sum(self.skipped.values())} ({skipped})"
        if self.repaired:
            text += "; repaired " + ", ".join(f"{r}: {n}" for r, n in self.repaired.most_common())
        if self.unknown_strategies:
            text += "; unknown strategies kept " + ", ".join(f"{s!r}: {n}" for s, n in self.unknown_strategies.most_common())
        return text


# A turn longer than this is an outlier (ESConv's turns are about a hundred characters): the
# data stage reports them; prompts are cut to each model's window wherever they appear.
LONG_TURN_CHARS = 2000


def long_turns(dialogues: "Iterable[Dialogue]", limit: int = LONG_TURN_CHARS) -> dict[str, Any]:
    """The turns longer than ``limit`` characters: how many, the longest, and a few examples
    (dialogue id, turn index, characters)."""
    found = [(d.id, i, len(t.text)) for d in dialogues for i, t in enumerate(d.turns) if len(t.text) > limit]
    found.sort(key=lambda x: -x[2])
    return {"limit_chars": limit, "count": len(found), "longest_chars": found[0][2] if found else 0,
            "examples": [{"dialogue": d, "turn": i, "chars": n} for d, i, n in found[:5]]}


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


class Broken:
    """A record that is not JSON at all (``reason`` says how)."""

    def __init__(self, reason: str):
        self.reason = reason


REPLACED_BYTES = "undecodable bytes replaced"


def decode(raw: bytes, report: LoadReport) -> str:
    """UTF-8 text; bytes that are not UTF-8 become U+FFFD, counted once per line that held some."""
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    lines = raw.split(b"\n")
    out = []
    for line in lines:
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(line.decode("utf-8", errors="replace"))
            report.repaired[REPLACED_BYTES] += 1
    return "\n".join(out)


def parse_line(line: str) -> Any:
    """One JSON Lines record (or a :class:`Broken` marker)."""
    try:
        return json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return Broken("not valid JSON")


def _json_list_items(text: str) -> Iterator[Any]:
    """The items of a JSON list one by one, so a list broken in the middle still yields the
    records before the break (the rest is one :class:`Broken` record)."""
    dec = json.JSONDecoder()
    i, n = text.index("[") + 1, len(text)

    def skip_ws(j: int) -> int:
        while j < n and text[j] in " \t\r\n":
            j += 1
        return j

    i = skip_ws(i)
    if i < n and text[i] == "]":
        return
    while True:
        try:
            obj, i = dec.raw_decode(text, skip_ws(i))
        except (json.JSONDecodeError, RecursionError):
            yield Broken("malformed JSON list from here on")
            return
        yield obj
        i = skip_ws(i)
        if i < n and text[i] == ",":
            i += 1
        elif i < n and text[i] == "]":
            return
        else:
            yield Broken("malformed JSON list from here on")
            return


REPLACED_SURROGATES = "lone surrogates replaced"
REMOVED_CONTROLS = "chat control strings removed"
_SURROGATE = re.compile("[\ud800-\udfff]")


def _repair_strings(node: Any) -> tuple[Any, bool, int]:
    """``node`` with every string value repaired: a lone UTF-16 surrogate (valid JSON such as
    ``"\\ud83d"``, not Unicode text) becomes U+FFFD, a chat template's control string
    (``<|im_start|>``...) is removed so data cannot open or close a message. Returns the node,
    whether a surrogate was replaced, and how many control strings were removed."""
    if isinstance(node, str):
        fixed = _SURROGATE.sub("\ufffd", node)
        fixed, controls = strip_chat_controls(fixed)
        return fixed, _SURROGATE.search(node) is not None, controls
    if isinstance(node, (list, dict)):
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        done = [(k, *_repair_strings(v)) for k, v in items]
        values = {_SURROGATE.sub("\ufffd", k) if isinstance(k, str) else k: v for k, v, _, _ in done}
        out = values if isinstance(node, dict) else list(values.values())
        return out, any(c for _, _, c, _ in done), sum(n for _, _, _, n in done)
    return node, False, 0


def without_surrogates(records: list[Any], report: LoadReport) -> list[Any]:
    """Every record with its strings repaired (:func:`_repair_strings`), counted in ``report``:
    records holding a lone surrogate, and control strings removed."""
    out = []
    for rec in records:
        rec, surrogate, controls = _repair_strings(rec)
        if surrogate:
            report.repaired[REPLACED_SURROGATES] += 1
        if controls:
            report.repaired[REMOVED_CONTROLS] += controls
        out.append(rec)
    return out


def read_records(path: str | Path, report: LoadReport) -> list[Any]:
    """Every record of a dataset file, in file order: a JSON list's items, or JSON Lines' lines
    (blank lines are not records). The layout is detected from the content and noted in the
    report. Missing or unreadable files are a :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    text = decode(raw, report)
    if text.lstrip().startswith("["):
        report.layout = "JSON list"
        return without_surrogates(list(_json_list_items(text)), report)
    report.layout = "JSON Lines"
    return without_surrogates([parse_line(line) for line in text.splitlines() if line.strip()], report)


def broken_or_not_object(rec: Any) -> str | None:
    """The skip reason when a record is not a JSON object, else None."""
    if isinstance(rec, Broken):
        return rec.reason
    if not isinstance(rec, dict):
        return "not a JSON object" if rec is not None else "null record"
    return None


def optional_text(rec: dict[str, Any], key: str, report: LoadReport) -> str | None:
    """A free-text field (situation, emotion type...): a string, else dropped and counted."""
    v = rec.get(key)
    if v is None or isinstance(v, str):
        return v or None
    report.repaired[f"non-text {key} dropped"] += 1
    return None


def score_1_to_5(v: Any) -> int | None:
    """A 1-5 rating given as int or string ("3"); None for anything else."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        v = v.strip()
        if not v.isdigit():
            return None
        v = int(v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return v if isinstance(v, int) and 1 <= v <= 5 else None
