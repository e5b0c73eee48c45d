"""What every `VectorIndex` adapter stores, independent of the engine: point ids, payloads, hits.

The Qdrant Edge adapter (`stores.edge`) and the qdrant-client adapter (`stores.qdrant`) write the same
payload for the same chunk and read it back the same way, so the contract tests hold for both and an index
moved between them (re-sent files) answers identically. Nothing here imports an engine.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

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
# How much deeper each re-read of a dense ranking past a tie goes (an HNSW read costs more the deeper it
# goes; ties there are copies of a passage, seldom many). A sparse read costs little more deep than shallow
# (its inverted index scores every point holding a term either way) and often ends in a long tie: it is
# read again once, down to the bound.
TIE_GROWTH = 4
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


# One read of a ranking: the engine's query vector, the vector's name, how many points, the least score the
# engine need return (None: any; a re-read past a tie needs only the points that can still tie), the only
# points it may return (None: any under the caller's filter), and whether points tied at the cut are all
# kept (a fusion's candidate list, where points of equal score share a rank) or cut by point id.
class Read(NamedTuple):
    vector: Any
    using: str
    limit: int
    at_least: float | None = None
    among: Sequence[Any] | None = None
    whole_ties: bool = False


# One point of a read, in the engine's order: (id, score, its `RANKING_FIELDS` or None). The id is the
# engine's own (a str, or the UUID Qdrant Edge returns: its text orders as the UUID does, so ties order alike;
# `ranking` makes text only of the ids it keeps). An engine reads the fields with the lists when a round trip
# costs more than they do (a Qdrant server); Qdrant Edge reads ids and scores only (reading payloads was
# most of a read's cost, and more so deep in a tie), and `ranking` reads the fields of the points it keeps.
Scored = tuple[Any, float, dict[str, Any] | None]


def ranking(
    engine: Callable[[Sequence[Read]], list[list[Scored]]],
    fields: Callable[[Sequence[Any]], dict[Any, dict[str, Any]]] | None,
    mode: SearchMode,
    dense: list[float] | None,
    sparse: Any | None,
    limit: int,
) -> list[Ranked]:
    """`VectorIndex.rank` from an engine's batched read, `engine(reads)`: for each read, the top points by
    that vector (`sparse` is the engine's sparse vector, None without terms), and `fields(ids)`, the
    `RANKING_FIELDS` of the points the engine read without them (a point no longer there is left out;
    None for an engine whose reads always carry them). The
    reads of one ranking go to the engine together (one round trip to a Qdrant server, one read section of
    an Edge shard). Each list is `settled`; hybrid is `fused` here rather than by the engine's RRF, which
    numbers tied points in an order of its own. Both lists are read under the caller's filter (the workspace
    is in it): fusion never sees another tenant's points."""
    if mode is SearchMode.SPARSE:
        if sparse is None:
            return []
        return _described(fields, [(*p, None, p[1]) for p in settled(engine, [Read(sparse, SPARSE, limit)])[0]])
    assert dense is not None
    if mode is SearchMode.DENSE or sparse is None:  # a hybrid query without sparse terms ranks by dense alone
        return _described(fields, [(*p, p[1], None) for p in settled(engine, [Read(dense, DENSE, limit)])[0]])
    depth = max(limit, MIN_PREFETCH)
    wanted = [Read(dense, DENSE, depth, whole_ties=True), Read(sparse, SPARSE, depth, whole_ties=True)]
    first = engine([read._replace(limit=depth + 1) for read in wanted])  # both lists in one read
    dense_list = settled(engine, wanted[:1], first[:1])[0]
    sparse_list = _shared_tie(engine, wanted[1], first[1], dense_list, limit)
    if sparse_list is None:
        sparse_list = settled(engine, wanted[1:], first[1:])[0]
    return _described(fields, fused([dense_list, sparse_list], limit))


