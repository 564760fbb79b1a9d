"""Stage 2: a reward model that predicts a candidate's future-oriented reward without simulating.

The simulation (stage 1) scores each of m candidate replies per context by rolling the dialogue
forward: R_fut = v_end + λ·(T − t_end)/T·[goal reached] (the critic's final score plus a bonus for
reaching the goal early; see ``simulate.future_reward``). Rolling out is far too slow to do
for every GRPO sample, so a sequence-classification model learns to predict it from
(context, visible reply) alone. Three variants are trained on the same context-level split:

- ``classification`` (the paper's): label y = 1[R_fut ≥ δ], cross-entropy; its score is P(y = 1).
- ``regression``: R_fut itself, mean squared error; its score is the predicted R_fut.
- ``ranking``: Bradley–Terry on pairs of candidates of one context, −log σ(r_preferred − r_other)
  (TRL's ``RewardTrainer``); its score is the scalar reward.

and one untrained reference, ``random`` (same architecture, random head): the paper's ablation.

Every input goes through :func:`format_input`, in training and in scoring, so the reward GRPO
sees is computed from exactly the text the model was trained on. The split is by dialogue (so by
context too): no dialogue contributes to two splits, or the held-out metrics would reward
memorising a conversation rather than judging a reply.

Layout under ``outputs/<run>/reward_model/``: ``<variant>/adapter/`` (LoRA + score head),
``<variant>/metrics.json``, ``<variant>/test_predictions.csv``, ``<variant>/log_history.json``,
``comparison.csv``, ``splits.csv``, ``human_validation.{csv,json}`` and the figures.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import pandas as pd

from .agents import transcript, visible_reply
from .data import SEEKER, SUPPORTER

if TYPE_CHECKING:  # pragma: no cover
    from .params import RunParams

VARIANTS = ("classification", "regression", "ranking")
ALL_VARIANTS = (*VARIANTS, "random")
NUM_LABELS = {"classification": 2, "regression": 1, "ranking": 1, "random": 2}
REQUIRED_COLUMNS = ("context_id", "candidate_index", "history", "candidate_reply", "r_fut", "label")
DEFAULT_HISTORY_TURNS = 8


class RewardModelError(ValueError):
    """Input a reward model cannot be trained or scored on; the message says what is wrong."""


# --------------------------------------------------------------------------------------------
# Input: the one place (context, reply) becomes text
# --------------------------------------------------------------------------------------------


def format_input(history: list[dict], reply: str, max_history_turns: int = DEFAULT_HISTORY_TURNS) -> str:
    """The reward model's input text, used in training and in scoring alike.

    Only the reply's visible part is shown (reasoning and a strategy tag are removed), because
    the reward is about what the seeker reads. The most recent ``max_history_turns`` turns are
    kept; tokenisation truncates from the left, so an over-long input loses its oldest turns and
    never the reply.
    """
    turns = list(history or [])
    if max_history_turns and len(turns) > max_history_turns:
        turns = turns[-max_history_turns:]
    return f"Conversation:\n{transcript(turns)}\n\nReply to rate:\nSupporter: {visible_reply(reply or '')}"


def history_turns(params: "RunParams") -> int:
    return params.reward_model.max_history_turns or params.data.max_history_turns


def reward_model_dir(params: "RunParams", variant: str) -> Path:
    """``outputs/<run>/reward_model/<variant>/`` (created)."""
    if variant not in ALL_VARIANTS:
        raise RewardModelError(f"unknown reward-model variant {variant!r}: use one of {', '.join(ALL_VARIANTS)}")
    d = params.stage_dir("reward_model") / variant
    d.mkdir(parents=True, exist_ok=True)
    return d


# --------------------------------------------------------------------------------------------
# Data: the reward frame, the split, the three training sets
# --------------------------------------------------------------------------------------------


def load_reward_frame(params: "RunParams") -> pd.DataFrame:
    """The simulation's records with ``r_fut`` and ``label``: the reward dataset notebook 02
    wrote (its label threshold is the one it reported), else computed from the trajectories by
    the same function."""
    from .simulate import REWARD_DATASET, load_reward_dataset, load_trajectories, reward_frame

    if (params.run_dir / "simulation" / REWARD_DATASET).is_file():
        frame = pd.DataFrame(load_reward_dataset(params.run_dir))
    else:
        frame = reward_frame(load_trajectories(params.run_dir), params.simulation)
    if frame.empty:
        raise FileNotFoundError(f"no simulation records under {params.run_dir / 'simulation'}: run notebook 02 first")
    return frame


def check_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The usable rows: required columns present, R_fut finite (a critic that named no label
    gives NaN, and such a candidate has no target). Raises on input no model can learn from."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise RewardModelError(f"reward frame lacks column(s) {missing}; expected {list(REQUIRED_COLUMNS)}")
    out = frame[np.isfinite(pd.to_numeric(frame["r_fut"], errors="coerce"))].copy()
    if out.empty:
        raise RewardModelError(f"no record with a finite r_fut among {len(frame)} records")
    out["r_fut"] = out["r_fut"].astype(float)
    out["label"] = out["label"].astype(int)
    out["candidate_index"] = out["candidate_index"].astype(int)
    if "dialogue_id" not in out.columns:
        out["dialogue_id"] = out["context_id"]
    out.attrs["dropped_nan"] = len(frame) - len(out)
    return out.reset_index(drop=True)


@dataclass
class RMSplits:
    """Train / validation / test rows of the reward frame, disjoint by dialogue."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    dropped_nan: int = 0

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        return [("train", self.train), ("valid", self.valid), ("test", self.test)]

    def summary(self) -> pd.DataFrame:
        rows = []
        for name, f in self.items():
            rows.append(
                {
                    "split": name,
                    "dialogues": f["dialogue_id"].nunique(),
                    "contexts": f["context_id"].nunique(),
                    "candidates": len(f),
                    "positive_rate": f["label"].mean() if len(f) else math.nan,
                    "mean_r_fut": f["r_fut"].mean() if len(f) else math.nan,
                    "ranking_pairs": len(ranking_pairs(f)),
                }
            )
        return pd.DataFrame(rows)

    def assignments(self) -> pd.DataFrame:
        return pd.concat(
            [f[["dialogue_id", "context_id"]].drop_duplicates().assign(split=n) for n, f in self.items()],
            ignore_index=True,
        )


