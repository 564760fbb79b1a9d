"""Stage 3 of RLFF-ESC: GRPO on the policy with future-oriented and reasoning-format rewards.

The policy answers each training context G times; every answer is scored with

    R = R_fut + alpha * R_format

(R_fut: the future-oriented reward model of notebook 03; R_format: 1 when the answer reasons in one
``<think>...</think>`` block and then replies, else 0). GRPO turns each group's rewards into
advantages ``A_i = (R_i - mean_G R) / std_G R`` and maximises the clipped policy-gradient objective
with a KL penalty to the untrained policy. TRL's ``GRPOTrainer`` does all of this; this module only
builds its inputs (prompt dataset, reward functions, ``GRPOConfig``, ``LoraConfig``), runs it with
checkpoints and resume, and turns its log history into curves.

Why ``beta`` and ``loss_type`` are set explicitly. TRL's defaults (``beta=0``, ``loss_type="dapo"``)
are DAPO's: no reference model and token-level normalisation over the whole batch. The paper
trains with GRPO, and where it does not pin these two choices we follow GRPO as introduced by
DeepSeekMath: a KL term to the reference policy (``beta: 0.04``, DeepSeekMath's value) and each
completion's token losses averaged before averaging over the group (``loss_type: grpo``). With
LoRA the reference policy costs no memory (TRL disables the adapter to compute it). Both values
are written into the stage's record (``outputs/<run>/policy/stage.json``) so a result is never
read without them; the DAPO-style alternatives stay one params line away (``grpo.trainer``).

One process or several. ``run_grpo`` trains in the calling process when
``grpo.num_processes == 1`` and otherwise launches ``accelerate launch ... -m rlff_utils.grpo``
as a subprocess (a notebook kernel cannot host a multi-process launch). Every rank rebuilds the
reward functions from the params file, so nothing unpicklable crosses a process boundary.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from . import runs
from .agents import policy_messages
from .params import ParamsError, RunParams, build_trainer_config, load_params, parse_set, write_resolved
from .rewards import format_reward, load_reward_function, needs_trained_model, reward_source


# --------------------------------------------------------------------------------------------
# Reward setup: R = R_fut + alpha * R_format
# --------------------------------------------------------------------------------------------


def reward_setup(params: RunParams) -> tuple[list[Callable], list[float]]:
    """``reward_funcs`` and ``reward_weights`` for the trainer.

    The format reward is always computed so the format-compliance curve exists in every ablation;
    with ``grpo.format_reward: false`` its weight is 0, which leaves R = R_fut exactly (TRL sums the
    weighted rewards before normalising them per group).
    """
    g = params.grpo
    # reward_source is lazy and picklable: it loads its model on first call
    return [reward_source(params), format_reward], [1.0, g.format_weight if g.format_reward else 0.0]


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def prompt_messages(context: dict[str, Any], tokenizer, max_prompt_length: int, max_history_turns: int) -> list[dict] | None:
    """The reasoning-style prompt for one context, dropping the oldest turns until the templated
    prompt fits ``max_prompt_length`` tokens (TRL 1.16 has no prompt truncation of its own, and
    cutting tokens from the left would cut the system prompt). None when even one turn is too long."""
    dataset = context.get("dataset") or "esconv"
    for turns in range(min(max_history_turns, len(context["history"])), 0, -1):
        messages = policy_messages(context, "reasoning", dataset=dataset, max_history_turns=turns)
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        if len(ids) <= max_prompt_length:
            return messages
    return None


def build_prompt_dataset(params: RunParams, contexts: list[dict[str, Any]] | None = None, tokenizer=None):
    """Training prompts as a conversational ``datasets.Dataset``: ``prompt`` (messages), ``history``
    (read by the reward model) and ``context_id``."""
    import datasets

    from .data import load_contexts
    from .models import load_tokenizer

    g = params.grpo
    contexts = load_contexts(params) if contexts is None else contexts
    if not contexts:
        raise ValueError(f"no training contexts for run {params.run_name!r}: notebook 01 wrote none")
    if g.num_train_prompts is not None:
        contexts = contexts[: g.num_train_prompts]
    tokenizer = tokenizer or load_tokenizer(params.models.policy.name)
    rows, too_long = [], []
    for c in contexts:
        messages = prompt_messages(c, tokenizer, g.max_prompt_length, params.data.max_history_turns)
        if messages is None:
            too_long.append(c["context_id"])
            continue
        rows.append({"prompt": messages, "history": c["history"], "context_id": c["context_id"]})
    if too_long:
        warnings.warn(
            f"{len(too_long)} context(s) do not fit grpo.max_prompt_length={g.max_prompt_length} even with one "
            f"turn of history and were left out (first: {too_long[0]})",
            stacklevel=2,
        )
    if not rows:
        raise ValueError(f"no context fits grpo.max_prompt_length={g.max_prompt_length}: raise it")
    return datasets.Dataset.from_list(rows)


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def build_lora_config(params: RunParams):
    from peft import LoraConfig

    g = params.grpo
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=g.lora_r,
        lora_alpha=g.lora_alpha,
        lora_dropout=g.lora_dropout,
        target_modules=g.lora_target_modules,
    )


def build_grpo_config(params: RunParams, reward_weights: list[float] | None = None):
    """TRL's ``GRPOConfig`` for this run (``grpo.trainer`` over the project's defaults; see
    :func:`rlff_utils.params.build_trainer_config`), checkpointing into the run folder."""
    if reward_weights is None:
        reward_weights = reward_setup(params)[1]
    return build_trainer_config(params, str(runs.layout(params).grpo_checkpoints), reward_weights)


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


def _progress_callback():
    from transformers import TrainerCallback

    class ProgressLine(TrainerCallback):
        """One line per logging step with the rewards and an ETA: readable in a notebook's saved
        output and in a subprocess log, where a redrawn progress bar is not."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0, self.step0 = time.monotonic(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "reward" not in logs:
                return
            done = max(state.global_step - self.step0, 1)
            per_step = (time.monotonic() - self.t0) / done
            eta = timedelta(seconds=round(per_step * (state.max_steps - state.global_step)))
            parts = [f"step {state.global_step}/{state.max_steps}", f"reward {logs['reward']:.3f}"]
            for key in ("rewards/future_reward/mean", "rewards/format_reward/mean", "kl"):
                if logs.get(key) is not None:
                    parts.append(f"{key.split('/')[1] if '/' in key else key} {logs[key]:.3f}")
            parts += [f"{per_step:.1f} s/step", f"ETA {eta}"]
            print(" | ".join(parts), flush=True)

    return ProgressLine()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class GRPOResult:
    adapter_dir: Path
    log_history: list[dict[str, Any]]
    skipped: bool
    seconds: float | None
    global_step: int


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def protocol(params: RunParams) -> dict[str, Any]:
    """What the trainer optimises, beside the settings record: the reward, and library versions."""
    import peft
    import transformers
    import trl

    g, cfg = params.grpo, params.grpo.config
    return {
        "objective": {
            "reward": "R_fut + alpha * R_format" if g.format_reward else "R_fut (format reward logged, weight 0)",
            "reward_model": g.reward_model,
            "alpha": g.format_weight if g.format_reward else 0.0,
            "beta_kl": cfg.beta,
            "loss_type": cfg.loss_type,
            "scale_rewards": cfg.scale_rewards,
            "num_generations": cfg.num_generations,
            "temperature": cfg.temperature,
            "precision": "bfloat16" if cfg.bf16 else "float16" if cfg.fp16 else "float32",
            "note": "beta and loss_type set explicitly: TRL's defaults are beta=0.0, loss_type='dapo'",
        },
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }


