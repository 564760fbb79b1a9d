"""Params files -> :class:`RunParams`: YAML, ``extends``, overrides, variables, paths.

A params file is validated completely before any model or dataset is loaded, so a typo in a
paper-scale file fails in a second instead of after an hour of vLLM start-up. Errors name the
file and the dotted field (``simulation.num_candidates``) and say what was expected.

Loading, in order (:func:`load_params`):

1. YAML, refusing duplicate keys; an empty file is refused (it would run paper-size defaults).
2. ``extends: other.yaml`` (relative to the file): the file holds only its differences from its
   base; mappings merge key by key, the file wins, chains are allowed.
3. Overrides (dotted keys: ``--set simulation.num_candidates=2``), parsed by :func:`parse_set`.
4. ``${VAR}`` / ``${VAR:-default}`` expanded in every string, naming file and field when unset.
5. Relative paths (data folders, output root, local model folders, adapters) resolved once,
   against the directory the user ran from (``base_dir``); what is stored is absolute.
6. pydantic validation (unknown keys, types, ranges; NaN/inf and booleans-as-numbers refused);
   TRL's ``GRPOConfig`` is built from ``grpo.trainer`` so a bad trainer knob fails here.
7. Environment checks (``check_files``): data folders, API keys of openai roles, Hugging Face
   ids present in the local cache when offline.

Files the project writes for a subprocess or a notebook kernel (:func:`write_resolved`) hold the
resolved values, so every process reads the same absolute paths.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .. import models as model_registry
from ..text import url_credentials
from .environment import check_environment
from .schema import ParamsError, RunParams

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# Data locations filled in from $RLFF_DATA_DIR when the file leaves them unset and the variable is set.
DATA_DIR_DEFAULTS = {
    "esconv_dir": "esconv",
    "extes_path": "extes/ExTES.json",
    "esconv_failed_path": "esconv/failed/FailedESConv_dev.json",
}
# Dotted fields holding paths (``*`` for any role / list item); relative values resolve against base_dir.
PATH_FIELDS = ("output_root", "data.esconv_dir", "data.extes_path", "data.esconv_failed_path",
               "grpo.accelerate_config")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        raise ParamsError(f"{path}: the params file is empty (a run must say what it runs; start from "
                          "params/smoke.yaml or use `extends:`)")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return raw


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file merged over the files it ``extends`` (relative to its own folder)."""
    path = path.resolve()
    if path in chain:
        raise ParamsError(f"{path}: `extends` loops back: {' -> '.join(str(p) for p in (*chain, path))}")
    raw = _read_yaml(path)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ParamsError(f"{path}: extends: expected the path of one params file")
    base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    try:
        inherited = _with_bases(base_path, (*chain, path))
    except ParamsError as e:
        raise ParamsError(f"{path}: extends: {e}") from None
    inherited.pop("run_name", None)  # a run is named by its own file
    return _merge(inherited, raw)


def _expand(s: str, where: str = "") -> str:
    def sub(m: re.Match) -> str:
        val = os.environ.get(m.group(1))
        if val is None:
            if m.group(2) is not None:
                return m.group(2)
            raise ParamsError(f"{where + ': ' if where else ''}environment variable {m.group(1)} is not set "
                              f"(used in {s!r})")
        return val

    return _VAR.sub(sub, s)


