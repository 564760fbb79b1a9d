"""The run-folder contract: one JSON policy, stage records that refuse stale results, one writer."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from rlff_utils import runs
from rlff_utils.params import load_params


@pytest.fixture()
def params(tmp_path, project_root, data_dir):
    return load_params(project_root / "params" / "ci.yaml", {"output_root": str(tmp_path / "out")})


def with_(p, **over):
    return load_params(p.source, {"output_root": p.output_root, **over})


def test_write_json_has_one_nan_policy_and_is_atomic(tmp_path):
    path = runs.write_json({"a": math.nan, "b": np.float32(1.5), "c": [np.int64(2), math.inf], "d": tmp_path}, tmp_path / "x.json")
    assert json.loads(path.read_text()) == {"a": None, "b": 1.5, "c": [2, None], "d": str(tmp_path)}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary file left behind
    assert runs.read_json(tmp_path / "missing.json", default={}) == {}
    with pytest.raises(FileNotFoundError):
        runs.read_json(tmp_path / "missing.json")


def test_record_reuse_and_stale_detection(params, monkeypatch):
    with runs.begin_stage(params, runs.DATA) as folder:
        (folder / "result.txt").write_text("kept")
    assert runs.stage_is_complete(params, runs.DATA)
    # an execution-only field (batch size) changes nothing
    same = with_(params, **{"models.policy.batch_size": 3})
    with runs.begin_stage(same, runs.DATA):
        pass
    # nor does the address of an endpoint (a server restarted on another port); its model does
    monkeypatch.setenv("SIM_API_KEY", "EMPTY")
    served = {"backend": "openai", "name": "smollm2", "base_url": "http://127.0.0.1:8001/v1", "api_key_env": "SIM_API_KEY"}
    before = runs.stage_settings(with_(params, **{"models.user_sim": served}), runs.SIMULATION)
    moved = runs.stage_settings(with_(params, **{"models.user_sim": {**served, "base_url": "http://127.0.0.1:9/v1"}}),
                                runs.SIMULATION)
    other = runs.stage_settings(with_(params, **{"models.user_sim": {**served, "name": "gpt-4o"}}), runs.SIMULATION)
    assert runs.settings_hash(before) == runs.settings_hash(moved) != runs.settings_hash(other)
    # a record written while base_url was still compared (its settings hold it) stays valid;
    # another model in the same record is still a change
    served_params = with_(params, **{"models.user_sim": served})
    older = {"settings": {**before, "models.user_sim": {**before["models.user_sim"], "base_url": "http://old:1/v1"}}}
    assert runs._setting_changes(served_params, runs.SIMULATION, older) == {}
    older["settings"]["models.user_sim"]["name"] = "gpt-4o"
    assert runs._setting_changes(served_params, runs.SIMULATION, older) == {
        "models.user_sim.name": ("gpt-4o", "smollm2")}
    # also inside a list (an evaluation simulator's role)
    sims = [{"name": "other", "user_sim": served}]
    a = runs.stage_settings(with_(params, **{"evaluation.simulators": sims}), runs.EVALUATION)
    b = runs.stage_settings(with_(params, **{"evaluation.simulators": [{**sims[0], "user_sim": {**served, "base_url": "http://x:2/v1"}}]}),
                            runs.EVALUATION)
    assert runs.settings_hash(a) == runs.settings_hash(b)
    changed = with_(params, seed=7, **{"data.max_contexts": 5})
    with pytest.raises(runs.StaleStageError) as err:
        with runs.begin_stage(changed, runs.DATA):
            pass
    msg = str(err.value)
    assert "seed: 0 -> 7" in msg and "data.max_contexts: 12 -> 5" in msg and "--force" in msg
    assert (runs.layout(params).stage(runs.DATA) / "result.txt").read_text() == "kept"
    with runs.begin_stage(changed, runs.DATA, force=True) as folder:
        assert not (folder / "result.txt").exists()


def test_upstream_change_invalidates_downstream(params):
    with pytest.raises(runs.MissingStageError, match="run notebook 01 first"):
        with runs.begin_stage(params, runs.SIMULATION):
            pass
    with runs.begin_stage(params, runs.DATA):
        pass
    with runs.begin_stage(params, runs.SIMULATION):
        pass
    other = with_(params, **{"data.max_history_turns": 3})
    with runs.begin_stage(other, runs.DATA, force=True):
        pass
    with pytest.raises(runs.StaleStageError, match="upstream stage 'data'"):
        runs.check_stage(other, runs.SIMULATION)


def test_an_ablation_reuses_exactly_the_stages_it_shares(params):
    """A run differing only in GRPO copies data, simulation and reward model from another run,
    stops at the policy (its settings differ) and then checks as its own run would; a run with
    another seed copies nothing."""
    for stage in (runs.DATA, runs.SIMULATION, runs.REWARD_MODEL, runs.POLICY):
        with runs.begin_stage(params, stage, require_upstream=False) as folder:
            (folder / "result.txt").write_text(stage)
    source = runs.layout(params).root
    ablation = with_(params, run_name="negative", **{"grpo.reward_model": "random"})
    assert runs.reuse_stages(ablation, source) == [runs.DATA, runs.SIMULATION, runs.REWARD_MODEL]
    lay = runs.layout(ablation)
    assert (lay.stage(runs.REWARD_MODEL) / "result.txt").read_text() == runs.REWARD_MODEL
    assert not lay.stage(runs.POLICY).exists() and not (lay.stage(runs.DATA) / runs.LOCK).exists()
    record = runs.check_stage(ablation, runs.REWARD_MODEL)  # valid for the ablation as if it had run it
    assert record["run_name"] == "negative" and record["copied_from"] == str(source.resolve())
    with runs.begin_stage(ablation, runs.POLICY):  # upstream found complete in the ablation's folder
        pass
    assert runs.reuse_stages(ablation, source) == []  # stages it has are never overwritten
    assert runs.reuse_stages(with_(params, run_name="other", seed=3), source) == []
    with pytest.raises(ValueError, match="own folder"):
        runs.reuse_stages(params, source)


_HOLD = """
import sys, time
from rlff_utils import runs
with runs.stage_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_second_writer_is_refused_and_a_dead_holder_is_taken_over(tmp_path):
    folder = tmp_path / "stage"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(runs.StageLockedError, match=f"pid {proc.pid}"):
            with runs.stage_lock(folder):
                pass
    finally:
        proc.kill()
        proc.wait()
    # the holder died without releasing: its lock is stale and taken over
    assert (folder / runs.LOCK).exists()
    with runs.stage_lock(folder):
        assert json.loads((folder / runs.LOCK).read_text())["pid"] == os.getpid()
        with runs.stage_lock(folder):  # re-entrant in one process
            pass
    assert not (folder / runs.LOCK).exists()


def test_pipeline_reuse_from_its_own_run_is_a_one_line_error(params, capsys):
    from rlff_utils import pipeline

    with runs.begin_stage(params, runs.DATA):
        pass
    args = [params.source, "--set", f"output_root={params.output_root}", "--reuse-from", params.run_name, "--only", "01"]
    assert pipeline.main(args) == 1
    assert "--reuse-from:" in capsys.readouterr().err