def _stage(params: RunParams, force: bool):
    """The policy stage folder, locked and checked against its record (stale checkpoints or
    adapter from other settings -> StaleStageError). Under ``accelerate launch`` only rank 0 takes
    the lock (the notebook that launched it may hold it already); other ranks only check."""
    needs_reward_stage = needs_trained_model(params.grpo.reward_model)
    if _is_main_process():
        return runs.begin_stage(params, runs.POLICY, force=force, extra=protocol(params),
                                require_upstream=needs_reward_stage)
    runs.check_stage(params, runs.POLICY)
    return contextlib.nullcontext(runs.layout(params).stage(runs.POLICY))


def train_policy(params: RunParams, force: bool = False) -> GRPOResult:
    """Train (or resume, or skip) in this process; under ``accelerate launch`` every rank calls it."""
    with _stage(params, force):
        return _train(params)


def _train(params: RunParams) -> GRPOResult:
    from .models import load_tokenizer, resolve_model

    lay = runs.layout(params)
    out, adapter, ckpts = lay.stage(runs.POLICY), lay.adapter, lay.grpo_checkpoints
    if (adapter / "adapter_config.json").is_file():
        print(f"policy adapter already trained with these settings: {adapter.relative_to(lay.root)} (--force to retrain)")
        history = load_log_history(params)
        return GRPOResult(adapter, history, True, None, max((h.get("step", 0) for h in history), default=0))
    last = runs.last_complete_checkpoint(ckpts)  # a checkpoint torn by a kill is skipped, with a note

    # Everything that can fail cheaply fails here, before the model loads.
    reward_funcs, weights = reward_setup(params)
    reward_funcs[0] = load_reward_function(params)  # fails here if notebook 03 did not train this variant
    tokenizer = load_tokenizer(params.models.policy.name)
    dataset = build_prompt_dataset(params, tokenizer=tokenizer)
    config = build_grpo_config(params, weights)
    if _is_main_process():
        runs.write_json(config.to_dict(), lay.grpo_config)
        print(f"GRPO: {len(dataset)} prompts, {config.max_steps} steps, G={config.num_generations}, "
              "rewards " + " + ".join(f"{w} x {getattr(f, '__name__', f)}" for f, w in zip(reward_funcs, weights)))
        if last:
            print(f"resuming from {last}")

    with vllm_generation_on_cpu(config, params.models.policy.dtype), stdout_with_a_file_descriptor(config):
        trainer = trainer_class(params)(
            model=resolve_model(params.models.policy.name),
            reward_funcs=reward_funcs,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=build_lora_config(params),
            callbacks=[_progress_callback()],
        )
    t0 = time.monotonic()
    trainer.train(resume_from_checkpoint=last)
    seconds = time.monotonic() - t0
    # The adapter folder is the "finished" marker, so it appears last and whole: logs first, then
    # the adapter saved aside (every rank takes part: ZeRO-3 gathers the weights) and renamed.
    staging = out / ".adapter-staging"
    if trainer.is_world_process_zero():
        history = trainer.state.log_history
        runs.write_json(history, lay.grpo_log_history)
        curves_frame(history).to_csv(lay.grpo_curves, index=False)
        runs.write_json({"global_step": trainer.state.global_step, "seconds": round(seconds, 1),
                         "resumed_from": last, "prompts": len(dataset)}, lay.train_summary)
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # a PEFT model saves only the adapter
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(staging))
        shutil.rmtree(adapter, ignore_errors=True)
        staging.rename(adapter)
    return GRPOResult(adapter, trainer.state.log_history, False, seconds, trainer.state.global_step)


