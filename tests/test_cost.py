"""The cost estimate: its arithmetic by hand on params/ci.yaml, every paper file's table, dollars
only where a price is declared, and the estimate against a tiny simulation's recorded counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlff_utils import cost, runs
from rlff_utils.params import load_params

ROOT = Path(__file__).resolve().parents[1]


def _rows(params, stage):
    return {r.role: r for r in cost.estimate(params) if r.stage == stage}


def test_estimate_arithmetic_on_ci_params(tmp_path, data_dir):
    price = {"input": 2.5, "output": 10.0}
    p = load_params(ROOT / "params" / "ci.yaml", {"output_root": str(tmp_path), "models.judge.price_per_mtok": price})
    # simulation: C = 12 contexts (data.max_contexts), m = 2, T = 2, probs critic (scoring only)
    sim = _rows(p, runs.SIMULATION)
    assert (sim["policy"].requests, sim["policy"].sequences, sim["policy"].generated_tokens) == (12, 24, 24 * 16)
    assert (sim["system"].sequences, sim["system"].generated_tokens) == (12 * 2 * 1, 24 * 12)
    assert (sim["user_sim"].sequences, sim["user_sim"].generated_tokens) == (48, 48 * 12)
    assert (sim["critic"].requests, sim["critic"].sequences, sim["critic"].generated_tokens) == (48, 0, 0)
    # prompts: overhead + 30 tokens per shown turn (data.max_history_turns = 4), per request
    assert sim["user_sim"].prompt_tokens == 48 * (cost.PROMPT_OVERHEAD + 4 * cost.TOKENS_PER_TURN)
    # GRPO: max_steps 2 x per_device_train_batch_size 4 completions of up to 12 tokens
    grpo = _rows(p, runs.POLICY)["policy"]
    assert (grpo.sequences, grpo.generated_tokens) == (8, 96)
    # evaluation: 4 systems x 3 cases x 2 turns under 3 conditions; judge: 3 baselines x 2 pairs x
    # 5 criteria x 2 orders
    ev = _rows(p, runs.EVALUATION)
    assert ev["policy"].sequences == 24 and ev["eval_user_sim [sampled, cooperative]"].sequences == 24
    assert "policy [default, resistant]" in ev
    judge = ev["judge"]
    assert judge.sequences == 3 * 2 * 5 * 2 and judge.generated_tokens == 60 * 4
    assert judge.dollars == pytest.approx((judge.prompt_tokens * 2.5 + judge.generated_tokens * 10.0) / 1e6)
    assert all(r.dollars is None for r in cost.estimate(p) if r.role != "judge")  # no price assumed
    total = cost.estimate_rows(cost.estimate(p))[-1]
    assert total["stage"] == "total" and total["dollars"] == pytest.approx(judge.dollars)
    assert total["generated_tokens"] == sum(r.generated_tokens for r in cost.estimate(p))


def test_votes_on_an_api_critic_count_every_sampled_answer(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    p = load_params(ROOT / "params" / "ci.yaml", {
        "output_root": str(tmp_path), "simulation.critic_mode": "votes", "simulation.critic_samples": 5,
        "models.critic": {"backend": "openai", "name": "gpt-4o", "max_new_tokens": 3,
                          "price_per_mtok": {"input": 1.0, "output": 2.0}}}, check_files=False)
    critic = _rows(p, runs.SIMULATION)["critic"]
    # each vote is one short answer, capped by the critic itself (8 tokens), not the role's max_new_tokens
    assert (critic.requests, critic.sequences, critic.generated_tokens) == (48, 240, 240 * 8)
    assert critic.dollars == pytest.approx((critic.prompt_tokens + 2 * 1920) / 1e6)
    rule = load_params(ROOT / "params" / "planted.yaml", {"output_root": str(tmp_path)}, check_files=False)
    assert "critic" not in _rows(rule, runs.SIMULATION)  # the rule critic calls no model


@pytest.mark.parametrize("paper", sorted((ROOT / "params").glob("paper_*.yaml")), ids=lambda p: p.stem)
def test_estimate_command_prints_a_table_for_each_paper_file(paper):
    r = subprocess.run([sys.executable, "-m", "rlff_utils.pipeline", str(paper), "--estimate"], capture_output=True,
                       text=True, cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": "x"}, check=False)
    assert r.returncode == 0, r.stderr
    for role in ("policy", "system", "user_sim", "eval_user_sim", "judge", "total"):
        assert role in r.stdout
    assert "[1/" not in r.stdout  # nothing ran


@pytest.mark.slow
def test_estimate_against_a_tiny_simulations_recorded_counts(tmp_path, data_dir):
    """Stated tolerance: requests, replies and generated tokens are upper bounds reached within a
    factor 2 (every
    reply at max_new_tokens unless a conversation succeeds early); prompt tokens, a rough figure,
    within a factor 2 either way."""
    from rlff_utils.data import prepare_data
    from rlff_utils.simulate import run_simulation

    p = load_params(ROOT / "params" / "ci.yaml", {"output_root": str(tmp_path), "simulation.max_contexts": 4})
    prepare_data(p)
    summary = run_simulation(p)
    estimated = _rows(p, runs.SIMULATION)
    actual = {r["role"]: r for r in cost.actual_counts(p)}
    assert set(actual) == {"policy", "system", "user_sim", "critic"}
    for role, est in estimated.items():
        got = actual[role]
        assert got["generated_tokens"] == summary.generated_tokens[role]
        # requests and replies: the estimate's counts when every conversation runs to the turn cap
        assert est.requests / 2 <= got["requests"] <= est.requests, (role, est, got)
        assert est.sequences / 2 <= got["sequences"] <= est.sequences, (role, est, got)
        assert est.generated_tokens / 2 <= got["generated_tokens"] <= est.generated_tokens or est.generated_tokens == 0
        assert est.prompt_tokens / 2 <= got["prompt_tokens"] <= est.prompt_tokens * 2, (role, est, got)
    record = cost.cost_record(p)
    assert record["estimate"][-1]["stage"] == "total" and record["actual"]


def test_estimate_against_a_tiny_evaluations_recorded_counts(tmp_path, data_dir):
    """The evaluation records what each role was asked for under every condition (the headline,
    another simulator, another seeker profile), the contrast critic and the pairwise judge, in the
    estimate's role names; same tolerance as the simulation's. A resumed evaluation adds nothing
    for conversations it did not roll again."""
    from rlff_utils.data import prepare_data
    from rlff_utils.evaluate import run_evaluation, run_quality

    p = load_params(ROOT / "params" / "ci.yaml", {
        "output_root": str(tmp_path), "evaluation.contrast_critic": "probs",
        "evaluation.systems": [{"name": "vanilla", "prompt": "vanilla"}, {"name": "base-reasoning", "prompt": "reasoning"}]})
    prepare_data(p)
    run_evaluation(p)
    run_quality(p)
    estimated = _rows(p, runs.EVALUATION)
    actual = {r["role"]: r for r in cost.actual_counts(p) if r["stage"] == runs.EVALUATION}
    assert set(actual) == set(estimated), (sorted(actual), sorted(estimated))
    assert "policy [sampled, cooperative]" in actual and "eval_critic [default, resistant]" in actual
    for role, est in estimated.items():
        got = actual[role]
        assert est.requests / 2 <= got["requests"] <= est.requests, (role, est, got)
        assert est.sequences / 2 <= got["sequences"] <= est.sequences, (role, est, got)
        assert got["generated_tokens"] <= est.generated_tokens, (role, est, got)
        assert est.prompt_tokens / 3 <= got["prompt_tokens"] <= est.prompt_tokens * 2, (role, est, got)
    before = runs.read_json(runs.layout(p).evaluation_usage)
    assert {"trimmed_prompts", "dropped_turns", "control_strings_removed"} <= set(before["policy"])
    run_evaluation(p)   # everything stored: nothing rolled, nothing added
    assert runs.read_json(runs.layout(p).evaluation_usage) == before


def test_grpo_counts_come_from_trls_log(tmp_path):
    p = load_params(ROOT / "params" / "ci.yaml", {"output_root": str(tmp_path)})
    # two steps of 4 completions (G = 4, one prompt): mean lengths 10 and 20 -> 120 generated tokens;
    # TRL's num_tokens counts every token read so far, prompts included
    runs.write_json([{"num_tokens": 500.0, "completions/mean_length": 10.0, "step": 1},
                     {"num_tokens": 1100.0, "completions/mean_length": 20.0, "step": 2},
                     {"train_runtime": 3.0, "step": 2}], runs.layout(p).grpo_log_history)
    row = next(r for r in cost.actual_counts(p) if r["stage"] == runs.POLICY)
    per_step = int(p.grpo.args["per_device_train_batch_size"])
    assert row["sequences"] == 2 * per_step and row["generated_tokens"] == (10 + 20) * per_step
    assert row["prompt_tokens"] == 1100 - (10 + 20) * per_step
