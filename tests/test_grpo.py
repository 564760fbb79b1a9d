"""GRPO stage: the format reward, the trainer's inputs, and one short real run (tiny random policy,
the real reward functions with an untrained "random" reward model) that is then resumed, skipped
and loaded for generation."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

from rlff_utils import grpo, rewards, runs
from rlff_utils.params import ParamsError, load_params


# --------------------------------------------------------------------------------------------
# Format reward
# --------------------------------------------------------------------------------------------

VALID = "<think>The seeker feels alone; reflect that first.</think> That sounds really lonely."
CASES = {
    "valid": (VALID, 1.0),
    "valid, leading whitespace and newlines": ("\n <think>\nreasoning\n</think>\nA reply.\n", 1.0),
    "missing think block": ("That sounds really lonely.", 0.0),
    "unclosed think": ("<think>reasoning that never ends", 0.0),
    "only a closing tag": ("reasoning</think> reply", 0.0),
    "doubled think block": ("<think>a</think> reply <think>b</think> more", 0.0),
    "nested think": ("<think>a <think>b</think> reply", 0.0),
    "stray second closing tag": ("<think>a</think> reply</think>", 0.0),
    "empty reply": ("<think>reasoning</think>", 0.0),
    "whitespace-only reply": ("<think>reasoning</think>  \n ", 0.0),
    "empty reasoning": ("<think> </think> reply", 0.0),
    "text before the block": ("Sure! <think>reasoning</think> reply", 0.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_format_reward_cases(name):
    text, expected = CASES[name]
    conversational = [[{"role": "assistant", "content": text}]]
    assert rewards.format_reward(conversational) == [expected]
    assert rewards.format_reward([text]) == [expected]  # plain-text completions too


def test_trl_think_format_reward_is_looser_which_is_why_we_use_our_own():
    from trl.rewards import think_format_reward

    as_msgs = lambda t: [[{"content": t}]]  # noqa: E731
    assert think_format_reward(as_msgs(CASES["empty reply"][0])) == [1.0]
    assert think_format_reward(as_msgs(CASES["stray second closing tag"][0])) == [1.0]
    assert rewards.format_reward(as_msgs(CASES["empty reply"][0])) == [0.0]


# --------------------------------------------------------------------------------------------
# Trainer inputs (no model)
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def prepared_ci(ci_params):
    from rlff_utils.data import prepare_data

    prepare_data(ci_params)
    return ci_params


def test_prompt_dataset_is_conversational_with_history_and_fits(prepared_ci):
    from rlff_utils.models import load_tokenizer

    p = prepared_ci
    tok = load_tokenizer(p.models.policy.name)
    ds = grpo.build_prompt_dataset(p, tokenizer=tok)
    assert set(ds.column_names) == {"prompt", "history", "context_id"}
    row = ds[0]
    assert row["prompt"][0]["role"] == "system" and "<think>" in row["prompt"][0]["content"]
    last = row["prompt"][-1]  # the seeker's turn(s) the policy answers
    assert last["role"] == "user" and last["content"].endswith(row["history"][-1]["text"].strip())
    for messages in ds["prompt"]:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
        assert len(ids) <= p.grpo.max_prompt_length


def test_prompt_longer_than_the_limit_is_cut_from_the_oldest_turns(prepared_ci):
    from rlff_utils.data import load_contexts
    from rlff_utils.models import load_tokenizer

    tok = load_tokenizer(prepared_ci.models.policy.name)
    ctx = max(load_contexts(prepared_ci), key=lambda c: len(c["history"]))
    n_tokens = lambda m: len(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True)["input_ids"])  # noqa: E731
    full = grpo.prompt_messages(ctx, tok, 10_000, 50)
    one_turn = grpo.prompt_messages(ctx, tok, 10_000, 1)
    assert n_tokens(one_turn) < n_tokens(full)
    limit = (n_tokens(one_turn) + n_tokens(full)) // 2
    cut = grpo.prompt_messages(ctx, tok, limit, 50)
    assert n_tokens(cut) <= limit and len(one_turn) <= len(cut) < len(full)
    assert cut[0] == full[0] and cut[-1] == full[-1]  # system prompt and the seeker's last turn are kept
    assert grpo.prompt_messages(ctx, tok, n_tokens(one_turn), 50) == one_turn
    assert grpo.prompt_messages(ctx, tok, 20, 50) is None  # the system prompt alone is longer


def test_grpo_config_carries_every_knob(ci_params):
    p = load_params(
        ci_params.source,
        {"output_root": ci_params.output_root, "grpo.trainer.beta": 0.1, "grpo.trainer.loss_type": "dr_grpo",
         "grpo.format_weight": 0.3, "grpo.trainer.temperature": 0.8, "grpo.trainer.scale_rewards": "none",
         "grpo.trainer.num_iterations": 2, "grpo.trainer.weight_decay": 0.01},
    )
    cfg = grpo.build_grpo_config(p)
    args = p.grpo.args
    assert (cfg.beta, cfg.loss_type, cfg.scale_rewards, cfg.num_iterations) == (0.1, "dr_grpo", "none", 2)
    assert cfg.weight_decay == 0.01  # any GRPOConfig field passes through, no code needed
    assert (cfg.num_generations, cfg.temperature, cfg.max_completion_length) == (2, 0.8, args["max_completion_length"])
    assert (cfg.learning_rate, cfg.max_steps, cfg.save_steps, cfg.seed) == (1e-5, 2, 1, p.seed)
    assert cfg.reward_weights == [1.0, 0.3]
    assert cfg.output_dir == str(runs.layout(p).grpo_checkpoints)
    assert not cfg.bf16 and not cfg.use_vllm and cfg.remove_unused_columns is False


@pytest.mark.parametrize("trainer, words", [
    ({"warmup_ratioo": 0.1}, "unknown GRPOConfig field 'warmup_ratioo'"),
    ({"num_generations": 3}, "divisible by num_generations"),
    ({"seed": 3}, "seed comes from seed"),
    ({"bf16": True}, "models.policy.dtype"),
])
def test_bad_trainer_knobs_fail_at_load(ci_params, trainer, words):
    with pytest.raises(ParamsError) as err:
        load_params(ci_params.source, {"output_root": ci_params.output_root, "grpo.trainer": trainer})
    assert "grpo.trainer" in str(err.value) and words in str(err.value), str(err.value)


def test_bf16_config_builds_without_a_gpu(ci_params):
    """On a CPU with bf16 instructions the smoke params train in bf16; transformers refuses that unless told it is on CPU.
    The policy has one precision knob: models.policy.dtype."""
    import torch

    p = load_params(ci_params.source, {"output_root": ci_params.output_root, "models.policy.dtype": "bfloat16"})
    cfg = grpo.build_grpo_config(p)
    assert cfg.bf16 and cfg.model_init_kwargs["dtype"] == "bfloat16"
    assert cfg.use_cpu == (not torch.cuda.is_available())


def test_ablations_change_the_reward_setup(ci_params):
    funcs, weights = grpo.reward_setup(ci_params)
    assert [f.__name__ for f in funcs] == ["future_reward", "format_reward"] and weights == [1.0, 0.5]
    over = {"output_root": ci_params.output_root}
    no_format = load_params(ci_params.source, {**over, "grpo.format_reward": False})
    assert grpo.reward_setup(no_format)[1] == [1.0, 0.0]  # still computed, so compliance stays logged
    ranking = load_params(ci_params.source, {**over, "grpo.reward_model": "ranking"})
    assert grpo.reward_setup(ranking)[0][0].variant == "ranking"
    assert grpo.protocol(no_format)["objective"]["alpha"] == 0.0


def test_reward_functions_pickle(ci_params):
    funcs, _ = grpo.reward_setup(ci_params)
    copies = pickle.loads(pickle.dumps(funcs))
    assert copies[0].variant == "classification" and copies[0]._scorer is None  # the model is not pickled
    assert copies[1]([VALID]) == [1.0]


def test_multi_gpu_launch_command(ci_params, project_root):
    p = load_params(
        ci_params.source,
        {"output_root": ci_params.output_root, "grpo.num_processes": 2, "grpo.trainer.per_device_train_batch_size": 2,
         "grpo.accelerate_config": "configs/accelerate/zero3.yaml"},
    )
    cmd = grpo.launch_command(p)
    assert cmd[:2] == ["accelerate", "launch"]
    assert cmd[cmd.index("--config_file") + 1] == str(project_root / "configs/accelerate/zero3.yaml")
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[cmd.index("-m") + 1] == "rlff_utils.grpo"
    # the ranks read the resolved run (absolute paths, overrides applied), from any directory
    dumped_file = cmd[cmd.index("--params") + 1]
    elsewhere = load_params(dumped_file, base_dir=project_root / "notebooks")
    assert elsewhere.model_dump() == p.model_dump() and elsewhere.source == p.source
    with pytest.raises(ParamsError, match="accelerate_config"):
        grpo.launch_command(load_params(ci_params.source, {**{"output_root": ci_params.output_root},
                                                           "grpo.accelerate_config": "nope.yaml"}))


def test_accelerate_configs_are_deepspeed(project_root):
    import yaml

    for name, stage in (("zero2.yaml", 2), ("zero3.yaml", 3)):
        cfg = yaml.safe_load((project_root / "configs/accelerate" / name).read_text())
        assert cfg["distributed_type"] == "DEEPSPEED" and cfg["deepspeed_config"]["zero_stage"] == stage


def test_curves_from_log_history():
    history = [
        {"step": 1, "reward": 0.5, "reward_std": 0.1, "rewards/future_reward/mean": 0.25, "rewards/future_reward/std": 0.1,
         "rewards/format_reward/mean": 0.5, "rewards/format_reward/std": 0.5, "frac_reward_zero_std": 0.0, "kl": 0.0,
         "completions/mean_length": 12.0},
        {"step": 2, "train_runtime": 3.0},
    ]
    frame = grpo.curves_frame(history)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert (row.total_reward, row.future_reward, row.format_compliance, row.completion_length) == (0.5, 0.25, 0.5, 12.0)


def _tiny_lora(tiny_model_path, dtype="float32"):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=getattr(torch, dtype))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():  # a trained-looking adapter: B is zero at initialisation
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merged_adapter_computes_the_adapted_model_and_restores_the_base_bit_for_bit(tiny_model_path, dtype):
    import torch

    model = _tiny_lora(tiny_model_path, dtype)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits.float()
        with model.disable_adapter():
            base = model(input_ids=ids).logits.float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with grpo.merged_adapter(model):
        with torch.no_grad():
            merged = model(input_ids=ids).logits.float()
    tol = 1e-4 if dtype == "float32" else 0.1
    assert (adapted - base).abs().max() > 10 * tol  # the adapter matters, so the comparison means something
    assert (merged - adapted).abs().max() < tol
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # base and adapter weights untouched
    assert any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits.float(), adapted)  # the adapter is active again


def test_merge_adapter_for_generation_is_checked_at_load(ci_params):
    with pytest.raises(ValueError, match="use_vllm"):
        load_params(ci_params.source, {"grpo.merge_adapter_for_generation": True, "grpo.trainer.use_vllm": True})
    p = load_params(ci_params.source, {"grpo.merge_adapter_for_generation": True})
    assert grpo.trainer_class(p).__name__ == "MergedGenerationGRPOTrainer"
    assert grpo.trainer_class(ci_params).__name__ == "GRPOTrainer"


# --------------------------------------------------------------------------------------------
# A short real run
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, project_root):
    """Two GRPO steps on the tiny random policy, with the real reward functions: an untrained
    ("random") reward-model head on the tiny backbone and the format reward."""
    from rlff_utils.data import prepare_data

    root = tmp_path_factory.mktemp("grpo")
    p = load_params(project_root / "params" / "ci.yaml", {"output_root": str(root / "outputs"), "grpo.reward_model": "random"})
    prepare_data(p)
    result = grpo.train_policy(p)
    return p, result


def _lora_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_short_run_changes_the_adapter_and_logs_every_reward_component(trained):
    p, result = trained
    assert not result.skipped and result.global_step == p.grpo.config.max_steps
    tensors = _lora_tensors(result.adapter_dir)
    lora_b = [t for k, t in tensors.items() if "lora_B" in k]
    assert lora_b, "no LoRA B matrices in the saved adapter"
    # PEFT initialises B to zero, so any non-zero B entry was written by the GRPO updates
    assert any(t.abs().max().item() > 0 for t in lora_b)

    out = runs.layout(p).stage(runs.POLICY)
    curves = json.loads((out / "log_history.json").read_text())
    steps = [h for h in curves if "reward" in h]
    assert len(steps) == p.grpo.config.max_steps
    for key in ("reward", "reward_std", "rewards/future_reward/mean", "rewards/future_reward/std",
                "rewards/format_reward/mean", "rewards/format_reward/std", "frac_reward_zero_std", "kl",
                "completions/mean_length"):
        assert all(h.get(key) is not None for h in steps), key
    frame = grpo.curves_frame(curves)
    assert frame["format_compliance"].between(0, 1).all()
    assert (out / "curves.csv").is_file() and not (out / ".adapter-staging").exists()
    record = json.loads((out / "stage.json").read_text())
    assert record["complete"] and record["settings"]["grpo"]["reward_model"] == "random"
    assert record["objective"]["beta_kl"] == p.grpo.config.beta == 0.04 and record["objective"]["loss_type"] == "grpo"
    assert json.loads((out / "grpo_config.json").read_text())["num_generations"] == p.grpo.config.num_generations


def test_finished_run_is_skipped(trained, capsys):
    p, result = trained
    again = grpo.train_policy(p)
    assert again.skipped and again.global_step == result.global_step
    # the module entry point (what `accelerate launch -m rlff_utils.grpo` runs) reaches the same run
    argv = ["--params", p.source, "--set", f"output_root={p.output_root}", "--set", "grpo.reward_model=random"]
    assert grpo.main(argv) == 0
    assert "already trained" in capsys.readouterr().out


def test_resume_from_last_checkpoint(trained, tmp_path):
    """Simulate a run killed after step 1: only checkpoint-1 survives. The rerun resumes there,
    trains the remaining step and keeps the first step's log."""
    p, _ = trained
    p2 = load_params(p.source, {"output_root": str(tmp_path / "outputs"), "grpo.reward_model": "random"})
    shutil.copytree(p.run_dir / "data", p2.run_dir / "data")
    src, dst = runs.layout(p).stage(runs.POLICY), runs.layout(p2).stage(runs.POLICY)
    dst.mkdir(parents=True)
    record = json.loads((src / "stage.json").read_text())
    runs.write_json({**record, "complete": False}, dst / "stage.json")  # killed: never completed
    shutil.copytree(src / "checkpoints" / "checkpoint-1", dst / "checkpoints" / "checkpoint-1")
    first = json.loads((src / "log_history.json").read_text())[0]

    # settings that change what is trained refuse to resume
    changed = load_params(p.source, {"output_root": str(tmp_path / "outputs"), "grpo.reward_model": "random",
                                     "grpo.trainer.learning_rate": 1.0})
    with pytest.raises(runs.StaleStageError, match="learning_rate"):
        grpo.train_policy(changed)

    result = grpo.train_policy(p2)
    assert result.global_step == p2.grpo.config.max_steps
    summary = json.loads((dst / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-1")
    history = json.loads((dst / "log_history.json").read_text())
    assert history[0] == first  # step 1 comes from the checkpoint, not from a new step 1
    assert [h["step"] for h in history if "reward" in h] == [1, 2]
    assert (dst / "adapter" / "adapter_config.json").is_file()


def test_saved_adapter_loads_and_generates(trained):
    p, result = trained
    model, tok = grpo.load_policy(p)
    assert type(model).__name__.startswith("Peft")
    prompts = [[{"role": "user", "content": "I feel lonely since I moved."}]]
    texts = grpo.generate(model, tok, prompts, max_new_tokens=6, temperature=1.0, seed=0)
    assert len(texts) == 1 and isinstance(texts[0], str)
    merged, _ = grpo.load_policy(p, merge=True)
    assert not type(merged).__name__.startswith("Peft")
    with pytest.raises(FileNotFoundError, match="notebook 04"):
        grpo.load_policy(p, adapter_dir=p.run_dir / "nowhere")


def test_grpo_with_merged_generation_trains_the_adapter_and_keeps_the_base(tmp_path, data_dir, project_root,
                                                                         monkeypatch):
    """Two real GRPO steps (the second samples through a non-zero update) sampling through the merged weights: the adapter learns, generation did
    run inside the merge, and the in-process base weights the next step trains on are the
    original ones bit for bit."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlff_utils.data import prepare_data
    from rlff_utils.models import resolve_model

    p = load_params(project_root / "params" / "ci.yaml", {
        "output_root": str(tmp_path / "outputs"), "grpo.reward_model": "random",
        "grpo.merge_adapter_for_generation": True, "grpo.trainer.max_steps": 2})
    prepare_data(p)
    seen, merges = {}, []
    original_class, original_ctx = grpo.trainer_class, grpo.merged_adapter

    def capturing(params):
        cls = original_class(params)

        class Capturing(cls):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                seen["trainer"] = self
        return Capturing

    def counting(model):
        merges.append(type(model).__name__)
        return original_ctx(model)

    monkeypatch.setattr(grpo, "trainer_class", capturing)
    monkeypatch.setattr(grpo, "merged_adapter", counting)
    result = grpo.train_policy(p)
    assert result.global_step == 2 and len(merges) >= 2 and merges and merges[0].startswith("Peft")
    tensors = _lora_tensors(result.adapter_dir)
    assert any(t.abs().max().item() > 0 for k, t in tensors.items() if "lora_B" in k)
    record = json.loads((runs.layout(p).stage(runs.POLICY) / "stage.json").read_text())
    assert record["settings"]["grpo"]["merge_adapter_for_generation"] is True
    reference = AutoModelForCausalLM.from_pretrained(resolve_model(p.models.policy.name)).state_dict()
    trained = seen["trainer"].accelerator.unwrap_model(seen["trainer"].model).get_base_model().state_dict()
    plain = {k.replace(".base_layer", ""): v for k, v in trained.items() if "lora_" not in k}
    assert set(reference) <= set(plain)
    assert all(torch.equal(reference[k], plain[k].to(reference[k].dtype)) for k in reference)


def test_the_colocated_vllm_engine_is_built_with_a_stdout_that_has_a_descriptor(monkeypatch):
    """vLLM redirects the stdout descriptor while it builds its process groups; a Jupyter
    kernel's stdout has none (notebook 04 failed with io.UnsupportedOperation: fileno)."""
    import io
    import sys
    from types import SimpleNamespace

    class KernelStream(io.StringIO):  # like ipykernel's OutStream: text, no descriptor
        def fileno(self):
            raise io.UnsupportedOperation("fileno")

    kernel = KernelStream()
    monkeypatch.setattr(sys, "stdout", kernel)
    with grpo.stdout_with_a_file_descriptor(SimpleNamespace(use_vllm=True)):
        assert sys.stdout.fileno() >= 0
    assert sys.stdout is kernel
    with grpo.stdout_with_a_file_descriptor(SimpleNamespace(use_vllm=False)):
        assert sys.stdout is kernel  # without vLLM nothing changes
