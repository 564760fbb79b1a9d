"""Human evaluation with colleagues: the annotation page and what is learnt from the returned answers.

**The kit** (:func:`write_kit`, called by the evaluation stage): ``evaluation/human/annotate.html``
is one self-contained page (no server, no file or script from elsewhere: it opens from disk,
offline) holding the blind pairs the LLM judge also compares (the main system against each
baseline on the same case). Each pair shows the seeker's opening and the two conversations side by
side, turn by turn, as "A" and "B"; which system is which is decided per pair by a seed derived from
the pair's identity (:func:`rlff_utils.sampling.derive_seed`), and the page holds no system name.
The key (side → system) is ``key.json`` beside the page, never inside it: send the page alone.
Per criterion (:data:`rlff_utils.agents.JUDGE_CRITERIA`, its definition beside the buttons) the
annotator answers A / tie / B, may leave a note, sees the progress, and types an annotator id. Every
click is kept in the browser (``localStorage``, keyed by the kit, so a reload or a closed tab keeps
the answers); "export" downloads the answers as one JSON file that the annotator sends back.

**The kit's identity.** ``kit`` is a hash of the pairs (identity, sides and text): the same pairs
give the same page and the same storage key, so answers survive a re-rendered page. ``key.json``
keeps the key of every kit written for the run, so answer files of an earlier kit still ingest.

**Ingestion** (:func:`ingest`): every file in ``evaluation/human/answers/*.json`` (any number of
annotators; a file is checked and refused with its name and the reason: not JSON, another run's
kit, an unknown pair, an answer other than A / tie / B). When one annotator id sent several files,
the latest export counts (a note says so). Answers become outcomes for the main system
(win / tie / lose); the annotators' notes on pairs are kept with the pair's identity. Written to
``human_results.csv`` (rates) and ``human_results.json`` (all):

- per system pair and criterion: the win, tie and lose shares (each pair weighs the same: the share
  of its annotators who chose it, averaged over pairs) with percentile-bootstrap intervals over
  pairs (:func:`rlff_utils.stats.bootstrap_ci`);
- inter-annotator agreement: Krippendorff's α per criterion (nominal; the ``krippendorff``
  package), undefined (None, with the reason) with fewer than two annotators on any pair or when
  every answer is the same;
- the LLM judge's validity card: Cohen's κ (scikit-learn) per criterion between the judge's
  both-orders verdict (``judgements.csv``) and the human majority (a strict plurality of the
  annotators; a pair without one is left out and counted), with a bootstrap interval over pairs
  and the raw agreement share.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import runs
from .agents import JUDGE_CRITERIA
from .sampling import derive_seed
from .stats import bootstrap_ci

FORMAT = "pairwise annotation answers"
CHOICES = ("A", "tie", "B")
OUTCOMES = ("win", "tie", "lose")
CODES = {"lose": 0, "tie": 1, "win": 2}  # nominal codes for α and κ
JUDGE_COLUMNS = ["criterion", "pairs", "no_majority", "kappa", "kappa_lo", "kappa_hi", "agreement", "kappa_note"]
ANSWER_COLUMNS = ["annotator", "file", "kit", "item", "system", "baseline", "case_id", "criterion", "outcome"]


@dataclass(frozen=True)
class HumanFolder:
    """Where the human evaluation of a run lives (inside the evaluation stage)."""

    root: Path

    @classmethod
    def of(cls, params) -> "HumanFolder":
        return cls(runs.layout(params).human)

    @property
    def page(self) -> Path: return self.root / "annotate.html"
    @property
    def key(self) -> Path: return self.root / "key.json"
    @property
    def answers(self) -> Path: return self.root / "answers"
    @property
    def results_csv(self) -> Path: return self.root / "human_results.csv"
    @property
    def results_json(self) -> Path: return self.root / "human_results.json"
    @property
    def judgements(self) -> Path: return self.root.parent / "judgements.csv"

    def answer_files(self) -> list[Path]:
        return sorted(self.answers.glob("*.json")) if self.answers.is_dir() else []


# --------------------------------------------------------------------------------------------
# The kit: page and key
# --------------------------------------------------------------------------------------------


def _turns(record: dict[str, Any]) -> list[dict[str, str]]:
    return [{"speaker": str(t.get("speaker", "")), "text": str(t.get("text", ""))} for t in record.get("turns") or []]


def build_items(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]], baselines: Sequence[str],
                system: str, seed: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The page's items (no system name) and the key (item id → case, systems, the system's side)."""
    if len(pairs) != len(baselines):
        raise ValueError(f"{len(pairs)} pairs but {len(baselines)} baseline names")
    items, key = [], {}
    for i, ((ours, theirs), baseline) in enumerate(zip(pairs, baselines)):
        case = str(ours.get("case_id"))
        side = "A" if derive_seed(seed, "human-eval", system, baseline, case) % 2 == 0 else "B"
        a, b = (ours, theirs) if side == "A" else (theirs, ours)
        item_id = f"pair-{i + 1}"
        opening = [{"speaker": str(t.get("speaker", "")), "text": str(t.get("text", ""))}
                   for t in (ours.get("history") or [])]
        items.append({"id": item_id, "situation": str(ours.get("situation") or ""),
                      "about": " · ".join(str(ours[k]) for k in ("emotion_type", "problem_type") if ours.get(k)),
                      "opening": opening, "A": _turns(a), "B": _turns(b)})
        key[item_id] = {"case_id": case, "system": system, "baseline": baseline, "system_side": side}
    return items, key


