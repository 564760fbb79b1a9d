"""The human evaluation kit: a blind page whose key stays apart, statistics on answer files built
so that α, κ and the win shares are known by hand, and the page itself in a real headless browser
(clicks, reload, export, ingestion of the exported file)."""

from __future__ import annotations

import json
import math
import os
import shutil

import pandas as pd
import pytest

from rlff_utils import human_eval as he
from rlff_utils.agents import CRITERIA, JUDGE_CRITERIA
from rlff_utils.runs import read_json


def rec(case: str, system: str) -> dict:
    return {"case_id": case, "situation": f"situation of {case}", "emotion_type": "sadness", "problem_type": "job crisis",
            "history": [{"speaker": "seeker", "text": f"I lost my job ({case})."}],
            "turns": [{"speaker": "supporter", "text": f"[{system} says] That sounds hard."},
                      {"speaker": "seeker", "text": "It is."},
                      *([{"speaker": "supporter", "text": f"[{system} says] What would help now?"},
                         {"speaker": "seeker", "text": "A plan, I think."}] if system == "ours" else [])]}


def write_pairs(params, cases, baseline="vanilla"):
    pairs = [(rec(c, "ours"), rec(c, "theirs")) for c in cases]
    return he.write_kit(params, "rlff-esc", [baseline] * len(pairs), pairs)


def key_of(params) -> tuple[str, dict]:
    key = read_json(he.HumanFolder.of(params).key)
    return key["current"], key["kits"][key["current"]]


def choice(outcome: str, side: str) -> str:
    """The button an annotator presses for ``outcome`` of the system shown on ``side``."""
    return "tie" if outcome == "tie" else side if outcome == "win" else ("B" if side == "A" else "A")


def answer_file(params, annotator, outcomes: dict[str, list], exported="2026-01-01T00:00:00Z", name=None):
    """An exported file: ``outcomes[criterion][i]`` is the outcome for the system on pair i+1 (None: unanswered)."""
    kit, key = key_of(params)
    answers = {}
    for criterion, values in outcomes.items():
        for i, o in enumerate(values):
            if o is not None:
                item = f"pair-{i + 1}"
                answers.setdefault(item, {})[criterion] = choice(o, key[item]["system_side"])
    folder = he.HumanFolder.of(params)
    path = folder.answers / (name or f"{annotator}.json")
    path.write_text(json.dumps({"format": he.FORMAT, "version": 1, "kit": kit, "annotator": annotator,
                                "exported": exported, "answers": answers}))
    return path


def test_the_page_is_blind_its_key_apart_and_sides_follow_the_pair(ci_params):
    page = write_pairs(ci_params, [f"c{i}" for i in range(12)])
    text = page.read_text()
    kit, key = key_of(ci_params)
    assert "rlff-esc" not in text and "vanilla" not in text and "system_side" not in text
    assert "[ours says]" in text and f'"kit": "{kit}"' in text
    assert all(d in text for d in JUDGE_CRITERIA.values())
    assert "<script src" not in text and "http" not in text, "the page loads nothing from elsewhere"
    sides = [key[f"pair-{i + 1}"]["system_side"] for i in range(12)]
    assert set(sides) == {"A", "B"}, "sides are randomised"
    # a pair's side comes from its identity, not its position: the same cases in another order keep theirs
    by_case = {key[i]["case_id"]: key[i]["system_side"] for i in key}
    write_pairs(ci_params, [f"c{i}" for i in reversed(range(12))])
    kit2, key2 = key_of(ci_params)
    assert kit2 != kit and {key2[i]["case_id"]: key2[i]["system_side"] for i in key2} == by_case
    # the key keeps the earlier kit (its answer files still ingest); the same pairs give the same kit
    assert set(read_json(he.HumanFolder.of(ci_params).key)["kits"]) == {kit, kit2}
    write_pairs(ci_params, [f"c{i}" for i in range(12)])
    assert key_of(ci_params)[0] == kit and page.read_text() == text
    assert he.write_kit(ci_params, "rlff-esc", [], []) is None


