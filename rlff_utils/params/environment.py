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

