"""vllm: the offline engine (GPU), one ``SamplingParams`` per request, guided choices, LoRA per request."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .base import (
    BackendError,
    BackendStats,
    _row_seeds,
    _softmax,
    trim_at_stop,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..params import ModelRole



def _vllm_engine(role: "ModelRole", seed: int = 0):
    try:
        import vllm
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise BackendError(
            "backend 'vllm' needs the vllm package (pip install 'rlff-esc[gpu]') and a GPU"
        ) from e
    from ..models import resolve_model

    kwargs: dict[str, Any] = dict(
        model=resolve_model(role.name),
        tensor_parallel_size=role.tensor_parallel_size,
        gpu_memory_utilization=role.gpu_memory_utilization,
        enable_prefix_caching=role.enable_prefix_caching,
        dtype=role.dtype,
        seed=seed,
    )
    if role.max_model_len:
        kwargs["max_model_len"] = role.max_model_len
    if role.enable_lora:
        kwargs.update(enable_lora=True, max_lora_rank=role.max_lora_rank)
    return vllm.LLM(**kwargs)


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

    def generate(self, conversations, n=1, temperature=None, max_new_tokens=None, stop=None, seed=None,
                 guided_choice=None, seeds=None) -> list[list[str]]:
        if not conversations:
            return []
        row_seeds = _row_seeds(len(conversations), seed, seeds)
        t0 = time.perf_counter()
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
        t0 = time.perf_counter()
        tok = self.engine.get_tokenizer()
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
    import zlib

    return 1 + zlib.crc32(os.path.abspath(adapter).encode()) % 1_000_000


