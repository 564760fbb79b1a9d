"""Evaluation: interactive success rate and turns (PPDPP protocol), response-quality judgements.

Interactive protocol (PPDPP, Deng et al. 2023; used by RLFF-ESC): each evaluation case starts with
the seeker's opening (the case's situation). The system under test answers (reasoning stripped),
the *evaluation* user simulator replies, the *evaluation* critic judges after every seeker turn;
the conversation stops at success (critic score > threshold) or at the turn cap.

SR, AT and SR@k with their 95% intervals, and paired differences between systems, are
:mod:`rlff_utils.conversation_metrics`; the critic is :func:`rlff_utils.critic.for_stage`.

Response quality follows the paper's human-evaluation criteria. An LLM judge compares two
systems' conversations on the same case in both orders, which cancels its position bias: a
system wins only when it is preferred in both orders, loses only when the other is preferred in
both, and anything else is a tie. For human annotators the same comparisons go into a blind
annotation page whose sides are randomised, with the key kept beside it
(:mod:`rlff_utils.human_eval`, which also ingests the returned answers). The judge's prompts
live in :mod:`rlff_utils.agents`; the conversations run on :mod:`rlff_utils.rollout`.

The stage goes through :func:`rlff_utils.runs.begin_stage`: stored transcripts are resumed only
when the stage's record matches the params (else :class:`~rlff_utils.runs.StaleStageError`).
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from . import critic, human_eval, runs
from .agents import CRITERIA, judge_messages, parse_verdict, write_prompts
from .backends import get_backend
from .contrast import contrast_critic, contrast_metrics
from .conversation_metrics import condition_rows, paired_difference, system_metrics
from .data import load_eval_cases
from .rollout import (
    RoutedStore,
    Trajectory,
    TrajectoryStore,
    backend_seeker,
    backend_supporter,
    rollout_to_store,
    routed_supporter,
)
from .text import transcript
from .validation import evaluation_card


# --------------------------------------------------------------------------------------------
# Pairwise judge
# --------------------------------------------------------------------------------------------


def _conversation(record: dict[str, Any]) -> str:
    """What a judge or an annotator reads: the opening plus every later turn (visible text)."""
    return transcript([*(record.get("history") or []), *(record.get("turns") or [])])


def combine_orders(first: str | None, second: str | None) -> str | None:
    """Verdict for the system shown as A in ``first`` and as B in ``second``: win only when
    preferred in both orders, lose only when the other is; None when either answer was unparsable."""
    if first is None or second is None:
        return None
    if first == "A" and second == "B":
        return "win"
    if first == "B" and second == "A":
        return "lose"
    return "tie"


def pairwise_judge(
    backend,
    pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]],
    criteria: Sequence[str] = CRITERIA,
    max_new_tokens: int = 8,
    seed: int = 0,
) -> pd.DataFrame:
    """Judge (system, baseline) conversation pairs on each criterion, in both orders, in one
    batched call. Returns one row per (case, criterion) with the outcome for the system
    (win / tie / lose, or None when an answer was unparsable: counted, not guessed)."""
    conversations, index = [], []
    for i, (ours, theirs) in enumerate(pairs):
        sit = ours.get("situation") or ""
        a, b = _conversation(ours), _conversation(theirs)
        for c in criteria:
            conversations.append(judge_messages(sit, a, b, c))
            conversations.append(judge_messages(sit, b, a, c))
            index.append((i, c))
    answers = backend.generate(conversations, n=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=seed) if conversations else []
    rows = []
    for k, (i, c) in enumerate(index):
        first, second = answers[2 * k][0], answers[2 * k + 1][0]
        v1, v2 = parse_verdict(first), parse_verdict(second)
        rows.append(
            {"case_id": pairs[i][0].get("case_id"), "criterion": c, "first": v1, "second": v2,
             "outcome": combine_orders(v1, v2), "raw_first": first, "raw_second": second}
        )
    return pd.DataFrame(rows, columns=["case_id", "criterion", "first", "second", "outcome", "raw_first", "raw_second"])


def win_rates(judgements: pd.DataFrame) -> pd.DataFrame:
    """Per criterion: win / tie / lose shares over parsable judgements, and the unparsable count."""
    rows = []
    for c, g in judgements.groupby("criterion", sort=False):
        ok = g["outcome"].dropna()
        n = len(ok)
        rows.append(
            {"criterion": c, "judged": n, "unparsable": int(g["outcome"].isna().sum()),
             **{k: (float((ok == k).mean()) if n else math.nan) for k in ("win", "tie", "lose")}}
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# The stage (notebook 05)
# --------------------------------------------------------------------------------------------

CASE_KEY = ("case_id",)


def main_system(params) -> str:
    """The system the others are compared with: the first one using this run's trained adapter,
    else the last one listed."""
    systems = params.evaluation.systems
    return next((s.name for s in systems if s.adapter == "policy"), systems[-1].name)


def resolve_adapter(params, spec: str | None) -> Path | None:
    """``policy`` is the adapter notebook 04 trained for this run; anything else is a folder
    (relative paths from the project root), e.g. another run's adapter for an ablation."""
    if spec is None:
        return None
    return runs.layout(params).adapter if spec == "policy" else params.resolve(spec)


