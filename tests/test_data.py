"""Data stage on the real ESConv copy (RLFF_DATA_DIR): contexts, the stage contract; ExTES fixtures.
ESConv's own loaders are tested in test_esconv.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlff_utils import data
from rlff_utils.params import load_params

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
    assert dict(report.unknown_strategies) == {"Normalise Experience": 1}
    assert {d.split for d in data.load_extes(FIXTURES / "extes_messy.json", 0.5, 0)[0]} <= {"train", "test"}


@pytest.mark.parametrize("content, words", [
    ("{ not json", "1 x not valid JSON"), ('{"a": 1}', "1 x empty dialogue"), ("", "no records in the file (empty)"),
    ('[{"scene": "x", "content": [{"User": "hi"}]}, {"scene"', "malformed JSON list from here on"),
])
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
    from rlff_utils import runs

    prepared = data.prepare_data(ci_params)
    lay = runs.layout(ci_params)
    stats = runs.read_json(lay.data_stats)
    assert stats["contexts"] == len(prepared.contexts) == 12
    assert stats["sources"] == {"esconv": f"local folder {ci_params.data.esconv_dir} (auto: the local folder exists)"}
    assert [r["kept"] for r in stats["load_reports"]] == [910, 195, 195, 130]
    assert all(r["skipped"] == {} for r in stats["load_reports"])
    assert data.load_contexts(ci_params) == prepared.contexts
    assert set(prepared.contexts[0]["history"][0]) == {"speaker", "text", "strategy"}  # prompts carry no ratings
    assert len(data.load_eval_cases(ci_params)) == 4
    assert data.load_eval_cases(ci_params)[0]["case_id"] == "ppdpp-test-0000"
    assert len(data.load_dialogues(ci_params)) == 1300
    record = runs.read_record(ci_params.run_dir, runs.DATA)
    assert record["complete"] and record["settings"]["data"]["max_contexts"] == 12
    # the stage contract: other data settings on the same folder are refused, force starts over
    other = load_params(ci_params.source, {"output_root": ci_params.output_root, "data.max_contexts": 5})
    with pytest.raises(runs.StaleStageError, match="data.max_contexts: 12 -> 5"):
        data.prepare_data(other)
    assert len(data.prepare_data(other, force=True).contexts) == 5 == len(data.load_contexts(other))


def test_no_contexts_is_a_clear_error(ci_params):
    params = load_params(ci_params.source, {"output_root": ci_params.output_root, "data.max_dialogues": 1,
                                            "data.min_history_turns": 500, "data.max_history_turns": 500})
    with pytest.raises(data.DataError, match="no contexts: 1 dialogues in splits"):
        data.load_all(params)
