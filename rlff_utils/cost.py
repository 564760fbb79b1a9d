"""What a run costs, before it starts: requests, tokens and dollars per stage and model role.

    python -m rlff_utils.pipeline params/paper_qwen2.5-7b_esconv.yaml --estimate
    python -m rlff_utils.sweep sweeps/paper_rm_ablation.yaml --estimate

:func:`estimate` reads the params alone (no model, no data loads) and counts, per stage and role:

- simulation (02): the policy samples m candidates per context (C x m sequences, one prompt per
  context); over T turns the system model writes C x m x (T - 1) replies, the user simulator
  C x m x T seeker turns, and the critic judges C x m x T states (``probs`` and votes on a local
  model: one scoring pass each; votes on an API: ``critic_samples`` short sampled answers each; the
  rule and the learned critic call no LLM);
- GRPO (04): ``max_steps`` x ``per_device_train_batch_size`` x ``gradient_accumulation_steps`` x
  ``num_processes`` completions (G per prompt), each up to ``max_completion_length`` tokens;
- evaluation (05): per condition (simulator x seeker profile, ``evaluate.conditions``), every
  system on every case for up to T turns: the policy's replies, the evaluation simulator's turns,
  the evaluation critic's judgements; the pairwise judge: every baseline x ``judge_pairs`` x
  criteria x both orders.

Counts are upper bounds on turns (a conversation that succeeds early stops) and on generated
tokens (every reply at ``max_new_tokens``); prompt tokens are a rough figure, :data:`PROMPT_OVERHEAD`
tokens of instructions plus :data:`TOKENS_PER_TURN` per dialogue turn shown. Dollars are given
for roles whose params declare ``price_per_mtok: {input, output}``; no price is assumed. Not
counted: the reward models' and the learned critic's training (no generation), the validity
cards' judgements of real conversations, the before/after samples of notebook 04.

After a run, :func:`actual_counts` reads what the stages recorded (the simulation's summary and
the evaluation's ``usage.json``: requests, replies, prompt and generated tokens per role; GRPO's
log: completions, their tokens and the prompt tokens it read) and :func:`cost_record` sets them beside the estimate
(``outputs/<run>/cost.json``, written by the pipeline; the run card shows both, row by row).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import runs

if TYPE_CHECKING:  # pragma: no cover
    from .params import ModelRole, RunParams

PROMPT_OVERHEAD = 150    # tokens of instructions in an agent's prompt (rough)
TOKENS_PER_TURN = 30     # tokens of one dialogue turn shown in a prompt (rough; ESConv turns are short)
# Dialogues a dataset offers when data.max_contexts does not cap the contexts (ESConv's and
# ExTES's training sides, approximately): contexts = dialogues x contexts_per_dialogue.
DATASET_DIALOGUES = {"esconv": 1040, "extes": 10500}


@dataclass
class RoleCost:
    """One stage's use of one model role."""
    stage: str
    role: str
    model: str
    requests: int            # prompts sent (a scoring pass, or a generation call for n samples)
    sequences: int           # sampled replies (0 for scoring)
    prompt_tokens: int
    generated_tokens: int
    dollars: float | None = None

    def priced(self, role: "ModelRole") -> "RoleCost":
        p = role.price_per_mtok
        if p is not None:
            self.dollars = (self.prompt_tokens * p.input + self.generated_tokens * p.output) / 1e6
        return self


def _prompt(turns: int) -> int:
    return PROMPT_OVERHEAD + TOKENS_PER_TURN * max(0, turns)


def _contexts(params: "RunParams") -> int:
    """C: the contexts the simulation rolls (the data stage's file when it exists)."""
    n = _count_lines(runs.layout(params).contexts)
    if n is None:
        d = params.data
        dialogues = sum(min(DATASET_DIALOGUES[name], d.max_dialogues or math.inf) for name in d.datasets)
        n = int(dialogues * d.contexts_per_dialogue)
        n = min(n, d.max_contexts or n)
    return min(n, params.simulation.max_contexts or n)


def _count_lines(path: Path) -> int | None:
    """Records in the data stage's ``<path>.jsonl`` (None: not written yet)."""
    f = Path(f"{path}.jsonl")
    if not f.is_file():
        return None
    return sum(1 for line in f.read_text(encoding="utf-8").splitlines() if line.strip())


def _eval_cases(params: "RunParams") -> int:
    """The evaluation's cases: the data stage's file when it exists, else PPDPP's split of ESConv
    (its listed ids) and ExTES's test share, capped by data.max_eval_cases and evaluation.num_cases."""
    from .esconv import ppdpp_ids

    d = params.data
    n = _count_lines(runs.layout(params).eval_cases)
    if n is None:
        split = d.eval_split.removeprefix("ppdpp_")
        n = sum(len(ppdpp_ids()[split if split in ("test", "valid") else "test"]) if name == "esconv"
                else int(DATASET_DIALOGUES[name] * d.extes_test_fraction) for name in d.datasets)
        n = min(n, d.max_eval_cases or n)
    return min(n, params.evaluation.num_cases or n)


