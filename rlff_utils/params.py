"""The run schema: one params file describes one run, every stage and every model role.

A params file is validated completely before any model or dataset is loaded, so a typo in a
paper-scale file fails in a second instead of after an hour of vLLM start-up. Errors name the
file and the dotted field (``simulation.num_candidates``) and say what was expected.

Relative paths inside a params file are resolved against the project root (the folder holding
``pyproject.toml`` above the params file), so a notebook executed from ``notebooks/`` and a CLI
call from the repository root read the same files. ``${VAR}`` in strings is expanded from the
environment (``${RLFF_DATA_DIR}``), with ``${VAR:-default}`` for a fallback.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import models as model_registry

Backend = Literal["hf", "vllm", "openai"]


class ParamsError(ValueError):
    """A params file that cannot describe a run; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# Model roles
# --------------------------------------------------------------------------------------------


class ModelRole(_Strict):
    """One LLM playing one role. The same ``name`` on several roles is loaded once per process."""

    backend: Backend = "hf"
    name: str = "smollm2-135m-instruct"
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(96, ge=1)
    # hf backend
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(16, ge=1)
    # vllm backend
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(None, ge=256)
    enable_prefix_caching: bool = True
    enable_lora: bool = Field(False, description="vllm: serve LoRA adapters per request (policy in evaluation)")
    max_lora_rank: int = Field(64, ge=1)
    # openai backend (any OpenAI-compatible endpoint: GPT-4o, `vllm serve`, ...)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    concurrency: int = Field(8, ge=1)
    logprobs: bool = Field(
        False, description="the endpoint returns token logprobs (needed for critic mode `probs`)"
    )
    structured_choice: bool = Field(
        False, description="the endpoint accepts vLLM's `structured_outputs: {choice}` (critic votes)"
    )

    @model_validator(mode="after")
    def _known_model(self) -> "ModelRole":
        if self.backend in ("hf", "vllm"):
            problem = model_registry.model_name_problem(self.name)
            if problem:
                raise ValueError(problem)
        return self

    @property
    def can_score_choices(self) -> bool:
        return self.backend in ("hf", "vllm") or self.logprobs


class ModelRoles(_Strict):
    """Every model role of the method. Evaluation roles are separate from the training ones so
    the policy is not judged by the model whose judgements it was trained on."""

    policy: ModelRole = Field(default_factory=ModelRole)
    system: ModelRole = Field(default_factory=ModelRole, description="ESC system model in rollouts")
    user_sim: ModelRole = Field(default_factory=ModelRole)
    critic: ModelRole = Field(default_factory=ModelRole)
    eval_user_sim: ModelRole = Field(default_factory=lambda: ModelRole(temperature=0.0))
    eval_critic: ModelRole = Field(default_factory=ModelRole)
    judge: ModelRole = Field(default_factory=lambda: ModelRole(temperature=0.0))
    reward_backbone: ModelRole = Field(default_factory=ModelRole)


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


class DataParams(_Strict):
    datasets: list[Literal["esconv", "extes"]] = Field(default_factory=lambda: ["esconv"], min_length=1)
    esconv_source: Literal["auto", "local", "hub"] = "local"
    esconv_dir: str = "${RLFF_DATA_DIR}/esconv"
    esconv_hub_id: str = "thu-coai/esconv"
    ppdpp_dir: str = "${RLFF_DATA_DIR}/esconv/ppdpp"
    extes_path: str = "${RLFF_DATA_DIR}/extes/ExTES.json"
    extes_test_fraction: float = Field(0.1, gt=0, lt=1)
    context_splits: list[Literal["train", "valid", "test"]] = Field(default_factory=lambda: ["train"])
    max_dialogues: int | None = Field(None, ge=1, description="cap per dataset, before sampling contexts")
    contexts_per_dialogue: int = Field(2, ge=1)
    max_contexts: int | None = Field(None, ge=1)
    min_history_turns: int = Field(2, ge=1, description="turns before the context's last seeker turn")
    max_history_turns: int = Field(12, ge=1, description="older turns are dropped from prompts")
    eval_split: Literal["ppdpp_test", "ppdpp_valid", "test"] = "ppdpp_test"
    max_eval_cases: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _history(self) -> "DataParams":
        if self.min_history_turns > self.max_history_turns:
            raise ValueError("min_history_turns must be <= max_history_turns")
        return self


class SimulationParams(_Strict):
    num_candidates: int = Field(4, ge=1, description="m: candidate responses per context")
    max_turns: int = Field(8, ge=1, description="T: rollout turns (seeker+supporter exchanges)")
    critic_mode: Literal["votes", "probs"] = "votes"
    critic_samples: int = Field(10, ge=1, description="votes mode: sampled answers per judgement")
    critic_temperature: float = Field(1.1, ge=0.0, le=2.0)
    success_threshold: float = Field(0.5, ge=-1.0, le=1.0)
    efficiency_weight: float = Field(1.0, ge=0.0, description="lambda in R_fut")
    label_threshold: float | Literal["median"] = Field(0.5, description="delta: label = R_fut >= delta")
    reasoning_format: bool = Field(False, description="candidates carry <think>...</think> first")
    batch_size: int = Field(32, ge=1, description="trajectories advanced together")
    max_contexts: int | None = Field(None, ge=1)


