"""The `VectorIndex` contract, one class run against every adapter: Qdrant Edge (the embedded default) and
qdrant-client (its local mode here; a Qdrant server runs the same adapter code over HTTP).

Vectors are small and hand-made so each test knows the right answer: the contract is about what the index
keeps, filters and fuses, not about the embedding model.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qdrant_client import QdrantClient

from app.container import build_index
from app.settings import IndexBackend, Settings
from stores.edge import EdgeIndex
from stores.errors import EmbeddingModelMismatchError, StoreLockedError
from stores.points import MIN_PREFETCH, RRF_K, point_id
from stores.ports import Chunk, IndexPoint, SearchFilter, SearchMode, VectorIndex
from stores.qdrant import QdrantIndex

ROOT = Path(__file__).resolve().parents[2]
DIM = 8
MODEL = "test/model"
ADAPTERS = ["edge", "qdrant-local"]


def open_index(kind: str, path: Path) -> VectorIndex:
    if kind == "edge":
        return EdgeIndex(path / "edge")
    return QdrantIndex(QdrantClient(path=str(path / "qdrant")), "eventrag")


@pytest.fixture(params=ADAPTERS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def index(kind: str, tmp_path: Path) -> Iterator[VectorIndex]:
    idx = open_index(kind, tmp_path)
    idx.ensure_ready(MODEL, DIM)
    yield idx
    idx.close()


def unit(*components: float) -> list[float]:
    v = list(components) + [0.0] * (DIM - len(components))
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def point(
    file_id: str,
    *,
    workspace: str = "acme",
    revision: str = "r1",
    index: int = 0,
    dense: list[float] | None = None,
    sparse: tuple[list[int], list[float]] | None = None,
    path: str | None = None,
    content_type: str = "text/markdown",
    metadata: dict[str, Any] | None = None,
    text: str | None = None,
) -> IndexPoint:
    body = text or f"{file_id} chunk {index} of {revision}"
    return IndexPoint(
        workspace=workspace,
        file_id=file_id,
        path=path or f"docs/{file_id}.md",
        revision=revision,
        version=1,
        content_type=content_type,
        chunk=Chunk(index=index, text=body, start=0, end=len(body), heading="H", token_count=5),
        dense=dense or unit(1.0),
        sparse=sparse,
        metadata=metadata or {},
        title=file_id.upper(),
    )


# Six files holding the same chunk (they tie in every mode), one that leads every mode, one far behind.
TIED_POINTS = [
    *(point(f"twin{n}", dense=unit(1.0, 0.5), sparse=([42, 7], [1.0, 1.0])) for n in range(6)),
    point("lead", dense=unit(1.0), sparse=([42], [3.0])),
    point("far", dense=unit(0.0, 0.0, 1.0), sparse=([42, 9], [0.2, 5.0])),
]


def p_id(p: IndexPoint) -> str:
    return point_id(p.workspace, p.file_id, p.revision, p.chunk.index)


def files(hits: list[Any]) -> list[str]:
    return [h.file_id for h in hits]


def dense_search(
    index: VectorIndex, query: list[float], flt: SearchFilter | None = None, ws: str = "acme"
) -> list[Any]:
    return index.search(ws, dense=query, sparse=None, mode=SearchMode.DENSE, limit=10, flt=flt)


class TestVectorIndexContract:
    def test_dense_search_ranks_by_cosine_and_reads_the_payload_back(self, index: VectorIndex) -> None:
        index.upsert(
            [
                point("near", dense=unit(1.0, 0.1), metadata={"team": "hr"}),
                point("far", dense=unit(0.0, 1.0)),
            ]
        )
        hits = dense_search(index, unit(1.0))
        assert files(hits) == ["near", "far"]
        top = hits[0]
        assert (top.path, top.revision, top.version, top.chunk_index) == ("docs/near.md", "r1", 1, 0)
        assert (top.heading, top.title, top.metadata, top.content_type) == (
            "H",
            "NEAR",
            {"team": "hr"},
            "text/markdown",
        )
        assert top.text == "near chunk 0 of r1" and (top.start, top.end) == (0, len(top.text))
        assert top.similarity == pytest.approx(top.score) and top.score == pytest.approx(unit(1.0, 0.1)[0], abs=1e-5)

    def test_no_search_mode_returns_another_workspaces_points(self, index: VectorIndex) -> None:
        shared = {"dense": unit(1.0), "sparse": ([7], [1.0])}
        index.upsert([point("mine", **shared), point("theirs", workspace="beta", **shared)])  # type: ignore[arg-type]
        for mode in SearchMode:
            hits = index.search("acme", dense=unit(1.0), sparse=([7], [1.0]), mode=mode, limit=10)
            assert files(hits) == ["mine"], mode
            assert {h.workspace for h in hits} == {"acme"}
        assert files(dense_search(index, unit(1.0), ws="nobody")) == []

    def test_rank_reads_only_file_and_revision_and_hits_reads_the_passages_kept(self, index: VectorIndex) -> None:
        index.upsert(
            [
                point("a", dense=unit(1.0, 0.1), sparse=([7], [2.0])),
                point("b", dense=unit(1.0, 0.5), sparse=([7], [1.0])),
                point("c", dense=unit(0.0, 1.0)),
                point("theirs", workspace="beta", dense=unit(1.0)),
            ]
        )
        for mode in SearchMode:
            ranked = index.rank("acme", dense=unit(1.0), sparse=([7], [1.0]), mode=mode, limit=10)
            assert {r.file_id for r in ranked} <= {"a", "b", "c"} and ranked, mode
            assert all(r.revision == "r1" for r in ranked)
            full = index.search("acme", dense=unit(1.0), sparse=([7], [1.0]), mode=mode, limit=10)
            assert [(r.point_id, r.score) for r in ranked] == [(h.point_id, h.score) for h in full]
            # `hits` keeps the order it is given (what a caller kept of a ranking), with both signals.
            picked = list(reversed(ranked))
            hits = index.hits("acme", picked, unit(1.0))
            assert [h.point_id for h in hits] == [r.point_id for r in picked]
            assert all(h.similarity is not None for h in hits)
            assert all(h.text == f"{h.file_id} chunk 0 of r1" for h in hits)
            if mode is SearchMode.SPARSE:
                assert all(h.keyword_score == h.score for h in hits)
        # A point deleted since it was ranked is absent; another workspace's points are never read back.
        ranked = index.rank("acme", dense=unit(1.0), sparse=None, mode=SearchMode.DENSE, limit=10)
        index.delete_file("acme", "b")
        assert files(index.hits("acme", ranked, None)) == [f for f in files(ranked) if f != "b"]
        theirs = index.rank("beta", dense=unit(1.0), sparse=None, mode=SearchMode.DENSE, limit=10)
        assert files(theirs) == ["theirs"]
        assert index.hits("acme", theirs, unit(1.0)) == []
        assert index.hits("acme", [], unit(1.0)) == []

    def test_sparse_search_and_hybrid_fusion(self, index: VectorIndex) -> None:
        index.upsert(
            [
                point("dense-only", dense=unit(1.0), sparse=([1], [1.0])),
                point("sparse-only", dense=unit(0.0, 1.0), sparse=([42], [2.0])),
                point("neither", dense=unit(0.0, 0.0, 1.0), sparse=([3], [1.0])),
            ]
        )
        sparse_hits = index.search("acme", dense=None, sparse=([42], [1.0]), mode=SearchMode.SPARSE, limit=10)
        assert files(sparse_hits) == ["sparse-only"]
        hybrid = index.search("acme", dense=unit(1.0), sparse=([42], [1.0]), mode=SearchMode.HYBRID, limit=10)
        # Each list's winner leads the fusion; the point neither list ranks first comes last.
        assert set(files(hybrid)[:2]) == {"dense-only", "sparse-only"} and files(hybrid)[-1] == "neither"
        by_file = {h.file_id: h for h in hybrid}
        # Fused scores are ranks; the cosine to the query travels separately.
        assert by_file["dense-only"].similarity == pytest.approx(1.0, abs=1e-5)
        assert by_file["sparse-only"].similarity == pytest.approx(0.0, abs=1e-5)
        # No sparse terms (a question of stop words): hybrid falls back to dense, sparse finds nothing.
        assert files(index.search("acme", dense=unit(1.0), sparse=([], []), mode=SearchMode.HYBRID, limit=1)) == [
            "dense-only"
        ]
        assert index.search("acme", dense=None, sparse=None, mode=SearchMode.SPARSE, limit=5) == []

    def test_sparse_hits_carry_their_keyword_score_and_cosine(self, index: VectorIndex) -> None:
        index.upsert(
            [
                point("strong", dense=unit(1.0), sparse=([42, 7], [3.0, 1.0])),
                point("weak", dense=unit(0.0, 1.0), sparse=([42], [0.5])),
            ]
        )
        hits = index.search("acme", dense=unit(1.0), sparse=([42], [1.0]), mode=SearchMode.SPARSE, limit=10)
        assert files(hits) == ["strong", "weak"]
        for h in hits:
            assert h.keyword_score == pytest.approx(h.score) and h.score > 0
        by_file = {h.file_id: h for h in hits}
        assert by_file["strong"].similarity == pytest.approx(1.0, abs=1e-5)
        assert by_file["weak"].similarity == pytest.approx(0.0, abs=1e-5)

    def test_keyword_scores_are_what_a_sparse_search_gives_the_points_asked_for(self, index: VectorIndex) -> None:
        index.upsert(
            [
                point("both", sparse=([42, 7], [2.0, 1.0])),
                point("one", sparse=([42], [1.0])),
                point("none", sparse=([3], [1.0])),
                point("vectorless"),  # no sparse vector at all
                point("other-tenant", workspace="beta", sparse=([42, 7], [2.0, 1.0])),
            ]
        )
        query = ([42, 7], [1.0, 1.0])
        sparse_hits = index.search("acme", dense=None, sparse=query, mode=SearchMode.SPARSE, limit=10)
        expected = {h.point_id: h.score for h in sparse_hits}
        ids = {
            f: index.file_chunks(ws, f, "r1")[0].point_id
            for ws, f in [
                ("acme", "both"),
                ("acme", "one"),
                ("acme", "none"),
                ("acme", "vectorless"),
                ("beta", "other-tenant"),
            ]
        }
        asked = [ids["one"], ids["both"], ids["none"], ids["vectorless"], ids["other-tenant"]]
        scores = index.keyword_scores("acme", query, asked)
        assert list(scores) == asked  # one score per id asked, in the order asked
        assert scores[ids["both"]] == pytest.approx(expected[ids["both"]]) and scores[ids["both"]] > 0
        assert (
            scores[ids["one"]] == pytest.approx(expected[ids["one"]]) and 0 < scores[ids["one"]] < scores[ids["both"]]
        )
        # No query term, no sparse vector, or another workspace's point: 0.0, never that tenant's score.
        assert scores[ids["none"]] == scores[ids["vectorless"]] == scores[ids["other-tenant"]] == 0.0
        assert index.keyword_scores("acme", ([], []), asked[:2]) == dict.fromkeys(asked[:2], 0.0)
        assert index.keyword_scores("acme", query, []) == {}

    def test_filters(self, index: VectorIndex) -> None:
        index.upsert(
            [
                point("a", path="handbook/leave.md", metadata={"team": "hr", "year": 2024}),
                point("b", path="handbook/it/laptops.md", content_type="text/html", metadata={"team": "it"}),
                point("c", path="handbook-old/leave.md", metadata={"team": "hr"}),
                point("d", path="notes.txt", content_type="text/plain"),
            ]
        )
        q = unit(1.0)

        def found(**kw: Any) -> set[str]:
            return set(files(dense_search(index, q, SearchFilter(**kw))))

        assert found(path_prefix="handbook/") == {"a", "b"}  # a folder, not a string prefix
        assert found(path_prefix="handbook") == {"a", "b"}
        assert found(path_prefix="handbook/it") == {"b"}
        assert found(path_prefix="notes.txt") == {"d"}  # an exact path
        assert found(content_types=("text/html", "text/plain")) == {"b", "d"}
        assert found(file_ids=("a", "d")) == {"a", "d"}
        assert found(metadata_equals=(("team", "hr"),)) == {"a", "c"}
        assert found(metadata_equals=(("team", "hr"), ("year", 2024))) == {"a"}
        assert found(metadata_any=(("team", ("it", "hr")),)) == {"a", "b", "c"}
        assert found(path_prefix="handbook/", metadata_equals=(("team", "hr"),)) == {"a"}
        assert found(path_prefix="/") == found(path_prefix="") == {"a", "b", "c", "d"}  # the whole workspace

    def test_metadata_filters_match_every_json_scalar(self, index: VectorIndex) -> None:
        index.upsert(
            [
                point("a", metadata={"score": 0.5, "draft": True, "rank": 3, "tag": "x"}),
                point("b", metadata={"score": 1.5, "draft": False, "rank": 4, "tag": "y"}),
                point("c", metadata={"score": 3, "draft": False, "rank": 5, "tag": "3"}),
            ]
        )

        def found(**kw: Any) -> set[str]:
            return set(files(dense_search(index, unit(1.0), SearchFilter(**kw))))

        assert found(metadata_equals=(("score", 0.5),)) == {"a"}
        assert found(metadata_equals=(("score", 3.0),)) == {"c"}  # a float matches an equal integer
        assert found(metadata_equals=(("draft", True),)) == {"a"}
        assert found(metadata_equals=(("rank", 4),)) == {"b"}
        assert found(metadata_any=(("rank", (3, 5)),)) == {"a", "c"}
        assert found(metadata_any=(("tag", ("y", 3)),)) == {"b"}  # "3" is a string, 3 an integer
        assert found(metadata_any=(("score", (1.5, 0.5)),)) == {"a", "b"}
        assert found(metadata_any=(("draft", (False,)),)) == {"b", "c"}
        assert found(metadata_any=(("tag", ()),)) == set()  # any of nothing matches nothing

    def test_revisions_and_delete_by_file(self, index: VectorIndex) -> None:
        index.upsert([point("f", revision="r1", index=i) for i in range(3)])
        index.upsert([point("f", revision="r2", index=i) for i in range(2)])
        index.upsert([point("g", revision="r1"), point("f", workspace="beta", revision="r1")])
        assert index.revision_counts("acme") == {("f", "r1"): 3, ("f", "r2"): 2, ("g", "r1"): 1}
        pinned = dense_search(index, unit(1.0), SearchFilter(revisions=(("f", "r2"),)))
        assert {(h.file_id, h.revision) for h in pinned} == {("f", "r2")} and len(pinned) == 2

        index.delete_file("acme", "f", keep_revision="r2")
        assert index.revision_counts("acme") == {("f", "r2"): 2, ("g", "r1"): 1}
        assert [h.chunk_index for h in index.file_chunks("acme", "f", "r2")] == [0, 1]
        assert index.file_chunks("acme", "f", "r1") == []

        index.delete_file("acme", "f")
        assert index.revision_counts("acme") == {("g", "r1"): 1}
        assert index.revision_counts("beta") == {("f", "r1"): 1}  # same file id, other tenant: untouched
        index.delete_file("acme", "never-indexed")  # deleting nothing is fine

    def test_delete_revisions_removes_exactly_those(self, index: VectorIndex) -> None:
        for rev, n in (("r1", 3), ("r2", 2), ("r3", 1)):
            index.upsert([point("f", revision=rev, index=i) for i in range(n)])
        index.upsert([point("g", revision="r1"), point("f", workspace="beta", revision="r1")])
        assert index.file_revisions("acme", "f") == {"r1": 3, "r2": 2, "r3": 1}
        index.delete_revisions("acme", "f", ["r1", "r3", "never-written"])
        assert index.file_revisions("acme", "f") == {"r2": 2}
        assert index.file_revisions("acme", "g") == {"r1": 1}  # another file: untouched
        assert index.file_revisions("beta", "f") == {"r1": 1}  # the same file id of another tenant too
        index.delete_revisions("acme", "f", [])  # deleting nothing is fine
        assert index.file_revisions("acme", "f") == {"r2": 2}
        assert index.file_revisions("acme", "never-indexed") == {}

    def test_revisions_of_counts_many_files_in_one_read(self, index: VectorIndex) -> None:
        # More files than one read names (STAMPS_PER_WRITE), two revisions on some, another tenant beside.
        files = [f"f{i}" for i in range(300)]
        index.upsert([point(f, revision="r1", index=i) for f in files for i in range(2)])
        index.upsert([point(f, revision="r2") for f in files[::7]])
        index.upsert([point("f1", workspace="beta", revision="r9")])
        got = index.revisions_of("acme", [*files, "f3", "never-indexed"])
        assert got == {f: {"r1": 2, "r2": 1} if n % 7 == 0 else {"r1": 2} for n, f in enumerate(files)}
        assert index.revisions_of("beta", ["f1", "f2"]) == {"f1": {"r9": 1}}
        assert index.revisions_of("acme", []) == {}

    def test_writing_a_revision_twice_changes_nothing(self, index: VectorIndex) -> None:
        points = [point("f", index=i, text=f"chunk {i}") for i in range(4)]
        index.upsert(points)
        index.upsert(points)
        assert index.revision_counts("acme") == {("f", "r1"): 4}
        chunks = index.file_chunks("acme", "f", "r1")
        assert [c.text for c in chunks] == [f"chunk {i}" for i in range(4)]

    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(order=st.permutations(range(len(TIED_POINTS))))
    def test_points_of_equal_score_rank_by_point_id_whatever_order_they_were_written_in(
        self, kind: str, order: list[int]
    ) -> None:
        """Copies of one chunk in several files tie in every mode (and RRF ties often otherwise): the
        engine's own order among them follows insertion, or the process (Edge's fusion), so `rank` orders
        ties by point id and reads past the cut until it has seen them all. Whichever order the points were
        written in, every mode ranks the same, and the first n of a ranking are the ranking of n."""
        idx = open_index(kind, Path(tempfile.mkdtemp(prefix="eventrag-ties-")))
        try:
            idx.ensure_ready(MODEL, DIM)
            for i in order:
                idx.upsert([TIED_POINTS[i]])
            twins = sorted(p_id(p) for p in TIED_POINTS if p.file_id.startswith("twin"))
            for mode in SearchMode:
                full = idx.rank("acme", dense=unit(1.0), sparse=([42], [1.0]), mode=mode, limit=20)
                assert len(full) == len(TIED_POINTS)
                assert full == sorted(full, key=lambda r: (-r.score, r.point_id))
                assert [r.point_id for r in full if r.file_id.startswith("twin")] == twins
                assert len({r.score for r in full if r.file_id.startswith("twin")}) == 1, mode  # they do tie
                for n in range(1, len(full)):
                    cut = idx.rank("acme", dense=unit(1.0), sparse=([42], [1.0]), mode=mode, limit=n)
                    assert [r.point_id for r in cut] == [r.point_id for r in full[:n]], (mode, n)
        finally:
            idx.close()

    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        above=st.integers(0, 14),
        tied=st.integers(30, 80),
        misses=st.integers(0, 6),
        limit=st.sampled_from([1, 5, 10]),
        seed=st.integers(0, 2**16),
    )
    def test_a_hybrid_ranking_is_the_fusion_of_its_two_whole_lists(
        self, kind: str, above: int, tied: int, misses: int, limit: int, seed: int
    ) -> None:
        """A sparse list often ends in a long tie (short queries). Whether the tie is read to its end or,
        when it cannot reach the top `limit`, only for the dense list's points, a hybrid ranking is RRF of
        the dense and sparse lists cut at `MIN_PREFETCH` with every point tied at a cut kept at its shared
        rank: computed here from the two full rankings, in whatever order the points were written."""
        rng = random.Random(seed)
        weights = [3.0] * above + [1.0] * tied + [0.0] * misses
        points = [
            point(
                f"f{i:03d}",
                dense=unit(*(rng.uniform(-1, 1) for _ in range(DIM))),
                sparse=([42], [w]) if w else ([7], [1.0]),
            )
            for i, w in enumerate(weights)
        ]
        rng.shuffle(points)
        idx = open_index(kind, Path(tempfile.mkdtemp(prefix="eventrag-fusion-")))
        try:
            idx.ensure_ready(MODEL, DIM)
            for i in range(0, len(points), 17):
                idx.upsert(points[i : i + 17])
            query = unit(*(rng.uniform(-1, 1) for _ in range(DIM)))
            args: dict[str, Any] = {"dense": query, "sparse": ([42], [1.0])}
            everything = len(points)
            lists = [idx.rank("acme", **args, mode=m, limit=everything) for m in (SearchMode.DENSE, SearchMode.SPARSE)]
            assert len(lists[1]) == above + tied and len({r.score for r in lists[1][above:]}) == 1  # they tie
            expected: dict[str, float] = {}
            for ranked in lists:
                cut = [r for r in ranked if r.score >= ranked[min(MIN_PREFETCH, len(ranked)) - 1].score]
                for r in cut:
                    rank = next(i for i, other in enumerate(cut) if other.score == r.score)
                    expected[r.point_id] = expected.get(r.point_id, 0.0) + 1.0 / (RRF_K + rank)
            best = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
            hybrid = idx.rank("acme", **args, mode=SearchMode.HYBRID, limit=limit)
            assert [r.point_id for r in hybrid] == [pid for pid, _ in best]
            assert [r.score for r in hybrid] == pytest.approx([score for _, score in best])
            sparse_of = {r.point_id: r.score for r in lists[1]}
            for r in hybrid:  # the BM25 score when the sparse list holds the point
                assert r.keyword_score is None or r.keyword_score == pytest.approx(sparse_of[r.point_id])
        finally:
            idx.close()

    def test_the_index_records_its_model(self, kind: str, tmp_path: Path) -> None:
        idx = open_index(kind, tmp_path)
        assert idx.recorded_model() is None  # nothing created yet, and asking creates nothing
        assert idx.recorded_model() is None
        idx.ensure_ready(MODEL, DIM)
        idx.upsert([point("f")])
        idx.close()
        again = open_index(kind, tmp_path)
        try:
            assert again.recorded_model() == MODEL  # read before any check (the container picks the backend)
            again.ensure_ready(MODEL, DIM)
            assert files(dense_search(again, unit(1.0))) == ["f"]
            with pytest.raises(EmbeddingModelMismatchError, match="test/other"):
                again.ensure_ready("test/other", DIM)
            with pytest.raises(EmbeddingModelMismatchError, match="int8"):
                again.ensure_ready(MODEL + "+int8", DIM)
            with pytest.raises(EmbeddingModelMismatchError, match="dimensional"):
                again.ensure_ready(MODEL, DIM * 2)
        finally:
            again.close()

    def test_reopens_with_every_acknowledged_write_after_a_crash(self, kind: str, tmp_path: Path) -> None:
        """A writer killed mid-stream (no close, no flush): what `upsert`/`delete_file` returned from is
        there after reopening, and the index still answers."""
        script = textwrap.dedent(
            f"""
            import os, sys
            sys.path.insert(0, {str(ROOT)!r})
            from pathlib import Path
            from tests.contracts.test_vector_index import open_index, point, unit, MODEL, DIM
            idx = open_index({kind!r}, Path({str(tmp_path)!r}))
            idx.ensure_ready(MODEL, DIM)
            for n in range(20):
                idx.upsert([point(f"f{{n}}", index=i, dense=unit(1.0, n)) for i in range(5)])
            idx.delete_file("acme", "f3")
            print("acknowledged", flush=True)
            os._exit(9)  # dies with the index open: no close, no flush
            """
        )
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert "acknowledged" in proc.stdout, proc.stderr
        idx = open_index(kind, tmp_path)
        try:
            idx.ensure_ready(MODEL, DIM)
            counts = idx.revision_counts("acme")
            assert counts == {(f"f{n}", "r1"): 5 for n in range(20) if n != 3}
            assert files(dense_search(idx, unit(1.0, 19)))[0] == "f19"
            idx.upsert([point("after")])
            assert ("after", "r1") in idx.revision_counts("acme")
        finally:
            idx.close()


HOLDER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from app.container import build_index
from app.settings import Settings
settings = Settings(data_dir=Path(sys.argv[2]), index_backend=sys.argv[3])
index = build_index(settings)
index.ensure_ready("test/model", 8)
print("holding", flush=True)
sys.stdin.read()  # until the test closes our stdin
index.close()
"""


