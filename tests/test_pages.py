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


@pytest.mark.parametrize("defect, kind", [
    ("<pre>{'loss': '1.076', 'grad_norm': '11.51'}</pre>", "dict or list repr"),
    ("<pre>['simulation/prompts.json', 'simulation/stage.json']</pre>", "dict or list repr"),
    ('<pre>{\n "contrast_critic": null}</pre>', "dict or list repr"),
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
