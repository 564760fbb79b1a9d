"""Evaluation conditions: seeker profiles and further simulators, measured on the same cases."""

from __future__ import annotations

import json

import pytest

from rlff_utils import agents, analysis, runs
from rlff_utils import evaluate as ev
from rlff_utils.critic import LLMCritic
from rlff_utils.rollout import backend_seeker, backend_supporter, run_rollouts
from rlff_utils.simulate import seeker_profile_of, simulation_trajectories

CONTEXT = {"context_id": "d1@2", "emotion_type": "anxiety", "problem_type": "job crisis", "situation": "laid off",
           "history": [{"speaker": "seeker", "text": "I lost my job.", "strategy": None}]}


def test_every_profile_has_an_instruction_and_cooperative_is_the_papers_prompt():
    from rlff_utils.params.schema import SeekerProfile

    assert set(agents.SEEKER_PROFILES) == set(SeekerProfile.__args__)  # the schema's names are the prompts' names
    plain = agents.seeker_messages(CONTEXT)[0]["content"]
    assert plain == agents.PROMPTS["seeker_role"].format(emotion_type="anxiety", problem_type="job crisis",
                                                         situation="laid off")
    assert agents.seeker_messages(CONTEXT, profile="cooperative")[0]["content"] == plain
    for name, text in agents.SEEKER_PROFILES.items():
        if name != "cooperative":
            got = agents.seeker_messages({**CONTEXT, "seeker_profile": name})[0]["content"]
            assert got == plain + "\n" + text and text
    with pytest.raises(ValueError, match="unknown seeker profile"):
        agents.seeker_messages(CONTEXT, profile="hostile")


class Recording:
    """A chat backend that answers every conversation with ``text`` and keeps what it was sent."""

    def __init__(self, text, probs=None):
        from rlff_utils.backends import BackendStats

        self.text, self.probs, self.sent, self.stats = text, probs, [], BackendStats()

    def generate(self, conversations, n=1, **kw):
        self.sent.extend(conversations)
        return [[self.text] * n for _ in conversations]

    def score_choices(self, conversations, choices):
        return [[1.0 if c == "same" else 0.0 for c in choices] for _ in conversations]


def test_the_profile_reaches_the_simulators_prompt_and_the_record():
    """Training rollouts: each trajectory's profile (drawn from the mix by its identity) is what
    the user simulator is told, every turn, and it is stored with the trajectory."""
    mix = {"cooperative": 1.0, "yes_but": 1.0}
    trajs = simulation_trajectories([CONTEXT], 6, 2, seeker_profile=mix, run_seed=3)
    profiles = [t.meta["seeker_profile"] for t in trajs]
    assert set(profiles) == {"cooperative", "yes_but"}  # both drawn among 6 (fixed by the seed)
    assert profiles == [seeker_profile_of(mix, 3, ("d1@2", j)) for j in range(6)]  # by identity, not position
    assert [t.meta["seeker_profile"] for t in simulation_trajectories([CONTEXT], 6, 2, mix, 3)[3:]] == profiles[3:]
    seeker, supporter = Recording("I still feel bad."), Recording("I hear you.")
    records = run_rollouts(trajs, backend_supporter(supporter, "vanilla", 8), backend_supporter(supporter, "vanilla", 8),
                           backend_seeker(seeker, 8), LLMCritic(Recording(""), "probs"), seed=0)
    assert [r.record()["seeker_profile"] for r in records] == profiles
    yes_but = agents.SEEKER_PROFILES["yes_but"]
    told = [yes_but in conv[0]["content"] for conv in seeker.sent]
    assert told.count(True) == 2 * profiles.count("yes_but") and told.count(False) == 2 * profiles.count("cooperative")


def test_a_profile_or_simulator_changes_only_the_evaluation(ci_params):
    """An evaluation-only variation (profiles, simulators) shares every earlier stage's settings;
    the training simulator's profile starts at the simulation. A record written before these
    settings existed stays valid at their defaults."""
    from rlff_utils.params import load_params

    base = load_params(ci_params.source, {"output_root": ci_params.output_root, "evaluation.seeker_profiles": ["cooperative"],
                                          "evaluation.simulators": []})
    harder = load_params(ci_params.source, {"output_root": ci_params.output_root,
                                            "evaluation.seeker_profiles": ["cooperative", "escalating"]})
    trained_hard = load_params(ci_params.source, {"output_root": ci_params.output_root,
                                                  "simulation.seeker_profile": {"resistant": 0.5, "cooperative": 0.5}})
    for stage in (runs.DATA, runs.SIMULATION, runs.REWARD_MODEL, runs.POLICY):
        assert runs.stage_settings(base, stage) == runs.stage_settings(harder, stage), stage
    assert runs.stage_settings(base, runs.EVALUATION) != runs.stage_settings(harder, runs.EVALUATION)
    assert runs.stage_settings(base, runs.SIMULATION) != runs.stage_settings(trained_hard, runs.SIMULATION)
    assert runs.stage_settings(base, runs.DATA) == runs.stage_settings(trained_hard, runs.DATA)

    old = runs.stage_settings(base, runs.SIMULATION)
    old.pop("simulation", None)
    old_sim = {k: v for k, v in runs.stage_settings(base, runs.SIMULATION)["simulation"].items() if k != "seeker_profile"}
    record = {"settings": {**old, "simulation": old_sim}}
    assert runs._setting_changes(base, runs.SIMULATION, record) == {}  # written before the setting existed
    data_record = {"settings": runs.stage_settings(base, runs.DATA)}  # a stage that never had these settings
    assert runs._setting_changes(base, runs.DATA, data_record) == {}
    assert "simulation.seeker_profile.resistant" in runs._setting_changes(trained_hard, runs.SIMULATION, record)