def split_by_context(
    frame: pd.DataFrame, valid_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> RMSplits:
    """Seeded split of whole dialogues (hence whole contexts) into train / valid / test.

    Grouping by dialogue rather than by context also keeps two contexts cut from one dialogue
    (which share their history) on one side. Each split gets at least one group.
    """
    frame = check_frame(frame)
    groups = sorted(frame["dialogue_id"].unique())
    n = len(groups)
    n_test = max(1, round(n * test_fraction))
    n_valid = max(1, round(n * valid_fraction))
    if n - n_test - n_valid < 1:
        raise RewardModelError(
            f"too few dialogues to split: {n} (need at least 3, one per split; with valid_fraction="
            f"{valid_fraction} and test_fraction={test_fraction} this needs {n_test + n_valid + 1}); "
            "simulate more contexts"
        )
    order = np.random.default_rng(seed).permutation(n)
    test_ids = {groups[i] for i in order[:n_test]}
    valid_ids = {groups[i] for i in order[n_test : n_test + n_valid]}
    which = frame["dialogue_id"].map(lambda g: "test" if g in test_ids else "valid" if g in valid_ids else "train")
    parts = {s: frame[which == s].reset_index(drop=True) for s in ("train", "valid", "test")}
    return RMSplits(parts["train"], parts["valid"], parts["test"], frame.attrs.get("dropped_nan", 0))


def ranking_pairs(frame: pd.DataFrame, max_per_context: int | None = None, min_gap: float = 1e-9) -> pd.DataFrame:
    """Every pair of candidates of one context whose R_fut differ: (chosen, rejected) row indices
    into ``frame``, the higher R_fut chosen. With ``max_per_context``, the pairs with the largest
    gaps are kept (the clearest preferences)."""
    cols = ["context_id", "chosen", "rejected", "gap"]
    if frame.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for ctx, idx in frame.groupby("context_id", sort=True).groups.items():
        idx = list(idx)
        r = frame.loc[idx, "r_fut"].to_numpy()
        pairs = []
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                gap = r[a] - r[b]
                if abs(gap) > min_gap:
                    chosen, rejected = (idx[a], idx[b]) if gap > 0 else (idx[b], idx[a])
                    pairs.append((ctx, chosen, rejected, abs(gap)))
        pairs.sort(key=lambda p: (-p[3], p[1], p[2]))
        rows += pairs[:max_per_context] if max_per_context else pairs
    return pd.DataFrame(rows, columns=cols)


def _texts(frame: pd.DataFrame, max_history_turns: int) -> list[str]:
    return [format_input(h, r, max_history_turns) for h, r in zip(frame["history"], frame["candidate_reply"])]


def classification_dataset(frame: pd.DataFrame, max_history_turns: int = DEFAULT_HISTORY_TURNS):
    """``datasets.Dataset`` with ``text`` and integer ``label`` (1 when R_fut ≥ δ)."""
    import datasets

    return datasets.Dataset.from_dict(
        {"text": _texts(frame, max_history_turns), "label": [int(x) for x in frame["label"]]}
    )


def regression_dataset(frame: pd.DataFrame, max_history_turns: int = DEFAULT_HISTORY_TURNS):
    """``datasets.Dataset`` with ``text`` and float ``label`` = R_fut."""
    import datasets

    return datasets.Dataset.from_dict(
        {"text": _texts(frame, max_history_turns), "label": [float(x) for x in frame["r_fut"]]}
    )


def ranking_dataset(
    frame: pd.DataFrame, max_history_turns: int = DEFAULT_HISTORY_TURNS, max_pairs_per_context: int | None = None
):
    """``datasets.Dataset`` of preference pairs: ``chosen`` / ``rejected`` texts (TRL's columns)."""
    import datasets

    pairs = ranking_pairs(frame, max_pairs_per_context)
    texts = dict(zip(frame.index, _texts(frame, max_history_turns)))
    return datasets.Dataset.from_dict(
        {
            "context_id": list(pairs["context_id"]),
            "chosen": [texts[i] for i in pairs["chosen"]],
            "rejected": [texts[i] for i in pairs["rejected"]],
        }
    )


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def load_rm_tokenizer(name: str):
    """Right padding (the classifier pools the last non-pad token either way) and left
    truncation (an over-long input loses its oldest turns, never the reply)."""
    from .models import load_tokenizer

    tok = load_tokenizer(name, padding_side="right")
    tok.truncation_side = "left"
    return tok


@contextlib.contextmanager
def _quiet_transformers():
    """The backbone's fresh score head is expected to be missing from a causal-LM checkpoint."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_backbone(name: str, num_labels: int, seed: int, pad_token_id: int, dtype=None):
    """A sequence-classification model on the backbone, its head drawn from ``seed``."""
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    from .models import resolve_model

    set_seed(seed)
    with _quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(name), num_labels=num_labels, dtype=dtype or torch.float32
        )
    model.config.pad_token_id = pad_token_id
    model.config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    return model


def lora_config(rm, model):
    """LoRA for sequence classification; the score head is trained in full (``modules_to_save``).
    ``lora_layers`` restricts LoRA to the top layers, so backpropagation stops there."""
    import torch
    from peft import LoraConfig, TaskType

    target = rm.lora_target_modules
    layers = None
    if rm.lora_layers:
        n_layers = model.config.num_hidden_layers
        layers = list(range(max(0, n_layers - rm.lora_layers), n_layers))
        if isinstance(target, str):  # peft needs explicit names to combine with layers_to_transform
            target = sorted(
                {
                    name.rsplit(".", 1)[-1]
                    for name, mod in model.named_modules()
                    if isinstance(mod, torch.nn.Linear) and ".layers." in name
                }
            )
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=rm.lora_r,
        lora_alpha=rm.lora_alpha,
        lora_dropout=rm.lora_dropout,
        target_modules=target,
        layers_to_transform=layers,
        modules_to_save=["score"],
    )


def _device_for(params: "RunParams") -> str:
    from .models import pick_device

    return pick_device(params.models.reward_backbone.device)


class RewardScorer:
    """A sequence-classification reward model and the one way it turns (history, reply) into a
    score: P(positive) for a two-class head, the scalar output for a one-output head."""

    def __init__(self, model, tokenizer, variant: str, max_length: int, max_history_turns: int, batch_size: int = 16):
        self.model, self.tokenizer, self.variant = model.eval(), tokenizer, variant
        self.max_length, self.max_history_turns, self.batch_size = max_length, max_history_turns, batch_size

    def score_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros(0, dtype=np.float64)
        device = next(self.model.parameters()).device
        lengths = [len(t) for t in texts]
        order = np.argsort(lengths, kind="stable")[::-1]  # similar lengths together: less padding
        out = np.zeros(len(texts), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx], truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
                ).to(device)
                logits = self.model(**enc).logits.float()
                if logits.shape[-1] == 2:
                    scores = torch.softmax(logits, dim=-1)[:, 1]
                else:
                    scores = logits[:, 0]
                out[idx] = scores.cpu().numpy()
        return out

    def score(self, histories: list[list[dict]], replies: list[str]) -> np.ndarray:
        if len(histories) != len(replies):
            raise RewardModelError(f"{len(histories)} histories for {len(replies)} replies")
        return self.score_texts([format_input(h, r, self.max_history_turns) for h, r in zip(histories, replies)])

    def score_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return self.score(list(frame["history"]), list(frame["candidate_reply"]))


_SCORERS: dict[tuple, RewardScorer] = {}  # per-process cache: GRPO calls the reward every step


def load_scorer(params: "RunParams", variant: str | None = None, device: str | None = None) -> RewardScorer:
    """The saved reward model of ``variant`` (``random``: an untrained head, nothing saved),
    LoRA merged for speed; cached per process until its files change."""
    from .models import pick_dtype

    variant = variant or params.grpo.reward_model
    role = params.models.reward_backbone
    device = device or _device_for(params)
    dtype = pick_dtype(role.dtype, device)
    if variant == "random":
        key = ("random", role.name, params.seed, device, str(dtype))
        if key not in _SCORERS:
            tok = load_rm_tokenizer(role.name)
            model = load_backbone(role.name, NUM_LABELS["random"], params.seed, tok.pad_token_id, dtype).to(device)
            _SCORERS[key] = RewardScorer(
                model, tok, "random", params.reward_model.max_length, history_turns(params), role.batch_size
            )
        return _SCORERS[key]

    folder = reward_model_dir(params, variant)
    adapter = folder / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        reason = ""
        if (folder / "skipped.json").is_file():
            reason = "skipped: " + json.loads((folder / "skipped.json").read_text()).get("note", "")
        raise FileNotFoundError(
            f"no trained {variant} reward model at {adapter}"
            + (f" ({reason})" if reason else "")
            + ": run notebook 03 (reward model) with this variant in reward_model.variants"
        )
    card = json.loads((folder / "rm_config.json").read_text())
    key = (str(adapter), (adapter / "adapter_config.json").stat().st_mtime_ns, device, str(dtype))
    if key not in _SCORERS:
        from peft import PeftModel

        for old in [k for k in _SCORERS if k[0] == str(adapter)]:  # a retrained model replaces its old copy
            del _SCORERS[old]

        tok = load_rm_tokenizer(card["backbone"])
        base = load_backbone(card["backbone"], card["num_labels"], params.seed, tok.pad_token_id, dtype)
        model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().to(device)
        _SCORERS[key] = RewardScorer(
            model, tok, variant, card["max_length"], card["max_history_turns"], role.batch_size
        )
    return _SCORERS[key]


def clear_scorers() -> None:
    _SCORERS.clear()
    gc.collect()


# --------------------------------------------------------------------------------------------
# The GRPO reward function
# --------------------------------------------------------------------------------------------


def _completion_text(completion: Any) -> str:
    """A TRL completion: plain text, or a conversational list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "\n".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")
    raise RewardModelError(f"cannot read a completion of type {type(completion).__name__}")


def _history_from_prompt(prompt: Any) -> list[dict]:
    """Dialogue turns recovered from a conversational prompt (user = seeker, assistant = supporter),
    for callers that do not pass the ``history`` column."""
    if not isinstance(prompt, list):
        raise RewardModelError(
            "plain-text prompts do not say who said what: pass the dataset's `history` column "
            "(a list of {speaker, text} turns per sample) to the reward function"
        )
    roles = {"user": SEEKER, "assistant": SUPPORTER}
    return [{"speaker": roles[m["role"]], "text": m.get("content") or ""} for m in prompt if m.get("role") in roles]


class RewardFunction:
    """R_fut for GRPO in TRL's reward-function signature.

    Picklable (holds the params and the variant; the model loads on first call in whichever
    process calls it), batched, no grad. Scores are soft: classification returns P(positive),
    because 0/1 labels would leave many GRPO groups with zero reward variance, hence no signal.
    """

    def __init__(self, params: "RunParams", variant: str):
        self.params, self.variant = params, variant
        self.__name__ = "future_reward"  # TRL logs rewards/<__name__>
        self._scorer: RewardScorer | None = None

    @property
    def scorer(self) -> RewardScorer:
        if self._scorer is None:
            self._scorer = load_scorer(self.params, self.variant)
        return self._scorer

    def __call__(self, prompts=None, completions=None, history=None, **kwargs) -> list[float]:
        if completions is None:
            raise RewardModelError("the reward function needs `completions`")
        replies = [_completion_text(c) for c in completions]
        if history is None:
            if prompts is None:
                raise RewardModelError("pass `history` (or conversational `prompts`) with the completions")
            history = [_history_from_prompt(p) for p in prompts]
        return [float(x) for x in self.scorer.score(list(history), replies)]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_scorer": None}

    def __repr__(self) -> str:
        return f"RewardFunction(variant={self.variant!r}, run={self.params.run_name!r})"


def load_reward_function(params: "RunParams", variant: str | None = None) -> Callable[..., list[float]]:
    """The reward function GRPO uses: ``f(prompts, completions, history=None, **kw) -> list[float]``.
    ``variant`` None means ``params.grpo.reward_model``. Fails now, not at the first GRPO step,
    when the variant was never trained."""
    variant = variant or params.grpo.reward_model
    if variant not in ALL_VARIANTS:
        raise RewardModelError(f"unknown reward-model variant {variant!r}: use one of {', '.join(ALL_VARIANTS)}")
    if variant != "random" and not (reward_model_dir(params, variant) / "adapter" / "adapter_config.json").is_file():
        load_scorer(params, variant)  # raises the explanatory FileNotFoundError
    return RewardFunction(params, variant)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def variant_metrics(pred: pd.DataFrame, variant: str) -> dict[str, Any]:
    """Held-out metrics of one variant's scores (``pred``: context_id, r_fut, label, score).

    Accuracy and F1 need a probability, so they exist for the classification head only (at 0.5);
    ROC-AUC, Spearman ρ against R_fut and pairwise accuracy on the ranking pairs (ties count
    half) are threshold-free and reported for every variant. Undefined values are NaN with a note.
    """
    from scipy.stats import spearmanr
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    notes: list[str] = []
    y, s, r = pred["label"].to_numpy(int), pred["score"].to_numpy(float), pred["r_fut"].to_numpy(float)
    m: dict[str, Any] = {
        "variant": variant,
        "n_test": int(len(pred)),
        "n_test_contexts": int(pred["context_id"].nunique()),
        "positive_rate": float(y.mean()) if len(y) else math.nan,
        "accuracy": math.nan,
        "f1": math.nan,
        "roc_auc": math.nan,
        "spearman": math.nan,
        "pairwise_accuracy": math.nan,
        "n_pairs": 0,
    }
    if not len(pred):
        m["notes"] = ["empty test split"]
        return m
    if NUM_LABELS[variant] == 2:
        yhat = (s >= 0.5).astype(int)
        m["accuracy"] = float(accuracy_score(y, yhat))
        m["f1"] = float(f1_score(y, yhat, zero_division=0))
        if yhat.sum() == 0:
            notes.append("F1: no test candidate predicted positive")
    if len(set(y)) < 2:
        notes.append(f"ROC-AUC undefined: every test label is {y[0]}")
    else:
        m["roc_auc"] = float(roc_auc_score(y, s))
    if np.ptp(r) == 0 or np.ptp(s) == 0:
        notes.append("Spearman undefined: " + ("R_fut" if np.ptp(r) == 0 else "the score") + " is constant on the test split")
    else:
        m["spearman"] = float(spearmanr(s, r).statistic)
    pairs = ranking_pairs(pred.reset_index(drop=True))
    m["n_pairs"] = int(len(pairs))
    if len(pairs):
        sc, sr = s[pairs["chosen"].to_numpy()], s[pairs["rejected"].to_numpy()]
        m["pairwise_accuracy"] = float(np.mean((sc > sr) + 0.5 * (sc == sr)))
    else:
        notes.append("pairwise accuracy undefined: no test context has candidates with different R_fut")
    m["notes"] = notes
    return m


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return _finite(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(_json_ready(obj), indent=2, ensure_ascii=False))


def _read_metrics(path: Path) -> dict[str, Any]:
    m = json.loads(path.read_text())
    return {k: (math.nan if v is None and k in _METRIC_KEYS else v) for k, v in m.items()}


_METRIC_KEYS = ("accuracy", "f1", "roc_auc", "spearman", "pairwise_accuracy", "positive_rate")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class VariantResult:
    variant: str
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    log_history: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False


def _precision(params: "RunParams") -> tuple[bool, bool, bool]:
    """(use_cuda, bf16, fp16) for training. ``dtype: bfloat16`` asks for bf16 on CPU too: the
    frozen backbone is then held in bf16 (a CPU with AVX512-BF16 or AMX runs its matmuls about
    twice as fast), the trained LoRA and score weights in fp32 under autocast. ``auto`` means bf16
    on a GPU that supports it, fp32 elsewhere."""
    import torch

    role = params.models.reward_backbone
    use_cuda = torch.cuda.is_available() and (role.device == "auto" or role.device.startswith("cuda"))
    bf16 = role.dtype == "bfloat16" or bool(use_cuda and role.dtype == "auto" and torch.cuda.is_bf16_supported())
    fp16 = bool(use_cuda and role.dtype == "float16")
    return use_cuda, bf16, fp16


def _training_args(rm, params: "RunParams", out: Path, n_train: int, has_valid: bool, config_cls=None, **extra):
    from transformers import TrainingArguments

    use_cuda, bf16, fp16 = _precision(params)
    steps_per_epoch = max(1, math.ceil(n_train / (rm.batch_size * rm.gradient_accumulation_steps)))
    total = max(1, int(steps_per_epoch * rm.epochs))
    return (config_cls or TrainingArguments)(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=rm.epochs,
        per_device_train_batch_size=rm.batch_size,
        per_device_eval_batch_size=rm.batch_size,
        gradient_accumulation_steps=rm.gradient_accumulation_steps,
        learning_rate=rm.learning_rate,
        eval_strategy="epoch" if has_valid else "no",
        save_strategy="epoch",  # full state every epoch: an interrupted variant resumes there
        save_total_limit=1,  # (plus the best one, kept while it is not the last)
        load_best_model_at_end=has_valid,
        metric_for_best_model="eval_loss" if has_valid else None,
        greater_is_better=False if has_valid else None,
        logging_steps=max(1, total // 50),
        report_to="none",
        seed=params.seed,
        data_seed=params.seed,
        bf16=bf16,
        fp16=fp16,
        use_cpu=not use_cuda,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        **extra,
    )


def _ids(tok, texts: list[str], max_length: int) -> dict[str, list]:
    texts = list(texts)
    if not texts:  # tokenizers refuse an empty batch
        return {"input_ids": [], "attention_mask": []}
    return dict(tok(texts, truncation=True, max_length=max_length))


def _tokenize_labelled(ds, tok, max_length: int):
    import datasets

    enc = _ids(tok, ds["text"], max_length)
    return datasets.Dataset.from_dict(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": list(ds["label"])}
    )


def _tokenize_pairs(ds, tok, max_length: int):
    """Pre-tokenised pairs (``chosen_ids``/``rejected_ids``), so TRL tokenises nothing itself and
    the ranking model reads exactly the tokens :class:`RewardScorer` gives it at scoring time."""
    import datasets

    return datasets.Dataset.from_dict(
        {
            "chosen_ids": _ids(tok, ds["chosen"], max_length)["input_ids"],
            "rejected_ids": _ids(tok, ds["rejected"], max_length)["input_ids"],
        }
    )


def _fit(params: "RunParams", variant: str, splits: RMSplits, out: Path) -> tuple[Any, list[dict], dict[str, Any]]:
    """Train one variant with early stopping on the validation split; returns (peft model,
    log history, facts for the card). Raises RewardModelError on data no model can learn from."""
    import torch
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer

    rm = params.reward_model
    role = params.models.reward_backbone
    turns = history_turns(params)
    tok = load_rm_tokenizer(role.name)
    facts: dict[str, Any] = {"notes": []}
    if variant == "ranking":
        train = ranking_dataset(splits.train, turns, rm.max_pairs_per_context)
        valid = ranking_dataset(splits.valid, turns, rm.max_pairs_per_context)
        if len(train) == 0:
            raise RewardModelError(
                "no ranking pairs in the training split: every context's candidates have the same R_fut"
            )
        train, valid = _tokenize_pairs(train, tok, rm.max_length), _tokenize_pairs(valid, tok, rm.max_length)
    else:
        build = classification_dataset if variant == "classification" else regression_dataset
        train, valid = build(splits.train, turns), build(splits.valid, turns)
        if variant == "classification" and len(set(train["label"])) < 2:
            facts["notes"].append(f"every training label is {train['label'][0]}: the classifier can only learn a constant")
        train, valid = _tokenize_labelled(train, tok, rm.max_length), _tokenize_labelled(valid, tok, rm.max_length)
    has_valid = len(valid) > 0
    if not has_valid:
        facts["notes"].append("empty validation set: trained for all epochs without early stopping")
    facts.update(n_train=len(train), n_valid=len(valid))

    _, bf16, _ = _precision(params)
    model = load_backbone(
        role.name, NUM_LABELS[variant], params.seed, tok.pad_token_id, torch.bfloat16 if bf16 else torch.float32
    )
    model = get_peft_model(model, lora_config(rm, model))
    for weight in model.parameters():  # the trained weights stay fp32 whatever the backbone holds
        if weight.requires_grad:
            weight.data = weight.data.float()
    callbacks = [EarlyStoppingCallback(early_stopping_patience=rm.early_stopping_patience)] if has_valid else []
    if variant == "ranking":
        from trl import RewardConfig, RewardTrainer

        args = _training_args(
            rm, params, out, len(train), has_valid, RewardConfig, max_length=None, disable_dropout=False
        )
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=valid if has_valid else None,
            processing_class=tok,
            callbacks=callbacks,
        )
    else:
        args = _training_args(rm, params, out, len(train), has_valid)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=valid if has_valid else None,
            data_collator=DataCollatorWithPadding(tok),
            processing_class=tok,
            callbacks=callbacks,
        )
    resume = _resume_point(out / "checkpoints", _fingerprint(params, variant, train, valid))
    facts["resumed_from"] = Path(resume).name if resume else None
    t0 = time.monotonic()
    trainer.train(resume_from_checkpoint=resume)
    facts["train_seconds"] = round(time.monotonic() - t0, 1)
    state = trainer.state
    facts["epochs_run"] = round(float(state.epoch or 0), 2)
    facts["best_eval_loss"] = state.best_metric
    return trainer.model, state.log_history, facts


