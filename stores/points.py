"""What every `VectorIndex` adapter stores, independent of the engine: point ids, payloads, hits.

The Qdrant Edge adapter (`stores.edge`) and the qdrant-client adapter (`stores.qdrant`) write the same
payload for the same chunk and read it back the same way, so the contract tests hold for both and an index
moved between them (re-sent files) answers identically. Nothing here imports an engine.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from stores.ports import Hit, IndexPoint, Ranked, SearchFilter, SearchMode

DENSE = "dense"
SPARSE = "bm25"
SCHEMA_VERSION = 1
# Qdrant's own RRF constant (the server's and qdrant-client's default): docs/retrieval.md measured it.
RRF_K = 2
# Every prefetch of a hybrid query reads at least this deep, so fusion has enough candidates.
MIN_PREFETCH = 50
FILES_PER_READ = 256  # files named in one filter of a batched read
# How far past `limit` a ranking reads to take in every point tied with the last one kept (`settled`).
MAX_TIE_READ = 1024
# What a ranking reads of each point (`VectorIndex.rank`): the rest of the payload is read for the hits kept.
RANKING_FIELDS = ["file_id", "revision"]
_POINT_NAMESPACE = uuid.UUID("6f1c7f53-3f43-4a8e-9a39-6f8d0a4b1e27")

# Payload fields with a keyword index (the workspace one is the tenant index) and the integer one.
KEYWORD_FIELDS = ("file_id", "revision", "path_dirs", "content_type", "path", "sheet")
INTEGER_FIELDS = ("version", "page_start", "page_end")


def point_id(workspace: str, file_id: str, revision: str, chunk_index: int) -> str:
    """Deterministic: re-running an event rewrites the same points instead of adding copies."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{workspace}\x1f{file_id}\x1f{revision}\x1f{chunk_index}"))


def path_dirs(path: str) -> list[str]:
    """Every folder prefix of a path ("a/b/c.md" -> ["a/", "a/b/"]): lets a keyword index answer prefixes."""
    parts = path.strip("/").split("/")[:-1]
    return ["/".join(parts[: i + 1]) + "/" for i in range(len(parts))]


def payload_of(p: IndexPoint) -> dict[str, Any]:
    return {
        "workspace": p.workspace,
        "file_id": p.file_id,
        "path": p.path,
        "path_dirs": path_dirs(p.path),
        "revision": p.revision,
        "version": p.version,
        "content_type": p.content_type,
        "chunk_index": p.chunk.index,
        "start": p.chunk.start,
        "end": p.chunk.end,
        "text": p.chunk.text,
        "heading": p.chunk.heading,
        "page_start": p.chunk.page_start,
        "page_end": p.chunk.page_end,
        "sheet": p.chunk.sheet,
        "title": p.title,
        "metadata": p.metadata,
        **({"units": p.units.to_payload()} if p.units is not None and p.units.spans else {}),
        **({"layout": p.layout.to_payload()} if p.layout is not None else {}),
    }


def hit_of(pid: str, score: float, pl: dict[str, Any]) -> Hit:
    return Hit(
        point_id=pid,
        score=float(score),
        workspace=pl["workspace"],
        file_id=pl["file_id"],
        path=pl["path"],
        revision=pl["revision"],
        version=pl.get("version"),
        chunk_index=int(pl["chunk_index"]),
        start=int(pl["start"]),
        end=int(pl["end"]),
        text=pl["text"],
        heading=pl.get("heading"),
        content_type=pl.get("content_type"),
        metadata=pl.get("metadata") or {},
        title=pl.get("title"),
        page_start=pl.get("page_start"),
        page_end=pl.get("page_end"),
        sheet=pl.get("sheet"),
        units=pl.get("units"),
        layout=pl.get("layout"),
    )


def ranked_of(points: Iterable[tuple[str, float, dict[str, Any]]], mode: SearchMode) -> list[Ranked]:
    """A ranking from an engine's (id, score, `RANKING_FIELDS` payload) triples, in `mode` (the mode that
    ran: a hybrid query without sparse terms ran dense)."""
    out = []
    for pid, score, pl in points:
        score = float(score)
        out.append(
            Ranked(
                pid,
                score,
                pl["file_id"],
                pl["revision"],
                similarity=score if mode is SearchMode.DENSE else None,
                keyword_score=score if mode is SearchMode.SPARSE else None,
            )
        )
    return out


