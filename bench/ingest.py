"""Ingest: 1,000 SciFact abstracts through the production worker, against one raw encode of exactly the
texts it embedded, per embedding backend; then re-syncs of the same documents."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import Doc, Store, drain, open_store, send, timer
from ingest.sandbox import ParserPool


def raw_encode(store: Store) -> dict[str, float]:
    """Seconds (wall, and CPU of every thread of this process: less moved by other load) of the model alone
    on every text the worker embedded, longest first (as the worker sorts) in batches of its size: `raw`
    one call at a time on every core, as the model's own `encode` runs; `raw_runs` with the worker's
    embedder, its `runs` calls at once (the same figures when that is 1)."""
    texts = list(store.recorder.texts)
    inner = store.recorder.inner
    counts = inner.count_tokens(texts)
    ordered = [t for _, t in sorted(zip(counts, texts, strict=True), key=lambda p: -p[0])]
    batches = [ordered[i : i + inner.batch_size] for i in range(0, len(ordered), inner.batch_size)]
    out: dict[str, float] = {}
    if store.plain is not inner:
        store.plain.embed_documents(batches[0])  # (warm, as the worker's session is)
    cpu0 = time.process_time()
    with timer() as t:
        for batch in batches:
            store.plain.embed_documents(batch)
    out["raw"], out["raw_cpu"] = t[0], time.process_time() - cpu0
    if inner.runs == 1:
        out["raw_runs"], out["raw_runs_cpu"] = out["raw"], out["raw_cpu"]
        return out
    cpu0 = time.process_time()
    with timer() as t, ThreadPoolExecutor(inner.runs) as pool:
        list(pool.map(inner.embed_documents, batches))
    out["raw_runs"], out["raw_runs_cpu"] = t[0], time.process_time() - cpu0
    return out


def padding_over_sorted(store: Store) -> float:
    """The tokens the worker's model calls ran on (each batch padded to its longest text) over those of the
    raw encode's corpus-wide sort, minus 1: what the worker's rounds add by sorting only what they hold.
    Counted with the tokenizer, so no load moves it."""
    inner = store.recorder.inner
    counts = inner.count_tokens(list(store.recorder.texts))
    worker, start = 0, 0
    for size in store.recorder.batches:
        worker += size * max(counts[start : start + size], default=0)
        start += size
    ordered = sorted(counts, reverse=True)
    step = inner.batch_size
    raw = sum(len(b) * b[0] for b in (ordered[i : i + step] for i in range(0, len(ordered), step)))
    return worker / raw - 1 if raw else 0.0


def ingest(docs: list[Doc], backend: str, *, keep: bool = False) -> tuple[dict[str, Any], Store | None]:
    store = open_store(backend)
    # The model loads and the worker's parts (index, parse sandbox) start before the clock, as in a
    # running server. One full batch of real texts, not recorded: the first calls of a model at a new
    # shape are slow.
    _ = store.recorder.dimension
    store.recorder.inner.embed_documents([d.text for d in docs[: store.recorder.inner.batch_size]])
    _ = store.container.loop
    parser = store.container.write_path.worker.planner.parser
    if isinstance(parser, ParserPool):
        parser.start()  # (started on the first file otherwise: half a second inside the clock)
    cpu0 = time.process_time()
    received = send(store, docs, 1)
    total = drain(store)
    cpu = time.process_time() - cpu0  # every thread of the process, receiving included
    chunks = len(store.recorder.texts)
    raw = raw_encode(store)  # right after the ingest, on the same texts
    full = sum(1 for b in store.recorder.batches if b == store.recorder.inner.batch_size)
    row = {
        "backend": backend,
        "documents": len(docs),
        "chunks": chunks,
        "seconds": round(total, 2),
        "receive_seconds": round(received, 2),
        "cpu_seconds": round(cpu, 2),
        "embedding_runs": store.recorder.runs,
        "raw_encode_seconds": round(raw["raw"], 2),
        "ratio_to_raw": round(total / raw["raw"], 3),
        "raw_encode_cpu_seconds": round(raw["raw_cpu"], 2),
        "cpu_ratio_to_raw": round(cpu / raw["raw_cpu"], 3),
        "raw_runs_encode_seconds": round(raw["raw_runs"], 2),
        "ratio_to_raw_runs": round(total / raw["raw_runs"], 3),
        "cpu_ratio_to_raw_runs": round(cpu / raw["raw_runs_cpu"], 3),
        "padding_over_sorted": round(padding_over_sorted(store), 4),
        "model_seconds": round(store.recorder.model_seconds, 2),
        "outside_model_seconds": round(total - store.recorder.model_seconds, 2),
        "docs_per_second": round(len(docs) / total, 1),
        "chunks_per_second": round(chunks / total, 1),
        "batches": len(store.recorder.batches),
        "full_batches": full,
    }
    if keep:
        return row, store
    store.close()
    return row, None


def resync(store: Store, docs: list[Doc], first_ingest_seconds: float, rounds: int = 3) -> dict[str, Any]:
    """Re-send every document, unchanged, as a new version `rounds` times; then 10 edited ones."""
    out: dict[str, Any] = {"unchanged": []}
    version = 1
    for _ in range(rounds):
        version += 1
        before = len(store.recorder.texts)
        received = send(store, docs, version)
        seconds = drain(store)
        out["unchanged"].append(
            {
                "version": version,
                "seconds": round(seconds, 3),
                "receive_seconds": round(received, 3),
                "embedded": len(store.recorder.texts) - before,
                "ratio_to_first_ingest": round(seconds / first_ingest_seconds, 4),
                "ratio_incl_receive": round((seconds + received) / first_ingest_seconds, 4),
            }
        )
    version += 1
    edited = docs[:10]
    before_texts = len(store.recorder.texts)
    old = {d.doc_id: {h.text for h in _chunks(store, d.doc_id)} for d in edited}
    received = send(store, edited, version, edit={d.doc_id for d in edited})
    seconds = drain(store)
    embedded = len(store.recorder.texts) - before_texts
    # Chunks of the new versions whose text no old chunk had: what an ideal re-index embeds.
    changed = sum(1 for d in edited for h in _chunks(store, d.doc_id) if h.text not in old[d.doc_id])
    per_doc_first = first_ingest_seconds / len(docs)
    out["edited"] = {
        "documents": len(edited),
        "seconds": round(seconds, 3),
        "receive_seconds": round(received, 3),
        "embedded": embedded,
        "changed_chunks": changed,
        "ratio_to_10_docs_of_first_ingest": round(seconds / (per_doc_first * len(edited)), 3),
    }
    return out


def _chunks(store: Store, file_id: str) -> list[Any]:
    c = store.container
    doc = c.state.get_document("bench", file_id)
    return c.index.file_chunks("bench", file_id, doc.revision) if doc and doc.revision else []
