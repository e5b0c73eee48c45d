"""`eventrag watch` on a temporary folder, driving a real `eventrag serve` over loopback with real signed
Standard Webhooks deliveries: create, edit, rename and delete files and the index follows; stop the
watcher, change files, start it again and it catches up.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.cli import EVENTRAG, cli_env, wait_for
from tests.test_cli import server  # noqa: F401  (a fixture)


def documents(url: str) -> dict[str, dict[str, Any]]:
    return {d["file_id"]: d for d in httpx.get(f"{url}/documents").json()["documents"]}


def active(url: str) -> dict[str, str]:
    """file id -> path of the documents a query can find."""
    return {k: d["path"] for k, d in documents(url).items() if d["status"] == "indexed"}


def answer(url: str, question: str) -> dict[str, Any]:
    return dict(httpx.post(f"{url}/query", json={"question": question}, timeout=60).json())


@pytest.fixture
def start_watcher(server) -> Iterator[Any]:  # type: ignore[no-untyped-def]  # noqa: F811
    url, data, _, _ = server
    running: list[subprocess.Popen[str]] = []

    def start(folder: Path) -> subprocess.Popen[str]:
        env = cli_env(data)
        proc = subprocess.Popen(
            [*EVENTRAG, "watch", str(folder), "--server", url, "--data-dir", str(data)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=Path(__file__).parent.parent,
        )
        running.append(proc)
        return proc

    yield start
    for proc in running:
        stop(proc)


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM: the watcher stops cleanly, its manifest saved
    out, _ = proc.communicate(timeout=30)
    return out


def test_the_index_follows_the_folder_and_catches_up_after_a_restart(
    server,  # type: ignore[no-untyped-def]  # noqa: F811
    start_watcher: Any,
    tmp_path: Path,
) -> None:
    url = server[0]
    folder = tmp_path / "shared"
    (folder / "hr").mkdir(parents=True)
    (folder / "hr" / "leave.md").write_text("# Leave\nEmployees get 25 days of annual leave.\n")
    (folder / "canteen.txt").write_text("The canteen serves vegan curry on Thursdays.\n")
    (folder / ".secret.md").write_text("# Hidden\nThe vault code is 1234.\n")
    (folder / "~$draft.docx").write_bytes(b"lock file")

    watcher = start_watcher(folder)
    # What was there before the watcher started is sent first.
    wait_for(lambda: active(url) == {"hr/leave.md": "hr/leave.md", "canteen.txt": "canteen.txt"}, 90, "first sync")

    # Edit: the new version answers.
    (folder / "hr" / "leave.md").write_text("# Leave\nEmployees get 30 days of annual leave from 2027.\n")
    wait_for(lambda: "30 days" in answer(url, "How many days of annual leave?")["citations"][0]["text"], 60, "edit")

    # Rename: one update of the same file id with the new path (nothing deleted and re-embedded).
    (folder / "canteen.txt").rename(folder / "food.txt")
    wait_for(lambda: active(url) == {"hr/leave.md": "hr/leave.md", "canteen.txt": "food.txt"}, 60, "rename")

    # Create and delete.
    (folder / "parking.md").write_text("# Parking\nVisitors park on level minus two.\n")
    (folder / "hr" / "leave.md").unlink()
    wait_for(lambda: active(url) == {"canteen.txt": "food.txt", "parking.md": "parking.md"}, 60, "create and delete")
    assert documents(url)["hr/leave.md"]["status"] == "deleted"
    output = stop(watcher)
    assert "renamed food.txt (renamed from canteen.txt)" in output and "deleted hr/leave.md" in output

    # While the watcher is stopped: a new file, an edit, a delete. Started again, it catches up.
    (folder / "badges.md").write_text("# Badges\nLost badges are replaced at the front desk.\n")
    (folder / "parking.md").write_text("# Parking\nVisitors park on level minus three since the works.\n")
    (folder / "food.txt").unlink()
    watcher = start_watcher(folder)
    wait_for(lambda: active(url) == {"parking.md": "parking.md", "badges.md": "badges.md"}, 90, "catch-up")
    # The set of files can match before the edit of parking.md is applied: wait for the edit itself.
    wait_for(lambda: "minus three" in answer(url, "Where do visitors park?")["citations"][0]["text"], 60, "the edit")
    # Hidden and temporary files never left the machine.
    assert not any(".secret" in p or "~$" in p for p in (d["path"] for d in documents(url).values()))
    assert "vault" not in str(answer(url, "What is the vault code?")["citations"])
    stop(watcher)
