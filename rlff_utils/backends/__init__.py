"""Chat generation and choice scoring over three kinds of engine, behind one small interface.

Every agent of the simulation talks to a :class:`ChatBackend`: many conversations per call
(OpenAI-style message lists), ``n`` samples each, and the probability of a fixed set of answers.
Batching is the backend's job, so the rollout engine only has to ask for whole turns.

* ``hf``: transformers in-process (CPU or GPU), left-padded batches, seeded sampling. The
  embedded default.
* ``vllm``: offline ``vllm.LLM.chat`` with one ``SamplingParams`` per request (its own seed, so a
  conversation's samples do not depend on its batch neighbours), structured-output ``choice``
  for constrained answers, prefix caching. Imported only when used; GPU only.
* ``openai``: any OpenAI-compatible chat endpoint (GPT-4o, ``vllm serve``). The client's own
  timeout and bounded retries, a thread pool capped at ``concurrency``; when requests still fail
  a :class:`BackendError` names the endpoint and the failed count. The key comes from the
  environment variable named in params.

Roles that name the same model share one loaded engine per process (see :func:`get_backend`);
the per-role settings (temperature, token limits) live on the light wrapper, not the engine.

Modules: :mod:`.base` (the interface), :mod:`.hf`, :mod:`.vllm`, :mod:`.openai_api`; this module
holds the registry (:func:`get_backend`), which is also where a caller imports from.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import BackendError, BackendStats, ChatBackend, Conversation, trim_at_stop
from .hf import HFBackend, HFEngine
from .openai_api import OpenAIBackend
from .vllm import VLLMBackend, _vllm_engine

if TYPE_CHECKING:  # pragma: no cover
    from ..params import ModelRole

__all__ = ["BackendError", "BackendStats", "ChatBackend", "Conversation", "HFBackend", "HFEngine", "OpenAIBackend",
           "VLLMBackend", "clear_backends", "get_backend", "shares_prompt_pass", "trim_at_stop"]


_ENGINES: dict[tuple, Any] = {}  # the per-process model cache

# n samples of one prompt (the critic's votes, the m candidates): read the prompt once and repeat
# its KV cache (HFEngine.generate_shared_prefix), or let transformers re-read it per sample
# (num_return_sequences). Chosen per device type:
#   cpu:  shared: the prompt pass dominates, sharing it is several times faster;
#   cuda: re-read: generation dominates on a GPU and sharing costs more than it saves.
# The figures behind both choices are in bench/README_simulation.md (bench/bench_simulation.py
# measures both on the device it runs on).
SHARE_PROMPT_PASS_BY_DEVICE: dict[str, bool] = {"cpu": True, "cuda": False}


def shares_prompt_pass(device: Any) -> bool:
    """Whether the hf backend on ``device`` reads a prompt once for n samples (see above);
    device types missing from the table share (the CPU's choice)."""
    import torch

    return SHARE_PROMPT_PASS_BY_DEVICE.get(torch.device(device).type, True)


def get_backend(role: "ModelRole", adapter: str | None = None, seed: int = 0) -> ChatBackend:
    """A backend for ``role``. Engines are cached per process by (backend, name, adapter, device)
    (vLLM: by name, adapters ride per request), so roles sharing a model load it once; an adapter
    is known by its folder and its files' modification times, so one retrained in place (notebook 04
    run again in the same kernel) is loaded again, not served stale."""
    if role.backend == "hf":
        key = ("hf", role.name, adapter, _adapter_version(adapter), role.device, role.dtype)
        if key not in _ENGINES:
            for stale in [k for k in _ENGINES if k[:3] == key[:3] and k[4:] == key[4:]]:
                del _ENGINES[stale]  # the same adapter folder, older files
            _ENGINES[key] = HFEngine(role.name, role.device, role.dtype, adapter)
        engine = _ENGINES[key]
        return HFBackend(role, engine, share_prompt_pass=shares_prompt_pass(engine.device))
    if role.backend == "vllm":
        key = ("vllm", role.name, None, "gpu")
        if key not in _ENGINES:
            _ENGINES[key] = _vllm_engine(role, seed)
        return VLLMBackend(role, _ENGINES[key], adapter)
    if role.backend == "openai":
        if adapter:
            raise BackendError(f"an adapter cannot be attached to an API model ({role.name})")
        return OpenAIBackend(role)
    raise BackendError(f"unknown backend {role.backend!r}")


def _adapter_version(adapter: str | None) -> tuple:
    """(file name, mtime in ns, size) of every file in the adapter folder: changes when it is rewritten."""
    if not adapter or not Path(adapter).is_dir():
        return ()
    return tuple(sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in Path(adapter).iterdir() if f.is_file()))


def clear_backends() -> None:
    """Drop every cached engine (and free GPU memory where there was some)."""
    _ENGINES.clear()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
