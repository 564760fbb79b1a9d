"""The run folder contract: where every artefact of a run lives, what each stage ran with, and
who is writing it.

    outputs/<run>/
      data/           01  dialogues/ contexts/ eval_cases/ stats.json overview.png
      simulation/     02  trajectories.jsonl reward_dataset.jsonl reward_dataset_meta.json summary.json prompts.json
                          (rollout_state.json while a batch is in flight)
      reward_model/   03  <variant>/{adapter,metrics.json,...} comparison.csv splits.csv validity.{json,csv}
                          learned_critic/{adapter,critic_config.json,metrics.json}
      policy/         04  adapter/ checkpoints/ curves.csv log_history.json train_summary.json grpo_config.json
      evaluation/     05  <system>/{transcripts.jsonl,metrics.json} judgements.csv win_rates.csv
                          human/{annotate.html,key.json,answers/,human_results.{csv,json}}
                          prompts.json skipped_systems.json usage.json <figure>.png (rollout_state.json in flight)
      report/         06  tables, figures, index
      NN_name.ipynb / .html    executed notebooks; timing.json, resources.json, summary.json

Every stage folder holds ``stage.json``: the settings the stage ran with (the params sections it
depends on, see :data:`SETTINGS`), a hash of each upstream stage's settings and a fingerprint of
each upstream file it reads (:data:`INPUTS`: data rebuilt from an edited dataset is a change too;
a record from before fingerprints were kept has none and is taken as unchanged). Before a stage
reuses or resumes anything, :func:`begin_stage` compares that record with the current params:
same → reuse/resume; different → :class:`StaleStageError` naming the changed fields; an upstream
stage that changed invalidates everything downstream. ``.lock`` (pid and host of the holder)
refuses a second writer on the same stage folder. Fields that change how fast a stage runs but
not what it computes (batch sizes, timeouts, devices, ...) are left out of the comparison.

All JSON goes through :func:`write_json` (atomic; NaN/inf written as ``null``) and
:func:`read_json`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .text import redact_credentials

if TYPE_CHECKING:  # pragma: no cover
    from .params import RunParams

# --------------------------------------------------------------------------------------------
# Stages and their dependencies
# --------------------------------------------------------------------------------------------

DATA, SIMULATION, REWARD_MODEL, POLICY, EVALUATION, REPORT = (
    "data", "simulation", "reward_model", "policy", "evaluation", "report")
STAGES = (DATA, SIMULATION, REWARD_MODEL, POLICY, EVALUATION, REPORT)
NOTEBOOK_STAGE = {"01": DATA, "02": SIMULATION, "03": REWARD_MODEL, "04": POLICY, "05": EVALUATION, "06": REPORT}

UPSTREAM: dict[str, tuple[str, ...]] = {
    DATA: (),
    SIMULATION: (DATA,),
    REWARD_MODEL: (DATA, SIMULATION),
    POLICY: (DATA, REWARD_MODEL),
    EVALUATION: (DATA, POLICY),
    REPORT: (),
}

# The params (dotted paths) whose values decide what a stage computes.
SETTINGS: dict[str, tuple[str, ...]] = {
    DATA: ("seed", "data"),
    SIMULATION: ("seed", "models.policy", "models.system", "models.user_sim", "models.critic", "simulation"),
    REWARD_MODEL: ("seed", "models.reward_backbone", "models.critic", "reward_model", "validation"),
    POLICY: ("seed", "models.policy", "grpo"),
    EVALUATION: ("seed", "models.policy", "models.eval_user_sim", "models.eval_critic", "models.judge", "evaluation"),
    REPORT: (),
}

# Settings that choose which items a stage holds, not how any one of them is computed: a stage
# reopened with other values keeps the stored items still wanted and computes the missing ones
# (a simulation grows from 8 to 12 candidates per context, or to more contexts, without redoing
# what it has). Compared like any setting when a finished stage is read or copied.
SELECTION: dict[str, tuple[str, ...]] = {SIMULATION: ("simulation.max_contexts", "simulation.num_candidates")}

# The upstream files each stage reads (relative to the run folder): a fingerprint of each goes
# into the stage's record, so data rebuilt or edited under a stage makes it stale like a changed
# setting (the prepared contexts and cases are fingerprinted, not the raw dataset folder).
INPUTS: dict[str, tuple[str, ...]] = {
    SIMULATION: ("data/contexts.jsonl",),
    REWARD_MODEL: ("data/dialogues.jsonl", "data/contexts.jsonl", "simulation/reward_dataset.jsonl"),
    POLICY: ("data/contexts.jsonl", "data/eval_cases.jsonl"),
    EVALUATION: ("data/eval_cases.jsonl",),
}

# Settings added to the schema after runs were recorded, with the value that computes what those
# runs computed: a record without the key is not stale while the params hold that value (older run
# folders stay valid); any other value is a change like any other.
LATER_SETTINGS: dict[str, Any] = {
    "simulation.seeker_profile": "cooperative",
    "evaluation.seeker_profiles": ["cooperative"],
    "evaluation.simulators": [],
    "grpo.seed": None,
}

# Leaf names that change speed, resources or bookkeeping, not results: never compared.
EXECUTION_FIELDS = frozenset({
    "batch_size", "device", "concurrency", "timeout_s", "max_retries", "gpu_memory_utilization",
    "tensor_parallel_size", "enable_prefix_caching", "max_model_len", "enable_lora", "max_lora_rank",
    "api_key_env", "retrain", "save_steps", "save_total_limit", "logging_steps", "num_processes",
    "accelerate_config", "vllm_gpu_memory_utilization", "max_steps", "variants", "systems", "judge_pairs",
    "human_sheet_rows", "bootstrap_samples", "per_device_eval_batch_size", "dataloader_num_workers",
    "dataloader_pin_memory", "disable_tqdm", "logging_strategy", "logging_first_step", "price_per_mtok",
    # where an endpoint listens, not which model answers (its name is compared): a server restarted on
    # another port (tools/paper_check.py picks a free one) serves the same run
    "base_url",
})

STAGE_RECORD = "stage.json"
LOCK = ".lock"
# A process that holds a stage lock and starts workers on the same stage (``accelerate launch``)
# names itself here; the workers then count its lock as their own.
LOCK_OWNER_ENV = "RLFF_STAGE_LOCK_OWNER"


class StaleStageError(RuntimeError):
    """A stage folder holds results computed with other settings; the message names them."""


class StageLockedError(RuntimeError):
    """Another live process is writing the same stage folder."""


class MissingStageError(FileNotFoundError):
    """A stage needs an upstream stage that has not finished."""


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


class RunLayout:
    """Every artefact path of one run folder. Writers and readers both go through these names."""

    def __init__(self, run_dir: str | os.PathLike):
        self.root = Path(run_dir)

    def stage(self, stage: str) -> Path:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
        return self.root / stage

    # run level
    @property
    def timing(self) -> Path: return self.root / "timing.json"
    @property
    def resources(self) -> Path: return self.root / "resources.json"
    @property
    def summary(self) -> Path: return self.root / "summary.json"
    @property
    def resolved_params(self) -> Path: return self.root / "params.yaml"
    def notebook(self, name: str) -> Path: return self.root / f"{name}.ipynb"

    # 01 data
    @property
    def dialogues(self) -> Path: return self.stage(DATA) / "dialogues"
    @property
    def contexts(self) -> Path: return self.stage(DATA) / "contexts"
    @property
    def eval_cases(self) -> Path: return self.stage(DATA) / "eval_cases"
    @property
    def data_stats(self) -> Path: return self.stage(DATA) / "stats.json"
    @property
    def data_overview_png(self) -> Path: return self.stage(DATA) / "overview.png"

    # 02 simulation
    @property
    def trajectories(self) -> Path: return self.stage(SIMULATION) / "trajectories.jsonl"
    @property
    def reward_dataset(self) -> Path: return self.stage(SIMULATION) / "reward_dataset.jsonl"
    @property
    def reward_dataset_meta(self) -> Path: return self.stage(SIMULATION) / "reward_dataset_meta.json"
    @property
    def simulation_summary(self) -> Path: return self.stage(SIMULATION) / "summary.json"
    @property
    def simulation_png(self) -> Path: return self.stage(SIMULATION) / "simulation.png"
    def prompts(self, stage: str = SIMULATION) -> Path: return self.stage(stage) / "prompts.json"
    def rollout_state(self, stage: str = SIMULATION) -> Path: return self.stage(stage) / "rollout_state.json"

    # 03 reward model
    def variant_dir(self, variant: str) -> Path: return self.stage(REWARD_MODEL) / variant
    def rm_adapter(self, variant: str) -> Path: return self.variant_dir(variant) / "adapter"
    def rm_metrics(self, variant: str) -> Path: return self.variant_dir(variant) / "metrics.json"
    def rm_predictions(self, variant: str) -> Path: return self.variant_dir(variant) / "test_predictions.csv"
    def rm_config(self, variant: str) -> Path: return self.variant_dir(variant) / "rm_config.json"
    def rm_log_history(self, variant: str) -> Path: return self.variant_dir(variant) / "log_history.json"
    def rm_skipped(self, variant: str) -> Path: return self.variant_dir(variant) / "skipped.json"
    def rm_checkpoints(self, variant: str) -> Path: return self.variant_dir(variant) / "checkpoints"
    @property
    def rm_splits(self) -> Path: return self.stage(REWARD_MODEL) / "splits.csv"
    @property
    def rm_comparison(self) -> Path: return self.stage(REWARD_MODEL) / "comparison.csv"
    @property
    def validity(self) -> Path: return self.stage(REWARD_MODEL) / "validity.json"
    @property
    def validity_csv(self) -> Path: return self.stage(REWARD_MODEL) / "validity.csv"
    @property
    def learned_critic_dir(self) -> Path: return self.stage(REWARD_MODEL) / "learned_critic"
    @property
    def learned_critic_adapter(self) -> Path: return self.learned_critic_dir / "adapter"
    @property
    def learned_critic_config(self) -> Path: return self.learned_critic_dir / "critic_config.json"
    @property
    def learned_critic_metrics(self) -> Path: return self.learned_critic_dir / "metrics.json"
    @property
    def learned_critic_checkpoints(self) -> Path: return self.learned_critic_dir / "checkpoints"
    def rm_figure(self, name: str) -> Path: return self.stage(REWARD_MODEL) / f"{name}.png"

    # 04 policy
    @property
    def adapter(self) -> Path: return self.stage(POLICY) / "adapter"
    @property
    def grpo_checkpoints(self) -> Path: return self.stage(POLICY) / "checkpoints"
    @property
    def grpo_config(self) -> Path: return self.stage(POLICY) / "grpo_config.json"
    @property
    def grpo_log_history(self) -> Path: return self.stage(POLICY) / "log_history.json"
    @property
    def grpo_curves(self) -> Path: return self.stage(POLICY) / "curves.csv"
    @property
    def grpo_curves_png(self) -> Path: return self.stage(POLICY) / "curves.png"
    @property
    def train_summary(self) -> Path: return self.stage(POLICY) / "train_summary.json"
    @property
    def samples_before_after(self) -> Path: return self.stage(POLICY) / "samples_before_after.jsonl"
    @property
    def subprocess_params(self) -> Path: return self.stage(POLICY) / "run_params.yaml"
    @property
    def planted_compliance(self) -> Path: return self.stage(POLICY) / "planted_compliance.json"

    # 05 evaluation
    def system_dir(self, system: str) -> Path: return self.stage(EVALUATION) / system
    def transcripts(self, system: str) -> Path: return self.system_dir(system) / "transcripts.jsonl"
    def system_metrics(self, system: str) -> Path: return self.system_dir(system) / "metrics.json"
    def all_system_metrics(self) -> list[Path]: return sorted(self.stage(EVALUATION).glob("*/metrics.json"))
    # other evaluation conditions (a simulator, a seeker profile) beside the headline one
    def condition_transcripts(self, condition: str, system: str) -> Path:
        return self.stage(EVALUATION) / "conditions" / condition / system / "transcripts.jsonl"
    def condition_state(self, condition: str) -> Path:
        return self.stage(EVALUATION) / "conditions" / condition / ".rollout_state.json"
    @property
    def conditions(self) -> Path: return self.stage(EVALUATION) / "conditions.json"
    @property
    def skipped_systems(self) -> Path: return self.stage(EVALUATION) / "skipped_systems.json"
    @property
    def evaluation_usage(self) -> Path: return self.stage(EVALUATION) / "usage.json"
    @property
    def judgements(self) -> Path: return self.stage(EVALUATION) / "judgements.csv"
    @property
    def win_rates(self) -> Path: return self.stage(EVALUATION) / "win_rates.csv"
    @property
    def human(self) -> Path: return self.stage(EVALUATION) / "human"  # rlff_utils.human_eval.HumanFolder
    def eval_figure(self, name: str) -> Path: return self.stage(EVALUATION) / f"{name}.png"

    # 06 report
    @property
    def report(self) -> Path: return self.stage(REPORT)
    def report_figure(self, name: str) -> Path: return self.report / f"{name}.png"

    def record(self, stage: str) -> Path: return self.stage(stage) / STAGE_RECORD
    def lock(self, stage: str) -> Path: return self.stage(stage) / LOCK


def layout(params: "RunParams") -> RunLayout:
    return RunLayout(params.run_dir)


# --------------------------------------------------------------------------------------------
# JSON: one writer, one NaN policy (null)
# --------------------------------------------------------------------------------------------


def json_ready(obj: Any) -> Any:
    """Plain JSON types: numpy scalars unwrapped, NaN/inf → None, paths and tuples as str/list."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return json_ready(obj.item())
    if hasattr(obj, "model_dump"):
        return json_ready(obj.model_dump(mode="json"))
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    return str(obj)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(json_ready(obj), indent=2, ensure_ascii=False, allow_nan=False)
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:  # a full disk, a kill: no temporary file is left behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | os.PathLike, default: Any = ...) -> Any:
    """The JSON at ``path``; ``default`` when the file is absent (given), else FileNotFoundError."""
    path = Path(path)
    if not path.is_file():
        if default is ...:
            raise FileNotFoundError(f"{path} not found")
        return default
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Stage records
# --------------------------------------------------------------------------------------------