def _judgements(role: "ModelRole", mode: str, samples: int, states: int, prompt_tokens: int, stage: str,
                name: str) -> RoleCost | None:
    """A critic's cost for ``states`` judgements: none for the rule or learned critic, a scoring
    pass each for probs (and for votes on a local model), ``samples`` sampled answers each for
    votes on an API."""
    if mode in ("rule", "learned"):
        return None
    if mode == "votes" and role.backend == "openai":
        return RoleCost(stage, name, role.name, states, states * samples, prompt_tokens,
                        states * samples * _vote_tokens()).priced(role)
    return RoleCost(stage, name, role.name, states, 0, prompt_tokens, 0).priced(role)


def _vote_tokens() -> int:
    """The most tokens one sampled critic answer may have (the LLM critic's own cap)."""
    import inspect

    from .critic.llm import LLMCritic

    return int(inspect.signature(LLMCritic.__init__).parameters["max_new_tokens"].default)


def simulation_cost(params: "RunParams") -> list[RoleCost]:
    m, sim, h = params.models, params.simulation, params.data.max_history_turns
    C, k, T = _contexts(params), sim.num_candidates, sim.max_turns
    window = [min(h, h + 2 * (t - 1)) for t in range(1, T + 1)]  # the prompts show the last h turns
    rows = [RoleCost(runs.SIMULATION, "policy", m.policy.name, C, C * k, C * _prompt(h),
                     C * k * m.policy.max_new_tokens).priced(m.policy)]
    if T > 1:
        later = C * k * (T - 1)
        rows.append(RoleCost(runs.SIMULATION, "system", m.system.name, later, later,
                             C * k * sum(_prompt(w) for w in window[1:]), later * m.system.max_new_tokens).priced(m.system))
    rows.append(RoleCost(runs.SIMULATION, "user_sim", m.user_sim.name, C * k * T, C * k * T,
                         C * k * sum(_prompt(w) for w in window), C * k * T * m.user_sim.max_new_tokens).priced(m.user_sim))
    critic = _judgements(m.critic, sim.critic_mode, sim.critic_samples, C * k * T,
                         C * k * sum(_prompt(w) for w in window), runs.SIMULATION, "critic")
    rows += [critic] if critic else []
    return rows


def grpo_cost(params: "RunParams") -> list[RoleCost]:
    g, role = params.grpo, params.models.policy
    a = g.args
    completions = int(a["max_steps"]) * int(a["per_device_train_batch_size"]) * \
        int(a.get("gradient_accumulation_steps", 1)) * g.num_processes
    prompt = min(g.max_prompt_length, _prompt(params.data.max_history_turns))
    return [RoleCost(runs.POLICY, "policy", role.name, completions, completions, completions * prompt,
                     completions * int(a["max_completion_length"]))]


def evaluation_cost(params: "RunParams") -> list[RoleCost]:
    from .agents import CRITERIA
    from .evaluate import conditions, role_label

    e, m = params.evaluation, params.models
    n_cases = _eval_cases(params)
    S, T = len(e.systems), e.max_turns
    convs = S * n_cases
    window = [min(1 + 2 * T, 1 + 2 * (t - 1)) for t in range(1, T + 1)]
    rows: list[RoleCost] = []
    for i, c in enumerate(conditions(params)):
        label = functools.partial(role_label, condition=c, headline=i == 0)
        rows.append(RoleCost(runs.EVALUATION, label("policy"), m.policy.name, convs * T, convs * T,
                             convs * sum(_prompt(w) for w in window), convs * T * m.policy.max_new_tokens).priced(m.policy))
        seeker = c.user_sim
        rows.append(RoleCost(runs.EVALUATION, label("eval_user_sim"), seeker.name, convs * T, convs * T,
                             convs * sum(_prompt(w + 1) for w in window), convs * T * seeker.max_new_tokens).priced(seeker))
        judge_role = c.critic or m.eval_critic
        judged = _judgements(judge_role, e.critic_mode, e.critic_samples, convs * T,
                             convs * sum(_prompt(w + 1) for w in window), runs.EVALUATION, label("eval_critic"))
        rows += [judged] if judged else []
    if e.contrast_critic:
        contrast = _judgements(m.eval_critic, e.contrast_critic, e.critic_samples, convs * T,
                               convs * sum(_prompt(w + 1) for w in window), runs.EVALUATION, "eval_critic [contrast]")
        rows += [contrast] if contrast else []
    pairs = max(0, S - 1) * min(e.judge_pairs, n_cases) * len(CRITERIA) * 2
    if pairs:
        rows.append(RoleCost(runs.EVALUATION, "judge", m.judge.name, pairs, pairs, pairs * _prompt(2 * (1 + 2 * T)),
                             pairs * m.judge.max_new_tokens).priced(m.judge))
    return rows


def estimate(params: "RunParams", stages: list[str] | None = None) -> list[RoleCost]:
    """Every stage's (or those named) model use, from the params."""
    parts = {runs.SIMULATION: simulation_cost, runs.POLICY: grpo_cost, runs.EVALUATION: evaluation_cost}
    return [row for stage, fn in parts.items() if stages is None or stage in stages for row in fn(params)]