@pytest.mark.parametrize("backend", [IndexBackend.EDGE, IndexBackend.QDRANT_LOCAL])
def test_a_second_process_gets_the_clear_locked_message(backend: IndexBackend, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ROOT), str(tmp_path), backend.value],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(StoreLockedError) as caught:
            build_index(Settings(data_dir=tmp_path, index_backend=backend))
        message = str(caught.value)
        assert "open in another process" in message and "EVENTRAG_QDRANT_URL" in message
        assert str(tmp_path) in message
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
        assert holder.stdout is not None
        holder.stdout.close()
    # Released: it opens now.
    build_index(Settings(data_dir=tmp_path, index_backend=backend)).close()


def test_a_hybrid_question_is_one_round_trip_to_a_qdrant_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a Qdrant server each client call is a network round trip: the dense and sparse lists of a
    hybrid ranking go in one batch with the fields a ranking needs (no read of them afterwards), and a
    ranking whose last points tie reads deeper in another batch only for the list that needs it, and
    only the points that can still tie."""
    idx = QdrantIndex(QdrantClient(path=str(tmp_path / "qdrant")), "eventrag")
    idx.ensure_ready(MODEL, DIM)
    idx.upsert(TIED_POINTS)
    calls: list[list[int]] = []
    thresholds: list[list[float | None]] = []
    batch = idx.client.query_batch_points

    def counted(collection_name: str, requests: Any, **kw: Any) -> Any:
        calls.append([r.limit for r in requests])
        thresholds.append([r.score_threshold for r in requests])
        return batch(collection_name, requests=requests, **kw)

    monkeypatch.setattr(idx.client, "query_batch_points", counted)
    monkeypatch.setattr(idx.client, "query_points", lambda *a, **kw: pytest.fail("a read outside the batch"))
    monkeypatch.setattr(idx.client, "retrieve", lambda *a, **kw: pytest.fail("a read outside the batch"))
    ranked = idx.rank("acme", dense=unit(1.0), sparse=([42], [1.0]), mode=SearchMode.HYBRID, limit=3)
    assert len(ranked) == 3 and calls == [[51, 51]]  # both lists, one past MIN_PREFETCH, in one call
    calls.clear()
    thresholds.clear()
    # Dense alone, kept to 2: "lead", then six twins tied for second: the cut falls inside the tie.
    ranked = idx.rank("acme", dense=unit(1.0), sparse=None, mode=SearchMode.DENSE, limit=2)
    first_twin = min((p for p in TIED_POINTS if p.file_id.startswith("twin")), key=p_id)
    assert [r.point_id for r in ranked] == [p_id(TIED_POINTS[6]), p_id(first_twin)]
    # Read one deeper than kept, then (the last two tie) four times as deep, down to just under the tie:
    # the lead and the six twins, fewer than asked for, so the whole tie is in.
    assert calls == [[3], [12]]
    twin_score = sum(a * b for a, b in zip(unit(1.0), first_twin.dense, strict=True))
    assert thresholds[0] == [None] and thresholds[1][0] is not None
    assert twin_score - 1e-4 < thresholds[1][0] < twin_score
    # A sparse list that ends in a long tie, from rank 20 on: past the fused top 10's reach, so it is not
    # read to its end; one read restricted to the dense list's points finds which of them tie.
    idx.upsert(
        [point(f"kw{i:02d}", dense=unit(1.0, 0.2 + i / 20), sparse=([77], [3.0 if i < 20 else 1.0])) for i in range(80)]
    )
    calls.clear()
    ranked = idx.rank("acme", dense=unit(1.0), sparse=([77], [1.0]), mode=SearchMode.HYBRID, limit=10)
    assert len(ranked) == 10 and calls[0] == [51, 51] and len(calls) == 2 and calls[1][0] <= 51
    idx.close()


def test_edge_metadata_file_names_the_model(tmp_path: Path) -> None:
    idx = EdgeIndex(tmp_path / "edge")
    idx.ensure_ready(MODEL, DIM)
    idx.close()
    meta = json.loads((tmp_path / "edge" / "eventrag-index.json").read_text())
    assert (meta["embedding_model"], meta["dimension"], meta["engine"]) == (MODEL, DIM, "edge")


def test_a_local_mode_data_dir_moves_to_edge_on_first_open(tmp_path: Path) -> None:
    """A data dir of an earlier release (qdrant-client local mode): the Edge default opens it with every
    point, both vectors and the payload, moved over; the old folder is kept aside, nothing re-embedded."""
    old = QdrantIndex(QdrantClient(path=str(tmp_path / "qdrant")), "eventrag")
    old.ensure_ready(MODEL, DIM)
    old.upsert([point("a", dense=unit(1.0), sparse=([5], [1.0])), point("b", dense=unit(0.0, 1.0), revision="r2")])
    old.close()

    index = build_index(Settings(data_dir=tmp_path))
    try:
        assert isinstance(index, EdgeIndex)
        index.ensure_ready(MODEL, DIM)
        assert index.revision_counts("acme") == {("a", "r1"): 1, ("b", "r2"): 1}
        assert files(dense_search(index, unit(0.0, 1.0)))[0] == "b"
        sparse = index.search("acme", dense=None, sparse=([5], [1.0]), mode=SearchMode.SPARSE, limit=5)
        assert files(sparse) == ["a"] and sparse[0].metadata == {} and sparse[0].title == "A"
        with pytest.raises(EmbeddingModelMismatchError):
            index.ensure_ready("test/other", DIM)  # the model record moved too
    finally:
        index.close()
    assert not (tmp_path / "qdrant").exists() and (tmp_path / "qdrant.migrated-to-edge").is_dir()
    build_index(Settings(data_dir=tmp_path)).close()  # the second open finds nothing to move