def _get(obj: dict[str, Any], dotted: str) -> Any:
    node: Any = obj
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _strip_execution(value: Any) -> Any:
    """Settings without execution-only fields, and without the credentials of any URL, at any
    depth (``evaluation.simulators`` holds model roles inside a list)."""
    if isinstance(value, dict):
        return {k: _strip_execution(v) for k, v in value.items() if k not in EXECUTION_FIELDS}
    if isinstance(value, list):
        return [_strip_execution(v) for v in value]
    if isinstance(value, str):
        return redact_credentials(value)
    return value


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{dotted.path: leaf}``."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: value}


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(json_ready(settings), sort_keys=True).encode()).hexdigest()[:16]


def stage_settings(params: "RunParams", stage: str) -> dict[str, Any]:
    """The params values the stage's results depend on (execution-only fields left out)."""
    dumped = params.model_dump(mode="json")
    return {path: _strip_execution(_get(dumped, path)) for path in SETTINGS[stage]}


class StageRecordError(StaleStageError):
    """A stage record that cannot be read (truncated, emptied, edited by hand); the message names
    the file and how to redo the stage."""


def read_record(run_dir: str | os.PathLike, stage: str) -> dict[str, Any] | None:
    """The stage's record; None when the stage never ran; :class:`StageRecordError` naming the
    file when it is not a record (a torn or hand-edited ``stage.json`` is never guessed at)."""
    path = RunLayout(run_dir).record(stage)
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        problem = f"not valid JSON ({e})"
    else:
        if isinstance(record, dict) and isinstance(record.get("settings"), dict):
            return record
        problem = f"a JSON {type(record).__name__}, not a stage record"
    number = next(n for n, s in NOTEBOOK_STAGE.items() if s == stage)
    raise StageRecordError(
        f"{path} cannot be read: {problem}. The stage's results cannot be matched to any settings; redo the "
        f"stage with python -m rlff_utils.pipeline <params> --from {number} --force")


