"""Benchmark: the same simulation on the hf backend, on the in-process vllm backend, and with the
user simulator and critic behind a loopback vLLM server (openai backend), the paper's layout.

Each arm runs ``simulate.run_simulation`` on the same contexts, candidates, turn cap, seed and
critic (``votes``, n = 10 at temperature 1.1, as in the paper), the embedded SmolLM2-135M-Instruct in
every role, float32. Engines are loaded (and the server started) before the clock starts, and each
arm first rolls one warm-up context, so the timed part is generation only. Printed: the device, the
load average, seconds per arm, trajectories/s and the ratios to hf and to in-process vllm.

One run per arm: on a shared CPU the absolute figures move with whatever else runs.

    RLFF_DATA_DIR=... .venv/bin/python bench/bench_vllm.py [--contexts 4 --candidates 2 --max-turns 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import hardware  # noqa: E402  (bench/hardware.py)

MODEL = "smollm2-135m-instruct"
ROLES = ("policy", "system", "user_sim", "critic")


def arm_overrides(arm: str, base_url: str | None) -> dict:
    local = "hf" if arm == "hf" else "vllm"
    out = {f"models.{r}.{k}": v for r in ROLES for k, v in
           dict(backend=local, name=MODEL, dtype="float32").items()}
    if local == "vllm":
        out.update({f"models.{r}.max_model_len": 2048 for r in ROLES})
    if arm == "vllm+serve":
        for r in ("user_sim", "critic"):
            out.update({f"models.{r}.backend": "openai", f"models.{r}.name": "smollm2",
                        f"models.{r}.base_url": base_url, f"models.{r}.api_key_env": "BENCH_SERVER_KEY",
                        f"models.{r}.structured_choice": True, f"models.{r}.logprobs": True,
                        f"models.{r}.concurrency": 16})
        for k in ("max_model_len", "dtype"):
            out.pop(f"models.user_sim.{k}", None), out.pop(f"models.critic.{k}", None)
    return out


def run_arm(arm: str, args, root: Path, base_url: str | None) -> tuple[float, int]:
    from rlff_utils.data import prepare_data
    from rlff_utils.params import load_params
    from rlff_utils.simulate import run_simulation

    common = {"simulation.num_candidates": args.candidates, "simulation.max_turns": args.max_turns,
              "simulation.critic_mode": "votes", "simulation.critic_samples": 10, "simulation.batch_size": 64,
              "seed": args.seed, **{f"models.{r}.max_new_tokens": args.max_new_tokens for r in ("policy", "system", "user_sim")}}

    def params(name, contexts):
        p = load_params(ROOT / "params" / "smoke.yaml", {"output_root": str(root / arm / name), "run_name": name,
                                                         "simulation.max_contexts": contexts,
                                                         **common, **arm_overrides(arm, base_url)})
        prepare_data(p)
        return p

    run_simulation(params("warm", 1))  # engines loaded, first calls paid
    p = params("timed", args.contexts)
    t0 = time.perf_counter()
    summary = run_simulation(p)
    return time.perf_counter() - t0, summary.trajectories


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", type=int, default=4)
    ap.add_argument("--candidates", type=int, default=2)
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="hf,vllm,vllm+serve")
    args = ap.parse_args()
    from tools.vllm_server import serve

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["BENCH_SERVER_KEY"] = "EMPTY"
    print(f"device: {hardware.device_name('cpu')}; load average at start {os.getloadavg()[0]:.1f}; "
          f"{args.contexts} contexts x {args.candidates} candidates, T = {args.max_turns}, votes n = 10, "
          f"<= {args.max_new_tokens} new tokens, SmolLM2-135M float32 in every role", flush=True)
    arms = args.arms.split(",")
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with serve(MODEL, "smollm2", root / "server.log") if "vllm+serve" in arms else _nothing() as server:
            for arm in arms:
                s, n = run_arm(arm, args, root, server.base_url if server else None)
                seconds[arm] = s
                print(f"  {arm:<11} {s:7.1f} s  {n / s:6.2f} trajectories/s", flush=True)
    for arm in arms:
        ratios = [f"{seconds[ref] / seconds[arm]:.2f}x vs {ref}" for ref in ("hf", "vllm") if ref in seconds and ref != arm]
        if ratios:
            print(f"  {arm}: " + ", ".join(ratios) + " (>1: faster)")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    raise SystemExit(main())
