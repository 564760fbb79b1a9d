"""Backends: hf on the tiny model (shapes, seeds, padding, choice scoring, engine sharing) and
openai over real HTTP on loopback against a server started here (answers, n samples, timeouts,
5xx then success, persistent failure, malformed replies, a server that ignores n) and against a
real `transformers serve` running the tiny model."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlff_utils import backends
from rlff_utils.backends import openai_api
from rlff_utils.backends import BackendError, get_backend, trim_at_stop
from rlff_utils.params import ModelRole, ParamsError, load_params

CONV_A = [{"role": "system", "content": "You are kind."}, {"role": "user", "content": "I feel sad today."}]
CONV_B = [
    {"role": "system", "content": "You are a supportive listener who answers in one sentence."},
    {"role": "user", "content": "My exams went badly and my parents are upset with me, I do not know what to do."},
    {"role": "assistant", "content": "That sounds really stressful."},
    {"role": "user", "content": "It is."},
]


# ---- hf ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_path, device):
    return get_backend(ModelRole(name="tiny-random-smollm2", temperature=1.0, max_new_tokens=8, batch_size=4,
                                 device=device))


def test_hf_generate_shape_and_seed_determinism(tiny):
    out = tiny.generate([CONV_A, CONV_B], n=3, seed=11)
    assert len(out) == 2 and all(len(s) == 3 for s in out) and all(isinstance(x, str) for s in out for x in s)
    assert tiny.generate([CONV_A, CONV_B], n=3, seed=11) == out
    assert tiny.generate([CONV_A, CONV_B], n=3, seed=12) != out
    assert tiny.stats.generated_tokens > 0 and tiny.stats.calls >= 3


def test_hf_samples_share_one_prompt_pass(tiny):
    """n samples from one cached prompt pass = transformers' num_return_sequences, draw for draw."""
    import torch

    eng = tiny.engine
    enc = eng.encode(eng.tokenizer([eng.prompt_text(c) for c in (CONV_A, CONV_B)], add_special_tokens=False)["input_ids"])
    kw = dict(max_new_tokens=6, do_sample=True, top_k=0, eos_token_id=eng.end_ids, pad_token_id=eng.tokenizer.pad_token_id)
    with torch.inference_mode():
        torch.manual_seed(3)
        ref = eng.model.generate(**enc, num_return_sequences=3, **kw)
        torch.manual_seed(3)
        got = eng.generate_shared_prefix(enc, 3, {**kw, "num_return_sequences": 3})
    assert torch.equal(ref, got)


def test_hf_per_row_seeds_do_not_depend_on_the_batch(tiny, device):
    """A conversation with a given seed gets the same samples alone or among others (other
    lengths, so other padding and positions in the length-sorted batch), with or without the
    shared prompt pass; its n samples are distinct draws, sample s the same whatever n is."""
    wide = get_backend(ModelRole(name="tiny-random-smollm2", temperature=1.0, max_new_tokens=8, batch_size=16,
                                 device=device))
    assert wide.engine is tiny.engine
    alone = wide.generate([CONV_A], n=3, seeds=[7])[0]
    batch = wide.generate([CONV_B, CONV_A, CONV_B[:2]], n=3, seeds=[1, 7, 2])
    assert batch[1] == alone and len(set(alone)) == 3
    assert batch[0] != batch[2]  # other seeds, other samples
    assert wide.generate([CONV_A], n=1, seeds=[7])[0] == alone[:1]
    assert tiny.generate([CONV_B, CONV_A], n=3, seeds=[5, 7])[1] == alone  # batch_size 4: one row per chunk
    wide.share_prompt_pass = False  # every sample re-reads its prompt: the same draws
    try:
        assert wide.generate([CONV_B, CONV_A], n=3, seeds=[5, 7])[1] == alone
    finally:
        wide.share_prompt_pass = True
    # a single seed means seed + i for conversation i
    assert wide.generate([CONV_B, CONV_A], n=3, seed=6)[1] == alone
    with pytest.raises(ValueError, match="2 seeds for 1 conversations"):
        wide.generate([CONV_A], seeds=[1, 2])
    with pytest.raises(ValueError, match="seed or seeds"):
        wide.generate([CONV_A], seed=1, seeds=[1])


