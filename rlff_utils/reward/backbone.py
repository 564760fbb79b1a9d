"""The model under every variant: tokenizer, sequence-classification backbone, pooling, LoRA, precision.

Precision has one knob, ``models.reward_backbone.dtype`` (with ``models.reward_backbone.device``
deciding CPU or GPU); :func:`precision` turns it into what loading, training and scoring use.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

from ..params.schema import Pooling

if TYPE_CHECKING:  # pragma: no cover
    from ..params import RewardModelParams, RunParams


def load_rm_tokenizer(name: str):
    """Right padding (the classifier pools the last non-pad token either way) and left
    truncation (an over-long input loses its oldest turns, never the reply)."""
    from ..models import load_tokenizer

    tok = load_tokenizer(name, padding_side="right")
    tok.truncation_side = "left"
    return tok


@contextlib.contextmanager
def _quiet_transformers():
    """The backbone's fresh score head is expected to be missing from a causal-LM checkpoint."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


POOLINGS = get_args(Pooling)


def load_backbone(name: str, num_labels: int, seed: int, pad_token_id: int, dtype=None, pooling: str = "last"):
    """A sequence-classification model on the backbone, its head drawn from ``seed``, reading the
    input through ``pooling`` (:func:`mean_pooling`)."""
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    from ..models import resolve_model

    set_seed(seed)
    with _quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(name), num_labels=num_labels, dtype=dtype or torch.float32
        )
    model.config.pad_token_id = pad_token_id
    model.config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    if pooling == "mean":
        mean_pooling(model)
    elif pooling != "last":
        raise ValueError(f"unknown reward-model pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
    return model


def mean_pooling(model) -> None:
    """Make a sequence-classification model read the mean of its input's hidden states instead of
    the last token's (``reward_model.pooling: mean``).

    transformers' ``*ForSequenceClassification`` heads apply their linear, bias-free ``score`` to
    every position and keep the last non-pad one. A forward hook on the transformer replaces each
    position's hidden state by the running mean over the attended positions up to it, so the kept
    position carries the mean over the whole input, for right or left padding, in training and
    scoring alike; LoRA and ``merge_and_unload`` leave the hooked module in place. Why it is an
    option: a rule carried by a few words anywhere in a reply is one direction in the mean, while
    the last token has to have gathered it by attention, which a small head learns from few examples
    only by memorising them (see ``params/planted.yaml``)."""
    import torch

    def running_mean(module, args, kwargs, output):
        hidden = output.last_hidden_state
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(hidden.shape[:2], device=hidden.device)
        if mask.dim() != 2:
            raise ValueError(f"mean pooling needs a 2-D attention mask (batch, tokens), got shape {tuple(mask.shape)}")
        weight = mask.to(hidden.dtype).unsqueeze(-1)
        output.last_hidden_state = (hidden * weight).cumsum(1) / weight.cumsum(1).clamp(min=1)
        return output

    getattr(model, model.base_model_prefix).register_forward_hook(running_mean, with_kwargs=True)


def lora_config(rm: "RewardModelParams", model):
    """LoRA for sequence classification; the score head is trained in full (``modules_to_save``).
    ``lora_layers`` restricts LoRA to the top layers, so backpropagation stops there."""
    import torch
    from peft import LoraConfig, TaskType

    target = rm.lora_target_modules
    layers = None
    if rm.lora_layers:
        n_layers = model.config.num_hidden_layers
        layers = list(range(max(0, n_layers - rm.lora_layers), n_layers))
        if isinstance(target, str):  # peft needs explicit names to combine with layers_to_transform
            target = sorted(
                {
                    name.rsplit(".", 1)[-1]
                    for name, mod in model.named_modules()
                    if isinstance(mod, torch.nn.Linear) and ".layers." in name
                }
            )
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=rm.lora_r,
        lora_alpha=rm.lora_alpha,
        lora_dropout=rm.lora_dropout,
        target_modules=target,
        layers_to_transform=layers,
        modules_to_save=["score"],
    )


@dataclass(frozen=True)
class Precision:
    """How the reward backbone runs, from ``models.reward_backbone`` alone.

    ``dtype: bfloat16`` asks for bf16 on CPU too: the frozen backbone is then held in bf16 (a CPU
    with AVX512-BF16 or AMX runs its matmuls about twice as fast), the trained LoRA and score
    weights in fp32 under autocast. ``auto``: ``models.auto_dtype`` (bf16 where the device runs it fast).
    """

    device: str  # where a saved model is scored
    use_cuda: bool  # where training runs
    bf16: bool
    fp16: bool
    score_dtype: Any  # torch dtype a saved model is loaded in for scoring

    @property
    def train_dtype(self):
        """The frozen backbone's dtype in training (fp16 trains an fp32 backbone under autocast)."""
        import torch

        return torch.bfloat16 if self.bf16 else torch.float32

    def training_arguments(self) -> dict[str, Any]:
        return {"bf16": self.bf16, "fp16": self.fp16, "use_cpu": not self.use_cuda}


def precision(params: "RunParams", device: str | None = None) -> Precision:
    import torch

    from ..models import auto_dtype, pick_device, pick_dtype

    role = params.models.reward_backbone
    device = device or pick_device(role.device)
    use_cuda = torch.cuda.is_available() and (role.device == "auto" or role.device.startswith("cuda"))
    dtype = auto_dtype(device) if role.dtype == "auto" else role.dtype
    bf16 = dtype == "bfloat16"
    fp16 = bool(use_cuda and dtype == "float16")
    return Precision(device, use_cuda, bf16, fp16, pick_dtype(dtype, device))
