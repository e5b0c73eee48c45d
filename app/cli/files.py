"""`eventrag ingest`: local files in as file events, through a running server or the local store."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import DataDirOpt, ServerOpt, app, load_settings, open_container, server_up


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


def _file_event_body(path: Path, root: Path, workspace: str) -> tuple[str, dict[str, Any]]:
    import base64

    stat = path.stat()
    rel = (
        path.resolve().relative_to(root.resolve()).as_posix()
        if path.resolve().is_relative_to(root.resolve())
        else path.name
    )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    stamp = datetime.fromtimestamp(stat.st_mtime, UTC)
    body = {
        "type": "file.updated",
        "timestamp": stamp.isoformat().replace("+00:00", "Z"),
        "data": {
            "workspace": workspace,
            "file_id": rel,
            "path": rel,
            "content_base64": base64.b64encode(data).decode(),
        },
    }
    event_id = f"cli-{hashlib.sha256(f'{workspace}/{rel}/{digest}/{stat.st_mtime_ns}'.encode()).hexdigest()[:24]}"
    return event_id, body


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="files or folders to index")],
    workspace: Annotated[str, typer.Option(help="workspace to index into")] = "default",
    root: Annotated[Path | None, typer.Option(help="paths are recorded relative to this folder")] = None,
    server: ServerOpt = "http://127.0.0.1:8000",
    data_dir: DataDirOpt = None,
) -> None:
    """Index local files (re-running indexes only what changed), with a progress bar."""
    from rich.progress import Progress

    files = _walk(paths)
    base = root or (paths[0] if len(paths) == 1 and paths[0].is_dir() else Path.cwd())
    settings = load_settings(data_dir)
    if server_up(server):
        _ingestvia_server(files, base, workspace, server, settings)
        return
    from ingest.receiver import record_and_enqueue
    from ingest.webhook_body import build_event, parse_webhook_body

    c = open_container(settings)
    try:
        with Progress() as progress:
            task = progress.add_task("queueing", total=len(files))
            for f in files:
                event_id, body = _file_event_body(f, base, workspace)
                event = build_event(event_id, workspace, parse_webhook_body(json.dumps(body).encode()))
                record_and_enqueue(event, state=c.state, queue=c.queue)
                progress.advance(task)
            progress.update(task, description="indexing", completed=0, total=c.queue.pending())
            assert c.loop is not None
            while (n := c.loop.run_once()) > 0:
                progress.advance(task, n)
        docs = c.state.list_documents(workspace, limit=100000)
        failed = [d for d in docs if d.status.value in ("failed", "skipped")]
        typer.echo(
            f"{len(files)} file(s); workspace '{workspace}' has"
            f" {sum(d.status.value == 'indexed' for d in docs)} indexed document(s)"
        )
        for d in failed:
            typer.secho(f"  {d.status.value}: {d.path}: {d.last_error}", fg="yellow")
    finally:
        c.close()


def _ingestvia_server(files: list[Path], base: Path, workspace: str, server: str, settings: Any) -> None:
    import httpx
    from rich.progress import Progress
    from standardwebhooks.webhooks import Webhook

    from app.container import local_webhook_secrets

    secrets, _ = local_webhook_secrets(settings)
    if workspace not in secrets:
        typer.secho(f"no webhook secret for workspace {workspace!r} in this configuration", fg="red", err=True)
        raise typer.Exit(2)
    signer = Webhook(secrets[workspace][0])
    typer.echo(f"sending {len(files)} file(s) to the server at {server}")
    with httpx.Client(base_url=server, timeout=60) as client, Progress() as progress:
        task = progress.add_task("sending", total=len(files))
        for f in files:
            event_id, body = _file_event_body(f, base, workspace)
            raw = json.dumps(body)
            now = datetime.now(UTC)
            headers = {
                "webhook-id": event_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signer.sign(event_id, now, raw),
                "content-type": "application/json",
            }
            r = client.post("/webhooks", content=raw, headers=headers)
            if r.status_code >= 400:
                typer.secho(f"{f}: {r.status_code} {r.json().get('detail')}", fg="red", err=True)
            progress.advance(task)
    typer.echo("queued; the server indexes them in the background (GET /documents shows progress)")
