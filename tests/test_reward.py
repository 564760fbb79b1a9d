"""Reward package: the split, the three training sets, real training on a separable synthetic
signal (tiny model), metrics, the GRPO reward function, the random reference, the validity card of
the trained reward model on real conversations, the `reward_model.trainer` block and the stage's
stale-result check. The cards of every judge: tests/test_validity.py."""

from __future__ import annotations

import math
import pickle
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlff_utils import plots, runs
from rlff_utils.params import ParamsError, load_params
from rlff_utils import rewards, validation
from rlff_utils.reward import inputs, metrics, scorer, train, variants
from rlff_utils.reward.backbone import load_backbone, load_rm_tokenizer

ROOT = Path(__file__).resolve().parents[1]

GOOD, BAD = "I am here for you", "that is your problem"
OPENERS = ["I hear how hard this is.", "That sounds painful.", "Okay.", "Thanks for telling me.", "Let us talk."]


def synthetic_frame(n_dialogues: int = 16, contexts_per_dialogue: int = 1, candidates: int = 4, seed: int = 0) -> pd.DataFrame:
    """Reward-frame rows whose R_fut is decided by the reply's last words: a signal any of the
    three variants can learn in seconds, so a failure means the training path is broken."""
    rng = random.Random(seed)
    rows = []
    for d in range(n_dialogues):
        for c in range(contexts_per_dialogue):
            history = [
                {"speaker": "seeker", "text": f"I feel stressed about exam number {d}.", "strategy": None},
                {"speaker": "supporter", "text": "Tell me more.", "strategy": "Question"},
                {"speaker": "seeker", "text": rng.choice(["I cannot sleep.", "My family is upset.", "I failed."]), "strategy": None},
            ]
            for k in range(candidates):
                good = k % 2 == 0
                reply = f"{rng.choice(OPENERS)} {GOOD if good else BAD}"
                rows.append(
                    {
                        "context_id": f"dlg{d:03d}@{c}",
                        "dialogue_id": f"dlg{d:03d}",
                        "candidate_index": k,
                        "history": history,
                        "candidate": reply,
                        "candidate_reply": reply,
                        "r_fut": rng.uniform(0.6, 1.0) if good else rng.uniform(-1.0, -0.2),
                        "label": int(good),
                    }
                )
    return pd.DataFrame(rows)


def _params(tmp: Path, **overrides):
    """ci params for a run under ``tmp``; the validity settings are those of
    test_reward_model_card_on_real_esconv, which cards the module's trained run."""
    base = {
        "output_root": str(tmp / "outputs"),
        "data.max_dialogues": 60,
        "validation.judges": ["reward_model"],
        "reward_model.epochs": 3,
        "reward_model.learning_rate": 3e-3,
        "reward_model.batch_size": 8,
        "reward_model.max_length": 96,
        "reward_model.test_fraction": 0.25,
        "reward_model.max_pairs_per_context": 2,
    }
    return load_params(ROOT / "params" / "ci.yaml", {**base, **overrides}, check_files=False)


def _upstream_done(params) -> None:
    """Records of finished data and simulation stages: the reward-model stage needs them (the
    tests hand it a synthetic reward frame instead of notebook 02's)."""
    for stage in (runs.DATA, runs.SIMULATION):
        with runs.begin_stage(params, stage, require_upstream=False):
            pass


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models train several times faster on one thread than on two busy-waiting ones when
    other jobs share the cores; restored afterwards for the rest of the session."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- input and data -------------------------------------------------------------------------


def test_format_input_keeps_recent_turns_and_only_the_visible_reply():
    history = [{"speaker": "seeker" if i % 2 == 0 else "supporter", "text": f"turn {i}"} for i in range(6)]
    text = inputs.format_input(history, "<think>she is sad</think>[Question] How are you?", max_history_turns=3)
    assert "turn 2" not in text and "turn 3" in text and "turn 5" in text
    assert "she is sad" not in text and "[Question]" not in text
    assert text.endswith("Supporter: How are you?")
    assert text == inputs.format_input(history, "How are you?", max_history_turns=3)


