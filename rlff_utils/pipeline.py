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

The params are loaded once, here (relative paths against the directory you ran from), and each
kernel reads the resolved run (``outputs/<run>/params.yaml``: absolute paths, overrides applied),
so a notebook sees exactly what was validated. A stage whose folder holds results computed with
other settings stops with the changed fields named (``runs.StaleStageError``); ``--force`` clears
the selected stages first. The notebooks are the project's (next to the installed package), so a
params file may live anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import runs
from .params import ParamsError, RunParams, load_params, parse_set, project_root, write_resolved

NOTEBOOK_RE = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")


class PipelineError(RuntimeError):
    """A notebook failed; the message names the executed copy that holds the traceback."""


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
    return stages


def render_html(notebook: Path) -> Path:
    from nbconvert import HTMLExporter
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    out = notebook.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


# Headless kernels render tqdm's text bars, the right form for executed copies and HTML reports;
# tqdm's hint to install ipywidgets for graphical bars is noise there (in JupyterLab it stays).
_KERNEL_WARNINGS = "ignore:IProgress not found"


def _kernel_env() -> None:
    """Environment the notebook kernels inherit from this process."""
    current = os.environ.get("PYTHONWARNINGS", "")
    if _KERNEL_WARNINGS not in current.split(","):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current, _KERNEL_WARNINGS]))


def execute_stage(stage: Stage, params: RunParams, resolved_file: Path, html: bool = True) -> Path:
    import papermill as pm

    _kernel_env()

    out = params.run_dir / f"{stage.name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(
            str(stage.path),
            str(out),
            parameters={"params_file": str(resolved_file), "overrides": {}},
            cwd=str(stage.path.parent),
            kernel_name="python3",
            progress_bar=False,
        )
    except pm.PapermillExecutionError as e:
        if html:
            render_html(out)
        raise PipelineError(
            f"{stage.name} failed ({e.ename}: {e.evalue}); the traceback is in the executed copy {out}"
        ) from None
    if html:
        render_html(out)
    return out


def run_pipeline(
    params_file: str | Path,
    only: list[str] | None = None,
    start: str | None = None,
    overrides: dict[str, Any] | None = None,
    html: bool = True,
    notebooks_dir: Path | None = None,
    force: bool = False,
) -> list[Path]:
    """Validate the params (before any model loads), then execute the selected notebooks in order;
    ``force`` first clears the selected stages' folders (their results are redone)."""
    params = load_params(params_file, overrides or {})
    notebooks_dir = notebooks_dir or project_root() / "notebooks"
    stages = select_stages(discover_stages(notebooks_dir), only, start)
    for stage in stages:  # stale results stop the run now, before any kernel starts
        name = runs.NOTEBOOK_STAGE.get(stage.number)
        if name and force:
            runs.reset_stage(params, name)
            print(f"--force: cleared {runs.layout(params).stage(name)}", flush=True)
        elif name:
            runs.check_stage(params, name)
    resolved = write_resolved(params, runs.layout(params).resolved_params)
    executed = []
    t_all = time.perf_counter()
    timing_file = params.run_dir / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    for i, stage in enumerate(stages, 1):
        print(f"[{i}/{len(stages)}] {stage.name} ...", flush=True)
        t0 = time.perf_counter()
        executed.append(execute_stage(stage, params, resolved, html))
        timing[stage.name] = round(time.perf_counter() - t0, 1)
        timing_file.write_text(json.dumps(timing, indent=2))
        print(f"[{i}/{len(stages)}] {stage.name} done in {timing[stage.name]:.0f}s -> {executed[-1]}", flush=True)
    wall = time.perf_counter() - t_all
    peak = _peak_child_rss_mib()
    resources = {"notebooks": [s.name for s in stages], "wall_seconds": round(wall, 1), "peak_kernel_rss_mib": peak}
    (params.run_dir / "resources.json").write_text(json.dumps(resources, indent=2))
    print(f"pipeline {params.run_name}: {len(stages)} notebook(s) in {wall:.0f}s, peak kernel memory "
          f"{peak / 1024:.1f} GiB; outputs in {params.run_dir}")
    _print_summary(params)
    return executed


def _peak_child_rss_mib() -> float:
    """Largest resident set of any finished child process (each notebook ran in its own kernel,
    a child of this process): the run's peak memory, as the budget in the README counts it."""
    import resource

    kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(kib / 1024 / (1024 if sys.platform == "darwin" else 1), 1)


def _print_summary(params: RunParams) -> None:
    """The few numbers a reader wants after a run, from what the stages wrote."""
    summary = params.run_dir / "summary.json"
    if summary.is_file():
        print(json.dumps(json.loads(summary.read_text()), indent=2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlff_utils.pipeline", description="Run the numbered notebooks for one params file.")
    ap.add_argument("params_file")
    ap.add_argument("--only", help="comma-separated notebook numbers, e.g. 01,03")
    ap.add_argument("--from", dest="start", help="start at this notebook number")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    ap.add_argument("--force", action="store_true", help="clear the selected stages' results first and redo them")
    ap.add_argument("--no-html", action="store_true")
    args = ap.parse_args(argv)
    try:
        only = [s.strip() for s in args.only.split(",")] if args.only else None
        run_pipeline(args.params_file, only, args.start, parse_set(args.sets), html=not args.no_html, force=args.force)
    except (ParamsError, PipelineError, runs.StageLockedError, runs.StaleStageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
