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
    # The paper files need GPUs, endpoints and hub weights: here they must pass the schema and TRL's config.
    p = load_params(path, check_files=not path.name.startswith("paper_"))
    assert p.run_name == path.stem
    assert p.run_dir == ROOT / "outputs" / path.stem


def test_paper_files_carry_the_paper_settings():
    papers = [load_params(path, check_files=False) for path in (ROOT / "params").glob("paper_*.yaml")]
    papers = [p for p in papers if p.purpose == "research"]  # paper_check.yaml is the engines' test run
    assert len(papers) == 4
    for p in papers:
        assert (p.simulation.num_candidates, p.simulation.max_turns) == (4, 8)
        cfg = p.grpo.config
        assert (cfg.num_generations, cfg.temperature, cfg.beta, p.grpo.format_weight) == (4, 1.1, 0.04, 0.5)
        assert cfg.bf16 and cfg.use_vllm and cfg.gradient_checkpointing
        assert p.models.reward_backbone.name == "meta-llama/Llama-3.2-1B"
        assert p.evaluation.max_turns == 8 and p.evaluation.success_threshold == 0.5


@pytest.mark.parametrize(
    "text, field, words",
    [
        ("simulation: {num_candidatez: 4}", "simulation.num_candidatez", "unknown key"),
        ("simulation: {max_turns: eight}", "simulation.max_turns", "integer"),
        ("grpo: {trainer: {num_generations: 1}}", "grpo.trainer", "at least 2 generations"),
        ("models: {policy: {name: smollm-9000}}", "models.policy", "unknown model 'smollm-9000'"),
        ("models: {critic: {backend: openai, name: gpt-4o}}\nsimulation: {critic_mode: probs}", "<top level>", "logprobs"),
        ("grpo: {trainer: {num_generations: 3, per_device_train_batch_size: 4}}", "grpo.trainer", "divisible"),
        ("simulation: {label_threshold: .nan}", "simulation.label_threshold", "finite"),
        ("reward_model: {learning_rate: .inf}", "reward_model.learning_rate", "finite"),
        ("simulation: {num_candidates: true}", "simulation.num_candidates", "boolean"),
        ("simulation: {num_candidates: 4}\nsimulation: {max_turns: 2}", "line 1", "duplicate key 'simulation'"),
        ("simulation:\n  max_turns: 2\n  max_turns: 3", "line 2", "duplicate key 'max_turns'"),
        ("data: {datasets: [reddit]}", "data.datasets.0", "'esconv' or 'extes'"),
        ("run_name: 'a b'", "run_name", "pattern"),
        ("validation: {judges: [oracle]}", "validation.judges.0", "'critic', 'reward_model' or 'learned_critic'"),
        ("validation: {success_conversations: 0}", "validation.success_conversations", "greater than or equal to 1"),
        ("validation: {learned_critic: {heldout_fraction: 0}}", "validation.learned_critic.heldout_fraction",
         "greater than 0"),
        ("validation: {learned_critic: {feedback_low: 4, feedback_high: 4}}", "validation.learned_critic",
         "feedback_low must be below feedback_high"),
        ("validation: {learned_critic: {epochs: 1, lora_rank: 4}}", "validation.learned_critic.lora_rank", "unknown key"),
        ("evaluation: {critic_mode: oracle}", "evaluation.critic_mode", "'learned'"),
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
    with pytest.raises(ParamsError, match="data.esconv_dir: environment variable RLFF_DATA_DIR is not set"):
        load_params(write(tmp_path, "data: {esconv_dir: '${RLFF_DATA_DIR}/esconv'}"))


def test_validation_section_sizes_and_the_learned_critics_data(tmp_path, monkeypatch, data_dir):
    smoke = load_params(ROOT / "params" / "smoke.yaml")
    v = smoke.validation
    assert (v.failed_conversations, v.success_conversations) == (20, 20) and v.learned_critic.heldout_fraction == 1.0
    assert set(v.judges) == {"critic", "reward_model", "learned_critic"}
    paper = load_params(ROOT / "params" / "paper_qwen2.5-7b_esconv.yaml", check_files=False).validation
    assert (paper.failed_conversations, paper.success_conversations, paper.min_intensity_drop) == (None, None, 2)
    assert paper.learned_critic.heldout_fraction < 1
    assert load_params(ROOT / "params" / "base" / "paper.yaml", check_files=False).simulation.critic_mode == "votes"
    learned = write(tmp_path, "evaluation: {critic_mode: learned}")
    assert load_params(learned).data.esconv_failed_path  # found under RLFF_DATA_DIR
    monkeypatch.setenv("RLFF_DATA_DIR", str(tmp_path / "elsewhere"))
    esconv = {"data.esconv_dir": str(data_dir / "esconv")}
    with pytest.raises(ParamsError, match=r"evaluation.critic_mode 'learned' .* data.esconv_failed_path"):
        load_params(learned, esconv)
    assert load_params(write(tmp_path, "evaluation: {critic_mode: probs}", "fine.yaml"), esconv)


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
    bad = write(tmp_path, "simulation: {critic_temperature: -1}")
    r = subprocess.run([sys.executable, "-m", "rlff_utils.params", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "simulation.critic_temperature" in r.stderr


def test_paper_files_name_every_missing_piece_of_the_environment(monkeypatch, data_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("SIM_API_KEY", raising=False)
    with pytest.raises(ParamsError) as err:
        load_params(ROOT / "params" / "paper_qwen2.5-7b_esconv.yaml")
    msg = str(err.value)
    assert "models.critic: backend openai needs an API key in $SIM_API_KEY" in msg
    assert "models.judge: backend openai needs an API key in $OPENAI_API_KEY" in msg
    assert "models.reward_backbone: 'meta-llama/Llama-3.2-1B' is not in the local Hugging Face cache" in msg


def test_paper_files_hold_only_their_differences():
    base = (ROOT / "params" / "base" / "paper.yaml").read_text()
    for path in (ROOT / "params").glob("paper_*.yaml"):
        text = path.read_text()
        assert "extends: base/paper.yaml" in text, path.name
        if path.stem != "paper_check":  # the engines' test run cuts every count to minutes
            assert len(text.splitlines()) <= 15, path.name
    assert "num_generations: 4" in base


def test_extends_merges_key_by_key_and_refuses_loops(tmp_path, data_dir):
    write(tmp_path, "seed: 3\nsimulation: {num_candidates: 2, max_turns: 5}", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nsimulation: {max_turns: 3}", "child.yaml")
    p = load_params(child)
    assert (p.seed, p.simulation.num_candidates, p.simulation.max_turns, p.run_name) == (3, 2, 3, "child")
    write(tmp_path, "extends: b.yaml", "a.yaml")
    write(tmp_path, "extends: a.yaml", "b.yaml")
    with pytest.raises(ParamsError, match="loops back"):
        load_params(tmp_path / "a.yaml")


def test_empty_file_is_refused(tmp_path):
    with pytest.raises(ParamsError, match="empty"):
        load_params(write(tmp_path, "# nothing but a comment\n"))


def test_variables_expand_in_every_string_and_name_the_field(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("MY_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("MY_KEY", "k")
    path = write(tmp_path, "models: {judge: {backend: openai, name: '${JUDGE:-gpt-4o}', base_url: '${MY_URL}', "
                           "api_key_env: MY_KEY}}\ndescription: 'seed ${SEED_WORD:-zero}'")
    p = load_params(path)
    assert (p.models.judge.name, p.models.judge.base_url, p.description) == ("gpt-4o", "http://127.0.0.1:9/v1", "seed zero")
    monkeypatch.delenv("MY_URL")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(path) in str(err.value) and "models.judge.base_url" in str(err.value) and "MY_URL is not set" in str(err.value)


def test_relative_paths_resolve_once_against_where_the_user_ran(tmp_path, monkeypatch, data_dir):
    """RLFF_DATA_DIR=../data from the folder the user is in; a local model folder by relative path."""
    import shutil

    from rlff_utils.models import resolve_model

    work = tmp_path / "work"
    (work / "mymodel").mkdir(parents=True)
    for f in Path(resolve_model("tiny-random-smollm2")).iterdir():
        shutil.copy(f, work / "mymodel" / f.name) if f.is_file() else None
    (tmp_path / "data").symlink_to(data_dir)
    monkeypatch.chdir(work)
    monkeypatch.setenv("RLFF_DATA_DIR", "../data")
    path = write(tmp_path, "models: {policy: {name: mymodel}}\noutput_root: runs")
    p = load_params(path)
    assert p.data.esconv_dir == str((tmp_path / "data" / "esconv").resolve())
    assert p.models.policy.name == str(work / "mymodel") and p.run_dir == work / "runs" / "bad"
    # a kernel in another directory reads the same values from the resolved snapshot
    from rlff_utils.params import write_resolved

    snap = write_resolved(p, tmp_path / "snapshot.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RLFF_DATA_DIR")
    again = load_params(snap)
    assert again.model_dump() == p.model_dump() and again.source == p.source


def test_no_data_offline_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.delenv("RLFF_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, "seed: 1"))
    assert "RLFF_DATA_DIR=" in str(err.value) and "go online" in str(err.value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert load_params(write(tmp_path, "seed: 1")).data.esconv_dir is None  # online: the hub


@pytest.mark.parametrize("item, words", [
    ("seed=[1", "not valid YAML"), ("seed", "expected key=value"), ("=3", "expected key=value")])
def test_bad_set_is_one_line(item, words):
    from rlff_utils.params import parse_set

    with pytest.raises(ParamsError) as err:
        parse_set([item])
    assert words in str(err.value) and "\n" not in str(err.value)


def test_notebook_params_resolve_from_the_project_and_warn_on_unnamed_overrides(monkeypatch, data_dir):
    from rlff_utils.params import load_notebook_params

    monkeypatch.chdir(ROOT / "notebooks")
    p = load_notebook_params("../params/ci.yaml")
    assert p.run_dir == ROOT / "outputs" / "ci"  # not notebooks/outputs
    with pytest.warns(UserWarning, match="run_name"):
        load_notebook_params("../params/ci.yaml", {"seed": 3})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_notebook_params("../params/ci.yaml", {"seed": 3, "run_name": "ci-seed3"})
