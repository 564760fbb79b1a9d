"""`make paper-check`: params/paper_check.yaml keeps the paper's engines and changes only models and
counts, and tools/paper_check.py runs the six notebooks on them with the vLLM server it starts and
stops (vLLM's CPU build, the embedded SmolLM2 in every role)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from rlff_utils import runs
from rlff_utils.params import load_params

ENGINE_ROLES = ("policy", "system", "user_sim", "critic")


def test_paper_check_keeps_the_papers_engines(project_root, data_dir, monkeypatch):
    monkeypatch.setenv("SIM_API_KEY", "EMPTY")
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    check = load_params(project_root / "params" / "paper_check.yaml")
    paper = load_params(project_root / "params" / "paper_qwen2.5-7b_esconv.yaml", check_files=False)
    for role in ENGINE_ROLES:  # same backend and endpoint knobs as the paper, other model
        mine, theirs = getattr(check.models, role), getattr(paper.models, role)
        assert (mine.backend, mine.logprobs, mine.base_url, mine.api_key_env) == \
            (theirs.backend, theirs.logprobs, theirs.base_url, theirs.api_key_env), role
    assert check.models.policy.enable_lora and paper.models.policy.enable_lora  # the adapter per request in 05
    for role in ("eval_user_sim", "eval_critic", "judge"):  # GPT-4o -> the same local server
        r = getattr(check.models, role)
        assert r.backend == "openai" and r.base_url == check.models.critic.base_url and r.name == "smollm2"
    c, p = check.grpo.config, paper.grpo.config
    assert c.use_vllm and c.vllm_mode == "colocate" and (c.num_generations, c.beta, c.loss_type) == \
        (p.num_generations, p.beta, p.loss_type)
    for knob in ("critic_mode", "critic_samples", "critic_temperature"):
        assert getattr(check.simulation, knob) == getattr(paper.simulation, knob)
        assert getattr(check.evaluation, knob) == getattr(paper.evaluation, knob)
    assert check.simulation.critic_samples == 10 and check.simulation.critic_mode == "votes"


@pytest.mark.slow
def test_paper_check_runs_all_six_notebooks(project_root, data_dir, tmp_path, monkeypatch, capsys):
    from conftest import require_vllm

    require_vllm()
    from tools import paper_check

    for name in ("SIM_BASE_URL", "SIM_API_KEY", "VLLM_CPU_KVCACHE_SPACE"):  # the check sets them: undone after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    out = tmp_path / "outputs"
    assert paper_check.main(["--set", f"output_root={out}"]) == 0
    printed = capsys.readouterr().out
    assert "== paper-check ==" in printed and "6 notebooks" in printed
    run_dir = out / "paper_check"
    p = load_params(project_root / "params" / "paper_check.yaml", {"output_root": str(out)}, check_files=False)
    lay = runs.layout(p)
    sim = runs.read_json(lay.simulation_summary)
    assert sim["trajectories"] == 4 * 2 and sim.get("unparsed_answers", 0) == 0  # votes under structured choice
    grpo_config = json.loads(lay.grpo_config.read_text())
    assert grpo_config["use_vllm"] and grpo_config["vllm_mode"] == "colocate"
    assert json.loads(lay.train_summary.read_text())["global_step"] == 2
    assert (lay.adapter / "adapter_config.json").is_file()
    evaluated = runs.read_record(run_dir, runs.EVALUATION)
    assert evaluated and evaluated["complete"]
    log = run_dir / "vllm_server.log"
    assert log.is_file() and "/health" in log.read_text(errors="replace")
    # the server is gone: its process group ended with the check
    pid = _server_pid(log)
    if pid:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, signal.SIG_DFL)


def _server_pid(log) -> int | None:
    import re

    m = re.search(r"\(APIServer pid=(\d+)\)", log.read_text(errors="replace"))
    return int(m.group(1)) if m else None
