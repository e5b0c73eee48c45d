"""The commands that run eventrag or open its stores directly: serve, init-index, redrive."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.common import DataDirOpt, app, is_loopback, load_settings, open_container
from stores.events import EventKey


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    data_dir: DataDirOpt = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Run the API and the ingest worker in one process on embedded defaults."""
    import uvicorn

    from app.container import DEFAULT_WORKSPACE, build_container
    from app.logs import configure_logging
    from app.main import create_app
    from app.settings import LogFormat
    from stores.errors import EventragError

    settings = load_settings(data_dir)
    configure_logging(settings)
    if not settings.api_keys and settings.anonymous_workspace is None:
        if is_loopback(host):
            # A single local user: no keys needed, because nothing off this machine can reach the port.
            settings.anonymous_workspace = DEFAULT_WORKSPACE
        else:
            typer.secho(
                f"no EVENTRAG_API_KEYS set and binding {host} (not loopback): every query will be refused"
                " with 401 until you configure keys.",
                fg="yellow",
                err=True,
            )
    try:
        container = build_container(settings)
    except EventragError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc
    if container.generated_secret:
        typer.echo(f"webhook secret for workspace '{DEFAULT_WORKSPACE}' (stored in {settings.generated_secret_path}):")
        typer.echo(f"  {container.generated_secret}")
    if settings.anonymous_workspace:
        typer.echo(f"queries without an API key use workspace '{settings.anonymous_workspace}' (loopback only)")
    typer.echo(f"data dir: {settings.data_dir.resolve()}  index: {settings.qdrant_url or 'local (embedded)'}")
    try:
        # JSON logs: uvicorn's own loggers go through the root handler too, so every line is one object.
        log_config = None if settings.log_format is LogFormat.JSON else uvicorn.config.LOGGING_CONFIG
        uvicorn.run(create_app(container), host=host, port=port, log_level=log_level, log_config=log_config)
    finally:
        container.close()


@app.command("init-index")
def init_index(data_dir: DataDirOpt = None) -> None:
    """Create the Qdrant collection (and payload indexes on a server) if missing, and check the model."""
    c = open_container(load_settings(data_dir))
    try:
        typer.echo(f"collection ready; embedding model {c.embedder.model_id}")
    finally:
        c.close()


@app.command("redrive")
def redrive(
    max_messages: Annotated[int, typer.Option("--max", min=1, help="move at most this many messages")] = 1000,
) -> None:
    """Move dead-lettered events back to the SQS queue with a fresh attempt budget (AWS deployment)."""
    from app.container import build_state_and_queue
    from app.settings import QueueBackend
    from stores.events import EventStatus
    from stores.sqs import SqsJobQueue

    settings = load_settings()
    if settings.queue_backend is not QueueBackend.SQS or not (settings.sqs_queue_url and settings.sqs_dlq_url):
        typer.secho(
            "redrive moves messages from the SQS dead-letter queue: set EVENTRAG_QUEUE_BACKEND=sqs,"
            ' EVENTRAG_SQS_QUEUE_URL and EVENTRAG_SQS_DLQ_URL (docs/deploy.md, "Watching failures")',
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    # Only the state store and the queue: no index, no model.
    state, queue = build_state_and_queue(settings)
    assert isinstance(queue, SqsJobQueue)

    def reset(key: EventKey) -> None:
        rec = state.get_event(key.workspace, key.event_id)
        if rec is None:
            typer.secho(f"  {key}: no longer in the state store; the worker will drop it", fg="yellow")
        elif rec.status in (EventStatus.DONE, EventStatus.SUPERSEDED):
            typer.echo(f"  {key}: already {rec.status.value}")
        else:
            state.reset_for_retry(key.workspace, key.event_id)
            typer.echo(f"  {key}: {rec.event.path} (was {rec.status.value}: {rec.error or 'no error recorded'})")

    try:
        moved = queue.redrive(max_messages, prepare=reset)
    finally:
        state.close()
    typer.echo(f"moved {moved} message(s) from the dead-letter queue back to the queue")