def _fingerprint(params: "RunParams", variant: str, train, valid) -> dict[str, Any]:
    """What a checkpoint was trained on: a checkpoint is resumed only for the same variant,
    backbone, knobs and data (rows hashed), never silently mixed with a changed setup."""
    import hashlib

    digest = hashlib.sha256()
    for ds in (train, valid):
        digest.update(json.dumps(ds.to_dict(), sort_keys=True).encode())
    return {
        "variant": variant,
        "backbone": params.models.reward_backbone.model_dump(),
        "reward_model": params.reward_model.model_dump(exclude={"retrain", "variants"}),
        "seed": params.seed,
        "data_sha256": digest.hexdigest(),
    }


def _resume_point(ckpt_dir: Path, fingerprint: dict[str, Any]) -> str | None:
    """The last checkpoint of an interrupted run with the same fingerprint, else None (stale
    checkpoints are removed and the fingerprint written for the run about to start)."""
    from transformers.trainer_utils import get_last_checkpoint

    stamp = ckpt_dir / "fingerprint.json"
    same = stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(fingerprint))
    last = get_last_checkpoint(str(ckpt_dir)) if same and ckpt_dir.is_dir() else None
    if not last:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        ckpt_dir.mkdir(parents=True)
        stamp.write_text(json.dumps(fingerprint, indent=2))
    return last


