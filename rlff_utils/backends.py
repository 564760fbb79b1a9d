"""Chat generation and choice scoring over three kinds of engine, behind one small interface.

Every agent of the simulation talks to a :class:`ChatBackend`: many conversations per call
(OpenAI-style message lists), ``n`` samples each, and the probability of a fixed set of answers.
Batching is the backend's job, so the rollout engine only has to ask for whole turns.

* ``hf``: transformers in-process (CPU or GPU), left-padded batches, seeded sampling. The
  embedded default.
* ``vllm``: offline ``vllm.LLM.chat`` with one ``SamplingParams`` per request (its own seed, so a
  conversation's samples do not depend on its batch neighbours), structured-output ``choice``
  for constrained answers, prefix caching. Imported only when used; GPU only.
* ``openai``: any OpenAI-compatible chat endpoint (GPT-4o, ``vllm serve``). The client's own
  timeout and bounded retries, a thread pool capped at ``concurrency``; when requests still fail
  a :class:`BackendError` names the endpoint and the failed count. The key comes from the
  environment variable named in params.

Roles that name the same model share one loaded engine per process (see :func:`get_backend`);
the per-role settings (temperature, token limits) live on the light wrapper, not the engine.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import math
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .sampling import RowSampler, sample_seed

if TYPE_CHECKING:  # pragma: no cover
    from .params import ModelRole

Conversation = list[dict[str, str]]
log = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """A backend could not answer (endpoint down, retries exhausted, missing capability)."""


@dataclass
class BackendStats:
    """Work done by one backend wrapper, for throughput figures (not a global)."""

    calls: int = 0
    conversations: int = 0
    sequences: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    def reset(self) -> None:
        self.__init__()


@runtime_checkable
class ChatBackend(Protocol):
    stats: BackendStats

    def generate(
        self,
        conversations: list[Conversation],
        n: int = 1,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
        guided_choice: list[str] | None = None,
        seeds: list[int] | None = None,
    ) -> list[list[str]]:
        """``[conversation][sample]`` replies. ``None`` settings fall back to the role's.
        ``guided_choice``: constrain each reply to one of these strings where the engine can
        (vLLM structured outputs); other engines generate freely and callers parse.
        ``seeds``: one per conversation, so a conversation's samples depend on its own seed only,
        never on which other conversations share the call; ``seed``: conversation i gets
        ``seed + i``. Give one or the other (neither: unseeded)."""
        ...

    def score_choices(self, conversations: list[Conversation], choices: list[str]) -> list[list[float]]:
        """Per conversation, the probability of each choice as the assistant's whole answer,
        renormalised over the choices (rows sum to 1; NaN when the engine saw none of them)."""
        ...


def trim_at_stop(text: str, stop: list[str] | None) -> str:
    """Cut ``text`` at the earliest stop string (engines may overshoot by a token or more)."""
    if stop:
        cuts = [i for s in stop if s and (i := text.find(s)) >= 0]
        if cuts:
            text = text[: min(cuts)]
    return text.strip()


def _row_seeds(count: int, seed: int | None, seeds: list[int] | None) -> list[int] | None:
    """One seed per conversation from ``seeds`` (checked) or ``seed`` (+ index); None: unseeded."""
    if seeds is None:
        return None if seed is None else [seed + i for i in range(count)]
    if seed is not None:
        raise ValueError("generate: pass seed or seeds, not both")
    if len(seeds) != count:
        raise ValueError(f"generate: {len(seeds)} seeds for {count} conversations")
    return [int(s) for s in seeds]


def _softmax(logps: list[float]) -> list[float]:
    finite = [x for x in logps if math.isfinite(x)]
    if not finite:
        return [math.nan] * len(logps)
    top = max(finite)
    exps = [math.exp(x - top) if math.isfinite(x) else 0.0 for x in logps]
    total = sum(exps)
    return [e / total for e in exps]


# --------------------------------------------------------------------------------------------
# hf: transformers in-process
# --------------------------------------------------------------------------------------------


class HFEngine:
    """A loaded model + tokenizer, shared by every role that names it."""

    def __init__(self, name: str, device: str = "auto", dtype: str = "auto", adapter: str | None = None):
        from .models import load_causal_lm

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
            with torch.inference_mode():
                if k > 1 and self.share_prompt_pass:
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
        prompts = [tok(eng.prompt_text(c), add_special_tokens=False)["input_ids"] for c in conversations]
        cids = [tok(c, add_special_tokens=False)["input_ids"] for c in choices]
        if any(not c for c in cids):
            raise BackendError(f"a choice tokenises to nothing: {choices!r}")
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


# --------------------------------------------------------------------------------------------
# vllm: offline engine (GPU)
# --------------------------------------------------------------------------------------------


def _vllm_engine(role: "ModelRole", seed: int = 0):
    try:
        import vllm
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise BackendError(
            "backend 'vllm' needs the vllm package (pip install 'rlff-esc[gpu]') and a GPU"
        ) from e
    from .models import resolve_model

    kwargs: dict[str, Any] = dict(
        model=resolve_model(role.name),
        tensor_parallel_size=role.tensor_parallel_size,
        gpu_memory_utilization=role.gpu_memory_utilization,
        enable_prefix_caching=role.enable_prefix_caching,
        dtype=role.dtype,
        seed=seed,
    )
    if role.max_model_len:
        kwargs["max_model_len"] = role.max_model_len
    if role.enable_lora:
        kwargs.update(enable_lora=True, max_lora_rank=role.max_lora_rank)
    return vllm.LLM(**kwargs)


class VLLMBackend:
    """``vllm.LLM`` with one SamplingParams per conversation, each with its conversation's seed."""

    def __init__(self, role: "ModelRole", engine: Any, adapter: str | None = None):
        self.role, self.engine = role, engine
        self.stats = BackendStats()
        self.lora = None
        if adapter:
            if not role.enable_lora:
                raise BackendError(
                    f"adapter {adapter!r} on vllm model {role.name!r}: set `enable_lora: true` on that role"
                )
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest(os.path.basename(os.path.normpath(adapter)) or "adapter",
                                    _lora_id(adapter), adapter)

    def _sampling(self, n, temperature, max_new_tokens, stop, seed, guided_choice):
        from vllm import SamplingParams

        extra: dict[str, Any] = {}
        if guided_choice:
            from vllm.sampling_params import StructuredOutputsParams

            extra["structured_outputs"] = StructuredOutputsParams(choice=list(guided_choice))
        return SamplingParams(
            n=n,
            temperature=self.role.temperature if temperature is None else temperature,
            top_p=self.role.top_p,
            max_tokens=max_new_tokens or self.role.max_new_tokens,
            stop=stop or None,
            seed=seed,
            **extra,
        )

    def generate(self, conversations, n=1, temperature=None, max_new_tokens=None, stop=None, seed=None,
                 guided_choice=None, seeds=None) -> list[list[str]]:
        if not conversations:
            return []
        row_seeds = _row_seeds(len(conversations), seed, seeds)
        t0 = time.perf_counter()
        params = [
            self._sampling(n, temperature, max_new_tokens, stop, s, guided_choice)
            for s in row_seeds or [None] * len(conversations)
        ]
        outs = self.engine.chat(conversations, sampling_params=params, use_tqdm=False, lora_request=self.lora)
        result = [[trim_at_stop(o.text, stop) for o in r.outputs] for r in outs]
        self.stats.calls += 1
        self.stats.conversations += len(conversations)
        self.stats.sequences += len(conversations) * n
        self.stats.generated_tokens += sum(len(o.token_ids) for r in outs for o in r.outputs)
        self.stats.prompt_tokens += sum(len(r.prompt_token_ids or []) for r in outs)
        self.stats.seconds += time.perf_counter() - t0
        return result

    def score_choices(self, conversations, choices) -> list[list[float]]:
        """Prompt log-probs of each choice's tokens after the generation prompt."""
        from vllm import SamplingParams

        if not conversations:
            return []
        t0 = time.perf_counter()
        tok = self.engine.get_tokenizer()
        prompts = [
            tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True), add_special_tokens=False)[
                "input_ids"
            ]
            for c in conversations
        ]
        cids = [tok(c, add_special_tokens=False)["input_ids"] for c in choices]
        reqs = [{"prompt_token_ids": p + c} for p in prompts for c in cids]
        outs = self.engine.generate(reqs, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False,
                                    lora_request=self.lora)
        sums = []
        for out, (pi, c) in zip(outs, [(i, c) for i in range(len(prompts)) for c in cids]):
            plp = out.prompt_logprobs[-len(c):]
            sums.append(sum(d[t].logprob for d, t in zip(plp, c)))
        m = len(cids)
        self.stats.calls += 1
        self.stats.conversations += len(conversations)
        self.stats.seconds += time.perf_counter() - t0
        return [_softmax(sums[i * m: (i + 1) * m]) for i in range(len(prompts))]


