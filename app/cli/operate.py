"""The commands that ask and steer: ask, retry, held, reconcile (via the server, else the local store)."""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import quote

import typer

from app.cli.common import DataDirOpt, KeyOpt, ServerOpt, app, load_settings, open_container, server_up, via_server


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="your question")],
    workspace: Annotated[str, typer.Option(help="workspace (local mode)")] = "default",
    top_k: Annotated[
        int | None, typer.Option(min=1, help="passages to retrieve and cite (default EVENTRAG_TOP_K_DEFAULT)")
    ] = None,
    server: ServerOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON response")] = False,
) -> None:
    """Answer a question and print its sources."""
    if server_up(server):
        import httpx

        headers = {"X-API-Key": api_key} if api_key else {}
        r = httpx.post(
            f"{server.rstrip('/')}/query",
            json={"question": question, **({"top_k": top_k} if top_k else {})},
            headers=headers,
            timeout=120,
        )
        if r.status_code != 200:
            typer.secho(f"{r.status_code}: {r.json().get('detail')}", fg="red", err=True)
            raise typer.Exit(1)
        result = r.json()
    else:
        from app.routes.query import answer_out
        from retrieval.agent import Ask
        from retrieval.errors import QuestionRejectedError

        settings = load_settings(data_dir)
        c = open_container(settings)
        try:
            # The agent, as /query uses it: the same limits, the same answer.
            ask = Ask(workspace, question, top_k=top_k or settings.top_k_default, mode=settings.search_mode)
            result = answer_out(c.agent.answer(ask)).model_dump()
        except QuestionRejectedError as exc:
            typer.secho(f"{exc.status_code}: {exc}", fg="red", err=True)
            raise typer.Exit(1) from exc
        finally:
            c.close()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(result["answer"])
    if result.get("unverified_quotes"):
        typer.secho("\nNot found in the cited passages: " + "; ".join(result["unverified_quotes"]), fg="yellow")
    if result["citations"]:
        typer.echo("\nSources:")
        for cit in result["citations"]:
            version = f" (v{cit['version']})" if cit["version"] is not None else ""
            details = [f"chars {cit['start']}-{cit['end']}"]
            if cit.get("similarity") is not None:
                details.append(f"similarity {cit['similarity']:.2f}")
            if cit.get("keyword_score") is not None:
                details.append(f"keyword score {cit['keyword_score']:.2f}")
            typer.echo(f"  [{cit['n']}] {cit['path']}{version}, " + ", ".join(details))


@app.command("retry")
def retry(
    event_id: Annotated[str, typer.Argument(help="id of a failed event")],
    workspace: Annotated[str, typer.Option(help="workspace of the event (local mode)")] = "default",
    server: ServerOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Queue a failed event again, with a fresh attempt budget."""
    if via_server(server, api_key, "POST", f"/events/{quote(event_id, safe='')}/retry") is not None:
        typer.echo(f"event {event_id} queued again")
        return
    from app.routes.events import retry_failed
    from stores.events import EventStatus

    c = open_container(load_settings(data_dir))
    try:
        rec = c.state.get_event(workspace, event_id)
        if rec is None or rec.status is not EventStatus.FAILED:
            state = "unknown" if rec is None else rec.status.value
            typer.secho(f"event {event_id!r} is {state}, not failed", fg="red", err=True)
            raise typer.Exit(1)
        retry_failed(c, rec)
        assert c.loop is not None
        c.loop.drain()
        after = c.state.get_event(workspace, event_id)
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
    result = via_server(server, api_key, "POST" if action else "GET", path, {} if action else None)
    if result is None:
        from app.routes import operations

        c = open_container(load_settings(data_dir))
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
    result = via_server(server, api_key, "POST", f"/reconcile?repair={'true' if repair else 'false'}")
    if result is None:
        from app.routes.operations import post_reconcile

        c = open_container(load_settings(data_dir))
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
