"""Generation speed of the hf backend against the memory-bandwidth bound, per batch size.

For each batch size B, on the same synthetic chat prompts (``--prompt-tokens`` each):

1. backend: ``HFBackend.generate`` for B conversations, ``--new-tokens`` each, sampled; tokens/s
   counts the tokens really generated over the whole call (prompt pass included): what the
   simulation and the evaluation get.
2. decoding step: ``model.generate`` forced to exactly N new tokens, timed at N and at 1, so
   ``(t_N - t_1) / (N - 1)`` is one decoding step without the prompt pass.

Both are printed as a fraction of the bandwidth bound (bench/hardware.py: every weight read once
per step, so at most B x bandwidth / weight bytes tokens/s), next to the device's name.
``--lora-r 16`` attaches an unmerged LoRA adapter on every linear layer first, as GRPO generates;
``--lora-merged`` times it also folded into the weights (``grpo.merged_adapter``).
``--kv-cache dynamic,static`` times each cache setting of the hf backend (``models.*.kv_cache``);
every variant after the first is printed as a ratio to the first, per batch size.
Defaults per device: on a GPU the Qwen2.5-7B shape (nothing downloaded), batches 1, 8 and 32,
600-token prompts, 64 new tokens; on a CPU the embedded SmolLM2, batches 1 and 8, 128-token
prompts, 32 new tokens.

    python bench/bench_generation.py                                   # defaults for this device
    python bench/bench_generation.py --batch-sizes 1,32 --lora-r 16 --json out.json
    python bench/bench_generation.py --model shaped-qwen2.5-7b@layers=2 --bandwidth-gbs 3350
    python bench/bench_generation.py --kv-cache dynamic,static --lora-r 16 --lora-merged   # the fast paths
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import hardware  # noqa: E402  (bench/hardware.py)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: shaped-qwen2.5-7b on cuda, smollm2-135m-instruct on cpu")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--batch-sizes", default=None, help="default: 1,8,32 on cuda, 1,8 on cpu")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="default: 600 on cuda, 128 on cpu")
    ap.add_argument("--new-tokens", type=int, default=None, help="default: 64 on cuda, 32 on cpu")
    ap.add_argument("--lora-r", type=int, default=0, help=">0: attach an unmerged LoRA adapter of this rank")
    ap.add_argument("--lora-merged", action="store_true",
                    help="with --lora-r: also time inside grpo.merged_adapter (what GRPO samples through with "
                         "grpo.merge_adapter_for_generation)")
    ap.add_argument("--kv-cache", default="dynamic",
                    help="comma list of the hf backend's kv_cache settings to time: dynamic, static "
                         "(static is compiled on a GPU; its first call per shape compiles and is not timed)")
    ap.add_argument("--bandwidth-gbs", type=float, default=None, help="override the device's bandwidth")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    return ap.parse_args(argv)


def prompts(tok, n: int, length: int) -> list[list[dict[str, str]]]:
    """n chat conversations whose templated prompt is about ``length`` tokens."""
    sentence = "I have been feeling low since I lost my job and I do not know who to talk to. "
    per = len(tok(sentence, add_special_tokens=False)["input_ids"])
    text = sentence * max(1, length // per)
    return [[{"role": "system", "content": "You are a supportive listener."},
             {"role": "user", "content": f"({i}) {text}"}] for i in range(n)]


def run_batches(args, engine, device, cache: str, label: str, weight_bytes: int, bw) -> list[dict]:
    """Backend tokens/s and the decoding step at each batch size, for one kv_cache setting."""
    import torch

    from rlff_utils.backends import HFBackend
    from rlff_utils.params import ModelRole

    model, tok = engine.model, engine.tokenizer
    role = ModelRole(name=args.model_name, temperature=1.0, max_new_tokens=args.new_tokens, device=device,
                     dtype=args.dtype, kv_cache=cache)
    gen_kw = {"cache_implementation": "static"} if cache == "static" else {}
    rows = []
    for b in (int(x) for x in args.batch_sizes.split(",")):
        convs = prompts(tok, b, args.prompt_tokens)
        backend = HFBackend(role.model_copy(update={"batch_size": b}), engine)
        backend.generate(convs, seed=args.seed, max_new_tokens=4)  # warm-up (compiles a static cache's shape)
        backend.stats.reset()
        hardware.sync(device)
        t0 = time.perf_counter()
        backend.generate(convs, seed=args.seed)
        hardware.sync(device)
        secs = time.perf_counter() - t0
        tokens = backend.stats.generated_tokens
        backend_tps = tokens / secs

        enc = engine.encode(tok([engine.prompt_text(c) for c in convs], add_special_tokens=False)["input_ids"])
        # decode step = (n tokens - 1 token) / (n - 1): the difference of two timings, each the
        # fastest of three (timeit's rule: the minimum is the run least disturbed by other work;
        # a single pair on a busy machine gave a negative step)
        times = {}
        for n in (1, args.new_tokens):
            runs_s = []
            for _ in range(3):
                with torch.inference_mode():
                    hardware.sync(device)
                    t0 = time.perf_counter()
                    model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                   pad_token_id=tok.pad_token_id, **gen_kw)
                    hardware.sync(device)
                    runs_s.append(time.perf_counter() - t0)
            times[n] = min(runs_s)
        step = (times[args.new_tokens] - times[1]) / max(args.new_tokens - 1, 1)
        row = {"variant": label, "batch": b, "backend_s": round(secs, 2), "backend_tokens": tokens,
               "backend_tok_s": round(backend_tps, 1), "prompt_pass_s": round(times[1], 3),
               "decode_ms_per_step": round(1e3 * step, 2), "decode_tok_s": round(b / step, 1)}
        rows.append(row)
        print(f"batch {b:3d}: backend {tokens} tokens in {secs:.2f} s = {backend_tps:8.1f} tok/s, "
              f"{hardware.bound_line(backend_tps, b, weight_bytes, bw)}")
        print(f"           decoding step {1e3 * step:8.2f} ms = {b / step:8.1f} tok/s, "
              f"{hardware.bound_line(b / step, b, weight_bytes, bw)}; prompt pass {times[1]:.2f} s", flush=True)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    from rlff_utils.backends import HFEngine
    from rlff_utils.grpo import merged_adapter
    from rlff_utils.models import pick_device

    device = pick_device(args.device)
    gpu = device.startswith("cuda")
    model_name = args.model_name = args.model or ("shaped-qwen2.5-7b" if gpu else "smollm2-135m-instruct")
    args.batch_sizes = args.batch_sizes or ("1,8,32" if gpu else "1,8")
    args.prompt_tokens = args.prompt_tokens or (600 if gpu else 128)
    args.new_tokens = args.new_tokens or (64 if gpu else 32)
    engine = HFEngine(model_name, device=device, dtype=args.dtype)
    if args.lora_r:
        from peft import LoraConfig, get_peft_model

        engine.model = get_peft_model(engine.model, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r,
                                                               target_modules="all-linear")).eval()
    model = engine.model
    weight_bytes = hardware.weight_bytes_per_step(model)
    bw = hardware.bandwidth(device, args.bandwidth_gbs)
    header = {
        "date": datetime.date.today().isoformat(),
        "device": hardware.device_name(device),
        "bandwidth": bw.describe(),
        "model": model_name,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "lora_r": args.lora_r,
        "kv_cache": args.kv_cache,
        "weight_bytes_per_step": weight_bytes,
        "bound_ms_per_step": round(1e3 * weight_bytes / (bw.gbs * 1e9), 2) if bw.gbs else None,
        "batch_sizes": args.batch_sizes,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "load_average": round(os.getloadavg()[0], 2),
    }
    print("settings:", *(f"{k}={v}" for k, v in header.items()), sep="\n  ")

    caches = args.kv_cache.split(",")
    variants = [(cache, merged) for cache in caches for merged in ([False, True] if args.lora_r and args.lora_merged
                                                                    else [False])]
    rows = []
    for cache, merged in variants:
        label = f"kv_cache={cache}" + (", lora merged" if merged else ", lora unmerged" if args.lora_r else "")
        print(f"== {label}")
        with merged_adapter(model) if merged else contextlib.nullcontext():
            rows += run_batches(args, engine, device, cache, label, weight_bytes, bw)
    base = {r["batch"]: r for r in rows if r["variant"] == rows[0]["variant"]}
    for r in rows[len(base):]:
        ref = base[r["batch"]]
        print(f"{r['variant']} vs {ref['variant']}, batch {r['batch']}: backend "
              f"{r['backend_tok_s'] / ref['backend_tok_s']:.2f}x, decoding step "
              f"{ref['decode_ms_per_step'] / r['decode_ms_per_step']:.2f}x faster")
    if args.json:
        Path(args.json).write_text(json.dumps({**header, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
