"""Shareable renderings of a run: each executed notebook as a full page (code and logs included,
for the lab) and as a reader page (narrative, tables, figures and the project's own status lines:
no code, stderr, library log line, progress table or widget; the parameters shown once as a
table), plus ``outputs/<run>/report/index.html`` headed by the run card, and the transcript
browser (:mod:`rlff_utils.transcript_browser`).

Every page carries one header (its real title; links to the index, the previous and next page and
the other rendering of the same notebook) and, for a smoke, planted or test run, the purpose
banner. Pages are self-contained and work offline: images are embedded, formulas are converted to
MathML at render time (browsers draw MathML natively), so no MathJax is fetched from a CDN, and a
widget shows its text. :mod:`rlff_utils.pagecheck` checks the reader pages.

    python -m rlff_utils.pipeline params/smoke.yaml --render-only   # re-render, execute nothing
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from . import human_eval, runs
from .text import shareable
from .transcript_browser import write_transcript_browser

TEMPLATE_DIR = Path(__file__).parent / "templates"
PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "vllm", "papermill", "nbconvert")
INTERNAL_RUNS = {"smoke": "a smoke run", "planted": "a planted-signal (positive control) run", "test": "a test run"}

# --------------------------------------------------------------------------------------------
# Math: LaTeX -> MathML, once, when rendering
# --------------------------------------------------------------------------------------------

_BLOCK = re.compile(r"\$\$(.+?)\$\$", re.DOTALL)
_INLINE = re.compile(r"(?<![\\$])\$(?!\$)([^$\n]+?)(?<!\\)\$")
_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.DOTALL)


def _mathml(tex: str, display: str) -> str:
    from latex2mathml.converter import convert

    tex = re.sub(r"(?<!\\)\\\n", r"\\ ", tex)  # a backslash ending a line is TeX's control space
    try:
        return convert(tex.strip(), display=display).replace("\n", "")
    except Exception:  # noqa: BLE001 - an unsupported macro: show the source, marked as code
        return f"<code>{html.escape(tex.strip())}</code>"


def math_to_mathml(markdown: str) -> str:
    """``$$...$$`` and ``$...$`` replaced by MathML; code spans and fences are left alone."""
    formulas: dict[str, str] = {}
    return _fill_math(_math_placeholders(markdown, formulas), formulas)


def _math_placeholders(markdown: str, formulas: dict[str, str]) -> str:
    """Formulas swapped for plain tokens that the Markdown renderer passes through untouched
    (MathML written into Markdown would be taken apart as inline HTML); ``formulas`` collects
    the MathML by token (numbered on from what it holds)."""

    def keep(tex: str, display: str) -> str:
        token = f"rlffmath{len(formulas):05d}x"
        formulas[token] = _mathml(tex, display)
        formulas[token + "plain"] = plain_tex(tex)
        return f"\n\n{token}\n\n" if display == "block" else token

    parts = _CODE.split(markdown)
    for i in range(0, len(parts), 2):
        text = _BLOCK.sub(lambda m: keep(m.group(1), "block"), parts[i])
        parts[i] = _INLINE.sub(lambda m: keep(m.group(1), "inline"), text)
    return "".join(parts)


def plain_tex(tex: str) -> str:
    """A formula as plain words for places MathML cannot go (an anchor, a title): ``R_\\text{fut}``
    -> ``R_fut``."""
    text = re.sub(r"\\(?:text|mathrm|mathbf|operatorname|mathcal|mathbb)\s*", "", tex)
    text = re.sub(r"\\([A-Za-z]+)", r"\1", text)
    return " ".join(re.sub(r"[{}\\$]", "", text).split())


_TAG = re.compile(r"<[^>]+>")


def _fill_math(html_text: str, formulas: dict[str, str]) -> str:
    """Tokens inside a tag (a heading's anchor id or href) become plain words, the others MathML."""
    tokens = [t for t in formulas if not t.endswith("plain")]
    if not tokens:
        return html_text
    pattern = re.compile("|".join(map(re.escape, tokens)))

    def in_tag(m: re.Match) -> str:
        return pattern.sub(lambda t: re.sub(r"[^\w-]", "", formulas[t.group(0) + "plain"]), m.group(0))

    html_text = _TAG.sub(in_tag, html_text)
    return pattern.sub(lambda t: formulas[t.group(0)], html_text)


# --------------------------------------------------------------------------------------------
# Paths as a reader may see them
# --------------------------------------------------------------------------------------------


def shown_path(path: str | os.PathLike, params=None) -> str:
    """A path without the machine's part: inside the run folder ``<run>/…``, inside the project
    relative to it, under ``$RLFF_DATA_DIR`` written so; elsewhere only its last two parts."""
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    bases = []
    if params is not None:
        bases.append((Path(params.run_dir), f"outputs/{params.run_name}"))
        if params.project_root:
            bases.append((Path(params.project_root), ""))
    if os.environ.get("RLFF_DATA_DIR"):
        bases.append((Path(os.environ["RLFF_DATA_DIR"]).resolve(), "$RLFF_DATA_DIR"))
    for base, shown in bases:
        if p.is_relative_to(base):
            rel = p.relative_to(base).as_posix()
            return "/".join(x for x in (shown, rel) if x and x != ".") or "."
    return "…/" + "/".join(p.parts[-2:])


_ABSOLUTE = re.compile(r"(?<![\w.~])/[^\s'\",;:)\]]+")


def shown_paths(text: str, params=None) -> str:
    """Every absolute path in ``text`` through :func:`shown_path`."""
    return _ABSOLUTE.sub(lambda m: shown_path(m.group(0), params), text)


# --------------------------------------------------------------------------------------------
# Notebook pages
# --------------------------------------------------------------------------------------------


def _parameters_table(nb) -> str | None:
    injected = next((c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])), None)
    if injected is None:
        return None
    values: dict[str, str] = {}
    for line in injected.source.splitlines():
        m = re.match(r"^(\w+)\s*=\s*(.+)$", line.strip())
        if m:
            value = m.group(2).strip().strip("\"'")
            value = "none" if value in ("{}", "[]", "None") else value
            values[m.group(1)] = Path(value).name if m.group(1) == "params_file" else shown_paths(value)
    rows = "".join(f"<tr><td><code>{html.escape(k)}</code></td><td><code>{html.escape(v)}</code></td></tr>"
                   for k, v in values.items())
    where = " (the resolved run is `params.yaml` in the run folder)" if "params_file" in values else ""
    return f"**Parameters**{where}\n\n<table>{rows}</table>"


