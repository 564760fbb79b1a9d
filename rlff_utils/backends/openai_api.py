"""openai: any OpenAI-compatible chat endpoint (GPT-4o, ``vllm serve``), the client's retries and timeouts."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from .base import (
    BackendError,
    BackendStats,
    Conversation,
    _row_seeds,
    fit_conversations,
    trim_at_stop,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..params import ModelRole

log = logging.getLogger(__name__)



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

    def _fit(self, conversations: list[Conversation], reserve: int) -> list[Conversation]:
        """Control strings out; with ``max_model_len`` set, the prompt within it, counted at a
        conservative 3 characters per token (the endpoint's tokenizer is not at hand)."""
        window = self.role.max_model_len
        return fit_conversations(conversations, self.stats, _estimate_tokens if window else None,
                                 max(16, window - reserve) if window else None)

    def generate(self, conversations, n=1, temperature=None, max_new_tokens=None, stop=None, seed=None,
                 guided_choice=None, seeds=None) -> list[list[str]]:
        if not conversations:
            return []
        row_seeds = _row_seeds(len(conversations), seed, seeds)
        t0 = time.perf_counter()
        temperature = self.role.temperature if temperature is None else temperature
        max_tokens = max_new_tokens or self.role.max_new_tokens
        extra = {"structured_outputs": {"choice": list(guided_choice)}} if guided_choice and self.role.structured_choice else None
        conversations = self._fit(conversations, max_tokens)

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
        conversations = self._fit(conversations, 1)

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


def _estimate_tokens(conversation: Conversation) -> int:
    return sum(len(m.get("content") or "") for m in conversation) // 3 + 8 * len(conversation)


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