def train_variant(params: "RunParams", variant: str, splits: RMSplits, force: bool = False) -> VariantResult:
    """Train (or reuse) one variant and evaluate it on the test split.

    A variant whose ``metrics.json`` exists is reused unless ``force``; its saved predictions are
    read back. Training checkpoints every epoch and an interrupted variant resumes from its last
    checkpoint (same setup and data only); it writes the adapter, the card, the log history, then
    predictions and metrics last, so an interrupted run never looks finished.
    """
    if variant not in VARIANTS:
        raise RewardModelError(f"cannot train variant {variant!r}: use one of {', '.join(VARIANTS)}")
    out = reward_model_dir(params, variant)
    metrics_path, pred_path = out / "metrics.json", out / "test_predictions.csv"
    if metrics_path.is_file() and pred_path.is_file() and not force:
        log = json.loads((out / "log_history.json").read_text()) if (out / "log_history.json").is_file() else []
        return VariantResult(variant, _read_metrics(metrics_path), _read_predictions(pred_path), log, reused=True)
    for stale in (metrics_path, pred_path, out / "skipped.json"):
        stale.unlink(missing_ok=True)
    if force:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)

    rm = params.reward_model
    model, log, facts = _fit(params, variant, splits, out)
    model.save_pretrained(str(out / "adapter"))
    _write_json(
        out / "rm_config.json",
        {
            "variant": variant,
            "backbone": params.models.reward_backbone.name,
            "num_labels": NUM_LABELS[variant],
            "max_length": rm.max_length,
            "max_history_turns": history_turns(params),
            "seed": params.seed,
            "reward_model_params": rm.model_dump(),
        },
    )
    _write_json(out / "log_history.json", log)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    del model
    gc.collect()

    pred = predict(load_scorer(params, variant), splits.test)
    pred.to_csv(pred_path, index=False)
    metrics = {**variant_metrics(pred, variant), **{k: v for k, v in facts.items() if k != "notes"}}
    metrics["notes"] = facts["notes"] + metrics["notes"]
    _write_json(metrics_path, metrics)
    return VariantResult(variant, metrics, pred, log)


