"""ESConv loaders: both layouts (hand-written fixture, the real failed conversations), broken
records of every kind, stable ids, PPDPP's split rebuilt from ESConv by the shipped ids, the hub
path (through `datasets`, on a local copy laid out like the hub repository) and the offline
message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from rlff_utils.params import ParamsError

from rlff_utils import data, esconv
from rlff_utils.dialogues import DataError, LoadReport, read_records

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"

GOOD = {"emotion_type": "fear", "problem_type": "x", "situation": "s",
        "survey_score": {"seeker": {"initial_emotion_intensity": "4", "final_emotion_intensity": "2"}},
        "dialog": [{"text": "hi", "speaker": "usr"}, {"text": "hello", "speaker": "sys", "strategy": "Question"}]}


def _folder(tmp_path: Path, train_lines: list[str] | bytes) -> Path:
    folder = tmp_path / "esconv"
    folder.mkdir(parents=True)
    raw = train_lines if isinstance(train_lines, bytes) else ("\n".join(train_lines) + "\n").encode()
    (folder / "train.json").write_bytes(raw)
    for split in ("valid", "test"):
        (folder / f"{split}.json").write_text(json.dumps(GOOD) + "\n")
    return folder


@pytest.fixture(scope="module")
def local_records(data_dir):
    return esconv.read_esconv(esconv.decide_source("local", data_dir / "esconv"))


# ---- broken records (Hugging Face layout, JSON Lines) ------------------------------------------


def test_broken_records_are_skipped_counted_and_never_shift_ids(tmp_path):
    lines = [
        json.dumps(GOOD),                                                      # 0 kept
        "{not json",                                                           # 1
        "null",                                                                # 2
        json.dumps({"dialog": []}),                                            # 3
        json.dumps({"dialog": [{"text": None, "speaker": "usr"}]}),            # 4
        json.dumps({"dialog": [{"text": "a", "speaker": "bot"}]}),             # 5
        "",                                                                    # blank: not a record
        json.dumps({**GOOD, "survey_score": "n/a"}),                           # 6 kept, survey dropped
        json.dumps({**GOOD, "dialog": [GOOD["dialog"][0], {**GOOD["dialog"][1], "strategy": 5}]}),  # 7 kept
        json.dumps({**GOOD, "situation": "last"}),                             # 8 kept
    ]
    dialogues, reports = data.load_esconv(_folder(tmp_path, lines))
    train = [d for d in dialogues if d.split == "train"]
    assert [d.id for d in train] == ["esconv-train-0000", "esconv-train-0006", "esconv-train-0007", "esconv-train-0008"]
    assert train[-1].situation == "last"
    assert dict(reports[0].skipped) == {"not valid JSON": 1, "null record": 1, "empty dialogue": 1,
                                        "null or empty text": 1, "unknown speaker": 1}
    assert reports[0].examples["null record"] == [2]
    assert dict(reports[0].repaired) == {"unreadable survey score dropped": 1, "non-text strategy dropped": 1}
    assert train[1].initial_emotion_intensity is None and train[0].initial_emotion_intensity == 4
    assert train[2].turns[1].strategy is None and train[2].turns[1].text == "hello"
    assert "kept 4, skipped 5" in str(reports[0]) and "repaired" in str(reports[0])


def test_ids_do_not_depend_on_other_records(tmp_path):
    """The same file with records broken in the middle gives the survivors the same ids."""
    good = [json.dumps({**GOOD, "situation": f"case {i}"}) for i in range(5)]
    clean = data.load_esconv(_folder(tmp_path / "a", good))[0]
    broken = good.copy()
    broken[1], broken[3] = "null", '{"dialog": "oops"'
    messy = data.load_esconv(_folder(tmp_path / "b", broken))[0]
    survivors = {d.id: d for d in clean if d.split == "train" and d.situation in {"case 0", "case 2", "case 4"}}
    assert {d.id: d for d in messy if d.split == "train"} == survivors


def test_non_utf8_bytes_are_replaced_not_fatal(tmp_path):
    bad = json.dumps({**GOOD, "situation": "caf\u00e9"}, ensure_ascii=False).encode().replace("caf\u00e9".encode(), b"caf\xe9")
    raw = json.dumps(GOOD).encode() + b"\n" + bad + b"\n" + json.dumps(GOOD).encode() + b"\n"
    dialogues, reports = data.load_esconv(_folder(tmp_path, raw))
    train = [d for d in dialogues if d.split == "train"]
    assert len(train) == 3 and train[1].situation == "caf\ufffd"
    assert reports[0].repaired == Counter({"undecodable bytes replaced": 1})


def test_empty_split_file_is_a_data_error_naming_it(tmp_path):
    folder = _folder(tmp_path, b"")
    with pytest.raises(DataError, match=r"train\.json: no records in the file \(empty\)"):
        data.load_esconv(folder)


def test_file_without_any_readable_record_names_the_reasons(tmp_path):
    folder = _folder(tmp_path, ["null", "[1, 2", "{broken", "{also broken"])
    with pytest.raises(DataError) as err:
        data.load_esconv(folder)
    msg = str(err.value)
    assert str(folder / "train.json") in msg and "no readable dialogue among 4 records (JSON Lines)" in msg
    assert "3 x not valid JSON (e.g. record 1)" in msg and "1 x null record" in msg


def test_pretty_printed_list_in_the_json_lines_slot_is_read(tmp_path, data_dir):
    """The layout is detected from the content: a JSON list where JSON Lines are expected."""
    rows = [json.loads(line) for line in (data_dir / "esconv" / "test.json").read_text().splitlines()[:30]]
    folder = _folder(tmp_path, json.dumps(rows, indent=2).encode())
    dialogues, reports = data.load_esconv(folder)
    assert reports[0].layout == "JSON list" and reports[0].kept == 30 and not reports[0].skipped
    assert [d.situation for d in dialogues[:30]] == [r["situation"] for r in rows]


# ---- the original release layout ---------------------------------------------------------------


def test_original_layout_fixture():
    dialogues, report = esconv.load_esconv_failed(FIXTURES / "esconv_original.json")
    assert report.layout == "JSON list"
    assert [d.id for d in dialogues] == ["esconv-failed-0000", "esconv-failed-0001", "esconv-failed-0008"]
    assert dict(report.skipped) == {"null record": 1, "empty dialogue": 1, "null or empty text": 1,
                                    "unknown speaker": 1, "not a JSON object": 1, "turn is not an object": 1}
    assert dict(report.repaired) == {"unreadable survey score dropped": 1, "invalid feedback dropped": 1,
                                     "non-text strategy dropped": 1}
    assert dict(report.unknown_strategies) == {"Humour": 1}
    first, second, third = dialogues
    # seeker/supporter naming; feedback kept (string or int); strategies mapped to the 8 ESConv names
    assert [t.speaker for t in first.turns] == ["seeker", "supporter", "seeker", "supporter", "supporter", "seeker", "supporter"]
    assert first.turns[0].text == "Hi, I am scared about work."
    assert [t.feedback for t in first.turns] == [None, None, 4, None, None, 2, None]
    assert [t.strategy for t in first.turns if t.speaker == "supporter"] == [
        "Question", "Reflection of feelings", "Providing Suggestions", "Humour"]
    assert (first.initial_emotion_intensity, first.final_emotion_intensity, first.empathy, first.relevance) == (5, 5, 2, 3)
    # speaker/listener naming; broken survey, feedback and strategy dropped, the dialogue kept
    assert [t.speaker for t in second.turns] == ["seeker", "supporter"] * 3
    assert [t.feedback for t in second.turns] == [None, None, None, None, 1, None]
    assert [t.strategy for t in second.turns if t.speaker == "supporter"] == [
        "Others", None, "Affirmation and Reassurance"]
    assert second.initial_emotion_intensity is None
    assert third.turns[1].strategy == "Restatement or Paraphrasing" and third.final_emotion_intensity is None


def test_real_failed_conversations(data_dir):
    dialogues, report = esconv.load_esconv_failed(data_dir / "esconv" / "failed" / "FailedESConv_dev.json")
    assert len(dialogues) == 98 and report.kept == 98 and not report.skipped and not report.repaired
    assert not report.unknown_strategies
    turns = [t for d in dialogues for t in d.turns]
    assert Counter(t.speaker for t in turns) == {"seeker": 1454, "supporter": 1168}
    assert Counter(t.feedback for t in turns if t.feedback) == {3: 138, 2: 104, 4: 95, 1: 91, 5: 53}
    assert Counter(t.strategy for t in turns if t.strategy) == {
        "Question": 270, "Others": 197, "Providing Suggestions": 187, "Affirmation and Reassurance": 151,
        "Reflection of feelings": 98, "Self-disclosure": 97, "Restatement or Paraphrasing": 95, "Information": 73}
    assert sum(d.final_emotion_intensity is not None for d in dialogues) == 70
    assert all(d.split == "failed" and d.dataset == "esconv" for d in dialogues)


def test_strategy_names():
    assert esconv.canonical_strategy("[Reflection of Feelings]") == "Reflection of feelings"
    assert esconv.canonical_strategy("self disclosure") == "Self-disclosure"
    assert esconv.canonical_strategy("Questions") == "Question"
    assert esconv.canonical_strategy("Humour") is None


# ---- PPDPP's split from the shipped ids --------------------------------------------------------


@pytest.mark.parametrize("split", ["test", "valid"])
def test_ppdpp_ids_reproduce_ppdpp_files_exactly(local_records, data_dir, split):
    lines = (data_dir / "esconv" / "ppdpp" / f"esc-{split}.txt").read_text(encoding="utf-8").splitlines()
    want = [json.loads(line) for line in lines]
    got = esconv.ppdpp_records(local_records, split)
    assert len(got) == 130 and got == want
    assert all(list(g) == list(w) for g, w in zip(got, want))  # same fields, same order
    assert [json.dumps(g, ensure_ascii=False) for g in got] == [json.dumps(w, ensure_ascii=False) for w in want]
    derived, report = esconv.ppdpp_from_esconv(local_records, split)
    from_files, _ = esconv.load_ppdpp(data_dir / "esconv" / "ppdpp", split)
    assert derived == from_files and report.kept == 130
    cases = data.build_eval_cases(derived)
    assert len(cases) == 130 and cases[0]["opening"] == derived[0].situation and cases[0]["case_id"] == f"ppdpp-{split}-0000"


def test_ppdpp_cases_found_in_a_reordered_copy_and_missing_ones_counted(local_records):
    reordered = esconv.EsconvRecords(local_records.source,
                                     {s: list(reversed(r)) for s, r in local_records.splits.items()},
                                     local_records.reports)
    assert esconv.ppdpp_records(reordered, "test") == esconv.ppdpp_records(local_records, "test")
    first = esconv.ppdpp_ids()["test"][0]
    holed = esconv.EsconvRecords(local_records.source, {s: list(r) for s, r in local_records.splits.items()},
                                 local_records.reports)
    holed.splits[first[0]][first[1]] = None
    dialogues, report = esconv.ppdpp_from_esconv(holed, "test")
    assert len(dialogues) == 129 and dict(report.skipped) == {"case not in this ESConv copy": 1}
    assert dialogues[0].id == "ppdpp-test-0001"


def test_the_ids_tool_rebuilds_the_shipped_list(tmp_path, data_dir):
    out = tmp_path / "ids.json"
    r = subprocess.run([sys.executable, "-m", "tools.build_ppdpp_ids", "--esconv", str(data_dir / "esconv"),
                        "--ppdpp", str(data_dir / "esconv" / "ppdpp"), "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == (ROOT / "rlff_utils" / "resources" / "ppdpp_ids.json").read_bytes()


# ---- where ESConv comes from -------------------------------------------------------------------


def test_decide_source(tmp_path):
    assert esconv.decide_source("auto", tmp_path).kind == "local"
    hub = esconv.decide_source("auto", tmp_path / "absent")
    assert hub.kind == "hub" and "not found" in hub.why
    assert esconv.decide_source("auto", None, no_folder="RLFF_DATA_DIR is not set").why == (
        "auto: no local folder: RLFF_DATA_DIR is not set")
    assert esconv.decide_source("hub", tmp_path).kind == "hub"
    with pytest.raises(DataError, match="ESConv folder not found"):
        esconv.decide_source("local", tmp_path / "absent")


def test_hub_path_reads_the_hub_layout(tmp_path, data_dir, monkeypatch):
    """`datasets.load_dataset` on a folder laid out like the hub repository (train.txt, valid.txt,
    test.txt + the original ESConv.json, which the split files win over) gives the same dialogues."""
    import datasets

    repo = tmp_path / "esconv-hub"
    repo.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copy(data_dir / "esconv" / f"{split}.json", repo / f"{split}.txt")
    (repo / "ESConv.json").write_text("[]")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    hub_dialogues, reports = data.load_esconv(source="hub", hub_id=str(repo))
    local_dialogues, _ = data.load_esconv(data_dir / "esconv")
    assert hub_dialogues == local_dialogues
    assert [r.source for r in reports] == [f"{repo}:train", f"{repo}:validation", f"{repo}:test"]
    records = esconv.read_esconv(esconv.decide_source("hub", None, str(repo)))
    assert esconv.ppdpp_from_esconv(records, "test")[0] == esconv.ppdpp_from_esconv(
        esconv.read_esconv(esconv.decide_source("local", data_dir / "esconv")), "test")[0]


def test_auto_source_follows_the_data_folder(ci_params, tmp_path):
    from rlff_utils.params import load_params

    params = load_params(ci_params.source, {"output_root": str(tmp_path), "data.esconv_source": "auto"})
    assert data.esconv_source(params).kind == "local"
    over = {"output_root": str(tmp_path), "data.esconv_source": "auto", "data.esconv_dir": str(tmp_path / "absent")}
    with pytest.raises(ParamsError, match="data.esconv_dir: folder not found"):  # a given folder must exist
        load_params(ci_params.source, over)
    assert data.esconv_source(load_params(ci_params.source, over, check_files=False)).kind == "hub"


def test_auto_source_without_a_configured_folder_uses_rlff_data_dir(ci_params, data_dir, monkeypatch):
    """``data.esconv_dir: None`` (a schema that makes the folder optional) means
    ``$RLFF_DATA_DIR/esconv`` when the variable is set, the hub otherwise."""
    params = ci_params.model_copy(update={"data": ci_params.data.model_copy(
        update={"esconv_dir": None, "esconv_source": "auto"})})
    source = data.esconv_source(params)
    assert source.kind == "local" and source.folder.resolve() == (data_dir / "esconv").resolve()
    monkeypatch.delenv("RLFF_DATA_DIR")
    source = data.esconv_source(params)
    assert source.kind == "hub" and source.why == "auto: no local folder: data.esconv_dir is not given and RLFF_DATA_DIR is not set"


def test_offline_without_data_names_both_ways(tmp_path, project_root):
    """No RLFF_DATA_DIR, offline, nothing cached: one DataError that says what to do."""
    env = {k: v for k, v in os.environ.items() if k != "RLFF_DATA_DIR"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH=str(project_root))
    args = f"{str(project_root / 'params' / 'ci.yaml')!r}, {{'output_root': {str(tmp_path)!r}, 'data.esconv_source': 'auto'}}"
    script = (
        "from rlff_utils import data; from rlff_utils.params import ParamsError, load_params\n"
        f"try:\n    load_params({args})\nexcept ParamsError as e:\n    print('ParamsError:', e)\n"
        f"p = load_params({args}, check_files=False)\n"
        "try:\n    data.load_all(p)\nexcept data.DataError as e:\n    print('DataError:', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    first, out = r.stdout.split("DataError: ", 1)
    out = "DataError: " + out
    # caught at params validation, before any loading, naming both ways
    assert first.startswith("ParamsError:") and "RLFF_DATA_DIR=" in first and "go online" in first
    assert out.startswith("DataError: ESConv could not be loaded.\n  Hugging Face hub thu-coai/esconv: ConnectionError")
    assert "local copy: no local folder: data.esconv_dir is not given and RLFF_DATA_DIR is not set" in out
    assert "set RLFF_DATA_DIR=/path/to/data" in out and "go online once" in out


def test_read_records_detects_layouts(tmp_path):
    path = tmp_path / "f.json"
    path.write_text('\n  [ {"a": 1},\n {"b": 2} ]\n')
    report = LoadReport(str(path))
    assert read_records(path, report) == [{"a": 1}, {"b": 2}] and report.layout == "JSON list"
    path.write_text('{"a": 1}\n\n{"b": 2}\n')
    assert read_records(path, report) == [{"a": 1}, {"b": 2}] and report.layout == "JSON Lines"
    with pytest.raises(DataError, match="file not found"):
        read_records(tmp_path / "absent.json", report)
