"""Benchmark: precision and batch size of the hf backend, the two knobs of the smoke roles.

The same ESConv conversations (2-6 turns each, so prompt lengths vary as in the simulation) are
scored against the critic's four answers and answered with ``generate`` by SmolLM2-135M-Instruct,
for every dtype x batch size. Rows are grouped by length before batching (``HFBackend`` always
does), so a smaller batch wastes less on padding but reads the weights more often. Prints seconds
for each, the speed-up over the first setting, and for generation the tokens/s as a fraction of
the memory-bandwidth bound (bench/hardware.py), next to the device's name. Not a timed test: run
it on a quiet machine.

    python bench/bench_batching.py
    python bench/bench_batching.py --dtypes float32,bfloat16 --batch-sizes 8,16,32 --conversations 32
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import hardware  # noqa: E402  (bench/hardware.py)

CHOICES = ["worse", "same", "better", "solved"]


def conversations(params, n: int, seed: int) -> list[list[dict[str, str]]]:
    from rlff_utils.data import SEEKER, load_esconv

    dialogues, _ = load_esconv(params.resolve(params.data.esconv_dir))
    rng = random.Random(seed)
    out = []
    for d in rng.sample(dialogues, n):
        turns = [{"role": "user" if t.speaker == SEEKER else "assistant", "content": t.text}
                 for t in d.turns[: rng.randint(2, 6)]]
        if turns[-1]["role"] == "assistant":
            turns = turns[:-1]
        out.append([{"role": "system", "content": "You judge whether a help seeker's emotional problem has been solved."}]
                   + turns)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params" / "smoke.yaml"), help="where the data is")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--batch-sizes", default="8,16,32")
    ap.add_argument("--conversations", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bandwidth-gbs", type=float, default=None, help="override the device's bandwidth")
    args = ap.parse_args()

    import torch

    from rlff_utils.backends import HFBackend, HFEngine
    from rlff_utils.params import ModelRole, load_params

    from rlff_utils.models import pick_device

    device = pick_device(args.device)
    bw = hardware.bandwidth(device, args.bandwidth_gbs)
    convs = conversations(load_params(args.params), args.conversations, args.seed)
    print("settings:", vars(args), f"device={hardware.device_name(device)}", f"bandwidth={bw.describe()}",
          f"torch threads={torch.get_num_threads()}", f"cpus={os.cpu_count()}",
          f"load average={os.getloadavg()[0]:.2f}", sep="\n  ")
    base = None
    for dtype in args.dtypes.split(","):
        engine = HFEngine(args.model, device=device, dtype=dtype)
        weight_bytes = hardware.weight_bytes_per_step(engine.model)
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            role = ModelRole(name=args.model, device=device, dtype=dtype, batch_size=bs, temperature=0.7,
                             max_new_tokens=args.max_new_tokens)
            backend = HFBackend(role, engine)
            t0 = time.perf_counter()
            backend.score_choices(convs, CHOICES)
            hardware.sync(device)
            t1 = time.perf_counter()
            backend.generate(convs, seed=args.seed)
            hardware.sync(device)
            t2 = time.perf_counter()
            score, gen = t1 - t0, t2 - t1
            tps = backend.stats.generated_tokens / gen
            base = base or (score, gen)
            print(f"{dtype:>9} batch {bs:3d}: scoring {score:6.1f} s ({base[0] / score:4.1f}x)   "
                  f"generation {gen:6.1f} s ({base[1] / gen:4.1f}x), {tps:7.1f} tok/s, "
                  f"{hardware.bound_line(tps, bs, weight_bytes, bw)}", flush=True)
        del engine


if __name__ == "__main__":
    main()