def kit_id(items: list[dict[str, Any]], key: dict[str, Any]) -> str:
    text = json.dumps([items, key], sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def write_kit(params, system: str, baselines: Sequence[str],
              pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> Path | None:
    """Write ``annotate.html`` and ``key.json`` for (``system``, baseline) pairs; None without pairs.

    Answer files already returned are never touched; the key keeps every earlier kit's entries."""
    if not pairs:
        return None
    folder = HumanFolder.of(params)
    items, key = build_items(pairs, baselines, system, params.seed)
    kit = kit_id(items, key)
    old = runs.read_json(folder.key, default={}) if folder.key.is_file() else {}
    kits = {**(old.get("kits") or {}), kit: key}
    runs.write_json({"current": kit, "run": params.run_name, "kits": kits}, folder.key)
    folder.answers.mkdir(parents=True, exist_ok=True)
    folder.page.write_text(annotation_page(kit, items), encoding="utf-8")
    return folder.page


CSS = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid #ddd; padding: 0.5em 1em;
  display: flex; flex-wrap: wrap; gap: 0.5em 1.2em; align-items: center; }
header h1 { font-size: 1.1em; margin: 0; }
main { max-width: 90em; margin: 0 auto; padding: 0.5em 1em 3em; }
#bar { width: 12em; height: 0.8em; background: #eee; border-radius: 4px; overflow: hidden; display: inline-block; vertical-align: middle; }
#bar > span { display: block; height: 100%; background: #2a7a2a; width: 0; }
.intro { color: #444; max-width: 60em; }
.meta { color: #555; }
.opening { margin: 0.5em 0; padding: 0.4em 0.7em; border-left: 3px solid #999; background: #fff; white-space: pre-wrap; }
table.sbs { width: 100%; border-collapse: collapse; table-layout: fixed; background: #fff; }
table.sbs th, table.sbs td { border: 1px solid #ddd; padding: 0.35em 0.6em; vertical-align: top; overflow-wrap: anywhere; }
table.sbs th.turn { width: 4.5em; color: #555; font-weight: normal; }
.msg { white-space: pre-wrap; margin: 0.15em 0; }
.msg.supporter { color: #123f66; } .msg.seeker { color: #444; }
.ended { color: #999; font-style: italic; }
.criteria { margin: 1em 0; background: #fff; border: 1px solid #ddd; }
.crit { display: grid; grid-template-columns: 9em 1fr auto; gap: 0.3em 1em; padding: 0.45em 0.7em; border-bottom: 1px solid #eee; align-items: center; }
.crit .def { color: #444; }
.crit .choices label { margin-left: 0.8em; white-space: nowrap; cursor: pointer; }
.crit.open { background: #fff8e6; }
textarea { width: 100%; min-height: 3em; }
nav.pairs { display: flex; flex-wrap: wrap; gap: 0.5em; align-items: center; margin: 0.7em 0; }
button { font: inherit; padding: 0.25em 0.9em; cursor: pointer; }
#status { color: #2a7a2a; }
.warn { color: #a33; }
"""

SCRIPT = """
const KIT = JSON.parse(document.getElementById('kit-data').textContent);
const STORE = "pairwise-annotation:" + KIT.kit;
const $ = (s) => document.querySelector(s);
let state = {annotator: '', current: 0, answers: {}};
try { Object.assign(state, JSON.parse(localStorage.getItem(STORE) || '{}')); } catch (e) {}
function save() { localStorage.setItem(STORE, JSON.stringify(state)); }
function el(tag, cls, text) { const n = document.createElement(tag); if (cls) n.className = cls; if (text !== undefined) n.textContent = text; return n; }
function complete(item) { const a = state.answers[item.id] || {}; return KIT.criteria.every((c) => a[c.name]); }
function progress() {
  const done = KIT.items.filter(complete).length;
  $('#progress').textContent = done + ' of ' + KIT.items.length + ' pairs complete';
  $('#bar > span').style.width = (100 * done / KIT.items.length) + '%';
  const jump = $('#jump');
  KIT.items.forEach((it, i) => { jump.options[i].textContent = (complete(it) ? '\\u2713 ' : '\\u2002 ') + 'pair ' + (i + 1); });
}
function message(m) { const side = el('div', 'msg ' + m.speaker); side.append(el('b', '', m.speaker === 'seeker' ? 'Seeker: ' : 'Supporter: '), m.text); return side; }
function show(i) {
  state.current = Math.max(0, Math.min(KIT.items.length - 1, i)); save();
  const it = KIT.items[state.current], area = $('#pair');
  area.replaceChildren();
  $('#jump').value = String(state.current);
  area.append(el('h2', '', 'Pair ' + (state.current + 1) + ' of ' + KIT.items.length));
  if (it.about) area.append(el('p', 'meta', it.about));
  if (it.situation) area.append(el('p', 'meta', 'Situation: ' + it.situation));
  for (const m of it.opening) { const o = el('div', 'opening'); o.append(el('b', '', 'Seeker (opening, shared by both): '), m.text); area.append(o); }
  const table = el('table', 'sbs'), head = el('tr');
  head.append(el('th', 'turn', 'turn'), el('th', '', 'Conversation A'), el('th', '', 'Conversation B'));
  table.append(head);
  const rows = Math.ceil(Math.max(it.A.length, it.B.length) / 2);
  for (let k = 0; k < rows; k++) {
    const tr = el('tr'); tr.append(el('th', 'turn', String(k + 1)));
    for (const side of ['A', 'B']) {
      const td = el('td'), msgs = it[side].slice(2 * k, 2 * k + 2);
      if (!msgs.length) td.append(el('span', 'ended', 'conversation ended'));
      for (const m of msgs) td.append(message(m));
      tr.append(td);
    }
    table.append(tr);
  }
  area.append(table);
  const a = state.answers[it.id] || {}, box = el('div', 'criteria');
  for (const c of KIT.criteria) {
    const row = el('div', 'crit' + (a[c.name] ? '' : ' open')); row.dataset.criterion = c.name;
    row.append(el('b', '', c.name), el('span', 'def', c.definition));
    const choices = el('span', 'choices');
    for (const [value, label] of [['A', 'A'], ['tie', 'tie'], ['B', 'B']]) {
      const lab = el('label'), input = el('input');
      input.type = 'radio'; input.name = it.id + ':' + c.name; input.value = value; input.checked = a[c.name] === value;
      input.addEventListener('change', () => { answer(it, c.name, value); row.classList.remove('open'); });
      lab.append(input, ' ' + label); choices.append(lab);
    }
    row.append(choices); box.append(row);
  }
  area.append(box);
  const note = el('textarea'); note.id = 'note'; note.placeholder = 'optional note on this pair';
  note.value = a.note || '';
  note.addEventListener('input', () => { (state.answers[it.id] ||= {}).note = note.value; save(); });
  const lab = el('label', '', 'Note'); lab.append(el('br'), note); area.append(lab);
  progress();
}
function answer(it, criterion, value) { (state.answers[it.id] ||= {})[criterion] = value; save(); progress(); }
function exportAnswers() {
  const id = state.annotator.trim();
  if (!id) { $('#status').className = 'warn'; $('#status').textContent = 'type your annotator id first'; $('#annotator').focus(); return; }
  const payload = {format: KIT.format, version: 1, kit: KIT.kit, annotator: id, exported: new Date().toISOString(),
                   pairs: KIT.items.length, complete: KIT.items.filter(complete).length, answers: state.answers};
  const blob = new Blob([JSON.stringify(payload, null, 1)], {type: 'application/json'});
  const link = el('a'); link.href = URL.createObjectURL(blob);
  link.download = 'answers-' + id.replace(/[^A-Za-z0-9_-]+/g, '_') + '-' + KIT.kit + '.json';
  document.body.append(link); link.click(); link.remove();
  $('#status').className = ''; $('#status').textContent = 'exported ' + link.download + ': send this file back';
}
const jump = $('#jump');
KIT.items.forEach((it, i) => { const o = el('option', '', 'pair ' + (i + 1)); o.value = String(i); jump.append(o); });
jump.addEventListener('change', () => show(Number(jump.value)));
$('#prev').addEventListener('click', () => show(state.current - 1));
$('#next').addEventListener('click', () => show(state.current + 1));
$('#next-bottom').addEventListener('click', () => { show(state.current + 1); window.scrollTo(0, 0); });
$('#export').addEventListener('click', exportAnswers);
const who = $('#annotator'); who.value = state.annotator;
who.addEventListener('input', () => { state.annotator = who.value; save(); });
show(state.current || 0);
"""


def annotation_page(kit: str, items: list[dict[str, Any]]) -> str:
    """The self-contained annotation page: the items as JSON in the page, rendered by its script."""
    data = {"format": FORMAT, "kit": kit, "items": items,
            "criteria": [{"name": c, "definition": d} for c, d in JUDGE_CRITERIA.items()]}
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    e = html.escape
    criteria = "".join(f"<li><b>{e(c)}</b>: {e(d)}</li>" for c, d in JUDGE_CRITERIA.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Emotional-support conversations: pairwise annotation</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<header><h1>Pairwise annotation</h1>
<label>annotator id <input id="annotator" size="14" placeholder="e.g. your initials"></label>
<span><span id="bar"><span></span></span> <span id="progress"></span></span>
<button id="export">export answers</button><span id="status"></span></header>
<main>
<p class="intro">Each pair shows one seeker talking with two supporters, A and B, from the same opening. Read both
conversations and choose, for each criterion, the better supporter, or tie. The sides are shuffled per pair and
carry no names. Your answers are kept in this browser as you click (closing the page keeps them); when you are
done (or want to hand in what you have), type your annotator id and press <b>export answers</b>, then send the
downloaded file back.</p>
<details><summary>The criteria</summary><ul>{criteria}</ul></details>
<noscript><p class="warn">This page needs JavaScript to record answers.</p></noscript>
<nav class="pairs"><button id="prev">&larr; previous</button><select id="jump" aria-label="pair"></select>
<button id="next">next &rarr;</button></nav>
<section id="pair"></section>
<nav class="pairs"><button id="next-bottom">next pair &rarr;</button></nav>
</main>
<script type="application/json" id="kit-data">{payload}</script>
<script>{SCRIPT}</script>
</body></html>
"""


# --------------------------------------------------------------------------------------------
# Ingestion
# --------------------------------------------------------------------------------------------


def _load_answer_file(path: Path, kits: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One returned file, checked; raises ValueError naming the file and what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path.name}: not a JSON answer file ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path.name}: not an answer file of the annotation page (format {data.get('format') if isinstance(data, dict) else None!r})")
    if data.get("kit") not in kits:
        raise ValueError(f"{path.name}: answers to kit {data.get('kit')!r}, which this run's key.json does not hold "
                         f"(kits: {', '.join(kits) or 'none'}); a file from another run's page?")
    annotator = str(data.get("annotator") or "").strip()
    if not annotator:
        raise ValueError(f"{path.name}: no annotator id")
    answers = data.get("answers")
    if not isinstance(answers, dict):
        raise ValueError(f"{path.name}: 'answers' is not an object")
    key = kits[data["kit"]]
    for item, given in answers.items():
        if item not in key:
            raise ValueError(f"{path.name}: unknown pair {item!r}")
        if not isinstance(given, dict):
            raise ValueError(f"{path.name}: {item}: the answers of a pair must be an object, not {type(given).__name__}")
        for criterion, choice in (given or {}).items():
            if criterion == "note":
                continue
            if criterion not in JUDGE_CRITERIA:
                raise ValueError(f"{path.name}: {item}: unknown criterion {criterion!r}")
            if choice not in CHOICES:
                raise ValueError(f"{path.name}: {item}: {criterion}: answer {choice!r}, expected one of {CHOICES}")
    return {**data, "annotator": annotator, "file": path.name}


def _outcome(choice: str, system_side: str) -> str:
    return "tie" if choice == "tie" else ("win" if choice == system_side else "lose")


def load_answers(folder: HumanFolder) -> tuple[pd.DataFrame, list[str]]:
    """Every returned answer as one row (annotator, pair identity, criterion, outcome for the
    system) and the notes on what was left out; the annotators' own notes on pairs are in
    ``.attrs["comments"]``."""
    files = folder.answer_files()
    if not files:
        return pd.DataFrame(columns=ANSWER_COLUMNS), []
    if not folder.key.is_file():
        raise FileNotFoundError(f"{folder.key} not found: the answers in {folder.answers} cannot be unblinded without the key")
    kits = runs.read_json(folder.key).get("kits") or {}
    loaded = [_load_answer_file(f, kits) for f in files]
    notes, latest = [], {}
    for d in sorted(loaded, key=lambda d: str(d.get("exported") or "")):
        if d["annotator"] in latest:
            notes.append(f"{d['annotator']}: {latest[d['annotator']]['file']} replaced by the later export {d['file']}")
        latest[d["annotator"]] = d
    rows, comments = [], []
    for d in latest.values():
        key = kits[d["kit"]]
        for item, given in d["answers"].items():
            k = key[item]
            if str(given.get("note") or "").strip():
                comments.append({"annotator": d["annotator"], "baseline": k["baseline"], "case_id": k["case_id"],
                                 "system_side": k["system_side"], "note": str(given["note"]).strip()})
            for criterion in JUDGE_CRITERIA:
                if (given or {}).get(criterion):
                    rows.append({"annotator": d["annotator"], "file": d["file"], "kit": d["kit"], "item": item,
                                 "system": k["system"], "baseline": k["baseline"], "case_id": k["case_id"],
                                 "criterion": criterion, "outcome": _outcome(given[criterion], k["system_side"])})
    frame = pd.DataFrame(rows, columns=ANSWER_COLUMNS)
    frame.attrs["comments"] = comments
    return frame, notes


def win_rates(answers: pd.DataFrame, samples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Win / tie / lose shares of the system per (system, baseline, criterion), each pair weighing
    the same, with percentile-bootstrap intervals over pairs."""
    rows = []
    for (system, baseline, criterion), g in answers.groupby(["system", "baseline", "criterion"], sort=False):
        per_pair = g.groupby(["case_id"])["outcome"]
        row = {"system": system, "baseline": baseline, "criterion": criterion,
               "pairs": int(per_pair.ngroups), "annotations": len(g)}
        for o in OUTCOMES:
            shares = per_pair.apply(lambda s, o=o: float((s == o).mean())).to_numpy()
            lo, hi = bootstrap_ci(shares, samples=samples, seed=derive_seed(seed, "human-rates", baseline, criterion, o))
            row.update({o: float(shares.mean()), f"{o}_lo": lo, f"{o}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def krippendorff_alpha(answers: pd.DataFrame) -> tuple[float | None, str]:
    """Nominal α of one criterion's answers (annotator × pair); None and the reason when undefined."""
    import krippendorff

    if answers.empty:
        return None, "no answers"
    units = answers.assign(unit=answers["baseline"] + "/" + answers["case_id"].astype(str))
    table = units.pivot_table(index="annotator", columns="unit", values="outcome", aggfunc="first")
    data = table.apply(lambda col: col.map(CODES)).to_numpy(dtype=float)
    if (np.isfinite(data).sum(axis=0) >= 2).sum() == 0:
        return None, "no pair was answered by two annotators"
    if len(set(data[np.isfinite(data)].tolist())) < 2:
        return None, "every answer is the same: α is undefined"
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")), ""


def majority(outcomes: pd.Series) -> str | None:
    """The strict plurality of the annotators' outcomes for one pair; None when two tie for first."""
    counts = outcomes.value_counts()
    if len(counts) > 1 and counts.iloc[0] == counts.iloc[1]:
        return None
    return str(counts.index[0])


def _kappa_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cohen's κ of each row of two ``[samples, n]`` code arrays (NaN where chance agreement is 1)."""
    po = (a == b).mean(axis=1)
    pe = sum((a == k).mean(axis=1) * (b == k).mean(axis=1) for k in CODES.values())
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pe < 1, (po - pe) / (1 - pe), np.nan)


def judge_agreement(answers: pd.DataFrame, judgements: pd.DataFrame, samples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per criterion: Cohen's κ between the LLM judge's verdict and the human majority, over the
    pairs both judged (a pair without a human majority or with an unparsable verdict is left out)."""
    from sklearn.metrics import cohen_kappa_score

    rows = []
    judged = judgements.dropna(subset=["outcome"]).assign(case_id=lambda f: f["case_id"].astype(str))
    judged = judged.set_index(["baseline", "case_id", "criterion"])["outcome"]
    for criterion, g in answers.groupby("criterion", sort=False):
        human = g.groupby(["baseline", "case_id"])["outcome"].apply(majority)
        no_majority = int(human.isna().sum())
        pairs = [(h, judged[(b, c, criterion)]) for (b, c), h in human.dropna().items() if (b, c, criterion) in judged.index]
        row = {"criterion": criterion, "pairs": len(pairs), "no_majority": no_majority,
               "kappa": math.nan, "kappa_lo": math.nan, "kappa_hi": math.nan, "agreement": math.nan,
               "kappa_note": None if pairs else "no pair with both a human majority and a judge verdict"}
        if pairs:
            h_codes = np.array([CODES[h] for h, _ in pairs], dtype=float)
            j_codes = np.array([CODES[j] for _, j in pairs], dtype=float)
            row["agreement"] = float((h_codes == j_codes).mean())
            if len(set(h_codes) | set(j_codes)) > 1:
                row["kappa"] = float(cohen_kappa_score(h_codes, j_codes, labels=list(CODES.values())))
                row["kappa_lo"], row["kappa_hi"] = bootstrap_ci(
                    h_codes, j_codes, stat=_kappa_rows, samples=samples, seed=derive_seed(seed, "human-kappa", criterion))
            else:
                row["kappa_note"] = "humans and judge gave one and the same outcome throughout: κ is undefined"
        rows.append(row)
    return pd.DataFrame(rows, columns=JUDGE_COLUMNS)


def ingest(params) -> dict[str, Any] | None:
    """Read every returned answer file of the run and write ``human_results.csv`` / ``.json``;
    None when no answer file was returned yet."""
    folder = HumanFolder.of(params)
    answers, notes = load_answers(folder)
    if not folder.answer_files():
        return None
    samples = params.evaluation.bootstrap_samples
    rates = win_rates(answers, samples=samples, seed=params.seed) if len(answers) else pd.DataFrame()
    alpha = []
    for criterion in JUDGE_CRITERIA:
        value, why = krippendorff_alpha(answers[answers["criterion"] == criterion])
        alpha.append({"criterion": criterion, "alpha": value, "alpha_note": why or None,
                      "annotators": int(answers.loc[answers["criterion"] == criterion, "annotator"].nunique())})
    judge = pd.DataFrame()
    if folder.judgements.is_file() and len(answers):
        judge = judge_agreement(answers, pd.read_csv(folder.judgements, dtype={"case_id": str}), samples, params.seed)
    else:
        notes.append("no judgements.csv: the LLM judge did not run, no κ")
    result = {"annotators": sorted(answers["annotator"].unique().tolist()) if len(answers) else [],
              "files": [f.name for f in folder.answer_files()], "answers": len(answers),
              "rates": rates.to_dict("records"), "agreement": alpha, "judge": judge.to_dict("records"), "notes": notes,
              "comments": answers.attrs.get("comments", [])}
    rates.to_csv(folder.results_csv, index=False)
    runs.write_json(result, folder.results_json)
    return result


def agreement_table(result: dict[str, Any]) -> pd.DataFrame:
    """Per criterion: the annotators' α beside the LLM judge's κ against their majority (the
    judge's validity card on human labels)."""
    alpha = pd.DataFrame(result["agreement"], columns=["criterion", "alpha", "alpha_note", "annotators"])
    judge = pd.DataFrame(result["judge"], columns=JUDGE_COLUMNS)
    table = alpha.merge(judge.rename(columns={"agreement": "judge_agreement", "pairs": "judged_pairs"}), on="criterion", how="left")
    return table[["criterion", "annotators", "alpha", "kappa", "kappa_lo", "kappa_hi", "judge_agreement",
                  "judged_pairs", "no_majority", "alpha_note", "kappa_note"]]


def results_tables(params) -> dict[str, pd.DataFrame] | None:
    """The written results as tables (``rates``; ``agreement``: α and the judge's κ), for the
    notebooks; None before any answer file was ingested."""
    folder = HumanFolder.of(params)
    if not folder.results_json.is_file():
        return None
    r = runs.read_json(folder.results_json)
    return {"rates": pd.DataFrame(r["rates"]), "agreement": agreement_table(r)}


# --------------------------------------------------------------------------------------------
# Showing the results (report index, command line)
# --------------------------------------------------------------------------------------------


def _num(v: Any, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.{digits}f}"


def _share(row: dict[str, Any], o: str) -> str:
    return f"{_num(row.get(o))} [{_num(row.get(f'{o}_lo'))}, {_num(row.get(f'{o}_hi'))}]"


def results_html(folder: HumanFolder) -> str:
    """A short HTML account of the ingested answers (rates, α, the judge's κ) for the report
    index; empty before any answer file was ingested."""
    if not folder.results_json.is_file():
        return ""
    r = runs.read_json(folder.results_json)
    e = html.escape
    rates = "".join(
        f"<tr><td>{e(str(x['system']))} vs {e(str(x['baseline']))}</td><td>{e(str(x['criterion']))}</td>"
        f"<td class='num'>{x['pairs']}</td>" + "".join(f"<td class='num'>{_share(x, o)}</td>" for o in OUTCOMES) + "</tr>"
        for x in r["rates"])
    judge = {j["criterion"]: j for j in r["judge"]}
    agree = "".join(
        f"<tr><td>{e(a['criterion'])}</td><td class='num'>{_num(a['alpha'])}</td>"
        f"<td class='num'>{_num(judge.get(a['criterion'], {}).get('kappa'))} [{_num(judge.get(a['criterion'], {}).get('kappa_lo'))}, "
        f"{_num(judge.get(a['criterion'], {}).get('kappa_hi'))}]</td>"
        f"<td class='num'>{judge.get(a['criterion'], {}).get('pairs', 0)}</td>"
        f"<td>{e('; '.join(n for n in (a.get('alpha_note'), judge.get(a['criterion'], {}).get('kappa_note')) if n))}</td></tr>"
        for a in r["agreement"])
    notes = "".join(f"<li>{e(n)}</li>" for n in r.get("notes") or [])
    return (f"<p>{len(r['annotators'])} annotator(s), {r['answers']} answers from {len(r['files'])} file(s). Shares of the "
            "pairs won, tied and lost by the first system (each pair weighs the same; 95% bootstrap intervals over pairs):</p>"
            "<table><tr><th>systems</th><th>criterion</th><th>pairs</th><th>win</th><th>tie</th><th>lose</th></tr>"
            f"{rates}</table><p>Agreement: Krippendorff's α between annotators (nominal; 1 perfect, 0 chance) and the "
            "LLM judge's Cohen's κ against the human majority, with its 95% interval over pairs:</p>"
            "<table><tr><th>criterion</th><th>α annotators</th><th>κ judge vs humans</th><th>pairs</th><th></th></tr>"
            f"{agree}</table>" + (f"<ul>{notes}</ul>" if notes else ""))


def main(argv: list[str] | None = None) -> None:
    """``python -m rlff_utils.human_eval params/<run>.yaml``: ingest the returned answer files."""
    import argparse

    from .params import load_params

    ap = argparse.ArgumentParser(prog="python -m rlff_utils.human_eval",
                                 description="Ingest the returned answer files of a run's human evaluation.")
    ap.add_argument("params", help="the run's params file")
    args = ap.parse_args(argv)
    params = load_params(args.params, check_files=False)
    folder = HumanFolder.of(params)
    result = ingest(params)
    if result is None:
        print(f"no answer file in {folder.answers} yet")
        return
    print(f"{len(result['annotators'])} annotator(s): {', '.join(result['annotators'])}; written {folder.results_csv.name}, "
          f"{folder.results_json.name}")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(pd.DataFrame(result["rates"]).round(2).to_string(index=False))
        print(agreement_table(result).round(2).to_string(index=False))
    for n in result["notes"]:
        print("note:", n)


if __name__ == "__main__":
    main()
