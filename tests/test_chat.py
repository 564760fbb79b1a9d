"""The terminal chat talks to a policy and keeps the dialogue from the seeker's point of view."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_chat_session_builds_history(ci_params, tiny_model_path):
    """The reply comes from the policy's prompt as training and evaluation build it (role prompt with
    the situation, the dialogue so far, the seeker last), its reasoning is kept from the history."""
    from rlff_utils.agents import policy_messages
    from rlff_utils.chat import ChatSession

    s = ChatSession(ci_params, adapter=None, style="reasoning", situation="lost my job")
    real_visible, real_raw = s.reply("I lost my job today.")  # the real tiny policy answers
    assert real_visible == (real_raw.rsplit("</think>", 1)[-1].strip() or real_raw.strip())
    s.reset()

    sent = []

    class Recording:  # the loaded backend, with its prompts and a scripted answer on record
        def generate(self, conversations, **kw):
            sent.append(conversations[0])
            return [[f"<think>plan {len(sent)}</think> Answer {len(sent)}."]]

    s.backend = Recording()
    visible, raw = s.reply("I lost my job today.")
    assert (visible, raw) == ("Answer 1.", "<think>plan 1</think> Answer 1.")
    context = {"situation": "lost my job", "emotion_type": "", "problem_type": "",
               "history": [{"speaker": "seeker", "text": "I lost my job today.", "strategy": None}]}
    assert sent[0] == policy_messages(context, "reasoning", max_history_turns=ci_params.data.max_history_turns)
    assert "lost my job" in sent[0][0]["content"] and "<think>" in sent[0][0]["content"]
    assert [t["speaker"] for t in s.history] == ["seeker", "supporter"] and s.history[1]["text"] == "Answer 1."
    s.reply("What should I do?")
    assert [m["content"] for m in sent[1][1:]] == ["I lost my job today.", "Answer 1.", "What should I do?"]
    assert len(s.history) == 4 and "plan 1" not in str(sent[1])  # the reasoning never goes back in
    s.reset()
    assert s.history == []


def test_chat_cli_in_a_terminal_session(tiny_model_path, data_dir):
    r = subprocess.run(
        [sys.executable, "-m", "rlff_utils.chat", "--params", str(ROOT / "params" / "ci.yaml"), "--adapter", "none"],
        input="Hello, I feel anxious.\n/think\n/reset\n/quit\n", capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("supporter>") == 1 and "(reasoning shown)" in r.stdout and "(new conversation)" in r.stdout


def test_chat_cli_missing_adapter_is_a_clear_error(data_dir, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "rlff_utils.chat", "--params", str(ROOT / "params" / "ci.yaml"), "--adapter", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert r.returncode == 1 and "adapter folder not found" in r.stderr


def test_chat_session_fits_the_context_window(ci_params, tiny_model_path):
    """Oldest turns leave the prompt first, then the message is cut; never past the window."""
    from rlff_utils.chat import CUT, ChatSession

    s = ChatSession(ci_params, adapter=None, style="vanilla")
    count, window = s.window
    assert window == 8192
    budget = window - ci_params.models.policy.max_new_tokens
    long_turn = "word " * 3000
    s.history = [{"speaker": sp, "text": long_turn, "strategy": None} for sp in ("seeker", "supporter") * 2]
    sent, messages = s._fit("And today?")
    assert sent == "And today?" and count(messages) <= budget
    assert s.notices == ["the 1 oldest turn(s) were left out of the prompt to fit the model's 8192-token context window"]
    s.reset()
    huge = "I feel lost. " * 4000  # 52,000 characters
    visible, _ = s.reply(huge)
    assert isinstance(visible, str)
    assert any(n.startswith(f"your message was cut from {len(huge)} to ") for n in s.notices)
    kept = s.history[0]["text"]
    assert kept.endswith(CUT) and huge.startswith(kept.removesuffix(CUT)) and len(kept) < len(huge)
    assert count(s._messages(s.history[:1])) <= budget


def test_chat_cli_survives_bad_bytes_and_huge_messages(tiny_model_path, data_dir):
    """Bytes that are not UTF-8 and a 50k-character message: both answered, the chat goes on."""
    huge = ("My thoughts keep racing. " * 2000).encode()  # 50,000 characters
    stdin = b"Hello \xff\xfe I feel anxious.\n" + huge + b"\nStill here.\n/quit\n"
    r = subprocess.run(
        [sys.executable, "-m", "rlff_utils.chat", "--params", str(ROOT / "params" / "ci.yaml"), "--adapter", "none"],
        input=stdin, capture_output=True, timeout=600, cwd=ROOT,
    )
    out = r.stdout.decode("utf-8", errors="replace")
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert out.count("supporter>") == 3
    assert "(note: 2 undecodable byte(s) in your message were replaced by \ufffd)" in out
    assert "(note: your message was cut from 49999 to " in out and "8192-token context window" in out  # stripped
    assert "Traceback" not in r.stderr.decode(errors="replace")
