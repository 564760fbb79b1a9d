"""Tables across runs: read what each stage wrote under ``outputs/<run>/`` and put it side by side.

Only files are read, never models, so the analysis notebook renders in seconds and can compare a
CPU smoke run with a paper-scale run produced elsewhere (copy its folder into ``outputs/``).

Every table goes out in two forms through one set of rules:

* **CSV** (:func:`tidy`): numeric and machine-readable: intervals as separate ``x_lo`` / ``x_hi``
  columns, integers as integers, a missing value as an empty cell, dicts flattened into
  ``key.sub`` columns, no column that is empty in every row;
* **for readers** (:func:`display_frame`, :func:`display_table`, :func:`markdown_table`): an
  interval as ``v [lo, hi]``, integers without a decimal point, one missing-value symbol
  (:data:`MISSING`), a fixed number of decimals per column.
"""

from __future__ import annotations

import math
import numbers
import re
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from . import runs as _runs
from .runs import RunLayout, read_json

MISSING = "–"
CSV_DECIMALS = 6  # CSVs keep 6 decimals: -0.4, not -0.39999999999999997
# (low, high) column suffixes that make an interval with the column they extend
_INTERVAL_SUFFIXES = (("_lo", "_hi"), ("_low", "_high"), ("_ci95_low", "_ci95_high"))


# --------------------------------------------------------------------------------------------
# Table formatting: the one set of rules for CSV and for readers
# --------------------------------------------------------------------------------------------


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float):
        return math.isnan(v)
    return isinstance(v, str) and v.strip() == ""


def _typed(col: pd.Series) -> pd.Series:
    """A column of Python values with its natural dtype: integers stay integers even when some
    rows miss a value (``Int64``), other numbers become floats, booleans stay booleans."""
    values = [v for v in col if not _missing(v)]
    if not values:
        return col
    if all(isinstance(v, bool) for v in values):
        return col.map(lambda v: None if _missing(v) else bool(v)).astype("boolean")
    if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        return col.map(lambda v: None if _missing(v) else int(v)).astype("Int64")
    if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        return col.map(lambda v: math.nan if _missing(v) else float(v)).astype(float)
    return col


def records_frame(rows: list[dict[str, Any]], columns: list[str] | None = None) -> pd.DataFrame:
    """A frame from JSON-like records keeping each column's type (``24`` stays ``24`` when another
    row lacks the value, where ``pd.DataFrame(rows)`` would make it ``24.0``)."""
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    return pd.DataFrame({c: _typed(frame[c]) for c in frame.columns}, index=frame.index) if len(frame) else frame


def _flatten_dicts(frame: pd.DataFrame) -> pd.DataFrame:
    """A column holding dicts becomes one column per key (``tokens`` -> ``tokens.policy``, ...)."""
    out = {}
    for col in frame.columns:
        values = frame[col]
        if values.map(lambda v: isinstance(v, Mapping)).any():
            keys = list(dict.fromkeys(k for v in values if isinstance(v, Mapping) for k in v))
            for k in keys:
                sub = [v.get(k) if isinstance(v, Mapping) else None for v in values]
                out[f"{col}.{k}"] = _typed(pd.Series(sub, index=frame.index, dtype=object))
        else:
            out[col] = values
    return pd.DataFrame(out, index=frame.index)


def _split_intervals(frame: pd.DataFrame) -> pd.DataFrame:
    """``x_ci95`` holding ``(lo, hi)`` pairs becomes ``x_lo`` and ``x_hi`` beside ``x``."""
    out = {}
    for col in frame.columns:
        values = frame[col]
        pairs = values.map(lambda v: isinstance(v, (list, tuple)) and len(v) == 2)
        if col.endswith("_ci95") and pairs.any():
            base = col[: -len("_ci95")]
            for i, suffix in enumerate(("_lo", "_hi")):
                out[base + suffix] = values.map(lambda v, i=i: float(v[i]) if isinstance(v, (list, tuple)) and v[i] is not None else math.nan)
        else:
            out[col] = values
    return pd.DataFrame(out, index=frame.index)


