"""Data layer on the real ESConv copy (RLFF_DATA_DIR) and on hand-written ExTES fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlff_utils import data

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def esconv(data_dir):
    dialogues, reports = data.load_esconv(data_dir / "esconv")
    return dialogues, reports


def test_esconv_loads_all_dialogues_in_one_schema(esconv):
    dialogues, reports = esconv
    assert len(dialogues) == 1300
    assert [r.kept for r in reports] == [910, 195, 195]
    assert len({d.id for d in dialogues}) == 1300
    d = dialogues[0]
    assert d.dataset == "esconv" and d.split == "train" and d.emotion_type == "anxiety"
    assert {t.speaker for t in d.turns} == {"seeker", "supporter"}
    assert all(t.strategy is None for t in d.turns if t.speaker == "seeker")
    assert all(t.strategy in data.ESCONV_STRATEGIES for x in dialogues for t in x.turns if t.speaker == "supporter")
    both = [x for x in dialogues if x.initial_emotion_intensity is not None and x.final_emotion_intensity is not None]
    assert len(both) == 1150 and isinstance(both[0].final_emotion_intensity, int)


def test_ppdpp_split(data_dir):
    test, report = data.load_ppdpp(data_dir / "esconv" / "ppdpp", "test")
    valid, _ = data.load_ppdpp(data_dir / "esconv" / "ppdpp", "valid")
    assert len(test) == 130 == len(valid) and report.kept == 130
    cases = data.build_eval_cases(test)
    assert len(cases) == 130 and cases[0]["opening"] == test[0].situation


def test_esconv_broken_records_are_skipped_and_counted(tmp_path, esconv):
    folder = tmp_path / "esconv"
    folder.mkdir()
    good = json.dumps({"emotion_type": "fear", "problem_type": "x", "situation": "s",
                       "dialog": [{"text": "hi", "speaker": "usr"}, {"text": "hello", "speaker": "sys", "strategy": "Question"}]})
    lines = [good, "{not json", json.dumps({"dialog": []}), json.dumps({"dialog": [{"text": None, "speaker": "usr"}]}),
             json.dumps({"dialog": [{"text": "a", "speaker": "bot"}]})]
    (folder / "train.json").write_text("\n".join(lines) + "\n")
    for split in ("valid", "test"):
        (folder / f"{split}.json").write_text(good + "\n")
    dialogues, reports = data.load_esconv(folder)
    assert len(dialogues) == 3
    assert dict(reports[0].skipped) == {"not a JSON object": 1, "empty dialogue": 1, "null or empty text": 1, "unknown speaker": 1}
    assert "kept 1" in str(reports[0])


def test_extes_messy_fixture():
    dialogues, report = data.load_extes(FIXTURES / "extes_messy.json", test_fraction=0.5, seed=0)
    assert [d.situation for d in dialogues] == ["My partner left me last week.", "Finals next week."]
    assert dict(report.skipped) == {
        "turn with both speakers": 1, "null or empty text": 1, "empty dialogue": 1,
        "not a JSON object": 1, "one speaker only": 1,
    }
    first = dialogues[0]
    assert first.dataset == "extes" and first.problem_type == "Breakups or Divorce"
    # strategy spelling variants map onto the documented names; unknown ones are kept verbatim
    assert [t.strategy for t in first.turns if t.speaker == "supporter"] == ["Empathetic Statements", "Clarification"]
    assert dialogues[1].turns[1].strategy == "Normalise Experience"
    assert {d.split for d in data.load_extes(FIXTURES / "extes_messy.json", 0.5, 0)[0]} <= {"train", "test"}


@pytest.mark.parametrize("content, words", [("{ not json", "not a readable JSON file"), ('{"a": 1}', "expected a JSON list")])
def test_extes_unreadable_file_names_the_file(tmp_path, content, words):
    path = tmp_path / "ExTES.json"
    path.write_text(content)
    with pytest.raises(data.DataError) as err:
        data.load_extes(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_contexts_end_in_seeker_turn_and_are_reproducible(esconv):
    dialogues = esconv[0][:50]
    a = data.build_contexts(dialogues, per_dialogue=2, min_history_turns=3, seed=7)
    b = data.build_contexts(dialogues, per_dialogue=2, min_history_turns=3, seed=7)
    c = data.build_contexts(dialogues, per_dialogue=2, min_history_turns=3, seed=8)
    assert a == b and a != c
    assert all(x["history"][-1]["speaker"] == "seeker" and len(x["history"]) >= 4 for x in a)
    by_id = {d.id: d for d in dialogues}
    for x in a:
        d = by_id[x["dialogue_id"]]
        i = int(x["context_id"].split("@")[1])
        assert x["reference_reply"] == d.turns[i + 1].text and d.turns[i + 1].speaker == "supporter"
    capped = data.build_contexts(dialogues, 2, 3, max_contexts=10, seed=7)
    assert len(capped) == 10 and {x["context_id"] for x in capped} <= {x["context_id"] for x in a}


def test_prepare_data_writes_datasets(ci_params):
    prepared = data.prepare_data(ci_params)
    out = ci_params.run_dir / "data"
    assert json.loads((out / "stats.json").read_text())["contexts"] == len(prepared.contexts) == 12
    assert data.load_contexts(ci_params) == prepared.contexts
    assert len(data.load_eval_cases(ci_params)) == 4
    assert len(data.load_dialogues(ci_params)) == 1300