def _shared_tie(
    engine: Callable[[Sequence[Read]], list[list[Scored]]],
    read: Read,
    points: list[Scored],
    dense_list: Sequence[Scored],
    limit: int,
) -> list[Scored] | None:
    """The sparse candidates of a hybrid ranking from its first read (`points`, one past its limit),
    without reading on through a tie at the cut when that cannot change the fused top `limit`; None when
    the list must be `settled`. A tie that starts at rank r >= `limit` gives each of its points
    1 / (RRF_K + r) < 1 / (RRF_K + limit - 1), the least that each of the dense list's first `limit` points
    scores, so a point of the tie outside the dense list never reaches the fused top `limit`. The points of
    the tie that matter are then those of the dense list, and one read restricted to them finds which of
    them tie. A sparse read often ends in a long tie (short queries, chunks of like length), which would
    otherwise be read to its end, up to `MAX_TIE_READ` points."""
    depth = read.limit
    got = sorted(points, key=_order)
    if len(got) <= depth or got[depth][1] < got[depth - 1][1]:
        return None  # no tie across the cut: nothing to read past it
    tie = got[depth][1]
    start = next(i for i, p in enumerate(got) if p[1] <= tie)
    if start < limit:
        return None
    seen = {p[0] for p in got}
    unseen = [p[0] for p in dense_list if p[0] not in seen]
    found = engine([read._replace(limit=len(unseen), among=unseen)])[0] if unseen else []
    tied = [p for p in got[start:] if p[1] >= tie] + [p for p in found if _same(p[1], tie)]
    return got[:start] + sorted(((pid, tie, pl) for pid, _, pl in tied), key=_order)


def _same(a: float, b: float) -> bool:
    """Equal scores, as two reads compute them (the order of a float32 sum may differ between them)."""
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b))


# A point of a ranking before its fields are read: (id, score, fields or None, cosine, BM25 score).
_Kept = tuple[Any, float, dict[str, Any] | None, float | None, float | None]


def _described(
    fields: Callable[[Sequence[Any]], dict[Any, dict[str, Any]]] | None, kept: Sequence[_Kept]
) -> list[Ranked]:
    missing = [p[0] for p in kept if p[2] is None]
    assert fields is not None or not missing, "the engine read points without their fields"
    found = fields(missing) if fields is not None and missing else {}
    out = []
    for pid, score, payload, similarity, keyword_score in kept:
        pl = payload if payload is not None else found.get(pid)
        if pl is not None:
            out.append(Ranked(str(pid), score, pl["file_id"], pl["revision"], similarity, keyword_score))
    return out


def settled(
    fetch: Callable[[Sequence[Read]], list[list[Scored]]],
    wanted: Sequence[Read],
    first: Sequence[list[Scored]] | None = None,
) -> list[list[Scored]]:
    """For each of `wanted`'s reads (limit = the points to keep), the best points of that ranking by score
    and then by point id, from `fetch`, which answers a batch of reads with each one's top points in the
    engine's order (`first`: what the caller read already, one point past each limit). Engines return
    points of equal score in an order of their own (Qdrant Edge's fusion changed it from one process to
    the next), so which of them make the cut, and in what order, would otherwise not depend on the index
    alone. Each ranking is read one point deeper than it keeps, and read again deeper (`TIE_GROWTH`; only
    the rankings that need it, batched again, and only down to just under the tied score) while the last
    point read ties with the last one kept, up to `MAX_TIE_READ` past it. A read with `whole_ties`
    keeps every point of that tie."""
    out: list[list[Scored]] = [[] for _ in wanted]
    reads = {i: read._replace(limit=read.limit + 1) for i, read in enumerate(wanted) if read.limit > 0}
    lists = [first[i] for i in reads] if first is not None else None
    while reads:
        pending = list(reads)
        if lists is None:
            lists = fetch([reads[i] for i in pending])
        for i, points in zip(pending, lists, strict=True):
            keep, n = wanted[i].limit, reads[i].limit
            got = sorted(points, key=_order)
            if len(got) < n or got[-1][1] < got[keep - 1][1] or n >= keep + MAX_TIE_READ:
                last = got[keep - 1][1] if len(got) >= keep else -math.inf
                out[i] = [p for p in got if p[1] >= last] if wanted[i].whole_ties else got[:keep]
                del reads[i]
            else:
                # An engine may keep or drop a point scoring exactly the threshold (qdrant-client's local
                # mode drops it), and scores are float32 in some engines: the threshold sits a little under.
                tie = got[keep - 1][1]
                at_least = tie - max(abs(tie), 1e-30) * 1e-5
                deeper = TIE_GROWTH * n if wanted[i].using == DENSE else keep + MAX_TIE_READ
                reads[i] = reads[i]._replace(limit=min(deeper, keep + MAX_TIE_READ), at_least=at_least)
        lists = None
    return out


