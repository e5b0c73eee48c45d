"""The Edge index optimized online (`stores.edge_rebuild`): it answers the same before, during and after
the optimize, keeps every write made meanwhile, and a process killed at any step of it reopens with every
acknowledged write. Real Edge shards and real child processes; no timing is asserted (bench/ measures it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import qdrant_edge as qe

from stores.edge import FLUSH_POINTS, GENERATIONS, META_FILE, SHARD_CONFIG, EdgeIndex
from stores.edge_rebuild import EdgeMaintenance, OptimizeAbandonedError, optimize_online
from stores.ports import Hit, SearchFilter, SearchMode
from tests.contracts.test_vector_index import DIM, MODEL, point, unit

ROOT = Path(__file__).resolve().parents[1]
WAIT = 120.0  # seconds a step may take on a loaded machine before the test gives up


def corpus() -> list[Any]:
    """Two workspaces, several files and revisions, every payload field filters read; distinct vectors
    and sparse weights, so every ranking is free of ties."""
    out = []
    for n in range(12):
        for i in range(3):
            out.append(
                point(
                    f"f{n}",
                    index=i,
                    dense=unit(1.0, 0.1 * n, 0.03 * i, 0.01 * n * i),
                    sparse=(
                        [n, 100 + i, 200 + n % 4],
                        [1.0 + 0.1 * n + 0.01 * i, 0.5 + 0.07 * i + 0.003 * n, 0.3 + 0.01 * n + 0.002 * i],
                    ),
                    path=f"{'legal' if n % 3 == 0 else 'eng'}/team{n % 2}/f{n}.md",
                    content_type="application/pdf" if n % 4 == 0 else "text/markdown",
                    metadata={"team": f"t{n % 3}", "public": n % 2 == 0, "year": 2020 + n % 5},
                )
            )
    out.append(point("f1", revision="r2", dense=unit(0.2, 1.0), sparse=([1, 7], [0.9, 0.4])))
    out.append(point("b1", workspace="beta", dense=unit(1.0), sparse=([1, 2], [1.0, 1.0])))
    return out


def answers(index: EdgeIndex) -> dict[str, Any]:
    """Every read of the port, on queries whose right answer depends on the whole corpus."""

    def rows(hits: list[Hit]) -> list[tuple[Any, ...]]:
        # Fused (RRF) scores tie by construction (ranks 1 and 3 score as 3 and 1): equal scores in id order.
        table = (
            (
                h.point_id,
                h.file_id,
                h.revision,
                h.version,
                h.chunk_index,
                round(h.score, 5),
                None if h.similarity is None else round(h.similarity, 5),
                h.metadata,
                h.path,
            )
            for h in hits
        )
        return sorted(table, key=lambda r: (-r[5], r[0]))

    q, sp = unit(1.0, 0.4, 0.02), ([1, 101, 201], [1.0, 0.6, 0.4])
    out: dict[str, Any] = {}
    for mode in SearchMode:
        out[f"search {mode}"] = rows(index.search("acme", dense=q, sparse=sp, mode=mode, limit=50))
    filters = {
        "path": SearchFilter(path_prefix="legal/"),
        "type": SearchFilter(content_types=("application/pdf",)),
        "bool": SearchFilter(metadata_equals=(("public", True),)),
        "any": SearchFilter(metadata_any=(("team", ("t0", "t2")),)),
        "revision": SearchFilter(revisions=(("f1", "r2"),)),
    }
    for name, flt in filters.items():
        out[f"filter {name}"] = rows(
            index.search("acme", dense=q, sparse=sp, mode=SearchMode.HYBRID, limit=50, flt=flt)
        )
    out["beta"] = rows(index.search("beta", dense=q, sparse=sp, mode=SearchMode.HYBRID, limit=10))
    ids = [h.point_id for h in index.search("acme", dense=q, sparse=None, mode=SearchMode.DENSE, limit=6)]
    out["keyword_scores"] = {k: round(v, 5) for k, v in index.keyword_scores("acme", sp, ids).items()}
    out["file_chunks"] = rows(index.file_chunks("acme", "f3", "r1"))
    out["file_revisions"] = index.file_revisions("acme", "f1")
    out["revision_counts"] = index.revision_counts("acme")
    out["points"] = index.points_count()
    return out


@pytest.fixture
def index(tmp_path: Path) -> Iterator[EdgeIndex]:
    idx = EdgeIndex(tmp_path / "edge")
    idx.ensure_ready(MODEL, DIM)
    idx.upsert(corpus())
    yield idx
    idx.close()


def test_an_online_optimize_changes_no_answer_and_replaces_the_shard(index: EdgeIndex, tmp_path: Path) -> None:
    before = answers(index)
    report = optimize_online(index)
    assert report is not None and report.points == len(corpus())
    assert answers(index) == before
    # The metadata names the new generation; the first shard's files are gone.
    meta = index.read_meta()
    assert meta["shard"] == f"{GENERATIONS}/gen-000001" and meta["optimized_points"] == len(corpus())
    assert sorted(p.name for p in (tmp_path / "edge").iterdir()) == [META_FILE, GENERATIONS]
    assert index.unoptimized_points() == 0

    assert optimize_online(index) is not None  # a second one replaces the first generation
    assert [p.name for p in (tmp_path / "edge" / GENERATIONS).iterdir()] == ["gen-000002"]
    assert answers(index) == before
    index.close()
    reopened = EdgeIndex(tmp_path / "edge")
    try:
        reopened.ensure_ready(MODEL, DIM)
        assert reopened.shard_dir.name == "gen-000002"
        assert answers(reopened) == before
    finally:
        reopened.close()


class Pause:
    """A fault hook that holds the optimize at one step until the test lets it go."""

    def __init__(self, *steps: str) -> None:
        self.steps = set(steps)
        self.reached: dict[str, threading.Event] = {s: threading.Event() for s in steps}
        self.go: dict[str, threading.Event] = {s: threading.Event() for s in steps}

    def __call__(self, step: str) -> None:
        if step in self.steps:
            self.reached[step].set()
            assert self.go[step].wait(WAIT), f"the test never let {step} go"

    def at(self, step: str) -> None:
        assert self.reached[step].wait(WAIT), f"the optimize never reached {step}"


def run_in_thread(index: EdgeIndex) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["report"] = optimize_online(index)
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_reads_and_writes_go_on_during_an_online_optimize_and_all_land(index: EdgeIndex, tmp_path: Path) -> None:
    pause = Pause("exported", "loaded")
    index.fault = pause
    thread, out = run_in_thread(index)

    pause.at("exported")  # the child builds the copy; the live shard serves and journals
    index.upsert([point("new1", dense=unit(0.0, 0.0, 1.0), sparse=([900], [2.0]))])
    index.delete_file("acme", "f5")
    index.delete_revisions("acme", "f6", ["r1"])
    index.delete_revisions("acme", "f1", ["r2"])
    hit = index.search("acme", dense=unit(0.0, 0.0, 1.0), sparse=None, mode=SearchMode.DENSE, limit=1)[0]
    assert hit.file_id == "new1"
    assert ("f5", "r1") not in index.revision_counts("acme")
    pause.go["exported"].set()

    pause.at("loaded")  # the copy is open in this process, the journal not replayed yet
    index.upsert([point("new2", index=i, dense=unit(0.0, 1.0, 0.0, float(i))) for i in range(3)])
    index.upsert([point("f7", index=0, dense=unit(0.0, 0.0, 0.0, 1.0), metadata={"team": "rewritten"})])
    index.delete_file("acme", "f8")
    expected = answers(index)
    pause.go["loaded"].set()

    thread.join(WAIT)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    assert out["report"].replayed == 7  # every journaled write: 4 at the first pause, 3 at the second
    assert index.shard_dir.name == "gen-000001"
    after = answers(index)
    assert after == expected
    assert ("new2", "r1") in after["revision_counts"] and ("f8", "r1") not in after["revision_counts"]
    assert index.file_chunks("acme", "f6", "r1") == []
    assert index.file_revisions("acme", "f1") == {"r1": 3}
    assert index.file_chunks("acme", "f7", "r1")[0].metadata == {"team": "rewritten"}


def test_closing_the_index_abandons_the_optimize_and_keeps_the_live_shard(index: EdgeIndex, tmp_path: Path) -> None:
    pause = Pause("exported")
    index.fault = pause
    before = answers(index)
    thread, out = run_in_thread(index)
    pause.at("exported")
    index.closing.set()  # what close() does first
    pause.go["exported"].set()
    thread.join(WAIT)
    index.closing.clear()
    assert isinstance(out.get("error"), OptimizeAbandonedError) and "closing" in str(out["error"])
    assert not (tmp_path / "edge" / GENERATIONS / "gen-000001").exists()  # the copy is removed
    assert "shard" not in index.read_meta() and index.shard_dir == tmp_path / "edge"
    index.upsert([point("later")])  # the journal is off, the live shard takes writes as before
    assert ("later", "r1") in index.revision_counts("acme")
    before["revision_counts"][("later", "r1")] = 1
    before["points"] += 1
    assert answers(index)["revision_counts"] == before["revision_counts"]


def test_too_many_writes_during_the_optimize_abandon_it(
    index: EdgeIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stores.edge_rebuild.MAX_JOURNAL_POINTS", 2)
    pause = Pause("exported")
    index.fault = pause
    thread, out = run_in_thread(index)
    pause.at("exported")
    index.upsert([point("w", index=i) for i in range(3)])
    pause.go["exported"].set()
    thread.join(WAIT)
    assert isinstance(out.get("error"), OptimizeAbandonedError) and "were written while" in str(out["error"])
    assert ("w", "r1") in index.revision_counts("acme") and "shard" not in index.read_meta()
    index.fault = None
    assert optimize_online(index) is not None  # the next one goes through


def test_maintenance_optimizes_once_enough_was_written(index: EdgeIndex) -> None:
    maintenance = EdgeMaintenance(index, after_points=len(corpus()) + 5, growth=0.2, check_seconds=60)
    assert not maintenance.due() and maintenance.run_once() is None
    index.upsert([point("more", index=i) for i in range(5)])
    assert maintenance.due()
    report = maintenance.run_once()
    assert report is not None and report.points == len(corpus()) + 5
    assert not maintenance.due()
    # The next one waits for the growth share too: 20% of the points optimized last time.
    maintenance.after_points = 1
    index.upsert([point("again", index=i) for i in range(5)])
    assert not maintenance.due()
    index.upsert([point("again", index=i) for i in range(5, 10)])
    assert maintenance.due()


def test_offline_optimize_still_works_after_online_ones(index: EdgeIndex) -> None:
    before = answers(index)
    assert optimize_online(index) is not None
    index.upsert([point("x")])
    index.delete_file("acme", "x")
    index.optimize()
    assert answers(index) == before and index.unoptimized_points() == 0


def test_flushing_the_live_shard_often_changes_no_answer(tmp_path: Path) -> None:
    """`apply` flushes the live shard every `flush_points` writes (here after every write), before,
    during and after an online optimize: the answers are those of an index that never flushes."""
    often = EdgeIndex(tmp_path / "often", flush_points=1)
    never = EdgeIndex(tmp_path / "never", flush_points=10**9)
    try:
        for idx in (often, never):
            idx.ensure_ready(MODEL, DIM)
            for p in corpus():
                idx.upsert([p])
            idx.delete_revisions("acme", "f1", ["r2"])
        assert answers(often) == answers(never)
        for idx in (often, never):
            assert optimize_online(idx) is not None
            idx.upsert([point("late", dense=unit(0.3, 0.3, 1.0))])
            idx.delete_file("acme", "f2")
        assert answers(often) == answers(never)
    finally:
        often.close()
        never.close()
    reopened = EdgeIndex(tmp_path / "often")
    try:
        reopened.ensure_ready(MODEL, DIM)
        assert reopened.revision_counts("acme") == EdgeIndex(tmp_path / "never").revision_counts("acme")
    finally:
        reopened.close()


def _earlier_shard(path: Path) -> None:
    """An index as eventrag made it before its payload indexes moved to `Memory.Cold` and range-only
    integer indexes: Qdrant's default placements and integer index (lookup and range)."""
    from stores.points import DENSE, INTEGER_FIELDS, KEYWORD_FIELDS, SCHEMA_VERSION, SPARSE

    shard = qe.EdgeShard.create(
        str(path),
        qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        ),
    )
    shard.update(qe.UpdateOperation.create_field_index("workspace", qe.KeywordIndexParams(is_tenant=True)))
    for name in KEYWORD_FIELDS:
        shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
    for name in INTEGER_FIELDS:
        shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Integer))
    shard.close()
    meta = {"embedding_model": MODEL, "dimension": DIM, "schema": SCHEMA_VERSION, "engine": "edge"}
    (path / META_FILE).write_text(json.dumps({**meta, "optimized_points": 0}))


