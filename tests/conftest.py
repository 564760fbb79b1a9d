"""Shared fixtures. Tests read the real ESConv copy through RLFF_DATA_DIR (see README) and build
every run under a temporary output root, never under the project's outputs/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = os.environ.get("RLFF_DATA_DIR")
    if not d or not (Path(d) / "esconv" / "train.json").is_file():
        pytest.fail("set RLFF_DATA_DIR to the folder holding esconv/ (see README, 'Data')")
    return Path(d)


@pytest.fixture()
def ci_params(tmp_path, data_dir):
    """params/ci.yaml with its outputs under a temporary folder."""
    from rlff_utils.params import load_params

    return load_params(ROOT / "params" / "ci.yaml", {"output_root": str(tmp_path / "outputs")})


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """A 2-layer random model with the real SmolLM2 tokenizer (built once, cached)."""
    from rlff_utils.models import resolve_model

    return resolve_model("tiny-random-smollm2")


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The real embedded SmolLM2-135M-Instruct (rebuilt from GGUF once, cached)."""
    from rlff_utils.models import resolve_model

    return resolve_model("smollm2-135m-instruct")
