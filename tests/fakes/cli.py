"""Run the `eventrag` CLI as a user does: a subprocess, a clean environment, `serve` on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

EVENTRAG = [sys.executable, "-m", "app.cli"]
REPO = Path(__file__).parent.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(data_dir: Path) -> dict[str, str]:
    """This process's environment without any EVENTRAG_/OPENAI_ setting, pointed at `data_dir`, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTRAG_", "OPENAI_"))}
    env.update({"EVENTRAG_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "EVENTRAG_WORKER__POLL_SECONDS": "0.1"})
    return env


def run_cli(*args: str, data_dir: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EVENTRAG, *args], env=cli_env(data_dir), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def wait_for(predicate: Callable[[], Any], deadline: float, what: str) -> Any:
    """Polls `predicate` until it returns something truthy (returned) or `deadline` seconds pass."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Served:
    """A running `eventrag serve`; `lines` fills with its output once it has stopped."""

    url: str
    data: Path
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)


@contextmanager
def serving(data: Path, env: dict[str, str] | None = None) -> Iterator[Served]:
    """`eventrag serve` on a free loopback port, up once it answers /healthz; stopped (and its output kept) on exit."""
    port = free_port()
    proc = subprocess.Popen(
        [*EVENTRAG, "serve", "--port", str(port), "--data-dir", str(data), "--log-level", "warning"],
        env=cli_env(data) if env is None else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    served = Served(f"http://127.0.0.1:{port}", data, proc)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            return httpx.get(f"{served.url}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 120, "the server to answer /healthz")
        yield served
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        served.lines.extend(out.splitlines())
