"""The run schema: one params file describes one run, every stage and every model role.

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

import json
import math
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from . import models as model_registry

Backend = Literal["hf", "vllm", "openai"]


class ParamsError(ValueError):
    """A params file that cannot describe a run; the message names the file and the field."""


def _allows_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    return any(_allows_bool(a) for a in typing.get_args(annotation))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's ``true`` is not a count: pydantic would read it as 1."""
        if isinstance(value, bool) and info.field_name:
            annotation = cls.model_fields[info.field_name].annotation
            if not _allows_bool(annotation) and annotation is not Any:
                raise ValueError(f"expected a number or text, got the boolean {str(value).lower()}")
        return value


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
    esconv_source: Literal["auto", "local", "hub"] = Field(
        "auto", description="auto: the local folder when it exists, else the Hugging Face hub")
    # Local copies. Unset, they default to $RLFF_DATA_DIR/... when that variable is set (DATA_DIR_DEFAULTS).
    esconv_dir: str | None = None
    esconv_hub_id: str = "thu-coai/esconv"
    extes_path: str | None = None
    esconv_failed_path: str | None = Field(None, description="ESConv's failed conversations (original layout)")
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
    critic_mode: Literal["votes", "probs", "rule", "learned"] = "votes"
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
    trainer: dict[str, Any] = Field(
        default_factory=dict,
        description="extra transformers TrainingArguments (weight_decay, lr_scheduler_type, warmup_steps, ...): "
        "they override the project's defaults; keys the fields above or the run folder decide are refused",
    )

    @field_validator("trainer")
    @classmethod
    def _trainer_arguments(cls, v: dict[str, Any]) -> dict[str, Any]:
        """Checked by building transformers' TrainingArguments (no model loads), so any of its
        knobs works without code here and a misspelt one fails at load."""
        epoch_wise = "the per-epoch evaluation and checkpoints behind early stopping and resume"
        owned_by = {  # keys the project sets itself: a value here would contradict it
            "output_dir": "the run folder", "num_train_epochs": "reward_model.epochs",
            "per_device_train_batch_size": "reward_model.batch_size",
            "gradient_accumulation_steps": "reward_model.gradient_accumulation_steps",
            "learning_rate": "reward_model.learning_rate", "seed": "seed", "data_seed": "seed",
            **dict.fromkeys(("bf16", "fp16", "bf16_full_eval", "fp16_full_eval"), "models.reward_backbone.dtype"),
            "use_cpu": "models.reward_backbone.device",
            **dict.fromkeys(("eval_strategy", "save_strategy", "load_best_model_at_end", "metric_for_best_model",
                             "greater_is_better"), epoch_wise),
        }
        owned = [k for k in v if k in owned_by]
        if owned:
            raise ValueError("; ".join(f"{k!r} is set by {owned_by[k]}, not here" for k in owned))
        if not v:
            return v
        import difflib
        import tempfile

        from transformers import TrainingArguments

        with tempfile.TemporaryDirectory() as tmp:
            try:
                TrainingArguments(output_dir=tmp, **v)
            except TypeError as e:
                known = list(TrainingArguments.__dataclass_fields__)
                bad = [k for k in v if k not in known]
                hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else repr(k)
                         for k in bad]
                raise ValueError(f"not a transformers TrainingArguments setting: {', '.join(hints) or e}") from None
            except ValueError as e:
                raise ValueError(f"transformers TrainingArguments refuses these settings: {e}") from None
        return v


class LearnedCriticParams(_Strict):
    """The learned critic (``critic_mode: learned``): a two-class head on ``models.reward_backbone``
    with LoRA, trained on real outcomes (see :mod:`rlff_utils.reward.learned_critic`). Training
    knobs left unset are ``reward_model``'s."""

    heldout_fraction: float = Field(0.3, gt=0, le=1, description="share of each card group held out: its card")
    valid_fraction: float = Field(0.15, gt=0, lt=1, description="share of the training conversations for early stopping")
    max_train_conversations: int | None = Field(
        None, ge=1, description="conversations per outcome trained on (None: every not-helped one, as many helped)")
    feedback_prefixes: bool = Field(True, description="also train on prefixes ending at a seeker's 1-5 feedback")
    feedback_high: int = Field(4, ge=1, le=5, description="a prefix rated at least this: helped")
    feedback_low: int = Field(2, ge=1, le=5, description="a prefix rated at most this: not helped")
    epochs: float | None = Field(None, gt=0)
    learning_rate: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    max_length: int | None = Field(None, ge=32)
    lora_r: int | None = Field(None, ge=1)
    lora_alpha: int | None = Field(None, ge=1)
    lora_layers: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _feedback(self) -> "LearnedCriticParams":
        if self.feedback_low >= self.feedback_high:
            raise ValueError("feedback_low must be below feedback_high")
        return self