# One read of a ranking: (the engine's query vector, the vector's name, the mode it ranks in, how many points).
Read = tuple[Any, str, SearchMode, int]


# What an engine gives for one read: its top points as (id, score, `RANKING_FIELDS` payload), in its order.
Triples = Iterable[tuple[str, float, dict[str, Any]]]


def ranking(
    engine: Callable[[Sequence[Read]], list[Triples]],
    mode: SearchMode,
    dense: list[float] | None,
    sparse: Any | None,
    limit: int,
) -> list[Ranked]:
    """`VectorIndex.rank` from an engine's batched read, `engine(reads)`: for each read, the top n points
    by that vector (`sparse` is the engine's sparse vector, None without terms). The
    reads of one ranking go to the engine together (one round trip to a Qdrant server, one read section of
    an Edge shard). Each list is `settled`; hybrid is `fused` here rather than by the engine's RRF, which
    numbers tied points in an order of its own. Both lists are read under the caller's filter (the workspace
    is in it): fusion never sees another tenant's points."""

    def nearest(reads: Sequence[Read]) -> list[list[Ranked]]:
        return [ranked_of(points, read[2]) for read, points in zip(reads, engine(reads), strict=True)]

    if mode is SearchMode.SPARSE:
        if sparse is None:
            return []
        return settled(nearest, [(sparse, SPARSE, mode, limit)])[0]
    assert dense is not None
    if mode is SearchMode.DENSE or sparse is None:  # a hybrid query without sparse terms ranks by dense alone
        return settled(nearest, [(dense, DENSE, SearchMode.DENSE, limit)])[0]
    depth = max(limit, MIN_PREFETCH)
    both = settled(nearest, [(dense, DENSE, SearchMode.DENSE, depth), (sparse, SPARSE, SearchMode.SPARSE, depth)])
    return fused(both, limit)


def settled(fetch: Callable[[Sequence[Read]], list[list[Ranked]]], wanted: Sequence[Read]) -> list[list[Ranked]]:
    """For each of `wanted`'s reads (n = the points to keep), the best n points of that ranking by score and
    then by point id, from `fetch`, which answers a batch of reads with each one's top points in the
    engine's order. Engines return points of equal score in an order of their own (Qdrant Edge's fusion
    changed it from one process to the next, and RRF scores tie often: each is a sum of 1/(k + rank)), so
    which of them make the cut, and in what order, would otherwise not depend on the index alone. Each
    ranking is read one point deeper than it keeps, and read again deeper (only the rankings that need it,
    batched again) while the last point read ties with the last one kept, up to `MAX_TIE_READ` past it."""
    out: list[list[Ranked]] = [[] for _ in wanted]
    depth = {i: read[3] + 1 for i, read in enumerate(wanted) if read[3] > 0}
    while depth:
        pending = list(depth)
        lists = fetch([(*wanted[i][:3], depth[i]) for i in pending])
        for i, points in zip(pending, lists, strict=True):
            keep, n = wanted[i][3], depth[i]
            got = sorted(points, key=rank_order)
            if len(got) < n or got[-1].score < got[keep - 1].score or n >= keep + MAX_TIE_READ:
                out[i] = got[:keep]
                del depth[i]
            else:
                depth[i] = min(2 * n, keep + MAX_TIE_READ)
    return out


def fused(rankings: Sequence[Sequence[Ranked]], limit: int) -> list[Ranked]:
    """Reciprocal rank fusion of `rankings` (each in `rank_order`), by Qdrant's formula: a point scores the
    sum, over the rankings that hold it, of 1 / (RRF_K + its rank), ranks counted from 0. Points of equal
    score in a ranking share its rank (the number of points scored above them): the engine's own fusion
    numbers tied points one after another in an order that follows insertion, or the process, so copies of
    one passage in two files would score apart, and which one came first would decide. A point carries the
    cosine of the dense ranking and the BM25 score of the sparse one when those hold it."""
    score: dict[str, float] = {}
    seen: dict[str, Ranked] = {}
    for ranking in rankings:
        rank, above = 0, math.inf
        for i, r in enumerate(ranking):
            if r.score < above:
                rank, above = i, r.score
            score[r.point_id] = score.get(r.point_id, 0.0) + 1.0 / (RRF_K + rank)
            first = seen.get(r.point_id)
            if first is None:
                seen[r.point_id] = r._replace(score=0.0)
            else:
                seen[r.point_id] = first._replace(
                    similarity=first.similarity if first.similarity is not None else r.similarity,
                    keyword_score=first.keyword_score if first.keyword_score is not None else r.keyword_score,
                )
    out = [seen[pid]._replace(score=s) for pid, s in score.items()]
    out.sort(key=rank_order)
    return out[:limit]


