"""The `eventrag` command line: serve, ingest, ask, and the operator commands.

`ingest` and `ask` talk to a running server over HTTP when one answers at --server; otherwise they open the
local store themselves (the local index can be opened by one process at a time).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="eventrag: event-driven RAG over your files.")

ServerOpt = Annotated[
    str, typer.Option("--server", envvar="EVENTRAG_SERVER_URL", help="URL of a running eventrag server")
]
KeyOpt = Annotated[str | None, typer.Option("--api-key", envvar="EVENTRAG_API_KEY", help="API key for the server")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="local state directory (EVENTRAG_DATA_DIR)")]


def _settings(data_dir: Path | None = None, **overrides: Any) -> Any:
    from app.settings import Settings

    if data_dir is not None:
        overrides["data_dir"] = data_dir
    try:
        return Settings(**overrides)
    except Exception as exc:
        typer.secho(f"configuration error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_up(server: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{server.rstrip('/')}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _open_container(settings: Any) -> Any:
    from app.container import build_container
    from ingest.errors import IngestError

    try:
        c = build_container(settings)
    except IngestError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc
    c.recover()
    return c


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
    from app.main import create_app
    from ingest.errors import IngestError

    settings = _settings(data_dir)
    if not settings.api_keys and settings.anonymous_workspace is None:
        if _is_loopback(host):
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
    except IngestError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc
    if container.generated_secret:
        typer.echo(f"webhook secret for workspace '{DEFAULT_WORKSPACE}' (stored in {settings.generated_secret_path}):")
        typer.echo(f"  {container.generated_secret}")
    if settings.anonymous_workspace:
        typer.echo(f"queries without an API key use workspace '{settings.anonymous_workspace}' (loopback only)")
    typer.echo(f"data dir: {settings.data_dir.resolve()}  index: {settings.qdrant_url or 'local (embedded)'}")
    try:
        uvicorn.run(create_app(container), host=host, port=port, log_level=log_level)
    finally:
        container.close()


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
    settings = _settings(data_dir)
    if _server_up(server):
        _ingest_via_server(files, base, workspace, server, settings)
        return
    from ingest.events import EventStatus, build_event, parse_webhook_body

    c = _open_container(settings)
    try:
        with Progress() as progress:
            task = progress.add_task("queueing", total=len(files))
            for f in files:
                event_id, body = _file_event_body(f, base, workspace)
                event = build_event(event_id, workspace, parse_webhook_body(json.dumps(body).encode()))
                rec, created = c.state.add_event(event, EventStatus.RECEIVED)
                if created or rec.status is EventStatus.RECEIVED:
                    c.queue.enqueue(event.event_id, event.group_key)
                    c.state.set_event_status(event.event_id, EventStatus.QUEUED)
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


def _ingest_via_server(files: list[Path], base: Path, workspace: str, server: str, settings: Any) -> None:
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


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="your question")],
    workspace: Annotated[str, typer.Option(help="workspace (local mode)")] = "default",
    top_k: Annotated[int, typer.Option(help="passages to retrieve")] = 5,
    server: ServerOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON response")] = False,
) -> None:
    """Answer a question and print its sources."""
    if _server_up(server):
        import httpx

        headers = {"X-API-Key": api_key} if api_key else {}
        r = httpx.post(
            f"{server.rstrip('/')}/query", json={"question": question, "top_k": top_k}, headers=headers, timeout=120
        )
        if r.status_code != 200:
            typer.secho(f"{r.status_code}: {r.json().get('detail')}", fg="red", err=True)
            raise typer.Exit(1)
        result = r.json()
    else:
        from app.routes.query import answer_out

        settings = _settings(data_dir)
        c = _open_container(settings)
        try:
            result = answer_out(
                c.answerer.answer(workspace, question, top_k=top_k, mode=settings.search_mode)
            ).model_dump()
        finally:
            c.close()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(result["answer"])
    if result["citations"]:
        typer.echo("\nSources:")
        for cit in result["citations"]:
            typer.echo(
                f"  [{cit['n']}] {cit['path']} (v{cit['version']}) chars {cit['start']}-{cit['end']},"
                f" score {cit['score']:.3f}"
            )


def _via_server(server: str, api_key: str | None, method: str, path: str, body: Any = None) -> Any | None:
    """Call a running server, or return None when none answers (the caller then opens the local store)."""
    if not _server_up(server):
        return None
    import httpx

    headers = {"X-API-Key": api_key} if api_key else {}
    r = httpx.request(method, f"{server.rstrip('/')}{path}", json=body, headers=headers, timeout=120)
    if r.status_code >= 400:
        typer.secho(f"{r.status_code}: {r.json().get('detail')}", fg="red", err=True)
        raise typer.Exit(1)
    return r.json()


@app.command("retry")
def retry(
    event_id: Annotated[str, typer.Argument(help="id of a failed event")],
    server: ServerOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Queue a failed event again, with a fresh attempt budget."""
    if _via_server(server, api_key, "POST", f"/events/{event_id}/retry") is not None:
        typer.echo(f"event {event_id} queued again")
        return
    from app.routes.events import retry_failed
    from ingest.events import EventStatus

    c = _open_container(_settings(data_dir))
    try:
        rec = c.state.get_event(event_id)
        if rec is None or rec.status is not EventStatus.FAILED:
            state = "unknown" if rec is None else rec.status.value
            typer.secho(f"event {event_id!r} is {state}, not failed", fg="red", err=True)
            raise typer.Exit(1)
        retry_failed(c, rec)
        assert c.loop is not None
        c.loop.drain()
        after = c.state.get_event(event_id)
        typer.echo(f"event {event_id} retried: {after.status.value if after else 'unknown'}")
    finally:
        c.close()