def test_hf_static_kv_cache_draws_the_same_samples(tiny, device):
    """The fast path (a preallocated cache, compiled on a GPU) changes where keys and values live,
    not what is sampled: same seeds, same replies as the dynamic cache; greedy too."""
    static = get_backend(ModelRole(name="tiny-random-smollm2", temperature=1.0, max_new_tokens=8, batch_size=16,
                                   device=device, kv_cache="static"))
    dynamic = get_backend(ModelRole(name="tiny-random-smollm2", temperature=1.0, max_new_tokens=8, batch_size=16,
                                    device=device))
    assert static.engine is dynamic.engine
    model, seen = static.engine.model, []
    real_generate = model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("cache_implementation"))
        return real_generate(*args, **kwargs)

    convs = [CONV_B, CONV_A, CONV_B[:2]]
    model.generate = spy
    try:
        static.generate(convs[:1], n=2, seeds=[1])
        dynamic.generate(convs[:1], n=2, seeds=[1])
    finally:
        del model.generate
    assert seen == ["static", None]  # the setting reaches transformers; the default leaves it alone
    assert static.generate(convs, n=3, seeds=[1, 7, 2]) == dynamic.generate(convs, n=3, seeds=[1, 7, 2])
    assert static.generate(convs, temperature=0.0) == dynamic.generate(convs, temperature=0.0)
    with pytest.raises(ValueError, match="kv_cache.*hf backend"):
        ModelRole(name="gpt-4o", backend="openai", kv_cache="static")


def test_hf_unseeded_sampling_follows_torch_rng(tiny):
    import torch

    torch.manual_seed(0)
    first = tiny.generate([CONV_A], n=2)
    torch.manual_seed(0)
    assert tiny.generate([CONV_A], n=2) == first
    assert tiny.generate([CONV_A], n=2) != first


def test_hf_chunking_by_batch_size(tiny):
    convs = [CONV_A, CONV_B, CONV_A, CONV_B, CONV_A]
    out = tiny.generate(convs, n=2, seed=1)  # batch_size 4 / n 2: three chunks
    assert len(out) == 5 and all(len(s) == 2 for s in out)


def test_hf_greedy_repeats_one_sample_and_left_padding_is_invisible(tiny):
    alone = tiny.generate([CONV_A], n=2, temperature=0.0)
    padded = tiny.generate([CONV_A, CONV_B], n=2, temperature=0.0)  # CONV_A gets left padding here
    assert alone[0][0] == alone[0][1]
    assert padded[0] == alone[0]


def test_hf_rows_grouped_by_length_come_back_in_input_order(tiny_model_path, device):
    """Batches are formed from length-sorted rows (little padding); answers keep the input order."""
    from rlff_utils.backends.hf import _by_length

    assert _by_length([5, 2, 9, 2]) == [1, 3, 0, 2]
    small = get_backend(ModelRole(name="tiny-random-smollm2", temperature=0.0, max_new_tokens=6, batch_size=1,
                                  device=device))
    convs = [CONV_B, CONV_A, CONV_B[:2]]  # long, short, middle: sorted chunks run short first
    together = small.generate(convs)
    assert together == [small.generate([c])[0] for c in convs]
    choices = ["worse", "same", "better", "solved"]
    rows = small.score_choices(convs, choices)
    for c, r in zip(convs, rows):
        assert small.score_choices([c], choices)[0] == pytest.approx(r, abs=1e-6)
    assert rows[0] != pytest.approx(rows[1], abs=1e-3)  # distinct inputs, so order is observable


