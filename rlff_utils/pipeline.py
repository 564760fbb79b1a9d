"""Run the numbered notebooks headlessly for one params file.

Each notebook runs in a fresh kernel (papermill), so a stage's GPU memory (a vLLM engine, a
policy) is freed before the next one starts and each stage can be re-run alone. The run folder
is the only state passed between notebooks. Executed copies go to ``outputs/<run>/NN_name.ipynb``
and are rendered to HTML next to them for sharing.

    python -m rlff_utils.pipeline params/smoke.yaml                # all notebooks
    python -m rlff_utils.pipeline params/smoke.yaml --only 01,03   # some
    python -m rlff_utils.pipeline params/smoke.yaml --from 02      # resume the chain
    python -m rlff_utils.pipeline params/smoke.yaml --set simulation.num_candidates=2
    python -m rlff_utils.pipeline params/smoke.yaml --from 02 --force   # redo 02.. from scratch
    python -m rlff_utils.pipeline params/smoke.yaml --only 02 --set simulation.num_candidates=8  # grow 02 in place

The params are loaded once, here (relative paths against the directory you ran from), and each
kernel reads the resolved run (``outputs/<run>/params.yaml``: absolute paths, overrides applied),
so a notebook sees exactly what was validated. A stage whose folder holds results computed with
other settings stops with the changed fields named (``runs.StaleStageError``); ``--force`` clears
the selected stages first. The notebooks are the project's (next to the installed package), so a
params file may live anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import runs
from .params import ParamsError, RunParams, load_params, parse_set, project_root, write_resolved
from .params import check_endpoints as _check_endpoints

NOTEBOOK_RE = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")


class PipelineError(RuntimeError):
    """A notebook failed; the message names the executed copy that holds the traceback."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like ``KeyboardInterrupt`` is for Ctrl-C."""


class Interrupted(Exception):
    """The run was stopped by a signal; the message says what was kept and how to resume, ``code``
    is the shell's exit status for it (130 Ctrl-C, 143 SIGTERM)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _stop_kernels(timeout: float = 20.0) -> None:
    """Stop this process's notebook kernels (and what they started), so none goes on writing a
    stage after the runner has gone; the kernel client then removes its connection file."""
    import psutil

    kernels = [p for p in psutil.Process().children() if "ipykernel" in " ".join(_cmdline(p))]
    files = [c[c.index("-f") + 1] for c in map(_cmdline, kernels) if "-f" in c[:-1]]
    procs = [q for k in kernels for q in [k, *_children(k)]]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    for connection_file in files:  # the kernel's address and key: no use once it is gone
        Path(connection_file).unlink(missing_ok=True)


def _cmdline(proc) -> list[str]:
    import psutil

    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _children(proc) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _in_worker(fn, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in a worker thread while the main thread waits, so a Ctrl-C or SIGTERM reaches
    this runner's handler (not nbclient's): the kernel is stopped, the worker's own clean-up
    runs (connection file removed), then the signal's exception goes on."""
    import threading

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the main thread
            box["error"] = e

    worker = threading.Thread(target=target, name="notebook", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except BaseException:
        _stop_kernels()
        worker.join(60)
        raise
    if "error" in box:
        raise box["error"]
    return box.get("result")


@dataclass(frozen=True)
class Stage:
    number: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.stem


def discover_stages(notebooks_dir: Path) -> list[Stage]:
    stages = [Stage(m.group(1), p) for p in sorted(notebooks_dir.glob("*.ipynb")) if (m := NOTEBOOK_RE.match(p.name))]
    if not stages:
        raise PipelineError(f"no numbered notebooks (NN_name.ipynb) in {notebooks_dir}")
    return stages


def select_stages(stages: list[Stage], only: list[str] | None = None, start: str | None = None) -> list[Stage]:
    known = {s.number for s in stages}
    for n in [*(only or []), *([start] if start else [])]:
        if n not in known:
            raise PipelineError(f"no notebook numbered {n!r}; have {sorted(known)}")
    if only:
        stages = [s for s in stages if s.number in only]
    if start:
        stages = [s for s in stages if s.number >= start]
    if not stages:
        raise PipelineError(f"--only {','.join(only or [])} with --from {start} selects no notebook: "
                            "--from starts a chain, --only picks notebooks; give one of them")
    return stages


# Headless kernels: text progress bars and the ipywidgets hint are noise in executed copies, and
# so are the libraries' own bars and one-off advisories; the project's per-stage bars stay.
_KERNEL_WARNINGS = "ignore:IProgress not found"
KERNEL_ENV = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",       # also transformers' weight-loading / GGUF bars
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def _kernel_env() -> None:
    """Environment the notebook kernels inherit from this process (JupyterLab sessions keep theirs)."""
    current = os.environ.get("PYTHONWARNINGS", "")
    if _KERNEL_WARNINGS not in current.split(","):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current, _KERNEL_WARNINGS]))
    for key, value in KERNEL_ENV.items():
        os.environ.setdefault(key, value)