@app.command("held")
def held(
    confirm: Annotated[bool, typer.Option("--confirm", help="apply the held deletes")] = False,
    discard: Annotated[bool, typer.Option("--discard", help="drop the held deletes; files stay indexed")] = False,
    workspace: Annotated[str, typer.Option(help="workspace (local mode)")] = "default",
    server: ServerOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """List deletes held by the mass-deletion brake; --confirm applies them, --discard drops them."""
    if confirm and discard:
        typer.secho("choose --confirm or --discard, not both", fg="red", err=True)
        raise typer.Exit(2)
    action = "confirm" if confirm else "discard" if discard else None
    path = f"/held-deletes/{action}" if action else "/held-deletes"
    result = _via_server(server, api_key, "POST" if action else "GET", path, {} if action else None)
    if result is None:
        from app.routes import operations

        c = _open_container(_settings(data_dir))
        try:
            if action == "confirm":
                out = operations.confirm_held(workspace, c, None)
            elif action == "discard":
                out = operations.discard_held(workspace, c, None)
            else:
                out = operations.list_held(workspace, c)
            if action and c.loop is not None:
                c.loop.drain()
            result = out.model_dump(mode="json")
        finally:
            c.close()
    verb = {"confirm": "confirmed", "discard": "discarded", None: "held"}[action]
    typer.echo(f"{result['count']} delete(s) {verb}")
    for e in result["events"]:
        typer.echo(f"  {e['event_id']}  {e['path']}  {e.get('detail') or ''}")


@app.command("reconcile")
def reconcile_cmd(
    repair: Annotated[bool, typer.Option("--repair", help="fix what differs")] = False,
    workspace: Annotated[str, typer.Option(help="workspace (local mode)")] = "default",
    server: ServerOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Check the index against the document registry (missing points, orphans, version mismatches)."""
    result = _via_server(server, api_key, "POST", f"/reconcile?repair={'true' if repair else 'false'}")
    if result is None:
        from app.routes.operations import post_reconcile

        c = _open_container(_settings(data_dir))
        try:
            result = post_reconcile(workspace, c, repair).model_dump(mode="json")
            if repair and c.loop is not None:
                c.loop.drain()
        finally:
            c.close()
    typer.echo(
        f"workspace {result['workspace']}: {result['documents_checked']} document(s), {result['points_checked']}"
        f" point(s): {'clean' if result['clean'] else str(len(result['problems'])) + ' problem(s)'}"
    )
    for p in result["problems"]:
        typer.echo(
            f"  {p['kind']:<16} {p['file_id']}: {p['detail']}" + (f" -> {p['repaired']}" if p["repaired"] else "")
        )
    if not result["clean"] and not repair:
        raise typer.Exit(3)


def eval_store_factory(base: Any, embedder: Any, batch_size: int) -> Any:
    """Opens fresh local stores for `retrieval.evaluation`: the production container on a temp data dir."""
    from app.container import build_container
    from app.settings import ChunkingSettings, QueueBackend, StateBackend
    from retrieval.evaluation import IndexVariant

    def open_store(data_dir: Path, variant: IndexVariant) -> Any:
        chunking = base.chunking
        if variant.whole_documents:
            # The worker caps chunks at the model window less the title prefix: as whole as it gets.
            chunking = ChunkingSettings(chunk_tokens=embedder.max_tokens, overlap_tokens=0)
        settings = base.model_copy(
            update={
                # Always a fresh embedded store, whatever server the environment points at.
                "data_dir": data_dir,
                "qdrant_url": None,
                "qdrant_url_ssm_parameter": None,
                "qdrant_collection": "eval",
                "state_backend": StateBackend.SQLITE,
                "queue_backend": QueueBackend.LOCAL,
                "source_root": None,
                "chunking": chunking,
                "worker": base.worker.model_copy(update={"batch_size": batch_size}),
            }
        )
        return build_container(settings, embedder=embedder)

    return open_store


@app.command("eval")
def evaluate(
    dataset_dir: Annotated[Path, typer.Argument(help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")],
    split: Annotated[str, typer.Option(help="qrels split to score")] = "train",
    modes: Annotated[str, typer.Option(help="comma-separated search modes")] = "dense,sparse,hybrid",
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the figures here")] = None,
    limit_queries: Annotated[int | None, typer.Option(min=1, help="only the first N judged queries")] = None,
    limit_docs: Annotated[
        int | None, typer.Option(min=1, help="the kept queries' judged documents, then others in file order")
    ] = None,
    whole_documents: Annotated[
        bool, typer.Option("--whole-documents", help="also index with chunks as large as the model window")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=256, help="events per worker batch")] = 64,
) -> None:
    """Index a BEIR dataset into a temporary store and print nDCG@10, recall@100 and MRR@10 per mode."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from ingest.embedding import SentenceTransformerEmbedder
    from ingest.ports import SearchMode
    from ingest.sparse import Bm25Encoder
    from retrieval.evaluation import CHUNKED, WHOLE_DOCUMENT, EvaluationError, load_beir
    from retrieval.evaluation import evaluate as run_evaluation

    try:
        wanted = [SearchMode(m.strip()) for m in modes.split(",") if m.strip()]
    except ValueError as exc:
        typer.secho(f"--modes: {exc}; use dense, sparse and/or hybrid", fg="red", err=True)
        raise typer.Exit(2) from exc
    base = _settings()
    try:
        dataset = load_beir(dataset_dir, split).subset(queries=limit_queries, documents=limit_docs)
    except EvaluationError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc
    embedder = SentenceTransformerEmbedder(base.embedding_model, batch_size=base.embedding_batch_size)
    bm25 = Bm25Encoder()
    used = {
        "embedding_model": embedder.model_id,
        "chunk_tokens": base.chunking.chunk_tokens,
        "overlap_tokens": base.chunking.overlap_tokens,
        "worker_batch_size": batch_size,
        "embedding_batch_size": base.embedding_batch_size,
        "bm25": {"k1": bm25.k1, "b": bm25.b, "avg_doc_tokens": bm25.avg_doc_tokens},
        "group_by_document": True,
        "rank_depth": 100,
    }
    n_queries = len(dataset.judged_queries)
    typer.echo(f"{dataset_dir} ({split}): {len(dataset.corpus)} documents, {n_queries} queries")
    try:
        with Progress(transient=True) as progress:
            report = run_evaluation(
                dataset,
                eval_store_factory(base, embedder, batch_size),
                modes=wanted,
                variants=(CHUNKED, WHOLE_DOCUMENT) if whole_documents else (CHUNKED,),
                progress=progress,
                name=str(dataset_dir),
                split=split,
                settings=used,
            )
    except EvaluationError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc

    table = Table(title=f"{dataset_dir.name} ({split}): {report.queries} queries, {report.documents} docs")
    for column in ("index", "mode", "nDCG@10", "recall@100", "MRR@10"):
        table.add_column(column, justify="left" if column in ("index", "mode") else "right")
    for variant, mode, ndcg, recall, mrr in report.rows():
        table.add_row(variant, mode, f"{ndcg:.4f}", f"{recall:.4f}", f"{mrr:.4f}")
    Console().print(table)
    for v in report.variants:
        typer.echo(f"{v.variant}: {v.chunks} chunks of {v.documents} docs, indexed in {v.index_seconds}s")
    typer.echo(f"wall time {report.wall_seconds:.0f}s")
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        typer.echo(f"figures written to {json_out}")


@app.command("init-index")
def init_index(data_dir: DataDirOpt = None) -> None:
    """Create the Qdrant collection (and payload indexes on a server) if missing, and check the model."""
    c = _open_container(_settings(data_dir))
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
    from ingest.events import EventStatus
    from ingest.queues.sqs import SqsJobQueue

    settings = _settings()
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

    def reset(event_id: str) -> None:
        rec = state.get_event(event_id)
        if rec is None:
            typer.secho(f"  {event_id}: no longer in the state store; the worker will drop it", fg="yellow")
        elif rec.status in (EventStatus.DONE, EventStatus.SUPERSEDED):
            typer.echo(f"  {event_id}: already {rec.status.value}")
        else:
            state.reset_for_retry(event_id)
            typer.echo(f"  {event_id}: {rec.event.path} (was {rec.status.value}: {rec.error or 'no error recorded'})")

    try:
        moved = queue.redrive(max_messages, prepare=reset)
    finally:
        state.close()
    typer.echo(f"moved {moved} message(s) from the dead-letter queue back to the queue")


def main() -> None:
    if "EVENTRAG_EMBEDDING_MODEL" not in os.environ:
        # The bundled model needs no hub; say so, so transformers never tries to reach one.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