def test_hf_score_choices(tiny):
    choices = ["worse", "same", "better", "solved"]  # "worse" is two tokens: the general path
    rows = tiny.score_choices([CONV_A, CONV_B], choices)
    assert len(rows) == 2 and all(len(r) == 4 and sum(r) == pytest.approx(1.0) for r in rows)
    # batching and padding do not change a conversation's scores
    assert tiny.score_choices([CONV_B], choices)[0] == pytest.approx(rows[1], abs=1e-5)
    # the one-token fast path agrees with the general path on the odds between two choices
    fast = tiny.score_choices([CONV_A], ["same", "better"])[0]
    # (float32: the two paths run different kernels; they differ by ~2e-4 here, a wrong token by far more)
    assert fast[0] / fast[1] == pytest.approx(rows[0][1] / rows[0][2], rel=1e-3)


def test_hf_score_choices_matches_a_plain_forward_pass(tiny):
    """The cached multi-token path equals log p(choice | prompt) read off one unpadded pass."""
    import torch

    eng, tok = tiny.engine, tiny.engine.tokenizer
    choices = ["worse", "Same", "better", "not at all"]
    rows = tiny.score_choices([CONV_B, CONV_A], choices)
    for conv, row in ((CONV_A, rows[1]), (CONV_B, rows[0])):
        prompt = tok(eng.prompt_text(conv), add_special_tokens=False)["input_ids"]
        logps = []
        for c in choices:
            cid = tok(c, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                logits = eng.model(input_ids=torch.tensor([prompt + cid], device=eng.device)).logits[0].float()
            lp = torch.log_softmax(logits, -1)
            logps.append(sum(float(lp[len(prompt) - 1 + k, t]) for k, t in enumerate(cid)))
        ref = torch.softmax(torch.tensor(logps), 0).tolist()
        assert row == pytest.approx(ref, abs=1e-4)


def test_engines_are_shared_between_roles(tiny, device):
    other = get_backend(ModelRole(name="tiny-random-smollm2", temperature=0.2, max_new_tokens=4, batch_size=4,
                                  device=device))
    assert other.engine is tiny.engine and other is not tiny and other.role.temperature == 0.2


def test_trim_at_stop():
    assert trim_at_stop("Hi there.\nSeeker: more", ["\nSeeker:", "###"]) == "Hi there."
    assert trim_at_stop(" plain ", None) == "plain"


def test_vllm_missing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, as on a machine without it
    with pytest.raises(BackendError, match="needs the vllm package.*install_vllm_cpu"):
        get_backend(ModelRole(backend="vllm", name="tiny-random-smollm2"))


def test_probs_without_logprobs_refused_at_validation(tmp_path, data_dir, project_root):
    overrides = {"output_root": str(tmp_path), "models.critic": {"backend": "openai", "name": "gpt-4o"},
                 "simulation.critic_mode": "probs"}
    with pytest.raises(ParamsError, match="logprobs"):
        load_params(project_root / "params" / "ci.yaml", overrides)


# ---- openai over real HTTP ----------------------------------------------------------------------


class FakeEndpoint(BaseHTTPRequestHandler):
    """OpenAI chat-completions on loopback. The last message's content picks the behaviour:
    ``slow:<s>``, ``slow-once:<id>:<s>``, ``fail-once:<id>``, ``fail-always``, ``malformed-once:<id>``
    (a body that is not JSON), ``malformed-always``, ``no-choices``, ``null-content``, else an answer.
    ``state["ignore_n"]``: answer one choice whatever ``n`` asks, its text naming the request's seed
    (as ``transformers serve`` and llama.cpp do)."""

    state: dict = {}
    lock = threading.Lock()

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, payload: dict | bytes) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if code >= 500:
                self.send_header("retry-after-ms", "20")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to answer

    def do_POST(self):  # noqa: N802
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        st = self.state
        with self.lock:
            st["requests"] += 1
            st["in_flight"] += 1
            st["max_in_flight"] = max(st["max_in_flight"], st["in_flight"])
            st["bodies"].append(req)
        try:
            self._answer(req)
        finally:
            with self.lock:
                st["in_flight"] -= 1

    def _answer(self, req: dict) -> None:
        text = req["messages"][-1]["content"]
        st = self.state
        if text.startswith("slow:"):
            time.sleep(float(text.split(":")[1]))
        elif text.startswith("slow-once:"):
            _, key, secs = text.split(":")
            with self.lock:
                first = key not in st["seen"]
                st["seen"].add(key)
            if first:
                time.sleep(float(secs))
        elif text.startswith("fail-once:"):
            with self.lock:
                first = text not in st["seen"]
                st["seen"].add(text)
            if first:
                return self._send(500, {"error": {"message": "transient", "type": "server_error"}})
        elif text == "fail-always":
            return self._send(503, {"error": {"message": "overloaded", "type": "server_error"}})
        elif text.startswith("malformed-once:") or text == "malformed-always":
            with self.lock:
                first = text not in st["seen"]
                st["seen"].add(text)
            if first or text == "malformed-always":
                return self._send(200, b'{"id": "cmpl-1", "choices": [{"index": 0, "mess')
        elif text == "no-choices":
            return self._send(200, {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": req["model"]})
        time.sleep(0.05)  # long enough for concurrent requests to overlap
        n = 1 if st.get("ignore_n") else req.get("n", 1)
        choices = []
        for i in range(n):
            content = f"re:{text}#s{req.get('seed')}" if st.get("ignore_n") else f"re:{text}#{i}"
            choice = {"index": i, "message": {"role": "assistant", "content": None if text == "null-content" else content},
                      "finish_reason": "stop", "logprobs": None}
            if req.get("logprobs"):
                tops = [("better", 0.5), (" solved", 0.2), ("s", 0.1), ("worse", 0.1), ("Hmm", 0.1)]
                lp = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in tops]
                choice["logprobs"] = {"content": [{"token": "better", "logprob": math.log(0.5), "bytes": None,
                                                   "top_logprobs": lp}]}
            choices.append(choice)
        self._send(200, {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": req["model"],
                         "choices": choices, "usage": {"prompt_tokens": 7, "completion_tokens": 3 * n,
                                                       "total_tokens": 7 + 3 * n}})


@pytest.fixture()
def endpoint(monkeypatch):
    FakeEndpoint.state = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "seen": set(), "bodies": []}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeEndpoint)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("RLFF_TEST_KEY", "sk-test")
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", FakeEndpoint.state
    server.shutdown()
    server.server_close()


