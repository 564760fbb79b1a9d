"""The learned critic (``critic_mode: learned``): a critic grounded in what real seekers reported.

The paper's critic is an LLM asked whether the seeker's problem is solved. This one is a two-class
head on the reward-model backbone (``models.reward_backbone``, LoRA, trained by the same
:func:`rlff_utils.reward.train.fit_head` as the reward models) that reads a conversation's last
``data.max_history_turns`` turns and predicts whether the seeker was helped. Its examples are real
(:mod:`rlff_utils.outcomes`): ESConv conversations whose seeker's intensity fell by at least
``validation.min_intensity_drop`` (label 1, *helped*), the authors' failed conversations and ESConv
ones without a drop (label 0, *not helped*), and prefixes ending at a seeker's 1–5 feedback
(≥ ``feedback_high``: 1, ≤ ``feedback_low``: 0); train and validation split by conversation, and
the card's held-out conversations never seen.

Its score keeps PPDPP's meaning: ``2·P(helped) − 1`` in [−1, 1] (−1: surely not helped, 1: surely
helped), so ``score > success_threshold`` is success as for the LLM critic (0.5 ⇔ P(helped) > 0.75).

Training is a step of its own (:func:`train_learned_critic`), which notebook 03 calls, and notebook
02 first when the simulation's critic is the learned one; building a critic only loads it
(:func:`load_learned_critic`, an error naming that step when it was never trained). It is trained
once per run into ``reward_model/learned_critic/``, checkpointed every epoch, and reused while its
fingerprint (every setting it depends on, and the conversations it trains on) is unchanged.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .. import runs
from ..outcomes import OutcomeError, label_balance, labelled_states, outcome_sets
from ..reward.backbone import load_backbone, load_rm_tokenizer, precision
from ..reward.inputs import tokenize_labelled
from ..reward.scorer import RewardScorer
from ..reward.train import fit_head
from ..text import last_turns, transcript
from .labels import CriticResult, learned_result

if TYPE_CHECKING:  # pragma: no cover
    from ..outcomes import OutcomeSets
    from ..params import RewardModelParams, RunParams

LABELS = {0: "not helped", 1: "helped"}
SCORE = "2 P(helped) - 1"
KNOBS = ("epochs", "learning_rate", "batch_size", "max_length", "lora_r", "lora_alpha", "lora_layers")


def critic_input(history: Sequence[dict[str, Any]], window: int | None) -> str:
    """What the learned critic reads: the last ``window`` turns as a transcript."""
    return f"Conversation:\n{transcript(last_turns(history, window))}"


def knobs(params: "RunParams") -> "RewardModelParams":
    """``reward_model``'s training settings with the learned critic's own where it sets them."""
    lc = params.validation.learned_critic
    return params.reward_model.model_copy(update={k: getattr(lc, k) for k in KNOBS if getattr(lc, k) is not None})


def critic_settings(params: "RunParams") -> dict[str, Any]:
    """Everything the learned critic depends on besides its data (compared before reuse)."""
    v, rm, role = params.validation, knobs(params), params.models.reward_backbone
    return runs.json_ready({
        "backbone": {"name": role.name, "dtype": role.dtype},
        "seed": params.seed,
        "window": params.data.max_history_turns,
        "outcomes": {k: getattr(v, k) for k in ("min_intensity_drop", "failed_conversations", "success_conversations")},
        "learned_critic": v.learned_critic.model_dump(),
        "training": rm.model_dump(exclude={"variants", "retrain", "valid_fraction", "test_fraction",
                                           "max_history_turns", "max_pairs_per_context"}),
    })


def learned_critic_wanted(params: "RunParams") -> bool:
    """Whether the run uses a learned critic: a stage's critic is learned, or it has a card."""
    return ("learned" in (params.simulation.critic_mode, params.evaluation.critic_mode)
            or "learned_critic" in params.validation.judges)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _datasets(params: "RunParams", sets: "OutcomeSets", tok):
    import datasets

    lc, window, max_length = params.validation.learned_critic, params.data.max_history_turns, knobs(params).max_length
    high, low = (lc.feedback_high, lc.feedback_low) if lc.feedback_prefixes else (None, None)
    out = []
    for pairs in (sets.train, sets.valid):
        rows = labelled_states(pairs, high, low)
        ds = datasets.Dataset.from_dict({"text": [critic_input(r["history"], window) for r in rows],
                                         "label": [r["label"] for r in rows]})
        out.append((rows, tokenize_labelled(ds, tok, max_length)))
    return out


def _check(sets: "OutcomeSets") -> None:
    labels = {y for _, y in sets.train}
    if labels != {0, 1}:
        missing = "not-helped (failed)" if 0 not in labels else "helped (successful)"
        raise OutcomeError(
            f"no {missing} conversation left to train the learned critic: the card holds them out "
            "(lower validation.learned_critic.heldout_fraction or validation.failed_conversations)")