def test_split_has_no_context_or_dialogue_leakage():
    frame = synthetic_frame(n_dialogues=20, contexts_per_dialogue=2)
    splits = inputs.split_by_context(frame, 0.15, 0.2, seed=3)
    parts = dict(splits.items())
    for a in parts:
        for b in parts:
            if a < b:
                assert not set(parts[a]["context_id"]) & set(parts[b]["context_id"])
                assert not set(parts[a]["dialogue_id"]) & set(parts[b]["dialogue_id"])
    assert sum(len(p) for p in parts.values()) == len(frame)
    assert all(len(p) for p in parts.values())
    again = inputs.split_by_context(frame, 0.15, 0.2, seed=3)
    assert list(again.test["context_id"]) == list(splits.test["context_id"])
    assert list(inputs.split_by_context(frame, 0.15, 0.2, seed=4).test["context_id"]) != list(splits.test["context_id"])
    summary = splits.summary()
    assert list(summary["split"]) == ["train", "valid", "test"] and summary["candidates"].sum() == len(frame)


def test_split_rejects_too_few_dialogues_and_bad_frames():
    with pytest.raises(variants.RewardModelError, match="too few dialogues"):
        inputs.split_by_context(synthetic_frame(n_dialogues=2), 0.15, 0.15)
    with pytest.raises(variants.RewardModelError, match="lacks column"):
        inputs.split_by_context(synthetic_frame().drop(columns=["r_fut"]))
    nan = synthetic_frame(n_dialogues=5).assign(r_fut=math.nan)
    with pytest.raises(variants.RewardModelError, match="finite r_fut"):
        inputs.split_by_context(nan)
    partly = synthetic_frame(n_dialogues=5)
    partly.loc[0, "r_fut"] = math.nan
    assert inputs.split_by_context(partly).dropped_nan == 1


def test_dataset_builders():
    frame = synthetic_frame(n_dialogues=2).reset_index(drop=True)
    frame.loc[1, "r_fut"] = frame.loc[3, "r_fut"]  # a tie in context 0: no pair for it
    cls = inputs.classification_dataset(frame, 4)
    reg = inputs.regression_dataset(frame, 4)
    assert len(cls) == len(reg) == 8
    assert cls["label"] == list(frame["label"]) and all(isinstance(x, int) for x in cls["label"])
    assert np.allclose(reg["label"], frame["r_fut"])
    assert cls["text"][0] == inputs.format_input(frame.loc[0, "history"], frame.loc[0, "candidate_reply"], 4)

    pairs = inputs.ranking_pairs(frame)
    assert len(pairs) == 5 + 6  # 4 candidates: 6 pairs, one tie in the first context
    assert (frame.loc[pairs["chosen"], "r_fut"].to_numpy() > frame.loc[pairs["rejected"], "r_fut"].to_numpy()).all()
    assert set(pairs["context_id"]) == set(frame["context_id"])
    capped = inputs.ranking_pairs(frame, max_per_context=2)
    assert capped.groupby("context_id").size().max() == 2
    assert capped["gap"].min() >= pairs.groupby("context_id")["gap"].apply(lambda g: g.nlargest(2).min()).min()

    rank = inputs.ranking_dataset(frame, 4)
    assert len(rank) == len(pairs) and set(rank.column_names) >= {"chosen", "rejected"}
    assert rank["chosen"][0] == inputs.format_input(frame.loc[pairs["chosen"][0], "history"], frame.loc[pairs["chosen"][0], "candidate_reply"], 4)


def test_metrics_perfect_and_degenerate():
    frame = synthetic_frame(n_dialogues=3)
    perfect = frame.assign(score=frame["r_fut"].rank() / len(frame))
    m = metrics.variant_metrics(perfect, "classification")
    assert m["roc_auc"] == 1.0 and m["spearman"] == pytest.approx(1.0) and m["pairwise_accuracy"] == 1.0
    assert m["n_pairs"] == 3 * 6
    flat = frame.assign(label=1, score=0.7)
    m = metrics.variant_metrics(flat, "regression")
    assert math.isnan(m["roc_auc"]) and math.isnan(m["spearman"]) and math.isnan(m["accuracy"])
    assert m["pairwise_accuracy"] == 0.5  # every pair tied
    assert any("ROC-AUC undefined" in n for n in m["notes"]) and any("Spearman undefined" in n for n in m["notes"])