def _order(p: Scored) -> tuple[float, Any]:
    return (-p[1], p[0])


def fused(rankings: Sequence[Sequence[Scored]], limit: int) -> list[_Kept]:
    """Reciprocal rank fusion of a dense and a sparse ranking (each in score order, then by point id), by
    Qdrant's formula: a point scores the sum, over the rankings that hold it, of 1 / (RRF_K + its rank),
    ranks counted from 0. Points of equal score in a ranking share its rank (the number of points scored
    above them): the engine's own fusion numbers tied points one after another in an order that follows
    insertion, or the process, so copies of one passage in two files would score apart, and which one came
    first would decide. A point carries the cosine of the dense ranking and the BM25 score of the sparse one
    when those hold it."""
    score: dict[str, float] = {}
    payload: dict[str, dict[str, Any] | None] = {}
    of_mode: tuple[dict[str, float], dict[str, float]] = ({}, {})
    for ranking, given in zip(rankings, of_mode, strict=True):
        rank, above = 0, math.inf
        for i, (pid, s, pl) in enumerate(ranking):
            if s < above:
                rank, above = i, s
            score[pid] = score.get(pid, 0.0) + 1.0 / (RRF_K + rank)
            given[pid] = s
            if payload.get(pid) is None:
                payload[pid] = pl
    best = sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [(pid, s, payload[pid], of_mode[0].get(pid), of_mode[1].get(pid)) for pid, s in best]


def rank_order(r: Ranked) -> tuple[float, str]:
    """Higher scores first, then point ids: the one order every ranking is given in."""
    return (-r.score, r.point_id)


def hits_from(workspace: str, ranked: Sequence[Ranked], records: Iterable[Any], dense: list[float] | None) -> list[Hit]:
    """The hits of `ranked`, in its order, from the engine's records of those points (each with `id`,
    `payload` and `vector`, as both engines' clients return them). A point no longer there, or of another
    workspace, is left out. The cosine a ranking did not give is the dot product of the stored dense vector
    with `dense` (stored vectors are unit length)."""
    # Each of a record's `payload` and `vector` is read once: Qdrant Edge's records build them anew on
    # every access (the whole payload, text and all).
    found = {str(r.id): (r.payload or {}, r.vector) for r in records}
    missing = [r.point_id for r in ranked if r.similarity is None and r.point_id in found]
    cosines: dict[str, float] = {}
    if dense is not None and missing:
        vectors = [found[pid][1] for pid in missing]
        kept = [(pid, v[DENSE]) for pid, v in zip(missing, vectors, strict=True) if isinstance(v, dict) and DENSE in v]
        if kept:
            matrix = np.asarray([v for _, v in kept], dtype=np.float32)
            products = matrix @ np.asarray(dense, dtype=np.float32)
            cosines = {pid: float(x) for (pid, _), x in zip(kept, products, strict=True)}
    hits = []
    for r in ranked:
        payload, _ = found.get(r.point_id, (None, None))
        if payload is None or payload.get("workspace") != workspace:
            continue
        hit = hit_of(r.point_id, r.score, payload)
        hit.similarity = r.similarity if r.similarity is not None else cosines.get(r.point_id)
        hit.keyword_score = r.keyword_score
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

    def has_id(self, point_ids: Sequence[Any]) -> Any:
        raise NotImplementedError

    def of_read(self, flt: Any, read: Read) -> Any:
        """The filter of one ranking read: the caller's, kept to `read.among` when the read names points."""
        return flt if read.among is None else self.all([flt, self.has_id(read.among)])

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