def _role(url: str, **kw) -> ModelRole:
    base = dict(backend="openai", name="fake-model", base_url=url, api_key_env="RLFF_TEST_KEY",
                timeout_s=2.0, max_retries=2, concurrency=3, max_new_tokens=16)
    return ModelRole(**{**base, **kw})


def _user(text: str) -> list[dict]:
    return [{"role": "system", "content": "s"}, {"role": "user", "content": text}]


def test_openai_answers_with_n_samples_and_capped_concurrency(endpoint):
    url, state = endpoint
    b = get_backend(_role(url))
    convs = [_user(f"hello {i}") for i in range(8)]
    out = b.generate(convs, n=2, temperature=0.3, seed=5, stop=["\nSeeker:"])
    assert out == [[f"re:hello {i}#0", f"re:hello {i}#1"] for i in range(8)]
    assert state["requests"] == 8 and 1 < state["max_in_flight"] <= 3
    body = state["bodies"][0]
    assert body["n"] == 2 and body["temperature"] == 0.3 and body["max_tokens"] == 16 and body["stop"] == ["\nSeeker:"]
    assert sorted(x["seed"] for x in state["bodies"]) == list(range(5, 13))  # one seed per conversation
    assert b.stats.generated_tokens == 8 * 6 and b.stats.prompt_tokens == 8 * 7


def test_openai_one_seed_per_conversation(endpoint):
    url, state = endpoint
    get_backend(_role(url)).generate([_user("a"), _user("b"), _user("c")], seeds=[41, 7, 41])
    assert {x["messages"][-1]["content"]: x["seed"] for x in state["bodies"]} == {"a": 41, "b": 7, "c": 41}


def test_openai_5xx_then_success(endpoint):
    url, state = endpoint
    out = get_backend(_role(url)).generate([_user("fail-once:a"), _user("fail-once:b")])
    assert out == [["re:fail-once:a#0"], ["re:fail-once:b#0"]]
    assert state["requests"] == 4  # each retried once by the client