def _params_file_for_subprocess(params: RunParams) -> str:
    """The run, resolved (absolute paths, variables expanded, overrides applied), for the ranks."""
    return str(write_resolved(params, runs.layout(params).subprocess_params))


def launch_command(params: RunParams, force: bool = False) -> list[str]:
    """``accelerate launch`` over ``grpo.num_processes`` processes with the DeepSpeed config."""
    g = params.grpo
    config = params.resolve(g.accelerate_config or "configs/accelerate/zero2.yaml")
    if not config.is_file():
        raise ParamsError(f"grpo.accelerate_config: file not found: {config}")
    cmd = [
        "accelerate", "launch", "--config_file", str(config), "--num_processes", str(g.num_processes),
        "-m", "rlff_utils.grpo", "--params", _params_file_for_subprocess(params),
    ]
    return cmd + (["--force"] if force else [])


def run_grpo(params: RunParams, force: bool = False) -> GRPOResult:
    """Notebook 04's stage: train in-process on one device, or as a multi-process subprocess
    (which this process holds the stage lock for)."""
    if params.grpo.num_processes == 1:
        return train_policy(params, force=force)
    with runs.begin_stage(params, runs.POLICY, force=force, extra=protocol(params)):
        cmd = launch_command(params)
        print("running:", shlex.join(cmd), flush=True)
        t0 = time.monotonic()
        env = {**os.environ, runs.LOCK_OWNER_ENV: str(os.getpid())}
        proc = subprocess.run(cmd, cwd=params.project_root or None, env=env)
        if proc.returncode:
            raise RuntimeError(f"GRPO subprocess failed with exit code {proc.returncode}: {shlex.join(cmd)}")
    history = load_log_history(params)
    step = max((h.get("step", 0) for h in history), default=0)
    return GRPOResult(runs.layout(params).adapter, history, False, time.monotonic() - t0, step)


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------