def _total(rows: list[RoleCost]) -> dict[str, Any]:
    priced = [r.dollars for r in rows if r.dollars is not None]
    return {"stage": "total", "role": "", "model": "", "requests": sum(r.requests for r in rows),
            "sequences": sum(r.sequences for r in rows), "prompt_tokens": sum(r.prompt_tokens for r in rows),
            "generated_tokens": sum(r.generated_tokens for r in rows), "dollars": sum(priced) if priced else None}


def estimate_rows(rows: list[RoleCost]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows] + ([_total(rows)] if rows else [])


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain-text table (the command line's): dollars as $x.xx, – where no price is declared."""
    shown = [{"stage": r["stage"], "role": r["role"], "model": r["model"], "requests": f"{r['requests']:,}",
              "sequences": f"{r['sequences']:,}", "prompt tokens": f"{r['prompt_tokens']:,}",
              "generated tokens": f"{r['generated_tokens']:,}",
              "dollars": "–" if r["dollars"] is None else f"${r['dollars']:,.2f}"} for r in rows]
    return plain_table(shown)


def plain_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a plain-text table for a terminal."""
    import pandas as pd

    return pd.DataFrame(rows).to_string(index=False) if rows else "(none)"


def estimate_text(params: "RunParams") -> str:
    head = (f"estimate for {params.run_name} (upper bounds on turns and generated tokens; prompt tokens rough; "
            "dollars only for roles with price_per_mtok)")
    return head + "\n" + format_rows(estimate_rows(estimate(params)))


def sweep_estimate_text(plan) -> str:
    """A sweep's cost: each run's own stages (shared ones counted once, in the run that computes them)."""
    rows: list[RoleCost] = []
    for run in plan.runs:
        if run.status in ("finished", "stale"):
            continue
        mine = [s for s in runs.STAGES if s in run.computes or s in run.shared_computes]
        rows += estimate(run.params, mine)
    groups: dict[tuple[str, str, str], list[RoleCost]] = {}
    for r in rows:
        groups.setdefault((r.stage, r.role, r.model), []).append(r)
    summary = [_total(v) | {"stage": stage, "role": f"{role} ({len(v)} runs)" if len(v) > 1 else role, "model": model}
               for (stage, role, model), v in groups.items()]
    return ("estimate for the sweep (runs still to compute; shared stages once), per stage and role\n" +
            format_rows(summary + ([_total(rows)] if rows else [])))


# --------------------------------------------------------------------------------------------
# What a run did
# --------------------------------------------------------------------------------------------


def actual_counts(params: "RunParams") -> list[dict[str, Any]]:
    """What the stages recorded: the simulation's requests, replies, prompt and generated tokens
    per role (its summary; ``computed_in``: the run that did the work when the stage was reused),
    GRPO's completions and generated tokens (its log: ``completions/mean_length``)."""
    lay = runs.layout(params)
    out = []
    summary = runs.read_json(lay.simulation_summary, default=None)
    if summary and summary.get("new_trajectories"):
        record = runs.read_record(lay.root, runs.SIMULATION) or {}
        where = record.get("copied_from") or "this run"  # a reused stage's work was done (and paid) once, there
        for role, generated in (summary.get("generated_tokens") or {}).items():
            out.append({"stage": runs.SIMULATION, "role": role, "computed_in": where, "requests": (summary.get("requests") or {}).get(role),
                        "sequences": (summary.get("sequences") or {}).get(role),
                        "prompt_tokens": summary["prompt_tokens"].get(role), "generated_tokens": generated})
    for label, counts in (runs.read_json(lay.evaluation_usage, default=None) or {}).items():
        out.append({"stage": runs.EVALUATION, "role": label, "computed_in": "this run", **counts})
    history = runs.read_json(lay.grpo_log_history, default=None)
    if history:
        a = params.grpo.args
        per_step = int(a["per_device_train_batch_size"]) * int(a.get("gradient_accumulation_steps", 1)) * \
            params.grpo.num_processes
        lengths = [h["completions/mean_length"] for h in history if "completions/mean_length" in h]
        if lengths:
            generated = int(round(sum(lengths) * per_step))
            # TRL's num_tokens: every token the trainer has read so far (prompts and completions)
            seen = max((h["num_tokens"] for h in history if h.get("num_tokens") is not None), default=None)
            out.append({"stage": runs.POLICY, "role": "policy", "computed_in": "this run",
                        "requests": len(lengths) * per_step, "sequences": len(lengths) * per_step,
                        "prompt_tokens": int(seen) - generated if seen is not None else None,
                        "generated_tokens": generated})
    return out


def cost_record(params: "RunParams") -> dict[str, Any]:
    """The estimate beside what the stages recorded (``cost.json`` in the run folder)."""
    return {"estimate": estimate_rows(estimate(params)), "actual": actual_counts(params),
            "assumptions": {"prompt_overhead_tokens": PROMPT_OVERHEAD, "tokens_per_turn": TOKENS_PER_TURN}}
