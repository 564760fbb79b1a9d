"""A scaled-down planted-signal run on the tiny model: the rule critic's verdicts must flow from the
rollouts (R_fut, labels) through the reward model and the GRPO reward function, and the trained
adapter must reach the evaluation. Each of three sabotages — labels shuffled before the reward
model, a reward function that ignores the completion, an evaluation that does not load the adapter
— cuts the signal at one place, and the check must then fail at that place.

The tiny random model cannot write a question about feelings, so the candidate (first supporter
turn) comes from a pool of real-sounding replies, half acknowledging feelings and half advising;
everything after it is the project's code: lockstep rollouts with the tiny model as system model
and user simulator, the rule critic, R_fut and labels, reward-model training, the reward function
GRPO calls, and the evaluation protocol with an adapter.
"""

from __future__ import annotations

import random

import pytest

from rlff_utils import rewards, runs
from rlff_utils.critic import RuleCritic
from rlff_utils.backends import get_backend
from rlff_utils.params import load_params
from rlff_utils.critic.rule import acknowledges_feelings
from rlff_utils.reward import train
from rlff_utils.reward.target import reward_frame
from rlff_utils.rollout import Trajectory, backend_seeker, backend_supporter, run_rollouts
from rlff_utils.validity import auc_with_ci

ACKNOWLEDGES = ["How do you feel about that?", "How are you feeling right now?", "That sounds hard. How does it make you feel?",
        "Are you feeling overwhelmed by all this?", "What emotions come up when you think about it?",
        "Do you feel lonely when that happens?"]
ADVISES = ["You should talk to your manager.", "Try to get more sleep.", "I suggest you make a plan.",
           "You could call a friend tonight.", "Make sure you eat well.", "Consider taking a short walk."]
SEEKER = ["I lost my job last week.", "My partner and I keep fighting.", "I cannot focus on my exams.",
          "I feel alone since I moved.", "My mother is ill and I am scared.", "Work is crushing me."]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, data_dir):
    """Rollouts under the rule critic, then the reward frame (R_fut and labels) they produce."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("planted")
    p = load_params(_ci(), {
        "output_root": str(root), "simulation.critic_mode": "rule", "simulation.max_turns": 2,
        "simulation.label_threshold": 1.0, "reward_model.variants": ["classification"],
        "reward_model.epochs": 4, "reward_model.learning_rate": 3e-3, "reward_model.batch_size": 8,
        "reward_model.max_length": 64, "reward_model.test_fraction": 0.3, "reward_model.valid_fraction": 0.15,
        "validation.judges": ["reward_model"]})
    rng = random.Random(0)
    trajs, firsts = [], {}
    for d in range(24):
        history = [{"speaker": "seeker", "text": rng.choice(SEEKER), "strategy": None}]
        for j in range(4):
            key = (f"ctx{d:02d}", j)
            firsts[key] = rng.choice(ACKNOWLEDGES if j % 2 == 0 else ADVISES)
            trajs.append(Trajectory(meta={"context_id": key[0], "dialogue_id": key[0], "candidate_index": j,
                                          "emotion_type": "sadness", "problem_type": "job crisis", "situation": ""},
                                    history=history, max_turns=2, key=key))
    tiny = get_backend(p.models.system, seed=0)
    records = []
    run_rollouts(trajs, lambda ts, seeds: [firsts[t.key] for t in ts], backend_supporter(tiny, "vanilla", 4),
                 backend_seeker(tiny, 4), RuleCritic(threshold=0.5), seed=0,
                 on_finished=lambda done: records.extend(t.record() for t in done))
    return p, reward_frame(records, p.simulation)


def _ci():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "params" / "ci.yaml"


def _trained_rm(p, frame):
    """Notebook 03's training on the given frame (the records of finished upstream stages)."""
    for stage in (runs.DATA, runs.SIMULATION):
        with runs.begin_stage(p, stage, require_upstream=False):
            pass
    return train.train_reward_models(p, frame=frame, force=True)


def _signal_problems(p, frame, sabotage: str | None = None) -> list[str]:
    """Where the planted signal is lost, if anywhere (an empty list: it flows)."""
    problems = []
    # 1. the rollouts: the label is the rule's verdict on the candidate
    acknowledged = frame["candidate_reply"].map(acknowledges_feelings).astype(int)
    if not (frame["label"] == acknowledged).all():
        problems.append("labels do not follow the planted rule")
    # 2. the reward model, trained on the labels notebook 03 reads
    if sabotage == "labels":
        frame = frame.assign(label=frame["label"].sample(frac=1.0, random_state=1).to_numpy())
    report = _trained_rm(p, frame)
    pred = report.predictions
    pred = pred[pred.variant == "classification"] if "variant" in pred.columns else pred
    held_out = frame.set_index(["context_id", "candidate_index"]).loc[
        list(zip(pred.context_id, pred.candidate_index))]
    truth = held_out["candidate_reply"].map(acknowledges_feelings).to_numpy()
    auc, _, _ = auc_with_ci(pred.score[truth].tolist(), pred.score[~truth].tolist(), samples=50)
    if not auc >= 0.8:
        problems.append(f"reward model: held-out AUC against the planted rule {auc:.2f} < 0.8")
    # 3. the reward function GRPO calls scores the completion
    fn = rewards.load_reward_function(p, "classification")
    if sabotage == "reward":
        real = fn.__call__
        fn = lambda prompts, completions, **kw: real(prompts, [[{"role": "assistant", "content": "Okay."}]] * len(completions), **kw)  # noqa: E731
    history = [[{"speaker": "seeker", "text": s, "strategy": None}] for s in SEEKER]
    replies = [r for pair in zip(ACKNOWLEDGES, ADVISES) for r in pair]
    hist = [h for h in history for _ in (0, 1)]
    scores = fn(prompts=[[{"role": "user", "content": h[0]["text"]}] for h in hist],
                completions=[[{"role": "assistant", "content": r}] for r in replies], history=hist)
    ack_scores = [s for s, r in zip(scores, replies) if acknowledges_feelings(r)]
    other = [s for s, r in zip(scores, replies) if not acknowledges_feelings(r)]
    auc, _, _ = auc_with_ci(ack_scores, other, samples=50)
    if not auc >= 0.8:
        problems.append(f"reward function: AUC of its scores against the planted rule {auc:.2f} < 0.8")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("sabotage", [None, "labels", "reward"])