# log-history key -> curve column
CURVE_COLUMNS = {
    "reward": "total_reward",
    "reward_std": "total_reward_std",
    "rewards/future_reward/mean": "future_reward",
    "rewards/future_reward/std": "future_reward_std",
    "rewards/format_reward/mean": "format_reward",
    "rewards/format_reward/std": "format_reward_std",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "kl": "kl",
    "completions/mean_length": "completion_length",
    "completions/clipped_ratio": "clipped_ratio",
    "entropy": "entropy",
    "loss": "loss",
    "learning_rate": "learning_rate",
}


def load_log_history(params: RunParams) -> list[dict[str, Any]]:
    path = runs.layout(params).grpo_log_history
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train the policy first (notebook 04)")
    return runs.read_json(path)


def curves_frame(log_history: list[dict[str, Any]]):
    """One row per logged training step. ``format_compliance`` is the share of completions with
    R_format = 1 (the mean of a 0/1 reward)."""
    import pandas as pd

    rows = []
    for entry in log_history:
        if "reward" not in entry:
            continue  # the final train summary and any eval entries
        row = {"step": entry["step"]}
        row.update({col: entry.get(key) for key, col in CURVE_COLUMNS.items()})
        row["format_compliance"] = row["format_reward"]
        rows.append(row)
    return pd.DataFrame(rows, columns=["step", *CURVE_COLUMNS.values(), "format_compliance"])


# --------------------------------------------------------------------------------------------
# Sampling with the adapter merged
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def merged_adapter(model):
    """Inside: the active LoRA update ``W + s·BA`` is folded into each adapted layer's weight and
    the adapter layers are bypassed, so a forward pass costs one matmul per layer instead of three
    (what sampling pays at every decoding step). On exit every layer gets back its original weight
    tensor itself, bit for bit: PEFT's own ``merge_adapter``/``unmerge_adapter`` subtract the update
    again in the weights' precision, which in bf16 leaves rounding noise in the frozen base weights
    after every step. The price is a second copy of the adapted weights while inside. A model
    without LoRA layers passes through unchanged."""
    import torch
    from peft.tuners.lora import LoraLayer

    originals = []
    try:
        with torch.no_grad():
            for module in model.modules():
                if not isinstance(module, LoraLayer) or module.merged:
                    continue
                names = [a for a in module.active_adapters if a in module.lora_A]
                if not names:
                    continue
                weight = module.get_base_layer().weight
                merged = weight.data.clone()
                for name in names:
                    merged += module.get_delta_weight(name).to(merged.dtype)
                originals.append((weight, weight.data))
                weight.data = merged
        if not originals:
            yield model
            return
        with model.disable_adapter():
            yield model
    finally:
        for weight, data in originals:
            weight.data = data