def _lora_id(adapter: str) -> int:
    import zlib

    return 1 + zlib.crc32(os.path.abspath(adapter).encode()) % 1_000_000


# --------------------------------------------------------------------------------------------
# openai: any OpenAI-compatible endpoint
# --------------------------------------------------------------------------------------------


class OpenAIBackend:
    """One request per conversation (``n`` samples each), at most ``concurrency`` in flight.

    Retries and timeouts are the ``openai`` client's (``max_retries``, ``timeout_s``); a reply
    the client accepts but that is not JSON or lacks choices/text is retried as transient too
    (up to ``max_retries``). A request that still fails stops the call: requests not yet started
    are cancelled and a :class:`BackendError` names the endpoint, the model, how many requests
    failed and what was wrong.

    Servers that ignore ``n`` (``transformers serve``, llama.cpp) return one choice: the missing
    samples then come from separate requests, each seeded from the conversation's seed and the
    sample index, and the endpoint is remembered as ignoring ``n`` (``ignores_n``, logged once),
    so later calls ask for one sample per request directly.
    """

    def __init__(self, role: "ModelRole"):
        import openai

        self.role = role
        self.endpoint = role.base_url or "https://api.openai.com/v1"
        key = os.environ.get(role.api_key_env)
        if not key:
            raise BackendError(
                f"endpoint {self.endpoint} (model {role.name}): environment variable {role.api_key_env} "
                "is not set; put the API key there (any non-empty value for a local server)"
            )
        self.client = openai.OpenAI(
            base_url=role.base_url, api_key=key, timeout=role.timeout_s, max_retries=role.max_retries
        )
        self.stats = BackendStats()
        self.ignores_n = False
        self._lock = threading.Lock()

    def _create(self, **kwargs) -> Any:
        """One chat completion whose reply is checked: a body that is not JSON, or has no
        choices or a choice without text, is retried (like a 5xx) and then a BackendError."""
        problem = ""
        for attempt in range(self.role.max_retries + 1):
            if attempt:
                time.sleep(min(2.0, 0.25 * 2 ** (attempt - 1)))
            raw = self.client.chat.completions.with_raw_response.create(**kwargs)
            try:
                resp = raw.parse()
            except ValueError as e:  # JSONDecodeError
                problem = f"the reply is not valid JSON ({e}): {raw.http_response.text[:120]!r}"
                continue
            problem = _reply_problem(resp)
            if not problem:
                return resp
        raise BackendError(f"malformed reply after {self.role.max_retries + 1} attempts: {problem}")

    def _samples(self, kwargs: dict[str, Any], n: int, stop: list[str] | None) -> tuple[list[str], "_Usage"]:
        """``n`` replies to one conversation: one request for ``n``; when the endpoint returns
        fewer, one request per missing sample (sample 0 keeps the conversation's seed, sample
        k > 0 gets a seed derived from it and k)."""
        usage, texts = _Usage(), []
        if n == 1 or not self.ignores_n:
            resp = self._create(**kwargs)
            usage.add(resp.usage)
            texts = [trim_at_stop(c.message.content, stop) for c in sorted(resp.choices, key=lambda c: c.index or 0)][:n]
            if len(texts) < n:
                self._note_ignores_n(n, len(texts))
        for k in range(len(texts), n):
            one = {**kwargs, "n": 1}
            if kwargs.get("seed") is not None and k:
                one["seed"] = _sample_seed(kwargs["seed"], k)
            resp = self._create(**one)
            usage.add(resp.usage)
            texts.append(trim_at_stop(resp.choices[0].message.content, stop))
        return texts, usage

    def _note_ignores_n(self, asked: int, got: int) -> None:
        with self._lock:
            if self.ignores_n:
                return
            self.ignores_n = True
        log.warning("%s (model %s) ignores n: asked for %d samples, it returned %d; the missing samples come from "
                    "separate seeded requests", self.endpoint, self.role.name, asked, got)

    def _run(self, what: str, fn, items: list) -> list:
        import openai

        results: list[Any] = [None] * len(items)
        errors: list[BaseException] = []
        with ThreadPoolExecutor(max_workers=min(self.role.concurrency, max(1, len(items)))) as pool:
            futures = {pool.submit(fn, i, item): i for i, item in enumerate(items)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    if f.exception() is None:
                        results[futures[f]] = f.result()
                    else:
                        errors.append(f.exception())
                if errors:
                    for f in pending:
                        f.cancel()
                    done_late, _ = wait(pending)  # the ones already running finish or fail
                    for f in done_late:
                        if not f.cancelled() and f.exception() is not None:
                            errors.append(f.exception())
                    break
        if errors:
            not_run = sum(r is None for r in results) - len(errors)
            first = errors[0]
            kind = type(first).__name__
            if not isinstance(first, (openai.OpenAIError, BackendError)):
                raise first
            raise BackendError(
                f"{what} at {self.endpoint} (model {self.role.name}): {len(errors)} of {len(items)} requests "
                f"failed after {self.role.max_retries} retries each (timeout {self.role.timeout_s:g}s)"
                f"{f', {not_run} not attempted' if not_run > 0 else ''}; first error: {kind}: {first}"
            ) from first
        return results

    def generate(self, conversations, n=1, temperature=None, max_new_tokens=None, stop=None, seed=None,
                 guided_choice=None, seeds=None) -> list[list[str]]:
        if not conversations:
            return []
        row_seeds = _row_seeds(len(conversations), seed, seeds)
        t0 = time.perf_counter()
        temperature = self.role.temperature if temperature is None else temperature
        max_tokens = max_new_tokens or self.role.max_new_tokens
        extra = {"structured_outputs": {"choice": list(guided_choice)}} if guided_choice and self.role.structured_choice else None

        def one(i: int, conv: Conversation) -> tuple[list[str], Any]:
            kwargs: dict[str, Any] = dict(
                model=self.role.name, messages=conv, n=n, temperature=temperature, top_p=self.role.top_p,
                max_tokens=max_tokens,
            )
            if stop:
                kwargs["stop"] = stop[:4]
            if row_seeds is not None:
                kwargs["seed"] = row_seeds[i]
            if extra:
                kwargs["extra_body"] = extra
            return self._samples(kwargs, n, stop)

        results = self._run("chat completion", one, conversations)
        for _, usage in results:
            if usage is not None:
                self.stats.prompt_tokens += usage.prompt_tokens or 0
                self.stats.generated_tokens += usage.completion_tokens or 0
        self.stats.calls += 1
        self.stats.conversations += len(conversations)
        self.stats.sequences += len(conversations) * n
        self.stats.seconds += time.perf_counter() - t0
        return [texts for texts, _ in results]

    def score_choices(self, conversations, choices) -> list[list[float]]:
        """Top log-probs of the first answer token; a top token counts for the one choice it
        begins (case-sensitive); tokens that begin several choices or none are ignored."""
        if not self.role.logprobs:
            raise BackendError(
                f"endpoint {self.endpoint} (model {self.role.name}) is not marked `logprobs: true`: "
                "it cannot score choices; use critic mode 'votes' or an endpoint that returns logprobs"
            )
        if not conversations:
            return []
        t0 = time.perf_counter()

        def one(i: int, conv: Conversation) -> list[float]:
            resp = self._create(
                model=self.role.name, messages=conv, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20
            )
            content = resp.choices[0].logprobs.content if resp.choices[0].logprobs else None
            if not content:
                raise BackendError("the endpoint returned no logprobs although the role sets `logprobs: true`")
            mass = [0.0] * len(choices)
            for top in content[0].top_logprobs:
                t = top.token.strip()
                owners = [j for j, c in enumerate(choices) if t and c.startswith(t)]
                if len(owners) == 1:
                    mass[owners[0]] += math.exp(top.logprob)
            total = sum(mass)
            return [m / total for m in mass] if total > 0 else [math.nan] * len(choices)

        rows = self._run("choice scoring", one, conversations)
        self.stats.calls += 1
        self.stats.conversations += len(conversations)
        self.stats.seconds += time.perf_counter() - t0
        return rows


def _reply_problem(resp: Any) -> str:
    """What is wrong with a parsed chat completion ("" when nothing is)."""
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        return f"no choices in the reply ({type(resp).__name__}: {str(resp)[:120]!r})"
    for c in choices:
        message = getattr(c, "message", None)
        if not isinstance(getattr(message, "content", None), str):
            return f"choice {getattr(c, 'index', '?')} has no text content (message: {message!r})"
    return ""


def _sample_seed(seed: int, sample: int) -> int:
    """A stable 31-bit seed for one sample of one conversation."""
    digest = hashlib.blake2b(repr((seed, "sample", sample)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


class _Usage:
    """Token counts summed over the requests that served one conversation."""

    def __init__(self) -> None:
        self.prompt_tokens = self.completion_tokens = 0

    def add(self, usage: Any) -> None:
        if usage is not None:
            self.prompt_tokens += getattr(usage, "prompt_tokens", 0) or 0
            self.completion_tokens += getattr(usage, "completion_tokens", 0) or 0


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_ENGINES: dict[tuple, Any] = {}  # the per-process model cache

# n samples of one prompt (the critic's votes, the m candidates): read the prompt once and repeat
# its KV cache (HFEngine.generate_shared_prefix), or let transformers re-read it per sample
# (num_return_sequences). Chosen per device type:
#   cpu:  shared, measured (bench/README_simulation.md): the prompt pass dominates; votes with
#         n = 10 cost 7.0 s per judgement shared vs 28.7 s re-read (2 busy cores, fp32) and
#         1.3 vs 2.8 s (2 idle cores, bf16);
#   cuda: re-read, as reported in issue 15 for the 7B shape on an H100 (0.18 s per judgement vs
#         0.34 s shared), not measured by this project's benchmarks yet (bench/bench_simulation.py
#         measures both on the device it runs on).
SHARE_PROMPT_PASS_BY_DEVICE: dict[str, bool] = {"cpu": True, "cuda": False}


def shares_prompt_pass(device: Any) -> bool:
    """Whether the hf backend on ``device`` reads a prompt once for n samples (see above);
    device types missing from the table share (the CPU's choice)."""
    import torch

    return SHARE_PROMPT_PASS_BY_DEVICE.get(torch.device(device).type, True)


def get_backend(role: "ModelRole", adapter: str | None = None, seed: int = 0) -> ChatBackend:
    """A backend for ``role``. Engines are cached per process by (backend, name, adapter, device)
    (vLLM: by name, adapters ride per request), so roles sharing a model load it once."""
    if role.backend == "hf":
        key = ("hf", role.name, adapter, role.device, role.dtype)
        if key not in _ENGINES:
            _ENGINES[key] = HFEngine(role.name, role.device, role.dtype, adapter)
        engine = _ENGINES[key]
        return HFBackend(role, engine, share_prompt_pass=shares_prompt_pass(engine.device))
    if role.backend == "vllm":
        key = ("vllm", role.name, None, "gpu")
        if key not in _ENGINES:
            _ENGINES[key] = _vllm_engine(role, seed)
        return VLLMBackend(role, _ENGINES[key], adapter)
    if role.backend == "openai":
        if adapter:
            raise BackendError(f"an adapter cannot be attached to an API model ({role.name})")
        return OpenAIBackend(role)
    raise BackendError(f"unknown backend {role.backend!r}")


def clear_backends() -> None:
    """Drop every cached engine (and free GPU memory where there was some)."""
    _ENGINES.clear()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