def report_notebook(nb):
    """A copy of an executed notebook for readers: parameters once (as a table), no stderr, no
    library log, trainer dict, progress bar or widget output (:func:`_reader_outputs`), math in
    MathML. Input cells are hidden by the exporter."""
    import copy

    import nbformat

    nb = copy.deepcopy(nb)
    table = _parameters_table(nb)
    cells = []
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            if table and "injected-parameters" in tags:
                cells.append(nbformat.v4.new_markdown_cell(table))
            continue
        if cell.cell_type == "code":
            cell.outputs = _reader_outputs(cell.outputs)
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("widgets", None)  # widget state: its page script comes from a CDN
    return nb


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _widgets_as_text(nb) -> None:
    """A widget (a progress bar) shows its plain-text form: drawing it needs a script from a CDN."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            out.get("data", {}).pop(WIDGET_MIME, None)
# stdout lines that are a library's, not the project's: a trainer's log dict, a progress bar, a warning
_LIBRARY_LINE = re.compile(r"^\s*\{'|%\||\bit/s\]|\w+Warning: |^\s*warnings\.warn")


def _reader_outputs(outputs: list) -> list:
    """What a reader sees of a cell's outputs: the project's own printed lines, tables, figures and
    Markdown; stderr, widgets, progress tables (``<progress>``) and library lines are dropped."""
    kept = []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            if out.get("name") == "stderr":
                continue
            lines = [ln for ln in out.get("text", "").replace("\r", "\n").splitlines(keepends=True)
                     if ln.strip() and not _LIBRARY_LINE.search(ln)]
            if lines:
                out["text"] = "".join(lines)
                kept.append(out)
        elif kind in ("display_data", "execute_result"):
            data = out.get("data", {})
            if WIDGET_MIME in data or "<progress" in str(data.get("text/html", "")):
                continue
            kept.append(out)
        else:
            kept.append(out)
    return kept


def _with_math_tokens(nb) -> tuple[Any, dict[str, str]]:
    formulas: dict[str, str] = {}
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = _math_placeholders(cell.source, formulas)
    return nb, formulas


def _exporter(report: bool):
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(extra_template_basedirs=[str(TEMPLATE_DIR)], template_name="rlff", embed_images=True)
    if report:
        exporter.exclude_input = True
        exporter.exclude_input_prompt = True
        exporter.exclude_output_prompt = True
    return exporter


def render_notebook(notebook: Path, report_dir: Path | None = None, sweep: bool = False) -> tuple[Path, Path | None]:
    """Full page next to the executed notebook; report page in ``report_dir`` (when given). Both
    carry :func:`page_header` (title, the run's banner, links to the index, the neighbours and the
    other rendering of the same notebook). ``sweep``: the notebook of a sweep's folder (its runs'
    banner; no run index, no neighbours)."""
    import copy

    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    full = notebook.with_suffix(".html")
    kind, purpose = ("sweep", sweep_purpose(notebook.parent)) if sweep else ("run", run_purpose(notebook.parent))
    title = f"{notebook_title(nb, notebook.stem)} · {kind} {notebook.parent.name}"
    banner = banner_text(purpose)
    prev, nxt = (None, None) if sweep else neighbours(notebook)
    tokenised, formulas = _with_math_tokens(copy.deepcopy(nb))
    _widgets_as_text(tokenised)
    body, _ = _exporter(report=False).from_notebook_node(tokenised)
    links = [*([] if sweep else [("report index", "report/index.html")]), ("reader page", f"report/{notebook.stem}.html"),
             *[(f"{label}: {name}", f"{name}.html") for label, name in (("previous", prev), ("next", nxt)) if name]]
    full.write_text(frame_page(_fill_math(body, formulas), title, banner, links, full_page=True), encoding="utf-8")
    page = None
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        page = report_dir / f"{notebook.stem}.html"
        tokenised, formulas = _with_math_tokens(report_notebook(nb))
        body, _ = _exporter(report=True).from_notebook_node(tokenised)
        links = [*([] if sweep else [("index", "index.html")]),
                 *[(f"{label}: {name}", f"{name}.html") for label, name in (("previous", prev), ("next", nxt)) if name],
                 ("full page with code and logs", f"../{notebook.stem}.html")]
        page.write_text(frame_page(_fill_math(body, formulas), title, banner, links), encoding="utf-8")
    return full, page


def notebook_title(nb, fallback: str) -> str:
    """The notebook's first level-1 heading in plain words (formulas as plain text)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, flags=re.M)
            if m:
                return _INLINE.sub(lambda f: plain_tex(f.group(1)), m.group(1)).strip()
    return fallback


