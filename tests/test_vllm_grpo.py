"""GRPO with TRL's colocated vLLM generation (``grpo.trainer.use_vllm: true``, ``vllm_mode:
colocate``) on vLLM's CPU build: two steps on the embedded SmolLM2 with LoRA, and the weights vLLM
samples from after a step are the base weights plus that step's adapter (TRL merges the adapter and
pushes the merged weights to vLLM before each generation), in the policy's precision."""

from __future__ import annotations

import pytest

from conftest import VLLM_MODEL, require_vllm
from rlff_utils import grpo, runs
from rlff_utils.params import load_params

pytestmark = pytest.mark.slow


def _merged_q_proj(base_q, adapter_folder, scale: float, layer: int = 0):
    from safetensors.torch import load_file

    t = load_file(str(adapter_folder / "adapter_model.safetensors"))
    key = next(k for k in t if f"layers.{layer}.self_attn.q_proj.lora_A" in k)
    a, b = t[key], t[key.replace("lora_A", "lora_B")]
    return base_q + scale * (b @ a)


def test_grpo_colocated_vllm_samples_from_the_adapted_weights(tmp_path, data_dir, project_root, monkeypatch):
    require_vllm()
    import torch
    from transformers import AutoModelForCausalLM

    from rlff_utils.data import prepare_data
    from rlff_utils.models import resolve_model

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    p = load_params(project_root / "params" / "ci.yaml", {
        "output_root": str(tmp_path / "outputs"), "grpo.reward_model": "random",
        "models.policy.name": VLLM_MODEL, "models.policy.max_new_tokens": 12,
        "grpo.trainer.use_vllm": True, "grpo.trainer.vllm_mode": "colocate", "grpo.trainer.max_steps": 2,
        "grpo.trainer.learning_rate": 1e-3})
    prepare_data(p)
    seen = {}
    original = grpo.trainer_class

    def capturing(params):
        class Capturing(original(params)):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                seen["trainer"] = self
        return Capturing

    monkeypatch.setattr(grpo, "trainer_class", capturing)
    result = grpo.train_policy(p)
    assert result.global_step == 2
    trainer = seen["trainer"]
    assert trainer.use_vllm and trainer.vllm_generation.mode == "colocate"
    llm = trainer.vllm_generation.llm
    assert llm.llm_engine.vllm_config.compilation_config.mode == 0  # eager on the CPU (grpo.vllm_generation_on_cpu)

    # vLLM's weights: the base + the adapter after step 1 (synced before step 2's generation)
    served = llm.llm_engine.model_executor.driver_worker.model_runner.model
    hidden = served.config.hidden_size
    vllm_q = served.model.layers[0].self_attn.qkv_proj.weight[:hidden].detach()
    assert vllm_q.dtype == torch.float32  # the policy's precision (models.policy.dtype), not vLLM's CPU default
    base_q = AutoModelForCausalLM.from_pretrained(resolve_model(VLLM_MODEL), dtype=torch.float32) \
        .model.layers[0].self_attn.q_proj.weight.detach()
    step1 = runs.layout(p).grpo_checkpoints / "checkpoint-1"
    assert (step1 / "adapter_model.safetensors").is_file()
    expected = _merged_q_proj(base_q, step1, p.grpo.lora_alpha / p.grpo.lora_r)
    moved = (vllm_q - base_q).abs().max().item()
    assert moved > 1e-6, "vLLM still samples from the base weights"
    assert (vllm_q - expected).abs().max().item() < moved / 100