class RewardModelParams(_Strict):
    """Stage 2: reward models trained on the simulation's (context, candidate, R_fut) records."""

    variants: list[Literal["classification", "regression", "ranking"]] = Field(
        default_factory=lambda: ["classification", "regression", "ranking"], min_length=1
    )
    valid_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)
    max_length: int = Field(512, ge=32, description="tokens; longer inputs lose their oldest turns")
    max_history_turns: int | None = Field(
        None, ge=1, description="context turns shown to the reward model (None: data.max_history_turns)"
    )
    learning_rate: float = Field(1e-4, gt=0)
    epochs: float = Field(3.0, gt=0)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[str] | str = "all-linear"
    lora_layers: int | None = Field(
        None, ge=1, description="LoRA on the top N transformer layers only (None: all); cuts backward cost"
    )
    max_pairs_per_context: int | None = Field(
        None, ge=1, description="ranking: training pairs kept per context, largest R_fut gap first"
    )
    early_stopping_patience: int = Field(2, ge=1)
    retrain: bool = Field(False, description="train again even where a variant's metrics.json exists")
    human_validation_dialogues: int = Field(50, ge=0, description="ESConv dialogues for the survey check")
    human_validation_turns: int | None = Field(
        6, ge=1, description="supporter turns scored per dialogue, evenly spaced (None: all)"
    )


class GRPOParams(_Strict):
    reward_model: Literal["classification", "regression", "ranking", "random"] = "classification"
    format_reward: bool = True
    format_weight: float = Field(0.5, ge=0, description="alpha")
    num_generations: int = Field(4, ge=2, description="G: completions per prompt")
    temperature: float = Field(1.1, gt=0, le=2.0)
    top_p: float = Field(1.0, gt=0, le=1.0)
    beta: float = Field(0.04, ge=0, description="KL coefficient (TRL default 0.0)")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field("grpo", description="TRL default dapo")
    scale_rewards: Literal["group", "batch", "none"] = "group"
    num_iterations: int = Field(1, ge=1, description="mu: optimisation passes per generated batch")
    epsilon: float = Field(0.2, gt=0, description="PPO-style clipping range")
    learning_rate: float = Field(1e-5, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    max_steps: int = Field(100, ge=1)
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_prompt_length: int = Field(512, ge=16)
    max_completion_length: int = Field(256, ge=8)
    num_train_prompts: int | None = Field(None, ge=1)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[str] | str = "all-linear"
    save_steps: int = Field(25, ge=1)
    save_total_limit: int | None = Field(2, ge=1, description="checkpoints kept (None: all)")
    logging_steps: int = Field(1, ge=1)
    gradient_checkpointing: bool = False
    bf16: bool = False
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    num_processes: int = Field(1, ge=1, description=">1: run as `accelerate launch` subprocess")
    accelerate_config: str | None = Field(None, description="num_processes > 1; default configs/accelerate/zero2.yaml")

    @model_validator(mode="after")
    def _batch_divisible(self) -> "GRPOParams":
        total = self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_processes
        if total % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size x gradient_accumulation_steps x num_processes = {total} "
                f"must be divisible by num_generations = {self.num_generations}"
            )
        return self


class EvalSystem(_Strict):
    """One system under evaluation: a prompting style over the policy model, optionally with an
    adapter (`adapter: policy` means the adapter this run trained in notebook 04)."""

    name: str
    prompt: Literal["vanilla", "strategy", "reasoning"] = "vanilla"
    adapter: str | None = None