def predict(scorer: RewardScorer, frame: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in ("dialogue_id", "context_id", "candidate_index", "r_fut", "label") if c in frame.columns]
    return frame[keep].assign(score=scorer.score_frame(frame)).reset_index(drop=True)


def _read_predictions(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"context_id": str, "dialogue_id": str})


def reward_examples(params: "RunParams", frame: pd.DataFrame, n_contexts: int = 2, variant: str | None = None) -> pd.DataFrame:
    """The GRPO reward function on every candidate of the first ``n_contexts`` contexts of
    ``frame``, next to their simulated R_fut: what GRPO will see for a group of answers."""
    f = load_reward_function(params, variant)
    rows = frame[frame["context_id"].isin(list(dict.fromkeys(frame["context_id"]))[:n_contexts])]
    rewards = f(prompts=None, completions=list(rows["candidate_reply"]), history=list(rows["history"]))
    return rows.assign(reward=rewards)[["context_id", "candidate_index", "candidate_reply", "r_fut", "label", "reward"]]


def evaluate_random(params: "RunParams", splits: RMSplits, force: bool = False) -> VariantResult:
    """The untrained reference (the paper's random-RM ablation) on the same test split."""
    out = reward_model_dir(params, "random")
    metrics_path, pred_path = out / "metrics.json", out / "test_predictions.csv"
    if metrics_path.is_file() and pred_path.is_file() and not force:
        return VariantResult("random", _read_metrics(metrics_path), _read_predictions(pred_path), reused=True)
    pred = predict(load_scorer(params, "random"), splits.test)
    pred.to_csv(pred_path, index=False)
    metrics = variant_metrics(pred, "random")
    _write_json(metrics_path, metrics)
    return VariantResult("random", metrics, pred)


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
        rows = []
        for v, r in self.results.items():
            for e in r.log_history:
                for key, kind in (("loss", "train"), ("eval_loss", "valid")):
                    if key in e and "epoch" in e:
                        rows.append({"variant": v, "epoch": e["epoch"], "split": kind, "loss": e[key]})
        return pd.DataFrame(rows, columns=["variant", "epoch", "split", "loss"])


