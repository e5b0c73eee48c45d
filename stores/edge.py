"""The Qdrant Edge adapter of `VectorIndex`: Qdrant's own Rust engine inside the process, one shard on disk.

`qdrant-edge-py` is beta and its API moves between releases, so it is pinned in pyproject.toml and used
only here: nothing else imports `qdrant_edge`. The shard holds the same named vectors and payload as the
qdrant-client collection (`stores.points`): a dense "dense" vector (cosine) and a sparse "bm25" vector with
Qdrant's IDF modifier, with keyword indexes on the workspace (the tenant index) and the fields filters use.

- *Durability*: every `update` goes to the shard's write-ahead log before it returns, so a process killed
  mid-write reopens with every acknowledged write (the contract tests kill one).
- *One process per shard*: the shard locks its WAL; a second process (or a second open in this one) gets
  `StoreLockedError`, which the composition root turns into the message the CLI shows.
- *Which model filled it*: Edge shards have no collection metadata, so `eventrag-index.json` beside the
  shard's own files records the embedding model (with its backend) and the dimension.
- *Optimizing*: new points land in an appendable segment searched exactly (milliseconds at 50,000 chunks,
  docs/performance.md). `optimize()` builds HNSW and vacuums deletions, but it holds the GIL for its whole
  run (seconds to minutes), so it is never called on a write or a request: only by `eventrag optimize-index`
  and other offline callers (the bench).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from stores.errors import EmbeddingModelMismatchError, StoreLockedError
from stores.points import (
    DENSE,
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    MIN_PREFETCH,
    RRF_K,
    SCHEMA_VERSION,
    SPARSE,
    Conditions,
    ScrolledReads,
    hit_of,
    model_mismatch_message,
    payload_of,
    point_id,
)
from stores.ports import Hit, IndexPoint, SearchFilter, SearchMode

META_FILE = "eventrag-index.json"
_UPSERT_BATCH = 512


class _EdgeConditions(Conditions):
    def match(self, key: str, value: Any) -> qe.FieldCondition:
        return qe.FieldCondition(key=key, match=qe.MatchValue(value))

    def match_any(self, key: str, values: Sequence[Any]) -> qe.FieldCondition:
        return qe.FieldCondition(key=key, match=qe.MatchAny(list(values)))

    def range(self, key: str, *, gte: float | None = None, lte: float | None = None) -> qe.FieldCondition:
        return qe.FieldCondition(key=key, range=qe.RangeFloat(gte=gte, lte=lte))

    def all(self, must: Sequence[Any], must_not: Sequence[Any] | None = None) -> qe.Filter:
        return qe.Filter(must=list(must), must_not=list(must_not) if must_not else None)

    def any(self, should: Sequence[Any]) -> qe.Filter:
        return qe.Filter(should=list(should))

    def equals(self, key: str, value: Any) -> Any:
        if isinstance(value, bool):
            # qdrant-edge-py 0.9 reads a Python bool as the integer it subclasses (`MatchValue(True)` matches 1,
            # never true); numpy's bool is no int, so it arrives as a boolean.
            return qe.FieldCondition(key=key, match=qe.MatchValue(np.bool_(value)))  # type: ignore[arg-type]
        return super().equals(key, value)


_WHERE = _EdgeConditions()


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc)
    return "WouldBlock" in text or "Resource temporarily unavailable" in text or "lock" in text.lower()


class EdgeIndex(ScrolledReads):
    """One Edge shard in `path` (a directory; created on `ensure_ready`)."""

    conditions = _WHERE

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._shard: qe.EdgeShard | None = None
        self._open_lock = threading.Lock()
        if (self.path / "edge_config.json").exists():
            self._shard = self._load()

    # lifecycle ----------------------------------------------------------------------------------------
    def _load(self) -> qe.EdgeShard:
        try:
            return qe.EdgeShard.load(str(self.path))
        except Exception as exc:
            if _is_lock_error(exc):
                raise StoreLockedError(f"the local index at {self.path} is open in another process") from exc
            raise

    @property
    def shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise RuntimeError(f"the index at {self.path} does not exist yet: call ensure_ready first")
        return self._shard

    @property
    def meta_path(self) -> Path:
        return self.path / META_FILE

    def ensure_ready(self, model_id: str, dimension: int) -> None:
        with self._open_lock:
            if self._shard is None:
                self._create(model_id, dimension)
                return
        meta = json.loads(self.meta_path.read_text()) if self.meta_path.exists() else {}
        recorded = meta.get("embedding_model")
        if recorded is not None and recorded != model_id:
            raise EmbeddingModelMismatchError(model_mismatch_message(f"the index at {self.path}", recorded, model_id))
        size = meta.get("dimension")
        if size is not None and size != dimension:
            raise EmbeddingModelMismatchError(
                f"the index at {self.path} holds {size}-dimensional vectors; the model gives {dimension}"
            )

    def recorded_model(self) -> str | None:
        if self._shard is None or not self.meta_path.exists():
            return None
        recorded = json.loads(self.meta_path.read_text()).get("embedding_model")
        return str(recorded) if recorded is not None else None

    def _create(self, model_id: str, dimension: int) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        config = qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        )
        try:
            shard = qe.EdgeShard.create(str(self.path), config)
        except Exception as exc:
            if _is_lock_error(exc):
                raise StoreLockedError(f"the local index at {self.path} is open in another process") from exc
            raise
        shard.update(qe.UpdateOperation.create_field_index("workspace", qe.KeywordIndexParams(is_tenant=True)))
        for name in KEYWORD_FIELDS:
            shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
        for name in INTEGER_FIELDS:
            shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Integer))
        meta = {"embedding_model": model_id, "dimension": dimension, "schema": SCHEMA_VERSION, "engine": "edge"}
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, self.meta_path)
        self._shard = shard

    def close(self) -> None:
        with self._open_lock:
            if self._shard is not None:
                self._shard.close()
                self._shard = None

    def optimize(self) -> bool:
        """Build HNSW and vacuum deleted points. Blocks the whole process while it runs (see the module
        docstring): call it only where no request waits."""
        return bool(self.shard.optimize())

    def points_count(self) -> int:
        return int(self.shard.info().points_count) if self._shard is not None else 0

    # writes -------------------------------------------------------------------------------------------
    def upsert(self, points: Sequence[IndexPoint]) -> None:
        if not points:
            return
        structs = []
        for p in points:
            vector: dict[str, Any] = {DENSE: p.dense}
            if p.sparse is not None and p.sparse[0]:
                vector[SPARSE] = qe.SparseVector(list(p.sparse[0]), list(p.sparse[1]))
            pid = point_id(p.workspace, p.file_id, p.revision, p.chunk.index)
            structs.append(qe.Point(pid, vector, payload_of(p)))
        for i in range(0, len(structs), _UPSERT_BATCH):
            self.shard.update(qe.UpdateOperation.upsert_points(structs[i : i + _UPSERT_BATCH]))

    def delete_file(self, workspace: str, file_id: str, keep_revision: str | None = None) -> None:
        keep = [_WHERE.match("revision", keep_revision)] if keep_revision is not None else None
        flt = _WHERE.all(_WHERE.file(workspace, file_id), keep)
        self.shard.update(qe.UpdateOperation.delete_points_by_filter(flt))

    def delete_revisions(self, workspace: str, file_id: str, revisions: Sequence[str]) -> None:
        if not revisions:
            return
        flt = _WHERE.all([*_WHERE.file(workspace, file_id), _WHERE.match_any("revision", revisions)])
        self.shard.update(qe.UpdateOperation.delete_points_by_filter(flt))

    def set_version(self, workspace: str, file_id: str, revision: str, version: int | None) -> None:
        flt = _WHERE.all(_WHERE.file(workspace, file_id, revision))
        self.shard.update(qe.UpdateOperation.set_payload_by_filter(flt, {"version": version}))

    # reads --------------------------------------------------------------------------------------------
    def search(
        self,
        workspace: str,
        *,
        dense: list[float] | None,
        sparse: tuple[list[int], list[float]] | None,
        mode: SearchMode,
        limit: int,
        flt: SearchFilter | None = None,
    ) -> list[Hit]:
        if self._shard is None:
            return []
        qfilter = _WHERE.where(workspace, flt)
        sparse_vec = qe.SparseVector(list(sparse[0]), list(sparse[1])) if sparse and sparse[0] else None
        if mode is SearchMode.DENSE or (mode is SearchMode.HYBRID and sparse_vec is None):
            assert dense is not None
            mode = SearchMode.DENSE
            request = qe.QueryRequest(
                limit=limit, query=qe.Query.Nearest(dense, using=DENSE), filter=qfilter, with_payload=True
            )
        elif mode is SearchMode.SPARSE:
            if sparse_vec is None:
                return []
            request = qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(sparse_vec, using=SPARSE),
                filter=qfilter,
                with_payload=True,
                # The cosine of every hit (the relevance bar) is computed from its stored dense vector.
                with_vector=[DENSE] if dense is not None else False,
            )
        else:
            assert dense is not None and sparse_vec is not None
            depth = max(limit, MIN_PREFETCH)
            # The workspace filter sits inside every prefetch: fusion never sees another tenant's points.
            request = qe.QueryRequest(
                limit=limit,
                prefetches=[
                    qe.Prefetch(limit=depth, query=qe.Query.Nearest(dense, using=DENSE), filter=qfilter),
                    qe.Prefetch(limit=depth, query=qe.Query.Nearest(sparse_vec, using=SPARSE), filter=qfilter),
                ],
                query=qe.Fusion.Rrf(k=RRF_K),  # type: ignore[arg-type]  # the stub omits Fusion.Rrf
                filter=qfilter,
                with_payload=True,
                with_vector=[DENSE],
            )
        points = self.shard.query(request)
        query_vec = np.asarray(dense, dtype=np.float32) if dense is not None else None
        hits = []
        for p in points:
            hit = hit_of(str(p.id), p.score, p.payload or {})
            if mode is SearchMode.DENSE:
                hit.similarity = hit.score
            elif query_vec is not None and isinstance(p.vector, dict) and DENSE in p.vector:
                # Stored vectors are unit length (cosine), so the dot product is the cosine.
                hit.similarity = float(np.dot(np.asarray(p.vector[DENSE], dtype=np.float32), query_vec))
            if mode is SearchMode.SPARSE:
                hit.keyword_score = hit.score
            hits.append(hit)
        return hits

    def keyword_scores(
        self, workspace: str, sparse: tuple[list[int], list[float]], point_ids: Sequence[str]
    ) -> dict[str, float]:
        if not point_ids:
            return {}
        if self._shard is None or not sparse[0]:
            return dict.fromkeys(point_ids, 0.0)
        # The sparse query restricted to the points asked for: the score a sparse search gives each.
        qfilter = _WHERE.all([_WHERE.match("workspace", workspace), qe.HasIdCondition(set(point_ids))])
        request = qe.QueryRequest(
            limit=len(point_ids),
            query=qe.Query.Nearest(qe.SparseVector(list(sparse[0]), list(sparse[1])), using=SPARSE),
            filter=qfilter,
            with_payload=False,
        )
        found = {str(p.id): float(p.score) for p in self.shard.query(request)}
        # A point the sparse search does not return holds none of the query's terms.
        return {pid: found.get(pid, 0.0) for pid in point_ids}

    def _scroll(self, flt: qe.Filter, payload: bool | list[str]) -> Iterator[qe.Record]:
        if self._shard is None:
            return
        offset: Any = None
        while True:
            records, offset = self.shard.scroll(
                qe.ScrollRequest(offset=offset, limit=512, filter=flt, with_payload=payload, with_vector=False)
            )
            yield from records
            if offset is None:
                return
