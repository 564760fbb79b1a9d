"""Reader pages a colleague can read: the page linter (rlff_utils.pagecheck) on synthetic pages and
on every reader page of the ci run, and one real-browser check (headless Chromium) that the pages
fit 1,280 px and render.

``RLFF_CI_RUN=<folder of a finished ci run>`` lints that run instead of running the pipeline
(the run folder, e.g. ``/tmp/x/outputs/ci``)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from rlff_utils import pagecheck

CLEAN = """<!DOCTYPE html><html><head><title>03 · The reward model</title>
<script>var x = {'a': 1};</script><style>p {{}}</style></head><body>
<nav><a href="index.html">index</a></nav><div class="rlff-banner">This is a test run.</div>
<h1>03 · The reward model</h1><p>AUC 0.52 [0.31, 0.70]; missing: –</p>
<table><tr><th>pairwise accuracy</th><th>ROC-AUC</th></tr><tr><td>0.5</td><td>–</td></tr></table>
<math><mi>R</mi><mtext>fut</mtext></math></body></html>"""


def _with(body: str) -> str:
    return CLEAN.replace("</body>", body + "</body>")


def test_a_clean_page_passes():
    assert pagecheck.lint_html(CLEAN) == []
    # a seeker's words are not formulas: prices in dollars pass
    assert pagecheck.lint_html(_with("<pre>I pay $750 monthly, but only $163 through my work</pre>")) == []


@pytest.mark.parametrize("defect, kind", [
    ("<pre>{'loss': '1.076', 'grad_norm': '11.51'}</pre>", "dict or list repr"),
    ("<pre>['simulation/prompts.json', 'simulation/stage.json']</pre>", "dict or list repr"),
    ('<pre>{\n "contrast_critic": null}</pre>', "dict or list repr"),
    ("<td>{}</td>", "dict or list repr"),
    ("<td>NaN</td>", "raw missing value"),
    ("<td>&lt;NA&gt;</td>", "raw missing value"),
    ("<td>None</td>", "raw missing value"),
    ("<td>(0.0, 0.0)</td>", "tuple interval"),
    ("<pre>run 'smoke' -&gt; /home/someone/rlff-esc/outputs/smoke</pre>", "absolute machine path"),
    ("<p>adapter: /tmp/x/policy/adapter</p>", "absolute machine path"),
    ('<h2>Rfut">Reward model: variant comparison</h2>', "formula markup"),
    ("<p>min(r Â, \\ clip(…))</p>", "formula markup"),
    ("<p>$$R_\\text{fut}$$</p>", "formula markup"),
    ("<math><mi>A</mi><mi>\\</mi><mo>clip</mo></math>", "formula markup"),
    ("<p>the reward $R_fut$ of a candidate</p>", "formula markup"),
    ('<h2 id="scores-against-<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline"><mrow><mi>R</mi>'
     '</mrow></math>">Reward model: variant comparison</h2>', "formula markup inside a tag's attribute"),
    ("<pre>UserWarning: 2 context(s) do not fit</pre>", "library log or progress output"),
    ("<pre>Loading: 100%|####| 30/30</pre>", "library log or progress output"),
    ("<table><tr><th>Training Loss</th></tr></table>", "library log or progress output"),
    ("<pre>&lt;Figure size 640x480 with 2 Axes&gt;</pre>", "Python object repr"),
    ("<table><tr><th>spearman_drop</th></tr></table>", "code name as a table header"),
    ('<script src="https://cdn.jsdelivr.net/npm/@jupyter-widgets/html-manager.js"></script>', "external source"),
    ('<script type="application/vnd.jupyter.widget-view+json">{}</script>', "a widget output"),
])
def test_each_defect_is_named(defect, kind):
    problems = pagecheck.lint_html(_with(defect))
    assert any(p.startswith(kind) for p in problems), problems


@pytest.mark.parametrize("page, kind", [
    (CLEAN.replace("03 · The reward model</title>", "Notebook</title>"), "title"),
    (CLEAN.replace('<a href="index.html">index</a>', ""), "no link to index.html"),
    (CLEAN.replace('class="rlff-banner"', 'class="note"'), "no purpose banner"),
])
def test_missing_title_index_link_or_banner_is_named(page, kind):
    assert any(p.startswith(kind) for p in pagecheck.lint_html(page))


def test_the_index_needs_no_link_to_itself_and_a_research_run_no_banner():
    page = CLEAN.replace('<a href="index.html">index</a>', "").replace('class="rlff-banner"', "")
    assert pagecheck.lint_html(page, is_index=True, banner=False) == []


# --------------------------------------------------------------------------------------------
# The ci run's pages
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory, data_dir) -> Path:
    """A finished ci run folder: ``RLFF_CI_RUN`` when set, else the pipeline run once here."""
    given = os.environ.get("RLFF_CI_RUN")
    if given:
        run = Path(given)
        assert (run / "report" / "index.html").is_file(), f"RLFF_CI_RUN={given}: no report/index.html"
        return run
    from rlff_utils import pipeline

    root = tmp_path_factory.mktemp("pages") / "outputs"
    pipeline.run_pipeline(Path(__file__).resolve().parents[1] / "params" / "ci.yaml", overrides={"output_root": str(root)})
    return root / "ci"


@pytest.mark.slow
def test_every_reader_page_of_the_ci_run_is_clean(ci_run):
    pages = pagecheck.reader_pages(ci_run / "report")
    names = {p.name for p in pages}
    assert {"index.html", "transcripts.html", "03_reward_model.html", "05_evaluation.html"} <= names, names
    found = pagecheck.lint_report(ci_run / "report")
    assert not found, "\n".join(f"{name}: {p}" for name, problems in found.items() for p in problems)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium): the real-browser check is skipped")
    return exe


# After load, the page lists every element whose right edge passes the window's width.
_MEASURE = """<script>
window.addEventListener('load', () => {
  const w = document.documentElement.clientWidth, wide = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > w + 1 && !el.closest('.rlff-scroll')) wide.push(el.tagName + ' ' + Math.round(r.right) + 'px: ' + (el.textContent || '').trim().slice(0, 60));
  }
  const out = document.createElement('pre'); out.id = 'rlff-overflow';
  out.textContent = JSON.stringify({width: w, scroll: document.documentElement.scrollWidth, wide: wide.slice(0, 20)});
  document.body.appendChild(out);
});
</script>"""


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow
def test_pages_fit_1280_px_in_a_real_browser(ci_run, tmp_path):
    """Headless Chromium: screenshots of the index, 03 and 05 at 1,280 px wide (kept under
    ``RLFF_SCREENSHOTS`` when set, to be looked at), and no element of any reader page past the
    right edge (a table that does not fit)."""
    import json

    exe = _chromium()
    shots = Path(os.environ.get("RLFF_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,4000",
            "--virtual-time-budget=5000"]
    report = ci_run / "report"
    for name in ("index", "03_reward_model", "05_evaluation"):
        png = shots / f"{name}.png"
        r = subprocess.run([*base, f"--screenshot={png}", (report / f"{name}.html").as_uri()],
                           capture_output=True, text=True, timeout=120)
        assert png.is_file(), r.stderr[-2000:]
        assert _png_size(png)[0] == 1280
    wide = {}
    for page in pagecheck.reader_pages(report):
        probe = tmp_path / page.name
        probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
        r = subprocess.run([*base, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
        found = r.stdout.split('<pre id="rlff-overflow">', 1)
        assert len(found) == 2, f"{page.name}: the probe did not run ({r.stderr[-500:]})"
        measured = json.loads(found[1].split("</pre>", 1)[0].replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
        if measured["scroll"] > measured["width"] + 1 or measured["wide"]:
            wide[page.name] = measured
    assert not wide, json.dumps(wide, indent=1)


# --------------------------------------------------------------------------------------------
# The parts the pages are made of
# --------------------------------------------------------------------------------------------


def test_reader_outputs_keep_the_projects_lines_and_drop_library_noise():
    import nbformat

    from rlff_utils import report

    out = nbformat.v4.new_output
    outputs = [
        out("stream", name="stdout", text="{'loss': '1.076', 'grad_norm': '11.51'}\nlearned critic: trained\n"),
        out("stream", name="stderr", text="UserWarning: something\n"),
        out("display_data", data={report.WIDGET_MIME: {"model_id": "x"}, "text/plain": "simulation: 0%"}),
        out("display_data", data={"text/html": "<progress value='2' max='2'></progress><table>Training Loss</table>"}),
        out("stream", name="stdout", text="Loading: 100%|####| 3/3 [00:01<00:00, 2.1it/s]\n"),
        out("display_data", data={"text/html": "<table><tr><td>kept</td></tr></table>"}),
    ]
    kept = report._reader_outputs(outputs)
    assert [o.get("text") or o["data"]["text/html"] for o in kept] == [
        "learned critic: trained\n", "<table><tr><td>kept</td></tr></table>"]


def test_tables_for_readers_have_words_for_headers_fixed_bounds_and_reasons():
    import pandas as pd

    from rlff_utils import analysis

    assert analysis.header_words("pairwise_accuracy") == "pairwise accuracy"
    assert analysis.header_words("roc_auc") == "ROC-AUC" and analysis.header_words("n_train") == "train (n)"
    shown = analysis.display_frame(pd.DataFrame({"auc": [0.33], "auc_lo": [-0.00035], "auc_hi": [0.59]}), 2)
    assert shown["auc"].tolist() == ["0.33 [0.00, 0.59]"]  # not "0.33 [-0.00035, 0.59]"
    fields = analysis.fields_table({"contrast_critic": None, "bootstrap": 50, "nested": {"a": [1, 2]}, "tokens": {}},
                                   missing={"contrast_critic": "none: one critic decides"}).set_index("field")["value"]
    assert fields.to_dict() == {"contrast_critic": "– (none: one critic decides)", "bootstrap": "50", "nested.a": "1; 2",
                                "tokens": "–"}
    wide = pd.DataFrame([{"card": "critic", **{f"metric_{i}": i / 7 for i in range(10)}}])
    html = analysis.display_table(wide).to_html()
    assert "metric 9" in html and ">critic<" in html  # turned: one row per former column, headers in words
    assert pagecheck.lint_html(CLEAN.replace("</body>", html + "</body>")) == []


def test_one_colour_per_system_and_the_purpose_in_every_saved_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from rlff_utils import plots

    (tmp_path / "params.yaml").write_text("purpose: smoke\n")
    first = pd.DataFrame({"system": ["vanilla", "rlff-esc"], "SR": [0.2, 0.5], "SR_ci95": [(0.0, 0.4), (0.2, 0.8)],
                          "AT": [3.0, 2.0], "AT_ci95": [(2.0, 4.0), (1.0, 3.0)]})
    fig = plots.plot_system_bars(first, tmp_path / "evaluation" / "sr_at.png")
    again = plots.plot_system_bars(first.iloc[::-1], None)
    colours = [tuple(p.get_facecolor()[:3]) for p in fig.axes[0].patches]
    reversed_colours = [tuple(p.get_facecolor()[:3]) for p in again.axes[0].patches]
    assert colours == reversed_colours[::-1]  # a system keeps its colour whatever the order of the table
    assert colours[0] == tuple(plots.system_colors(["vanilla"])["vanilla"])
    marks = [t.get_text() for t in fig.texts if t.get_gid() == plots.PURPOSE_MARK]
    assert marks == ["smoke run: checks the code, not a result"]
    assert not [t for t in again.texts if t.get_gid() == plots.PURPOSE_MARK]  # not saved: no run to name


def _evaluated_run(tmp_path):
    import json

    from rlff_utils import runs

    lay = runs.RunLayout(tmp_path / "run")
    for system, sr in (("vanilla", 0.0), ("chain-of-strategy", 0.0), ("rlff-esc", 0.5)):
        runs.write_json({"cases": 2, "SR": sr, "SR_ci95": [0.0, 1.0], "AT": 2.0, "AT_ci95": [1.0, 2.0]},
                        lay.system_metrics(system))
        recs = [{"case_id": f"case-{i}", "emotion_type": "anxiety", "situation": "exams",
                 "history": [{"speaker": "seeker", "text": "I can't sleep before my exams."}],
                 "turns": [{"speaker": "supporter", "text": f"{system} reply"}, {"speaker": "seeker", "text": "ok"}],
                 "critic_scores": [None if i else 0.5], "turns_used": 1, "max_turns": 2,
                 "end_reason": "goal" if (sr and i == 0) else "max_turns"} for i in range(2)]
        lay.transcripts(system).write_text("".join(json.dumps(r) + "\n" for r in recs))
    return lay


def test_the_transcript_browser_lists_every_conversation_offline(tmp_path):
    from rlff_utils.report import standalone_page
    from rlff_utils.transcript_browser import write_transcript_browser

    lay = _evaluated_run(tmp_path)
    page = write_transcript_browser(lay.root, "Evaluated conversations · run x", "This is a smoke run.", standalone_page)
    text = page.read_text()
    assert text.count("<details class='conv'") == 6  # 2 cases x 3 systems
    assert "data-system='chain-of-strategy' data-case='case-1' data-outcome='max_turns'" in text
    assert "critic after turn 1: +0.50" in text and "critic after turn 1: no verdict" in text
    for control in ("f-system", "f-case", "f-outcome", "c-case", "c-a", "c-b"):
        assert f"id=\"{control}\"" in text
    assert pagecheck.lint_html(text) == []
    # the run's order of systems (params.yaml), the main system last: side by side against the first baseline
    (lay.root / "params.yaml").write_text(
        "evaluation:\n  systems: [{name: vanilla}, {name: chain-of-strategy}, {name: rlff-esc}]\n")
    text = write_transcript_browser(lay.root, "t", None, standalone_page).read_text()
    assert text.index("data-system='vanilla'") < text.index("data-system='chain-of-strategy'") < text.index(
        "data-system='rlff-esc'")
    assert "<option value='rlff-esc' selected>" in text and "<option value='vanilla' selected>" in text
    assert write_transcript_browser(tmp_path / "empty", "t", None, standalone_page) is None


def test_the_index_names_tied_baselines_and_links_what_the_run_wrote(tmp_path, project_root, data_dir):
    from rlff_utils import report
    from rlff_utils.params import load_params

    p = load_params(project_root / "params" / "ci.yaml", {"output_root": str(tmp_path)})
    lay = _evaluated_run(tmp_path)
    lay.human.mkdir(parents=True, exist_ok=True)
    (lay.human / "annotate.html").write_text("<!DOCTYPE html><title>annotation</title>")
    text = report.write_index(p, lay.root).read_text()
    assert "the baselines (chain-of-strategy, vanilla, all at the same SR)" in text
    assert "best baseline" not in text
    for href in ("transcripts.html", "../evaluation/human/annotate.html", "run_card.json"):
        assert f"href='{href}'" in text, href
    assert pagecheck.lint_html(text, is_index=True) == []


def test_paths_are_shown_without_the_machines_part(tmp_path, monkeypatch, project_root, data_dir):
    from rlff_utils import report
    from rlff_utils.params import load_params

    p = load_params(project_root / "params" / "ci.yaml", {"output_root": str(tmp_path / "outputs")})
    monkeypatch.setenv("RLFF_DATA_DIR", str(data_dir))
    assert report.shown_path(p.run_dir / "policy" / "adapter", p) == "outputs/ci/policy/adapter"
    assert report.shown_path(data_dir / "esconv" / "train.json", p) == "$RLFF_DATA_DIR/esconv/train.json"
    assert report.shown_path(project_root / "params" / "ci.yaml", p) == "params/ci.yaml"
    assert report.shown_path("/somewhere/else/deep/file.txt", p) == "…/deep/file.txt"
    text = report.shown_paths(f"esconv: local folder {data_dir / 'esconv'} (auto)", p)
    assert text == "esconv: local folder $RLFF_DATA_DIR/esconv (auto)" and not pagecheck.lint_html(_with(f"<p>{text}</p>"))


def test_a_full_page_draws_no_widget_from_the_network(tmp_path):
    import nbformat

    from rlff_utils import report

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("run()")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        report.WIDGET_MIME: {"model_id": "abc", "version_major": 2}, "text/plain": "simulation: 100% 24/24"})]
    nb.cells = [nbformat.v4.new_markdown_cell("# 02 · Simulation"), cell]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "02_simulation.ipynb")
    full, page = report.render_notebook(tmp_path / "02_simulation.ipynb", tmp_path / "report")
    text = full.read_text()
    assert "simulation: 100% 24/24" in text and "cdn.jsdelivr" not in text and "widget-view+json" not in text
    assert "<title>02 · Simulation · run" in text and "href=\"report/index.html\"" in text
    assert "simulation: 100%" not in page.read_text()  # the reader page drops it altogether