def run_purpose(run_dir: Path) -> str | None:
    """The ``purpose`` of the resolved run in ``run_dir`` (``params.yaml``), None where unknown."""
    import yaml

    try:
        data = yaml.safe_load((Path(run_dir) / "params.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    return data.get("purpose") if isinstance(data, dict) else None


def sweep_purpose(folder: Path) -> str | None:
    """The purpose its runs share (``sweep.json``'s plan, each run's ``params.yaml``) when they
    share one; else the first internal one among them (a page that mixes them carries its banner)."""
    plan = runs.read_json(Path(folder) / "sweep.json", default={}).get("plan") or []
    found = [run_purpose(Path(folder).resolve().parents[1] / r["run"]) for r in plan]
    return next((p for p in found if p in INTERNAL_RUNS), found[0] if found else None)


def banner_text(purpose: str | None) -> str | None:
    """The sentence every page and figure of a run with an internal purpose carries."""
    kind = INTERNAL_RUNS.get(purpose or "")
    return (f"This is {kind}: its numbers check that the code runs (or learns a planted signal); they say "
            "nothing about RLFF-ESC itself.") if kind else None


def stage_names(run_dir: Path) -> list[str]:
    """The notebooks of a run in order: the project's and any other the run executed."""
    names = {p.stem for p in (Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    names |= {p.stem for p in Path(run_dir).glob("[0-9][0-9]_*.ipynb")}
    return sorted(names)


def neighbours(notebook: Path) -> tuple[str | None, str | None]:
    """The previous and next notebook's names (None at either end)."""
    names = stage_names(notebook.parent)
    i = names.index(notebook.stem) if notebook.stem in names else -1
    return (names[i - 1] if i > 0 else None), (names[i + 1] if 0 <= i < len(names) - 1 else None)


PAGE_CSS = """
.rlff-header { font-family: system-ui, sans-serif; font-size: 14px; border-bottom: 1px solid #ddd;
  padding: 0.6em 1em; display: flex; flex-wrap: wrap; gap: 0.4em 1.2em; align-items: baseline; }
.rlff-header .rlff-title { font-weight: 600; margin-right: auto; }
.rlff-banner { font-family: system-ui, sans-serif; background: #fff3cd; border: 1px solid #e0c36a;
  padding: 0.6em 1em; margin: 0.8em 1em; }
.rlff-note { background: #eef4fb; border-left: 4px solid #5b8bd0; padding: 0.4em 0.8em; margin: 0.4em 0; }
body.rlff-reader main { max-width: 1180px; margin: 0 auto; }
body.rlff-reader .jp-OutputArea-output table { max-width: 100%; }
body.rlff-reader .jp-OutputArea-output th { text-align: left; vertical-align: bottom; }
.jp-OutputArea-output table caption { caption-side: bottom; text-align: left; color: #555; font-size: 0.9em; }
body.rlff-reader .jp-OutputArea-output td, body.rlff-reader .jp-OutputArea-output th { white-space: normal; overflow-wrap: break-word; }
body.rlff-reader .jp-OutputArea-output pre { white-space: pre-wrap; overflow-wrap: break-word; }
body.rlff-reader .jp-RenderedImage img { max-width: 100%; height: auto; }
"""


def frame_page(html_text: str, title: str, banner: str | None, links: list[tuple[str, str]],
               full_page: bool = False) -> str:
    """An exported page with its real ``<title>``, the header (title and links) and the banner."""
    e = html.escape
    nav = " ".join(f'<a href="{e(href)}">{e(label)}</a>' for label, href in links)
    header = (f'<header class="rlff-header"><span class="rlff-title">{e(title)}</span>{nav}</header>'
              + (f'<div class="rlff-banner">{e(banner)}</div>' if banner else ""))
    html_text = re.sub(r"<title>.*?</title>", f"<title>{e(title)}</title>", html_text, count=1, flags=re.S)
    html_text = html_text.replace("</head>", f"<style>{PAGE_CSS}</style></head>", 1)
    cls = "rlff-full" if full_page else "rlff-reader"
    page = re.sub(r"<body([^>]*)>", lambda m: f'<body{_add_class(m.group(1), cls)}>{header}', html_text, count=1)
    return shareable(page)


def _add_class(attrs: str, cls: str) -> str:
    if re.search(r'class="', attrs):
        return re.sub(r'class="', f'class="{cls} ', attrs, count=1)
    return f'{attrs} class="{cls}"'


# --------------------------------------------------------------------------------------------
# Run card and index
# --------------------------------------------------------------------------------------------


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except ImportError:  # pragma: no cover
        pass
    return f"CPU: {cpu_model()} ({os.cpu_count()} cores)"


def cpu_model() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def headline(run_dir: Path, main_system: str | None = None) -> dict[str, Any] | None:
    """SR and AT of the main system with their intervals, and its difference to the best baseline."""
    lay = runs.RunLayout(run_dir)
    systems = {p.parent.name: runs.read_json(p) for p in lay.all_system_metrics()}
    if not systems:
        return None
    main = main_system if main_system in systems else ("rlff-esc" if "rlff-esc" in systems else next(iter(systems)))
    m = systems[main]
    out: dict[str, Any] = {"system": main, "cases": m.get("cases"), "SR": m.get("SR"), "SR_ci95": m.get("SR_ci95"),
                           "AT": m.get("AT"), "AT_ci95": m.get("AT_ci95")}
    baselines = {k: v for k, v in systems.items() if k != main and v.get("SR") is not None}
    if baselines:
        best = max(baselines, key=lambda k: baselines[k]["SR"])
        out["best_baseline"] = best
        out["tied_baselines"] = [k for k, v in baselines.items() if v["SR"] == baselines[best]["SR"]]
        out["SR_minus_best_baseline"] = (m["SR"] - baselines[best]["SR"]) if m.get("SR") is not None else None
        paired = (m.get("paired_vs") or {}).get(best) or {}
        if paired.get("SR_diff_ci95"):
            out["SR_diff_ci95"] = paired["SR_diff_ci95"]
    return out


def run_card(params, run_dir: Path | None = None) -> dict[str, Any]:
    """What was run, where, with what, how long, and how it came out."""
    run_dir = Path(run_dir or params.run_dir)
    lay = runs.RunLayout(run_dir)
    root = Path(params.project_root or ".")
    source = Path(params.source) if params.source else None
    timing = runs.read_json(lay.timing, default={})
    resources = runs.read_json(lay.resources, default={})
    commit = _git(root, "rev-parse", "--short=12", "HEAD")
    dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no")) if commit else None
    return {
        "run": params.run_name,
        "description": params.description,
        "purpose": getattr(params, "purpose", None),
        "banner": banner_text(getattr(params, "purpose", None)),
        "params_file": str(source.relative_to(root)) if source and source.is_relative_to(root) else (source.name if source else None),
        "params_sha256": hashlib.sha256(source.read_bytes()).hexdigest()[:16] if source and source.is_file() else None,
        "git_commit": f"{commit}{' (with uncommitted changes)' if dirty else ''}" if commit else None,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": _device(),
        "packages": _versions(),
        "seconds_per_notebook": timing,
        "peak_memory_mib_per_notebook": resources.get("peak_rss_mib_per_notebook", {}),
        "wall_seconds": resources.get("wall_seconds"),
        "peak_memory_mib": resources.get("peak_kernel_rss_mib"),
        "headline": headline(run_dir),
        "model_use": model_use(run_dir),
        "models": {role: getattr(params.models, role).name for role in type(params.models).model_fields},
        "precision": _precision(params),
        "seed": params.seed,
    }


def model_use(run_dir: Path) -> list[dict[str, Any]]:
    """Per stage and model role, the estimate made from the params beside what the stages recorded
    (``cost.json``, :mod:`rlff_utils.cost`): requests, prompt and generated tokens of each, and
    the recorded generated tokens as a share of the estimate (an upper bound: conversations that
    succeed early and replies shorter than the cap come in under it). Rows the stages did not
    record (a stage not run yet) have no recorded figures."""
    saved = runs.read_json(Path(run_dir) / "cost.json", default=None) or {}
    recorded = {(r["stage"], r["role"]): r for r in saved.get("actual") or []}
    rows = []
    for est in saved.get("estimate") or []:
        if est["stage"] == "total":
            continue
        got = recorded.get((est["stage"], est["role"]), {})
        share = (got["generated_tokens"] / est["generated_tokens"]
                 if got.get("generated_tokens") is not None and est["generated_tokens"] else None)
        rows.append({"stage": est["stage"], "role": est["role"], "model": est["model"],
                     "estimated": {k: est[k] for k in ("requests", "prompt_tokens", "generated_tokens")},
                     "recorded": {k: got.get(k) for k in ("requests", "prompt_tokens", "generated_tokens")} if got else None,
                     "computed_in": got.get("computed_in"), "generated_share_of_estimate": share})
    return rows


def _model_use_html(rows: list[dict[str, Any]]) -> str:
    e = html.escape
    if not rows:
        return "<p>no estimate recorded (cost.json is written at the end of a pipeline command)</p>"
    fmt = lambda v: "–" if v is None else f"{v:,}"  # noqa: E731
    body = "".join(
        f"<tr><td>{e(r['stage'])}</td><td>{e(r['role'])}</td>"
        + "".join(f"<td class='num'>{fmt(r['estimated'][k])}</td><td class='num'>{fmt((r['recorded'] or {}).get(k))}</td>"
                  for k in ("requests", "prompt_tokens", "generated_tokens"))
        + "<td class='num'>" + ("–" if r["generated_share_of_estimate"] is None else f"{100 * r['generated_share_of_estimate']:.0f}%")
        + "</td></tr>" for r in rows)
    return ("<p>Estimated from the params before the run (<code>python -m rlff_utils.pipeline PARAMS --estimate</code>: "
            "upper bounds on turns and generated tokens, prompt tokens a rough figure) beside what the stages "
            "recorded (a stage reused from another run: recorded there). Not counted in either: reward-model and critic training, the validity cards, notebook 04's "
            "before/after samples.</p>"
            "<table class='usage'><tr><th rowspan='2'>stage</th><th rowspan='2'>role</th><th colspan='2'>requests</th>"
            "<th colspan='2'>prompt tokens</th><th colspan='2'>generated tokens</th><th rowspan='2'>generated: "
            "share of the estimate</th></tr><tr>"
            + "<th>estimated</th><th>recorded</th>" * 3 + f"</tr>{body}</table>")


def _precision(params) -> dict[str, str]:
    """Each in-process role's dtype; ``auto`` with what it means on this machine (models.auto_dtype)."""
    from .models import auto_dtype, pick_device

    out = {}
    for name in type(params.models).model_fields:
        role = getattr(params.models, name)
        if role.backend == "hf":
            out[name] = f"auto: {auto_dtype(pick_device(role.device))}" if role.dtype == "auto" else role.dtype
    return out


def _fmt_ci(ci: Any, scale: float = 1.0, digits: int = 1) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{ci[0] * scale:.{digits}f}, {ci[1] * scale:.{digits}f}]"


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


# The report folder's figures in reading order, with what each shows
REPORT_FIGURES = {
    "sr_at": "Success rate and average turns of each evaluated system, with 95% bootstrap intervals",
    "sr_at_k": "Share of cases solved within k turns (SR@k), per system",
    "r_fut_distribution": "The simulated future-oriented reward R_fut of every candidate reply (dashed: the label threshold)",
    "rm_score_vs_r_fut": "Each reward-model variant's held-out score against the R_fut the simulation measured",
    "grpo_curves": "GRPO training curves: rewards, well-formed answers, KL, entropy, completion length",
}
REPORT_TABLES = {
    "main_results": "Main results: SR and AT per system, with the validity of the critic behind them",
    "simulation": "The simulation's statistics",
    "reward_models": "Reward-model variants compared on held-out candidates",
    "validity_cards": "Validity cards: do the judges know a helped seeker?",
    "planted_signal": "Planted-signal figures (planted runs only)",
}
# Each stage's own figures, linked from the index (run-folder relative)
STAGE_FIGURES = {
    "data/overview.png": "the corpus at a glance (01)",
    "simulation/simulation.png": "the simulated reward signal (02)",
    "reward_model/learning_curves.png": "reward-model learning curves (03)",
    "reward_model/score_distributions.png": "reward-model scores by simulated label (03)",
    "reward_model/calibration.png": "calibration of the classifier (03)",
    "reward_model/validity.png": "validity on real conversations (03)",
    "policy/curves.png": "GRPO curves (04)",
    "evaluation/sr_at.png": "SR and AT (05)",
    "evaluation/sr_at_k.png": "SR@k (05)",
    "evaluation/win_rates.png": "pairwise judge: win rates (05)",
}


def _words(stem: str) -> str:
    return stem.replace("_", " ")


def _headline_html(h: dict[str, Any] | None) -> str:
    e = html.escape
    if not h:
        return ""
    sr = "–" if h["SR"] is None else f"{100 * h['SR']:.1f}%{_fmt_ci(h.get('SR_ci95'), 100)}"
    at = "–" if h["AT"] is None else f"{h['AT']:.2f}{_fmt_ci(h.get('AT_ci95'), 1, 2)}"
    diff = ""
    tied = h.get("tied_baselines") or []
    if h.get("best_baseline") and h.get("SR_minus_best_baseline") is not None:
        who = (f"the baselines ({', '.join(map(e, tied))}, all at the same SR)" if len(tied) > 1
               else f"the best baseline ({e(h['best_baseline'])})")
        diff = f"; vs {who}: {100 * h['SR_minus_best_baseline']:+.1f} points{_fmt_ci(h.get('SR_diff_ci95'), 100)}"
    return (f"<p class='headline'><b>{e(h['system'])}</b> on {h['cases']} cases: SR {sr}, AT {at}{diff} "
            "(95% bootstrap intervals; protocol in <a href='05_evaluation.html'>05 · Evaluation</a>)</p>")


def _link_list(items: list[tuple[str, str, str]]) -> str:
    """``<ul>`` of (href, label, note) for the links that exist; ``none`` when empty."""
    e = html.escape
    rows = [f"<li><a href='{e(href)}'>{e(label)}</a>{(' – ' + e(note)) if note else ''}</li>" for href, label, note in items]
    return f"<ul>{''.join(rows)}</ul>" if rows else "<p>none yet</p>"


def _sweep_page(run_dir: Path) -> list[tuple[str, str, str, Path]]:
    """The results page of the sweep this run belongs to (its ``sweep.json``), when written."""
    sweep = runs.read_json(run_dir / "sweep.json", default={}).get("sweep")
    if not sweep:
        return []
    page = run_dir.parent / "sweeps" / sweep / "report" / "sweep.html"
    return [(f"../../sweeps/{sweep}/report/sweep.html", f"sweep {sweep}: results across seeds",
             "every arm's mean over seeds, paired differences to the reference arm", page)]


def write_index(params, run_dir: Path | None = None) -> Path:
    """``report/index.html``: the run card and headline, then links to everything a reader may
    want (reader and full pages, the transcript browser, tables as Markdown and CSV, the human
    evaluation sheet, each stage's figures) and the report's figures in reading order."""
    run_dir = Path(run_dir or params.run_dir)
    lay = runs.RunLayout(run_dir)
    report = lay.report
    report.mkdir(parents=True, exist_ok=True)
    card = run_card(params, run_dir)
    runs.write_json(card, report / "run_card.json")
    write_transcript_browser(run_dir, f"Evaluated conversations · run {card['run']}", card["banner"], standalone_page)
    e = html.escape
    rows = []
    for key in ("run", "description", "params_file", "params_sha256", "git_commit", "date", "device", "seed"):
        if card.get(key) not in (None, ""):
            rows.append(f"<tr><th>{e(key.replace('_', ' '))}</th><td>{e(str(card[key]))}</td></tr>")
    rows.append("<tr><th>models</th><td>" + "; ".join(f"{e(r)}: <code>{e(n)}</code>" for r, n in card["models"].items()) + "</td></tr>")
    rows.append("<tr><th>packages</th><td>" + ", ".join(f"{e(k)} {e(v)}" for k, v in card["packages"].items()) + "</td></tr>")
    if card["wall_seconds"] is not None:
        peak = "–" if card["peak_memory_mib"] is None else f"{card['peak_memory_mib'] / 1024:.1f} GiB"
        last = runs.read_json(lay.resources, default={}).get("notebooks") or []
        scope = ("" if len(last) >= len(card["seconds_per_notebook"]) else
                 f" of the last pipeline command, which ran {', '.join(map(e, last))} (each notebook's own in Stages)")
        rows.append(f"<tr><th>wall time</th><td>{card['wall_seconds'] / 60:.1f} min{scope}; peak memory {peak} (the "
                    "largest of the operating system's count for the largest single process and the per-notebook "
                    "samples below; the OS count catches short peaks that half-second sampling misses)</td></tr>")
    peaks = card["peak_memory_mib_per_notebook"]
    stage_rows = "".join(
        f"<tr><td><a href='{e(name)}.html'>{e(name)}</a></td><td class='num'>{secs:.0f} s</td><td class='num'>"
        + ("–" if peaks.get(name) is None else f"{peaks[name] / 1024:.2f} GiB") + "</td></tr>"
        for name, secs in card["seconds_per_notebook"].items())
    pages = sorted(report.glob("[0-9][0-9]_*.html"))
    page_items = "".join(
        f"<li><a href='{e(p.name)}'>{e(_page_title(p))}</a> (<a href='../{e(p.name)}'>full page with code and logs</a>)</li>"
        for p in pages)
    tables = [(f"{name}.md", REPORT_TABLES.get(name, _words(name)), f"CSV: {name}.csv")
              for name in [*REPORT_TABLES, *sorted({t.stem for t in report.glob('*.csv')} - set(REPORT_TABLES))]
              if (report / f"{name}.csv").is_file()]
    table_items = "".join(f"<li>{e(label)}: <a href='{e(md)}'>Markdown</a>, <a href='{e(md[:-3])}.csv'>CSV</a></li>"
                          for md, label, _ in tables if (report / md).is_file())
    material = [(href, label, note) for href, label, note, path in (
        ("transcripts.html", "transcript browser", "every evaluated conversation, filters by system, case and outcome, "
         "per-turn critic scores, two systems side by side", report / "transcripts.html"),
        ("../evaluation/human/annotate.html", "human-evaluation page", "blind pairs for annotators, one page to send "
         "(the key stays in evaluation/human/key.json; returned files go in evaluation/human/answers/)", lay.human / "annotate.html"),
        ("../evaluation/human/human_results.csv", "human-evaluation results", "", lay.human / "human_results.csv"),
        ("../evaluation/judgements.csv", "pairwise judge's verdicts", "", lay.stage(runs.EVALUATION) / "judgements.csv"),
        ("../params.yaml", "the resolved parameters", "", lay.resolved_params),
        ("run_card.json", "the run card as JSON", "", report / "run_card.json"),
        ("../cost.json", "model use, estimated and recorded", "requests and tokens per stage and role "
         "(rlff_utils.cost)", run_dir / "cost.json"),
        *_sweep_page(run_dir),
    ) if path.is_file()]
    stage_figs = [(f"../{rel}", label, "") for rel, label in STAGE_FIGURES.items() if (run_dir / rel).is_file()]
    figures = [f for f in REPORT_FIGURES if (report / f"{f}.png").is_file()]
    figures += sorted({f.stem for f in report.glob("*.png")} - set(figures))
    figure_html = "".join(
        f"<figure><img src='data:image/png;base64,{_b64(report / f'{f}.png')}' alt='{e(REPORT_FIGURES.get(f, _words(f)))}'>"
        f"<figcaption>{e(REPORT_FIGURES.get(f, _words(f)))} (<a href='{e(f)}.png'>{e(f)}.png</a>)</figcaption></figure>"
        for f in figures) or "<p>none yet</p>"
    title = f"rlff-esc · run {card['run']}"
    first = f"<a href='{e(pages[0].name)}'>first page: {e(_page_title(pages[0]))}</a>" if pages else ""
    body = f"""<header class="rlff-header"><span class="rlff-title">{e(title)}</span>{first}
<a href="transcripts.html">transcripts</a></header>
{f"<div class='rlff-banner'>{e(card['banner'])}</div>" if card["banner"] else ""}
<main>
<h1>Run <code>{e(card['run'])}</code></h1>
{_headline_html(card["headline"])}
<h2>Pages</h2><ol class="pages">{page_items or '<li>none yet</li>'}</ol>
<h2>Conversations and material for people</h2>{_link_list(material)}
{f"<h2>Human evaluation</h2>{human}" if (human := human_eval.results_html(human_eval.HumanFolder(lay.human))) else ""}
<h2>Figures</h2>{figure_html}
<h2>Tables</h2>{f"<ul>{table_items}</ul>" if table_items else "<p>none yet</p>"}
<h2>Each stage's figures</h2>{_link_list(stage_figs)}
<h2>Run card</h2><table class="card">{''.join(rows)}</table>
<h2>Stages</h2><table><tr><th>notebook</th><th>wall time</th><th>peak memory (kernel and children, sampled)</th></tr>{stage_rows}</table>
<h2>Model use: estimated and recorded</h2>{_model_use_html(card["model_use"])}
</main>"""
    path = report / "index.html"
    path.write_text(standalone_page(title, body), encoding="utf-8")
    return path


INDEX_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; }
main { max-width: 60em; margin: 1em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; max-width: 100%; }
th, td { text-align: left; padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; vertical-align: top; overflow-wrap: anywhere; }
td.num { text-align: right; white-space: nowrap; }
table.card th { white-space: nowrap; }
.headline { font-size: 1.15em; } img { max-width: 100%; height: auto; } figure { margin: 1em 0 2em; }
figcaption { color: #444; font-size: 0.95em; }
table.usage th, table.usage td { overflow-wrap: normal; padding: 0.2em 0.5em; } table.usage td:first-child { white-space: nowrap; }
"""


def standalone_page(title: str, body: str, css: str = "", script: str = "") -> str:
    """A self-contained page of the report folder (no file or script from elsewhere)."""
    e = html.escape
    return shareable(f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>\n"
                     f"<style>{INDEX_CSS}{PAGE_CSS}{css}</style></head>\n<body>\n{body}\n"
                     + (f"<script>{script}</script>\n" if script else "") + "</body></html>\n")


def _page_title(page: Path) -> str:
    """A report page's title without the run (``03 · The future-oriented reward model``)."""
    m = re.search(r"<title>(.*?)</title>", page.read_text(encoding="utf-8")[:20000], flags=re.S)
    title = html.unescape(m.group(1)).strip() if m else ""
    return title.rsplit(" · run ", 1)[0] if title and title != "Notebook" else _words(page.stem)


def render_run(params, run_dir: Path | None = None) -> Path:
    """Re-render every executed notebook of a run and its index (``--render-only``)."""
    run_dir = Path(run_dir or params.run_dir)
    lay = runs.RunLayout(run_dir)
    executed = sorted(run_dir.glob("[0-9][0-9]_*.ipynb"))
    if not executed:
        raise FileNotFoundError(f"no executed notebooks in {run_dir}: run the pipeline first")
    for nb in executed:
        render_notebook(nb, lay.report)
    return write_index(params, run_dir)