@contextlib.contextmanager
def stdout_with_a_file_descriptor(config):
    """While TRL builds its colocated vLLM engine: vLLM silences C libraries by redirecting the
    stdout file descriptor (``vllm.utils.system_utils.suppress_stdout``, on any device), and a
    Jupyter kernel's ``sys.stdout`` has none (``io.UnsupportedOperation: fileno``, the failure of
    notebook 04 under papermill). The engine is then built with the kernel process's own stdout;
    the notebook's output is back for training."""
    import io

    try:
        sys.stdout.fileno()
        has_descriptor = True
    except (io.UnsupportedOperation, AttributeError, ValueError):
        has_descriptor = False
    if has_descriptor or not getattr(config, "use_vllm", False) or sys.__stdout__ is None:
        yield
        return
    shown, sys.stdout = sys.stdout, sys.__stdout__
    try:
        yield
    finally:
        sys.stdout = shown


@contextlib.contextmanager
def vllm_generation_on_cpu(config, dtype: str = "auto"):
    """TRL's colocated vLLM generation (``use_vllm``) on vLLM's CPU build: the engine TRL builds
    runs eagerly (TRL does not ask for it, and compiling the model costs minutes on a CPU), in the
    policy's ``dtype`` (TRL leaves it to vLLM, whose CPU build samples a float32 policy in bfloat16), with a
    fixed KV cache (``VLLM_CPU_KVCACHE_SPACE``, default :data:`~rlff_utils.backends.vllm.CPU_KV_CACHE_GIB`
    GiB), because the CPU build reads ``vllm_gpu_memory_utilization`` as the share of the machine's
    RAM to reserve; whole prompts only (``backends.vllm.CPU_SCHEDULING``: a chunked prefill of a seeded
    request kills the CPU build's engine); and its linear layers keep their weights as plain parameters: the CPU build
    packs them into oneDNN/sgl handles and drops the parameters, so TRL's weight sync after each
    step (``load_weights``) fails with "'Parameter' object has no attribute 'weight_loader'" and
    could not reach the packed copy anyway. The engine TRL builds runs in this process
    (``external_launcher``), so patching the dispatch here reaches it. Nothing changes on a GPU or
    without ``use_vllm``."""
    if not getattr(config, "use_vllm", False) or config.vllm_mode != "colocate":
        yield
        return
    from .backends.vllm import CPU_KV_CACHE_GIB, CPU_SCHEDULING, _vllm_platform

    if _vllm_platform() != "cpu":
        yield
        return
    import torch
    import trl.generation.vllm_generation as trl_vllm
    import vllm.model_executor.layers.utils as vllm_layers

    real_llm, real_dispatch = trl_vllm.LLM, vllm_layers.dispatch_cpu_unquantized_gemm

    def eager_llm(*args, **kwargs):
        extra = {"enforce_eager": True, **CPU_SCHEDULING, **({"dtype": dtype} if dtype != "auto" else {})}
        if kwargs.get("max_model_len"):  # whole prompts: a batch holds at least one of max_model_len tokens
            extra["max_num_batched_tokens"] = max(kwargs.get("max_num_batched_tokens") or 0, kwargs["max_model_len"])
        return real_llm(*args, **{**kwargs, **extra})

    def plain_linear(layer, remove_weight):  # keep the weights TRL's sync writes to
        layer.cpu_linear = torch.nn.functional.linear

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
    trl_vllm.LLM, vllm_layers.dispatch_cpu_unquantized_gemm = eager_llm, plain_linear
    try:
        yield
    finally:
        trl_vllm.LLM, vllm_layers.dispatch_cpu_unquantized_gemm = real_llm, real_dispatch