def plan_systems(params) -> tuple[list[tuple[Any, Path | None]], list[dict[str, str]]]:
    """(system, adapter) pairs to evaluate, and the systems skipped because their adapter does
    not exist. This run's own policy adapter (``adapter: policy``) missing is an error: notebook
    04 has not run."""
    plan, skipped = [], []
    for s in params.evaluation.systems:
        adapter = resolve_adapter(params, s.adapter)
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            if s.adapter == "policy":
                raise FileNotFoundError(f"system {s.name!r}: no trained adapter at {adapter}: run notebook 04 (GRPO) first")
            skipped.append({"system": s.name, "reason": f"adapter not found: {adapter}"})
            continue
        plan.append((s, adapter))
    return plan, skipped


@dataclass(frozen=True)
class Condition:
    """Who the evaluated systems talk to: an evaluation simulator (its user simulator and critic)
    and a seeker profile. The first condition is the headline's (``evaluation/<system>/``); the
    others are stored under ``evaluation/conditions/<name>/<system>/``."""

    simulator: str
    profile: str
    user_sim: Any
    critic: Any = None  # a ModelRole, or None: models.eval_critic

    @property
    def name(self) -> str:
        return f"{self.simulator}.{self.profile}"


def role_label(role: str, condition: Condition, headline: bool) -> str:
    """A model role's name in the evaluation's cost rows (estimated and recorded alike): the
    headline condition's roles by name, another condition's with it in brackets."""
    return role if headline else f"{role} [{condition.simulator}, {condition.profile}]"


def add_usage(params, used: dict[str, dict[str, int]]) -> None:
    """Add what the models were asked for (per role label: requests, sequences, prompt and
    generated tokens, :meth:`BackendStats.usage`, and what fitting the prompts removed,
    :meth:`BackendStats.fitting`) to ``evaluation/usage.json``: a resumed stage
    adds the work of each attempt, an interrupted one included; a stage started over (``force``)
    starts from nothing."""
    path = runs.layout(params).evaluation_usage
    total = runs.read_json(path, default=None) or {}
    for label, counts in used.items():
        if any(counts.values()):
            row = total.setdefault(label, {})
            for key, value in counts.items():
                row[key] = row.get(key, 0) + value
    runs.write_json(total, path)


def conditions(params) -> list[Condition]:
    """The headline condition (the default simulator, the first profile), then every further
    simulator under the first profile, then every further profile under the default simulator:
    each change of simulator and of seeker is measured against the headline on the same cases."""
    e, m = params.evaluation, params.models
    first = e.seeker_profiles[0]
    out = [Condition("default", first, m.eval_user_sim, None)]
    out += [Condition(s.name, first, s.user_sim or m.eval_user_sim, s.critic) for s in e.simulators]
    out += [Condition("default", p, m.eval_user_sim, None) for p in e.seeker_profiles[1:]]
    return out


def eval_trajectories(cases: Sequence[dict[str, Any]], system: str, max_turns: int,
                      condition: Condition | None = None, headline: bool = True) -> list[Trajectory]:
    """One conversation per case, opened by the seeker with the case's situation; its identity
    is (system, case_id) under the headline condition, (system, case_id, simulator, profile)
    under another one."""
    meta_fields = ("case_id", "dataset", "emotion_type", "problem_type", "situation")
    simulator, profile = (condition.simulator, condition.profile) if condition else ("default", "cooperative")
    return [
        Trajectory(meta={**{k: c.get(k, "") for k in meta_fields}, "system": system, "simulator": simulator,
                         "seeker_profile": profile},
                   history=[{"speaker": "seeker", "text": c["opening"], "strategy": None}], max_turns=max_turns,
                   key=(system, c["case_id"]) if headline else (system, c["case_id"], simulator, profile))
        for c in cases
    ]