class _PeakMemory:
    """Largest resident memory of this process's children (the kernel) while a notebook runs."""

    def __init__(self, interval: float = 0.5):
        import threading

        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_mib = max(self.peak_mib, total / 2**20)
            self._stop.wait(interval)

    def __enter__(self) -> "_PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def execute_stage(stage: Stage, params: RunParams, resolved_file: Path, html: bool = True) -> Path:
    import papermill as pm

    from .report import render_notebook

    _kernel_env()

    out = params.run_dir / f"{stage.name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _in_worker(
            pm.execute_notebook,
            str(stage.path),
            str(out),
            parameters={"params_file": str(resolved_file), "overrides": {}},
            cwd=str(stage.path.parent),
            kernel_name="python3",
            progress_bar=False,
        )
    except OSError as e:  # a full or read-only disk while papermill writes the executed copy
        _drop_unreadable(out)
        raise PipelineError(
            f"{stage.name} stopped: {e.strerror or e} while writing {e.filename or out}; what the stage wrote "
            f"before is kept in {runs.layout(params).root}: make room (or fix the folder) and run the same "
            "command again to resume") from None
    except pm.PapermillExecutionError as e:
        if html:
            render_notebook(out)
        raise PipelineError(
            f"{stage.name} failed ({e.ename}: {e.evalue}); the traceback is in the executed copy {out}"
        ) from None
    if html:
        render_notebook(out, runs.layout(params).report)
    return out


def _drop_unreadable(notebook: Path) -> None:
    """An executed copy cut short by a failed write is not a notebook: remove it (a rerun writes
    it again), so no reader trips over half a JSON file."""
    import nbformat

    try:
        nbformat.read(notebook, as_version=4)
    except FileNotFoundError:
        return
    except Exception:  # noqa: BLE001 - any unreadable state of our own file
        notebook.unlink(missing_ok=True)


def _refuse_growth_under_results(params: RunParams, name: str, stages: list[Stage]) -> None:
    """A stage about to grow (``runs.SELECTION`` changed) would leave the later selected stages
    holding results computed from its smaller version: stop now and say how to proceed."""
    growth = runs.selection_changes(params, name)
    if not growth:
        return
    number = next(n for n, s in runs.NOTEBOOK_STAGE.items() if s == name)
    later = [s for s in stages if s.number > number and runs.NOTEBOOK_STAGE.get(s.number) not in (None, runs.REPORT)
             and runs.read_record(runs.layout(params).root, runs.NOTEBOOK_STAGE[s.number]) is not None]
    if later:
        changes = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in growth.items())
        raise runs.StaleStageError(
            f"stage {name!r} would grow ({changes}), and {', '.join(s.name for s in later)} hold results computed "
            f"from it as it is. Grow it alone (--only {number}), then redo what depends on it (--from "
            f"{int(number) + 1:02d} --force).")