# ---- training, reward function ---------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_path, data_dir):
    from rlff_utils.data import prepare_data

    params = _params(tmp_path_factory.mktemp("rm"))
    prepare_data(params)  # the data the stage's record fingerprints (the card test reads it too)
    _upstream_done(params)
    report = train.train_reward_models(params, frame=synthetic_frame())
    return params, report


def test_each_variant_learns_a_separable_signal(trained):
    params, report = trained
    table = report.comparison.set_index("variant")
    assert list(table.index) == ["classification", "regression", "ranking", "random"]
    assert (table.loc[["classification", "regression", "ranking"], "status"] == "trained").all()
    for variant in variants.VARIANTS:
        assert table.loc[variant, "roc_auc"] >= 0.9, (variant, table.loc[variant].to_dict())
        assert table.loc[variant, "spearman"] >= 0.5
        assert table.loc[variant, "pairwise_accuracy"] >= 0.7  # same-label pairs are coin flips
        assert (variants.variant_dir(params, variant) / "adapter" / "adapter_config.json").is_file()
        assert (variants.variant_dir(params, variant) / "metrics.json").is_file()
    assert table.loc["classification", "accuracy"] >= 0.9
    stage = params.run_dir / "reward_model"
    assert pd.read_csv(stage / "comparison.csv")["variant"].tolist() == list(table.index)
    assert set(pd.read_csv(stage / "splits.csv")["split"]) == {"train", "valid", "test"}
    assert not (variants.variant_dir(params, "classification") / "checkpoints").exists()


def test_rerun_reuses_trained_variants(trained):
    params, report = trained
    metrics = variants.variant_dir(params, "classification") / "metrics.json"
    before = metrics.stat().st_mtime_ns
    again = train.train_reward_models(params, frame=synthetic_frame())
    assert all(r.reused for r in again.results.values())
    assert metrics.stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(again.comparison, report.comparison, check_dtype=False)


def test_reward_function_batches_ignores_reasoning_and_matches_the_model(trained):
    import torch
    from peft import PeftModel

    params, report = trained
    f = rewards.load_reward_function(params)  # ci params: grpo.reward_model = classification
    assert f.__name__ == "future_reward"
    history = synthetic_frame(n_dialogues=1)["history"][0]
    replies = [f"Okay. {GOOD}", f"Okay. {BAD}", "Let us talk.", f"That sounds painful. {GOOD}"]
    plain = f(prompts=[None] * 4, completions=replies, history=[history] * 4)
    assert len(plain) == 4 and all(isinstance(x, float) and 0.0 <= x <= 1.0 for x in plain)
    assert plain[0] > 0.5 > plain[1]
    thinking = [[{"role": "assistant", "content": f"<think>{BAD}? no, be kind</think>{r}"}] for r in replies]
    assert f(prompts=[None] * 4, completions=thinking, history=[history] * 4) == pytest.approx(plain, abs=1e-6)

    # the same number from the saved adapter, loaded and run by hand (no merge, no batching)
    card = variants.variant_dir(params, "classification")
    tok = load_rm_tokenizer("tiny-random-smollm2")
    base = load_backbone("tiny-random-smollm2", 2, seed=123, pad_token_id=tok.pad_token_id)
    model = PeftModel.from_pretrained(base, str(card / "adapter")).eval()
    with torch.no_grad():
        enc = tok(inputs.format_input(history, replies[0], inputs.history_turns(params)), return_tensors="pt")
        direct = torch.softmax(model(**enc).logits, -1)[0, 1].item()
    assert plain[0] == pytest.approx(direct, abs=1e-4)

    clone = pickle.loads(pickle.dumps(f))
    assert clone._scorer is None and clone(completions=replies, history=[history] * 4) == pytest.approx(plain, abs=1e-6)


def test_reward_function_for_regression_ranking_and_random(trained):
    params, _ = trained
    history = synthetic_frame(n_dialogues=1)["history"][0]
    replies = [f"Okay. {GOOD}", f"Okay. {BAD}"]
    prompts = [[{"role": "system", "content": "be kind"}, {"role": "user", "content": history[0]["text"]}]] * 2
    for variant in ("regression", "ranking"):
        scores = rewards.load_reward_function(params, variant)(prompts=prompts, completions=replies, history=[history] * 2)
        assert all(math.isfinite(s) for s in scores) and scores[0] > scores[1], variant
    # without the history column, conversational prompts still give a score
    assert len(rewards.load_reward_function(params, "ranking")(prompts=prompts, completions=replies)) == 2
    rand = rewards.load_reward_function(params, "random")
    scores = rand(prompts=prompts, completions=replies, history=[history] * 2)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert not (variants.variant_dir(params, "random") / "adapter").exists()
    with pytest.raises(variants.RewardModelError, match="history"):
        rand(prompts=["plain text"], completions=["hi"])