W, T, L = "win", "tie", "lose"
# Six pairs, three annotators. fluency: all agree, and so does the judge (α = κ = 1). empathy: two
# annotators (a3 leaves it blank) disagree on one pair of six: α = 34/45 by hand (coincidences
# o_ww = o_ll = 4, o_tt = 2, o_wl = o_lw = 1; n_w = n_l = 5, n_t = 2, n = 12; D_o = 2/12,
# D_e = 2(25 + 10 + 10)/132). overall: a1 = a2 = the majority [W W L T W L]; the judge says
# [W L L T W W]: p_o = 4/6, p_e = (9 + 4 + 1)/36, κ = 5/11. suggestion: pair 1 has no majority.
ANSWERS = {
    "a1": {"fluency": [W, L, T, W, L, T], "empathy": [W, W, L, T, W, L], "overall": [W, W, L, T, W, L],
           "suggestion": [W, W, W, W, W, W], "identification": [W] * 6},
    "a2": {"fluency": [W, L, T, W, L, T], "empathy": [W, L, L, T, W, L], "overall": [W, W, L, T, W, L],
           "suggestion": [L, W, W, W, W, W], "identification": [W] * 6},
    "a3": {"fluency": [W, L, T, W, L, T], "empathy": [None] * 6, "overall": [T] * 6,
           "suggestion": [T, W, W, W, W, W], "identification": [W] * 6},
}
JUDGE = {"fluency": [W, L, T, W, L, T], "overall": [W, L, L, T, W, W], "empathy": [W] * 6,
         "suggestion": [W] * 6, "identification": [W] * 6}


def _constructed_run(params):
    cases = [f"c{i}" for i in range(6)]
    write_pairs(params, cases)
    for annotator, outcomes in ANSWERS.items():
        answer_file(params, annotator, outcomes)
    rows = [{"case_id": c, "criterion": crit, "outcome": JUDGE[crit][i], "baseline": "vanilla"}
            for crit in CRITERIA for i, c in enumerate(cases)]
    rows.append({"case_id": "c0", "criterion": "overall", "outcome": None, "baseline": "other"})  # unparsable: left out
    pd.DataFrame(rows).to_csv(he.HumanFolder.of(params).judgements, index=False)


def test_alpha_kappa_and_win_shares_on_constructed_answers(ci_params):
    _constructed_run(ci_params)
    result = he.ingest(ci_params)
    folder = he.HumanFolder.of(ci_params)
    assert result["annotators"] == ["a1", "a2", "a3"] and folder.results_csv.is_file()
    alpha = {a["criterion"]: a for a in result["agreement"]}
    assert alpha["fluency"]["alpha"] == pytest.approx(1.0)
    assert alpha["empathy"]["alpha"] == pytest.approx(34 / 45) and alpha["empathy"]["annotators"] == 2
    assert alpha["identification"]["alpha"] is None and "the same" in alpha["identification"]["alpha_note"]
    judge = {j["criterion"]: j for j in result["judge"]}
    assert judge["fluency"]["kappa"] == pytest.approx(1.0)
    assert judge["overall"]["kappa"] == pytest.approx(5 / 11) and judge["overall"]["agreement"] == pytest.approx(4 / 6)
    assert judge["overall"]["pairs"] == 6 and judge["overall"]["kappa_lo"] <= 5 / 11 <= judge["overall"]["kappa_hi"]
    assert judge["suggestion"]["no_majority"] == 1 and judge["suggestion"]["pairs"] == 5
    assert judge["empathy"]["kappa"] == 0.0, "a judge that always says win agrees only by chance"
    assert math.isnan(judge["identification"]["kappa"]) and "undefined" in judge["identification"]["kappa_note"]
    rates = pd.read_csv(folder.results_csv).set_index("criterion")
    # overall: per pair the share of annotators choosing each outcome, averaged over the six pairs
    assert rates.loc["overall", "win"] == pytest.approx(1 / 3)
    assert rates.loc["overall", "tie"] == pytest.approx(4 / 9) and rates.loc["overall", "lose"] == pytest.approx(2 / 9)
    assert rates.loc["overall", "win_lo"] <= 1 / 3 <= rates.loc["overall", "win_hi"] < 1
    assert (rates.loc["identification", ["win", "win_lo", "win_hi"]] == 1.0).all()
    assert (rates["pairs"] == 6).all() and rates.loc["empathy", "annotations"] == 12
    assert he.results_tables(ci_params)["agreement"].set_index("criterion").loc["overall", "kappa"] == pytest.approx(5 / 11)
    shown = he.results_html(folder)
    assert "rlff-esc vs vanilla" in shown and "0.76" in shown and "0.45 [" in shown and "nan" not in shown.lower()
    assert "every answer is the same" in shown