def rank_order(r: Ranked) -> tuple[float, str]:
    """Higher scores first, then point ids: the one order every ranking is given in."""
    return (-r.score, r.point_id)


def hits_from(workspace: str, ranked: Sequence[Ranked], records: Iterable[Any], dense: list[float] | None) -> list[Hit]:
    """The hits of `ranked`, in its order, from the engine's records of those points (each with `id`,
    `payload` and `vector`, as both engines' clients return them). A point no longer there, or of another
    workspace, is left out. The cosine a ranking did not give is the dot product of the stored dense vector
    with `dense` (stored vectors are unit length)."""
    found = {str(r.id): r for r in records}
    query = np.asarray(dense, dtype=np.float32) if dense is not None else None
    hits = []
    for r in ranked:
        record = found.get(r.point_id)
        if record is None or (record.payload or {}).get("workspace") != workspace:
            continue
        payload = record.payload
        vector = record.vector.get(DENSE) if isinstance(record.vector, dict) else None
        hit = hit_of(r.point_id, r.score, payload)
        hit.similarity, hit.keyword_score = r.similarity, r.keyword_score
        if hit.similarity is None and query is not None and vector is not None:
            hit.similarity = float(np.dot(np.asarray(vector, dtype=np.float32), query))
        hits.append(hit)
    return hits


def model_mismatch_message(where: str, recorded: str, model_id: str) -> str:
    return (
        f"{where} was filled by embedding model {recorded!r}, but this process uses {model_id!r}: vectors of "
        f"two models (or of two backends of one model, such as fp32 and int8) are not comparable. Set "
        f"EVENTRAG_EMBEDDING_MODEL / EVENTRAG_EMBEDDING_BACKEND back to what filled it, or use a new "
        f"EVENTRAG_QDRANT_COLLECTION (and re-send your files)."
    )