def _upstream_hashes(params: "RunParams", stage: str, require: bool | tuple[str, ...]) -> dict[str, str | None]:
    """Each upstream stage's settings hash (None: not run). ``require``: all upstream stages must
    have finished (True), none (False), or the ones named."""
    out: dict[str, str | None] = {}
    lay = layout(params)
    for up in UPSTREAM[stage]:
        rec = read_record(lay.root, up)
        if rec is None or not rec.get("complete"):
            if require is True or (isinstance(require, tuple) and up in require):
                number = next(n for n, s in NOTEBOOK_STAGE.items() if s == up)
                raise MissingStageError(
                    f"stage {stage!r} needs stage {up!r}, which has not finished in {lay.root}: "
                    f"run notebook {number} first (python -m rlff_utils.pipeline <params> --from {number})")
            out[up] = None
        else:
            out[up] = rec["hash"]
    return out


def input_fingerprints(run_dir: str | os.PathLike, stage: str) -> dict[str, str | None]:
    """A short SHA-256 of each upstream file the stage reads (:data:`INPUTS`; None: absent)."""
    out: dict[str, str | None] = {}
    for rel in INPUTS.get(stage, ()):
        path = Path(run_dir) / rel
        if not path.is_file():
            out[rel] = None
            continue
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        out[rel] = digest.hexdigest()[:16]
    return out


