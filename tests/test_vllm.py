"""The ``vllm`` backend on real vLLM (its CPU build) with the embedded SmolLM2: seeded samples that
follow a conversation's own seed, votes under structured choice, choice probabilities from prompt
log-probs (against the hf backend on the same weights), a LoRA adapter per request (against the hf
backend with the same adapter), the stats, and a simulation killed mid-run and resumed that equals
a straight one. One engine serves the whole session (``vllm_engine`` in conftest.py)."""

from __future__ import annotations

import json

import pytest

from conftest import VLLM_MODEL, require_vllm, vllm_role
from rlff_utils.backends import BackendError, get_backend
from rlff_utils.backends.vllm import VLLMBackend, engine_kwargs

pytestmark = pytest.mark.slow

CONVS = [
    [{"role": "user", "content": "I lost my job last week and I can't sleep."}],
    [{"role": "user", "content": "Is the sky blue? Answer yes or no."}],
    [{"role": "system", "content": "You are a kind listener."}, {"role": "user", "content": "My cat died."}],
]


# ---- settings (no engine) -------------------------------------------------------------------------


def test_engine_settings_per_platform(monkeypatch):
    require_vllm()
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    cpu = engine_kwargs(vllm_role(dtype="auto", gpu_memory_utilization=0.85, enable_lora=True, max_lora_rank=8),
                        seed=3, platform="cpu")
    # on a CPU vLLM would read gpu_memory_utilization as a share of the machine's RAM
    assert "gpu_memory_utilization" not in cpu and "tensor_parallel_size" not in cpu
    assert cpu["enforce_eager"] and cpu["kv_cache_memory_bytes"] == 2 * 2**30 and cpu["dtype"] == "float32"
    assert cpu["seed"] == 3 and cpu["enable_lora"] and cpu["max_lora_rank"] == 8
    gpu = engine_kwargs(vllm_role(gpu_memory_utilization=0.5, tensor_parallel_size=2), seed=0, platform="cuda")
    assert gpu["gpu_memory_utilization"] == 0.5 and gpu["tensor_parallel_size"] == 2 and "enforce_eager" not in gpu
    with pytest.raises(BackendError, match="tensor_parallel_size 2 needs GPUs"):
        engine_kwargs(vllm_role(tensor_parallel_size=2), seed=0, platform="cpu")


# ---- the engine -----------------------------------------------------------------------------------


@pytest.fixture()
def vllm(vllm_engine):
    return VLLMBackend(vllm_role(temperature=1.0), vllm_engine)


def test_seeded_samples_follow_the_conversation(vllm):
    first = vllm.generate(CONVS, n=2, seeds=[11, 12, 13])
    assert [len(s) for s in first] == [2, 2, 2] and all(t.strip() for s in first for t in s)
    assert vllm.generate(CONVS, n=2, seeds=[11, 12, 13]) == first  # reproducible
    # a conversation's samples depend on its own seed, not on its neighbours or its place in the call
    assert vllm.generate(CONVS[::-1], n=2, seeds=[13, 12, 11]) == first[::-1]
    assert vllm.generate(CONVS[1:2], n=2, seeds=[12]) == first[1:2]
    assert vllm.generate(CONVS, n=2, seeds=[21, 22, 23]) != first
    assert first[0][0] != first[0][1]  # the n samples of one request differ


def test_seeded_long_prompts_beyond_one_steps_token_budget(vllm, vllm_engine):
    """More prompt tokens than one scheduler step takes: with chunked prefill a split seeded prompt
    kills the CPU build's engine core ("CPU Generator does not use offset"); the backend turns it off."""
    sched = vllm_engine.llm_engine.vllm_config.scheduler_config
    assert not sched.enable_chunked_prefill
    story = "I keep going over what happened at work and I cannot stop thinking about it. " * 60
    long = [[{"role": "user", "content": f"{i}. {story}"}] for i in range(8)]
    assert 8 * 900 > sched.max_num_batched_tokens  # the call needs several steps
    first = vllm.generate(long, n=2, seeds=list(range(8)), max_new_tokens=4)
    assert vllm.generate(long, n=2, seeds=list(range(8)), max_new_tokens=4) == first


def test_votes_under_structured_choice(vllm):
    labels = ["helped", "not helped", "unclear"]
    votes = vllm.generate(CONVS, n=10, seeds=[1, 2, 3], guided_choice=labels, temperature=1.1)
    assert [len(v) for v in votes] == [10, 10, 10]
    assert {v for row in votes for v in row} <= set(labels)
    assert len({v for row in votes for v in row}) > 1  # sampled, not one forced answer


def test_probs_from_prompt_logprobs_match_the_hf_backend(vllm, device):
    choices = ["yes", "no"]
    rows = vllm.score_choices(CONVS, choices)
    assert all(sum(r) == pytest.approx(1.0) for r in rows)
    hf = get_backend(vllm_role(backend="hf", device=device))
    reference = hf.score_choices(CONVS, choices)
    for got, want in zip(rows, reference):
        assert got == pytest.approx(want, abs=0.02)
    assert max(abs(r[0] - rows[0][0]) for r in rows) > 0.01  # the rows are not one constant