def _roll_systems(params, plan, cases, stores: dict[str, TrajectoryStore], condition: Condition,
                  headline: bool = True) -> None:
    """Every planned system through the protocol under one condition, in shared lockstep batches:
    one user-simulator and one critic call per turn serve all systems; each system's policy
    writes its own turns. What each model role was asked for goes to ``usage.json``
    (:func:`add_usage`, by :func:`role_label`), also when the attempt is interrupted."""
    e, m = params.evaluation, params.models
    turns = params.data.max_history_turns
    lay = runs.layout(params)
    store = RoutedStore(stores, "system")
    trajs = [t for s, _ in plan for t in eval_trajectories(cases, s.name, e.max_turns, condition, headline)]
    done = store.done_keys()
    if all(store.key(t.meta) in done for t in trajs):
        return
    policies = {s.name: get_backend(m.policy, adapter=str(adapter) if adapter else None, seed=params.seed)
                for s, adapter in plan}
    supporters = {s.name: backend_supporter(policies[s.name], s.prompt, turns) for s, _ in plan}
    simulator = get_backend(condition.user_sim, seed=params.seed)
    seeker = backend_seeker(simulator, turns)
    backend = get_backend(condition.critic, seed=params.seed) if condition.critic is not None else None
    judge = critic.for_stage(params, "evaluation", backend)
    supporter = routed_supporter(supporters, "system")
    try:
        rollout_to_store(trajs, store, e.batch_size, supporter, supporter, seeker, judge, seed=params.seed,
                         desc=f"eval ({len(plan)} systems, {condition.name})",
                         already=[r for st in stores.values() for r in st.load()],
                         state_path=lay.rollout_state(runs.EVALUATION) if headline else lay.condition_state(condition.name))
    finally:  # an interrupted attempt's requests were made (and paid for) too
        # with what was done to the prompts to fit them (control strings removed, oldest turns dropped)
        counts = lambda b: {**b.stats.usage(), **b.stats.fitting()}  # noqa: E731
        policy = [counts(b) for b in policies.values()]
        used = {role_label("policy", condition, headline): {k: sum(u[k] for u in policy) for k in policy[0]},
                role_label("eval_user_sim", condition, headline): counts(simulator)}
        if hasattr(judge, "backend"):  # an LLM critic (the rule and learned critics call no model)
            used[role_label("eval_critic", condition, headline)] = counts(judge.backend)
        add_usage(params, used)


def _condition_metrics(params, records_of: dict[str, list[dict[str, Any]]], main: str) -> dict[str, Any]:
    """SR/AT per system under one condition, and the main system's paired differences."""
    e = params.evaluation
    out = {name: {k: v for k, v in system_metrics(records, params).items() if k in ("cases", "SR", "SR_ci95", "AT",
                                                                                    "AT_ci95")}
           for name, records in records_of.items()}
    if main in records_of:
        out[main]["paired_vs"] = {other: paired_difference(records_of[main], theirs, e.max_turns, e.bootstrap_samples,
                                                           params.seed)
                                  for other, theirs in records_of.items() if other != main}
    return out


def _other_conditions(params, plan, cases, main: str, headline_records: dict[str, list[dict[str, Any]]]) -> dict:
    """Every condition beyond the headline: roll it (resumable, like the headline) and measure it;
    the headline's own figures lead the table. Written to ``evaluation/conditions.json``."""
    lay = runs.layout(params)
    conds = conditions(params)
    wanted = {c["case_id"] for c in cases}
    out = {conds[0].name: {"simulator": conds[0].simulator, "profile": conds[0].profile, "headline": True, "main": main,
                           "systems": _condition_metrics(params, headline_records, main)}}
    for cond in conds[1:]:
        stores = {s.name: TrajectoryStore(lay.condition_transcripts(cond.name, s.name), CASE_KEY) for s, _ in plan}
        if plan:
            _roll_systems(params, plan, cases, stores, cond, headline=False)
        records_of = {s.name: [r for r in stores[s.name].load() if r["case_id"] in wanted] for s, _ in plan}
        out[cond.name] = {"simulator": cond.simulator, "profile": cond.profile, "headline": False, "main": main,
                          "user_sim": cond.user_sim.name, "critic": (cond.critic or params.models.eval_critic).name,
                          "systems": _condition_metrics(params, records_of, main)}
    runs.write_json(out, lay.conditions)
    return out