def run_pipeline(
    params_file: str | Path,
    only: list[str] | None = None,
    start: str | None = None,
    overrides: dict[str, Any] | None = None,
    html: bool = True,
    notebooks_dir: Path | None = None,
    force: bool = False,
    reuse_from: str | Path | None = None,
    check_endpoints: bool = True,
) -> list[Path]:
    """Validate the params (before any model loads), then execute the selected notebooks in order;
    ``force`` first clears the selected stages' folders (their results are redone); ``reuse_from``
    (a run name under the same output root, or a run folder) first copies that run's finished
    stages that this run would compute identically (:func:`runs.reuse_stages`)."""
    params = load_params(params_file, overrides or {})
    if reuse_from is not None:
        source = Path(reuse_from) if Path(reuse_from).is_dir() else params.resolve(params.output_root) / str(reuse_from)
        try:
            copied = runs.reuse_stages(params, source)
        except ValueError as e:  # the run's own folder named as the source
            raise PipelineError(f"--reuse-from: {e}") from None
        print(f"--reuse-from {source}: copied {', '.join(copied) if copied else 'no stage (none matches)'}",
              flush=True)
    notebooks_dir = notebooks_dir or project_root() / "notebooks"
    stages = select_stages(discover_stages(notebooks_dir), only, start)
    for stage in stages:  # stale results stop the run now, before any kernel starts
        name = runs.NOTEBOOK_STAGE.get(stage.number)
        if name and force:
            folder = runs.layout(params).stage(name)
            if runs.reset_stage(params, name):
                print(f"--force: cleared {folder}", flush=True)
            elif folder.is_dir():
                print(f"--force: left {folder} as it is (no {runs.STAGE_RECORD}: not a stage folder this "
                      "project wrote)", flush=True)
        elif name:
            runs.check_stage(params, name, reopen=True)
            _refuse_growth_under_results(params, name, stages)
    resolved = write_resolved(params, runs.layout(params).resolved_params)
    executed = []
    t_all = time.perf_counter()
    lay = runs.layout(params)
    timing = runs.read_json(lay.timing, default={})
    peaks = runs.read_json(lay.resources, default={}).get("peak_rss_mib_per_notebook", {})
    for i, stage in enumerate(stages, 1):
        if check_endpoints and runs.NOTEBOOK_STAGE.get(stage.number):  # one cheap request per endpoint
            _check_endpoints(params, runs.stage_roles(runs.NOTEBOOK_STAGE[stage.number]))
        print(f"[{i}/{len(stages)}] {stage.name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            with _PeakMemory() as mem:
                executed.append(execute_stage(stage, params, resolved, html))
        except (KeyboardInterrupt, Terminated) as e:
            raise _interrupted(e, stage, executed, params) from None
        timing[stage.name] = round(time.perf_counter() - t0, 1)
        peaks[stage.name] = round(mem.peak_mib, 1)
        runs.write_json(timing, lay.timing)
        # each finished notebook's peak at once, so a later notebook (06's run table) can show it
        runs.write_json({**runs.read_json(lay.resources, default={}), "peak_rss_mib_per_notebook": peaks}, lay.resources)
        print(f"[{i}/{len(stages)}] {stage.name} done in {timing[stage.name]:.0f}s -> {executed[-1]}", flush=True)
    wall = time.perf_counter() - t_all
    peak = max(_peak_child_rss_mib(), *[peaks.get(s.name, 0.0) for s in stages])
    resources = {"notebooks": [s.name for s in stages], "wall_seconds": round(wall, 1), "peak_kernel_rss_mib": peak,
                 "peak_rss_mib_per_notebook": peaks}
    runs.write_json(resources, lay.resources)
    _write_cost(params)
    if html:
        from .report import write_index

        print(f"report: {write_index(params)}")
    print(f"pipeline {params.run_name}: {len(stages)} notebook(s) in {wall:.0f}s, peak kernel memory "
          f"{peak / 1024:.1f} GiB; outputs in {params.run_dir}")
    _print_summary(params)
    return executed


def _write_cost(params: RunParams) -> None:
    """The run's estimated and recorded model use (``cost.json``); a failure here never fails a run."""
    from .cost import cost_record

    try:
        runs.write_json(cost_record(params), runs.layout(params).root / "cost.json")
    except Exception as e:  # noqa: BLE001 - bookkeeping only
        print(f"note: cost.json not written ({e})", flush=True)


def _interrupted(signal_exc: BaseException, stage: Stage, executed: list[Path], params: RunParams) -> Interrupted:
    """What to tell a user whose run was stopped: what was kept and how to resume."""
    name, code = ("SIGTERM", 143) if isinstance(signal_exc, Terminated) else ("Ctrl-C", 130)
    done = ", ".join(p.stem for p in executed) or "none"
    return Interrupted(
        f"stopped by {name} during {stage.name}; its kernel was stopped. Kept in {params.run_dir}: the finished "
        f"notebooks ({done}) and what {stage.name} had stored (finished conversations, checkpoints). Run the "
        "same command again to resume: finished stages are reused, the interrupted one continues where it "
        "stopped.", code)


def _peak_child_rss_mib() -> float:
    """Largest resident set of any finished child process (each notebook ran in its own kernel,
    a child of this process): the run's peak memory, as the budget in the README counts it."""
    import resource

    kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(kib / 1024 / (1024 if sys.platform == "darwin" else 1), 1)


def _print_summary(params: RunParams) -> None:
    """The few numbers a reader wants after a run, from what the stages wrote."""
    summary = runs.layout(params).summary
    if summary.is_file():
        print(json.dumps(runs.read_json(summary), indent=2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlff_utils.pipeline", description="Run the numbered notebooks for one params file.")
    ap.add_argument("params_file")
    ap.add_argument("--only", help="comma-separated notebook numbers, e.g. 01,03")
    ap.add_argument("--from", dest="start", help="start at this notebook number")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    ap.add_argument("--force", action="store_true", help="clear the selected stages' results first and redo them")
    ap.add_argument("--reuse-from", metavar="RUN",
                    help="copy the finished stages of run RUN (a name under output_root, or a folder) that this "
                         "run would compute identically, e.g. a negative control's data, simulation and reward model")
    ap.add_argument("--no-endpoint-check", action="store_true",
                    help="do not ask each OpenAI-compatible endpoint a stage uses whether it answers before the stage")
    ap.add_argument("--no-html", action="store_true")
    ap.add_argument("--render-only", action="store_true", help="re-render the executed notebooks and the report index")
    ap.add_argument("--notebooks-dir", help=argparse.SUPPRESS)  # other numbered notebooks (tests of the runner)
    ap.add_argument("--estimate", action="store_true",
                    help="print the requests, tokens and dollars per stage and role from the params; run nothing")
    args = ap.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        only = None if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
        if only == []:  # an empty variable in a script must not mean "everything"
            raise PipelineError(f"--only {args.only!r} names no notebook: give numbers such as --only 01,03, "
                                "or leave --only out to run every notebook")
        if args.estimate:
            from .cost import estimate_text

            print(estimate_text(load_params(args.params_file, parse_set(args.sets), check_files=False)))
            return 0
        if args.render_only:
            from .report import render_run

            print(f"report: {render_run(load_params(args.params_file, parse_set(args.sets), check_files=False))}")
            return 0
        run_pipeline(args.params_file, only, args.start, parse_set(args.sets), html=not args.no_html, force=args.force,
                     reuse_from=args.reuse_from, check_endpoints=not args.no_endpoint_check,
                     notebooks_dir=Path(args.notebooks_dir) if args.notebooks_dir else None)
    except (ParamsError, PipelineError, runs.StageLockedError, runs.StaleStageError, runs.UnsafeClearError,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except (KeyboardInterrupt, Terminated) as e:  # before any notebook started: nothing to keep
        print("error: stopped before any notebook ran; nothing was written. Run the command again.", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except OSError as e:  # a full or read-only disk outside a notebook (params, timing, report index)
        print(f"error: {e.strerror or e} while writing {e.filename or 'the run folder'}; finished stages are kept: "
              "make room (or fix the folder) and run the same command again", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