COMPARISON_COLUMNS = [
    "variant", "status", "n_train", "n_test", "accuracy", "f1", "roc_auc", "spearman",
    "pairwise_accuracy", "n_pairs", "epochs_run", "train_seconds", "notes",
]


def comparison_table(results: dict[str, VariantResult | dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for v, r in results.items():
        m = r.metrics if isinstance(r, VariantResult) else r
        row = {c: m.get(c) for c in COMPARISON_COLUMNS}
        row["variant"] = v
        row["status"] = m.get("status") or ("reference" if v == "random" else "trained")
        row["notes"] = "; ".join(m.get("notes") or [])
        rows.append(row)
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    return table.astype({"n_train": "Int64", "n_test": "Int64", "n_pairs": "Int64"})


def train_reward_models(
    params: "RunParams", frame: pd.DataFrame | None = None, force: bool | None = None
) -> RewardModelReport:
    """Notebook 03's training stage: split, train each variant in ``reward_model.variants``
    (reusing finished ones unless ``force`` / ``reward_model.retrain``), score the random
    reference, write ``comparison.csv``. ``frame``: the reward frame (default: this run's
    simulation records). A variant that cannot be trained on this data (no ranking pair, say) is
    reported as skipped with the reason instead of stopping the others."""
    force = params.reward_model.retrain if force is None else force
    rm = params.reward_model
    frame = load_reward_frame(params) if frame is None else frame
    splits = split_by_context(frame, rm.valid_fraction, rm.test_fraction, params.seed)
    stage = params.stage_dir("reward_model")
    splits.assignments().to_csv(stage / "splits.csv", index=False)
    results: dict[str, VariantResult] = {}
    skipped: dict[str, dict[str, Any]] = {}
    for variant in rm.variants:
        try:
            results[variant] = train_variant(params, variant, splits, force=force)
        except RewardModelError as e:
            out = reward_model_dir(params, variant)
            shutil.rmtree(out / "adapter", ignore_errors=True)  # trained on other data: stale
            note = {"variant": variant, "status": "skipped", "note": str(e), "notes": [str(e)]}
            _write_json(out / "skipped.json", note)
            skipped[variant] = note
            warnings.warn(f"reward model {variant}: skipped: {e}", stacklevel=2)
    results["random"] = evaluate_random(params, splits, force=force)
    table = comparison_table({**results, **skipped})
    order = {v: i for i, v in enumerate([*rm.variants, "random"])}
    table = table.sort_values("variant", key=lambda s: s.map(order)).reset_index(drop=True)
    table.to_csv(stage / "comparison.csv", index=False)
    return RewardModelReport(splits, results, table)


# --------------------------------------------------------------------------------------------
# Validation against human signals (ESConv's seeker survey)
# --------------------------------------------------------------------------------------------


@dataclass
class HumanValidation:
    """Per dialogue: the reward model's mean score over its real supporter turns, the critic's
    judgement of the whole real dialogue, and the seeker's own intensity drop (initial − final)."""

    frame: pd.DataFrame
    correlations: pd.DataFrame
    variant: str
    notes: list[str] = field(default_factory=list)


def human_validation_variant(params: "RunParams") -> str:
    """The variant GRPO will use, when it is a trained one; else the first trained variant."""
    g = params.grpo.reward_model
    return g if g in params.reward_model.variants else params.reward_model.variants[0]


def _spaced(positions: list[int], k: int | None) -> list[int]:
    if k is None or len(positions) <= k:
        return positions
    return sorted({positions[int(round(i))] for i in np.linspace(0, len(positions) - 1, k)})


def survey_dialogues(params: "RunParams") -> tuple[list, list[str]]:
    """ESConv dialogues with both survey intensities, none that the simulation drew contexts
    from (those shaped the reward model), a seeded sample of ``human_validation_dialogues``."""
    import random

    from .data import load_contexts, load_dialogues

    notes = []
    n = params.reward_model.human_validation_dialogues
    dialogues = [
        d for d in load_dialogues(params)
        if d.dataset == "esconv" and d.initial_emotion_intensity is not None and d.final_emotion_intensity is not None
    ]
    try:
        used = {c["dialogue_id"] for c in load_contexts(params)}
    except FileNotFoundError:
        used = set()
    fresh = [d for d in dialogues if d.id not in used]
    if len(fresh) < min(n, len(dialogues)):
        notes.append(f"only {len(fresh)} surveyed dialogues unused by the simulation; dialogues it used are included")
        fresh = dialogues
    fresh = sorted(fresh, key=lambda d: d.id)
    sample = random.Random(params.seed).sample(fresh, min(n, len(fresh)))
    return sorted(sample, key=lambda d: d.id), notes


def spearman_bootstrap_ci(x, y, samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of Spearman's rho, resampling (x, y) pairs: with a few dozen
    dialogues the p-value alone hides how wide the plausible range is. Resamples whose ranks are
    constant (rho undefined) are left out; ``scipy.stats.bootstrap`` would instead return NaN for
    the whole interval as soon as one resample is constant, which small samples hit often."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(samples, len(x)))
    rx, ry = rankdata(x[idx], axis=1), rankdata(y[idx], axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    denom = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    rho = np.divide((rx * ry).sum(1), denom, out=np.full(samples, np.nan), where=denom > 0)
    rho = rho[np.isfinite(rho)]
    if not len(rho):
        return (math.nan, math.nan)
    lo, hi = np.quantile(rho, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _spearman_row(signal: str, x: pd.Series, y: pd.Series, seed: int = 0) -> dict[str, Any]:
    from scipy.stats import spearmanr

    ok = x.notna() & y.notna()
    x, y = x[ok], y[ok]
    row = {"signal": signal, "n": int(ok.sum()), "spearman": math.nan, "p_value": math.nan,
           "ci95_low": math.nan, "ci95_high": math.nan, "note": ""}
    if len(x) < 3:
        row["note"] = "fewer than 3 dialogues with both values"
    elif x.nunique() < 2 or y.nunique() < 2:
        row["note"] = "constant input: correlation undefined"
    else:
        res = spearmanr(x, y)
        row["spearman"], row["p_value"] = float(res.statistic), float(res.pvalue)
        row["ci95_low"], row["ci95_high"] = spearman_bootstrap_ci(x, y, seed=seed)
    return row


def validate_against_humans(params: "RunParams", variant: str | None = None, force: bool | None = None) -> HumanValidation:
    """Spearman ρ of (a) the reward model's mean score of the real supporter replies and (b) the
    critic's judgement of the real dialogue with the seeker's reported intensity drop.

    This checks both training signals against people rather than against the simulator. Cached
    in ``human_validation.{csv,json}`` (recomputed when the settings change or ``force``)."""
    from .agents import Critic
    from .backends import get_backend

    force = params.reward_model.retrain if force is None else force
    variant = variant or human_validation_variant(params)
    stage = params.stage_dir("reward_model")
    csv_path, json_path = stage / "human_validation.csv", stage / "human_validation.json"
    rm, sim = params.reward_model, params.simulation
    adapter = reward_model_dir(params, variant) / "adapter" / "adapter_config.json"
    settings = {
        "variant": variant,
        "model_version": adapter.stat().st_mtime_ns if adapter.is_file() else None,  # retrained: redo
        "dialogues": rm.human_validation_dialogues,
        "turns_per_dialogue": rm.human_validation_turns,
        "critic": params.models.critic.name,
        "critic_mode": sim.critic_mode,
        "critic_turns": params.data.max_history_turns,
        "seed": params.seed,
    }
    if csv_path.is_file() and json_path.is_file() and not force:
        saved = json.loads(json_path.read_text())
        if saved.get("settings") == settings:
            frame = pd.read_csv(csv_path, dtype={"dialogue_id": str})
            rho = pd.DataFrame(saved["correlations"]).astype({"spearman": float, "p_value": float})
            return HumanValidation(frame, rho, variant, saved.get("notes", []))

    dialogues, notes = survey_dialogues(params)
    cols = ["dialogue_id", "initial_intensity", "final_intensity", "intensity_drop", "rm_score", "critic_score", "turns_scored"]
    if not dialogues:
        notes.append("no ESConv dialogue with both survey intensities (or human_validation_dialogues is 0)")
        frame = pd.DataFrame(columns=cols)
    else:
        histories, replies, owner = [], [], []
        for d in dialogues:
            turns = [t.model_dump() for t in d.turns]
            positions = [i for i, t in enumerate(turns) if t["speaker"] == SUPPORTER and i > 0]
            for i in _spaced(positions, rm.human_validation_turns):
                histories.append(turns[:i])
                replies.append(turns[i]["text"])
                owner.append(d.id)
        scores = load_scorer(params, variant).score(histories, replies)
        per_turn = pd.DataFrame({"dialogue_id": owner, "score": scores})
        rm_mean = per_turn.groupby("dialogue_id")["score"].agg(["mean", "size"])

        critic = Critic(
            get_backend(params.models.critic, seed=params.seed),
            sim.critic_mode,
            samples=sim.critic_samples,
            temperature=sim.critic_temperature,
            threshold=sim.success_threshold,
            seed=params.seed,
            max_history_turns=params.data.max_history_turns,  # what the simulation's critic sees
        )
        contexts = [
            {
                "situation": d.situation or "",
                "emotion_type": d.emotion_type or "",
                "problem_type": d.problem_type or "",
                "history": [t.model_dump() for t in d.turns],
            }
            for d in dialogues
        ]
        judged = critic.judge(contexts)
        frame = pd.DataFrame(
            {
                "dialogue_id": [d.id for d in dialogues],
                "initial_intensity": [d.initial_emotion_intensity for d in dialogues],
                "final_intensity": [d.final_emotion_intensity for d in dialogues],
                "intensity_drop": [d.initial_emotion_intensity - d.final_emotion_intensity for d in dialogues],
                "rm_score": [rm_mean["mean"].get(d.id, math.nan) for d in dialogues],
                "critic_score": [j.score for j in judged],
                "turns_scored": [int(rm_mean["size"].get(d.id, 0)) for d in dialogues],
            },
            columns=cols,
        )
        unparsed = sum(1 for j in judged if not math.isfinite(j.score))
        if unparsed:
            notes.append(f"critic named no label for {unparsed} dialogue(s): left out of its correlation")
    correlations = pd.DataFrame(
        [
            _spearman_row(f"reward model ({variant})", frame["rm_score"], frame["intensity_drop"], params.seed),
            _spearman_row("critic", frame["critic_score"], frame["intensity_drop"], params.seed),
            _spearman_row("reward model vs critic", frame["rm_score"], frame["critic_score"], params.seed),
        ]
    )
    frame.to_csv(csv_path, index=False)
    rho = correlations.set_index("signal")
    headline = {  # flat numbers, for tables across runs
        "variant": variant,
        "dialogues": int(len(frame)),
        "rm_spearman": rho["spearman"].iloc[0],
        "rm_ci95_low": rho["ci95_low"].iloc[0],
        "rm_ci95_high": rho["ci95_high"].iloc[0],
        "rm_p_value": rho["p_value"].iloc[0],
        "critic_spearman": rho["spearman"].iloc[1],
        "critic_ci95_low": rho["ci95_low"].iloc[1],
        "critic_ci95_high": rho["ci95_high"].iloc[1],
        "critic_p_value": rho["p_value"].iloc[1],
        "n_critic": int(rho["n"].iloc[1]),
    }
    _write_json(
        json_path, {**headline, "settings": settings, "correlations": correlations.to_dict("records"), "notes": notes}
    )
    return HumanValidation(frame, correlations, variant, notes)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _save(fig, path: str | Path | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def plot_calibration(predictions: pd.DataFrame, path: str | Path | None = None, n_bins: int = 5):
    """Reliability of P(positive) for the two-class heads (trained and random): mean predicted
    probability per bin against the observed positive rate, with the bins' sizes underneath."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from sklearn.calibration import calibration_curve

    probs = predictions[predictions["variant"].map(lambda v: NUM_LABELS.get(v) == 2)]
    fig, (ax, ax_hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=[3, 1.3], sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    for v, g in probs.groupby("variant"):
        if g["label"].nunique() < 2:
            continue
        frac, mean_p = calibration_curve(g["label"], g["score"], n_bins=n_bins, strategy="uniform")
        ax.plot(mean_p, frac, marker="o", label=v)
    ax.set(ylabel="observed positive rate", title="calibration on the test split", xlim=(0, 1), ylim=(-0.02, 1.02))
    ax.legend(loc="upper left", fontsize=8)
    if len(probs):
        sns.histplot(probs, x="score", hue="variant", bins=np.linspace(0, 1, 21), element="step", ax=ax_hist)
    ax_hist.set(xlabel="predicted P(R_fut ≥ δ)")
    fig.tight_layout()
    return _save(fig, path)


def plot_score_distributions(predictions: pd.DataFrame, path: str | Path | None = None):
    """Each variant's held-out scores split by the simulated label: separated boxes are what a
    useful reward model looks like; overlapping ones give GRPO noise."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    variants = list(dict.fromkeys(predictions["variant"]))
    fig, axes = plt.subplots(1, max(1, len(variants)), figsize=(3.6 * max(1, len(variants)), 3.8), squeeze=False)
    for ax, v in zip(axes[0], variants):
        g = predictions[predictions["variant"] == v].assign(label=lambda f: f["label"].map({0: "R_fut < δ", 1: "R_fut ≥ δ"}))
        order = ["R_fut < δ", "R_fut ≥ δ"]
        sns.boxplot(g, x="label", y="score", order=order, ax=ax, color="white", showfliers=False)
        sns.stripplot(g, x="label", y="score", order=order, ax=ax, hue="label", hue_order=order, legend=False, alpha=0.7)
        ax.set(title=v, xlabel="", ylabel="score" if ax is axes[0][0] else "")
    fig.suptitle("held-out scores by simulated label")
    fig.tight_layout()
    return _save(fig, path)


def plot_learning_curves(log: pd.DataFrame, path: str | Path | None = None):
    """Training and validation loss per variant (losses differ by variant: CE, MSE, BT)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    variants = list(dict.fromkeys(log["variant"])) or ["(none)"]
    fig, axes = plt.subplots(1, len(variants), figsize=(3.8 * len(variants), 3.4), squeeze=False)
    for ax, v in zip(axes[0], variants):
        g = log[log["variant"] == v]
        if len(g):
            sns.lineplot(g, x="epoch", y="loss", hue="split", marker="o", ax=ax)
        ax.set(title=v)
    fig.tight_layout()
    return _save(fig, path)


def plot_human_validation(hv: HumanValidation, path: str | Path | None = None):
    """The reward model's and the critic's view of real dialogues against the seeker's reported
    intensity drop; ρ in each title."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    rho = {r["signal"]: r for r in hv.correlations.to_dict("records")}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, col, signal in (
        (axes[0], "rm_score", f"reward model ({hv.variant})"),
        (axes[1], "critic_score", "critic"),
    ):
        f = hv.frame.dropna(subset=[col, "intensity_drop"])
        if len(f):
            sns.regplot(f, x="intensity_drop", y=col, x_jitter=0.15, ax=ax, scatter_kws={"alpha": 0.6})
        r = rho.get(signal, {})
        rho_txt = "n/a" if r.get("spearman") is None or not math.isfinite(r.get("spearman", math.nan)) else f"{r['spearman']:.2f}"
        ax.set(
            title=f"{signal}: Spearman ρ = {rho_txt} (n = {r.get('n', 0)})",
            xlabel="seeker's intensity drop (initial − final)",
            ylabel=col.replace("_", " "),
        )
    fig.tight_layout()
    return _save(fig, path)


def save_figures(report: RewardModelReport, hv: HumanValidation | None, params: "RunParams") -> dict[str, Path]:
    """Every figure of notebook 03 under ``reward_model/``; returns their paths."""
    import matplotlib.pyplot as plt

    stage = params.stage_dir("reward_model")
    paths = {
        "calibration": stage / "calibration.png",
        "score_distributions": stage / "score_distributions.png",
        "learning_curves": stage / "learning_curves.png",
    }
    for fig in (
        plot_calibration(report.predictions, paths["calibration"]),
        plot_score_distributions(report.predictions, paths["score_distributions"]),
        plot_learning_curves(report.log_frame(), paths["learning_curves"]),
    ):
        plt.close(fig)
    if hv is not None:
        paths["human_validation"] = stage / "human_validation.png"
        plt.close(plot_human_validation(hv, paths["human_validation"]))
    return paths