def condition_table(params) -> pd.DataFrame:
    """One row per system and condition (simulator, seeker profile): SR and AT with 95% intervals,
    the main system's paired SR difference to the system, and its rank by SR under the condition
    (1 = best), from ``evaluation/conditions.json`` (:func:`conversation_metrics.condition_rows`)."""
    saved = runs.read_json(runs.layout(params).conditions, default=None) or {}
    return pd.DataFrame(condition_rows(saved))


def _needed_upstream(params) -> tuple[str, ...]:
    """The evaluation reads the data stage's cases, and the policy stage only when a system uses
    this run's adapter (baselines alone need no trained policy)."""
    uses_policy = any(s.adapter == "policy" for s in params.evaluation.systems)
    return (runs.DATA, runs.POLICY) if uses_policy else (runs.DATA,)


def run_evaluation(params, force: bool = False) -> pd.DataFrame:
    """Every configured system through the interactive protocol; transcripts and metrics under
    ``outputs/<run>/evaluation/<system>/``, the settings in the stage's record. Resumable per
    case when the record matches the params (``force``: start over).

    A system whose adapter does not exist is skipped and reported, except this run's own
    policy adapter (``adapter: policy``), whose absence means notebook 04 has not run."""
    e = params.evaluation
    lay = runs.layout(params)
    cases = load_eval_cases(params)[: e.num_cases] if e.num_cases else load_eval_cases(params)
    plan, skipped = plan_systems(params)
    card = evaluation_card(params)  # the critic's validity card, beside every SR/AT it decides
    with runs.begin_stage(params, runs.EVALUATION, force, require_upstream=_needed_upstream(params),
                          extra={"critic_card": card}):
        write_prompts(lay.prompts(runs.EVALUATION), critic.CRITIC_LABELS)
        stores = {s.name: TrajectoryStore(lay.transcripts(s.name), CASE_KEY) for s, _ in plan}
        if plan:
            _roll_systems(params, plan, cases, stores, conditions(params)[0])
        rows = []
        wanted = {c["case_id"] for c in cases}
        records_of = {s.name: [r for r in stores[s.name].load() if r["case_id"] in wanted] for s, _ in plan}
        main = main_system(params)
        contrast = {}
        if e.contrast_critic:
            again = contrast_critic(params)
            contrast = contrast_metrics(params, records_of, main, again)
            if hasattr(again, "backend"):  # an LLM critic (the rule and learned critics call no model)
                add_usage(params, {"eval_critic [contrast]": again.backend.stats.usage()})
        for s, adapter in plan:
            records = records_of[s.name]
            result = {**system_metrics(records, params), "system": s.model_dump(),
                      "adapter": str(adapter) if adapter else None, "critic_card": card}
            if s.name in contrast:  # the same conversations under a second critic
                result["contrast_critic"] = contrast[s.name]
            if s.name == main:  # the main system against each baseline, case by case
                result["paired_vs"] = {
                    other: paired_difference(records, theirs, e.max_turns, e.bootstrap_samples, params.seed)
                    for other, theirs in records_of.items() if other != main}
            runs.write_json(result, lay.system_metrics(s.name))
            rows.append({"system": s.name, "prompt": s.prompt, "adapter": bool(adapter), "cases": result["cases"],
                         "SR": result["SR"], "SR_ci95": result["SR_ci95"], "AT": result["AT"],
                         "AT_ci95": result["AT_ci95"], "critic_AUC": card.get("auc"),
                         "critic_AUC_ci95": card.get("auc_ci95"),
                         **({"contrast_SR": contrast[s.name]["SR"], "contrast_SR_ci95": contrast[s.name]["SR_ci95"],
                             "contrast_agreement": contrast[s.name]["agreement"]["agreement"]} if contrast else {})})
        runs.write_json(skipped, lay.skipped_systems)
        if len(conditions(params)) > 1:  # another simulator or seeker profile: the same systems under it
            _other_conditions(params, plan, cases, main, records_of)
    table = pd.DataFrame(rows)
    table.attrs["skipped"] = skipped
    return table