def test_untrained_variant_and_skipped_ranking_fail_clearly(tmp_path, tiny_model_path):
    params = _params(tmp_path, **{"reward_model.variants": ["ranking"]})
    _upstream_done(params)
    with pytest.raises(FileNotFoundError, match="run notebook 03"):
        rewards.load_reward_function(params, "ranking")
    tied = synthetic_frame(n_dialogues=6).assign(r_fut=0.5)
    with pytest.warns(UserWarning, match="no ranking pairs"):
        report = train.train_reward_models(params, frame=tied)
    row = report.comparison.set_index("variant").loc["ranking"]
    assert row["status"] == "skipped" and "no ranking pairs" in row["notes"]
    with pytest.raises(FileNotFoundError, match="no ranking pairs"):
        rewards.load_reward_function(params, "ranking")


def test_figures(trained, tmp_path):
    params, report = trained
    for fig_fn, data in (
        (plots.plot_calibration, report.predictions),
        (plots.plot_score_distributions, report.predictions),
        (plots.plot_learning_curves, report.log_frame()),
    ):
        path = tmp_path / f"{fig_fn.__name__}.png"
        fig_fn(data, path)
        assert path.stat().st_size > 1000
    assert set(report.log_frame()["split"]) == {"train", "valid"}
    # notebook 03's calls: one per figure, saved under the run folder's names
    lay = runs.layout(params)
    for fig_fn, data, name in (
        (plots.reward_learning_curves, report, "learning_curves"),
        (plots.reward_score_distributions, report, "score_distributions"),
        (plots.reward_calibration, report, "calibration"),
    ):
        lay.rm_figure(name).unlink(missing_ok=True)
        fig_fn(data, params)
        assert lay.rm_figure(name).stat().st_size > 1000, name


# ---- the reward model's validity card ---------------------------------------------------------


def test_reward_model_card_on_real_esconv(trained, data_dir, monkeypatch):
    """The trained classification head (GRPO's reward model) scores the real final supporter turn
    of 6 successful and 6 failed ESConv conversations, none the simulation drew contexts from."""
    from rlff_utils.data import load_contexts, prepare_data

    params, _ = trained
    monkeypatch.setenv("RLFF_DATA_DIR", str(data_dir))
    prepare_data(params)
    report = validation.validity_cards(params)
    assert list(report.cards) == ["reward_model"], report.notes
    card = report.cards["reward_model"]
    assert (card.n_success, card.n_failed) == (6, 6) and "classification" in card.judge
    assert report.frame["reward_model_score"].between(0, 1).all()
    assert card.auc_ci95[0] <= card.auc <= card.auc_ci95[1] and card.baseline == "turn count"
    used = {c["dialogue_id"] for c in load_contexts(params)}
    assert not used & set(report.frame["dialogue_id"])
    direct = validation.reward_model_scores(params, [d for d, _ in validation.outcome_sets(params).card])
    assert report.frame["reward_model_score"].tolist() == pytest.approx(direct, abs=1e-6)
    again = validation.validity_cards(params)  # cached: same numbers, no model call needed
    pd.testing.assert_frame_equal(again.frame, report.frame, check_dtype=False)


# ---- the notebook ----------------------------------------------------------------------------