def test_openai_slow_answer_past_timeout_is_retried(endpoint):
    url, state = endpoint
    out = get_backend(_role(url, timeout_s=0.5, max_retries=1)).generate([_user("slow-once:x:1.5")])
    assert out == [["re:slow-once:x:1.5#0"]] and state["requests"] == 2


def test_openai_always_slow_fails_clearly_and_boundedly(endpoint):
    url, _ = endpoint
    b = get_backend(_role(url, timeout_s=0.3, max_retries=1))
    t0 = time.perf_counter()
    with pytest.raises(BackendError) as err:
        b.generate([_user("slow:3")])
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert url in msg and "1 of 1 requests failed" in msg and "Timeout" in msg


def test_openai_persistent_failure_is_a_clear_error(endpoint):
    url, state = endpoint
    b = get_backend(_role(url, max_retries=2, concurrency=2))
    with pytest.raises(BackendError) as err:
        b.generate([_user("fail-always") for _ in range(5)])
    msg = str(err.value)
    assert url in msg and "requests failed after 2 retries" in msg and "503" in msg
    assert state["requests"] <= 5 * 3  # bounded: no endless loop


def test_openai_score_choices_needs_logprobs(endpoint):
    url, state = endpoint
    with pytest.raises(BackendError, match="logprobs"):
        get_backend(_role(url)).score_choices([_user("x")], ["better", "worse"])
    rows = get_backend(_role(url, logprobs=True)).score_choices([_user("x")], ["worse", "same", "better", "solved"])
    # "s" begins two choices and "Hmm" none: both ignored; the rest renormalised
    assert rows[0] == pytest.approx([0.1 / 0.8, 0.0, 0.5 / 0.8, 0.2 / 0.8])
    assert state["bodies"][-1]["top_logprobs"] == 20 and state["bodies"][-1]["max_tokens"] == 1


def test_openai_malformed_reply_is_retried_then_a_clear_error(endpoint):
    url, state = endpoint
    b = get_backend(_role(url, max_retries=2))
    assert b.generate([_user("malformed-once:a")]) == [["re:malformed-once:a#0"]]
    assert state["requests"] == 2
    for text, words in [("malformed-always", "the reply is not valid JSON"), ("no-choices", "no choices in the reply"),
                        ("null-content", "choice 0 has no text content")]:
        before = state["requests"]
        with pytest.raises(BackendError) as err:
            b.generate([_user(text)])
        msg = str(err.value)
        assert url in msg and "fake-model" in msg and "malformed reply after 3 attempts" in msg and words in msg, msg
        assert state["requests"] - before == 3  # retried like a transient failure, boundedly
        assert isinstance(err.value.__cause__, BackendError)


def test_openai_endpoint_that_ignores_n_gets_separate_seeded_requests(endpoint, caplog):
    url, state = endpoint
    state["ignore_n"] = True
    b = get_backend(_role(url, concurrency=2))
    with caplog.at_level("WARNING", logger="rlff_utils.backends"):
        out = b.generate([_user("a"), _user("b")], n=3, seed=5)
    seeds = {5: [5, openai_api._sample_seed(5, 1), openai_api._sample_seed(5, 2)],
             6: [6, openai_api._sample_seed(6, 1), openai_api._sample_seed(6, 2)]}
    assert out == [[f"re:a#s{x}" for x in seeds[5]], [f"re:b#s{x}" for x in seeds[6]]]
    assert len(set(seeds[5] + seeds[6])) == 6
    assert b.ignores_n and sum("ignores n" in r.message for r in caplog.records) == 1  # logged once
    assert state["requests"] == 6 and b.stats.sequences == 6 and b.stats.generated_tokens == 6 * 3
    # known now: one request per sample from the start, the same samples for the same seeds
    before = state["requests"]
    assert b.generate([_user("a"), _user("b")], n=3, seed=5) == out
    assert state["requests"] - before == 6 and all(x["n"] == 1 for x in state["bodies"][before:])
    assert b.generate([_user("a")], n=1, seed=9) == [["re:a#s9"]]


