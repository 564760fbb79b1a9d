"""Careless inputs and hostile conditions, reproduced with real files and processes: each ends
in one clear sentence or is survived, and nothing outside a run folder is ever deleted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlff_utils import pipeline, runs

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "params" / "ci.yaml"


def _cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlff_utils.pipeline", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)


# ---- 1. --force never deletes outside the run folder -------------------------------------------


@pytest.mark.parametrize("name", ["..", "."])
def test_run_name_of_dots_is_refused_and_force_deletes_nothing(tmp_path, name, data_dir):
    (tmp_path / "data" / "esconv").mkdir(parents=True)
    keep = [tmp_path / "data" / "esconv" / "train.json", tmp_path / "data" / "unrelated.txt",
            tmp_path / "outputs" / "data" / "mine.txt"]
    for f in keep:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("keep me")
    r = _cli(str(CI), "--set", f"output_root={tmp_path / 'outputs'}", "--set", f"run_name={name}",
             "--only", "01", "--force")
    assert r.returncode == 1 and "run_name" in r.stderr and "[1/1]" not in r.stdout, r.stderr[-2000:]
    assert "cleared" not in r.stdout
    assert all(f.read_text() == "keep me" for f in keep)


def test_force_clears_only_stage_folders_inside_the_run(tmp_path, data_dir):
    """A stage folder that is a link to elsewhere is refused; one without a stage record is left."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / runs.STAGE_RECORD).write_text("{}")
    (outside / "precious.txt").write_text("keep me")
    run = tmp_path / "outputs" / "ci"
    run.mkdir(parents=True)
    (run / "data").symlink_to(outside)
    code = pipeline.main([str(CI), "--set", f"output_root={tmp_path / 'outputs'}", "--only", "01", "--force"])
    assert code == 1 and (outside / "precious.txt").read_text() == "keep me"
    assert (outside / runs.STAGE_RECORD).exists()

    (run / "data").unlink()
    (run / "report").mkdir()
    (run / "report" / "01_data_prep.html").write_text("a page")
    from rlff_utils.params import load_params

    params = load_params(CI, {"output_root": str(tmp_path / "outputs")})
    assert runs.reset_stage(params, runs.REPORT) is False
    assert (run / "report" / "01_data_prep.html").read_text() == "a page"
    (run / "simulation").mkdir()
    (run / "simulation" / runs.STAGE_RECORD).write_text("{}")
    (run / "simulation" / "trajectories.jsonl").write_text("x")
    assert runs.reset_stage(params, runs.SIMULATION) is True
    assert list((run / "simulation").iterdir()) == []


# ---- 6. an empty --only is an error, not the whole pipeline ------------------------------------


@pytest.mark.parametrize("args", [["--only", ""], ["--only", " , "], ["--only", "01", "--from", "03"]])
def test_empty_selection_is_an_error_before_any_kernel(tmp_path, data_dir, args):
    r = _cli(str(CI), "--set", f"output_root={tmp_path}", *args, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "no notebook" in r.stderr and "[1/" not in r.stdout
    assert not (tmp_path / "ci" / "data").exists()
