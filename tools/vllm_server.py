"""Start and stop vLLM's OpenAI-compatible server on loopback (the README's GPU recipe, step 1).

:func:`serve` is a context manager: a free port on 127.0.0.1, the server in its own process group
(``python -m vllm.entrypoints.openai.api_server``: the ``vllm`` command of vLLM's CPU build looks
for a distribution named ``vllm`` and fails), readiness by its ``/health`` route, its output kept
in a log file, and on exit the whole process group ended (TERM, then KILL). The tests' server
fixture, ``make paper-check`` and the benchmarks use it.

    python -m tools.vllm_server smollm2-135m-instruct --name smollm2 --log server.log   # serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Server:
    """A running server: where to send requests and where its output goes."""

    base_url: str  # http://127.0.0.1:PORT/v1
    name: str  # the served model name (the `model` field of requests)
    log: Path
    pid: int


class ServerError(RuntimeError):
    """The server exited or did not become healthy in time (the message holds its log's tail)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(model: str, name: str, port: int, *, dtype: str = "float32", max_model_len: int = 2048,
            enforce_eager: bool = True, extra: list[str] | None = None) -> list[str]:
    """The server's command line: the recipe's ``vllm serve ... --enable-prefix-caching`` minus
    tensor parallelism, on loopback."""
    from rlff_utils.models import resolve_model

    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(model),
           "--served-model-name", name, "--dtype", dtype, "--max-model-len", str(max_model_len),
           "--enable-prefix-caching", "--host", "127.0.0.1", "--port", str(port)]
    if enforce_eager:
        cmd.append("--enforce-eager")
    if _cpu_build():  # seeded requests and chunked prefill kill the CPU build's engine (rlff_utils.backends.vllm.CPU_SCHEDULING)
        cmd.append("--no-enable-chunked-prefill")
    return cmd + list(extra or [])


def _cpu_build() -> bool:
    from rlff_utils.backends.vllm import _vllm_platform

    return _vllm_platform() == "cpu"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """End the server's whole process group (its engine core is a child process)."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def serve(model: str, name: str, log: Path, *, port: int | None = None, ready_timeout_s: float = 600.0,
          env: dict[str, str] | None = None, **options) -> Iterator[Server]:
    """A server for ``model`` (a registry alias or a folder) served as ``name``, ready on exit of
    the ``with`` line; ``options`` go to :func:`command`."""
    port = port or free_port()
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(command(model, name, port, **options), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})})
    try:
        health, deadline = f"http://127.0.0.1:{port}/health", time.monotonic() + ready_timeout_s
        while not _healthy(health):
            if proc.poll() is not None:
                raise ServerError(f"the vLLM server exited with code {proc.returncode} before it was ready; "
                                  f"log {log}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise ServerError(f"the vLLM server was not healthy within {ready_timeout_s:g}s; log {log}:\n{_tail(log)}")
            time.sleep(1.0)
        yield Server(base_url=f"http://127.0.0.1:{port}/v1", name=name, log=log, pid=proc.pid)
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a registry alias (smollm2-135m-instruct) or a model folder")
    ap.add_argument("--name", default=None, help="served model name (default: the model argument)")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--log", type=Path, default=Path("vllm_server.log"))
    args = ap.parse_args(argv)
    with serve(args.model, args.name or args.model, args.log, port=args.port) as server:
        print(f"serving {server.name} at {server.base_url} (log {server.log}); Ctrl-C stops it", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
