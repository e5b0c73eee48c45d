"""The README's path, for real: `eventrag serve` on loopback, webhooks over TCP, `eventrag ask` / `ingest`."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.documents import scanned_pdf
from tests.fakes.webhooks import file_event, sign

EVENTRAG = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTRAG_", "OPENAI_"))}
    env.update({"EVENTRAG_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "EVENTRAG_WORKER__POLL_SECONDS": "0.1"})
    return env


def run_cli(*args: str, data_dir: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EVENTRAG, *args],
        env=cli_env(data_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).parent.parent,
    )


def wait_for(predicate, deadline: float, what: str):  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str], list[str]]]:
    data = tmp_path / "data"
    port = free_port()
    proc = subprocess.Popen(
        [*EVENTRAG, "serve", "--port", str(port), "--data-dir", str(data), "--log-level", "warning"],
        env=cli_env(data),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            return httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 120, "the server to answer /healthz")
        yield url, data, proc, lines
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        lines.extend(out.splitlines())


def test_serve_ingest_ask_over_loopback(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, data, proc, _ = server
    secret = json.loads((data / "webhook-secret.json").read_text())["default"]
    assert secret.startswith("whsec_")

    raw, headers = sign(
        secret,
        file_event(
            "created",
            "menu",
            workspace=None,
            content="The canteen serves vegan curry on Thursdays.",
            version=1,
        ),
    )
    r = httpx.post(f"{url}/webhooks", content=raw, headers=headers)
    assert r.status_code == 202, r.text
    status_url = url + r.json()["status_url"]
    # No API key: allowed because the server is bound to loopback with no keys configured.
    wait_for(lambda: httpx.get(status_url).json()["status"] == "done", 60, "the event to be processed")

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "parking.md").write_text("# Parking\nVisitor parking is on level minus two, spaces 40 to 60.\n")
    out = run_cli("ingest", str(folder), "--server", url, data_dir=data)
    assert out.returncode == 0, out.stderr
    assert "sending 1 file(s) to the server" in out.stdout and "queued 1 file(s)" in out.stdout
    wait_for(
        lambda: any(
            d["path"] == "parking.md" and d["status"] == "indexed"
            for d in httpx.get(f"{url}/documents").json()["documents"]
        ),
        60,
        "parking.md indexed",
    )
    # --wait: the outcome of this run's files, indexed by the server (in its parse sandbox), with reasons.
    (folder / "scan.pdf").write_bytes(scanned_pdf())
    (folder / "README.Debian").write_text("Built with debhelper; the test suite runs with dh_auto_test.\n")
    out = run_cli("ingest", str(folder), "--server", url, "--wait", "--api-key", "unused-on-loopback", data_dir=data)
    assert out.returncode == 0, out.stderr
    assert "3 file(s) in this run: 2 indexed, 1 skipped" in out.stdout  # parking.md again: a duplicate, done
    assert re.search(r"skipped: scan\.pdf: 'scan\.pdf': no text layer \(OCR is not enabled\)", out.stdout)

    out = run_cli("ask", "Where can visitors park?", "--server", url, data_dir=data)
    assert out.returncode == 0, out.stderr
    assert "level minus two" in out.stdout and "Sources:" in out.stdout and "parking.md" in out.stdout

    # The store is held by the server: a CLI that cannot reach it says why instead of failing obscurely.
    out = run_cli("ask", "anything", "--server", "http://127.0.0.1:9", data_dir=data)
    assert out.returncode == 1
    assert "open in another process" in out.stderr


def test_ingest_and_ask_without_a_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    folder = tmp_path / "docs"
    (folder / "it").mkdir(parents=True)
    (folder / "it" / "vpn.md").write_text("# VPN\nThe VPN client must be updated every quarter by the IT desk.\n")
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = run_cli("ingest", str(folder), "--server", "http://127.0.0.1:9", data_dir=data)
    assert out.returncode == 0, out.stderr
    assert "2 file(s) in this run: 1 indexed, 1 skipped" in out.stdout
    assert re.search(r"skipped: logo\.png: cannot parse 'logo\.png': its bytes are image/png", out.stdout)

    # A second run reports its own files only: the skipped logo of the first run is not listed again.
    (folder / "it" / "vpn.md").write_text("# VPN\nThe VPN client must be updated every month by the IT desk.\n")
    out = run_cli(
        "ingest", str(folder / "it" / "vpn.md"), "--root", str(folder), "--server", "http://127.0.0.1:9", data_dir=data
    )
    assert out.returncode == 0, out.stderr
    assert "1 file(s) in this run: 1 indexed" in out.stdout and "logo" not in out.stdout
    out = run_cli(
        "ask",
        "How often is the VPN client updated?",
        "--server",
        "http://127.0.0.1:9",
        "--json",
        data_dir=data,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["citations"][0]["path"] == "it/vpn.md"


def test_operator_commands_on_the_local_store(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    data = tmp_path / "data"
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(3):
        (folder / f"n{i}.md").write_text(f"# Note {i}\nNote number {i} is about subject {i}.\n")
    runner = CliRunner()
    common = ["--server", "http://127.0.0.1:9", "--data-dir", str(data)]
    r = runner.invoke(app, ["ingest", str(folder), *common])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["reconcile", *common])
    assert r.exit_code == 0 and "3 document(s)" in r.output and "clean" in r.output
    r = runner.invoke(app, ["held", *common])
    assert r.exit_code == 0 and "0 delete(s) held" in r.output
    r = runner.invoke(app, ["retry", "no-such-event", *common])
    assert r.exit_code == 1 and "unknown, not failed" in r.output
