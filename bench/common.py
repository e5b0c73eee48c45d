"""What the bench sections share: SciFact documents, a fresh production store, a recording embedder."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stores.ports import TokenReuse

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SCIFACT = REPO.parent / "shared" / "data" / "scifact"


@dataclass(frozen=True, slots=True)
class Doc:
    doc_id: str
    text: str  # the Markdown file the evaluation sends: "# title", a blank line, the abstract


EDIT = "\n\nEdited: a sentence added in this version."


def text_of(doc: Doc, edit: set[str] | None = None) -> str:
    """The document's text, with one sentence added if it is among the edited ones."""
    return doc.text + (EDIT if edit and doc.doc_id in edit else "")


def scifact_docs(n: int, folder: Path = SCIFACT) -> list[Doc]:
    out = []
    with (folder / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            title = " ".join(str(row.get("title") or "").split())
            out.append(Doc(str(row["_id"]), f"# {title}\n\n{row.get('text') or ''}" if title else str(row["text"])))
            if len(out) >= n:
                break
    return out


def scifact_queries(n: int, folder: Path = SCIFACT) -> list[str]:
    out = []
    with (folder / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            out.append(str(json.loads(line)["text"]))
            if len(out) >= n:
                break
    return out


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Recorder:
    """Wraps an `Embedder`: keeps every text the model embedded and the time spent in the model."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.texts: list[str] = []
        self.batches: list[int] = []
        self.model_seconds = 0.0  # wall seconds with at least one model call running (`runs` overlap)
        self._lock = threading.Lock()
        self._running = 0
        self._since = 0.0

    @contextmanager
    def _call(self, texts: Sequence[str]) -> Iterator[None]:
        with self._lock:
            if self._running == 0:
                self._since = time.perf_counter()
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self.model_seconds += time.perf_counter() - self._since
                self.texts.extend(texts)
                self.batches.append(len(texts))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def model_id(self) -> str:
        return str(self.inner.model_id)

    @property
    def dimension(self) -> int:
        return int(self.inner.dimension)

    @property
    def max_tokens(self) -> int:
        return int(self.inner.max_tokens)

    @property
    def call_tokens(self) -> int:
        return int(self.inner.call_tokens)

    @property
    def runs(self) -> int:
        return int(self.inner.runs)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return list(self.inner.count_tokens(texts))

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return list(self.inner.token_offsets(text))

    def count_spans(self, text: str, spans: Sequence[tuple[int, int]]) -> list[int]:
        return list(self.inner.count_spans(text, spans))

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        with self._call(texts):
            out = self.inner.embed_documents(texts)
        return list(out)

    def embed_query(self, text: str) -> list[float]:
        return list(self.inner.embed_query(text))

    def span_tokens(self, text: str, spans: Sequence[tuple[int, int]], prefix: str) -> list[Any]:
        if not isinstance(self.inner, TokenReuse):  # (torch): every chunk is tokenized by its model
            return [None] * len(spans)
        return list(self.inner.span_tokens(text, spans, prefix))

    def embed_tokens_with_units(
        self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]], tokens: Sequence[Any]
    ) -> tuple[list[list[float]], list[Any]]:
        if not isinstance(self.inner, TokenReuse):
            return self.embed_with_units(texts, spans)
        with self._call(texts):
            vectors, pooled = self.inner.embed_tokens_with_units(texts, spans, tokens)
        return list(vectors), list(pooled)

    def embed_with_units(
        self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]
    ) -> tuple[list[list[float]], list[Any]]:
        with self._call(texts):
            vectors, pooled = self.inner.embed_with_units(texts, spans)
        return list(vectors), list(pooled)


@dataclass
class Store:
    container: Any
    recorder: Recorder
    data_dir: Path
    _tmp: Any = field(default=None, repr=False)
    # The same model run one call at a time on every core, as its own `encode` runs: the ingest section's
    # raw encode. The recorder's own when its calls are that already (`runs` 1).
    plain: Any = None

    def close(self, *, keep_files: bool = False) -> None:
        self.container.close()
        if self._tmp is not None and not keep_files:
            self._tmp.cleanup()

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def open_store(
    backend: str = "torch", *, index_backend: str = "edge", data_dir: Path | None = None, **settings: Any
) -> Store:
    """A fresh production container on a temporary data dir, its ingest embedder recorded."""
    from app.container import build_container, build_embedder, build_query_embedder
    from app.settings import Settings
    from stores.onnx_embedding import EmbeddingBackend

    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="eventrag-bench-")
        data_dir = Path(tmp.name)
    s = Settings(
        data_dir=data_dir,
        embedding_backend=backend,
        index_backend=index_backend,
        worker={"mass_delete_share": 1.0},  # the default claim size, as users run it
        **settings,
    )
    chosen = EmbeddingBackend(backend)
    recorder = Recorder(build_embedder(s, chosen))
    container = build_container(s, embedder=recorder, query_embedder=build_query_embedder(s, chosen))
    plain = recorder.inner if recorder.runs == 1 else build_embedder(s.model_copy(update={"embedding_runs": 1}), chosen)
    return Store(container, recorder, data_dir, tmp, plain)


def send(store: Store, docs: Sequence[Doc], version: int, *, edit: set[str] | None = None) -> float:
    """Record and queue one event per document as the receiver does; returns the seconds it took."""
    from ingest.receiver import record_and_enqueue
    from stores.events import EventType, FileEvent

    c = store.container
    t0 = time.perf_counter()
    stamp = datetime.now(UTC)
    for d in docs:
        text = text_of(d, edit)
        event = FileEvent(
            event_id=f"bench-{d.doc_id}-v{version}",
            workspace="bench",
            type=EventType.UPDATED if version > 1 else EventType.CREATED,
            file_id=d.doc_id,
            path=f"{d.doc_id}.md",
            timestamp=stamp,
            version=version,
            content_type="text/markdown",
            content=text,
        )
        record_and_enqueue(event, state=c.state, queue=c.queue)
    return time.perf_counter() - t0


def drain(store: Store) -> float:
    loop = store.container.loop
    assert loop is not None
    t0 = time.perf_counter()
    loop.drain()  # as `eventrag serve` runs it: pipelined
    return time.perf_counter() - t0


@contextmanager
def timer() -> Iterator[list[float]]:
    box: list[float] = []
    t0 = time.perf_counter()
    yield box
    box.append(time.perf_counter() - t0)