@pytest.mark.slow
def test_notebook_03_runs_on_ci_params(tmp_path, data_dir, tiny_model_path, monkeypatch):
    """Notebook 03 end to end on ci params, with notebook 01's outputs and a synthetic reward
    dataset in place of notebook 02's (its numbers come from a learnable signal)."""
    import json

    from rlff_utils import pipeline
    from rlff_utils.data import prepare_data

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the notebook's kernel (see _one_torch_thread)
    overrides = {"output_root": str(tmp_path / "outputs"), "data.max_dialogues": 80,
                 "reward_model.epochs": 2, "reward_model.learning_rate": 3e-3}
    params = load_params(ROOT / "params" / "ci.yaml", overrides)
    prepare_data(params)
    dataset = runs.layout(params).reward_dataset
    dataset.parent.mkdir(parents=True, exist_ok=True)
    with dataset.open("w") as f:
        for row in synthetic_frame(n_dialogues=12).to_dict("records"):
            f.write(json.dumps(row) + "\n")
    _upstream_done(params)
    out = pipeline.run_pipeline(params.source, only=["03"], overrides=overrides, html=False)
    assert out[0].exists()
    lay = runs.layout(params)
    table = pd.read_csv(lay.rm_comparison)
    assert table["variant"].tolist() == ["classification", "regression", "ranking", "random"]
    cards = runs.read_json(lay.validity)["cards"]
    assert set(cards) >= {"critic", "reward_model", "learned_critic"}
    assert all(c["n_success"] == params.validation.success_conversations for c in cards.values())
    assert (lay.learned_critic_adapter / "adapter_config.json").is_file()
    for fig in ("learning_curves", "score_distributions", "calibration", "validity"):
        assert lay.rm_figure(fig).is_file(), fig
    assert runs.read_record(params.run_dir, runs.REWARD_MODEL)["complete"]


def test_interrupted_variant_resumes_from_its_last_checkpoint(tmp_path, tiny_model_path, monkeypatch):
    """Killed after epoch 1 of 3, a rerun continues from that checkpoint instead of retraining;
    a changed setup starts over rather than mixing runs."""
    import json

    from transformers import Trainer

    params = _params(tmp_path)
    frame = synthetic_frame(n_dialogues=12)
    splits = inputs.split_by_context(frame, params.reward_model.valid_fraction, params.reward_model.test_fraction, params.seed)
    original = Trainer._save_checkpoint

    def save_then_die(self, *a, **k):
        original(self, *a, **k)
        raise KeyboardInterrupt("simulated kill after the first checkpoint")

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.train_variant(params, "classification", splits)
    monkeypatch.setattr(Trainer, "_save_checkpoint", original)
    out = variants.variant_dir(params, "classification")
    first = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert len(first) == 1 and not (out / "metrics.json").exists()

    calls = []
    step = Trainer.training_step
    monkeypatch.setattr(Trainer, "training_step", lambda self, *a, **k: calls.append(1) or step(self, *a, **k))
    result = train.train_variant(params, "classification", splits)
    monkeypatch.setattr(Trainer, "training_step", step)
    done_before = int(first[0].split("-")[1])  # one epoch's optimiser steps
    assert result.metrics["resumed_from"] == first[0]
    assert result.metrics["epochs_run"] == pytest.approx(params.reward_model.epochs)
    assert len(calls) == done_before * (params.reward_model.epochs - 1)  # only the remaining epochs ran
    assert (out / "metrics.json").is_file() and not (out / "checkpoints").exists()

    # the same interruption, then a different learning rate: the stale checkpoint is not reused
    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.train_variant(params, "classification", splits, force=True)
    monkeypatch.setattr(Trainer, "_save_checkpoint", original)
    changed = _params(tmp_path, **{"reward_model.learning_rate": 1e-3})
    again = train.train_variant(changed, "classification", splits)
    assert again.metrics["resumed_from"] is None
    assert json.loads((out / "metrics.json").read_text())["resumed_from"] is None


# ---- the stage record ------------------------------------------------------------------------


def test_stage_refuses_stale_results_and_reuses_them_across_execution_changes(trained):
    """After a finished run, a changed learning rate stops the stage (and the reward function
    GRPO would load) naming the field, with nothing overwritten; a changed batch size (how fast,
    not what) reuses every variant."""
    params, report = trained
    root = Path(params.output_root).parent
    lay = runs.layout(params)
    before = {v: lay.rm_metrics(v).stat().st_mtime_ns for v in variants.ALL_VARIANTS}
    assert runs.read_record(params.run_dir, runs.REWARD_MODEL)["complete"]

    changed = _params(root, **{"reward_model.learning_rate": 1e-3})
    with pytest.raises(runs.StaleStageError, match=r"reward_model\.learning_rate: 0\.003 -> 0\.001"):
        train.train_reward_models(changed, frame=synthetic_frame())
    with pytest.raises(runs.StaleStageError, match="learning_rate"):
        rewards.load_reward_function(changed, "classification")
    with pytest.raises(runs.StaleStageError):
        validation.validity_cards(changed)

    faster = _params(root, **{"reward_model.batch_size": 4})
    again = train.train_reward_models(faster, frame=synthetic_frame())
    assert all(r.reused for r in again.results.values())
    assert {v: lay.rm_metrics(v).stat().st_mtime_ns for v in variants.ALL_VARIANTS} == before
    pd.testing.assert_frame_equal(again.comparison, report.comparison, check_dtype=False)
    assert runs.read_record(params.run_dir, runs.REWARD_MODEL)["complete"]