def test_a_later_export_of_the_same_annotator_replaces_the_earlier(ci_params):
    _constructed_run(ci_params)
    answer_file(ci_params, "a3", {"overall": [L] * 6}, exported="2026-02-01T00:00:00Z", name="a3-again.json")
    result = he.ingest(ci_params)
    rates = pd.DataFrame(result["rates"]).set_index("criterion")
    # a3 now says lose everywhere: pairs 3 and 6 lose for all three, the other four for one of three
    assert rates.loc["overall", "lose"] == pytest.approx((2 * 1 + 4 * 1 / 3) / 6)
    assert rates.loc["fluency", "annotations"] == 12, "the later file of a3 holds no fluency answers"
    assert any("a3.json replaced by the later export a3-again.json" in n for n in result["notes"])


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(kit="000000000000"), "kit '000000000000'"),
    (lambda d: d["answers"]["pair-1"].update(overall="better"), "pair-1: overall: answer 'better'"),
    (lambda d: d["answers"].update({"pair-99": {"overall": "A"}}), "unknown pair 'pair-99'"),
    (lambda d: d.update(annotator="  "), "no annotator id"),
    (lambda d: d.update(format="something else"), "not an answer file"),
])
def test_a_bad_answer_file_is_refused_by_name(ci_params, change, message):
    write_pairs(ci_params, ["c0", "c1"])
    path = answer_file(ci_params, "a1", {"overall": [W, L]})
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"a1.json: .*{message}"):
        he.ingest(ci_params)