class ValidationParams(_Strict):
    """Validity cards (notebook 03): does a judge score real conversations whose seekers were helped
    (ESConv, intensity drop >= ``min_intensity_drop``) above those whose seekers were not (the ESConv
    authors' failed conversations, ``data.esconv_failed_path``)? See :mod:`rlff_utils.validity`."""

    judges: list[Literal["critic", "reward_model", "learned_critic"]] = Field(
        default_factory=lambda: ["critic", "reward_model", "learned_critic"])
    failed_conversations: int | None = Field(None, ge=1, description="failed ones carded (seeded; None: all)")
    success_conversations: int | None = Field(
        None, ge=1, description="successful ESConv ones sampled (seeded; None: as many as failed ones)")
    min_intensity_drop: int = Field(2, ge=1, le=4, description="initial - final intensity of a successful one")
    bootstrap_samples: int = Field(1000, ge=10)
    learned_critic: LearnedCriticParams = Field(default_factory=LearnedCriticParams)


# TRL GRPOConfig values the project chooses (the paper's settings); ``grpo.trainer`` overrides
# them key by key and may set any other GRPOConfig field.
TRAINER_DEFAULTS: dict[str, Any] = {
    "num_generations": 4,         # G
    "temperature": 1.1,
    "beta": 0.04,                 # KL to the initial policy, as in GRPO (TRL's default is 0.0)
    "loss_type": "grpo",          # sequence-normalised GRPO loss (TRL's default is "dapo")
    "scale_rewards": "group",
    "learning_rate": 1e-5,
    "max_steps": 100,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "max_completion_length": 256,
    "save_steps": 25,
    "save_total_limit": 2,
    "logging_steps": 1,
}
# GRPOConfig fields the project sets from other params; refused in ``grpo.trainer``.
TRAINER_SET_BY_PROJECT = {
    "output_dir": "outputs/<run>/policy/checkpoints",
    "seed": "seed", "data_seed": "seed",
    "reward_weights": "grpo.format_reward / grpo.format_weight",
    "bf16": "models.policy.dtype", "fp16": "models.policy.dtype", "model_init_kwargs": "models.policy.dtype",
    "use_cpu": "the device", "report_to": "the project (logs go to the run folder)",
    "remove_unused_columns": "the project (the reward model reads the history column)",
}