def test_planted_signal_flows_to_the_reward_function(planted_run, sabotage):
    p, frame = planted_run
    assert set(frame["label"]) == {0, 1} and frame["r_fut"].max() == pytest.approx(1.5)
    problems = _signal_problems(p, frame, sabotage)
    if sabotage is None:
        assert problems == []
    elif sabotage == "labels":
        assert any(x.startswith("reward model") for x in problems), problems
    else:
        assert problems and all(x.startswith("reward function") for x in problems), problems


@pytest.mark.slow
@pytest.mark.parametrize("sabotage", [None, "adapter"])
def test_trained_adapter_reaches_the_evaluation(tmp_path, data_dir, monkeypatch, sabotage):
    """rlff-esc (base + this run's adapter) must not answer like the base model it started from."""
    import torch
    from peft import LoraConfig, get_peft_model

    from rlff_utils import data, evaluate
    from rlff_utils.models import load_causal_lm, resolve_model
    from rlff_utils.params import EvalSystem

    # greedy policy: the systems' sampling seeds differ (they are tied to each conversation's
    # identity), so only greedy decoding makes "same weights -> same replies" a test of the weights
    p = load_params(_ci(), {"output_root": str(tmp_path), "evaluation.critic_mode": "rule",
                            "evaluation.num_cases": 3, "evaluation.max_turns": 1, "models.policy.temperature": 0.0})
    data.prepare_data(p)
    with runs.begin_stage(p, runs.POLICY, require_upstream=False):
        model, tok = load_causal_lm(resolve_model(p.models.policy.name))
        peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        torch.manual_seed(0)
        for name, w in peft.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(w, std=0.5)  # a trained adapter: B is no longer zero
        peft.save_pretrained(str(runs.layout(p).adapter))
    p.evaluation.systems = [EvalSystem(name="base-reasoning", prompt="reasoning"),
                            EvalSystem(name="rlff-esc", prompt="reasoning", adapter="policy")]
    if sabotage == "adapter":
        monkeypatch.setattr(evaluate, "resolve_adapter", lambda params, spec: None)
    evaluate.run_evaluation(p)
    ours = {r["case_id"]: r["turns"][0]["text"] for r in evaluate.load_transcripts(p, "rlff-esc")}
    base = {r["case_id"]: r["turns"][0]["text"] for r in evaluate.load_transcripts(p, "base-reasoning")}
    differ = sum(ours[c] != base[c] for c in ours)
    if sabotage is None:
        assert differ > 0, "the adapter did not change a single reply: it was not loaded"
    else:
        assert differ == 0  # the check above would fail: it catches an evaluation without the adapter


@pytest.mark.slow
def test_compliance_before_after_uses_the_same_seeds_and_the_adapter(tmp_path, data_dir):
    """The before/after share of rule-satisfying replies: with an adapter that changes nothing
    (LoRA B = 0, as initialised) both arms draw identical replies — same prompts, same seeds —
    so the difference is exactly 0; with a trained adapter the after arm answers differently."""
    import torch
    from peft import LoraConfig, get_peft_model

    from rlff_utils import data, planted
    from rlff_utils.models import load_causal_lm, resolve_model

    p = load_params(_ci(), {"output_root": str(tmp_path)})
    data.prepare_data(p)
    model, _ = load_causal_lm(resolve_model(p.models.policy.name))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with runs.begin_stage(p, runs.POLICY, require_upstream=False):
        peft.save_pretrained(str(runs.layout(p).adapter))
    same = planted.compliance_before_after(p, prompts=3, samples=2)
    assert same["prompts"] == 3 and same["samples_per_prompt"] == 2
    assert all(e["before"] == e["after"] for e in same["examples"]) and same["difference"] == 0.0
    assert same["difference_ci95"] == (0.0, 0.0) and 0.0 <= same["before"] <= 1.0
    torch.manual_seed(0)
    for name, w in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(w, std=0.5)
    peft.save_pretrained(str(runs.layout(p).adapter))
    moved = planted.compliance_before_after(p, prompts=3, samples=2)
    assert [e["before"] for e in moved["examples"]] == [e["before"] for e in same["examples"]]  # the base is the base
    assert any(e["before"] != e["after"] for e in moved["examples"])  # the adapter was loaded (the retrained one, not a cached engine)
    assert runs.read_json(runs.layout(p).planted_compliance)["after"] == moved["after"]
