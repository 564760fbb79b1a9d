"""Training the reward-model variants, with resume, and the stage entry of notebook 03.

:func:`train_reward_models` is the stage: it enters the run folder through
:func:`rlff_utils.runs.begin_stage` (writer lock; results computed with other settings are
refused, never mixed; ``force`` starts over), splits the reward frame, trains or reuses each variant
in ``reward_model.variants``, scores the untrained ``random`` reference and writes the comparison.

Inside a stage whose record matches the params, a variant with saved metrics is reused. A
variant interrupted mid-training resumes from its last epoch checkpoint when its fingerprint (the
stage's settings, the batch geometry and a hash of the training data) matches; otherwise it
starts over. The fingerprint holds everything the record compares, so it never resumes what the
record would call stale.

Training arguments are the project's (from ``reward_model`` and ``models.reward_backbone``)
updated by the ``reward_model.trainer`` block, which may set any other ``TrainingArguments``
field.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .. import runs
from .backbone import load_backbone, load_rm_tokenizer, lora_config, precision
from .inputs import RMSplits, history_turns, run_splits, training_sets
from .metrics import VariantResult, comparison_table, read_metrics, read_predictions, variant_metrics
from .scorer import load_scorer, predict
from .variants import NUM_LABELS, VARIANTS, RewardModelError, check_variant, stage_writer, variant_dir

if TYPE_CHECKING:  # pragma: no cover
    from ..params import RewardModelParams, RunParams

FINGERPRINT = "fingerprint.json"  # inside a variant's checkpoints folder: what its checkpoints were trained on


# --------------------------------------------------------------------------------------------
# One variant
# --------------------------------------------------------------------------------------------


def training_arguments(params: "RunParams", output_dir: Path, n_train: int, has_valid: bool, config_cls=None,
                       rm: "RewardModelParams | None" = None, **extra):
    """``TrainingArguments`` (or ``config_cls``, e.g. TRL's ``RewardConfig``): the project's
    defaults, updated by ``reward_model.trainer``, then the settings the project's own fields
    decide (which the trainer block may not name; params loading refuses them). ``rm``: the
    training knobs (default ``reward_model``; the learned critic passes its own)."""
    from transformers import TrainingArguments

    rm = rm or params.reward_model
    steps_per_epoch = max(1, math.ceil(n_train / (rm.batch_size * rm.gradient_accumulation_steps)))
    total = max(1, int(steps_per_epoch * rm.epochs))
    defaults = {
        "per_device_eval_batch_size": rm.batch_size,
        "save_total_limit": 1,  # (plus the best one, kept while it is not the last)
        "logging_steps": max(1, total // 50),
        "report_to": "none",
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
        **extra,
    }
    owned = {
        "output_dir": str(output_dir),
        "num_train_epochs": rm.epochs,
        "per_device_train_batch_size": rm.batch_size,
        "gradient_accumulation_steps": rm.gradient_accumulation_steps,
        "learning_rate": rm.learning_rate,
        "seed": params.seed,
        "data_seed": params.seed,
        "eval_strategy": "epoch" if has_valid else "no",
        "save_strategy": "epoch",  # full state every epoch: an interrupted variant resumes there
        "load_best_model_at_end": has_valid,
        "metric_for_best_model": "eval_loss" if has_valid else None,
        "greater_is_better": False if has_valid else None,
        **precision(params).training_arguments(),
    }
    clash = sorted(set(rm.trainer) & set(owned))
    if clash:
        raise RewardModelError(f"reward_model.trainer may not set {clash}: the project sets them from its own fields")
    return (config_cls or TrainingArguments)(**{**defaults, **rm.trainer, **owned})


def fingerprint(params: "RunParams", variant: str, train, valid) -> dict[str, Any]:
    """What a variant's checkpoints were trained on: the stage's settings (what its record
    compares), the batch geometry (a checkpoint's step count depends on it) and the data."""
    digest = hashlib.sha256()
    for ds in (train, valid):
        digest.update(json.dumps(ds.to_dict(), sort_keys=True).encode())
    rm = params.reward_model
    return runs.json_ready({
        "variant": variant,
        "settings": runs.stage_settings(params, runs.REWARD_MODEL),
        "batch": {"batch_size": rm.batch_size, "gradient_accumulation_steps": rm.gradient_accumulation_steps},
        "data_sha256": digest.hexdigest(),
    })


def resume_point(ckpt_dir: Path, stamp: dict[str, Any]) -> str | None:
    """The last complete checkpoint (:func:`rlff_utils.runs.last_complete_checkpoint`) of an
    interrupted run with the same fingerprint, else None (stale checkpoints are removed and the
    fingerprint written for the run about to start)."""
    try:
        same = runs.read_json(ckpt_dir / FINGERPRINT, default=None) == stamp
    except ValueError:  # torn by a kill: what the checkpoints were trained on is unknown
        same = False
    last = runs.last_complete_checkpoint(ckpt_dir) if same else None  # a torn checkpoint is skipped
    if not last:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        runs.write_json(stamp, ckpt_dir / FINGERPRINT)
    return last


def _trainer(params: "RunParams", rm: "RewardModelParams", ckpts: Path, ranking: bool, model, tok, train, valid,
             callbacks):
    """transformers' ``Trainer`` for the labelled heads, TRL's ``RewardTrainer`` for ranking."""
    from transformers import DataCollatorWithPadding, Trainer

    has_valid = len(valid) > 0
    common = {"model": model, "train_dataset": train, "eval_dataset": valid if has_valid else None,
              "processing_class": tok, "callbacks": callbacks}
    if ranking:
        from trl import RewardConfig, RewardTrainer

        args = training_arguments(params, ckpts, len(train), has_valid, RewardConfig, rm=rm, max_length=None,
                                  disable_dropout=False)
        return RewardTrainer(args=args, **common)
    args = training_arguments(params, ckpts, len(train), has_valid, rm=rm)
    return Trainer(args=args, data_collator=DataCollatorWithPadding(tok), **common)


def fit_head(params: "RunParams", rm: "RewardModelParams", num_labels: int, tok, train, valid, ckpts: Path,
             stamp: dict[str, Any], ranking: bool = False) -> tuple[Any, list[dict], dict[str, Any]]:
    """Train a LoRA head on the backbone (``num_labels`` outputs; ``ranking``: TRL's pairwise
    loss) on tokenised ``train``, early-stopping on ``valid``, checkpointing every epoch into
    ``ckpts`` and resuming there when ``stamp`` (what the checkpoints were trained on) matches.
    Returns (peft model, log history, facts). Every head of the project trains here."""
    from peft import get_peft_model
    from transformers import EarlyStoppingCallback

    has_valid = len(valid) > 0
    notes = [] if has_valid else ["empty validation set: trained for all epochs without early stopping"]
    facts: dict[str, Any] = {"notes": notes, "n_train": len(train), "n_valid": len(valid)}
    model = load_backbone(params.models.reward_backbone.name, num_labels, params.seed, tok.pad_token_id,
                          precision(params).train_dtype, rm.pooling)
    model = get_peft_model(model, lora_config(rm, model))
    for weight in model.parameters():  # the trained weights stay fp32 whatever the backbone holds
        if weight.requires_grad:
            weight.data = weight.data.float()
    callbacks = [EarlyStoppingCallback(early_stopping_patience=rm.early_stopping_patience)] if has_valid else []
    trainer = _trainer(params, rm, ckpts, ranking, model, tok, train, valid, callbacks)

    resume = resume_point(ckpts, stamp)
    facts["resumed_from"] = Path(resume).name if resume else None
    t0 = time.monotonic()
    trainer.train(resume_from_checkpoint=resume)
    facts["train_seconds"] = round(time.monotonic() - t0, 1)
    facts["epochs_run"] = round(float(trainer.state.epoch or 0), 2)
    facts["best_eval_loss"] = trainer.state.best_metric
    return trainer.model, trainer.state.log_history, facts


def fit(params: "RunParams", variant: str, splits: RMSplits) -> tuple[Any, list[dict], dict[str, Any]]:
    """Train one variant with early stopping on the validation split; returns (peft model,
    log history, facts for its metrics). Raises RewardModelError on data no model can learn from."""
    tok = load_rm_tokenizer(params.models.reward_backbone.name)
    train, valid, notes = training_sets(variant, splits, tok, params)
    ckpts = runs.layout(params).rm_checkpoints(variant)
    model, log, facts = fit_head(params, params.reward_model, NUM_LABELS[variant], tok, train, valid, ckpts,
                                 fingerprint(params, variant, train, valid), ranking=variant == "ranking")
    facts["notes"] = notes + facts["notes"]
    return model, log, facts


def _reuse(params: "RunParams", variant: str) -> VariantResult | None:
    lay = runs.layout(params)
    if not (lay.rm_metrics(variant).is_file() and lay.rm_predictions(variant).is_file()):
        return None
    log = runs.read_json(lay.rm_log_history(variant), default=[])
    return VariantResult(variant, read_metrics(lay.rm_metrics(variant)), read_predictions(lay.rm_predictions(variant)),
                         log, reused=True)


def train_variant(params: "RunParams", variant: str, splits: RMSplits, force: bool = False) -> VariantResult:
    """Train (or reuse) one variant and evaluate it on the test split.

    A variant whose metrics exist is reused unless ``force``. Training checkpoints every epoch
    and an interrupted variant resumes from its last checkpoint (same fingerprint only); it
    writes the adapter, its config (rm_config.json), the log history, then predictions and metrics last, so an
    interrupted run never looks finished.
    """
    check_variant(variant, VARIANTS)
    with stage_writer(params) as lay:
        variant_dir(params, variant)
        if not force and (reused := _reuse(params, variant)):
            return reused
        for stale in (lay.rm_metrics(variant), lay.rm_predictions(variant), lay.rm_skipped(variant)):
            stale.unlink(missing_ok=True)
        if force:
            shutil.rmtree(lay.rm_checkpoints(variant), ignore_errors=True)

        rm = params.reward_model
        model, log, facts = fit(params, variant, splits)
        model.save_pretrained(str(lay.rm_adapter(variant)))
        config = {
            "variant": variant,
            "backbone": params.models.reward_backbone.name,
            "num_labels": NUM_LABELS[variant],
            "max_length": rm.max_length,
            "max_history_turns": history_turns(params),
            "pooling": rm.pooling,
            "seed": params.seed,
            "reward_model_params": rm.model_dump(),
        }
        runs.write_json(config, lay.rm_config(variant))
        runs.write_json(log, lay.rm_log_history(variant))
        shutil.rmtree(lay.rm_checkpoints(variant), ignore_errors=True)
        del model
        gc.collect()

        pred = predict(load_scorer(params, variant), splits.test)
        pred.to_csv(lay.rm_predictions(variant), index=False)
        metrics = {**variant_metrics(pred, variant), **{k: v for k, v in facts.items() if k != "notes"}}
        metrics["notes"] = facts["notes"] + metrics["notes"]
        runs.write_json(metrics, lay.rm_metrics(variant))
        return VariantResult(variant, metrics, pred, log)


def evaluate_random(params: "RunParams", splits: RMSplits, force: bool = False) -> VariantResult:
    """The untrained reference (the paper's random-RM ablation) on the same test split."""
    with stage_writer(params) as lay:
        variant_dir(params, "random")
        if not force and (reused := _reuse(params, "random")):
            return reused
        pred = predict(load_scorer(params, "random"), splits.test)
        pred.to_csv(lay.rm_predictions("random"), index=False)
        metrics = variant_metrics(pred, "random")
        runs.write_json(metrics, lay.rm_metrics("random"))
        return VariantResult("random", metrics, pred)


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


@dataclass
class RewardModelReport:
    splits: RMSplits
    results: dict[str, VariantResult]
    comparison: pd.DataFrame

    @property
    def predictions(self) -> pd.DataFrame:
        """All variants' held-out scores in one long frame (a ``variant`` column)."""
        return pd.concat([r.predictions.assign(variant=v) for v, r in self.results.items()], ignore_index=True)

    def log_frame(self) -> pd.DataFrame:
        """Training and validation loss per variant and epoch, long format."""
        rows = []
        for v, r in self.results.items():
            for e in r.log_history:
                for key, kind in (("loss", "train"), ("eval_loss", "valid")):
                    if key in e and "epoch" in e:
                        rows.append({"variant": v, "epoch": e["epoch"], "split": kind, "loss": e[key]})
        return pd.DataFrame(rows, columns=["variant", "epoch", "split", "loss"])


def _skip(params: "RunParams", variant: str, error: RewardModelError) -> dict[str, Any]:
    """A variant this data cannot train: its stale adapter removed, the reason saved."""
    lay = runs.layout(params)
    shutil.rmtree(lay.rm_adapter(variant), ignore_errors=True)
    note = {"variant": variant, "status": "skipped", "note": str(error), "notes": [str(error)]}
    runs.write_json(note, lay.rm_skipped(variant))
    warnings.warn(f"reward model {variant}: skipped: {error}", stacklevel=3)
    return note


def train_reward_models(
    params: "RunParams", frame: pd.DataFrame | None = None, force: bool | None = None
) -> RewardModelReport:
    """Notebook 03's training stage: split, train each variant in ``reward_model.variants``
    (reusing finished ones), score the random reference, write ``splits.csv`` and
    ``comparison.csv``. ``frame``: the reward frame (default: this run's simulation records).
    ``force`` (default ``reward_model.retrain``) empties the stage folder first. A variant that
    cannot be trained on this data (no ranking pair, say) is reported as skipped with the reason
    instead of stopping the others."""
    force = params.reward_model.retrain if force is None else force
    splits = run_splits(params, frame)
    with runs.begin_stage(params, runs.REWARD_MODEL, force):
        lay = runs.layout(params)
        splits.assignments().to_csv(lay.rm_splits, index=False)
        results: dict[str, VariantResult] = {}
        skipped: dict[str, dict[str, Any]] = {}
        for variant in params.reward_model.variants:
            try:
                results[variant] = train_variant(params, variant, splits)
            except RewardModelError as e:
                skipped[variant] = _skip(params, variant, e)
        results["random"] = evaluate_random(params, splits)
        table = comparison_table({**results, **skipped})
        order = {v: i for i, v in enumerate([*params.reward_model.variants, "random"])}
        table = table.sort_values("variant", key=lambda s: s.map(order)).reset_index(drop=True)
        table.to_csv(lay.rm_comparison, index=False)
    return RewardModelReport(splits, results, table)