def test_stage_needs_finished_upstream_stages(tmp_path):
    params = _params(tmp_path)
    with pytest.raises(runs.MissingStageError, match="notebook 01"):
        train.train_reward_models(params, frame=synthetic_frame())


def test_scorer_cache_reuses_a_model_until_its_adapter_changes(trained):
    import os

    params, _ = trained
    cache = scorer.ScorerCache()
    first = cache.get(params, "classification")
    assert cache.get(params, "classification") is first and len(cache) == 1
    f = rewards.load_reward_function(params, "classification", cache=cache)
    assert f.scorer is first
    config = runs.layout(params).rm_adapter("classification") / "adapter_config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # "retrained"
    assert cache.get(params, "classification") is not first and len(cache) == 1
    cache.clear()
    assert len(cache) == 0


def test_grpo_loads_no_other_stage():
    """GRPO (every rank under accelerate) reads its reward through rlff_utils.rewards; importing it
    starts no other stage's module."""
    import subprocess
    import sys

    code = ("import sys, rlff_utils.grpo as g; "
            "print(sorted(m for m in sys.modules if m.startswith('rlff_utils')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    loaded = eval(out)
    assert {"rlff_utils.reward.scorer", "rlff_utils.rewards"} <= set(loaded)
    assert not {"rlff_utils.validation", "rlff_utils.simulate", "rlff_utils.evaluate", "rlff_utils.data"} & set(loaded)


# ---- the trainer block ------------------------------------------------------------------------


def test_trainer_block_is_checked_at_params_load(tmp_path):
    with pytest.raises(ParamsError, match=r"reward_model\.trainer: not a transformers TrainingArguments setting: 'warmup_ratioo'"):
        _params(tmp_path, **{"reward_model.trainer": {"warmup_ratioo": 0.1}})
    with pytest.raises(ParamsError, match=r"reward_model\.trainer: .*'weight_decayy' \(did you mean 'weight_decay'\?\)"):
        _params(tmp_path, **{"reward_model.trainer": {"weight_decayy": 0.1}})
    with pytest.raises(ParamsError, match=r"reward_model\.trainer: .*not a valid SchedulerType"):
        _params(tmp_path, **{"reward_model.trainer": {"lr_scheduler_type": "sometimes"}})
    with pytest.raises(ParamsError, match=r"reward_model\.trainer: 'learning_rate' is set by reward_model\.learning_rate"):
        _params(tmp_path, **{"reward_model.trainer": {"learning_rate": 1e-3}})
    for key, owner in (("output_dir", "the run folder"), ("bf16", "models.reward_backbone.dtype")):
        with pytest.raises(ParamsError, match=f"'{key}' is set by {owner}"):
            _params(tmp_path, **{"reward_model.trainer": {key: "x" if key == "output_dir" else True}})
    assert _params(tmp_path, **{"reward_model.trainer": {"weight_decay": 0.1}}).reward_model.trainer == {"weight_decay": 0.1}


@pytest.mark.parametrize("variant", ["classification", "ranking"])
def test_trainer_block_reaches_the_trainer(tmp_path, tiny_model_path, monkeypatch, variant):
    """The block's values reach the Trainer's arguments (TRL's RewardConfig for ranking) and
    override the project's defaults; the project's own fields still decide theirs."""
    from transformers import Trainer

    class Stop(Exception):
        pass

    seen = {}

    def capture(self, *a, **k):
        seen["args"] = self.args
        raise Stop

    block = {"weight_decay": 0.1, "lr_scheduler_type": "cosine", "logging_steps": 7}
    params = _params(tmp_path, **{"reward_model.trainer": block})
    splits = inputs.split_by_context(synthetic_frame(n_dialogues=8), 0.15, 0.25, params.seed)
    monkeypatch.setattr(Trainer, "train", capture)
    with pytest.raises(Stop):
        train.train_variant(params, variant, splits)
    args = seen["args"]
    assert (args.weight_decay, args.lr_scheduler_type, args.logging_steps) == (0.1, "cosine", 7)
    assert (args.learning_rate, args.num_train_epochs, args.seed) == (3e-3, 3, params.seed)
    assert args.output_dir == str(runs.layout(params).rm_checkpoints(variant))
    assert (args.save_strategy, args.eval_strategy) == ("epoch", "epoch")


# ---- pooling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
def test_mean_pooling_reads_the_mean_of_the_attended_tokens(tiny_model_path, side):
    """``pooling: mean``: the head's output is the score head applied to the mean of the last
    hidden states over the attended tokens, whatever the padding; ``last`` is transformers' own."""
    import torch

    tok = load_rm_tokenizer("tiny-random-smollm2")
    tok.padding_side = side
    mean = load_backbone("tiny-random-smollm2", 2, seed=7, pad_token_id=tok.pad_token_id, pooling="mean").eval()
    last = load_backbone("tiny-random-smollm2", 2, seed=7, pad_token_id=tok.pad_token_id).eval()
    texts = ["I hear how hard this is, and I am here.", "Okay."]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = mean(**enc).logits
        hidden = last.model(**enc).last_hidden_state
        weight = enc["attention_mask"].unsqueeze(-1).float()
        expected = last.score((hidden * weight).sum(1) / weight.sum(1))
        alone = torch.cat([mean(**tok([t], return_tensors="pt")).logits for t in texts])
        assert torch.allclose(pooled, expected, atol=1e-5)
        assert torch.allclose(pooled, alone, atol=1e-5)  # padding changes nothing
        assert not torch.allclose(last(**enc).logits, pooled, atol=1e-3)
    with pytest.raises(ValueError, match="pooling 'max'"):
        load_backbone("tiny-random-smollm2", 2, seed=7, pad_token_id=tok.pad_token_id, pooling="max")


def test_mean_pooled_variant_trains_saves_and_scores_with_its_pooling(tmp_path, tiny_model_path):
    """A variant trained with ``pooling: mean`` learns, records its pooling, and every loader
    (the reward function, the random reference) reads inputs the way it was trained."""
    import torch
    from peft import PeftModel

    params = _params(tmp_path, **{"reward_model.pooling": "mean", "reward_model.variants": ["classification"]})
    _upstream_done(params)
    report = train.train_reward_models(params, frame=synthetic_frame())
    assert report.comparison.set_index("variant").loc["classification", "roc_auc"] >= 0.9
    card = runs.read_json(runs.layout(params).rm_config("classification"))
    assert card["pooling"] == "mean"

    history = synthetic_frame(n_dialogues=1)["history"][0]
    reply = f"Okay. {GOOD}"
    got = rewards.load_reward_function(params, "classification")(completions=[reply], history=[history])[0]
    tok = load_rm_tokenizer("tiny-random-smollm2")
    enc = tok(inputs.format_input(history, reply, inputs.history_turns(params)), return_tensors="pt")
    with torch.no_grad():
        for pooling, same in (("mean", True), ("last", False)):
            base = load_backbone("tiny-random-smollm2", 2, seed=params.seed, pad_token_id=tok.pad_token_id,
                                 pooling=pooling)
            model = PeftModel.from_pretrained(base, str(runs.layout(params).rm_adapter("classification"))).eval()
            direct = torch.softmax(model(**enc).logits, -1)[0, 1].item()
            assert (got == pytest.approx(direct, abs=1e-4)) is same, pooling
    random_mean = scorer.load_scorer(params, "random")
    random_last = scorer.load_scorer(params.model_copy(update={"reward_model": params.reward_model.model_copy(
        update={"pooling": "last"})}), "random")
    texts = [inputs.format_input(history, reply, 2)]
    assert random_mean.score_texts(texts)[0] != pytest.approx(random_last.score_texts(texts)[0], abs=1e-6)