class Conditions:
    """How one engine's client spells a filter. The translation of a `SearchFilter` (`where`) and of the
    adapters' own reads is written once, here, against these few constructors; each adapter subclasses it
    with its library's classes."""

    def match(self, key: str, value: Any) -> Any:
        raise NotImplementedError

    def match_any(self, key: str, values: Sequence[Any]) -> Any:
        raise NotImplementedError

    def range(self, key: str, *, gte: float | None = None, lte: float | None = None) -> Any:
        raise NotImplementedError

    def all(self, must: Sequence[Any], must_not: Sequence[Any] | None = None) -> Any:
        raise NotImplementedError

    def any(self, should: Sequence[Any]) -> Any:
        raise NotImplementedError

    def equals(self, key: str, value: Any) -> Any:
        """Equality for any JSON scalar: keywords, integers and booleans match exactly; a float has no exact
        match in Qdrant, so it is the range [v, v] (which also matches an integer payload equal to it)."""
        if isinstance(value, float):
            return self.range(key, gte=value, lte=value)
        return self.match(key, value)

    def any_of(self, key: str, values: Sequence[Any]) -> Any:
        """Any of a list of scalars. `MatchAny` takes only all-string or all-integer lists, so the values are
        grouped by type (booleans apart: in Python `True` is also an integer) and the groups OR-ed."""
        strings = [v for v in values if isinstance(v, str)]
        integers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        others = [v for v in values if isinstance(v, bool | float)]
        should: list[Any] = []
        if strings:
            should.append(self.match_any(key, strings))
        if integers:
            should.append(self.match_any(key, integers))
        should.extend(self.equals(key, v) for v in dict.fromkeys(others))
        if len(should) == 1:
            return should[0]
        # An empty list matches nothing: a `should` with no conditions would match everything.
        return self.any(should) if should else self.all([self.match("file_id", "\x00none")])

    def file(self, workspace: str, file_id: str, revision: str | None = None) -> list[Any]:
        """The conditions of one file's points (of one revision)."""
        found = [self.match("workspace", workspace), self.match("file_id", file_id)]
        return found if revision is None else [*found, self.match("revision", revision)]

    def where(self, workspace: str, flt: SearchFilter | None) -> Any:
        """The workspace's points that pass `flt`: the tenant condition is always there."""
        must: list[Any] = [self.match("workspace", workspace)]
        if flt is not None:
            if flt.file_ids:
                must.append(self.match_any("file_id", list(flt.file_ids)))
            prefix = (flt.path_prefix or "").strip("/")
            if prefix:  # "" and "/" mean the whole workspace
                must.append(self.any([self.match("path_dirs", prefix + "/"), self.match("path", prefix)]))
            if flt.content_types:
                must.append(self.match_any("content_type", list(flt.content_types)))
            for key, value in flt.metadata_equals:
                must.append(self.equals(f"metadata.{key}", value))
            for key, values in flt.metadata_any:
                must.append(self.any_of(f"metadata.{key}", list(values)))
            # A passage on pages [page_start, page_end] touches [page_from, page_to] when it starts on or
            # before page_to and ends on or after page_from.
            if flt.page_to is not None:
                must.append(self.range("page_start", lte=flt.page_to))
            if flt.page_from is not None:
                must.append(self.range("page_end", gte=flt.page_from))
            if flt.sheets:
                must.append(self.match_any("sheet", list(flt.sheets)))
            if flt.revisions:
                must.append(self.revisions(flt.revisions))
        return self.all(must)

    def revisions(self, pairs: Sequence[tuple[str, str]]) -> Any:
        """The points of any of these (file id, revision) pairs (within a workspace condition beside it)."""
        return self.any([self.all([self.match("file_id", f), self.match("revision", r)]) for f, r in pairs])


class ScrolledReads:
    """The reads both adapters answer the same way: `search` from their `rank` and `hits`, the rest by
    scrolling the points of a filter (`_scroll`, per engine)."""

    conditions: Conditions

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
        raise NotImplementedError

    def hits(self, workspace: str, ranked: Sequence[Ranked], dense: list[float] | None) -> list[Hit]:
        raise NotImplementedError

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
        ranked = self.rank(workspace, dense=dense, sparse=sparse, mode=mode, limit=limit, flt=flt)
        return self.hits(workspace, ranked, dense)

    def _scroll(self, flt: Any, payload: bool | list[str]) -> Iterator[Any]:
        raise NotImplementedError

    def file_chunks(self, workspace: str, file_id: str, revision: str) -> list[Hit]:
        flt = self.conditions.all(self.conditions.file(workspace, file_id, revision))
        hits = [hit_of(str(r.id), 0.0, r.payload or {}) for r in self._scroll(flt, True)]
        return sorted(hits, key=lambda h: h.chunk_index)

    def file_revisions(self, workspace: str, file_id: str) -> dict[str, int]:
        return self.revisions_of(workspace, [file_id]).get(file_id, {})

    def revisions_of(self, workspace: str, file_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        c = self.conditions
        counts: dict[str, dict[str, int]] = {}
        ids = list(dict.fromkeys(file_ids))
        for i in range(0, len(ids), FILES_PER_READ):
            flt = c.all([c.match("workspace", workspace), c.match_any("file_id", ids[i : i + FILES_PER_READ])])
            for r in self._scroll(flt, ["file_id", "revision"]):
                pl = r.payload or {}
                per_file = counts.setdefault(pl["file_id"], {})
                per_file[pl["revision"]] = per_file.get(pl["revision"], 0) + 1
        return counts

    def revision_counts(self, workspace: str) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        flt = self.conditions.all([self.conditions.match("workspace", workspace)])
        for r in self._scroll(flt, ["file_id", "revision"]):
            pl = r.payload or {}
            key = (pl["file_id"], pl["revision"])
            counts[key] = counts.get(key, 0) + 1
        return counts