def _input_changes(params: "RunParams", stage: str, record: dict[str, Any]) -> list[str]:
    """The upstream files that changed since the stage ran. A record written before fingerprints
    were kept has none: its inputs are taken as unchanged (a note says so), so existing run
    folders stay valid."""
    stored = record.get("inputs")
    if not INPUTS.get(stage):
        return []
    if not isinstance(stored, dict):
        # once per stage and process (a warning, not a print: a reader page shows no path of this machine)
        warnings.warn(f"run {params.run_name!r}, stage {stage}: its record has no fingerprint of the data it read "
                      "(written before they were recorded): its inputs are taken as unchanged", stacklevel=2)
        return []
    current = input_fingerprints(layout(params).root, stage)
    return [f"{rel} changed since this stage read it (data rebuilt or edited)" for rel, h in stored.items()
            if rel in current and current[rel] != h]


def stage_differences(params: "RunParams", stage: str, record: dict[str, Any], reopen: bool = False) -> list[str]:
    """Human-readable differences between a stored record and the current params and upstream
    files. ``reopen``: the stage is about to run again, so its :data:`SELECTION` settings may differ."""
    skip = SELECTION.get(stage, ()) if reopen else ()
    diffs = [f"{key}: {old!r} -> {new!r}" for key, (old, new) in _setting_changes(params, stage, record).items()
             if key not in skip]
    current_up = _upstream_hashes(params, stage, require=False)
    for up, h in (record.get("upstream") or {}).items():
        if current_up.get(up) != h:
            diffs.append(f"upstream stage {up!r} was rerun with other settings")
    return diffs + _input_changes(params, stage, record)


