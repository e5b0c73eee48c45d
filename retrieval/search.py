"""Search: the passages of a workspace that best match a question, from the active revision of each file only.

The index holds, for a moment, more than one revision of a file being replaced (the new one is written before
the switch, the old one deleted after). The state store says which revision is active; a hit from any
other revision is dropped, and if a file's active revision was missed because the switch happened while the
index was being read, that file is read again at its active revision. So a query sees the whole old version
or the whole new one: never a mix, never nothing.

A ranking reads only the file and revision of each point (`VectorIndex.rank`); the passages are read for the
hits kept (`VectorIndex.hits`). A point deleted between the two (its file switched, and the old revision was
removed) is missing from the read, and the ranking runs again: it finds the revision that replaced it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from stores.embedding import Embedder
from stores.points import rank_order
from stores.ports import ActiveRevision, Hit, Ranked, SearchFilter, SearchMode, StateStore, VectorIndex
from stores.sparse import Bm25Encoder
from stores.telemetry import SEARCH_SECONDS

# Rankings tried when a ranked point is gone before its passage is read (its file switched revisions).
_READS = 3
# How many chunks per document a grouped search first reads (its read grows when that finds too few).
_CHUNKS_PER_DOCUMENT = 2


@dataclass(slots=True, frozen=True)
class SearchRequest:
    workspace: str
    query: str
    top_k: int = 5
    mode: SearchMode = SearchMode.HYBRID
    flt: SearchFilter | None = None
    score_threshold: float | None = None
    group_by_document: bool = False


@dataclass(slots=True)
class SearchResults:
    """The hits of a search and the query's dense vector they were ranked with: reused by whatever else
    compares the same text to passages (the extractor), so a question is embedded once."""

    hits: list[Hit]
    query_vector: list[float] | None  # None: no dense search ran (a sparse query without indexable terms)


class Searcher:
    def __init__(
        self,
        *,
        index: VectorIndex,
        state: StateStore,
        embedder: Embedder,
        sparse: Bm25Encoder | None,
        overfetch: int = 3,
    ) -> None:
        self.index = index
        self.state = state
        self.embedder = embedder
        self.sparse = sparse
        self.overfetch = overfetch

    def search(self, req: SearchRequest) -> list[Hit]:
        """The best `top_k` passages, ranked by `req.mode`. Each carries both relevance signals whatever the
        mode: `similarity` (cosine to the question) and `keyword_score` (BM25; None when the question has
        no indexable term or there is no sparse index)."""
        return self.search_results(req).hits

    def search_results(self, req: SearchRequest) -> SearchResults:
        """`search`, with the embedding of `req.query` the search made (`self.embedder.embed_query`)."""
        started = time.perf_counter()
        try:
            return self._search(req)
        finally:
            SEARCH_SECONDS.labels(req.mode.value).observe(time.perf_counter() - started)

    def _search(self, req: SearchRequest) -> SearchResults:
        mode = req.mode if self.sparse is not None else SearchMode.DENSE
        sparse = self.sparse.encode_query(req.query) if self.sparse is not None else None
        if mode is SearchMode.SPARSE and not (sparse and sparse[0]):
            return SearchResults([], None)
        dense = self.embedder.embed_query(req.query)
        for _ in range(_READS):
            ranked, active, settled = self._rank(req, dense, sparse, mode)
            hits = self.index.hits(req.workspace, ranked, dense)
            if len(hits) == len(ranked) and settled:
                break
            # A point ranked, then deleted before its passage was read: its file switched revisions in
            # between. Or a file re-read at its active revision had none left: it switched again during
            # the re-read. Ranking again finds the revision that replaced it.
        for h in hits:  # the registry's version: a kept revision's points hold the one they were written at
            h.version = active[h.file_id].version
        self._add_keyword_scores(req.workspace, sparse, hits)
        return SearchResults(hits, dense)

    def _rank(
        self,
        req: SearchRequest,
        dense: list[float],
        sparse: tuple[list[int], list[float]] | None,
        mode: SearchMode,
    ) -> tuple[list[Ranked], dict[str, ActiveRevision], bool]:
        """The best `top_k` points of active revisions (one per file when grouping), the registry's record
        of their files, and whether every file the ranking saw was found at its active revision (see
        `_active_only`)."""

        def run(limit: int, flt: SearchFilter | None) -> list[Ranked]:
            return self.index.rank(req.workspace, dense=dense, sparse=sparse, mode=mode, limit=limit, flt=flt)

        # Grouped, a document's best chunk is wanted: a first read of two chunks per document wanted is
        # enough when the best chunks are spread over many documents, and the read grows when it is not.
        want = req.top_k * (_CHUNKS_PER_DOCUMENT if req.group_by_document else 1)
        limit = want * self.overfetch + 10
        for _ in range(4):
            raw = run(limit, req.flt)
            kept, active, settled = self._active_only(req, raw, run, want)
            found = len({r.file_id for r in kept}) if req.group_by_document else len(kept)
            if found >= req.top_k or len(raw) < limit:
                break
            limit *= 4  # many hits were from inactive revisions (or few documents): look further down the list
        if req.score_threshold is not None:
            kept = [r for r in kept if r.score >= req.score_threshold]
        if req.group_by_document:
            kept = _best_per_document(kept)
        return kept[: req.top_k], active, settled

    def _add_keyword_scores(
        self, workspace: str, sparse: tuple[list[int], list[float]] | None, hits: list[Hit]
    ) -> None:
        """BM25 scores for the hits a dense or fused ranking kept (asked for those only: it is one query)."""
        if sparse is None or not sparse[0]:
            return
        missing = [h.point_id for h in hits if h.keyword_score is None]
        if missing:
            scores = self.index.keyword_scores(workspace, sparse, missing)
            for h in hits:
                if h.keyword_score is None:
                    h.keyword_score = scores.get(h.point_id, 0.0)

    def _active_only(
        self, req: SearchRequest, raw: list[Ranked], run: Callable[[int, SearchFilter | None], list[Ranked]], want: int
    ) -> tuple[list[Ranked], dict[str, ActiveRevision], bool]:
        """The points of `raw` at their file's active revision, files seen only at another one re-read at
        theirs; and False when such a re-read found none of a file (it switched again meanwhile, and its
        revision read is already gone: ranking again finds the newer one)."""
        active = self.state.active_revisions(req.workspace, [r.file_id for r in raw])
        revision = {f: a.revision for f, a in active.items()}
        kept = [r for r in raw if revision.get(r.file_id) == r.revision]
        kept_files = {r.file_id for r in kept}
        # Files seen only at a revision that is no longer active: switched while we were reading.
        missed = sorted(
            {(r.file_id, revision[r.file_id]) for r in raw if r.file_id in revision and r.file_id not in kept_files}
        )
        if missed:
            base = req.flt or SearchFilter()
            reread = replace(base, revisions=tuple(missed))
            read = run(want, reread)
            found = [r for r in read if revision.get(r.file_id) == r.revision]
            kept.extend(found)
            kept.sort(key=rank_order)
            # (A full read may leave out a file only because others rank above it.)
            return kept, active, len(read) >= want or {r.file_id for r in found} >= {f for f, _ in missed}
        return kept, active, True


def _best_per_document(ranked: Sequence[Ranked]) -> list[Ranked]:
    seen: set[str] = set()
    out = []
    for r in ranked:
        if r.file_id not in seen:
            seen.add(r.file_id)
            out.append(r)
    return out
