"""What every command shares: the Typer app, the common options, settings, and reaching the server.

Commands that have a server to talk to do so over HTTP when one answers at --server; otherwise they open
the local store themselves (the embedded index can be opened by one process at a time).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="eventrag: event-driven RAG over your files.")

ServerOpt = Annotated[
    str, typer.Option("--server", envvar="EVENTRAG_SERVER_URL", help="URL of a running eventrag server")
]
KeyOpt = Annotated[str | None, typer.Option("--api-key", envvar="EVENTRAG_API_KEY", help="API key for the server")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="local state directory (EVENTRAG_DATA_DIR)")]


def load_settings(data_dir: Path | None = None, **overrides: Any) -> Any:
    from app.settings import Settings

    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        return Settings(**overrides)
    except Exception as exc:
        typer.secho(f"configuration error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_up(server: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{server.rstrip('/')}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def open_container(settings: Any) -> Any:
    from app.container import build_container
    from stores.errors import EventragError

    try:
        c = build_container(settings)
        _ = c.index  # open it now: a store held by a server is said here, clearly, not at first use
    except EventragError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc
    c.recover()
    return c


def via_server(server: str, api_key: str | None, method: str, path: str, body: Any = None) -> Any | None:
    """Call a running server, or return None when none answers (the caller then opens the local store)."""
    if not server_up(server):
        return None
    import httpx

    headers = {"X-API-Key": api_key} if api_key else {}
    r = httpx.request(method, f"{server.rstrip('/')}{path}", json=body, headers=headers, timeout=120)
    if r.status_code >= 400:
        typer.secho(f"{r.status_code}: {r.json().get('detail')}", fg="red", err=True)
        raise typer.Exit(1)
    return r.json()
