"""Benchmark: lockstep batched rollouts vs a sequential PPDPP-style loop; critic probs vs votes.

1. The same contexts, candidates per context, turn cap, model and seed, rolled out
   (a) in lockstep: all trajectories advance together, one batched call per agent role per turn;
   (b) sequentially: one trajectory at a time, one call per agent turn (PPDPP's loop).
   Both go through ``rollout.run_rollouts`` (the sequential loop is batch size 1), so only the
   batching differs. Prints trajectories/s, generated tokens/s and the ratio (target >= 4x), and
   tokens/s as a fraction of the memory-bandwidth bound (bench/hardware.py) at the rows a decoding
   step can hold (1 in the sequential loop, ``--batch-size`` in lockstep).
2. The critic on the same dialogues in ``probs`` mode (one scoring pass) and in ``votes`` mode
   (n sampled answers, PPDPP: 10 at temperature 1.1): cost per judgement, the ratio (target >= 5x)
   and how often the two agree on success. Votes are drawn both ways the hf backend can: the
   prompt read once and its KV cache repeated n times ("shared"), or transformers'
   ``num_return_sequences``, which re-reads it per sample ("re-read"); the line after says which
   is faster on this device and which one the backend uses here by default
   (``backends.SHARE_PROMPT_PASS_BY_DEVICE``).

The device's name is printed with the settings.

Not a timed test: numbers depend on the machine and on what else runs on it (the load average
is printed with them). Run: ``python bench/bench_simulation.py [--contexts 6 --candidates 2 ...]``
with RLFF_DATA_DIR pointing at the data (see README).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import hardware  # noqa: E402  (bench/hardware.py)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params" / "smoke.yaml"), help="data paths and model names")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--contexts", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--critic-mode", default="probs", choices=["probs", "votes"], help="critic in the rollout part")
    ap.add_argument("--judgements", type=int, default=8, help="dialogues judged in the critic part")
    ap.add_argument("--votes", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16, help="hf backend rows per generate call")
    ap.add_argument("--critic-batch-size", type=int, default=8, help="hf backend rows per scoring pass")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bandwidth-gbs", type=float, default=None, help="override the device's bandwidth")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-rollouts", action="store_true")
    ap.add_argument("--skip-critic", action="store_true")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rlff_utils.critic import LLMCritic
    from rlff_utils.backends import get_backend, shares_prompt_pass
    from rlff_utils.models import pick_device
    from rlff_utils.data import load_all
    from rlff_utils.params import ModelRole, load_params
    from rlff_utils.rollout import backend_seeker, backend_supporter, candidate_sampler, run_rollouts
    from rlff_utils.simulate import simulation_trajectories

    params = load_params(args.params, {"data.max_contexts": max(args.contexts, args.judgements)})
    contexts = load_all(params).contexts
    turns = params.data.max_history_turns

    device = pick_device(args.device)

    def role(temperature: float, batch_size: int) -> ModelRole:
        return ModelRole(name=args.model, temperature=temperature, max_new_tokens=args.max_new_tokens,
                         batch_size=batch_size, dtype=args.dtype, device=device)

    policy, system, user = (get_backend(role(t, args.batch_size)) for t in (0.9, 0.7, 0.7))
    critic_backend = get_backend(role(1.1, args.critic_batch_size))
    backends = (policy, system, user, critic_backend)
    weight_bytes = hardware.weight_bytes_per_step(policy.engine.model)
    bw = hardware.bandwidth(device, args.bandwidth_gbs)
    print("settings:", {k: v for k, v in vars(args).items() if not k.startswith("skip")},
          f"device={hardware.device_name(device)}", f"bandwidth={bw.describe()}",
          f"torch threads={torch.get_num_threads()}", f"cpus={os.cpu_count()}",
          f"load average={os.getloadavg()[0]:.2f}", sep="\n  ")

    if not args.skip_rollouts:
        ctxs = contexts[: args.contexts]

        def rollout(batch: int) -> tuple[float, int, int, float]:
            for b in backends:
                b.stats.reset()
            critic = LLMCritic(critic_backend, args.critic_mode, samples=args.votes, seed=args.seed)
            trajs = simulation_trajectories(ctxs, args.candidates, args.max_turns)
            t0 = time.perf_counter()
            for start in range(0, len(trajs), batch):
                run_rollouts(trajs[start: start + batch], candidate_sampler(policy, "vanilla", turns),
                             backend_supporter(system, "vanilla", turns), backend_seeker(user, turns), critic,
                             seed=args.seed, critic_context_turns=turns)
            hardware.sync(device)
            secs = time.perf_counter() - t0
            tokens = sum(b.stats.generated_tokens for b in backends)
            calls = sum(b.stats.calls for b in backends)
            goals = sum(t.goal_reached for t in trajs) / len(trajs)
            return secs, tokens, calls, goals

        n = args.contexts * args.candidates
        results = {}
        for name, batch in (("lockstep", n), ("sequential", 1)):
            secs, tokens, calls, goals = rollout(batch)
            results[name] = (n / secs, tokens / secs)
            rows = min(batch, args.batch_size)
            print(f"{name:>10}: {n} trajectories in {secs:7.1f} s = {n / secs:6.3f} traj/s, "
                  f"{tokens} tokens = {tokens / secs:6.1f} tok/s, {calls} backend calls, success {goals:.0%}; "
                  f"{hardware.bound_line(tokens / secs, rows, weight_bytes, bw)}")
        print(f"{'ratio':>10}: {results['lockstep'][0] / results['sequential'][0]:.1f}x trajectories/s, "
              f"{results['lockstep'][1] / results['sequential'][1]:.1f}x tokens/s (target >= 4x)")

    if not args.skip_critic:
        dialogues = contexts[: args.judgements]
        out = {}
        default_shared = critic_backend.share_prompt_pass
        for mode in ("probs", "votes", "votes-reread"):
            critic_backend.stats.reset()
            # votes-reread: the n samples each re-read the prompt (transformers' num_return_sequences),
            # as a sampling loop without prefix sharing does; "votes" reads it once.
            critic_backend.share_prompt_pass = mode != "votes-reread"
            critic = LLMCritic(critic_backend, mode.split("-")[0], samples=args.votes, temperature=1.1, seed=args.seed,
                               window=turns)
            t0 = time.perf_counter()
            res = critic.judge(dialogues)
            hardware.sync(device)
            secs = time.perf_counter() - t0
            out[mode] = (secs / len(dialogues), res)
            unparsed = sum(r.unparsed for r in res)
            extra = f", {unparsed}/{len(res) * args.votes} answers named no label" if mode != "probs" else ""
            print(f"critic {mode:>12}: {secs / len(dialogues):6.3f} s per judgement "
                  f"({len(dialogues)} dialogues, {secs:.1f} s){extra}")
        pairs = [(a, b) for a, b in zip(out["probs"][1], out["votes"][1])]
        agree = sum(a.success == b.success for a, b in pairs) / len(pairs)
        scored = [(a.score, b.score) for a, b in pairs if math.isfinite(a.score) and math.isfinite(b.score)]
        corr = statistics.correlation(*zip(*scored)) if len(scored) > 2 else math.nan
        print(f"critic ratio: votes/probs cost = {out['votes'][0] / out['probs'][0]:.1f}x (target >= 5x); "
              f"agreement on success = {agree:.0%} (success: probs {sum(a.success for a, _ in pairs)}, "
              f"votes {sum(b.success for _, b in pairs)} of {len(pairs)}); score correlation {corr:.2f} "
              f"over {len(scored)} dialogues both modes scored")
        print(f"critic ratio: votes-reread/probs cost = {out['votes-reread'][0] / out['probs'][0]:.1f}x")
        faster = "shared" if out["votes"][0] <= out["votes-reread"][0] else "re-read"
        print(f"critic votes on {hardware.device_name(device)}: shared prompt pass {out['votes'][0]:.3f} s, "
              f"re-read (num_return_sequences) {out['votes-reread'][0]:.3f} s per judgement -> {faster} is faster "
              f"here; the backend's default on {device}: {'shared' if shares_prompt_pass(device) else 're-read'}")
        critic_backend.share_prompt_pass = default_shared


if __name__ == "__main__":
    main()