@pytest.fixture(scope="module")
def transformers_serve(tiny_model_path, tmp_path_factory):
    """`transformers serve` on loopback with the tiny model, sampling (its generation config sets
    do_sample; the server takes temperature and seed from each request, and ignores n)."""
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        pytest.skip("transformers serve cannot start: pip install 'transformers[serving]' (the dev extra has it)")
    model = tmp_path_factory.mktemp("served") / "tiny-sampling"
    model.mkdir()
    for f in os.listdir(tiny_model_path):
        if f != "generation_config.json":
            os.symlink(os.path.join(tiny_model_path, f), model / f)
    gen = json.loads(open(os.path.join(tiny_model_path, "generation_config.json")).read())
    (model / "generation_config.json").write_text(json.dumps({**gen, "do_sample": True, "top_k": 0}))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", str(model), "--host",
                                 "127.0.0.1", "--port", str(port), "--device", "cpu"], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"transformers serve did not start (exit {proc.poll()}): {log.read_text()[-800:]}")
            time.sleep(0.5)
        yield f"{url}/v1", str(model)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_openai_against_transformers_serve(transformers_serve, monkeypatch, caplog):
    """A real OpenAI-compatible server that ignores n: votes-sized samples still come back, one
    seeded request each, the same for the same seed."""
    url, model = transformers_serve
    monkeypatch.setenv("RLFF_TEST_KEY", "sk-local")
    role = _role(url, name=model, timeout_s=120, max_retries=1, concurrency=1, max_new_tokens=6, temperature=1.0)
    b = get_backend(role)
    assert len(b.generate([CONV_A])[0]) == 1 and not b.ignores_n
    with caplog.at_level("WARNING", logger="rlff_utils.backends"):
        out = b.generate([CONV_A, CONV_B], n=3, seed=7)
    assert [len(s) for s in out] == [3, 3] and all(isinstance(x, str) for s in out for x in s)
    assert b.ignores_n and sum("ignores n" in r.message for r in caplog.records) == 1
    assert len({x for s in out for x in s}) > 1  # separate seeds, separate samples
    assert b.generate([CONV_A, CONV_B], n=3, seed=7) == out  # seeded server: reproducible
    assert b.stats.sequences == 1 + 6 + 6 and b.stats.generated_tokens > 0


def test_openai_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("RLFF_ABSENT_KEY", raising=False)
    with pytest.raises(BackendError, match="RLFF_ABSENT_KEY"):
        get_backend(_role("http://127.0.0.1:9/v1", api_key_env="RLFF_ABSENT_KEY"))


def test_clear_backends_drops_engines(tiny):
    assert backends._ENGINES
    backends.clear_backends()
    assert not backends._ENGINES


@pytest.mark.parametrize("paper", sorted(p for p in (Path(__file__).resolve().parents[1] / "params").glob("paper_*.yaml")
                                         if p.stem != "paper_check"),  # the engines' check serves SmolLM2
                         ids=lambda p: p.name)
def test_paper_files_reach_their_simulator_endpoint(endpoint, monkeypatch, paper):
    """`${SIM_BASE_URL:-...}` in the real paper files is expanded at load: the simulator and the
    critic built from them talk to the server it names (here a loopback one)."""
    from rlff_utils.critic import LLMCritic
    from rlff_utils.params import load_params

    url, state = endpoint
    monkeypatch.setenv("SIM_BASE_URL", url)
    monkeypatch.setenv("SIM_API_KEY", "EMPTY")
    p = load_params(paper, check_files=False)
    assert p.models.user_sim.base_url == p.models.critic.base_url == url
    out = get_backend(p.models.user_sim).generate([_user("hello")], n=1)
    assert out == [["re:hello#0"]]
    critic = LLMCritic(get_backend(p.models.critic), "probs", threshold=0.5)
    [verdict] = critic.judge([{"history": [{"speaker": "seeker", "text": "better now", "strategy": None}]}])
    assert verdict.score > 0  # "better" was the most likely label the endpoint reported
    assert state["requests"] == 2 and all(b["model"] == "Qwen/Qwen2.5-72B-Instruct" for b in state["bodies"])