def _expand_all(node: Any, src: str, dotted: str = "") -> Any:
    """``${VAR}`` expanded in every string of the raw params, errors naming file and field."""
    if isinstance(node, dict):
        return {k: _expand_all(v, src, f"{dotted}.{k}" if dotted else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_all(v, src, f"{dotted}.{i}") for i, v in enumerate(node)]
    if isinstance(node, str):
        try:
            return _expand(node, dotted)
        except ParamsError as e:
            raise ParamsError(f"{src}: {e}") from None
    return node


def _absolute(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or not value:
        return value
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # ~user of no such user, or no home folder
        raise ParamsError(f"{value!r}: the home folder of {value.split('/')[0]!r} is unknown on this machine") from None
    return str(p if p.is_absolute() else (base / p).resolve())


def _looks_like_path(name: str, base: Path) -> bool:
    return name.startswith((".", "/", "~")) or (base / name).expanduser().is_dir()


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Relative paths become absolute against ``base`` (the directory the user ran from)."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else None
    env_dir = os.environ.get("RLFF_DATA_DIR")
    if env_dir:
        data = raw.setdefault("data", {}) if data is None else data
        if isinstance(data, dict):
            for field, rel in DATA_DIR_DEFAULTS.items():
                default = (base / env_dir / rel).resolve()
                if data.get(field) is None and default.exists():
                    data[field] = str(default)
    for dotted in PATH_FIELDS:
        section, _, leaf = dotted.rpartition(".")
        node = raw.get(section) if section else raw
        if isinstance(node, dict) and leaf in node:
            try:
                node[leaf] = _absolute(node[leaf], base)
            except ParamsError as e:
                raise ParamsError(f"{dotted}: {e}") from None
    models = raw.get("models") if isinstance(raw.get("models"), dict) else {}  # not a mapping: pydantic says so
    for role in models.values():
        if isinstance(role, dict) and isinstance(role.get("name"), str) and role.get("backend", "hf") != "openai" \
                and role["name"] not in model_registry.REGISTRY and _looks_like_path(role["name"], base):
            role["name"] = _absolute(role["name"], base)
    systems = (raw.get("evaluation") or {}).get("systems") if isinstance(raw.get("evaluation"), dict) else None
    for system in systems or []:
        if isinstance(system, dict) and system.get("adapter") not in (None, "policy"):
            system["adapter"] = _absolute(system["adapter"], base)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``key.sub=value`` pairs (the ``--set`` of every command line); values are read as YAML so
    numbers and lists keep their types. A malformed pair is a one-line ParamsError."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParamsError(f"--set {item!r}: expected key=value, e.g. simulation.num_candidates=2")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ParamsError(f"--set {item!r}: the value is not valid YAML ({problem}); quote text values") from None
    return out


def _format_errors(src: str, err: ValidationError) -> str:
    lines = [f"{src}: invalid parameters ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against rlff_utils/params/schema.py)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "finite_number":
            msg = "must be a finite number (NaN and infinity are not allowed)"
        if loc == "<top level>" and re.match(r"^[a-z_]+(\.[a-z_]+)+: ", msg):
            lines.append(f"  - {msg}")  # a cross-field check that names its field itself
        else:
            lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def load_params(
    path: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
    check_files: bool = True,
    base_dir: str | os.PathLike | None = None,
) -> RunParams:
    """Read, extend, override, expand, resolve and validate a params file; ParamsError on any problem.

    ``run_name`` defaults to the file's stem so ``params/smoke.yaml`` writes ``outputs/smoke/``.
    ``base_dir`` (default: the current directory) is where relative paths start. ``check_files``
    also checks the environment the run needs (data, API keys, offline model cache).
    """
    path = Path(path)
    src = str(path)
    raw = _with_bases(path)
    if "source" in raw:  # a resolved snapshot (write_resolved) remembers the file it came from
        src_of_snapshot = raw.pop("source")
    else:
        src_of_snapshot = None
    raw.setdefault("run_name", path.stem)
    raw.setdefault("output_root", "outputs")  # a default path resolves like a written one
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    raw = _expand_all(raw, src)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    try:
        _resolve_paths(raw, base.resolve())
    except ParamsError as e:
        raise ParamsError(f"{src}: {e}") from None
    try:
        params = RunParams.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(_format_errors(src, e)) from None
    except ParamsError:
        raise
    params.source = src_of_snapshot or str(path.resolve())
    params.project_root = str(project_root())
    if check_files:
        check_environment(params)
    return params


def load_notebook_params(params_file: str | os.PathLike, overrides: dict[str, Any] | None = None,
                         check_files: bool = True) -> RunParams:
    """What a notebook's first cell calls: relative paths start at the project root (the folder
    JupyterLab opens), whether the kernel's current directory is the project or ``notebooks/``.
    Overrides that change settings without a new ``run_name`` write into the same run folder, where
    stages already run with other settings refuse to mix (``runs.StaleStageError``): warned here."""
    import warnings

    overrides = dict(overrides or {})
    if overrides and "run_name" not in overrides:
        warnings.warn(
            f"overrides {sorted(overrides)} change the run but not its run_name: results go to the same run "
            "folder, where stages already run with other settings will refuse to continue. Add "
            "overrides['run_name'] = '<new name>' to keep both runs.", stacklevel=2)
    return load_params(Path(params_file), overrides, check_files=check_files,
                       base_dir=project_root_of(Path.cwd()))


def project_root() -> Path:
    """The project holding the notebooks: the installed package's parent when it is a checkout,
    else the current directory's project."""
    here = Path(__file__).resolve().parents[2]
    if (here / "notebooks").is_dir():
        return here
    return project_root_of(Path.cwd())


def project_root_of(start: Path) -> Path:
    for d in [start.resolve(), *start.resolve().parents]:
        if (d / "pyproject.toml").exists():
            return d
    return start



def _credentials_to_environment(data: dict[str, Any]) -> None:
    """A role's ``base_url`` holding ``user:password@`` is written as ``${RLFF_URL_CREDENTIALS_<ROLE>}@``
    and the credentials are put in this process's environment, which the notebook kernels and
    subprocesses inherit: they read the same URL, and no file of the run holds the password."""
    for role, values in (data.get("models") or {}).items():
        url = values.get("base_url") if isinstance(values, dict) else None
        stripped, credentials = url_credentials(url) if isinstance(url, str) else (url, None)
        if credentials:
            var = f"RLFF_URL_CREDENTIALS_{role.upper()}"
            os.environ[var] = credentials
            scheme, _, rest = stripped.partition("://")
            values["base_url"] = f"{scheme}://${{{var}}}@{rest}"


def write_resolved(params: RunParams, path: str | os.PathLike) -> Path:
    """The run as a params file with every value resolved (absolute paths, variables expanded),
    for notebook kernels and subprocesses; ``load_params`` reads it back to the same run."""
    data = params.model_dump(mode="json")
    data["source"] = params.source
    _credentials_to_environment(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    tmp.replace(path)
    return path