def stage_roles(stage: str) -> tuple[str, ...]:
    """The model roles a stage uses (the ``models.<role>`` entries of its :data:`SETTINGS`)."""
    return tuple(path.split(".")[1] for path in SETTINGS[stage] if path.startswith("models."))


# Files a stage writes before its first result (its record, lock and prompt listing).
_NOT_RESULTS = frozenset({STAGE_RECORD, LOCK, "prompts.json"})


def holds_results(folder: str | os.PathLike) -> bool:
    """Whether a stage folder holds anything beyond its bookkeeping (a result, a checkpoint)."""
    return any(p.is_file() and p.name not in _NOT_RESULTS for p in Path(folder).rglob("*"))


def check_stage(params: "RunParams", stage: str, reopen: bool = False) -> dict[str, Any] | None:
    """The stored record when it matches the current params (None when the stage never ran);
    :class:`StaleStageError` naming the changed fields otherwise. ``reopen``: the stage is about
    to run again, so a change of its :data:`SELECTION` settings is a growth, not staleness."""
    lay = layout(params)
    record = read_record(lay.root, stage)
    if record is None or not (record.get("complete") or holds_results(lay.stage(stage))):
        return None  # never ran, or failed before it stored anything: nothing to be stale
    diffs = stage_differences(params, stage, record, reopen=reopen)
    if diffs:
        number = next(n for n, s in NOTEBOOK_STAGE.items() if s == stage)
        shown = "; ".join(diffs[:8]) + (f"; ... ({len(diffs) - 8} more)" if len(diffs) > 8 else "")
        raise StaleStageError(
            f"{lay.stage(stage)} holds results computed with other settings ({shown}). Nothing was "
            f"mixed or overwritten. To redo this stage and what depends on it: "
            f"python -m rlff_utils.pipeline {params.source or '<params>'} --from {number} --force; "
            f"to keep both, give the run another run_name.")
    return record