def train_learned_critic(params: "RunParams", sets: "OutcomeSets | None" = None, force: bool = False) -> dict[str, Any]:
    """Train the run's learned critic (or reuse it: same fingerprint, unless ``force``); returns
    its record (``learned_critic/metrics.json``). Holds the reward-model stage's writer lock; an
    interrupted training resumes from its last epoch checkpoint."""
    lay = runs.layout(params)
    with runs.stage_lock(lay.stage(runs.REWARD_MODEL)):
        sets = sets or outcome_sets(params)
        _check(sets)
        tok = load_rm_tokenizer(params.models.reward_backbone.name)
        (train_rows, train), (valid_rows, valid) = _datasets(params, sets, tok)
        digest = hashlib.sha256(json.dumps([[r["dialogue_id"], r["kind"], r["label"]] for r in train_rows + valid_rows])
                                .encode()).hexdigest()
        stamp = {"settings": critic_settings(params), "data_sha256": digest}
        saved = runs.read_json(lay.learned_critic_metrics, default=None)
        if (not force and saved and saved.get("fingerprint") == stamp
                and (lay.learned_critic_adapter / "adapter_config.json").is_file()):
            return {**saved, "reused": True}
        for stale in (lay.learned_critic_metrics, lay.learned_critic_config):
            stale.unlink(missing_ok=True)
        shutil.rmtree(lay.learned_critic_adapter, ignore_errors=True)
        if force:
            shutil.rmtree(lay.learned_critic_checkpoints, ignore_errors=True)

        rm = knobs(params)
        model, log, facts = fit_head(params, rm, 2, tok, train, valid, lay.learned_critic_checkpoints, stamp)
        model.save_pretrained(str(lay.learned_critic_adapter))
        runs.write_json({"backbone": params.models.reward_backbone.name, "num_labels": 2, "labels": LABELS,
                         "score": SCORE, "max_length": rm.max_length, "window": params.data.max_history_turns,
                         "seed": params.seed, "settings": stamp["settings"]}, lay.learned_critic_config)
        shutil.rmtree(lay.learned_critic_checkpoints, ignore_errors=True)
        del model
        gc.collect()
        record = {"fingerprint": stamp, **facts, "train": label_balance(train_rows), "valid": label_balance(valid_rows),
                  "conversations": {"train": len(sets.train), "valid": len(sets.valid), "heldout": len(sets.heldout)},
                  "log_history": log}
        runs.write_json(record, lay.learned_critic_metrics)  # last: a run cut before this is not finished
        return {**record, "reused": False}


# --------------------------------------------------------------------------------------------
# Loading and judging
# --------------------------------------------------------------------------------------------


class LearnedCritic:
    """A trained learned critic: ``score_states(histories)`` gives ``2·P(helped) − 1`` per
    conversation state, reading its last ``window`` turns (the window it was trained on);
    ``judge(states)`` is the critics' common interface (score above ``threshold``: success), on
    each state's last ``view`` turns (the stage's window, None: all) before its own window."""

    mode = "learned"

    def __init__(self, scorer: RewardScorer, window: int | None, threshold: float = 0.5, view: int | None = None):
        self.scorer, self.window, self.threshold, self.view = scorer, window, threshold, view

    def score_states(self, histories: Sequence[Sequence[dict[str, Any]]]) -> np.ndarray:
        p = self.scorer.score_texts([critic_input(h, self.window) for h in histories])
        return 2.0 * p - 1.0

    def judge(self, states: list[dict[str, Any]], seeds: list[int] | None = None,
              seed: int | None = None) -> list[CriticResult]:
        """One result per state; the seeds are accepted for the common interface (no sampling)."""
        if not states:
            return []
        scores = self.score_states([last_turns(s.get("history"), self.view) for s in states])
        return [learned_result(float(x), self.threshold) for x in scores]


def load_learned_critic(params: "RunParams", device: str | None = None, threshold: float = 0.5,
                        view: int | None = None) -> LearnedCritic:
    """The run's learned critic (LoRA merged), in the precision of ``models.reward_backbone``.
    FileNotFoundError when it was never trained, :class:`rlff_utils.runs.StaleStageError` when it
    was trained with other settings. Loading never trains it."""
    from peft import PeftModel

    lay = runs.layout(params)
    if not (lay.learned_critic_adapter / "adapter_config.json").is_file() or not lay.learned_critic_config.is_file():
        raise FileNotFoundError(
            f"no learned critic at {lay.learned_critic_dir}: run notebook 03 (its learned-critic step) or "
            "rlff_utils.critic.train_learned_critic(params) first")
    config = runs.read_json(lay.learned_critic_config)
    if config.get("settings") != critic_settings(params):
        raise runs.StaleStageError(
            f"the learned critic at {lay.learned_critic_dir} was trained with other settings: rerun notebook 03 "
            "(python -m rlff_utils.pipeline <params> --from 03 --force)")
    prec = precision(params, device)
    tok = load_rm_tokenizer(config["backbone"])
    base = load_backbone(config["backbone"], 2, params.seed, tok.pad_token_id, prec.score_dtype, knobs(params).pooling)
    model = PeftModel.from_pretrained(base, str(lay.learned_critic_adapter)).merge_and_unload().to(prec.device)
    scorer = RewardScorer(model, tok, "learned_critic", config["max_length"], config["window"],
                          params.models.reward_backbone.batch_size)
    return LearnedCritic(scorer, config["window"], threshold, view)
