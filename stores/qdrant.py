"""The Qdrant adapter of `VectorIndex`: one collection, every workspace a tenant inside it.

Local mode (`QdrantClient(path=...)`) and server mode (`QdrantClient(url=...)`) run the same code; only the
client differs. The collection has a *named* dense vector ("dense") and a named sparse vector ("bm25", with
Qdrant's IDF modifier), and records in its metadata which embedding model filled it.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient, models

from stores.errors import EmbeddingModelMismatchError, StoreLockedError
from stores.points import (
    DENSE,
    INTEGER_FIELDS,
    KEYWORD_FIELDS,
    RANKING_FIELDS,
    SCHEMA_VERSION,
    SPARSE,
    Conditions,
    Read,
    Scored,
    ScrolledReads,
    hits_from,
    model_mismatch_message,
    payload_of,
    point_id,
    ranking,
)
from stores.ports import Hit, IndexPoint, Ranked, SearchFilter, SearchMode


class _ClientConditions(Conditions):
    def match(self, key: str, value: Any) -> models.FieldCondition:
        return models.FieldCondition(key=key, match=models.MatchValue(value=value))

    def match_any(self, key: str, values: Sequence[Any]) -> models.FieldCondition:
        return models.FieldCondition(key=key, match=models.MatchAny(any=list(values)))

    def range(self, key: str, *, gte: float | None = None, lte: float | None = None) -> models.FieldCondition:
        return models.FieldCondition(key=key, range=models.Range(gte=gte, lte=lte))

    def all(self, must: Sequence[Any], must_not: Sequence[Any] | None = None) -> models.Filter:
        return models.Filter(must=list(must), must_not=list(must_not) if must_not else None)

    def any(self, should: Sequence[Any]) -> models.Filter:
        return models.Filter(should=list(should))

    def has_id(self, point_ids: Sequence[Any]) -> models.HasIdCondition:
        return models.HasIdCondition(has_id=list(point_ids))


_WHERE = _ClientConditions()


class QdrantIndex(ScrolledReads):
    conditions = _WHERE

    def __init__(self, client: QdrantClient, collection: str = "eventrag", *, local: bool | None = None) -> None:
        self.client = client
        self.collection = collection
        # qdrant-client's local mode is plain Python over numpy and is not safe for concurrent writers and
        # readers; a server is. Serialise calls only where needed.
        self._local = local if local is not None else client._client.__class__.__name__ == "QdrantLocal"
        self._lock = threading.RLock()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        if self._local:
            with self._lock:
                yield
        else:
            yield

    # lifecycle ----------------------------------------------------------------------------------------
    def recorded_model(self) -> str | None:
        with self._guard():
            if not self.client.collection_exists(self.collection):
                return None
            meta = self.client.get_collection(self.collection).config.metadata or {}
        recorded = meta.get("embedding_model")
        return str(recorded) if recorded is not None else None

    def ensure_ready(self, model_id: str, dimension: int) -> None:
        with self._guard():
            if not self.client.collection_exists(self.collection):
                self.client.create_collection(
                    self.collection,
                    vectors_config={DENSE: models.VectorParams(size=dimension, distance=models.Distance.COSINE)},
                    sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                    metadata={"embedding_model": model_id, "dimension": dimension, "schema": SCHEMA_VERSION},
                )
                if not self._local:
                    self._create_payload_indexes()
                return
            info = self.client.get_collection(self.collection)
            if not self._local:
                # A collection made by an older eventrag lacks the indexes of fields added since (pages, sheets):
                # filters on them would run unindexed, and a server in strict mode refuses them.
                self._create_payload_indexes(have=set(info.payload_schema or {}))
        meta = info.config.metadata or {}
        recorded = meta.get("embedding_model")
        if recorded is not None and recorded != model_id:
            raise EmbeddingModelMismatchError(
                model_mismatch_message(f"collection {self.collection!r}", recorded, model_id)
            )
        vectors = info.config.params.vectors
        size = vectors[DENSE].size if isinstance(vectors, dict) and DENSE in vectors else None
        if size is not None and size != dimension:
            raise EmbeddingModelMismatchError(
                f"collection {self.collection!r} holds {size}-dimensional vectors; the model gives {dimension}"
            )

    def _create_payload_indexes(self, have: Collection[str] = ()) -> None:
        """The payload indexes not in `have`. Only a server uses them (local mode ignores them and warns)."""
        wanted: dict[str, Any] = {
            "workspace": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
            **{field: models.PayloadSchemaType.KEYWORD for field in KEYWORD_FIELDS},
            **{field: models.PayloadSchemaType.INTEGER for field in INTEGER_FIELDS},
        }
        for field, schema in wanted.items():
            if field not in have:
                self.client.create_payload_index(self.collection, field, field_schema=schema)

    def close(self) -> None:
        self.client.close()

    # writes -------------------------------------------------------------------------------------------
    def upsert(self, points: Sequence[IndexPoint]) -> None:
        if not points:
            return
        structs = []
        for p in points:
            vector: dict[str, Any] = {DENSE: p.dense}
            if p.sparse is not None and p.sparse[0]:
                vector[SPARSE] = models.SparseVector(indices=p.sparse[0], values=p.sparse[1])
            structs.append(
                models.PointStruct(
                    id=point_id(p.workspace, p.file_id, p.revision, p.chunk.index),
                    vector=vector,
                    payload=payload_of(p),
                )
            )
        with self._guard():
            for i in range(0, len(structs), 256):
                self.client.upsert(self.collection, points=structs[i : i + 256], wait=True)

    def delete_file(self, workspace: str, file_id: str, keep_revision: str | None = None) -> None:
        keep = [_WHERE.match("revision", keep_revision)] if keep_revision is not None else None
        flt = _WHERE.all(_WHERE.file(workspace, file_id), keep)
        with self._guard():
            self.client.delete(self.collection, points_selector=models.FilterSelector(filter=flt), wait=True)

    def delete_revisions(self, workspace: str, file_id: str, revisions: Sequence[str]) -> None:
        if not revisions:
            return
        flt = _WHERE.all([*_WHERE.file(workspace, file_id), _WHERE.match_any("revision", revisions)])
        with self._guard():
            self.client.delete(self.collection, points_selector=models.FilterSelector(filter=flt), wait=True)

    # reads --------------------------------------------------------------------------------------------
    def rank(
        self,
        workspace: str,
        *,
        dense: list[float] | None,
        sparse: tuple[list[int], list[float]] | None,
        mode: SearchMode,
        limit: int,
        flt: SearchFilter | None = None,
    ) -> list[Ranked]:
        qfilter = _WHERE.where(workspace, flt)
        sparse_vec = models.SparseVector(indices=sparse[0], values=sparse[1]) if sparse and sparse[0] else None

        def nearest(reads: Sequence[Read]) -> list[list[Scored]]:
            # With the ranking fields: to a server, another round trip costs more than reading them here.
            requests = [
                models.QueryRequest(
                    query=r.vector,
                    using=r.using,
                    filter=_WHERE.of_read(qfilter, r),
                    limit=r.limit,
                    score_threshold=r.at_least,
                    with_payload=RANKING_FIELDS,
                )
                for r in reads
            ]
            with self._guard():  # one round trip for both lists of a hybrid query
                responses = self.client.query_batch_points(self.collection, requests=requests)
            return [[(str(p.id), p.score, p.payload or {}) for p in res.points] for res in responses]

        return ranking(nearest, None, mode, dense, sparse_vec, limit)  # every read carries the fields

    def hits(self, workspace: str, ranked: Sequence[Ranked], dense: list[float] | None) -> list[Hit]:
        if not ranked:
            return []
        vectors = dense is not None and any(r.similarity is None for r in ranked)
        with self._guard():
            records = self.client.retrieve(
                self.collection,
                ids=[r.point_id for r in ranked],
                with_payload=True,
                with_vectors=[DENSE] if vectors else False,
            )
        return hits_from(workspace, ranked, records, dense)

    def keyword_scores(
        self, workspace: str, sparse: tuple[list[int], list[float]], point_ids: Sequence[str]
    ) -> dict[str, float]:
        if not point_ids:
            return {}
        if not sparse[0]:
            return dict.fromkeys(point_ids, 0.0)
        qfilter = _WHERE.all([_WHERE.match("workspace", workspace), _WHERE.has_id(point_ids)])
        with self._guard():
            res = self.client.query_points(
                self.collection,
                query=models.SparseVector(indices=sparse[0], values=sparse[1]),
                using=SPARSE,
                query_filter=qfilter,
                limit=len(point_ids),
                with_payload=False,
            )
        found = {str(p.id): float(p.score) for p in res.points}
        # A point the sparse search does not return holds none of the query's terms.
        return {pid: found.get(pid, 0.0) for pid in point_ids}

    def _scroll(self, flt: models.Filter, payload: bool | list[str]) -> Iterator[models.Record]:
        offset: Any = None
        while True:
            with self._guard():
                records, offset = self.client.scroll(
                    self.collection,
                    scroll_filter=flt,
                    limit=512,
                    offset=offset,
                    with_payload=payload,
                    with_vectors=False,
                )
            yield from records
            if offset is None:
                return


def _held_by_another_process(path: str) -> bool:
    """Whether another process holds local mode's lock file (checked before opening: qdrant-client leaks
    the file handle of a lock it could not take, which surfaces later as a ResourceWarning)."""
    import portalocker

    lock = Path(path) / ".lock"
    if not lock.exists():
        return False
    with open(lock, "r+") as fh:
        try:
            portalocker.lock(fh, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException:
            return True
        portalocker.unlock(fh)
    return False


def open_qdrant(*, url: str | None, api_key: str | None, path: str | None) -> QdrantClient:
    """Server mode when a URL is given, else local mode on disk (the directory is locked to one process)."""
    if url:
        return QdrantClient(url=url, api_key=api_key, timeout=30)
    assert path is not None
    if _held_by_another_process(path):
        raise StoreLockedError(f"the local index at {path} is open in another process")
    try:
        return QdrantClient(path=path)
    except RuntimeError as exc:
        if "already accessed" in str(exc):  # taken between the check and the open
            raise StoreLockedError(f"the local index at {path} is open in another process") from exc
        raise
