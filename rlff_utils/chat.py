"""Talk to a policy in the terminal, as a seeker would.

    python -m rlff_utils.chat --params params/smoke.yaml                 # the run's trained adapter if present
    python -m rlff_utils.chat --params params/smoke.yaml --adapter none  # the base model
    python -m rlff_utils.chat --params params/smoke.yaml --show-reasoning

Commands while chatting: ``/think`` toggles showing the policy's reasoning, ``/reset`` starts over,
``/quit`` (or an empty line / Ctrl-D) ends. The same :class:`ChatSession` works in a notebook cell.

Nothing the seeker types ends the conversation: bytes that are not valid text are replaced (and
said so), and a prompt that would not fit the model's context window loses its oldest turns first,
then the end of the new message, with a visible notice (``ChatSession.notices``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import runs
from .agents import PromptStyle, policy_messages
from .text import strip_reasoning
from .params import ParamsError, RunParams, load_params


def default_adapter(params: RunParams) -> str | None:
    """The adapter notebook 04 saved for this run, if it exists."""
    path = runs.layout(params).adapter
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
        self.notices: list[str] = []
        self.window = context_window(self.backend)

    def _messages(self, history: list[dict[str, Any]]) -> list[dict[str, str]]:
        context = {"situation": self.situation, "emotion_type": self.emotion_type,
                   "problem_type": self.problem_type, "history": history}
        return policy_messages(context, self.style, max_history_turns=self.params.data.max_history_turns)

    def _fit(self, seeker_text: str) -> tuple[str, list[dict[str, str]]]:
        """The message as it will be sent and the prompt, within the model's context window
        minus the reply's tokens: the oldest turns are left out first, then the message is cut."""
        turn = {"speaker": "seeker", "text": seeker_text, "strategy": None}
        if self.window is None:
            return seeker_text, self._messages([*self.history, turn])
        count, window = self.window
        budget = window - self.params.models.policy.max_new_tokens
        shown = self.history[-(self.params.data.max_history_turns - 1):] if self.params.data.max_history_turns > 1 else []
        for start in range(len(shown) + 1):
            messages = self._messages([*shown[start:], turn])
            if count(messages) <= budget:
                if start:
                    self.notices.append(f"the {start} oldest turn(s) were left out of the prompt to fit the "
                                        f"model's {window}-token context window")
                return seeker_text, messages
        if start:
            self.notices.append(f"earlier turns were left out of the prompt to fit the model's {window}-token context window")
        lo, hi = 0, len(seeker_text)  # the longest prefix of the message that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(self._messages([{**turn, "text": seeker_text[:mid] + CUT}])) <= budget:
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            raise ValueError(f"the prompt does not fit the model's {window}-token context window even without "
                             "the message: lower models.policy.max_new_tokens")
        cut = seeker_text[:lo].rstrip() + CUT
        self.notices.append(f"your message was cut from {len(seeker_text)} to {lo} characters to fit the model's "
                            f"{window}-token context window")
        return cut, self._messages([{**turn, "text": cut}])

    def reply(self, seeker_text: str) -> tuple[str, str]:
        """(visible reply, raw output including any reasoning). Notices about what had to be
        changed to fit the model are in ``self.notices`` (cleared on each call)."""
        self.notices = []
        seeker_text, messages = self._fit(seeker_text)
        role = self.params.models.policy
        raw = self.backend.generate([messages], n=1, temperature=role.temperature,
                                    max_new_tokens=role.max_new_tokens, seed=self.seed + len(self.history) + 1)[0][0]
        visible = strip_reasoning(raw) or raw.strip()
        self.history.append({"speaker": "seeker", "text": seeker_text, "strategy": None})
        self.history.append({"speaker": "supporter", "text": visible, "strategy": None})
        return visible, raw

    def reset(self) -> None:
        self.history.clear()


CUT = " [...]"


def context_window(backend: Any) -> tuple[Callable[[list[dict[str, str]]], int], int] | None:
    """(prompt token counter, context window in tokens) of a local policy (hf or vllm); None
    when the backend does not say."""
    engine = getattr(backend, "engine", None)
    if engine is None:
        return None
    if hasattr(engine, "prompt_text"):  # hf
        tok, window = engine.tokenizer, getattr(engine.model.config, "max_position_embeddings", None)
        render = engine.prompt_text
    else:  # vllm
        tok = engine.get_tokenizer()
        window = getattr(getattr(getattr(engine, "llm_engine", None), "model_config", None), "max_model_len", None)

        def render(messages):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not window:
        return None
    return (lambda messages: len(tok(render(messages), add_special_tokens=False)["input_ids"])), int(window)


def _read_line() -> str | None:
    """A line from stdin (None at the end); undecodable bytes arrive as U+FFFD."""
    try:
        return input("you> ")
    except EOFError:
        return None


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
    for stream in (sys.stdin, sys.stdout, sys.stderr):  # bytes that are not text never end the chat
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    session = ChatSession(params, adapter, args.style, situation=args.situation)
    show = args.show_reasoning
    while True:
        line = _read_line()
        if line is None:
            break
        line = line.strip()
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
        if "\ufffd" in line:
            print(f"(note: {line.count(chr(0xFFFD))} undecodable byte(s) in your message were replaced by \ufffd)")
        try:
            visible, raw = session.reply(line)
        except Exception as e:  # noqa: BLE001 - report and keep the conversation
            print(f"(error: {type(e).__name__}: {e}; the conversation so far is kept, try again)")
            continue
        for notice in session.notices:
            print(f"(note: {notice})")
        if show and raw.strip() != visible:
            print(f"  [reasoning] {raw.split('</think>')[0].replace('<think>', '').strip()}")
        print(f"supporter> {visible}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