def test_every_system_under_every_condition(ci_params, tiny_model_path):
    """ci: a second simulator and a second profile. Each condition holds every system's
    conversations on the same cases, records its simulator and profile, and is measured."""
    from test_evaluate import _save_tiny_adapter

    from rlff_utils import data

    data.prepare_data(ci_params)
    with runs.begin_stage(ci_params, runs.POLICY, require_upstream=False):
        _save_tiny_adapter(runs.layout(ci_params).adapter)
    ci_params.evaluation.systems = ci_params.evaluation.systems[:1] + ci_params.evaluation.systems[-1:]
    ev.run_evaluation(ci_params)
    lay = runs.layout(ci_params)
    conds = ev.conditions(ci_params)
    assert [c.name for c in conds] == ["default.cooperative", "sampled.cooperative", "default.resistant"]
    saved = json.loads(lay.conditions.read_text())
    assert list(saved) == [c.name for c in conds] and saved["default.cooperative"]["headline"]
    cases = {r["case_id"] for r in ev.load_transcripts(ci_params, "rlff-esc")}
    for cond in conds[1:]:
        for system in ("vanilla", "rlff-esc"):
            recs = [json.loads(x) for x in lay.condition_transcripts(cond.name, system).read_text().splitlines()]
            assert {r["case_id"] for r in recs} == cases  # the same cases
            assert {(r["simulator"], r["seeker_profile"]) for r in recs} == {(cond.simulator, cond.profile)}
        m = saved[cond.name]["systems"]
        assert set(m) == {"vanilla", "rlff-esc"} and all(0 <= v["SR"] <= 1 for v in m.values())
        assert set(m["rlff-esc"]["paired_vs"]) == {"vanilla"}
    headline = ev.load_transcripts(ci_params, "vanilla")
    assert all(r["seeker_profile"] == "cooperative" and r["simulator"] == "default" for r in headline)
    table = ev.condition_table(ci_params)
    assert len(table) == 2 * 3 and set(table["rank by SR"]) <= {1, 2}
    assert table[table["system"] == "rlff-esc"]["SR diff, main minus system"].isna().all()  # no difference to itself
    across = analysis.conditions_table([lay.root])  # notebook 06: every run's conditions
    assert len(across) == 6 and set(across["run"]) == {lay.root.name}
    again = json.loads(lay.conditions.read_text())
    ev.run_evaluation(ci_params)  # resumes: every condition's conversations are reused, the numbers kept
    assert json.loads(lay.conditions.read_text()) == again == saved


def test_a_run_recorded_before_a_setting_existed_is_reused_whole(ci_params):
    """A finished stage whose record predates a setting (and the data fingerprints) is reopened
    without being rewritten, so the stages after it, which hold its record's hash, stay valid."""
    from rlff_utils import data

    data.prepare_data(ci_params)
    with runs.begin_stage(ci_params, runs.SIMULATION):
        pass
    lay = runs.layout(ci_params)
    old = json.loads(lay.record(runs.SIMULATION).read_text())
    del old["settings"]["simulation"]["seeker_profile"], old["inputs"]  # as an older version wrote it
    old["hash"] = runs.settings_hash({"settings": old["settings"], "upstream": old["upstream"]})
    lay.record(runs.SIMULATION).write_text(json.dumps(old))
    with runs.begin_stage(ci_params, runs.REWARD_MODEL):
        pass
    before = lay.record(runs.SIMULATION).read_bytes()
    with runs.begin_stage(ci_params, runs.SIMULATION):  # notebook 02 again: everything is there
        pass
    assert lay.record(runs.SIMULATION).read_bytes() == before
    assert runs.check_stage(ci_params, runs.REWARD_MODEL)["complete"]  # not stale
    changed = ci_params.model_copy(update={"simulation": ci_params.simulation.model_copy(
        update={"seeker_profile": "resistant"})})
    with pytest.raises(runs.StaleStageError, match="seeker_profile"):
        runs.check_stage(changed, runs.SIMULATION)
