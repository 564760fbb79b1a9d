"""Every params file validates; bad files fail with one message naming the file and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlff_utils.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]
PARAM_FILES = sorted((ROOT / "params").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_shipped_params_validate(path, data_dir):
    # ExTES is not shipped offline; its variants must still pass the schema and model checks.
    p = load_params(path, check_files="extes" not in path.name)
    assert p.run_name == path.stem
    assert p.run_dir == ROOT / "outputs" / path.stem


def test_paper_files_carry_the_paper_settings():
    for path in (ROOT / "params").glob("paper_*.yaml"):
        p = load_params(path, check_files=False)
        assert (p.simulation.num_candidates, p.simulation.max_turns) == (4, 8)
        assert (p.grpo.num_generations, p.grpo.temperature, p.grpo.format_weight) == (4, 1.1, 0.5)
        assert p.models.reward_backbone.name == "meta-llama/Llama-3.2-1B"
        assert p.evaluation.max_turns == 8 and p.evaluation.success_threshold == 0.5


@pytest.mark.parametrize(
    "text, field, words",
    [
        ("simulation: {num_candidatez: 4}", "simulation.num_candidatez", "unknown key"),
        ("simulation: {max_turns: eight}", "simulation.max_turns", "integer"),
        ("grpo: {num_generations: 1}", "grpo.num_generations", "greater than or equal to 2"),
        ("models: {policy: {name: smollm-9000}}", "models.policy", "unknown model 'smollm-9000'"),
        ("models: {critic: {backend: openai, name: gpt-4o}}\nsimulation: {critic_mode: probs}", "<top level>", "logprobs"),
        ("grpo: {num_generations: 3, per_device_train_batch_size: 4}", "grpo", "divisible"),
        ("data: {datasets: [reddit]}", "data.datasets.0", "'esconv' or 'extes'"),
        ("run_name: 'a b'", "run_name", "pattern"),
    ],
)
def test_bad_params_name_file_and_field(tmp_path, data_dir, text, field, words):
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    msg = str(err.value)
    assert str(path) in msg and field in msg and words in msg, msg


def test_missing_data_folder_is_reported_before_any_loading(tmp_path):
    path = write(tmp_path, f"data: {{esconv_dir: {tmp_path / 'nowhere'}}}")
    with pytest.raises(ParamsError, match=r"data.esconv_dir: folder not found"):
        load_params(path)


def test_unset_environment_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("RLFF_DATA_DIR", raising=False)
    with pytest.raises(ParamsError, match="RLFF_DATA_DIR is not set"):
        load_params(write(tmp_path, "seed: 1"))


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(write(tmp_path, "simulation: [unclosed"))
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "absent.yaml")


def test_overrides_are_validated_too(data_dir):
    p = load_params(ROOT / "params" / "ci.yaml", {"simulation.num_candidates": 3})
    assert p.simulation.num_candidates == 3
    with pytest.raises(ParamsError, match="simulation.num_candidates"):
        load_params(ROOT / "params" / "ci.yaml", {"simulation.num_candidates": 0})


def test_cli_exit_code_and_message(tmp_path, data_dir):
    bad = write(tmp_path, "grpo: {temperature: -1}")
    r = subprocess.run([sys.executable, "-m", "rlff_utils.params", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "grpo.temperature" in r.stderr


def test_protocol_card_names_models_and_stage(data_dir):
    card = load_params(ROOT / "params" / "smoke.yaml").protocol_card("simulation")
    assert card["models"]["critic"]["name"] == "smollm2-135m-instruct"
    assert "simulation" in card and "grpo" not in card