# Counts that a writer stored as floats (a trainer's ``epoch`` 1.0 as ``epochs_run``): shown as
# integers when every value is whole.
COUNT_NAME = re.compile(r"^(n|num)_|(^|_)(cases|contexts|trajectories|dialogues|steps?|epochs?|epochs_run|rows|pairs)$")


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """The machine-readable form of a table: intervals in ``_lo``/``_hi`` columns, dicts flattened,
    lists joined with ``"; "``, integer columns (and whole-valued counts, :data:`COUNT_NAME`) as
    integers, columns missing in every row dropped."""
    t = _flatten_dicts(_split_intervals(frame))
    for col in t.columns:
        if t[col].dtype == object:
            if t[col].map(lambda v: isinstance(v, (list, tuple))).any():
                t[col] = t[col].map(lambda v: "; ".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
            t[col] = _typed(t[col])
        if COUNT_NAME.search(str(col)) and pd.api.types.is_float_dtype(t[col]):
            whole = t[col].dropna()
            if len(whole) and (whole == whole.round()).all():
                t[col] = t[col].round().astype("Int64")
    empty = [c for c in t.columns if t[c].map(_missing).all()]
    return t.drop(columns=empty)


def _interval_columns(columns: list[str]) -> dict[str, tuple[str, str]]:
    found = {}
    for col in columns:
        for lo, hi in _INTERVAL_SUFFIXES:
            if col + lo in columns and col + hi in columns:
                found[col] = (col + lo, col + hi)
                break
    return found


def _fmt(v: Any, digits: int) -> str:
    if _missing(v):
        return MISSING
    if pd.api.types.is_bool(v):
        return "yes" if v else "no"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        x = float(v)
        if not math.isfinite(x):
            return MISSING
        if x != 0 and abs(x) < 0.5 * 10 ** -digits:
            return f"{x:.{max(digits, 1)}g}"  # a learning rate is 1e-05, not 0.000
        return f"{x if x != 0 else 0.0:.{digits}f}"  # no "-0.000"
    return str(v)


def _fmt_fixed(v: Any, digits: int) -> str:
    """An interval's bound: always ``digits`` decimals (``-0.00035`` at 2 digits is ``0.00``)."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return str(int(v))
    x = round(float(v), digits)
    return f"{x if x != 0 else 0.0:.{digits}f}"


# Words for the parts of a code name in a header (``roc_auc`` -> ``ROC-AUC``, ``n_train`` -> ``train (n)``)
HEADER_WORDS = {"auc": "AUC", "roc": "ROC", "sr": "SR", "at": "AT", "f1": "F1", "id": "id", "rm": "reward model",
                "ci95": "95% interval", "mw": "Mann-Whitney", "spearman": "Spearman", "kl": "KL", "lr": "learning rate", "mann": "Mann", "whitney": "Whitney",
                "pct": "%", "std": "std", "r": "R", "fut": "fut"}


def header_words(col: Any) -> str:
    """A column name for readers: a snake_case code name in words (``pairwise_accuracy`` ->
    ``pairwise accuracy``, ``roc_auc`` -> ``ROC-AUC``, ``r_fut`` -> ``R_fut``); others unchanged."""
    name = str(col)
    if " " in name:
        return name
    if "_" not in name:
        return HEADER_WORDS.get(name, name) if name.islower() else name
    if name.lower() in ("roc_auc", "r_fut", "v_end", "t_end"):
        return {"roc_auc": "ROC-AUC"}.get(name.lower(), name[0].upper() + name[1:])
    parts = [w for w in name.split("_") if w]
    count = parts[0].lower() in ("n", "num") and len(parts) > 1
    words = [HEADER_WORDS.get(w.lower(), w) for w in parts[1:] if count] or [HEADER_WORDS.get(w.lower(), w) for w in parts]
    return " ".join(words).replace("ROC AUC", "ROC-AUC") + (" (n)" if count else "")


def _digits_for(col: str, digits: int | Mapping[str, int] | None) -> int:
    """Decimals of a column: ``digits`` when one number, else its entry, else 1 for times in
    seconds and 3 for everything else."""
    if isinstance(digits, int):
        return digits
    if digits and col in digits:
        return digits[col]
    return 1 if "seconds" in col or col.endswith("(s)") else 3


def display_frame(frame: pd.DataFrame, digits: int | Mapping[str, int] | None = None) -> pd.DataFrame:
    """Strings for readers: ``v [lo, hi]`` where a column has ``_lo``/``_hi`` companions (or an
    ``_ci95`` pair), integers as integers, every missing value as :data:`MISSING`, ``digits``
    decimals (one number, or per column; by default 1 for seconds, 3 otherwise)."""
    t = tidy(frame)
    intervals = _interval_columns(list(t.columns))
    companions = {c for pair in intervals.values() for c in pair}
    out = {}
    for col in t.columns:
        if col in companions:
            continue
        d = _digits_for(col, digits)
        shown = t[col].map(lambda v, d=d: _fmt(v, d))
        if col in intervals:
            lo, hi = intervals[col]
            ci = [f" [{_fmt_fixed(a, d)}, {_fmt_fixed(b, d)}]" if not (_missing(a) or _missing(b)) else ""
                  for a, b in zip(t[lo], t[hi])]
            shown = shown + pd.Series(ci, index=t.index)
        out[col] = shown
    return pd.DataFrame(out, index=t.index).reset_index(drop=True)


_NUMBER = re.compile(r"^[-+−]?(\d|\.\d)")


def _numeric_columns(shown: pd.DataFrame) -> list[str]:
    """Columns of a :func:`display_frame` whose cells are all numbers (or missing): right-aligned."""
    return [c for c in shown.columns
            if shown[c].map(lambda v: v == MISSING or bool(_NUMBER.match(v))).all() and (shown[c] != MISSING).any()]


def markdown_table(frame: pd.DataFrame, digits: int | Mapping[str, int] | None = None) -> str:
    """The table as Markdown (numbers right-aligned), ``(no rows)`` when empty."""
    if frame.empty:
        return "(no rows)"
    shown = display_frame(frame, digits)
    numeric = set(_numeric_columns(shown))
    align = ["right" if c in numeric else "left" for c in shown.columns]
    return shown.rename(columns=header_words).to_markdown(index=False, disable_numparse=True, colalign=align)


WIDE_COLUMNS = 8  # a table with more columns than this (and few rows) is shown turned: one column per row
LONG_TEXT = 60  # a column whose cells run longer wraps inside a bounded width


def display_table(frame: pd.DataFrame, digits: int | Mapping[str, int] | None = None, caption: str | None = None,
                  transpose: bool | None = None, missing: str | None = None):
    """What a notebook shows for a table: :func:`display_frame` as a pandas Styler, without the
    index, headers in words (:func:`header_words`), numbers right-aligned and kept on one line,
    long text wrapped. A wide table with few rows is turned (``transpose``; by default when it has
    more than :data:`WIDE_COLUMNS` columns and fewer rows than columns) so it fits a page: its first
    column heads the new columns. ``missing``: why a cell reads :data:`MISSING`, said under the
    table when one does."""
    if frame.empty:
        frame = pd.DataFrame({"": ["(no rows)"]})
    shown = display_frame(frame, digits)
    if missing and (shown == MISSING).any().any():
        caption = f"{caption + '; ' if caption else ''}{MISSING} : {missing}"
    if transpose is None:
        transpose = shown.shape[1] > WIDE_COLUMNS and len(shown) < shown.shape[1] - 1
    if transpose:
        shown = turned(shown)
    shown = shown.rename(columns=header_words)
    styler = shown.style.hide(axis="index").set_properties(**{"text-align": "left", "vertical-align": "top"})
    numeric = _numeric_columns(shown)
    if numeric:
        styler = styler.set_properties(subset=numeric, **{"text-align": "right", "white-space": "nowrap"})
    long = [c for c in shown.columns if c not in numeric and shown[c].map(lambda v: len(str(v))).max() > LONG_TEXT]
    if long:
        styler = styler.set_properties(subset=long, **{"white-space": "pre-wrap", "min-width": "16em", "max-width": "40em"})
    return styler.set_caption(caption) if caption else styler


def _flat(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, Mapping):
            out[f"{prefix}{k}"] = None  # an empty record (e.g. no tokens counted on a resumed run)
        elif isinstance(v, (list, tuple)):
            items = [", ".join(f"{a}: {_fmt(b, 3)}" for a, b in _flat(x).items()) if isinstance(x, Mapping) else _fmt(x, 3)
                     for x in v]
            out[f"{prefix}{k}"] = "; ".join(items) if items else None
        else:
            out[f"{prefix}{k}"] = v
    return out


def fields_table(mapping: Mapping[str, Any], digits: int | Mapping[str, int] | None = None,
                 value: str = "value", missing: Mapping[str, str] | None = None, words: bool = False) -> pd.DataFrame:
    """A record (settings, a summary) as a two-column table for readers: nested dicts as dotted
    fields, lists joined with ``"; "``, ``x_ci95`` pairs as ``x``'s ``[lo, hi]``, each value by the
    table rules; a missing value reads :data:`MISSING` followed by its reason from ``missing``
    (field -> reason) when there is one. ``words``: field names in words (:func:`header_words`)."""
    pairs = {k[: -len("_ci95")]: v for k, v in mapping.items()
             if k.endswith("_ci95") and isinstance(v, (list, tuple)) and len(v) == 2}
    flat = _flat({k: v for k, v in mapping.items() if k[: -len("_ci95")] not in pairs or not k.endswith("_ci95")})
    rows = []
    for k, v in flat.items():
        d = _digits_for(k, digits)
        shown = _fmt(v, d)
        if k in pairs and shown != MISSING and not any(_missing(b) for b in pairs[k]):
            shown += f" [{_fmt_fixed(pairs[k][0], d)}, {_fmt_fixed(pairs[k][1], d)}]"
        if shown == MISSING and missing and k in missing:
            shown = f"{MISSING} ({missing[k]})"
        rows.append({"field": header_words(k) if words else k, value: shown})
    return pd.DataFrame(rows, columns=["field", value])


def turned(shown: pd.DataFrame) -> pd.DataFrame:
    """A displayed table turned: one row per former column (its name in words), one column per
    former row, headed by the row's first cell that names it alone among the first three columns
    (a table of one run is headed by its variants, not by the run's name repeated)."""
    first = next((c for c in shown.columns[:3] if shown[c].nunique() == len(shown)), shown.columns[0])
    heads = [str(v) for v in shown[first]]
    heads = [h if heads.count(h) == 1 else f"{h} ({i + 1})" for i, h in enumerate(heads)]
    body = shown.drop(columns=[first]).T
    body.columns = heads
    return body.reset_index(names=header_words(first)).assign(**{header_words(first): lambda t: t[header_words(first)].map(header_words)})


def write_table(table: pd.DataFrame, folder: Path, name: str, shown: pd.DataFrame | None = None,
                digits: int | Mapping[str, int] | None = None):
    """``name.csv`` (:func:`tidy`: numeric) and ``name.md`` (for the README and reports) in
    ``folder``; the Markdown shows ``shown`` when given (an already formatted view, e.g.
    :func:`format_main_table`). Returns the :func:`display_table` of what the Markdown shows."""
    folder.mkdir(parents=True, exist_ok=True)
    tidy(table).round(CSV_DECIMALS).to_csv(folder / f"{name}.csv", index=False)
    view = table if shown is None else shown
    (folder / f"{name}.md").write_text(markdown_table(view, digits) + "\n")
    return display_table(view, digits)


# --------------------------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------------------------


def list_runs(output_root: Path, names: list[str] | None = None) -> list[Path]:
    """Run folders under ``output_root`` (those named, or every folder holding a stage's output)."""
    if names:
        missing = [n for n in names if not (output_root / n).is_dir()]
        if missing:
            raise FileNotFoundError(f"no run folder for {missing} under {output_root}")
        return [output_root / n for n in names]
    return sorted(p for p in output_root.iterdir()
                  if p.is_dir() and any(RunLayout(p).record(s).is_file() for s in _runs.STAGES))


def _read_json(path: Path) -> Any:
    return read_json(path, default=None)


def _read_csv(path: Path) -> pd.DataFrame:
    """A stage's CSV with nullable dtypes: an integer column with a missing cell stays integer."""
    return pd.read_csv(path, dtype_backend="numpy_nullable")


EVALUATION_COLUMNS = ["run", "dataset", "system", "cases", "sr", "sr_lo", "sr_hi", "at", "at_lo", "at_hi",
                      "critic_card", "critic_auc", "critic_auc_lo", "critic_auc_hi"]


def evaluation_table(runs: list[Path]) -> pd.DataFrame:
    """The paper's main table, numeric: one row per (run, dataset, system) with SR (a share) and
    AT and the bounds of their 95% bootstrap intervals, and the validity card of the critic that
    decided them (its key in ``validity.json`` and its AUC for "helped" on real conversations)."""
    rows = []
    for run in runs:
        for metrics_file in RunLayout(run).all_system_metrics():
            m = read_json(metrics_file)
            sr_ci, at_ci = m.get("SR_ci95") or [None, None], m.get("AT_ci95") or [None, None]
            card = m.get("critic_card") or {}
            auc_ci = card.get("auc_ci95") or [None, None]
            rows.append({"run": run.name, "dataset": m.get("dataset", ""), "system": metrics_file.parent.name,
                         "cases": m["cases"], "sr": m["SR"], "sr_lo": sr_ci[0], "sr_hi": sr_ci[1],
                         "at": m["AT"], "at_lo": at_ci[0], "at_hi": at_ci[1], "critic_card": card.get("card"),
                         "critic_auc": card.get("auc"), "critic_auc_lo": auc_ci[0], "critic_auc_hi": auc_ci[1]})
    return records_frame(rows, EVALUATION_COLUMNS)


def conditions_table(runs: list[Path]) -> pd.DataFrame:
    """Every run's evaluation conditions (simulator · seeker profile) with each system's SR, AT,
    rank and the main system's paired difference (``evaluation/conditions.json``)."""
    from .conversation_metrics import condition_rows

    rows = [{"run": run.name, **row} for run in runs
            for row in condition_rows(_read_json(RunLayout(run).conditions) or {})]
    return records_frame(rows)


def sr_at_k_table(runs: list[Path]) -> pd.DataFrame:
    """Long table (run, system, k, SR@k) for the SR@k curves."""
    rows = []
    for run in runs:
        for metrics_file in RunLayout(run).all_system_metrics():
            m = read_json(metrics_file)
            rows += [{"run": run.name, "system": metrics_file.parent.name, "k": k, "SR@k": v} for k, v in enumerate(m["SR_at_k"], 1)]
    return records_frame(rows, ["run", "system", "k", "SR@k"])


def format_main_table(table: pd.DataFrame) -> pd.DataFrame:
    """For readers: SR in percent and AT, each as ``value [lo, hi]``, in the paper's system ×
    dataset shape (from :func:`evaluation_table`)."""
    if table.empty:
        return table
    t = table[["run", "dataset", "system", "cases"]].copy()
    for src, name, scale in (("sr", "SR (%)", 100.0), ("at", "AT", 1.0), ("critic_auc", "critic AUC", 1.0)):
        if src in table.columns:
            for suffix in ("", "_lo", "_hi"):
                t[name + suffix] = pd.to_numeric(table[src + suffix], errors="coerce") * scale
    return display_frame(t, digits={"SR (%)": 1, "AT": 2, "critic AUC": 2})


def simulation_table(runs: list[Path]) -> pd.DataFrame:
    """Simulation statistics per run (from ``simulation/summary.json``; per-role token counts
    flattened into columns by :func:`tidy`)."""
    rows = []
    for run in runs:
        s = _read_json(RunLayout(run).simulation_summary)
        if s:
            rows.append({"run": run.name, **{k: s.get(k) for k in (
                "contexts", "trajectories", "success_rate", "mean_turns", "positive_rate",
                "label_threshold", "unparsed_answers", "seconds")}})
    return records_frame(rows)


def reward_dataset_table(runs: list[Path]) -> pd.DataFrame:
    """Every judged candidate of every run's simulation (``simulation/reward_dataset.jsonl``):
    run, R_fut, label, end reason, and the label threshold δ the run used."""
    import json

    frames = []
    for run in runs:
        lay = RunLayout(run)
        if not lay.reward_dataset.is_file():
            continue
        rows = [json.loads(line) for line in lay.reward_dataset.read_text(encoding="utf-8").splitlines() if line.strip()]
        meta = _read_json(lay.reward_dataset_meta) or {}
        keep = [{"run": run.name, "r_fut": r.get("r_fut"), "label": r.get("label"), "end_reason": r.get("end_reason"),
                 "label_threshold": meta.get("label_threshold")} for r in rows]
        frames.append(records_frame(keep, ["run", "r_fut", "label", "end_reason", "label_threshold"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "r_fut", "label", "end_reason", "label_threshold"])


def reward_model_table(runs: list[Path]) -> pd.DataFrame:
    """Reward-model variant comparison per run (from ``reward_model/comparison.csv``)."""
    frames = [_read_csv(RunLayout(run).rm_comparison).assign(run=run.name)
              for run in runs if RunLayout(run).rm_comparison.is_file()]
    if not frames:
        return pd.DataFrame()
    t = pd.concat(frames, ignore_index=True)
    return t[["run", *[c for c in t.columns if c != "run"]]]


def reward_model_predictions(runs: list[Path]) -> pd.DataFrame:
    """Held-out predictions of every reward-model variant (``<variant>/test_predictions.csv``):
    run, variant, the candidate's R_fut and label, and the model's score."""
    frames = []
    for run in runs:
        lay = RunLayout(run)
        folder = lay.stage(_runs.REWARD_MODEL)
        if not folder.is_dir():
            continue
        for variant in sorted(p.name for p in folder.iterdir() if p.is_dir()):
            if lay.rm_predictions(variant).is_file():
                frames.append(_read_csv(lay.rm_predictions(variant)).assign(run=run.name, variant=variant))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "variant", "r_fut", "label", "score"])


def validity_table(runs: list[Path]) -> pd.DataFrame:
    """Every run's validity cards (``reward_model/validity.json``), one row per (run, card): AUC
    for "helped" with its interval, Mann-Whitney p, Spearman with the intensity drop, the
    turn-count baseline; ``evaluation`` marks the card of the critic behind the run's SR/AT."""
    from .validity import card_from_dict, cards_frame

    frames = []
    for run in runs:
        v = _read_json(RunLayout(run).validity)
        if isinstance(v, dict) and v.get("cards"):
            t = cards_frame({k: card_from_dict(c) for k, c in v["cards"].items()})
            applies = (v.get("evaluation_critic") or {}).get("card")
            frames.append(t.assign(evaluation=t["card"] == applies).assign(run=run.name))
    if not frames:
        return pd.DataFrame()
    t = pd.concat(frames, ignore_index=True)
    return t[["run", *[c for c in t.columns if c != "run"]]]


def planted_summary(run) -> dict[str, Any] | None:
    """The figures the planted-signal check asks for, from the files a planted run wrote (None
    for another kind of run): the reward models' held-out ROC-AUC against the planted label with
    95% intervals that resample the test contexts, whose candidates share a seeker turn (trained
    classification head and its untrained ``random`` start), the compliance before/after GRPO with
    the paired interval, and the main system's paired SR difference to each baseline under the
    deciding critic and the contrast critic."""
    import yaml

    from .validity import clustered_auc_ci

    run = Path(run)
    lay = RunLayout(run)
    params = yaml.safe_load(lay.resolved_params.read_text(encoding="utf-8")) if lay.resolved_params.is_file() else {}
    if (params or {}).get("purpose") != "planted":
        return None
    out: dict[str, Any] = {"run": run.name, "grpo_reward_model": params.get("grpo", {}).get("reward_model")}
    for variant in ("classification", "random"):
        if lay.rm_predictions(variant).is_file():
            pred = pd.read_csv(lay.rm_predictions(variant))
            auc, ci, contexts = clustered_auc_ci(pred.score.tolist(), pred.label.tolist(), pred.context_id.tolist(),
                                                 seed=params.get("seed", 0))
            out.update({f"rm_{variant}_auc": auc, f"rm_{variant}_auc_lo": ci[0], f"rm_{variant}_auc_hi": ci[1],
                        "rm_test_candidates": len(pred), "rm_test_contexts": contexts})
    c = read_json(lay.planted_compliance, default=None)
    if c:
        out.update({"compliance_before": c["before"], "compliance_after": c["after"], "compliance_diff": c["difference"],
                    "compliance_diff_lo": c["difference_ci95"][0], "compliance_diff_hi": c["difference_ci95"][1],
                    "compliance_prompts": c["prompts"], "compliance_samples": c["samples_per_prompt"]})
    for metrics_file in lay.all_system_metrics():
        m = read_json(metrics_file)
        for critic, block in (("rule", m), ("contrast", m.get("contrast_critic") or {})):
            for baseline, d in (block.get("paired_vs") or {}).items():
                ci = d.get("SR_diff_ci95") or [None, None]
                key = f"sr_diff_{critic}_{metrics_file.parent.name}_vs_{baseline}"
                out.update({key: d.get("SR_diff"), f"{key}_lo": ci[0], f"{key}_hi": ci[1], "eval_cases": d.get("cases")})
    return out


def planted_table(runs: list[Path]) -> pd.DataFrame:
    """The planted-signal figures of every planted run (:func:`planted_summary`),
    one row per run: a positive run beside its negative control."""
    return records_frame([s for s in map(planted_summary, runs) if s])


def by_run_columns(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A one-row-per-run table for readers, turned so each run is a column and each figure a row
    (``v [lo, hi]`` where the figure has an interval)."""
    return display_frame(table, digits).set_index("run").T.reset_index(names="figure")


def grpo_curves(runs: list[Path]) -> pd.DataFrame:
    """GRPO training curves of every run (from ``policy/curves.csv``, the columns
    :data:`rlff_utils.grpo.CURVE_COLUMNS` names), long by step, with a ``run`` column."""
    frames = [pd.read_csv(RunLayout(run).grpo_curves).assign(run=run.name)
              for run in runs if RunLayout(run).grpo_curves.is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --------------------------------------------------------------------------------------------
# The run itself: card, time and memory per notebook, summary
# --------------------------------------------------------------------------------------------


def run_card_table(card: dict[str, Any]) -> pd.DataFrame:
    """:func:`rlff_utils.report.run_card` as a two-column table (field, value) for readers."""
    rows = [(k.replace("_", " "), card.get(k)) for k in
            ("run", "description", "purpose", "params_file", "params_sha256", "git_commit", "date", "device", "seed")]
    rows.append(("models", ", ".join(f"{role}: {name}" for role, name in (card.get("models") or {}).items())))
    rows.append(("packages", ", ".join(f"{k} {v}" for k, v in (card.get("packages") or {}).items())))
    if card.get("wall_seconds") is not None:
        rows.append(("pipeline wall time", f"{card['wall_seconds'] / 60:.1f} min"))
    if card.get("peak_memory_mib") is not None:
        rows.append(("peak kernel memory", f"{card['peak_memory_mib'] / 1024:.1f} GiB"))
    return pd.DataFrame([{"field": k, "value": v} for k, v in rows if not _missing(v)])


def timing_table(card: dict[str, Any]) -> pd.DataFrame:
    """Wall time and peak memory per notebook (``timing.json``, ``resources.json``) from the run card."""
    seconds = card.get("seconds_per_notebook") or {}
    peaks = card.get("peak_memory_mib_per_notebook") or {}
    names = list(dict.fromkeys([*seconds, *peaks]))
    cols = ["notebook", "wall time (s)", "peak memory (MiB)"]
    return records_frame([dict(zip(cols, (n, seconds.get(n), peaks.get(n)))) for n in names], cols)


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN (an undefined metric) becomes null, floats are rounded for reading."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if obj is pd.NA:
        return None
    if isinstance(obj, float):
        return None if obj != obj else round(obj, 3)
    if hasattr(obj, "item"):
        return _clean(obj.item())
    return obj


def run_summary(run: Path) -> dict[str, Any]:
    """The few numbers printed at the end of a pipeline run and kept in ``summary.json``
    (undefined metrics are null)."""
    ev = evaluation_table([run])
    rm = reward_model_table([run])
    lay = RunLayout(run)
    sim = _read_json(lay.simulation_summary) or {}
    grpo = _read_json(lay.train_summary) or {}
    rm_cols = [c for c in ("variant", "accuracy", "f1", "roc_auc", "spearman", "pairwise_accuracy") if c in rm.columns]
    return _clean({
        "run": run.name,
        "evaluation": {r.system: {"SR": r.sr, "AT": r.at, "cases": int(r.cases)} for r in ev.itertuples()},
        "reward_model": rm[rm_cols].astype(object).to_dict("records") if len(rm) else [],
        "simulation": {k: sim.get(k) for k in ("trajectories", "success_rate", "positive_rate") if k in sim},
        "grpo": {k: grpo.get(k) for k in ("global_step", "seconds") if k in grpo},
        **({"planted": planted} if (planted := planted_summary(run)) else {}),
        "report": str(lay.notebook("06_analysis").with_suffix(".html").relative_to(run.parent)),
    })
