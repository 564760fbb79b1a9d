"""The planted rule: deterministic verdicts from the supporter's replies."""

from __future__ import annotations

import pytest

from rlff_utils.critic.rule import acknowledges_feelings, gives_advice, rule_label


@pytest.mark.parametrize("reply, acknowledges", [
    ("That sounds hard. How do you feel about it now?", True),
    ("I'm so sorry to hear that.", True),
    ("You seem upset.", True),
    ("What happened next?", False),                     # a question, but no feeling named
    ("You should work harder on it.", False),          # advice; "harder" is not "hard"
    ("Tell me more about your job.", False),
])
def test_acknowledges_feelings(reply, acknowledges):
    assert acknowledges_feelings(reply) is acknowledges


@pytest.mark.parametrize("turns, label", [
    (["How does that make you feel?"], "solved"),
    (["You should talk to your boss.", "Okay."], "worse"),
    (["I see.", "How do you feel now?"], "better"),
    (["What happened?", "You should talk to him."], "worse"),    # advice before any acknowledgement
    (["That must hurt.", "You should talk to him."], "solved"),  # acknowledged first
    (["You should rest.", "That sounds so hard."], "better"),    # the last turn acknowledges
    (["I see."], "same"),
    ([], "same"),
])
def test_rule_label(turns, label):
    assert rule_label(turns) == label


def test_advice_needs_no_question():
    assert gives_advice("Try to get some sleep.") and not gives_advice("Have you tried to sleep?")


def test_rule_critic_judges_the_rollout_only():
    from rlff_utils.critic import RuleCritic

    critic = RuleCritic(threshold=0.5)
    history = [{"speaker": "seeker", "text": "I lost my job."},
               {"speaker": "supporter", "text": "How do you feel about it?"},  # real history: not judged
               {"speaker": "seeker", "text": "Bad."}]
    asks = [{"speaker": "supporter", "text": "How are you feeling now?"}, {"speaker": "seeker", "text": "Sad."}]
    advises = [{"speaker": "supporter", "text": "You should look for a new one."}, {"speaker": "seeker", "text": "Ok."}]
    ctx = lambda rollout: {"history": history + rollout, "rollout": rollout}  # noqa: E731
    solved, worse, same = critic.judge([ctx(asks), ctx(advises), ctx([])])
    assert (solved.score, solved.success) == (1.0, True)
    assert (worse.score, worse.success) == (-1.0, False) and same.score == -0.5
    with pytest.raises(ValueError, match="rollout"):
        critic.judge([{"history": history}])


def test_rule_reward_is_the_oracle_arm_and_only_for_planted_runs(tmp_path):
    from pathlib import Path

    from rlff_utils import grpo
    from rlff_utils.params import ParamsError, load_params
    from rlff_utils.rewards import RuleReward, load_reward_function

    ci = Path(__file__).resolve().parents[1] / "params" / "ci.yaml"
    p = load_params(ci, {"output_root": str(tmp_path), "purpose": "planted", "grpo.reward_model": "rule"})
    fn = load_reward_function(p)
    assert isinstance(fn, RuleReward) and fn.__name__ == "future_reward"
    assert fn(completions=[[{"role": "assistant", "content": "That sounds so hard."}], "Try to sleep more."]) == [1.0, 0.0]
    funcs, weights = grpo.reward_setup(p)
    assert isinstance(funcs[0], RuleReward) and weights[0] == 1.0
    with pytest.raises(ParamsError, match="purpose: planted"):
        load_params(ci, {"output_root": str(tmp_path), "grpo.reward_model": "rule"})
