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

DIM = 384
CHUNKS_PER_FILE = 5
VOCAB = 30_000


def _points(rng: np.random.Generator, start: int, n: int) -> list[IndexPoint]:
    dense = rng.standard_normal((n, DIM)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    out = []
    for k in range(n):
        i = start + k
        terms = sorted({int(t) for t in rng.zipf(1.3, 24) % VOCAB})
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
                sparse=(terms, [1.0] * len(terms)),
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


def measure(engine: str, size: int, queries: int, *, seed: int = 7, optimize: bool = False) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix=f"bench-{engine}-") as tmp:
        index = _open(engine, Path(tmp))
        index.ensure_ready("bench/synthetic", DIM)
        upsert_seconds = 0.0
        for start in range(0, size, 2000):
            batch = _points(rng, start, min(2000, size - start))
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
            q = rng.standard_normal(DIM).astype(np.float32)
            q /= np.linalg.norm(q)
            terms = sorted({int(t) for t in rng.zipf(1.3, 6) % VOCAB})
            t0 = time.perf_counter()
            hits = index.search(
                "bench", dense=q.tolist(), sparse=(terms, [1.0] * len(terms)), mode=SearchMode.HYBRID, limit=25
            )
            latencies.append(time.perf_counter() - t0)
            assert all(h.workspace == "bench" for h in hits)
            t0 = time.perf_counter()
            index.search("bench", dense=q.tolist(), sparse=None, mode=SearchMode.DENSE, limit=25)
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
        "queries": queries,
        "hybrid_p50_ms": round(median(latencies) * 1000, 2),
        "hybrid_p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "dense_p50_ms": round(median(dense_latencies) * 1000, 2),
        "upsert_points_per_s": round(size / upsert_seconds),
        "delete_file_p50_ms": round(median(deletes) * 1000, 2),
        "reopen_s": round(reopen, 2),
        "optimize_s": optimize_seconds,
    }