def trainer_class(params: RunParams):
    """TRL's ``GRPOTrainer``, or with ``grpo.merge_adapter_for_generation`` a subclass that
    samples the G completions inside :func:`merged_adapter` (training steps see the plain LoRA)."""
    from trl import GRPOTrainer

    if not params.grpo.merge_adapter_for_generation:
        return GRPOTrainer

    class MergedGenerationGRPOTrainer(GRPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            ds = getattr(self.accelerator.state, "deepspeed_plugin", None)
            if ds is not None and getattr(ds, "zero_stage", 0) == 3:
                raise ValueError("grpo.merge_adapter_for_generation needs whole weights on each rank: "
                                 "not with DeepSpeed ZeRO-3 (use ZeRO-2 or turn it off)")

        def _generate_single_turn(self, *args, **kwargs):
            if self.use_vllm:
                return super()._generate_single_turn(*args, **kwargs)
            with merged_adapter(self.accelerator.unwrap_model(self.model)):
                return super()._generate_single_turn(*args, **kwargs)

    return MergedGenerationGRPOTrainer


# --------------------------------------------------------------------------------------------
# The trained policy
# --------------------------------------------------------------------------------------------


def load_policy(params: RunParams, adapter_dir: str | Path | None = None, merge: bool = False):
    """(model, tokenizer) for generation: base policy + the trained LoRA adapter; ``merge`` folds
    the adapter into the weights (faster generation, no way back to the base model)."""
    from .models import load_causal_lm

    folder = Path(adapter_dir) if adapter_dir else runs.layout(params).adapter
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no LoRA adapter in {folder}: train the policy first (notebook 04)")
    role = params.models.policy
    model, tok = load_causal_lm(role.name, device=role.device, dtype=role.dtype, adapter=str(folder))
    if merge:
        model = model.merge_and_unload()
    return model, tok


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, temperature: float, seed: int) -> list[str]:
    """Sampled replies for chat prompts (one batch; for the notebook's side-by-side samples)."""
    import torch

    text = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    enc = tokenizer(text, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None, top_p=1.0,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def sample_before_after(params: RunParams, n: int = 3, score: bool = True):
    """The same prompts answered by the base policy (adapter disabled) and the trained one, with
    the same sampling seed, side by side; ``score`` adds R_fut of each answer."""
    import pandas as pd

    dataset = build_prompt_dataset(params).select(range(min(n, params.grpo.num_train_prompts or n)))
    cfg = params.grpo.config
    prompts, history = dataset["prompt"], dataset["history"]
    model, tok = load_policy(params)
    kw = dict(max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, seed=params.seed)
    with model.disable_adapter():
        before = generate(model, tok, prompts, **kw)
    after = generate(model, tok, prompts, **kw)
    frame = pd.DataFrame(
        {
            "context_id": dataset["context_id"],
            "seeker": [h[-1]["text"] for h in history],
            "before": before,
            "after": after,
            "format_before": format_reward(before),
            "format_after": format_reward(after),
        }
    )
    if score:
    
        rm = load_reward_function(params)
        as_msgs = lambda xs: [[{"role": "assistant", "content": x}] for x in xs]  # noqa: E731
        frame["R_fut_before"] = rm(prompts=prompts, completions=as_msgs(before), history=history)
        frame["R_fut_after"] = rm(prompts=prompts, completions=as_msgs(after), history=history)
    frame.to_json(runs.layout(params).samples_before_after, orient="records", lines=True, force_ascii=False)
    return frame


# --------------------------------------------------------------------------------------------
# CLI: `accelerate launch --config_file configs/accelerate/zero2.yaml -m rlff_utils.grpo --params FILE`
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="GRPO training of the RLFF-ESC policy (notebook 04's stage).")
    ap.add_argument("--params", required=True, help="params file (YAML)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, YAML value")
    ap.add_argument("--force", action="store_true", help="retrain even if an adapter exists")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params, parse_set(args.set))
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = train_policy(params, force=args.force)
    if _is_main_process():
        print(f"adapter: {result.adapter_dir} (step {result.global_step})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
