"""Talk to a policy in the terminal, as a seeker would.

    python -m rlff_utils.chat --params params/smoke.yaml                 # the run's trained adapter if present
    python -m rlff_utils.chat --params params/smoke.yaml --adapter none  # the base model
    python -m rlff_utils.chat --params params/smoke.yaml --show-reasoning

Commands while chatting: ``/think`` toggles showing the policy's reasoning, ``/reset`` starts over,
``/quit`` (or an empty line / Ctrl-D) ends. The same :class:`ChatSession` works in a notebook cell.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .agents import PromptStyle, policy_messages, strip_reasoning
from .params import ParamsError, RunParams, load_params


def default_adapter(params: RunParams) -> str | None:
    """The adapter notebook 04 saved for this run, if it exists."""
    path = params.run_dir / "policy" / "adapter"
    return str(path) if (path / "adapter_config.json").is_file() else None


@dataclass
class ChatSession:
    """A conversation with the policy; the history is kept from the dialogue's point of view so
    the prompt is built exactly as in training and evaluation (``agents.policy_messages``)."""

    params: RunParams
    adapter: str | None = None
    style: PromptStyle = "reasoning"
    situation: str = ""
    emotion_type: str = ""
    problem_type: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        from .backends import get_backend

        self.backend = get_backend(self.params.models.policy, adapter=self.adapter)

    def reply(self, seeker_text: str) -> tuple[str, str]:
        """(visible reply, raw output including any reasoning)."""
        self.history.append({"speaker": "seeker", "text": seeker_text, "strategy": None})
        context = {"situation": self.situation, "emotion_type": self.emotion_type,
                   "problem_type": self.problem_type, "history": self.history}
        messages = policy_messages(context, self.style, max_history_turns=self.params.data.max_history_turns)
        role = self.params.models.policy
        raw = self.backend.generate([messages], n=1, temperature=role.temperature,
                                    max_new_tokens=role.max_new_tokens, seed=self.seed + len(self.history))[0][0]
        visible = strip_reasoning(raw) or raw.strip()
        self.history.append({"speaker": "supporter", "text": visible, "strategy": None})
        return visible, raw

    def reset(self) -> None:
        self.history.clear()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlff_utils.chat", description="Chat with an ESC policy.")
    ap.add_argument("--params", required=True, help="params file naming the policy model")
    ap.add_argument("--adapter", default=None, help="LoRA adapter folder, or 'none' (default: the run's trained adapter)")
    ap.add_argument("--style", default="reasoning", choices=["vanilla", "strategy", "reasoning"])
    ap.add_argument("--show-reasoning", action="store_true")
    ap.add_argument("--situation", default="", help="optional situation given to the policy's role prompt")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params, check_files=False)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    adapter = None if args.adapter == "none" else (args.adapter or default_adapter(params))
    if adapter and not Path(adapter).is_dir():
        print(f"error: adapter folder not found: {adapter}", file=sys.stderr)
        return 1
    print(f"policy {params.models.policy.name}" + (f" + adapter {adapter}" if adapter else " (no adapter)"))
    print("type as the help seeker; /think toggles reasoning, /reset starts over, /quit ends")
    session = ChatSession(params, adapter, args.style, situation=args.situation)
    show = args.show_reasoning
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line or line == "/quit":
            break
        if line == "/think":
            show = not show
            print(f"(reasoning {'shown' if show else 'hidden'})")
            continue
        if line == "/reset":
            session.reset()
            print("(new conversation)")
            continue
        visible, raw = session.reply(line)
        if show and raw.strip() != visible:
            print(f"  [reasoning] {raw.split('</think>')[0].replace('<think>', '').strip()}")
        print(f"supporter> {visible}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
