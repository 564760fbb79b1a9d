"""The run schema: one params file describes one run, every stage and every model role.

Each section of a params file is one class here (``models.<role>`` -> :class:`ModelRole`,
``simulation`` -> :class:`SimulationParams`, ...), validated completely before any model or dataset
is loaded: unknown keys, types and ranges, NaN/inf and booleans-as-numbers are refused, and TRL's
``GRPOConfig`` is built from ``grpo.trainer`` so a bad trainer knob fails at load. How a file
becomes a :class:`RunParams` is :mod:`rlff_utils.params.files`.
"""

from __future__ import annotations

import json
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .. import models as model_registry

Backend = Literal["hf", "vllm", "openai"]
# How a reward model reads its input (rlff_utils.reward.backbone.load_backbone).
Pooling = Literal["last", "mean"]


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


class TokenPrice(_Strict):
    """What an API charges, in dollars per million tokens."""
    input: float = Field(..., ge=0)
    output: float = Field(..., ge=0)


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
    kv_cache: Literal["dynamic", "static"] = Field(
        "dynamic", description="hf: 'static' preallocates the KV cache, and transformers then compiles the "
        "decoding step on a GPU (the fast path without vLLM; each new batch shape compiles once)")
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
    price_per_mtok: TokenPrice | None = Field(
        None, description="dollars per million tokens (input, output) of this role's endpoint: `pipeline --estimate` "
        "and `sweep --dry-run` price its tokens; none is assumed")

    @model_validator(mode="after")
    def _known_model(self) -> "ModelRole":
        if self.kv_cache != "dynamic" and self.backend != "hf":
            raise ValueError(f"kv_cache: {self.kv_cache!r} is a setting of the hf backend, not of {self.backend!r}")
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


CriticMode = Literal["votes", "probs", "rule", "learned"]


class _CriticFields(_Strict):
    """How a stage's critic judges (the simulation's and the evaluation's; see rlff_utils.critic)."""
    critic_mode: CriticMode = "votes"
    critic_samples: int = Field(10, ge=1, description="votes mode: sampled answers per judgement")
    critic_temperature: float = Field(1.1, ge=0.0, le=2.0)
    success_threshold: float = Field(0.5, ge=-1.0, le=1.0)


@dataclass(frozen=True)
class CriticSettings:
    """One stage's critic, as :meth:`RunParams.critic_settings` reads it from the params: the
    model role, the mode and its sampling, the success threshold and the turns it reads."""
    stage: str
    role: ModelRole
    mode: str
    samples: int
    temperature: float
    threshold: float
    window: int


# The simulated seeker's profiles (their instructions: rlff_utils.agents.SEEKER_PROFILES).
SeekerProfile = Literal["cooperative", "resistant", "minimal_disclosure", "ruminating", "yes_but", "escalating"]


class SimulationParams(_CriticFields):
    num_candidates: int = Field(4, ge=1, description="m: candidate responses per context")
    max_turns: int = Field(8, ge=1, description="T: rollout turns (seeker+supporter exchanges)")
    seeker_profile: SeekerProfile | dict[SeekerProfile, float] = Field(
        "cooperative", description="the user simulator's profile, or a mix {profile: share}: each trajectory "
        "draws one by its identity")

    @field_validator("seeker_profile")
    @classmethod
    def _shares(cls, v: Any) -> Any:
        if isinstance(v, dict) and (not v or any(not (share > 0) for share in v.values())):
            raise ValueError("a mix of seeker profiles needs at least one profile, every share > 0")
        return v
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
    pooling: Pooling = Field(
        "last", description="what the head reads: the last token (the paper's, transformers' default) or the "
        "mean over the input's tokens (rlff_utils.reward.backbone.mean_pooling)")
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
    with LoRA, trained on real outcomes (see :mod:`rlff_utils.critic.learned`). Training
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

    reward_model: Literal["classification", "regression", "ranking", "random", "rule"] = Field(
        "classification", description="the reward model GRPO is rewarded by; `random`: an untrained head (ablation); "
        "`rule`: the planted rule itself, an oracle reward for planted runs only")
    format_reward: bool = True
    format_weight: float = Field(0.5, ge=0, description="alpha")
    max_prompt_length: int = Field(512, ge=16, description="tokens; the oldest turns are dropped to fit")
    num_train_prompts: int | None = Field(None, ge=1)
    seed: int | None = Field(
        None, description="GRPO's own seed (LoRA init, data order, sampling); None: the run's `seed`. A sweep "
        "over GRPO seeds sets this one, so data, simulation and reward model stay shared")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[str] | str = "all-linear"
    num_processes: int = Field(1, ge=1, description=">1: run as `accelerate launch` subprocess")
    accelerate_config: str | None = Field(None, description="num_processes > 1; default configs/accelerate/zero2.yaml")
    merge_adapter_for_generation: bool = Field(
        False, description="sample the G completions with the LoRA update folded into the weights (one matmul "
        "per layer instead of three; costs a copy of the adapted weights while sampling; not with vLLM or ZeRO-3)")
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

    @model_validator(mode="after")
    def _merge_needs_hf_generation(self) -> "GRPOParams":
        if self.merge_adapter_for_generation and self.trainer.get("use_vllm"):
            raise ValueError("merge_adapter_for_generation applies to transformers' generation; with "
                             "trainer.use_vllm TRL already merges the adapter when it syncs vLLM's weights")
        return self

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


def _no_duplicates(names: list[str], what: str) -> list[str]:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate {what}: {dup}")
    return names


