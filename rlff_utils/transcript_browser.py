"""The transcript browser: ``outputs/<run>/report/transcripts.html``, one self-contained page (no
file or script from elsewhere, works offline) listing every conversation the evaluation stored.

Every conversation is written into the page as HTML (readable without scripts, and checked by the
page linter like every reader page): its case, system, outcome, the seeker's opening, each
supporter and seeker turn and the evaluation critic's score after each seeker turn. A small
script filters the list by system, case and outcome and puts one case under two systems side by
side.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Callable

from . import runs

SCRIPT = """
const $ = (s) => document.querySelector(s), $$ = (s) => [...document.querySelectorAll(s)];
function applyFilters() {
  const sys = $('#f-system').value, cs = $('#f-case').value, out = $('#f-outcome').value;
  let shown = 0;
  for (const c of $$('#list .conv')) {
    const ok = (!sys || c.dataset.system === sys) && (!cs || c.dataset.case === cs) && (!out || c.dataset.outcome === out);
    c.hidden = !ok; shown += ok;
  }
  $('#count').textContent = shown + ' of ' + $$('#list .conv').length + ' conversations shown';
}
function compare() {
  const cs = $('#c-case').value, area = $('#pair');
  area.replaceChildren();
  for (const sys of [$('#c-a').value, $('#c-b').value]) {
    const src = $$('#list .conv').find((c) => c.dataset.system === sys && c.dataset.case === cs);
    const col = document.createElement('div');
    if (src) { const copy = src.cloneNode(true); copy.hidden = false; copy.open = true; col.append(copy); }
    else { col.textContent = sys + ' has no conversation for case ' + cs; }
    area.append(col);
  }
}
for (const id of ['#f-system', '#f-case', '#f-outcome']) $(id).addEventListener('change', applyFilters);
for (const id of ['#c-case', '#c-a', '#c-b']) $(id).addEventListener('change', compare);
applyFilters(); compare();
"""

CSS = """
.controls { display: flex; flex-wrap: wrap; gap: 0.6em 1.4em; align-items: center; margin: 0.6em 0; }
.conv { border: 1px solid #ddd; border-radius: 4px; margin: 0.5em 0; padding: 0.3em 0.8em; background: #fff; }
.conv summary { cursor: pointer; }
.conv .meta { color: #555; font-size: 0.9em; }
.turn { margin: 0.35em 0; padding: 0.3em 0.6em; border-left: 3px solid #ccc; white-space: pre-wrap; overflow-wrap: anywhere; }
.turn.supporter { border-color: #1f77b4; background: #f4f8fc; }
.turn.seeker { border-color: #999; }
.score { display: inline-block; font-size: 0.85em; color: #333; background: #eee; border-radius: 3px; padding: 0 0.4em; margin-left: 0.5em; }
.goal { color: #2a7a2a; font-weight: 600; } .max_turns { color: #a33; }
#pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
"""

OUTCOME_WORDS = {"goal": "solved", "max_turns": "not solved (turn cap)"}


def load_conversations(run_dir: Path) -> list[dict[str, Any]]:
    """Every stored evaluation conversation of a run, each with its ``system``, in system then
    case order."""
    lay = runs.RunLayout(run_dir)
    out = []
    for system in system_order(run_dir, [m.parent.name for m in lay.all_system_metrics()]):
        path = lay.transcripts(system)
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append({**json.loads(line), "system": system})
    return out


def system_order(run_dir: Path, systems: list[str]) -> list[str]:
    """``systems`` in the run's ``evaluation.systems`` order (its ``params.yaml``; the main system
    last, as there), those it does not list after them."""
    import yaml

    try:
        params = yaml.safe_load((Path(run_dir) / "params.yaml").read_text(encoding="utf-8")) or {}
        listed = [s["name"] for s in (params.get("evaluation") or {}).get("systems") or []]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        listed = []
    return sorted(systems, key=lambda s: (listed.index(s) if s in listed else len(listed), s))


def _score(v: Any) -> str:
    return "no verdict" if v is None else f"{float(v):+.2f}"


def _outcome(rec: dict[str, Any]) -> str:
    reason = rec.get("end_reason") or "unfinished"
    used = rec.get("turns_used")
    if reason == "goal":
        return f"solved after {used} turn(s)"
    if reason == "max_turns":
        return f"not solved in {used} turn(s)"
    return reason.replace("_", " ")


def conversation_html(rec: dict[str, Any]) -> str:
    """One conversation as a ``<details>`` element carrying its system, case and outcome."""
    e = html.escape
    case = str(rec.get("case_id", ""))
    reason = rec.get("end_reason") or "unfinished"
    about = " · ".join(e(str(rec[k])) for k in ("emotion_type", "problem_type") if rec.get(k))
    situation = f"<p class='meta'>situation: {e(str(rec['situation']))}</p>" if rec.get("situation") else ""
    opening = "".join(f"<div class='turn seeker'><b>Seeker</b> (opening): {e(str(t.get('text', '')))}</div>"
                      for t in (rec.get("history") or [])[-1:])
    scores = list(rec.get("critic_scores") or [])
    turns, k = [], 0
    for t in rec.get("turns") or []:
        speaker = str(t.get("speaker", ""))
        badge = ""
        if speaker == "seeker":
            badge = f"<span class='score'>critic after turn {k + 1}: {_score(scores[k] if k < len(scores) else None)}</span>"
            k += 1
        turns.append(f"<div class='turn {e(speaker)}'><b>{e(speaker.capitalize())}</b>: {e(str(t.get('text', '')))}{badge}</div>")
    per_turn = ", ".join(_score(s) for s in scores) or "none"
    return (f"<details class='conv' data-system='{e(rec['system'])}' data-case='{e(case)}' data-outcome='{e(reason)}'>"
            f"<summary><b>{e(case)}</b> · {e(rec['system'])} · <span class='{e(reason)}'>{e(_outcome(rec))}</span>"
            f" · critic per turn: {per_turn}</summary>"
            f"<p class='meta'>{about}</p>{situation}{opening}{''.join(turns)}</details>")


def _options(values: list[str], everything: str | None) -> str:
    e = html.escape
    first = f"<option value=''>{e(everything)}</option>" if everything else ""
    return first + "".join(f"<option value='{e(v)}'>{e(v)}</option>" for v in values)


def write_transcript_browser(run_dir: Path, title: str, banner: str | None,
                             page: Callable[..., str]) -> Path | None:
    """``report/transcripts.html`` for a run whose evaluation stored conversations (else None);
    ``page(title, body, css=, script=)`` makes the self-contained page (the report's
    :func:`rlff_utils.report.standalone_page`, passed in: the report imports this module)."""
    convs = load_conversations(Path(run_dir))
    if not convs:
        return None
    e = html.escape
    systems = list(dict.fromkeys(c["system"] for c in convs))
    cases = sorted({str(c.get("case_id", "")) for c in convs})
    outcomes = sorted({c.get("end_reason") or "unfinished" for c in convs})
    # side by side by default: the main system (listed last) against the first baseline
    left, second = systems[-1], systems[0]
    body = f"""<header class="rlff-header"><span class="rlff-title">{e(title)}</span>
<a href="index.html">index</a><a href="05_evaluation.html">05 · Evaluation</a></header>
{f"<div class='rlff-banner'>{e(banner)}</div>" if banner else ""}
<main>
<h1>Evaluated conversations</h1>
<p>{len(convs)} conversations: {len(cases)} cases × {len(systems)} systems. Each opens with the seeker's
situation; the evaluation critic scores how the seeker feels after every seeker turn (−1 worse, −0.5 same,
0.5 better, 1 solved); a conversation is solved when the score passes the success threshold.</p>
<h2>Side by side</h2>
<div class="controls"><label>case <select id="c-case">{_options(cases, None)}</select></label>
<label>left <select id="c-a">{_options(systems, None).replace(f"value='{e(left)}'", f"value='{e(left)}' selected", 1)}</select></label>
<label>right <select id="c-b">{_options(systems, None).replace(f"value='{e(second)}'", f"value='{e(second)}' selected", 1)}</select></label></div>
<div id="pair"></div>
<h2>All conversations</h2>
<div class="controls"><label>system <select id="f-system">{_options(systems, "every system")}</select></label>
<label>case <select id="f-case">{_options(cases, "every case")}</select></label>
<label>outcome <select id="f-outcome">{''.join(f"<option value='{e(v)}'>{e(OUTCOME_WORDS.get(v, v))}</option>" for v in outcomes).join(["<option value=''>every outcome</option>", ""])}</select></label>
<span id="count"></span></div>
<div id="list">{''.join(conversation_html(c) for c in convs)}</div>
</main>"""
    path = runs.RunLayout(Path(run_dir)).report / "transcripts.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(title, body, css=CSS, script=SCRIPT), encoding="utf-8")
    return path