def test_stats(vllm):
    vllm.stats.reset()
    vllm.generate(CONVS[:2], n=3, seeds=[1, 2], max_new_tokens=8)
    s = vllm.stats
    assert (s.calls, s.conversations, s.sequences) == (1, 2, 6)
    assert 0 < s.generated_tokens <= 6 * 8 and s.prompt_tokens > 20 and s.seconds > 0


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, smollm2_path):
    """A LoRA adapter with random (non-zero) weights on q/v, rank 8: its replies differ from the base's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    folder = tmp_path_factory.mktemp("adapter") / "policy"
    peft.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def lora_engine():
    """A second engine, with LoRA: vLLM's CPU build cannot score choices on one (see the next tests)."""
    require_vllm()
    from rlff_utils.backends.vllm import _vllm_engine

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        engine = _vllm_engine(vllm_role(enable_lora=True, max_lora_rank=8), seed=0)
    yield engine
    engine.llm_engine.engine_core.shutdown()


def test_lora_adapter_per_request(lora_engine, vllm_engine, adapter, device):
    greedy = dict(temperature=0.0, max_new_tokens=12)
    lora_role = vllm_role(enable_lora=True, max_lora_rank=8)
    base = VLLMBackend(lora_role, lora_engine).generate(CONVS, **greedy)
    tuned = VLLMBackend(lora_role, lora_engine, adapter=adapter).generate(CONVS, **greedy)
    assert tuned != base
    assert VLLMBackend(vllm_role(), vllm_engine).generate(CONVS, **greedy) == base  # LoRA off: the base model
    hf_tuned = get_backend(vllm_role(backend="hf", device=device), adapter=adapter).generate(CONVS, **greedy)
    # the same greedy tokens as transformers + PEFT with that adapter (first words: fp32 sums may
    # differ in the last bits between engines)
    assert [t[0].split()[:4] for t in tuned] == [t[0].split()[:4] for t in hf_tuned]
    with pytest.raises(BackendError, match="enable_lora: true"):
        VLLMBackend(vllm_role(), lora_engine, adapter=adapter)
    with pytest.raises(BackendError, match="without `enable_lora`"):
        VLLMBackend(lora_role, vllm_engine, adapter=adapter)  # an engine built for a role without LoRA


def test_choice_scoring_on_a_lora_engine_is_refused_before_it_kills_the_engine(lora_engine):
    with pytest.raises(BackendError, match="cannot compute on an engine with LoRA enabled"):
        VLLMBackend(vllm_role(enable_lora=True), lora_engine).score_choices(CONVS[:1], ["yes", "no"])
    assert VLLMBackend(vllm_role(enable_lora=True), lora_engine).generate(CONVS[:1], max_new_tokens=4)  # still alive


# ---- the simulation on vllm: killed mid-run and resumed equals a straight run ----------------------

VLLM_ROLES = {f"models.{r}.{k}": v for r in ("policy", "system", "user_sim", "critic")
              for k, v in dict(backend="vllm", name=VLLM_MODEL, dtype="float32", max_model_len=2048).items()}
SIM = {"simulation.max_contexts": 3, "simulation.num_candidates": 2, "simulation.batch_size": 2,
       "simulation.max_turns": 2, "simulation.critic_mode": "votes", "simulation.critic_samples": 4,
       "models.critic.max_new_tokens": 8, "models.policy.max_new_tokens": 12, "models.system.max_new_tokens": 12,
       "models.user_sim.max_new_tokens": 12}


class _Killed(BaseException):
    """Stands for SIGKILL inside the process: nothing after it runs (not an Exception)."""


def _stored(params) -> dict:
    from rlff_utils import runs

    lines = [ln for ln in runs.layout(params).trajectories.read_bytes().split(b"\n") if ln.strip()]
    return {(json.loads(ln)["context_id"], json.loads(ln)["candidate_index"]): ln for ln in lines}


def test_killed_and_resumed_simulation_equals_a_straight_one(vllm_registered, data_dir, project_root, tmp_path,
                                                              monkeypatch):
    from rlff_utils.data import prepare_data
    from rlff_utils.params import load_params
    from rlff_utils.simulate import run_simulation

    def params(name):
        p = load_params(project_root / "params" / "ci.yaml", {"output_root": str(tmp_path / name), **VLLM_ROLES, **SIM})
        prepare_data(p)
        return p

    straight, killed = params("straight"), params("killed")
    run_simulation(straight)
    reference = _stored(straight)
    assert len(reference) == 6

    calls = {"n": 0}
    real = VLLMBackend.generate

    def dies_on_call_7(self, *a, **k):  # the second batch, mid-rollout
        calls["n"] += 1
        if calls["n"] == 7:
            raise _Killed
        return real(self, *a, **k)

    monkeypatch.setattr(VLLMBackend, "generate", dies_on_call_7)
    with pytest.raises(_Killed):
        run_simulation(killed)
    survivors = _stored(killed)
    assert 0 < len(survivors) < 6
    monkeypatch.setattr(VLLMBackend, "generate", real)
    run_simulation(killed)
    resumed = _stored(killed)
    assert resumed.keys() == reference.keys()
    assert all(resumed[k] == survivors[k] for k in survivors)
    different = [k for k in reference if resumed[k] != reference[k]]
    assert not different, f"{len(different)} of 6 records differ from the straight run: {different}"