def _integer_lookups(index: EdgeIndex) -> dict[str, Any]:
    with index.reading() as shard:
        assert shard is not None
        schema = shard.info().payload_schema
    return {name: getattr(schema[name].params, "lookup", None) for name in ("version", "page_start", "page_end")}


def test_an_index_made_with_the_earlier_shard_configuration_opens_and_optimizes_onto_the_current_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "edge"
    path.mkdir()
    _earlier_shard(path)
    index = EdgeIndex(path)
    try:
        index.ensure_ready(MODEL, DIM)
        index.upsert(corpus())
        before = answers(index)
        assert set(_integer_lookups(index).values()) != {False}  # Qdrant's default: a lookup index too
        report = optimize_online(index)
        assert report is not None and index.shard_dir == path / GENERATIONS / "gen-000001"
        assert answers(index) == before
        assert _integer_lookups(index) == dict.fromkeys(("version", "page_start", "page_end"), False)
        with index.reading() as shard:
            assert shard is not None
            schema = shard.info().payload_schema
        assert getattr(schema["file_id"].params, "memory", None) == qe.Memory.Cold  # mapped, not read into RAM
    finally:
        index.close()
    reopened = EdgeIndex(path)
    try:
        reopened.ensure_ready(MODEL, DIM)
        assert answers(reopened) == before
    finally:
        reopened.close()


