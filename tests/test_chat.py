"""The terminal chat talks to a policy and keeps the dialogue from the seeker's point of view."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_chat_session_builds_history(ci_params, tiny_model_path):
    from rlff_utils.chat import ChatSession

    s = ChatSession(ci_params, adapter=None, style="reasoning", situation="lost my job")
    visible, raw = s.reply("I lost my job today.")
    assert isinstance(visible, str) and visible
    assert [t["speaker"] for t in s.history] == ["seeker", "supporter"]
    assert "</think>" not in s.history[-1]["text"]
    s.reply("What should I do?")
    assert len(s.history) == 4
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