def test_no_answer_file_no_results(ci_params):
    write_pairs(ci_params, ["c0"])
    assert he.ingest(ci_params) is None and not he.HumanFolder.of(ci_params).results_json.exists()
    (he.HumanFolder.of(ci_params).answers / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not a JSON answer file"):
        he.ingest(ci_params)


# ---- the page in a real browser ------------------------------------------------------------


def chromium() -> str:
    """The system Chromium for Playwright; skip (saying why and how) where it or Playwright is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the browser test needs Playwright: pip install playwright (it drives the system Chromium)")
    path = os.environ.get("RLFF_CHROMIUM") or next(
        (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if not path:
        pytest.skip("no Chromium found for the browser test: apt-get install chromium, or set RLFF_CHROMIUM to a Chromium binary")
    return path


@pytest.fixture()
def browser_page(tmp_path):
    from playwright.sync_api import sync_playwright

    path = chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
        yield context.new_page()
        browser.close()


def test_the_page_in_a_browser_keeps_answers_over_a_reload_and_exports_them(ci_params, browser_page):
    page_path = write_pairs(ci_params, ["c0", "c1", "c2"])
    _, key = key_of(ci_params)
    page = browser_page
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(page_path.as_uri())
    assert page.inner_text("#progress") == "0 of 3 pairs complete"
    assert "Conversation A" in page.inner_text("#pair") and "[ours says] What would help now?" in page.inner_text("#pair")
    assert JUDGE_CRITERIA["empathy"] in page.inner_text("#pair")
    # pair 1: A on every criterion but fluency (tie), and a note; pair 2: B on overall only
    for c in CRITERIA:
        page.check(f"input[name='pair-1:{c}'][value='{'tie' if c == 'fluency' else 'A'}']")
    page.fill("#note", "B repeats itself")
    assert page.inner_text("#progress") == "1 of 3 pairs complete"
    page.fill("#annotator", "kim")
    page.click("#next-bottom")
    assert page.inner_text("#pair h2") == "Pair 2 of 3"
    page.check("input[name='pair-2:overall'][value='B']")  # the last event before the reload
    # Chromium hands localStorage writes to its store asynchronously: a reload within about a second
    # of the last write missed it now and then here (never after 3 s in 30 tries); a person reloads later
    page.wait_for_timeout(3000)
    page.reload()
    # the reload keeps everything: the annotator, the pair shown, each answer and the note
    assert page.input_value("#annotator") == "kim" and page.inner_text("#pair h2") == "Pair 2 of 3"
    assert page.is_checked("input[name='pair-2:overall'][value='B']")
    assert not page.is_checked("input[name='pair-2:empathy'][value='A']")
    assert page.inner_text("#progress") == "1 of 3 pairs complete"
    page.click("#prev")
    assert page.is_checked("input[name='pair-1:fluency'][value='tie']") and page.input_value("#note") == "B repeats itself"
    with page.expect_download() as download:
        page.click("#export")
    folder = he.HumanFolder.of(ci_params)
    target = folder.answers / download.value.suggested_filename
    download.value.save_as(target)
    assert target.name.startswith("answers-kim-") and "exported" in page.inner_text("#status")
    data = json.loads(target.read_text())
    assert data["annotator"] == "kim" and data["complete"] == 1 and data["pairs"] == 3
    assert data["answers"]["pair-1"]["note"] == "B repeats itself" and data["answers"]["pair-2"] == {"overall": "B"}
    assert errors == []
    # ingested back: the clicks become outcomes for the system through the key
    result = he.ingest(ci_params)
    assert result["comments"] == [{"annotator": "kim", "baseline": "vanilla", "case_id": "c0",
                                   "system_side": key["pair-1"]["system_side"], "note": "B repeats itself"}]
    rates = pd.DataFrame(result["rates"]).set_index("criterion")
    expect_empathy = "win" if key["pair-1"]["system_side"] == "A" else "lose"
    assert rates.loc["empathy", expect_empathy] == 1.0 and rates.loc["fluency", "tie"] == 1.0
    assert rates.loc["overall", "pairs"] == 2


def test_export_asks_for_an_annotator_id_first(ci_params, browser_page):
    page = browser_page
    page.goto(write_pairs(ci_params, ["c0"]).as_uri())
    page.check("input[name='pair-1:overall'][value='A']")
    page.click("#export")
    assert "annotator id" in page.inner_text("#status")
    assert list(he.HumanFolder.of(ci_params).answers.glob("*.json")) == []


def test_the_index_shows_the_human_results_and_the_command_line_ingests(ci_params, tmp_path, project_root, capsys):
    from rlff_utils import pagecheck, report

    _constructed_run(ci_params)
    text = report.write_index(ci_params).read_text()
    assert "href='../evaluation/human/annotate.html'" in text and "<h2>Human evaluation</h2>" not in text
    own = tmp_path / "run.yaml"  # the command line reads a params file: ci, writing into this test's folder
    own.write_text(f"extends: {project_root / 'params' / 'ci.yaml'}\nrun_name: {ci_params.run_name}\n"
                   f"output_root: {ci_params.output_root}\n")
    he.main([str(own)])
    printed = capsys.readouterr().out
    assert "3 annotator(s): a1, a2, a3" in printed and "0.76" in printed
    text = report.write_index(ci_params).read_text()
    assert "<h2>Human evaluation</h2>" in text and "href='../evaluation/human/human_results.csv'" in text
    assert "0.45 [" in text and pagecheck.lint_html(text, is_index=True) == []