class EvaluationParams(_Strict):
    systems: list[EvalSystem] = Field(
        default_factory=lambda: [
            EvalSystem(name="vanilla", prompt="vanilla"),
            EvalSystem(name="chain-of-strategy", prompt="strategy"),
            EvalSystem(name="base-reasoning", prompt="reasoning"),
            EvalSystem(name="rlff-esc", prompt="reasoning", adapter="policy"),
        ],
        min_length=1,
    )
    max_turns: int = Field(8, ge=1)
    num_cases: int | None = Field(None, ge=1)
    critic_mode: Literal["votes", "probs"] = "votes"
    critic_samples: int = Field(10, ge=1)
    critic_temperature: float = Field(1.1, ge=0.0, le=2.0)
    success_threshold: float = Field(0.5, ge=-1.0, le=1.0)
    bootstrap_samples: int = Field(1000, ge=10)
    batch_size: int = Field(32, ge=1)
    judge_pairs: int = Field(20, ge=0, description="transcripts per baseline for the pairwise judge")
    human_sheet_rows: int = Field(20, ge=0)

    @field_validator("systems")
    @classmethod
    def _unique_names(cls, v: list[EvalSystem]) -> list[EvalSystem]:
        names = [s.name for s in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate system names: {sorted(dup)}")
        return v


class AnalysisParams(_Strict):
    runs: list[str] | None = Field(None, description="run folders under output_root to compare; None: every run there")


class RunParams(_Strict):
    run_name: str = Field(..., pattern=r"^[A-Za-z0-9._-]+$")
    description: str = ""
    seed: int = 0
    output_root: str = "outputs"
    models: ModelRoles = Field(default_factory=ModelRoles)
    data: DataParams = Field(default_factory=DataParams)
    simulation: SimulationParams = Field(default_factory=SimulationParams)
    reward_model: RewardModelParams = Field(default_factory=RewardModelParams)
    grpo: GRPOParams = Field(default_factory=GRPOParams)
    evaluation: EvaluationParams = Field(default_factory=EvaluationParams)
    analysis: AnalysisParams = Field(default_factory=AnalysisParams)

    # Set by `load_params`, not by the file.
    source: str | None = Field(None, exclude=True)
    project_root: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _capabilities(self) -> "RunParams":
        roles = self.models
        if self.simulation.critic_mode == "probs" and not roles.critic.can_score_choices:
            raise ValueError(
                "simulation.critic_mode 'probs' needs choice scoring, which models.critic "
                f"(backend {roles.critic.backend}) cannot do without `logprobs: true`"
            )
        if self.evaluation.critic_mode == "probs" and not roles.eval_critic.can_score_choices:
            raise ValueError(
                "evaluation.critic_mode 'probs' needs choice scoring, which models.eval_critic "
                f"(backend {roles.eval_critic.backend}) cannot do without `logprobs: true`"
            )
        if roles.policy.backend == "openai":
            raise ValueError("models.policy must be a local model (hf or vllm): it is trained")
        if roles.reward_backbone.backend != "hf":
            raise ValueError("models.reward_backbone must use backend 'hf': it is trained in-process")
        return self

    # ---- paths -----------------------------------------------------------------------------

    def resolve(self, path: str | os.PathLike) -> Path:
        """A path from the file, with ${VARS} expanded and relative paths taken from the root."""
        p = Path(_expand(str(path))).expanduser()
        if not p.is_absolute():
            p = Path(self.project_root or ".") / p
        return p

    @property
    def run_dir(self) -> Path:
        return self.resolve(self.output_root) / self.run_name

    def stage_dir(self, stage: str) -> Path:
        d = self.run_dir / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def protocol_card(self, stage: str | None = None) -> dict[str, Any]:
        """Everything needed to interpret a number this run produced."""
        card = {"run_name": self.run_name, "params_file": self.source, "seed": self.seed}
        card["models"] = self.models.model_dump()
        sections = ["data", "simulation", "reward_model", "grpo", "evaluation"]
        for s in [stage] if stage in sections else sections:
            card[s] = getattr(self, s).model_dump()
        return card


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(s: str) -> str:
    def sub(m: re.Match) -> str:
        val = os.environ.get(m.group(1))
        if val is None:
            if m.group(2) is not None:
                return m.group(2)
            raise ParamsError(f"environment variable {m.group(1)} is not set (used in {s!r})")
        return val

    return _VAR.sub(sub, s)


def find_project_root(start: Path) -> Path:
    for d in [start, *start.parents]:
        if (d / "pyproject.toml").exists():
            return d
    return start


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def _format_errors(src: str, err: ValidationError) -> str:
    lines = [f"{src}: invalid parameters ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against rlff_utils/params.py)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def load_params(
    path: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
    check_files: bool = True,
) -> RunParams:
    """Read, override (dotted keys) and validate a params file; raise ParamsError on any problem.

    ``run_name`` defaults to the file's stem so ``params/smoke.yaml`` writes ``outputs/smoke/``.
    ``check_files`` also verifies that the data this run reads exists (off only for validating
    paper files on a machine without the data).
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    raw.setdefault("run_name", path.stem)
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    try:
        params = RunParams.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(_format_errors(str(path), e)) from None
    params.source = str(path.resolve())
    params.project_root = str(find_project_root(path.resolve().parent))
    if check_files:
        check_data_files(params)
    return params


def check_data_files(params: RunParams) -> None:
    """Fail before heavy work when a dataset the run reads is absent."""
    d = params.data
    needed: list[tuple[str, str, bool]] = []
    if "esconv" in d.datasets and d.esconv_source == "local":  # auto: a missing folder means the hub
        needed.append(("data.esconv_dir", d.esconv_dir, True))
    if "extes" in d.datasets:
        needed.append(("data.extes_path", d.extes_path, False))
    for field, value, is_dir in needed:
        try:
            p = params.resolve(value)
        except ParamsError as e:
            raise ParamsError(f"{params.source}: {field}: {e}") from None
        if not (p.is_dir() if is_dir else p.is_file()):
            kind = "folder" if is_dir else "file"
            raise ParamsError(f"{params.source}: {field}: {kind} not found: {p}")


def dump_params(params: RunParams, path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(params.model_dump(mode="json"), indent=2))


def main(argv: list[str] | None = None) -> int:
    """`python -m rlff_utils.params FILE...` validates params files (no models load)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--no-check-files", action="store_true")
    args = ap.parse_args(argv)
    status = 0
    for f in args.files:
        try:
            p = load_params(f, check_files=not args.no_check_files)
            print(f"ok  {f} -> {p.run_dir}")
        except ParamsError as e:
            print(e, file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
