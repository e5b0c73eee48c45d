"""The engines on synthetic vectors at scale: hybrid search p50/p99 under the workspace filter, upsert
points/s, delete by file, reopen; Qdrant Edge against qdrant-client's local mode, through the adapters."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import median, percentile
from stores.ports import Chunk, IndexPoint, SearchMode
from stores.sparse import Bm25Encoder, SparseVector

DIM = 384
CHUNKS_PER_FILE = 5
VOCAB = 30_000

# The synthetic sparse vectors (`--terms`), `text` by default: text-shaped, calibrated on SciFact's 5,183
# abstracts as `Bm25Encoder` turns them into vectors (docs/performance.md, "Engines at scale"). A chunk is
# 40 to 200 tokens drawn from a Zipf-Mandelbrot law over the vocabulary, p(rank r) ~ 1 / (r + ZIPF_SHIFT),
# each token repeating an earlier one of its chunk with probability REPEAT (words recur in a text), its
# values BM25's (`Bm25Encoder.document_vector`). A query is 5 to 13 distinct terms of the same law, weight
# 1.0 each, as `encode_query` gives. Measured on 4,000 such chunks against SciFact: 68 distinct terms a
# chunk (90 an abstract, 151 tokens long), the commonest term in 54% of them (49%), the 100th in 8% (13%),
# and a query's terms in 0.74 chunks each on average (0.71). `flat` is the earlier shape, kept to compare:
# 24 draws of Zipf(1.3), every value 1.0, queries of 6 draws. Its commonest terms are in nearly every
# chunk (a query's terms in 2.04 chunks each) and its equal values tie thousands of chunks on one score:
# the worst case of `stores.points.settled`'s tie reads, which real text rarely reaches (10 of 300
# SciFact claims tied at the cut).
TERM_SHAPES = ("text", "flat")
ZIPF_SHIFT = 10
REPEAT = 0.4
CHUNK_TOKENS = (40, 200)
QUERY_TERMS = (5, 13)


class Terms:
    """The sparse vectors of synthetic chunks and queries, of one of `TERM_SHAPES`."""

    def __init__(self, shape: str = "text") -> None:
        if shape not in TERM_SHAPES:
            raise ValueError(f"unknown term shape {shape!r}: choose from {', '.join(TERM_SHAPES)}")
        self.shape = shape
        weights = 1.0 / (np.arange(1, VOCAB + 1) + ZIPF_SHIFT)
        self._cdf = np.cumsum(weights / weights.sum())
        self._bm25 = Bm25Encoder()

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(self._cdf, rng.random(n)), VOCAB - 1)

    def documents(self, rng: np.random.Generator, n: int) -> list[SparseVector]:
        if self.shape == "flat":
            out = []
            for _ in range(n):
                terms = sorted({int(t) for t in rng.zipf(1.3, 24) % VOCAB})
                out.append((terms, [1.0] * len(terms)))
            return out
        lengths = rng.integers(CHUNK_TOKENS[0], CHUNK_TOKENS[1] + 1, n)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        total = int(ends[-1])
        tokens = self._draw(rng, total)
        # A repeated token copies one drawn earlier in its chunk; following the copies back (each points
        # to an earlier position, so halving the chain each pass ends) gives every position its word.
        position = np.arange(total) - np.repeat(starts, lengths)
        source = np.arange(total)
        repeats = (rng.random(total) < REPEAT) & (position > 0)
        back = (rng.random(total) * position).astype(np.int64)
        source[repeats] = (np.repeat(starts, lengths) + back)[repeats]
        while True:
            followed = source[source]
            if np.array_equal(followed, source):
                break
            source = followed
        tokens = tokens[source]
        out = []
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            words, counts = np.unique(tokens[a:b], return_counts=True)
            out.append(self._bm25.document_vector(dict(zip(words.tolist(), counts.tolist(), strict=True)), b - a))
        return out

    def query(self, rng: np.random.Generator) -> SparseVector:
        if self.shape == "flat":
            terms = sorted({int(t) for t in rng.zipf(1.3, 6) % VOCAB})
        else:
            wanted = int(rng.integers(QUERY_TERMS[0], QUERY_TERMS[1] + 1))
            terms = sorted(list(dict.fromkeys(self._draw(rng, 8 * wanted).tolist()))[:wanted])
        return terms, [1.0] * len(terms)


def query(rng: np.random.Generator, terms: Terms) -> tuple[list[float], SparseVector]:
    """A synthetic hybrid query: a random unit vector and `terms.query`."""
    q = rng.standard_normal(DIM).astype(np.float32)
    q /= np.linalg.norm(q)
    return q.tolist(), terms.query(rng)


def _points(rng: np.random.Generator, start: int, n: int, terms: Terms) -> list[IndexPoint]:
    dense = rng.standard_normal((n, DIM)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sparse = terms.documents(rng, n)
    out = []
    for k in range(n):
        i = start + k
        text = f"synthetic chunk {i}"
        out.append(
            IndexPoint(
                workspace="bench" if i % 10 else "other",  # a second tenant the filter must exclude
                file_id=f"f{i // CHUNKS_PER_FILE}",
                path=f"dir{i % 50}/f{i // CHUNKS_PER_FILE}.md",
                revision="r1",
                version=1,
                content_type="text/markdown",
                chunk=Chunk(index=i % CHUNKS_PER_FILE, text=text, start=0, end=len(text)),
                dense=dense[k].tolist(),
                sparse=sparse[k],
                metadata={"team": f"t{i % 7}"},
                title=f"F{i // CHUNKS_PER_FILE}",
            )
        )
    return out


def _open(engine: str, path: Path) -> Any:
    if engine == "edge":
        from stores.edge import EdgeIndex

        return EdgeIndex(path / "edge")
    from qdrant_client import QdrantClient

    from stores.qdrant import QdrantIndex

    return QdrantIndex(QdrantClient(path=str(path / "qdrant")), "bench")


def measure(
    engine: str, size: int, queries: int, *, seed: int = 7, optimize: bool = False, terms: str = "text"
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    shape = Terms(terms)
    with tempfile.TemporaryDirectory(prefix=f"bench-{engine}-") as tmp:
        index = _open(engine, Path(tmp))
        index.ensure_ready("bench/synthetic", DIM)
        upsert_seconds = 0.0
        for start in range(0, size, 2000):
            batch = _points(rng, start, min(2000, size - start), shape)
            t0 = time.perf_counter()
            index.upsert(batch)
            upsert_seconds += time.perf_counter() - t0
        optimize_seconds = None
        if optimize and engine == "edge":
            t0 = time.perf_counter()
            index.optimize()
            optimize_seconds = round(time.perf_counter() - t0, 1)
        latencies, dense_latencies = [], []
        for _ in range(queries):
            dense, sparse = query(rng, shape)
            t0 = time.perf_counter()
            hits = index.search("bench", dense=dense, sparse=sparse, mode=SearchMode.HYBRID, limit=25)
            latencies.append(time.perf_counter() - t0)
            assert all(h.workspace == "bench" for h in hits)
            t0 = time.perf_counter()
            index.search("bench", dense=dense, sparse=None, mode=SearchMode.DENSE, limit=25)
            dense_latencies.append(time.perf_counter() - t0)
        deletes = []
        for f in range(1, 41):
            t0 = time.perf_counter()
            index.delete_file("bench", f"f{f * (size // CHUNKS_PER_FILE // 41)}")
            deletes.append(time.perf_counter() - t0)
        index.close()
        t0 = time.perf_counter()
        again = _open(engine, Path(tmp))
        again.ensure_ready("bench/synthetic", DIM)
        again.search("bench", dense=[1.0] + [0.0] * (DIM - 1), sparse=None, mode=SearchMode.DENSE, limit=1)
        reopen = time.perf_counter() - t0
        again.close()
    return {
        "engine": engine + (" (optimized)" if optimize_seconds is not None else ""),
        "chunks": size,
        "terms": terms,
        "queries": queries,
        "hybrid_p50_ms": round(median(latencies) * 1000, 2),
        "hybrid_p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "dense_p50_ms": round(median(dense_latencies) * 1000, 2),
        "upsert_points_per_s": round(size / upsert_seconds),
        "delete_file_p50_ms": round(median(deletes) * 1000, 2),
        "reopen_s": round(reopen, 2),
        "optimize_s": optimize_seconds,
    }
