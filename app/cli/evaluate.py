"""`eventrag eval`: retrieval (and answer) quality on a BEIR dataset, through the production worker,
searcher and answer path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import app, load_settings


def eval_store_factory(base: Any, embedder: Any, batch_size: int, query_embedder: Any = None) -> Any:
    """Opens fresh local stores for `app.evaluation.runner`: the production container on a temp data dir,
    documents embedded by the configured backend, questions by the production query encoder (ONNX)."""
    from app.container import build_container
    from app.evaluation.runner import IndexVariant
    from app.settings import ChunkingSettings, QueueBackend, StateBackend

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
        return build_container(settings, embedder=embedder, query_embedder=query_embedder)

    return open_store


@app.command("eval")
def evaluate(
    dataset_dir: Annotated[Path, typer.Argument(help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")],
    split: Annotated[str, typer.Option(help="qrels split to score")] = "train",
    modes: Annotated[
        str | None,
        typer.Option(help="comma-separated search modes to score (default: all three; none with --answers)"),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the figures here")] = None,
    limit_queries: Annotated[int | None, typer.Option(min=1, help="only the first N judged queries")] = None,
    limit_docs: Annotated[
        int | None, typer.Option(min=1, help="the kept queries' judged documents, then others in file order")
    ] = None,
    whole_documents: Annotated[
        bool, typer.Option("--whole-documents", help="also index with chunks as large as the model window")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=256, help="events per worker batch")] = 64,
    answers: Annotated[
        bool,
        typer.Option(
            "--answers",
            help="ask every claim with rationales (rationales/SPLIT.jsonl) and score the extractive answers",
        ),
    ] = False,
) -> None:
    """Index a BEIR dataset into a temporary store and print nDCG@10, recall@100 and MRR@10 per mode;
    with --answers, the faithfulness and rationale recall of the extractive answers."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from app.container import build_embedder, build_query_embedder, embedding_batch_size
    from app.evaluation.answers import RationaleFormatError, load_rationales
    from app.evaluation.runner import CHUNKED, WHOLE_DOCUMENT, AnswerRequest, EvaluationError, load_beir
    from app.evaluation.runner import evaluate as run_evaluation
    from stores.onnx_embedding import recorded_backend
    from stores.ports import SearchMode
    from stores.sparse import Bm25Encoder

    if modes is None:
        modes = "" if answers else "dense,sparse,hybrid"
    try:
        wanted = [SearchMode(m.strip()) for m in modes.split(",") if m.strip()]
    except ValueError as exc:
        typer.secho(f"--modes: {exc}; use dense, sparse and/or hybrid", fg="red", err=True)
        raise typer.Exit(2) from exc
    if not wanted and not answers:
        typer.secho("--modes: name at least one mode (or pass --answers)", fg="red", err=True)
        raise typer.Exit(2)
    base = load_settings()
    answer_request = None
    try:
        dataset = load_beir(dataset_dir, split).subset(queries=limit_queries, documents=limit_docs)
        if answers:
            # The kept judged claims that have evidence are asked; the others are scored for retrieval only.
            answer_request = AnswerRequest(
                load_rationales(dataset_dir, split), top_k=base.top_k_default, mode=base.search_mode
            )
    except (EvaluationError, RationaleFormatError) as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc
    # A fresh index each run: the configured backend, else what a new index gets (`Container.backend`).
    backend = base.embedding_backend or recorded_backend(None)
    embedder = build_embedder(base, backend)
    query_embedder = build_query_embedder(base, backend)
    bm25 = Bm25Encoder()
    used = {
        "embedding_model": embedder.model_id,
        "embedding_backend": backend.value,
        "query_encoder": type(query_embedder).__name__,
        "index_backend": base.index_backend.value,
        "chunk_tokens": base.chunking.chunk_tokens,
        "overlap_tokens": base.chunking.overlap_tokens,
        "worker_batch_size": batch_size,
        "embedding_batch_size": embedding_batch_size(base, backend),
        "bm25": {"k1": bm25.k1, "b": bm25.b, "avg_doc_tokens": bm25.avg_doc_tokens},
        "group_by_document": True,
        "rank_depth": 100,
        "relevance_bar": {"min_score": base.min_score, "min_keyword_score": base.min_keyword_score},
        "top_k": base.top_k_default,
    }
    n_queries = len(dataset.judged_queries)
    typer.echo(f"{dataset_dir} ({split}): {len(dataset.corpus)} documents, {n_queries} queries")
    try:
        with Progress(transient=True) as progress:
            report = run_evaluation(
                dataset,
                eval_store_factory(base, embedder, batch_size, query_embedder),
                modes=wanted,
                variants=(CHUNKED, WHOLE_DOCUMENT) if whole_documents else (CHUNKED,),
                progress=progress,
                name=str(dataset_dir),
                split=split,
                settings=used,
                answers=answer_request,
            )
    except EvaluationError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc

    console = Console()
    if report.rows():
        table = Table(title=f"{dataset_dir.name} ({split}): {report.queries} queries, {report.documents} docs")
        for column in ("index", "mode", "nDCG@10", "recall@100", "MRR@10", "nDCG@10 with bar"):
            table.add_column(column, justify="left" if column in ("index", "mode") else "right")
        for variant, mode, ndcg, recall, mrr, barred in report.rows():
            shown = f"{barred:.4f}" if barred is not None else "-"
            table.add_row(variant, mode, f"{ndcg:.4f}", f"{recall:.4f}", f"{mrr:.4f}", shown)
        console.print(table)
    if report.answers is not None:
        a = report.answers
        table = Table(title=f"extractive answers: {a.claims} claims, top_k {a.top_k}, {a.mode}")
        for column in ("faithful", "rationale_recall", "cited_rationale_doc", "words/answer", "seconds"):
            table.add_column(column, justify="right")
        table.add_row(
            f"{a.faithful:.4f}",
            f"{a.rationale_recall:.4f}",
            f"{a.cited_rationale_doc:.4f}",
            f"{a.mean_answer_words:.1f}",
            f"{a.seconds:.0f}",
        )
        console.print(table)
    for v in report.variants:
        typer.echo(f"{v.variant}: {v.chunks} chunks of {v.documents} docs, indexed in {v.index_seconds}s")
    typer.echo(f"wall time {report.wall_seconds:.0f}s")
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        typer.echo(f"figures written to {json_out}")