CRASH = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from stores.edge import EdgeIndex
from stores.edge_rebuild import optimize_online
from tests.contracts.test_vector_index import point, unit, MODEL, DIM
step, flush_points = sys.argv[3], int(sys.argv[4])

def fault(at):
    if at != step:
        return
    # Writes acknowledged at this step must survive the crash, whichever shard they went to.
    index.upsert([point("during", index=i, dense=unit(0.0, 1.0, float(i))) for i in range(4)])
    index.delete_file("acme", "f0")
    print("acknowledged", flush=True)
    os._exit(9)  # dies mid-optimize: no close, no flush, the child killed with it

index = EdgeIndex(Path(sys.argv[2]), fault=fault, flush_points=flush_points)
index.ensure_ready(MODEL, DIM)
for n in range(10):
    index.upsert([point(f"f{n}", index=i, dense=unit(1.0, float(n), float(i))) for i in range(3)])
optimize_online(index)
print("finished without reaching the step", flush=True)
"""


def _rebuild_children(staging_root: Path) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "stores.edge_rebuild" in cmdline and str(staging_root) in cmdline:
                found.append(int(pid))
    return found


@pytest.mark.parametrize("flush_points", [FLUSH_POINTS, 2], ids=["default-flushes", "flushing-every-2-points"])
@pytest.mark.parametrize("step", ["exported", "loaded", "committed"])
def test_a_crash_at_any_step_of_an_online_optimize_keeps_every_acknowledged_write(
    step: str, flush_points: int, tmp_path: Path
) -> None:
    """Killed at each step, also with the live shard flushed every two points (flushes in every step,
    on both generations): the reopened index holds every acknowledged write."""
    path = tmp_path / "edge"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(ROOT), str(path), step, str(flush_points)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert "acknowledged" in proc.stdout, proc.stdout + proc.stderr
    # The child building the copy dies with its parent (PR_SET_PDEATHSIG), it is not left optimizing.
    deadline = time.monotonic() + WAIT
    while _rebuild_children(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _rebuild_children(path)

    index = EdgeIndex(path)
    try:
        index.ensure_ready(MODEL, DIM)
        expected = {(f"f{n}", "r1"): 3 for n in range(1, 10)} | {("during", "r1"): 4}
        assert index.revision_counts("acme") == expected
        # After the commit the new generation is live; before it, the first shard still is. Either way the
        # other one is gone.
        live = index.shard_dir
        assert live == (path / GENERATIONS / "gen-000001" if step == "committed" else path)
        leftovers = [p for p in (path / GENERATIONS).iterdir()] if (path / GENERATIONS).exists() else []
        assert leftovers == ([live] if step == "committed" else [])
        if step == "committed":
            assert not (path / SHARD_CONFIG).exists()
        top = index.search("acme", dense=unit(0.0, 1.0, 3.0), sparse=None, mode=SearchMode.DENSE, limit=1)
        assert (top[0].file_id, top[0].chunk_index) == ("during", 3)
        report = optimize_online(index)  # and it optimizes again from there
        assert report is not None and report.points == 31
        assert index.revision_counts("acme") == expected
    finally:
        index.close()


def test_the_server_optimizes_its_index_online_and_keeps_answering(make_harness: Any) -> None:
    """`eventrag serve`'s path: the container starts the maintenance with the worker; once enough points
    were written it swaps in an optimized generation, and the same question gets the same answer."""
    from tests.fakes.webhooks import file_event
    from tests.test_end_to_end import EXPENSES, LEAVE_V1

    h = make_harness(edge={"optimize_after_points": 2, "optimize_check_seconds": 0.05})
    h.post_event(file_event("created", "doc-leave", path="handbook/leave.md", content=LEAVE_V1, version=1))
    h.post_event(file_event("created", "doc-travel", path="handbook/travel.md", content=EXPENSES, version=1))
    assert h.drain() == 2
    question = "How many days of annual leave do employees get?"
    before = h.query(question).json()
    index = h.container.index
    assert isinstance(index, EdgeIndex) and "shard" not in index.read_meta()

    h.container.start_index_maintenance()
    deadline = time.monotonic() + WAIT
    while "shard" not in index.read_meta() and time.monotonic() < deadline:
        assert h.query(question).json()["citations"] == before["citations"]  # answering all along
        time.sleep(0.05)
    assert index.read_meta()["shard"] == f"{GENERATIONS}/gen-000001"
    after = h.query(question).json()
    assert after["citations"] == before["citations"] and after["answer"] == before["answer"]
    h.container.stop_index_maintenance()


def test_optimize_index_still_optimizes_offline_after_an_online_optimize(make_harness: Any) -> None:
    from tests.fakes.cli import run_cli
    from tests.fakes.webhooks import file_event
    from tests.test_end_to_end import LEAVE_V1

    h = make_harness()
    h.post_event(file_event("created", "doc-leave", path="handbook/leave.md", content=LEAVE_V1, version=1))
    assert h.drain() == 1
    index = h.container.index
    assert isinstance(index, EdgeIndex) and optimize_online(index) is not None
    points = index.points_count()
    h.container.close()  # the CLI opens the index itself: one process per shard

    out = run_cli("optimize-index", data_dir=h.settings.data_dir)
    assert out.returncode == 0, out.stderr
    assert f"({points} points)" in out.stdout and "gen-000001" in out.stdout
    assert out.stdout.strip().endswith(("optimized", "already optimal"))