def selection_changes(params: "RunParams", stage: str) -> dict[str, tuple[Any, Any]]:
    """The :data:`SELECTION` settings whose stored value differs from the params, as
    ``{dotted path: (stored, now)}``; empty when the stage never ran or holds the same selection."""
    record = read_record(layout(params).root, stage)
    changes = _setting_changes(params, stage, record) if record else {}
    return {key: change for key, change in changes.items() if key in SELECTION.get(stage, ())}


def _setting_changes(params: "RunParams", stage: str, record: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted path: (stored, now)}`` for every setting the record and the params disagree on.
    Both sides are read under today's :data:`EXECUTION_FIELDS`: a field that became execution-only
    after a record was written leaves that record valid."""
    old = flatten(_strip_execution(record.get("settings", {})))
    new = flatten(json_ready(stage_settings(params, stage)))
    for key, value in LATER_SETTINGS.items():  # recorded before the setting existed, and unchanged since
        if key not in old and key in new and new[key] == value:
            old[key] = value
    return {key: (old.get(key, "<absent>"), new.get(key, "<absent>")) for key in sorted(set(old) | set(new))
            if old.get(key, "<absent>") != new.get(key, "<absent>")}


def _write_record(params: "RunParams", stage: str, complete: bool, upstream: dict[str, Any],
                  extra: dict[str, Any] | None = None, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    settings = stage_settings(params, stage)
    record = {
        "stage": stage,
        "run_name": params.run_name,
        "params_file": params.source,
        "settings": settings,
        "upstream": upstream,
        "inputs": inputs if inputs is not None else input_fingerprints(layout(params).root, stage),
        "hash": settings_hash({"settings": settings, "upstream": upstream}),
        "complete": complete,
        "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    write_json(record, layout(params).record(stage))
    return record


class UnsafeClearError(RuntimeError):
    """``--force`` was asked to clear a folder that is not a stage folder of this run."""


def clearable(params: "RunParams", stage: str) -> bool:
    """Whether ``--force`` may empty the stage's folder: it must lie inside this run's folder once
    every ``..`` and symbolic link is resolved (else :class:`UnsafeClearError`: nothing outside a
    run folder is ever deleted), and hold a stage record, the mark of a folder the project wrote
    (False: there is nothing of a stage to clear, and the folder is left as it is)."""
    lay = layout(params)
    folder = lay.stage(stage)
    run = lay.root.resolve()
    target = folder.resolve()
    if target.parent != run or target.name != stage or run == run.parent:
        raise UnsafeClearError(
            f"--force: {folder} resolves to {target}, which is not the {stage!r} folder inside the run folder "
            f"{run}; nothing was deleted")
    return folder.is_dir() and lay.record(stage).is_file()


def _clear(folder: Path) -> None:
    for child in folder.iterdir():
        if child.name != LOCK:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def reset_stage(params: "RunParams", stage: str) -> bool:
    """Empty a stage's folder (``--force``), after making sure nobody is writing it; only a stage
    folder of this run that holds a stage record is touched (:func:`clearable`). Returns whether
    it was cleared."""
    folder = layout(params).stage(stage)
    if not clearable(params, stage):
        return False
    with stage_lock(folder):
        _clear(folder)
    return True


@contextlib.contextmanager
def begin_stage(params: "RunParams", stage: str, force: bool = False, require_upstream: bool | tuple[str, ...] = True,
                extra: dict[str, Any] | None = None) -> Iterator[Path]:
    """Open a stage folder for writing: lock it, check its record against the params (stale →
    :class:`StaleStageError`; ``force`` → start over; another :data:`SELECTION` is not stale: the
    stage keeps the stored items it still wants), record the settings (and ``extra``, e.g. what
    the stage optimises), yield the folder; on a clean exit mark the record complete. Results
    already in the folder are valid to reuse."""
    folder = layout(params).stage(stage)
    folder.mkdir(parents=True, exist_ok=True)
    upstream = _upstream_hashes(params, stage, require=require_upstream)
    with stage_lock(folder):
        record = None
        if force:
            if clearable(params, stage):
                _clear(folder)
        else:
            record = check_stage(params, stage, reopen=True)
        if record and record.get("complete") and _unchanged(params, stage, record, upstream):
            # Finished with these very settings: its results are reused and its record kept as it is
            # (rewritten, a record from an older version would change its hash and turn every later
            # stage stale although nothing changed).
            yield folder
            return
        inputs = input_fingerprints(layout(params).root, stage)  # what the stage reads, as it starts
        _write_record(params, stage, complete=False, upstream=upstream, extra=extra, inputs=inputs)
        yield folder
        _write_record(params, stage, complete=True, upstream=upstream, extra=extra, inputs=inputs)


def _unchanged(params: "RunParams", stage: str, record: dict[str, Any], upstream: dict[str, Any]) -> bool:
    """The record says the stage finished with these settings (none differs, not even one that only
    selects items) on these upstream records."""
    return not _setting_changes(params, stage, record) and record.get("upstream", {}) == upstream


def stage_is_complete(params: "RunParams", stage: str) -> bool:
    """The stage finished with the current settings (a stale record raises)."""
    record = check_stage(params, stage)
    return bool(record and record.get("complete"))


def reuse_stages(params: "RunParams", source_run: str | os.PathLike) -> list[str]:
    """Copy into this run the finished stages of another run that this run would compute the same
    way (an ablation that changes only GRPO reuses data, simulation and reward models): stage by
    stage in order, a stage is copied when its record there is complete and matches this run's
    settings and upstream exactly (the same comparison as :func:`check_stage`); the first stage
    that differs, or that this run already has, ends the copying. Returns the stages copied."""
    source = Path(source_run)
    target = layout(params)
    if source.resolve() == target.root.resolve():
        raise ValueError(f"--reuse-from names this run's own folder ({source})")
    if not source.is_dir():
        raise FileNotFoundError(f"no run folder to reuse stages from: {source}")
    copied = []
    for stage in STAGES:
        if stage == REPORT:
            break
        record = read_record(source, stage)
        if read_record(target.root, stage) is not None or not (record and record.get("complete")):
            break
        if stage_differences(params, stage, record):
            break
        with stage_lock(target.stage(stage)):
            shutil.copytree(source / stage, target.stage(stage), dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(LOCK))
            write_json({**record, "run_name": params.run_name, "params_file": params.source,
                        "copied_from": str(source.resolve())}, target.record(stage))
        copied.append(stage)
    return copied


# --------------------------------------------------------------------------------------------
# Training checkpoints
# --------------------------------------------------------------------------------------------

TRAINER_STATE = "trainer_state.json"


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that a trainer can resume from, else None.

    transformers writes a checkpoint's weights and optimizer before ``trainer_state.json``, so a
    run killed while saving leaves a torn ``checkpoint-N`` that ``resume_from_checkpoint`` cannot
    read. Such a checkpoint (no readable trainer state) is removed, with a note, and the one
    before it is used; with none left, training starts over. One rule for GRPO, the reward-model
    variants and the learned critic."""
    import re

    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in folder.iterdir()
                    if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))), reverse=True)
    for _, path in found:
        try:
            state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = None
        if isinstance(state, dict):
            return str(path)
        shutil.rmtree(path, ignore_errors=True)
        print(f"note: {path} is incomplete (no readable {TRAINER_STATE}: the run stopped while saving it); "
              "removed, resuming from the checkpoint before it (or from the start)", flush=True)
    return None


# --------------------------------------------------------------------------------------------
# Lock
# --------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def stage_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Exclusive writer lock on a stage folder: ``.lock`` holds the holder's pid and host. A lock
    left by a dead process on this host is taken over; a live holder → :class:`StageLockedError`.
    Re-entrant within one process."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    if _held_by_me(path, me):
        yield
        return
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            same_host = holder.get("host") == me["host"]
            if same_host and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
                path.unlink(missing_ok=True)  # its writer died: take over
                continue
            raise StageLockedError(
                f"{folder} is being written by pid {holder.get('pid')} on {holder.get('host')} "
                f"(since {holder.get('since')}); wait for it, or remove {path} if that process is gone") from None
        with os.fdopen(fd, "w") as f:
            json.dump({**me, "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}, f)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # being written, or torn: treated as held by an unknown process


def _held_by_me(path: Path, me: dict[str, Any]) -> bool:
    holder = _read_lock(path)
    owners = {me["pid"]}
    if os.environ.get(LOCK_OWNER_ENV, "").isdigit():
        owners.add(int(os.environ[LOCK_OWNER_ENV]))
    return bool(holder) and holder.get("pid") in owners and holder.get("host") == me["host"]
