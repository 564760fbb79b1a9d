"""hf: transformers in-process (CPU or GPU), left-padded batches, per-row seeded sampling."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..sampling import RowSampler, sample_seed
from .base import (
    BackendError,
    BackendStats,
    Conversation,
    _row_seeds,
    _softmax,
    fit_conversations,
    trim_at_stop,
    window_limit,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..params import ModelRole



class HFEngine:
    """A loaded model + tokenizer, shared by every role that names it."""

    def __init__(self, name: str, device: str = "auto", dtype: str = "auto", adapter: str | None = None):
        from ..models import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(name, device=device, dtype=dtype, adapter=adapter)
        self.device = next(self.model.parameters()).device
        tok = self.tokenizer
        ends = {tok.eos_token_id, self.model.generation_config.eos_token_id}
        for t in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"):
            tid = tok.convert_tokens_to_ids(t)
            if isinstance(tid, int) and tid != tok.unk_token_id:
                ends.add(tid)
        flat: set[int] = set()
        for e in ends:
            if isinstance(e, int):
                flat.add(e)
            elif e is not None:
                flat.update(e)
        self.end_ids = sorted(flat)

    def prompt_text(self, conversation: Conversation) -> str:
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, conversation: Conversation) -> int:
        return len(self.tokenizer(self.prompt_text(conversation), add_special_tokens=False)["input_ids"])

    @property
    def window(self) -> int | None:
        """The model's context window: its position embeddings, or the tokenizer's limit if smaller."""
        sizes = [getattr(self.model.config, "max_position_embeddings", None), self.tokenizer.model_max_length]
        sizes = [int(x) for x in sizes if isinstance(x, (int, float)) and 0 < x < 10**8]
        return min(sizes) if sizes else None

    def encode(self, token_ids: list[list[int]]):
        """Left-padded batch tensors on the model's device from already tokenised rows."""
        return self.tokenizer.pad({"input_ids": token_ids}, padding=True, return_tensors="pt").to(self.device)

    def generate_shared_prefix(self, enc, k: int, kwargs: dict[str, Any]):
        """``generate`` with ``k`` samples per prompt, reading each prompt once: the prompts
        (all but their last token) are run through the model a single time and their KV cache is
        repeated k times, where ``num_return_sequences=k`` would re-read every prompt k times.
        Same samples for the same seed (the RNG sees the same [rows x vocab] draws)."""
        ids, mask = enc["input_ids"], enc["attention_mask"]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True,
                         logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_repeat_interleave(k)
        kwargs = {**kwargs, "num_return_sequences": 1}
        return self.model.generate(input_ids=ids.repeat_interleave(k, 0), attention_mask=mask.repeat_interleave(k, 0),
                                   past_key_values=cache, **kwargs)

    def choice_logprobs(self, prompts: list[list[int]], choices: list[list[int]]) -> list[list[float]]:
        """log p(choice | prompt) for every prompt x choice: one forward pass over the
        (left-padded) prompts, then, for choices of several tokens, one pass over the choice
        tokens on top of the prompts' KV cache (repeated per choice) instead of re-reading each
        prompt once per choice. Positions count from each row's first real token, so padding
        never shifts the model's view."""
        import torch

        m = len(choices)
        dev = self.device
        enc = self.encode(prompts)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
            scores = first[:, [c[0] for c in choices]].clone()  # [B, m]
            rest = max(len(c) for c in choices) - 1
            if rest:
                cache = out.past_key_values
                cache.batch_repeat_interleave(m)
                b = len(prompts)
                cont = torch.full((b * m, rest), self.tokenizer.pad_token_id, dtype=torch.long, device=dev)
                cont_mask = torch.zeros((b * m, rest), dtype=torch.long, device=dev)
                for j, c in enumerate(choices):
                    if len(c) > 1:
                        cont[j::m, : len(c) - 1] = torch.tensor(c[:-1], device=dev)
                        cont_mask[j::m, : len(c) - 1] = 1
                lengths = mask.sum(-1).repeat_interleave(m)
                cont_pos = lengths[:, None] + torch.arange(rest, device=dev)[None, :]
                full_mask = torch.cat([mask.repeat_interleave(m, dim=0), cont_mask], dim=1)
                out2 = self.model(input_ids=cont, attention_mask=full_mask, position_ids=cont_pos,
                                  past_key_values=cache, use_cache=False)
                lp = torch.log_softmax(out2.logits.float(), dim=-1)  # [B*m, rest, V]
                for j, c in enumerate(choices):
                    for k, tok in enumerate(c[1:]):
                        scores[:, j] += lp[j::m, k, tok]
        return scores.cpu().tolist()


