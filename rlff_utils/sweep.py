"""Sweeps: many runs from one file, the stages they share computed once, then aggregated.

    python -m rlff_utils.sweep sweeps/planted_seeds.yaml --dry-run    # the runs, what each shares and computes, and its cost
    python -m rlff_utils.sweep sweeps/planted_seeds.yaml              # run (local executor), then aggregate
    python -m rlff_utils.sweep sweeps/paper_rm_ablation.yaml --executor slurm

A sweep file (:class:`SweepFile`) names a base params file, named arms (each a params file and/or
dotted overrides), a grid of dotted keys -> values (crossed with the arms) and seeds, with the
param the seed sets (``seed``: every stage; ``grpo.seed``: GRPO and what follows it, over one data,
simulation and reward model). Each (arm, grid point, seed) is one run with a readable name,
``<sweep>-<arm>[-<key><value>...]-s<seed>``, in the usual ``outputs/<run>/`` folder.

The plan (:func:`plan_sweep`) compares, for every run, the key of each stage: the hash of the
stage's settings and of its upstream stages' keys, the comparison the pipeline makes between a
stage record and the params (``runs.stage_settings``, ``runs.UPSTREAM``). A run whose first stages
have the same keys as an earlier run's reuses them (``--reuse-from`` semantics); the earlier run
(the leader) computes those stages first, in a *shared job* (``pipeline --only``), and only then
are the runs that reuse them started (*run jobs*, ``pipeline --reuse-from <leader> --from NN``).

Rerunning a sweep resumes it: a run whose stages and notebooks all finished with its settings is
skipped; a run folder holding results of other settings is refused (``runs.StaleStageError``),
named in the summary, and the others go on. Each run job has its own log and exit status; a failed
job does not stop the others (a run whose shared job failed is *blocked*). The sweep folder
``<output_root>/sweeps/<name>/`` holds ``sweep.json`` (plan and outcome), ``logs/`` and the
aggregation (:mod:`rlff_utils.sweep_analysis`, notebook ``notebooks/sweep.ipynb``); each run folder
holds ``sweep.json`` (its arm, seed, the stages its seed varies, what it reused).

Executors: ``local`` runs jobs one after another, or one per GPU when several are visible;
``slurm`` submits them through submitit (``resources:`` per stage group in the sweep file), wave
by wave so shared stages finish before the runs that reuse them are submitted; ``submitit-local``
is submitit's own local executor (what the test suite runs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import runs
from .cost import plain_table, sweep_estimate_text
from .params import ParamsError, RunParams, load_params, project_root

CHAIN = tuple(s for s in runs.STAGES if s != runs.REPORT)  # the stages a run may share, in order
STAGE_NOTEBOOK = {stage: number for number, stage in runs.NOTEBOOK_STAGE.items()}
_NAME = r"^[A-Za-z0-9_.-]+$"


class SweepError(ValueError):
    """A sweep file that cannot describe a sweep; the message names the file and the field."""


# --------------------------------------------------------------------------------------------
# The sweep file
# --------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Arm(_Strict):
    """One arm: a params file (relative to the sweep file; default the sweep's ``base``) and dotted
    overrides over it."""
    name: str = Field(..., pattern=_NAME)
    params: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict, alias="set")


class Seeds(_Strict):
    """The seeds, and the param each sets: ``seed`` varies every stage, ``grpo.seed`` only GRPO
    and what follows it (any dotted key of the params may be named)."""
    key: str = "seed"
    values: list[int] = Field(..., min_length=1)

    @field_validator("values")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"a seed is listed twice: {v}")
        return v

    def varies(self) -> list[str]:
        """The stages whose results depend on the seed (their settings hold the key, or an upstream
        stage's do)."""
        out: list[str] = []
        for stage in CHAIN:
            own = any(self.key == s or self.key.startswith(s + ".") for s in runs.SETTINGS[stage])
            if own or any(up in out for up in runs.UPSTREAM[stage]):
                out.append(stage)
        return out


class Resources(_Strict):
    """What a job asks of a cluster (submitit's generic parameters; ``slurm``: any other
    ``slurm_*`` parameter of submitit, e.g. ``{partition: gpu, account: x}``)."""
    timeout_min: int = Field(240, ge=1)
    cpus_per_task: int = Field(8, ge=1)
    gpus_per_node: int = Field(1, ge=0)
    mem_gb: float = Field(64, gt=0)
    slurm: dict[str, Any] = Field(default_factory=dict)


class StageResources(_Strict):
    shared: Resources = Field(default_factory=Resources, description="jobs computing stages several runs share")
    run: Resources = Field(default_factory=Resources, description="each run's own stages")


class Aggregate(_Strict):
    """What the aggregation compares: the evaluated ``system`` of every run, each arm against the
    ``reference`` arm on the same seeds and cases."""
    system: str = "rlff-esc"
    reference: str | None = None
    bootstrap_samples: int = Field(2000, ge=10)


class SweepFile(_Strict):
    name: str | None = Field(None, pattern=_NAME, description="default: the file's stem")
    description: str = ""
    base: str = Field(..., description="the params file every arm starts from (relative to this file)")
    overrides: dict[str, Any] = Field(default_factory=dict, alias="set", description="dotted overrides for every run")
    arms: list[Arm] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted key -> values, crossed with the arms")
    seeds: Seeds
    output_root: str | None = Field(None, description="where the runs go (default: the base params' output_root)")
    aggregate: Aggregate = Field(default_factory=Aggregate)
    resources: StageResources = Field(default_factory=StageResources)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_list(cls, v: Any) -> Any:
        return {"values": v} if isinstance(v, list) else v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid.{key}: give at least one value")
            if key in ("run_name", "output_root"):
                raise ValueError(f"grid.{key}: the sweep names its runs and their folder itself")
        return v

    @model_validator(mode="after")
    def _arms(self) -> "SweepFile":
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names must be unique, got {names}")
        if self.aggregate.reference is not None and self.arms and self.aggregate.reference not in names:
            raise ValueError(f"aggregate.reference {self.aggregate.reference!r} is not an arm ({names})")
        return self


def read_sweep(path: str | os.PathLike) -> SweepFile:
    """The validated sweep file; :class:`SweepError` naming the file and field otherwise."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: sweep file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: expected a mapping (base, arms, grid, seeds, ...)")
    try:
        sweep = SweepFile.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '<top level>'}: "
                             f"{err['msg'].removeprefix('Value error, ')}" for err in e.errors())
        raise SweepError(f"{path}: invalid sweep ({problems})") from None
    if sweep.name is None:
        sweep.name = path.stem
    return sweep


# --------------------------------------------------------------------------------------------
# Expansion into runs
# --------------------------------------------------------------------------------------------


@dataclass
class RunSpec:
    """One run of a sweep: its name, arm (the arm's name and grid point, everything but the seed),
    seed, params file and overrides."""
    name: str
    arm: str
    seed: int
    params_file: str
    overrides: dict[str, Any]


def _label(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return "".join(c if c.isalnum() or c in "._" else "_" for c in text).strip("_") or "x"


def expand(sweep: SweepFile, sweep_path: str | os.PathLike) -> list[RunSpec]:
    """Every (arm, grid point, seed) as a :class:`RunSpec`, arms in file order, seeds innermost."""
    folder = Path(sweep_path).resolve().parent
    arms = sweep.arms or [Arm(name="base")]
    points = [dict(zip(sweep.grid, values)) for values in itertools.product(*sweep.grid.values())]
    out = []
    for arm, point in itertools.product(arms, points):
        label = "-".join([arm.name, *(f"{k.rsplit('.', 1)[-1]}{_label(v)}" for k, v in point.items())])
        params_file = str((folder / (arm.params or sweep.base)).resolve())
        for seed in sweep.seeds.values:
            name = f"{sweep.name}-{label}-s{seed}"
            overrides = {**sweep.overrides, **arm.overrides, **point, sweep.seeds.key: seed, "run_name": name}
            if sweep.output_root is not None:
                overrides["output_root"] = sweep.output_root
            out.append(RunSpec(name, label, seed, params_file, overrides))
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise SweepError(f"{sweep_path}: two runs get the same name ({sorted({n for n in names if names.count(n) > 1})})")
    return out


# --------------------------------------------------------------------------------------------
# The shared-stage plan
# --------------------------------------------------------------------------------------------


def stage_keys(params: RunParams) -> dict[str, str]:
    """Each chain stage's key: the hash of its settings and its upstream stages' keys (what a
    stage record's ``hash`` is when every stage is computed from these params)."""
    keys: dict[str, str] = {}
    for stage in CHAIN:
        keys[stage] = runs.settings_hash({"settings": runs.stage_settings(params, stage),
                                          "upstream": {up: keys[up] for up in runs.UPSTREAM[stage]}})
    return keys


def _common_prefix(a: dict[str, str], b: dict[str, str]) -> int:
    n = 0
    for stage in CHAIN:
        if a[stage] != b[stage]:
            break
        n += 1
    return n


@dataclass
class RunPlan:
    spec: RunSpec
    params: RunParams
    keys: dict[str, str]
    source: str | None = None              # the run whose stages this one reuses
    reused: list[str] = field(default_factory=list)
    shared_upto: int = 0                   # as a leader: how many chain stages others reuse from it
    status: str = "new"                    # new | partial | finished | stale
    problem: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def computes(self) -> list[str]:
        """The stages this run's own job computes (after what it reuses and what its shared job did)."""
        return list(CHAIN[max(len(self.reused), self.shared_upto):]) + [runs.REPORT]

    @property
    def shared_computes(self) -> list[str]:
        """The stages its shared job computes for others (empty: not a leader)."""
        return list(CHAIN[len(self.reused):self.shared_upto])


@dataclass
class SweepPlan:
    name: str
    sweep_file: str
    sweep: SweepFile
    runs: list[RunPlan]
    output_root: Path
    notebooks_dir: Path

    @property
    def folder(self) -> Path:
        return self.output_root / "sweeps" / self.name

    def by_name(self, name: str) -> RunPlan:
        return next(r for r in self.runs if r.name == name)


def plan_sweep(path: str | os.PathLike, check_files: bool = True, notebooks_dir: Path | None = None) -> SweepPlan:
    """Read, expand and validate every run (before anything loads), read each run folder's state
    (new, partial, finished, stale), then plan what each shares: a run reuses the longest run of
    leading stages it has in common with an earlier run that is not stale (the earliest such run
    on a tie)."""
    sweep = read_sweep(path)
    specs = expand(sweep, path)
    plans: list[RunPlan] = []
    for spec in specs:
        try:
            params = load_params(spec.params_file, spec.overrides, check_files=check_files)
        except ParamsError as e:
            raise SweepError(f"{path}: run {spec.name}: {e}") from None
        plans.append(RunPlan(spec, params, stage_keys(params)))
    nbdir = notebooks_dir or project_root() / "notebooks"
    for run in plans:
        run.status, run.problem = _run_state(run.params, nbdir)
    for i, run in enumerate(plans):
        best, source = 0, None
        for earlier in plans[:i]:
            if earlier.status == "stale":  # refused: it computes nothing, so it shares nothing
                continue
            n = _common_prefix(run.keys, earlier.keys)
            if n > best:
                best, source = n, earlier
        if best == len(CHAIN):
            _refuse_identical(path, run, source)
        if source is not None:
            run.source, run.reused = source.name, list(CHAIN[:best])
            source.shared_upto = max(source.shared_upto, best)
    for run in plans:
        if run.shared_upto <= len(run.reused):
            run.shared_upto = 0  # shares nothing beyond what it reuses itself
    roots = {r.params.resolve(r.params.output_root) for r in plans}
    if len(roots) != 1:
        raise SweepError(f"{path}: the runs would go to several output roots ({sorted(map(str, roots))}); "
                         "set output_root in the sweep file")
    return SweepPlan(sweep.name or Path(path).stem, str(Path(path).resolve()), sweep, plans, roots.pop(), nbdir)


def _refuse_identical(path: str | os.PathLike, run: RunPlan, other: RunPlan) -> None:
    """Two runs whose every stage would compute the same: what tells them apart are fields the
    stage records leave out (``runs.EXECUTION_FIELDS``: batch sizes, ``max_steps``, the evaluated
    systems, ...), so the second would only copy the first. Refused, naming the fields."""
    a, b = (runs.flatten(p.model_dump(mode="json")) for p in (run.params, other.params))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "run_name")
    raise SweepError(
        f"{path}: runs {other.name} and {run.name} would compute the same results: they differ only in "
        f"{', '.join(keys) or 'nothing'}, which the stage records do not compare (speed or bookkeeping fields, "
        "runs.EXECUTION_FIELDS). Vary a setting that changes results, or drop one of them.")


def _run_state(params: RunParams, notebooks_dir: Path) -> tuple[str, str]:
    """new / partial / finished (every stage complete with these settings and the last notebook,
    the report, executed after them) / stale (a stage folder holds results of other settings)."""
    from .pipeline import discover_stages

    done = []
    for stage in CHAIN:
        try:
            record = runs.check_stage(params, stage)
        except runs.StaleStageError as e:
            return "stale", str(e)
        done.append(bool(record and record.get("complete")))
    timing = runs.read_json(runs.layout(params).timing, default={})
    last = discover_stages(notebooks_dir)[-1]  # the report, run after every stage (reused ones have no timing here)
    if all(done) and last.name in timing:
        return "finished", ""
    return ("partial" if any(done) or timing else "new"), ""


# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One pipeline call of a sweep: a shared job (a leader's shared stages) or a run job."""
    name: str
    kind: Literal["shared", "run"]
    run: str
    argv: list[str]
    log: str
    after: list[str] = field(default_factory=list)   # jobs that must succeed first
    resources: Resources = field(default_factory=Resources)

    @property
    def command(self) -> str:
        return " ".join(["python -m rlff_utils.pipeline", *(_quote(a) for a in self.argv)])


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _argv(plan: SweepPlan, run: RunPlan) -> list[str]:
    """The run's pipeline arguments; the output root absolute, so a job started in another folder
    (a cluster node's) writes where the plan looked."""
    overrides = {**run.spec.overrides, "output_root": str(plan.output_root)}
    argv = [run.spec.params_file, *(f"--set={k}={json.dumps(v)}" for k, v in overrides.items())]
    if plan.notebooks_dir != project_root() / "notebooks":
        argv.append(f"--notebooks-dir={plan.notebooks_dir}")
    return argv


def _numbers(stages: list[str]) -> list[str]:
    return [STAGE_NOTEBOOK[s] for s in stages]


def build_jobs(plan: SweepPlan) -> list[list[Job]]:
    """The jobs in waves: the shared jobs, each wave after the one holding what it reuses, then
    every run job. Finished runs and stale ones get no job."""
    logs = plan.folder / "logs"
    res = plan.sweep.resources
    shared: dict[str, Job] = {}
    waves: list[list[Job]] = []
    depth: dict[str, int] = {}
    for run in plan.runs:  # runs are in plan order: a leader's source comes before it
        if not run.shared_computes or run.status in ("finished", "stale"):
            continue
        argv = _argv(plan, run) + [f"--only={','.join(_numbers(run.shared_computes))}"]
        after = []
        if run.source:
            argv.append(f"--reuse-from={run.source}")
            if run.source in shared:
                after.append(shared[run.source].name)
        job = Job(f"shared:{run.name}", "shared", run.name, argv, str(logs / f"{run.name}.shared.log"), after,
                  res.shared)
        depth[run.name] = 1 + max((depth[a.split(":", 1)[1]] for a in after), default=-1)
        shared[run.name] = job
        while len(waves) <= depth[run.name]:
            waves.append([])
        waves[depth[run.name]].append(job)
    final = []
    for run in plan.runs:
        if run.status in ("finished", "stale"):
            continue
        argv = _argv(plan, run) + [f"--from={STAGE_NOTEBOOK[run.computes[0]]}"]
        after = [shared[run.name].name] if run.name in shared else []
        if run.source:
            argv.append(f"--reuse-from={run.source}")
            if run.source in shared:
                after.append(shared[run.source].name)
        final.append(Job(f"run:{run.name}", "run", run.name, argv, str(logs / f"{run.name}.log"), after, res.run))
    return waves + ([final] if final else [])


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------


@dataclass
class JobResult:
    job: str
    run: str
    status: Literal["ok", "failed", "blocked"]
    returncode: int | None
    seconds: float
    log: str


def execute_job(job: Job, env: dict[str, str] | None = None) -> int:
    """Run one job's pipeline call in its own process, output to the job's log; its exit status."""
    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    with open(job.log, "a", encoding="utf-8") as log:
        log.write(f"$ {job.command}\n")
        log.flush()
        proc = subprocess.run([sys.executable, "-m", "rlff_utils.pipeline", *job.argv], stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, check=False)
        log.write(f"\nexit status {proc.returncode}\n")
    return proc.returncode


def _blocked(job: Job, failed: set[str]) -> bool:
    return any(a in failed for a in job.after)


def visible_gpus() -> list[str]:
    """The GPUs a local sweep may use, one run at a time on each (``CUDA_VISIBLE_DEVICES`` when
    set, else what torch sees)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch or no driver: no GPU
        return []


class LocalExecutor:
    """Jobs on this machine: one at a time, or one per visible GPU at a time."""

    def __init__(self, gpus: list[str] | None = None):
        self.gpus = visible_gpus() if gpus is None else gpus

    def run(self, waves: list[list[Job]], report: Callable[[JobResult], None] = print) -> list[JobResult]:
        results: list[JobResult] = []
        failed: set[str] = set()
        stop = threading.Event()  # Ctrl-C / SIGTERM: no new job starts, the running ones stop with it
        for wave in waves:
            if stop.is_set():
                break
            slots: queue.Queue = queue.Queue()
            for slot in (self.gpus or [None]):
                slots.put(slot)
            lock = threading.Lock()

            def one(job: Job, slots: queue.Queue = slots, lock: threading.Lock = lock) -> None:
                if _blocked(job, failed):
                    result = JobResult(job.name, job.run, "blocked", None, 0.0, job.log)
                else:
                    slot = slots.get()  # waits for a free GPU (or the one CPU slot)
                    t0 = time.perf_counter()
                    try:
                        if stop.is_set():
                            return
                        rc = execute_job(job, {"CUDA_VISIBLE_DEVICES": slot} if slot is not None else None)
                    finally:
                        slots.put(slot)
                    result = JobResult(job.name, job.run, "ok" if rc == 0 else "failed", rc,
                                       round(time.perf_counter() - t0, 1), job.log)
                    if rc in (130, 143):  # the job was interrupted: so is the sweep
                        stop.set()
                with lock:
                    results.append(result)
                    if result.status != "ok":
                        failed.add(job.name)
                    report(result)

            threads = [threading.Thread(target=one, args=(job,)) for job in wave]
            for t in threads:
                t.start()
            try:
                for t in threads:
                    while t.is_alive():
                        t.join(0.5)
            except KeyboardInterrupt:
                stop.set()  # the jobs' runners got the same Ctrl-C and keep what they finished
                for t in threads:
                    t.join()
                raise
        return results


class SubmititExecutor:
    """Jobs through submitit: ``slurm`` on a cluster, ``local`` (submitit's LocalExecutor) for a
    test. Wave by wave: a wave is submitted when the one before it has finished."""

    def __init__(self, folder: Path, cluster: Literal["slurm", "local"] = "slurm"):
        self.folder, self.cluster = Path(folder), cluster

    def _executor(self, job: Job):
        import submitit

        ex = submitit.AutoExecutor(folder=str(self.folder / "submitit"), cluster=self.cluster)
        r = job.resources
        ex.update_parameters(name=job.name.replace(":", "-"), timeout_min=r.timeout_min,
                             cpus_per_task=r.cpus_per_task, gpus_per_node=r.gpus_per_node, mem_gb=r.mem_gb,
                             **{f"slurm_{k}": v for k, v in r.slurm.items()})
        return ex

    def run(self, waves: list[list[Job]], report: Callable[[JobResult], None] = print) -> list[JobResult]:
        results: list[JobResult] = []
        failed: set[str] = set()
        for wave in waves:
            submitted = []
            for job in wave:
                if _blocked(job, failed):
                    results.append(JobResult(job.name, job.run, "blocked", None, 0.0, job.log))
                    failed.add(job.name)
                    report(results[-1])
                    continue
                submitted.append((job, self._executor(job).submit(execute_job, job), time.perf_counter()))
            for job, handle, t0 in submitted:
                try:
                    rc = handle.result()
                except Exception as e:  # noqa: BLE001 - the cluster job itself failed (killed, timed out)
                    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
                    with open(job.log, "a", encoding="utf-8") as log:
                        log.write(f"\nthe cluster job failed: {e}\n")
                    rc = -1
                result = JobResult(job.name, job.run, "ok" if rc == 0 else "failed", rc,
                                   round(time.perf_counter() - t0, 1), job.log)
                results.append(result)
                if rc != 0:
                    failed.add(job.name)
                report(result)
        return results


# --------------------------------------------------------------------------------------------
# Records, dry run, summary
# --------------------------------------------------------------------------------------------


def run_record(plan: SweepPlan, run: RunPlan) -> dict[str, Any]:
    """What a run folder's ``sweep.json`` says: the sweep, arm, seed, the stages the seed varies,
    what the run reused and from where."""
    return {"sweep": plan.name, "sweep_file": plan.sweep_file, "arm": run.spec.arm, "seed": run.spec.seed,
            "seed_key": plan.sweep.seeds.key, "seed_varies": plan.sweep.seeds.varies(),
            "reuse_from": run.source, "reused_stages": run.reused, "shared_for_others": run.shared_computes,
            "computes": run.computes, "overrides": run.spec.overrides}


def plan_table(plan: SweepPlan) -> list[dict[str, Any]]:
    rows = []
    for run in plan.runs:
        rows.append({"run": run.name, "arm": run.spec.arm, "seed": run.spec.seed,
                     "reuses": f"{'+'.join(_numbers(run.reused))} from {run.source}" if run.source else "–",
                     "computes for others": "+".join(_numbers(run.shared_computes)) or "–",
                     "computes": "+".join(_numbers(run.computes)), "state": run.status})
    return rows


def describe(plan: SweepPlan) -> str:
    s = plan.sweep
    seeds = f"seeds {s.seeds.values} set {s.seeds.key} (varies {', '.join(s.seeds.varies())})"
    lines = [f"sweep {plan.name}: {len(plan.runs)} runs, {seeds}; outputs under {plan.output_root}",
             plain_table(plan_table(plan))]
    stale = [r for r in plan.runs if r.status == "stale"]
    for r in stale:
        lines.append(f"refused (stale): {r.name}: {r.problem}")
    return "\n".join(lines)


def _print_result(r: JobResult) -> None:
    print(f"[{r.status}] {r.job} ({r.seconds:.0f}s) log: {r.log}", flush=True)


def run_sweep(path: str | os.PathLike, executor: str = "local", notebooks_dir: Path | None = None,
              aggregate: bool = True, check_files: bool = True) -> tuple[SweepPlan, list[JobResult]]:
    """Plan, run every job on the executor, write the sweep's record, then aggregate."""
    plan = plan_sweep(path, check_files=check_files, notebooks_dir=notebooks_dir)
    print(describe(plan), flush=True)
    for run in plan.runs:
        if run.status != "stale":
            runs.write_json(run_record(plan, run), runs.layout(run.params).root / "sweep.json")
    waves = build_jobs(plan)
    t0 = time.perf_counter()
    if executor == "local":
        results = LocalExecutor().run(waves, _print_result)
    elif executor in ("slurm", "submitit-local"):
        results = SubmititExecutor(plan.folder, "slurm" if executor == "slurm" else "local").run(waves, _print_result)
    else:
        raise SweepError(f"unknown executor {executor!r}: local, slurm or submitit-local")
    summary = summary_rows(plan, results)
    runs.write_json({"sweep": plan.name, "sweep_file": plan.sweep_file, "executor": executor,
                     "aggregate": plan.sweep.aggregate.model_dump(),
                     "seconds": round(time.perf_counter() - t0, 1), "runs": summary,
                     "plan": [run_record(plan, r) | {"run": r.name, "state_before": r.status} for r in plan.runs]},
                    plan.folder / "sweep.json")
    print(plain_table(summary), flush=True)
    if aggregate and any(r["status"] in ("ok", "finished") for r in summary):
        from .sweep_analysis import write_aggregate

        try:
            print(f"aggregate: {write_aggregate(plan.folder)}", flush=True)
            print(f"aggregate page: {execute_aggregate_notebook(plan.folder)}", flush=True)
            _link_runs_to_sweep_page(plan)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            print(f"aggregate: not written ({e})", flush=True)
    return plan, results


def _link_runs_to_sweep_page(plan: SweepPlan) -> None:
    """Re-render each finished run's report index, which now links the sweep's page."""
    from .report import write_index

    for run in plan.runs:
        if runs.layout(run.params).report.is_dir():
            write_index(run.params)


def execute_aggregate_notebook(folder: Path) -> Path:
    """``notebooks/sweep.ipynb`` executed on the sweep folder (papermill, a fresh kernel) and
    rendered like a run's notebooks: the full page beside it, the reader's page (no code, no logs)
    in ``report/``; returns the reader's page."""
    import papermill as pm

    from .report import render_notebook

    out = Path(folder) / "sweep.ipynb"
    try:
        pm.execute_notebook(str(project_root() / "notebooks" / "sweep.ipynb"), str(out),
                            parameters={"sweep_folder": str(Path(folder).resolve())}, kernel_name="python3",
                            progress_bar=False)
    except pm.PapermillExecutionError as e:
        raise RuntimeError(f"the sweep notebook failed ({e.ename}: {e.evalue}); see {out}") from None
    full, reader = render_notebook(out, Path(folder) / "report", sweep=True)
    return reader or full


def summary_rows(plan: SweepPlan, results: list[JobResult]) -> list[dict[str, Any]]:
    """One row per run: its outcome (finished before, ok, failed, blocked, stale), seconds, log."""
    by_run: dict[str, list[JobResult]] = {}
    for r in results:
        by_run.setdefault(r.run, []).append(r)
    rows = []
    for run in plan.runs:
        mine = by_run.get(run.name, [])
        if run.status in ("finished", "stale"):
            status, rc, log = run.status, None, ""
        else:
            worst = next((r for r in mine if r.status != "ok"), mine[-1] if mine else None)
            status = worst.status if worst else "not run"
            rc, log = (worst.returncode, worst.log) if worst else (None, "")
        rows.append({"run": run.name, "arm": run.spec.arm, "seed": run.spec.seed, "status": status,
                     "exit": "–" if rc is None else rc, "seconds": round(sum(r.seconds for r in mine), 1),
                     "log": log or "–"})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlff_utils.sweep", description="Run a sweep of runs.")
    ap.add_argument("sweep_file")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the runs, what each shares and computes, and their generations, tokens and dollars; run nothing")
    ap.add_argument("--estimate", action="store_true", help="the same as --dry-run")
    ap.add_argument("--executor", default="local", choices=["local", "slurm", "submitit-local"])
    ap.add_argument("--no-aggregate", action="store_true")
    ap.add_argument("--notebooks-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    nbdir = Path(args.notebooks_dir) if args.notebooks_dir else None
    try:
        if args.dry_run or args.estimate:
            plan = plan_sweep(args.sweep_file, check_files=False, notebooks_dir=nbdir)  # nothing runs: no data needed
            print(describe(plan))
            print(sweep_estimate_text(plan))
            return 0
        _, results = run_sweep(args.sweep_file, args.executor, nbdir, aggregate=not args.no_aggregate)
    except (SweepError, ParamsError, runs.StaleStageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