class EvalSimulator(_Strict):
    """Another evaluation simulator beside ``models.eval_user_sim`` / ``models.eval_critic``: every
    system is evaluated under it on the same cases (a role left out is the default one)."""
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]+$")
    user_sim: ModelRole | None = None
    critic: ModelRole | None = None


class EvaluationParams(_CriticFields):
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
    seeker_profiles: list[SeekerProfile] = Field(
        default_factory=lambda: ["cooperative"], min_length=1,
        description="the seeker profiles every system is evaluated against; the first is the headline's")
    simulators: list[EvalSimulator] = Field(
        default_factory=list, description="more evaluation simulators (and critics), beside the default one")
    contrast_critic: Literal["votes", "probs"] | None = Field(
        None, description="models.eval_critic in this mode re-judges every evaluated conversation after the fact "
        "(e.g. the LLM critic beside a rule critic): SR/AT and agreement under it go to metrics.json")
    bootstrap_samples: int = Field(1000, ge=10)
    batch_size: int = Field(32, ge=1)
    judge_pairs: int = Field(20, ge=0, description="transcripts per baseline for the pairwise judge")
    human_sheet_rows: int = Field(20, ge=0)

    @field_validator("seeker_profiles")
    @classmethod
    def _unique_profiles(cls, v: list[str]) -> list[str]:
        return _no_duplicates(v, "seeker profiles")

    @field_validator("simulators")
    @classmethod
    def _simulator_names(cls, v: list[EvalSimulator]) -> list[EvalSimulator]:
        if "default" in {s.name for s in v}:
            raise ValueError("'default' names the models.eval_* roles: give the simulator another name")
        _no_duplicates([s.name for s in v], "simulator names")
        return v

    @field_validator("systems")
    @classmethod
    def _unique_names(cls, v: list[EvalSystem]) -> list[EvalSystem]:
        _no_duplicates([s.name for s in v], "system names")
        return v


class AnalysisParams(_Strict):
    runs: list[str] | None = Field(None, description="run folders under output_root to compare; None: every run there")


class RunParams(_Strict):
    run_name: str = Field(..., pattern=r"^[A-Za-z0-9._-]+$",
                          description="the run folder's name under output_root: letters, digits, '.', '_', '-', "
                          "not only dots ('.' and '..' would name output_root itself or the folder above it)")
    description: str = ""
    purpose: Literal["research", "smoke", "planted", "test"] = Field(
        "research", description="smoke / planted / test runs carry a banner: their numbers say nothing about RLFF-ESC")
    seed: int = 0
    output_root: str = Field("outputs", min_length=1, description="the folder holding every run's folder")
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

    @field_validator("run_name")
    @classmethod
    def _not_only_dots(cls, v: str) -> str:
        if set(v) == {"."}:
            raise ValueError(f"{v!r} is not a folder name of its own: it names output_root or a folder above it")
        return v

    @model_validator(mode="after")
    def _capabilities(self) -> "RunParams":
        roles = self.models
        for key, mode, role in (("simulation.critic_mode", self.simulation.critic_mode, "critic"),
                                ("evaluation.critic_mode", self.evaluation.critic_mode, "eval_critic"),
                                ("evaluation.contrast_critic", self.evaluation.contrast_critic, "eval_critic")):
            if mode == "probs" and not getattr(roles, role).can_score_choices:
                raise ValueError(f"{key} 'probs' needs choice scoring, which models.{role} "
                                 f"(backend {getattr(roles, role).backend}) cannot do without `logprobs: true`")
        if self.grpo.reward_model == "rule" and self.purpose != "planted":
            raise ValueError("grpo.reward_model 'rule' rewards the planted rule: it needs purpose: planted "
                             "(and simulation.critic_mode: rule)")
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

    # ---- the critics -----------------------------------------------------------------------

    def critic_settings(self, stage: Literal["simulation", "evaluation"], mode: str | None = None) -> CriticSettings:
        """The critic of ``stage``: ``models.critic`` with ``simulation.critic_*`` reading the last
        ``data.max_history_turns`` turns, or ``models.eval_critic`` with ``evaluation.critic_*``
        reading whole conversations (never longer than the opening + 2 turns per exchange).
        ``mode``: another mode than the stage's (the evaluation's contrast critic)."""
        if stage == "simulation":
            s, role, window = self.simulation, self.models.critic, self.data.max_history_turns
        elif stage == "evaluation":
            s, role, window = self.evaluation, self.models.eval_critic, 1 + 2 * self.evaluation.max_turns
        else:
            raise ValueError(f"a critic belongs to the 'simulation' or the 'evaluation' stage, not {stage!r}")
        return CriticSettings(stage, role, mode or s.critic_mode, s.critic_samples, s.critic_temperature,
                              s.success_threshold, window)

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
    bfloat16 / float16 / float32; ``auto`` is :func:`rlff_utils.models.auto_dtype` on the policy's
    device (bf16 on a GPU or CPU that runs it fast, else fp32)."""
    role = params.models.policy
    if role.dtype != "auto":
        return role.dtype
    return model_registry.auto_dtype(model_registry.pick_device(role.device))


def grpo_seed(params: RunParams) -> int:
    """GRPO's seed: ``grpo.seed``, else the run's ``seed``."""
    return params.seed if params.grpo.seed is None else params.grpo.seed


def _config_key(params: RunParams) -> str:
    return json.dumps([params.grpo.args, params.models.policy.dtype, grpo_seed(params)], sort_keys=True, default=str)


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
        seed=grpo_seed(params),
        data_seed=grpo_seed(params),
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


