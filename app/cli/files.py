"""`eventrag ingest`: local files in as file events, through a running server or the local store, and a
report of what became of this run's files."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import DataDirOpt, KeyOpt, ServerOpt, app, load_settings, open_container, server_up
from app.cli.delivery import SETTLED, Outcome, Sender, error_detail, event_id_for, file_event_body, outcome_of, report


def _walk(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and not any(s.startswith(".") for s in f.parts)))
        elif p.is_file():
            files.append(p)
        else:
            typer.secho(f"not found: {p}", fg="red", err=True)
            raise typer.Exit(2)
    return files


def _relative(path: Path, root: Path) -> str:
    resolved, base = path.resolve(), root.resolve()
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else path.name


def _file_event(path: Path, root: Path, workspace: str) -> tuple[str, dict[str, Any]]:
    """(event id, body) for a file as it is now. The id is deterministic in the content and mtime, so
    re-running ingest on an unchanged file is a duplicate delivery, not new work."""
    stat = path.stat()
    rel = _relative(path, root)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    # The change happened at the mtime, and not later than now: a file stamped in the future (a skewed
    # clock where it was made) would be refused, since a future timestamp would outrank every later change.
    stamp = min(datetime.fromtimestamp(stat.st_mtime, UTC), datetime.now(UTC))
    body = file_event_body("updated", workspace=workspace, file_id=rel, path=rel, data=data, timestamp=stamp)
    return event_id_for("cli", workspace, rel, digest, stat.st_mtime_ns), body


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="files or folders to index")],
    workspace: Annotated[str, typer.Option(help="workspace to index into")] = "default",
    root: Annotated[Path | None, typer.Option(help="paths are recorded relative to this folder")] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="with a server: wait until it has indexed this run's files")
    ] = False,
    wait_timeout: Annotated[float, typer.Option(help="seconds --wait waits at most")] = 3600.0,
    server: ServerOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Index local files (re-running indexes only what changed) and report, for this run's files, how many
    were indexed, skipped and failed, with the reason for each file that was not indexed."""
    files = _walk(paths)
    base = root or (paths[0] if len(paths) == 1 and paths[0].is_dir() else Path.cwd())
    settings = load_settings(data_dir)
    if server_up(server):
        failed = _ingest_via_server(files, base, workspace, server, api_key, settings, wait, wait_timeout)
    else:
        failed = _ingest_locally(files, base, workspace, settings)
    if failed:
        raise typer.Exit(1)


def _ingest_locally(files: list[Path], base: Path, workspace: str, settings: Any) -> int:
    from rich.progress import Progress

    from ingest.receiver import record_and_enqueue
    from ingest.webhook_body import build_event, parse_webhook_body

    c = open_container(settings)
    try:
        sent: list[tuple[str, str]] = []  # (path, event id)
        with Progress() as progress:
            task = progress.add_task("queueing", total=len(files))
            for f in files:
                event_id, body = _file_event(f, base, workspace)
                event = build_event(event_id, workspace, parse_webhook_body(json.dumps(body).encode()))
                record_and_enqueue(event, state=c.state, queue=c.queue)
                sent.append((body["data"]["path"], event_id))
                progress.advance(task)
            progress.update(task, description="indexing", completed=0, total=c.queue.pending())
            assert c.loop is not None
            c.loop.drain(on_batch=lambda n: progress.advance(task, n))
        outcomes = []
        for path, event_id in sent:
            rec = c.state.get_event(workspace, event_id)
            shown = None if rec is None else {"status": rec.status.value, "detail": rec.detail, "error": rec.error}
            outcomes.append(outcome_of(path, shown))
        return report(outcomes)
    finally:
        c.close()


def _ingest_via_server(
    files: list[Path],
    base: Path,
    workspace: str,
    server: str,
    api_key: str | None,
    settings: Any,
    wait: bool,
    wait_timeout: float,
) -> int:
    import httpx
    from rich.progress import Progress

    from app.container import local_webhook_secrets

    secrets, _ = local_webhook_secrets(settings)
    if workspace not in secrets:
        typer.secho(f"no webhook secret for workspace {workspace!r} in this configuration", fg="red", err=True)
        raise typer.Exit(2)
    sender = Sender(server, secrets[workspace][0])
    typer.echo(f"sending {len(files)} file(s) to the server at {server}")
    accepted: dict[str, str] = {}  # event id -> path
    refused: list[Outcome] = []
    try:
        with Progress() as progress:
            task = progress.add_task("sending", total=len(files))
            for f in files:
                event_id, body = _file_event(f, base, workspace)
                path = body["data"]["path"]
                try:
                    r = sender.send(event_id, body)
                except httpx.HTTPError as exc:
                    refused.append(Outcome(path, "failed", f"could not deliver: {exc}"))
                else:
                    if r.status_code >= 400:
                        refused.append(Outcome(path, "failed", f"{r.status_code} {error_detail(r)}"))
                    else:
                        accepted[event_id] = path
                progress.advance(task)
            if not wait:
                progress.stop()
                typer.echo(
                    f"queued {len(accepted)} file(s); the server indexes them in the background"
                    " (--wait waits for the outcome; GET /documents shows it)"
                )
                return report(refused) if refused else 0
            events = _wait_for(server, api_key, accepted, progress, wait_timeout)
    finally:
        sender.close()
    return report([*(outcome_of(path, events.get(eid)) for eid, path in accepted.items()), *refused])


POLL_FIRST_SECONDS, POLL_MAX_SECONDS = 0.5, 5.0


def _wait_for(
    server: str, api_key: str | None, accepted: dict[str, str], progress: Any, timeout: float
) -> dict[str, dict[str, Any]]:
    """Poll the server until every accepted event has settled (or the timeout); returns the events."""
    import httpx

    headers = {"X-API-Key": api_key} if api_key else {}
    task = progress.add_task("indexing", total=len(accepted))
    events: dict[str, dict[str, Any]] = {}
    pending = list(accepted)
    deadline = time.monotonic() + timeout
    delay = POLL_FIRST_SECONDS
    with httpx.Client(base_url=server, timeout=60, headers=headers) as client:
        while pending and time.monotonic() < deadline:
            for i in range(0, len(pending), 1000):
                r = client.post("/events/status", json={"event_ids": pending[i : i + 1000]})
                if r.status_code >= 400:
                    typer.secho(f"{r.status_code}: {error_detail(r)}", fg="red", err=True)
                    raise typer.Exit(1)
                for ev in r.json()["events"]:
                    events[ev["event_id"]] = ev
            still = [eid for eid in pending if events.get(eid, {}).get("status") not in SETTLED]
            # Quick while events settle; backing off (to POLL_MAX_SECONDS) while none does, e.g. a long file.
            delay = POLL_FIRST_SECONDS if len(still) < len(pending) else min(delay * 2, POLL_MAX_SECONDS)
            pending = still
            progress.update(task, completed=len(accepted) - len(pending))
            if pending:
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
    return events
