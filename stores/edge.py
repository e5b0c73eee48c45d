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
  run (seconds to minutes), so only offline callers run it in place (`eventrag optimize-index`, the bench).
  A serving process optimizes online instead (`stores.edge_rebuild`): a child process builds an optimized
  copy, which replaces the live shard as its next *generation* (`stores.edge_shard` has the layout). For
  that, writes go through `apply` (one order, journaled while a copy is built) and reads hold the shard
  they use (`reading`), so a replaced one closes only once its last read ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from stores.edge_shard import (
    GENERATIONS,
    META_FILE,
    SHARD_CONFIG,
    Generation,
    Journal,
    active_dir,
    create_payload_indexes,
    index_exists,
    is_lock_error,
    load_shard,
    read_meta,
    remove_leftovers,
    shard_config,
    write_meta,
)
from stores.errors import EmbeddingModelMismatchError, StoreLockedError
from stores.points import (
    DENSE,
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

__all__ = ["GENERATIONS", "META_FILE", "SHARD_CONFIG", "EdgeIndex", "Journal", "index_exists", "load_shard"]

_UPSERT_BATCH = 512
FLUSH_POINTS = 2_000  # the live shard is flushed after this many points (or operations) written (`apply`)
log = logging.getLogger(__name__)


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

    def has_id(self, point_ids: Sequence[Any]) -> qe.HasIdCondition:
        return qe.HasIdCondition(set(point_ids))

    def equals(self, key: str, value: Any) -> Any:
        if isinstance(value, bool):
            # qdrant-edge-py 0.9 reads a Python bool as the integer it subclasses (`MatchValue(True)` matches 1,
            # never true); numpy's bool is no int, so it arrives as a boolean.
            return qe.FieldCondition(key=key, match=qe.MatchValue(np.bool_(value)))  # type: ignore[arg-type]
        return super().equals(key, value)


_WHERE = _EdgeConditions()


class EdgeIndex(ScrolledReads):
    """One Edge index in `path` (a directory; created on `ensure_ready`).

    The shard is the directory itself until the first online optimize; each optimize then builds the
    next generation under `shards/` and the metadata file names the live one (`stores.edge_rebuild`).
    `fault` is the crash tests' hook, called with the name of each step of an online optimize;
    `flush_points`, how many points written between two flushes of the live shard (`apply`)."""

    conditions = _WHERE

    def __init__(
        self, path: Path | str, *, fault: Callable[[str], None] | None = None, flush_points: int = FLUSH_POINTS
    ) -> None:
        self.path = Path(path)
        self.fault = fault
        self.flush_points = flush_points
        self._gen: Generation | None = None
        self._open_lock = threading.Lock()
        # Guards which generation is live and the count of reads on each.
        self._state = threading.Condition()
        # Writes are applied and journaled in one order (a replay must see them in the order the shard did).
        self._write_lock = threading.Lock()
        self._journal: Journal | None = None
        self.optimizing = threading.Lock()  # one optimize at a time (`stores.edge_rebuild`)
        self.closing = threading.Event()
        self._written = 0  # points written by this process since the last optimize
        self._unflushed = 0  # points (or operations) written to the live shard since its last flush
        self._open_existing()

    # lifecycle ----------------------------------------------------------------------------------------
    def _open_existing(self) -> None:
        for _ in range(3):
            meta = read_meta(self.path)
            directory = active_dir(self.path, meta)
            if not (directory / SHARD_CONFIG).exists():
                return
            shard = load_shard(directory)
            # Another process may have swapped in a new generation between our read of the metadata and
            # the load (it closes the old shard only after naming the new one): read it again.
            if read_meta(self.path).get("shard", ".") == meta.get("shard", "."):
                self._gen = Generation(shard, directory)
                self.sweep()
                return
            shard.close()
        raise StoreLockedError(f"the local index at {self.path} is being rewritten by another process")

    def sweep(self) -> None:
        """Remove what an interrupted or finished optimize left (`edge_shard.remove_leftovers`)."""
        remove_leftovers(self.path, self._gen.directory if self._gen is not None else None)

    @property
    def shard(self) -> qe.EdgeShard:
        gen = self._gen
        if gen is None:
            raise RuntimeError(f"the index at {self.path} does not exist yet: call ensure_ready first")
        return gen.shard

    @property
    def shard_dir(self) -> Path:
        """The directory of the live shard."""
        gen = self._gen
        return gen.directory if gen is not None else self.path

    @property
    def meta_path(self) -> Path:
        return self.path / META_FILE

    def read_meta(self) -> dict[str, Any]:
        return read_meta(self.path)

    def write_meta(self, **changes: Any) -> None:
        write_meta(self.path, **changes)

    def ensure_ready(self, model_id: str, dimension: int) -> None:
        with self._open_lock:
            if self._gen is None:
                self._create(model_id, dimension)
                return
        meta = self.read_meta()
        recorded = meta.get("embedding_model")
        if recorded is not None and recorded != model_id:
            raise EmbeddingModelMismatchError(model_mismatch_message(f"the index at {self.path}", recorded, model_id))
        size = meta.get("dimension")
        if size is not None and size != dimension:
            raise EmbeddingModelMismatchError(
                f"the index at {self.path} holds {size}-dimensional vectors; the model gives {dimension}"
            )

    def recorded_model(self) -> str | None:
        if self._gen is None or not self.meta_path.exists():
            return None
        recorded = self.read_meta().get("embedding_model")
        return str(recorded) if recorded is not None else None

    def _create(self, model_id: str, dimension: int) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            shard = qe.EdgeShard.create(str(self.path), shard_config(dimension))
        except Exception as exc:
            if is_lock_error(exc):
                raise StoreLockedError(f"the local index at {self.path} is open in another process") from exc
            raise
        create_payload_indexes(shard)
        self.write_meta(
            embedding_model=model_id, dimension=dimension, schema=SCHEMA_VERSION, engine="edge", optimized_points=0
        )
        self._gen = Generation(shard, self.path)

    def close(self) -> None:
        self.closing.set()  # an online optimize in progress gives up (and removes its copy)
        with self.optimizing, self._open_lock, self._write_lock:
            gen, self._gen = self._gen, None
            if gen is not None:
                self._retire(gen)
        self.closing.clear()

    def _retire(self, gen: Generation) -> None:
        with self._state:
            while gen.readers:
                self._state.wait(1.0)
        gen.shard.close()

    def optimize(self) -> bool:
        """Build HNSW and vacuum deleted points in this process. Holds the GIL for its whole run (see the
        module docstring), so only offline callers use it (`eventrag optimize-index`); a serving process
        optimizes online (`stores.edge_rebuild.optimize_online`)."""
        with self.optimizing:
            changed = bool(self.shard.optimize())
            self.write_meta(optimized_points=self.points_count())
            self._written = 0
        return changed

    def points_count(self) -> int:
        gen = self._gen
        return int(gen.shard.info().points_count) if gen is not None else 0

    def unoptimized_points(self) -> int:
        """About how many points sit outside the optimized segments: the growth since the last optimize
        (kept in the metadata), or the points this process wrote since, if more (rewrites and deletions
        do not grow the count). Edge reports no exact figure (`ShardInfo.indexed_vectors_count` counts
        sparse vectors and deleted points)."""
        if self._gen is None:
            return 0
        optimized = int(self.read_meta().get("optimized_points", 0))
        return max(self.points_count() - optimized, self._written)

    # generations (stores.edge_rebuild) ----------------------------------------------------------------
    def start_journal(self) -> Journal:
        with self._write_lock:
            self._journal = Journal()
            return self._journal

    def stop_journal(self) -> None:
        with self._write_lock:
            self._journal = None

    @contextmanager
    def reading(self) -> Iterator[qe.EdgeShard | None]:
        """The live shard, kept open until the block ends (None before `ensure_ready`)."""
        with self._state:
            gen = self._gen
            if gen is not None:
                gen.readers += 1
        try:
            yield gen.shard if gen is not None else None
        finally:
            if gen is not None:
                with self._state:
                    gen.readers -= 1
                    if not gen.readers:
                        self._state.notify_all()

    def swap(
        self, shard: qe.EdgeShard, directory: Path, journal: Journal, replayed: int, optimized_points: int
    ) -> Generation | None:
        """Make `shard` (in `directory`, holding the journal's first `replayed` writes) the live one: the
        rest of the journal is applied under the write lock, then the metadata names the new generation
        (the commit: a crash before it reopens the old shard, after it the new one) and reads move to it.
        Returns the old generation, for `retire`."""
        with self._write_lock:
            for op in journal.ops[replayed:]:
                shard.update(op)
            self._journal = None
            self.write_meta(shard=str(directory.relative_to(self.path)), optimized_points=optimized_points)
            with self._state:
                old, self._gen = self._gen, Generation(shard, directory)
            self._written = journal.points  # the journaled points sit in the copy's appendable segment
            self._unflushed = journal.points
        if self.fault is not None:
            self.fault("committed")
        return old

    def retire(self, old: Generation | None) -> None:
        """Close a replaced generation once its reads end, then remove its files. Closing holds the GIL;
        what it costs is the writes still unflushed (kept few by `apply`) and freeing the shard's memory.
        The files go after the close, in Python (the GIL released): removed before it, the close's flush
        failed on the missing directory (an error that captures a backtrace) and evicting their pages
        from the cache fell inside the close (docs/performance.md: 160-345 ms against 500-700 ms for
        50,000 points)."""
        if old is not None:
            with self._state:
                while old.readers:
                    self._state.wait(1.0)
            old.shard.close()
        self.sweep()

    # writes -------------------------------------------------------------------------------------------
    def apply(self, op: qe.UpdateOperation, points: int = 0) -> None:
        """Apply one update to the live shard (and to the journal of an optimize in progress)."""
        with self._write_lock:
            gen = self._gen
            if gen is None:
                raise RuntimeError(f"the index at {self.path} does not exist yet: call ensure_ready first")
            gen.shard.update(op)
            if self._journal is not None:
                self._journal.add(op, points)
            self._written += points
            self._unflushed += max(points, 1)
            # Not while an optimized copy is being built: the child's writing makes every fsync slow then
            # (flushes of 2,000 points took up to 450 ms against 40 to 120 ms without it).
            if self._unflushed >= self.flush_points and self._journal is None:
                self._flush(gen.shard)

    def _flush(self, shard: qe.EdgeShard) -> None:
        """Persist the shard's segments (the WAL already holds every write: this is not for durability).
        Edge defers part of each write's work to the next flush (or the close), so flushing every
        `flush_points` keeps each flush short instead of leaving it all to the close of a replaced
        generation, where every thread waits for it (a flush of 50,000 points: about 300 ms)."""
        try:
            shard.flush()
        except Exception as exc:  # the writes are in the WAL; the next flush tries again
            log.warning("flushing the local index at %s failed: %s", self.path, exc)
            return
        self._unflushed = 0

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
            batch = structs[i : i + _UPSERT_BATCH]
            self.apply(qe.UpdateOperation.upsert_points(batch), len(batch))

    def delete_file(self, workspace: str, file_id: str, keep_revision: str | None = None) -> None:
        keep = [_WHERE.match("revision", keep_revision)] if keep_revision is not None else None
        flt = _WHERE.all(_WHERE.file(workspace, file_id), keep)
        self.apply(qe.UpdateOperation.delete_points_by_filter(flt))

    def delete_revisions(self, workspace: str, file_id: str, revisions: Sequence[str]) -> None:
        if not revisions:
            return
        flt = _WHERE.all([*_WHERE.file(workspace, file_id), _WHERE.match_any("revision", revisions)])
        self.apply(qe.UpdateOperation.delete_points_by_filter(flt))

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
        if self._gen is None:
            return []
        qfilter = _WHERE.where(workspace, flt)
        sparse_vec = qe.SparseVector(list(sparse[0]), list(sparse[1])) if sparse and sparse[0] else None

        def nearest(reads: Sequence[Read]) -> list[list[Scored]]:
            # Ids and scores only: reading payloads was most of a read's cost (`fields` reads the kept ones).
            requests = [
                qe.QueryRequest(
                    limit=r.limit,
                    query=qe.Query.Nearest(r.vector, using=r.using),
                    filter=_WHERE.of_read(qfilter, r),
                    score_threshold=r.at_least,
                    with_payload=False,
                )
                for r in reads
            ]
            with self.reading() as shard:  # one read section: a swap between the two lists cannot part them
                lists = [shard.query(r) if shard is not None else [] for r in requests]
            return [[(p.id, p.score, None) for p in points] for points in lists]

        def fields(ids: Sequence[Any]) -> dict[Any, dict[str, Any]]:
            with self.reading() as shard:
                records = (
                    shard.retrieve(list(ids), with_payload=RANKING_FIELDS, with_vector=False)
                    if shard is not None
                    else []
                )
            return {r.id: r.payload or {} for r in records}

        return ranking(nearest, fields, mode, dense, sparse_vec, limit)

    def hits(self, workspace: str, ranked: Sequence[Ranked], dense: list[float] | None) -> list[Hit]:
        if not ranked or self._gen is None:
            return []
        ids: list[Any] = [r.point_id for r in ranked]
        vectors = [DENSE] if dense is not None and any(r.similarity is None for r in ranked) else False
        with self.reading() as shard:
            records = shard.retrieve(ids, with_payload=True, with_vector=vectors) if shard is not None else []
        return hits_from(workspace, ranked, records, dense)

    def keyword_scores(
        self, workspace: str, sparse: tuple[list[int], list[float]], point_ids: Sequence[str]
    ) -> dict[str, float]:
        if not point_ids:
            return {}
        if self._gen is None or not sparse[0]:
            return dict.fromkeys(point_ids, 0.0)
        # The sparse query restricted to the points asked for: the score a sparse search gives each.
        qfilter = _WHERE.all([_WHERE.match("workspace", workspace), _WHERE.has_id(point_ids)])
        request = qe.QueryRequest(
            limit=len(point_ids),
            query=qe.Query.Nearest(qe.SparseVector(list(sparse[0]), list(sparse[1])), using=SPARSE),
            filter=qfilter,
            with_payload=False,
        )
        with self.reading() as shard:
            found = {str(p.id): float(p.score) for p in (shard.query(request) if shard is not None else [])}
        # A point the sparse search does not return holds none of the query's terms.
        return {pid: found.get(pid, 0.0) for pid in point_ids}

    def _scroll(self, flt: qe.Filter, payload: bool | list[str]) -> Iterator[qe.Record]:
        with self.reading() as shard:
            if shard is None:
                return
            offset: Any = None
            while True:
                records, offset = shard.scroll(
                    qe.ScrollRequest(offset=offset, limit=512, filter=flt, with_payload=payload, with_vector=False)
                )
                yield from records
                if offset is None:
                    return