def load_transcripts(params, system: str) -> list[dict[str, Any]]:
    path = runs.layout(params).transcripts(system)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: evaluate system {system!r} first")
    return TrajectoryStore(path, CASE_KEY).load()


def side_by_side(params, baseline: str, case_id: str | None = None) -> pd.DataFrame:
    """The same case under the main system and ``baseline``, turn by turn: each side's supporter
    reply, the seeker's answer and the critic's score after it (blank once a side has ended)."""
    main = main_system(params)
    ours = {r["case_id"]: r for r in load_transcripts(params, main)}
    theirs = {r["case_id"]: r for r in load_transcripts(params, baseline)}
    shared = [c for c in ours if c in theirs]
    if not shared:
        return pd.DataFrame()
    case = case_id if case_id in shared else shared[0]
    sides = {main: ours[case], baseline: theirs[case]}
    rows = [{"turn": 0, **{f"{name} supporter": "" for name in sides},
             **{f"{name} seeker": r["history"][0]["text"] for name, r in sides.items()},
             **{f"{name} critic": None for name in sides}}]
    for k in range(max(r["turns_used"] for r in sides.values())):
        row: dict[str, Any] = {"turn": k + 1}
        for name, r in sides.items():
            turns = r["turns"][2 * k: 2 * k + 2]
            row[f"{name} supporter"] = turns[0]["text"] if turns else ""
            row[f"{name} seeker"] = turns[1]["text"] if len(turns) > 1 else ""
            row[f"{name} critic"] = r["critic_scores"][k] if k < len(r["critic_scores"]) else None
        rows.append(row)
    columns = [f"{name} {part}" for name in sides for part in ("supporter", "seeker", "critic")]
    frame = pd.DataFrame(rows).set_index("turn")[columns]
    frame.attrs["case_id"] = case
    frame.attrs["outcomes"] = {name: f"{r['end_reason']} after {r['turns_used']} turn(s)" for name, r in sides.items()}
    return frame


def comparison_pairs(params, baseline: str, limit: int | None = None) -> list[tuple[dict, dict]]:
    """(main system, baseline) transcripts of the same cases, in case order."""
    ours = {r["case_id"]: r for r in load_transcripts(params, main_system(params))}
    theirs = load_transcripts(params, baseline)
    pairs = [(ours[r["case_id"]], r) for r in theirs if r["case_id"] in ours]
    return pairs[:limit] if limit else pairs


def run_quality(params) -> pd.DataFrame:
    """Pairwise LLM judge of the main system against every evaluated baseline, and the blind
    human annotation page. Writes ``judgements.csv``, ``win_rates.csv`` and ``human/annotate.html``
    with its key (``human/key.json``, kept apart from annotators), inside the evaluation stage."""
    e = params.evaluation
    lay = runs.layout(params)
    main = main_system(params)
    evaluated = [s.name for s in e.systems if lay.transcripts(s.name).exists()]
    baselines = [b for b in evaluated if b != main]
    if main not in evaluated or not baselines:
        return pd.DataFrame()
    with runs.begin_stage(params, runs.EVALUATION, require_upstream=_needed_upstream(params),
                          extra={"critic_card": evaluation_card(params)}):
        judge = get_backend(params.models.judge, seed=params.seed)
        tables, sheet_pairs, sheet_names = [], [], []
        for b in baselines:
            pairs = comparison_pairs(params, b, e.judge_pairs)
            if pairs and e.judge_pairs:
                j = pairwise_judge(judge, pairs, max_new_tokens=params.models.judge.max_new_tokens, seed=params.seed)
                tables.append(j.assign(baseline=b))
            for p in (comparison_pairs(params, b, e.human_sheet_rows) if e.human_sheet_rows else []):
                sheet_pairs.append(p)
                sheet_names.append(b)
        add_usage(params, {"judge": judge.stats.usage()})
        judgements = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        rates = (pd.concat([win_rates(g).assign(baseline=b) for b, g in judgements.groupby("baseline", sort=False)],
                           ignore_index=True) if len(judgements) else pd.DataFrame())
        if len(judgements):
            judgements.to_csv(lay.judgements, index=False)
            rates.to_csv(lay.win_rates, index=False)
        human_eval.write_kit(params, main, sheet_names, sheet_pairs)
    return rates
