"""The offline GPU dry run (`make gpu-check`): the paper path on paper-shaped random-weight models.

    python -m tools.gpu_check                                  # params/gpu_check.yaml, all notebooks
    python -m tools.gpu_check --set grpo.trainer.max_steps=1 --only 04 # any pipeline option

Prints the device, runs the six notebooks on ``params/gpu_check.yaml`` (see its header for what the
run checks and what it does not), and prints what it took: wall time per notebook, peak kernel
memory, and the peak GPU memory in use while it ran (``nvidia-smi``, polled every second; all
processes on the GPU count). Refuses to start without a CUDA device: on a CPU the 7B shape would
take hours; the CPU-sized variant of the same run is a test (``pytest -m slow tests/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class GPUMemoryPoller:
    """Peak ``memory.used`` (MiB) per GPU from nvidia-smi, sampled in a background thread."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self.peak: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.error: str | None = None if shutil.which("nvidia-smi") else "nvidia-smi not found"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10,
        )
        if out.returncode:
            raise RuntimeError(out.stderr.strip() or f"exit {out.returncode}")
        for line in out.stdout.strip().splitlines():
            index, name, used, total = (x.strip() for x in line.split(","))
            key = f"{index}: {name}"
            self.peak[key] = max(self.peak.get(key, 0), int(used))
            self.total[key] = int(total)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception as e:  # noqa: BLE001 - a failing probe must not stop the run
                self.error = f"nvidia-smi failed: {e}"
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "GPUMemoryPoller":
        if self.error is None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("params_file", nargs="?", default=str(ROOT / "params" / "gpu_check.yaml"))
    ap.add_argument("--only", help="comma-separated notebook numbers")
    ap.add_argument("--from", dest="start")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    import torch
    import transformers

    from rlff_utils import models
    from rlff_utils.params import ParamsError
    from rlff_utils.pipeline import PipelineError, parse_set, run_pipeline

    if not torch.cuda.is_available():
        print("error: no CUDA device here. `make gpu-check` runs 7B-shaped models and needs a GPU; the "
              "CPU-sized variant of the same run is `pytest -m slow tests/test_gpu_check.py`.", file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible; "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"shaped models are built into {models.shaped_cache_root(16 * 2**30)} (RLFF_SHAPED_CACHE to change)")
    try:
        only = [s.strip() for s in args.only.split(",")] if args.only else None
        with GPUMemoryPoller() as gpu:
            t0 = time.perf_counter()
            executed = run_pipeline(args.params_file, only, args.start, parse_set(args.sets))
            wall = time.perf_counter() - t0
    except (ParamsError, PipelineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    run_dir = executed[-1].parent
    timing = json.loads((run_dir / "timing.json").read_text())
    resources = json.loads((run_dir / "resources.json").read_text())
    print("\n== gpu-check resources ==")
    for name, secs in timing.items():
        print(f"  {name:<18} {secs:8.1f} s")
    print(f"  {'whole run':<18} {wall:8.1f} s; peak kernel RSS {resources['peak_kernel_rss_mib'] / 1024:.1f} GiB")
    if gpu.error:
        print(f"  peak GPU memory: not measured ({gpu.error})")
    for key, peak in gpu.peak.items():
        print(f"  peak GPU memory in use, GPU {key}: {peak / 1024:.1f} of {gpu.total[key] / 1024:.0f} GiB "
              "(all processes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
