"""The offline GPU dry run: params/gpu_check.yaml keeps the paper's knobs on paper-shaped models,
its CPU-sized variant runs all six notebooks, `make gpu-check`'s tool measures GPU memory, and the
hf backend's way of drawing n samples is chosen per device."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from rlff_utils import backends, models
from rlff_utils.params import ModelRole, load_params

GENERATING = ("policy", "system", "user_sim", "critic", "eval_user_sim", "eval_critic", "judge")


@pytest.fixture()
def gpu_check(project_root, data_dir, tmp_path):
    return load_params(project_root / "params" / "gpu_check.yaml", {"output_root": str(tmp_path / "outputs")})


def test_gpu_check_keeps_the_paper_knobs_on_shaped_models(gpu_check, project_root):
    paper = load_params(project_root / "params" / "paper_qwen2.5-7b_esconv.yaml", check_files=False)
    m = gpu_check.models
    assert {getattr(m, r).name for r in GENERATING} == {"shaped-qwen2.5-7b"}
    assert m.reward_backbone.name == "shaped-llama3.2-1b"
    assert all(getattr(m, r).backend == "hf" and getattr(m, r).dtype == "bfloat16" for r in (*GENERATING, "reward_backbone"))
    g, pg = gpu_check.grpo, paper.grpo
    for knob in ("lora_r", "lora_alpha", "max_prompt_length"):
        assert getattr(g, knob) == getattr(pg, knob), knob
    for knob in ("bf16", "gradient_checkpointing", "num_generations", "max_completion_length",
                 "per_device_train_batch_size", "beta", "loss_type", "scale_rewards"):
        assert getattr(g.config, knob) == getattr(pg.config, knob), knob
    assert not g.config.use_vllm and g.num_processes == 1
    for knob in ("max_length", "lora_r", "lora_alpha", "variants"):
        assert getattr(gpu_check.reward_model, knob) == getattr(paper.reward_model, knob), knob
    for knob in ("critic_mode", "critic_samples", "critic_temperature"):
        assert getattr(gpu_check.evaluation, knob) == getattr(paper.evaluation, knob), knob
    assert gpu_check.evaluation.critic_mode == "votes"
    s = gpu_check.simulation
    assert (s.max_contexts, s.num_candidates, s.max_turns, g.config.max_steps) == (8, 4, 2, 2)
    assert gpu_check.evaluation.num_cases == 4 and gpu_check.data.max_history_turns == paper.data.max_history_turns


def test_votes_strategy_is_chosen_per_device(tiny_model_path, device):
    assert backends.shares_prompt_pass("cpu") is True
    assert backends.shares_prompt_pass("cuda:0") is False
    b = backends.get_backend(ModelRole(name="tiny-random-smollm2", device=device))
    assert b.share_prompt_pass is backends.shares_prompt_pass(b.engine.device)


def test_gpu_memory_poller_reads_nvidia_smi(tmp_path, monkeypatch):
    """Against a stand-in nvidia-smi reporting whatever memory use the test writes: the poller
    keeps the largest reading; without nvidia-smi it says so instead of failing the run."""
    from tools.gpu_check import GPUMemoryPoller

    used = tmp_path / "used"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f'#!/bin/sh\necho "0, NVIDIA Test GPU, $(cat {used}), 81559"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    key = "0: NVIDIA Test GPU"

    def wait_for(cond) -> None:
        deadline = time.monotonic() + 20
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.02)

    used.write_text("1000")
    with GPUMemoryPoller(interval_s=0.02) as gpu:
        wait_for(lambda: gpu.peak.get(key) == 1000)
        used.write_text("5000")
        wait_for(lambda: gpu.peak.get(key) == 5000)
        used.write_text("2000")
        time.sleep(0.2)
    assert gpu.error is None and gpu.peak == {key: 5000} and gpu.total == {key: 81559}

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with GPUMemoryPoller() as gpu:
        pass
    assert gpu.error == "nvidia-smi not found" and gpu.peak == {}


# The CPU-sized variant of params/gpu_check.yaml: the same file and knobs, the shaped models cut
# to 2 layers with widths / 16 (a CPU spends 0.8 GFLOP per token on even one layer of the real
# 7B widths: that variant took 14 minutes here), counts cut to the least each stage accepts, fp32
# (bf16 matmuls are several times slower than fp32 on CPUs without bf16 instructions).
CPU_MODELS = {"shaped-qwen2.5-7b": "shaped-qwen2.5-7b@layers=2,narrow=16",
              "shaped-llama3.2-1b": "shaped-llama3.2-1b@layers=2,narrow=16"}
CPU_OVERRIDES = {
    "data.max_contexts": 6, "data.max_eval_cases": 1,
    "simulation.max_contexts": 3, "simulation.max_turns": 1,  # 3 contexts: one per reward-model split
    "validation.failed_conversations": 3, "validation.success_conversations": 3,
    "validation.learned_critic.max_train_conversations": 4, "validation.learned_critic.feedback_prefixes": False,
    "validation.learned_critic.max_length": 128, "validation.bootstrap_samples": 20,
    "grpo.trainer.max_steps": 1, "grpo.trainer.per_device_train_batch_size": 4, "grpo.trainer.max_completion_length": 16,
    "evaluation.max_turns": 1, "evaluation.num_cases": 1, "evaluation.judge_pairs": 1,
    "evaluation.human_sheet_rows": 1, "evaluation.bootstrap_samples": 20,
}


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_at_cpu_size(gpu_check, shaped_cache, device, tmp_path):
    from rlff_utils import pipeline

    cpu = device == "cpu"
    overrides = {"output_root": gpu_check.output_root, **CPU_OVERRIDES}  # precision: models.*.dtype below
    for role in (*GENERATING, "reward_backbone"):
        overrides[f"models.{role}.name"] = CPU_MODELS[getattr(gpu_check.models, role).name]
        overrides[f"models.{role}.device"] = device
        overrides[f"models.{role}.dtype"] = "float32" if cpu else "bfloat16"
        if role != "reward_backbone":
            overrides[f"models.{role}.max_new_tokens"] = 8
    executed = pipeline.run_pipeline(gpu_check.source, overrides=overrides)

    run = gpu_check.run_dir
    stages = pipeline.discover_stages(Path(gpu_check.project_root) / "notebooks")
    assert [p.name for p in executed] == [f"{s.name}.ipynb" for s in stages]
    built = {p.name for p in shaped_cache.iterdir()}  # once, then read by every notebook
    assert {f"{alias}-layers2-narrow16-{models.BUILD_VERSION}" for alias in CPU_MODELS} <= built
    adapter = json.loads((run / "policy" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and "shaped-qwen2.5-7b-layers2-narrow16" in adapter["base_model_name_or_path"]
    assert any(t.endswith("self_attn.q_proj") for t in adapter["target_modules"])
    comparison = (run / "reward_model" / "comparison.csv").read_text()
    assert all(v in comparison for v in ("classification", "regression", "ranking"))
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["evaluation"]) == {"vanilla", "chain-of-strategy", "base-reasoning", "rlff-esc"}
    # the votes critic judged every evaluation turn with 10 sampled answers
    rows = [json.loads(line) for line in (run / "evaluation" / "rlff-esc" / "transcripts.jsonl").read_text().splitlines()]
    assert rows and all(len(r["critic_unparsed"]) == r["turns_used"] for r in rows)
    assert all(0 <= u <= 10 for r in rows for u in r["critic_unparsed"])