class HFBackend:
    """transformers ``generate`` with left padding; every sampled row draws from its own seeded
    generator (:class:`RowSampler`), so a conversation's samples are the same alone or in any
    batch, and no caller's RNG is disturbed. Unseeded calls draw the row seeds from torch's RNG."""

    def __init__(self, role: "ModelRole", engine: HFEngine, share_prompt_pass: bool = True):
        self.role, self.engine = role, engine
        self.share_prompt_pass = share_prompt_pass  # False: transformers' num_return_sequences (benchmarks)
        self.stats = BackendStats()

    def generate(self, conversations, n=1, temperature=None, max_new_tokens=None, stop=None, seed=None,
                 guided_choice=None, seeds=None) -> list[list[str]]:
        import torch

        if not conversations:
            return []
        row_seeds = _row_seeds(len(conversations), seed, seeds)
        role, eng, tok = self.role, self.engine, self.engine.tokenizer
        temperature = role.temperature if temperature is None else temperature
        max_new_tokens = max_new_tokens or role.max_new_tokens
        sample = temperature > 0
        k = n if sample else 1  # greedy samples are identical: generate once, repeat
        if sample and row_seeds is None:
            row_seeds = torch.randint(0, 2**31 - 1, (len(conversations),)).tolist()
        per_chunk = max(1, role.batch_size // k)
        conversations = fit_conversations(conversations, self.stats, eng.count_tokens,
                                          window_limit(role.max_model_len or eng.window, max_new_tokens))
        prompts = tok([eng.prompt_text(c) for c in conversations], add_special_tokens=False)["input_ids"]
        order = _by_length([len(ids) for ids in prompts])
        out: list[list[str] | None] = [None] * len(prompts)
        t0 = time.perf_counter()
        for start in range(0, len(prompts), per_chunk):
            rows_here = order[start: start + per_chunk]
            enc = eng.encode([prompts[i] for i in rows_here])
            kwargs: dict[str, Any] = dict(
                max_new_tokens=max_new_tokens,
                do_sample=False,  # sampling is RowSampler's, the last logits processor
                eos_token_id=eng.end_ids,
                pad_token_id=tok.pad_token_id,
            )
            if sample:  # rows: each conversation's k samples in a row, sample s seeded by (seed, s)
                row_sample_seeds = [sample_seed(row_seeds[i], s) for i in rows_here for s in range(k)]
                kwargs["logits_processor"] = [RowSampler(temperature, role.top_p, row_sample_seeds, eng.device)]
            if stop:
                kwargs.update(stop_strings=stop, tokenizer=tok)
            if role.kv_cache == "static":  # preallocated cache: transformers compiles the step on a GPU
                kwargs["cache_implementation"] = "static"
            with torch.inference_mode():
                # the shared prompt pass hands generate a dynamic cache; a static one builds its own
                if k > 1 and self.share_prompt_pass and role.kv_cache == "dynamic":
                    gen = eng.generate_shared_prefix(enc, k, kwargs)
                elif k > 1:  # every sample re-reads its prompt (transformers' num_return_sequences)
                    gen = eng.model.generate(input_ids=enc["input_ids"].repeat_interleave(k, 0),
                                             attention_mask=enc["attention_mask"].repeat_interleave(k, 0), **kwargs)
                else:
                    gen = eng.model.generate(**enc, **kwargs)
            new = gen[:, enc["input_ids"].shape[1]:].cpu()
            self.stats.prompt_tokens += int(enc["attention_mask"].sum())
            self.stats.generated_tokens += _count_generated(new, eng.end_ids)
            texts = tok.batch_decode(new, skip_special_tokens=True)
            texts = [trim_at_stop(t, stop) for t in texts]
            for j, i in enumerate(rows_here):
                row = texts[j * k: (j + 1) * k]
                out[i] = row if sample else row * n
        self.stats.calls += 1
        self.stats.conversations += len(conversations)
        self.stats.sequences += len(conversations) * k
        self.stats.seconds += time.perf_counter() - t0
        return out

    def score_choices(self, conversations, choices) -> list[list[float]]:
        """Sum of the choice tokens' log-probs after the generation prompt, softmax over choices
        (one pass over the prompts, plus one short pass on their cache for multi-token choices)."""
        if not conversations:
            return []
        eng, tok, bs = self.engine, self.engine.tokenizer, self.role.batch_size
        t0 = time.perf_counter()
        cids = [tok(c, add_special_tokens=False)["input_ids"] for c in choices]
        if any(not c for c in cids):
            raise BackendError(f"a choice tokenises to nothing: {choices!r}")
        conversations = fit_conversations(conversations, self.stats, eng.count_tokens, window_limit(
            self.role.max_model_len or eng.window, max(len(c) for c in cids)))
        prompts = [tok(eng.prompt_text(c), add_special_tokens=False)["input_ids"] for c in conversations]
        rows: list[list[float]] = [[] for _ in prompts]
        order = _by_length([len(p) for p in prompts])
        for s in range(0, len(prompts), bs):
            chunk = order[s: s + bs]
            for i, r in zip(chunk, eng.choice_logprobs([prompts[i] for i in chunk], cids)):
                rows[i] = _softmax(r)
        self.stats.calls += 1
        self.stats.conversations += len(conversations)
        self.stats.prompt_tokens += sum(len(p) for p in prompts)
        self.stats.seconds += time.perf_counter() - t0
        return rows


def _by_length(lengths: list[int]) -> list[int]:
    """Row order for batching: similar lengths share a batch, so left padding wastes little
    compute (on CPU the prompt pass is most of the cost). Results go back in input order."""
    return sorted(range(len(lengths)), key=lambda i: (lengths[i], i))


def _count_generated(new, end_ids: list[int]) -> int:
    """Tokens really generated per row: up to and including the first end token."""
    total = 0
    ends = set(end_ids)
    for row in new.tolist():
        n = len(row)
        for i, t in enumerate(row):
            if t in ends:
                n = i + 1
                break
        total += n
    return total


