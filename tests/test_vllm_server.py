"""The openai backend against a real vLLM OpenAI-compatible server (vLLM's CPU build, SmolLM2, on
loopback; the ``vllm_server`` fixture in conftest.py), as the paper's simulator, critic and
evaluation endpoint: ``probs`` through ``logprobs``, ``votes`` with ``n = 10`` under structured
choice, per-request seeds, concurrent requests; and a simulation whose user simulator and critic
are that server while policy and system run on the in-process vllm engine (the paper's layout)."""

from __future__ import annotations

import pytest

from conftest import VLLM_MODEL, vllm_role
from rlff_utils.backends import OpenAIBackend, get_backend
from rlff_utils.params import ModelRole

pytestmark = pytest.mark.slow

CONVS = [
    [{"role": "user", "content": "I lost my job last week and I can't sleep."}],
    [{"role": "user", "content": "Is the sky blue? Answer yes or no."}],
    [{"role": "system", "content": "You are a kind listener."}, {"role": "user", "content": "My cat died."}],
    [{"role": "user", "content": "Do you like tea? Answer yes or no."}],
]


def server_role(server, **settings) -> ModelRole:
    base = dict(backend="openai", name=server.name, base_url=server.base_url, api_key_env="RLFF_TEST_SERVER_KEY",
                logprobs=True, structured_choice=True, concurrency=4, max_new_tokens=16, timeout_s=120)
    return ModelRole(**{**base, **settings})


@pytest.fixture()
def api(vllm_server, monkeypatch):
    monkeypatch.setenv("RLFF_TEST_SERVER_KEY", "EMPTY")
    return OpenAIBackend(server_role(vllm_server, temperature=1.0))


def test_health_and_log(vllm_server):
    import urllib.request

    with urllib.request.urlopen(vllm_server.base_url.removesuffix("/v1") + "/health", timeout=5) as r:
        assert r.status == 200
    assert vllm_server.log.is_file() and vllm_server.log.stat().st_size > 0


def test_per_request_seeds(api):
    first = api.generate(CONVS, n=2, seeds=[5, 6, 7, 8])
    assert [len(s) for s in first] == [2] * 4 and all(t for s in first for t in s)
    assert api.generate(CONVS, n=2, seeds=[5, 6, 7, 8]) == first
    assert api.generate(CONVS[::-1], n=2, seeds=[8, 7, 6, 5]) == first[::-1]
    assert api.generate(CONVS, n=2, seeds=[15, 16, 17, 18]) != first
    assert not api.ignores_n  # vLLM honours n


def test_concurrent_requests_equal_one_at_a_time(api, vllm_server, monkeypatch):
    serial = OpenAIBackend(server_role(vllm_server, temperature=1.0, concurrency=1))
    convs, seeds = CONVS * 2, list(range(100, 108))
    assert api.generate(convs, seeds=seeds) == serial.generate(convs, seeds=seeds)
    assert api.stats.generated_tokens > 0 and api.stats.prompt_tokens > 0


def test_votes_n10_under_structured_choice(api):
    labels = ["helped", "not helped", "unclear"]
    votes = api.generate(CONVS, n=10, seeds=[1, 2, 3, 4], guided_choice=labels, temperature=1.1)
    assert [len(v) for v in votes] == [10] * 4
    assert {v for row in votes for v in row} <= set(labels)
    assert len({v for row in votes for v in row}) > 1


YES_NO = [[{"role": "user", "content": q + " Answer yes or no."}]
          for q in ("Is the sky blue?", "Do fish fly?", "Is fire cold?", "Do you like tea?")]


def test_probs_through_logprobs_match_the_in_process_engines(api, device):
    """Where both one-token choices are among the first answer token's top 20 log-probs (all an
    OpenAI-style endpoint returns), the renormalised probabilities are the exact ones the hf backend
    computes; a choice outside the top 20 gets 0 (the method's limit, not the server's)."""
    choices = ["yes", "no"]
    rows = api.score_choices(YES_NO, choices)
    assert all(sum(r) == pytest.approx(1.0) for r in rows), rows
    reference = get_backend(vllm_role(backend="hf", device=device)).score_choices(YES_NO, choices)
    both_seen = [(got, want) for got, want in zip(rows, reference) if min(got) > 0]
    assert len(both_seen) >= 2, (rows, reference)
    for got, want in both_seen:
        assert got == pytest.approx(want, abs=1e-3), (rows, reference)
    assert max(r[0] for r in rows) - min(r[0] for r in rows) > 0.05  # the rows are not one constant


def test_simulation_with_the_server_as_simulator_and_critic(vllm_registered, vllm_server, data_dir, project_root,
                                                             tmp_path, monkeypatch):
    """Policy and system on the in-process vllm engine, user simulator and critic (votes, n = 10,
    structured choice) on the server: the stage runs, the critic's answers are all labels, and a
    second run with the same seed writes the same records."""
    from rlff_utils import runs
    from rlff_utils.data import prepare_data
    from rlff_utils.params import load_params
    from rlff_utils.simulate import run_simulation

    monkeypatch.setenv("RLFF_TEST_SERVER_KEY", "EMPTY")
    local = {f"models.{r}.{k}": v for r in ("policy", "system") for k, v in
             dict(backend="vllm", name=VLLM_MODEL, dtype="float32", max_model_len=2048, max_new_tokens=12).items()}
    served = {f"models.{r}.{k}": v for r in ("user_sim", "critic") for k, v in
              server_role(vllm_server, max_new_tokens=12 if r == "user_sim" else 8).model_dump().items()
              if k in ("backend", "name", "base_url", "api_key_env", "logprobs", "structured_choice", "concurrency",
                       "max_new_tokens")}
    sim = {"simulation.max_contexts": 2, "simulation.num_candidates": 2, "simulation.max_turns": 2,
           "simulation.critic_mode": "votes", "simulation.critic_samples": 10}

    def run(name):
        p = load_params(project_root / "params" / "ci.yaml", {"output_root": str(tmp_path / name), **local, **served, **sim})
        prepare_data(p)
        summary = run_simulation(p)
        return summary, runs.layout(p).trajectories.read_bytes()

    summary, first = run("a")
    assert summary.trajectories == 4 and summary.unparsed_answers == 0
    assert run("b")[1] == first
