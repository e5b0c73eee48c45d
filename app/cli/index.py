"""The commands that prepare models and the embedded index: export-onnx, optimize-index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import DataDirOpt, app, load_settings, open_container


@app.command("export-onnx")
def export_onnx(
    out: Annotated[
        Path | None, typer.Option(help="folder to write (then set EVENTRAG_ONNX_DIR to it); default: the cache")
    ] = None,
) -> None:
    """Export the embedding model to ONNX (fp32 and int8) once, for the torch-free query path."""
    from app.container import _model_location
    from stores.onnx_embedding import cache_folder, default_cache_dir, is_exported
    from stores.onnx_export import export_onnx as run_export

    settings = load_settings()
    location, model_id = _model_location(settings)
    if not Path(location).is_dir():
        typer.secho(f"{location} is not a local model folder: nothing to export", fg="red", err=True)
        raise typer.Exit(2)
    target = out or cache_folder(settings.onnx_cache_dir or default_cache_dir(), model_id, location)
    if out is None and is_exported(target):
        typer.echo(f"already exported: {target}")
        return
    run_export(location, target, model_id=model_id)
    typer.echo(f"exported {model_id} to {target}")
    if out is not None:
        typer.echo(f"point the query path at it: EVENTRAG_ONNX_DIR={target}")


@app.command("optimize-index")
def optimize_index(data_dir: DataDirOpt = None) -> None:
    """Build the embedded Edge index's HNSW graphs and vacuum deleted points, in place. It blocks the
    process that runs it, so it runs here, offline, with the server stopped; `eventrag serve` optimizes
    online by itself (EVENTRAG_EDGE__OPTIMIZE_AFTER_POINTS)."""
    from stores.edge import EdgeIndex

    c = open_container(load_settings(data_dir))
    try:
        index = c.index
        if not isinstance(index, EdgeIndex):
            typer.echo("the index is not the embedded Edge shard: a Qdrant server optimizes itself")
            return
        typer.echo(f"optimizing {index.shard_dir} ({index.points_count()} points)...")
        changed = index.optimize()
        typer.echo("optimized" if changed else "already optimal")
    finally:
        c.close()