class GRPOParams(_Strict):
    """The project's own GRPO settings. Every knob of TRL's ``GRPOConfig`` (sampling, objective,
    optimiser, vLLM, logging) goes in ``trainer:``, merged over :data:`TRAINER_DEFAULTS` and
    validated by constructing a ``GRPOConfig`` at load; ``params.grpo.config`` is that object."""

    reward_model: Literal["classification", "regression", "ranking", "random"] = "classification"
    format_reward: bool = True
    format_weight: float = Field(0.5, ge=0, description="alpha")
    max_prompt_length: int = Field(512, ge=16, description="tokens; the oldest turns are dropped to fit")
    num_train_prompts: int | None = Field(None, ge=1)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[str] | str = "all-linear"
    num_processes: int = Field(1, ge=1, description=">1: run as `accelerate launch` subprocess")
    accelerate_config: str | None = Field(None, description="num_processes > 1; default configs/accelerate/zero2.yaml")
    trainer: dict[str, Any] = Field(default_factory=dict, description="any trl.GRPOConfig field")

    _config: Any = PrivateAttr(default=None)
    _config_key: str | None = PrivateAttr(default=None)

    @field_validator("trainer")
    @classmethod
    def _not_set_by_project(cls, v: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(set(v) & set(TRAINER_SET_BY_PROJECT))
        if clash:
            where = "; ".join(f"{k} comes from {TRAINER_SET_BY_PROJECT[k]}" for k in clash)
            raise ValueError(f"set by the project, not in grpo.trainer: {where}")
        return v

    @property
    def args(self) -> dict[str, Any]:
        """The GRPOConfig keyword arguments this run asks for (defaults updated by ``trainer``)."""
        return {**TRAINER_DEFAULTS, **self.trainer}

    @property
    def config(self):
        """The validated ``trl.GRPOConfig`` (its output_dir is a placeholder; see grpo.build_grpo_config)."""
        return self._config


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
    critic_mode: Literal["votes", "probs", "rule", "learned"] = "votes"
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
    purpose: Literal["research", "smoke", "planted", "test"] = Field(
        "research", description="smoke / planted / test runs carry a banner: their numbers say nothing about RLFF-ESC")
    seed: int = 0
    output_root: str = "outputs"
    models: ModelRoles = Field(default_factory=ModelRoles)
    data: DataParams = Field(default_factory=DataParams)
    simulation: SimulationParams = Field(default_factory=SimulationParams)
    reward_model: RewardModelParams = Field(default_factory=RewardModelParams)
    validation: ValidationParams = Field(default_factory=ValidationParams)
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

    @model_validator(mode="after")
    def _grpo_config(self) -> "RunParams":
        """Build TRL's GRPOConfig from ``grpo.trainer`` now: a bad knob fails before any model loads."""
        if self.grpo._config is None or self.grpo._config_key != _config_key(self):
            self.grpo._config = build_trainer_config(self, output_dir="<run>/policy/checkpoints", validate_only=True)
            self.grpo._config_key = _config_key(self)
        return self

    # ---- paths -----------------------------------------------------------------------------

    def resolve(self, path: str | os.PathLike) -> Path:
        """A path value of this run (stored absolute at load); a relative one is taken from the
        project root (project files such as configs/accelerate/zero2.yaml)."""
        p = Path(str(path)).expanduser()
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


def policy_precision(params: RunParams) -> str:
    """The policy's one precision knob, ``models.policy.dtype``, as GRPO's training precision:
    bfloat16 / float16 / float32; ``auto`` is bfloat16 on a GPU that supports it, else float32."""
    dtype = params.models.policy.dtype
    if dtype != "auto":
        return dtype
    try:
        import torch

        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    except ImportError:  # pragma: no cover
        return "float32"


def _config_key(params: RunParams) -> str:
    return json.dumps([params.grpo.args, params.models.policy.dtype, params.seed], sort_keys=True, default=str)


def build_trainer_config(params: RunParams, output_dir: str, reward_weights: list[float] | None = None,
                         validate_only: bool = False):
    """``trl.GRPOConfig`` for this run: ``grpo.trainer`` over the project's defaults, plus what the
    project derives (seed, precision, device, reward weights, bookkeeping)."""
    import torch
    from trl import GRPOConfig

    g = params.grpo
    precision = policy_precision(params)
    args = g.args
    if args.get("use_vllm") and "vllm_max_model_length" not in args:
        args["vllm_max_model_length"] = g.max_prompt_length + int(args.get("max_completion_length", 256))
    derived = dict(
        output_dir=output_dir,
        seed=params.seed,
        data_seed=params.seed,
        model_init_kwargs={"dtype": precision},
        bf16=precision == "bfloat16",
        fp16=precision == "float16",
        # transformers refuses bf16 on a GPU-less machine unless told it runs on the CPU
        use_cpu=validate_only or not torch.cuda.is_available(),
        report_to="none",
        remove_unused_columns=False,  # the reward model reads the `history` column
    )
    if reward_weights is not None:
        derived["reward_weights"] = reward_weights
    args.setdefault("dataloader_pin_memory", torch.cuda.is_available())
    args.setdefault("disable_tqdm", False)
    try:
        return GRPOConfig(**derived, **args)
    except TypeError as e:
        m = re.search(r"unexpected keyword argument '([^']+)'", str(e))
        what = f"unknown GRPOConfig field {m.group(1)!r} (TRL's GRPOConfig lists the valid ones)" if m else str(e)
        raise ValueError(f"grpo.trainer: {what}") from None
    except ValueError as e:
        raise ValueError(f"grpo.trainer: {e}") from None


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

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
    p = Path(value).expanduser()
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
            node[leaf] = _absolute(node[leaf], base)
    for role in (raw.get("models") or {}).values():
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
            msg = "unknown key (check the spelling against rlff_utils/params.py)"
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
    _resolve_paths(raw, base.resolve())
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
    here = Path(__file__).resolve().parents[1]
    if (here / "notebooks").is_dir():
        return here
    return project_root_of(Path.cwd())


def project_root_of(start: Path) -> Path:
    for d in [start.resolve(), *start.resolve().parents]:
        if (d / "pyproject.toml").exists():
            return d
    return start


find_project_root = project_root_of


def write_resolved(params: RunParams, path: str | os.PathLike) -> Path:
    """The run as a params file with every value resolved (absolute paths, variables expanded),
    for notebook kernels and subprocesses; ``load_params`` reads it back to the same run."""
    data = params.model_dump(mode="json")
    data["source"] = params.source
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------
# Environment checks (before any model loads)
# --------------------------------------------------------------------------------------------

ROLES_BY_STAGE = {
    "simulation": ("policy", "system", "user_sim", "critic"),
    "reward_model": ("reward_backbone", "critic"),
    "evaluation": ("policy", "eval_user_sim", "eval_critic", "judge"),
}


def check_environment(params: RunParams) -> None:
    check_data_files(params)
    check_model_access(params)


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


def dump_params(params: RunParams, path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(params.model_dump(mode="json"), indent=2))


def main(argv: list[str] | None = None) -> int:
    """`python -m rlff_utils.params FILE...` validates params files (no models load)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-check-files", action="store_true")
    args = ap.parse_args(argv)
    status = 0
    for f in args.files:
        try:
            p = load_params(f, parse_set(args.sets), check_files=not args.no_check_files)
            print(f"ok  {f} -> {p.run_dir}")
        except ParamsError as e:
            print(e, file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
