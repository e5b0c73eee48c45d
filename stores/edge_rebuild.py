"""Optimizing the Edge shard while it serves: an optimized copy built in a child process, then swapped in.

Why a copy: qdrant-edge-py 0.9 holds the GIL in every call into the shard, `optimize()` included (100 s
for 50,000 chunks here, during which no other thread of the process runs), it has no background optimizer
and no read-only or shared open (a second process is refused by the WAL lock). So the serving process
never optimizes its own shard. Instead (`optimize_online`):

1. *Journal*: from now on every write applied to the live shard is also recorded, in the order applied.
2. *Export*: the live shard's points are scrolled in pages of `PAGE` points (a few milliseconds of GIL
   each, reads and writes run in between) and streamed to a child process (`python -m stores.edge_rebuild`),
   which writes them into a new shard with the live one's configuration and payload indexes, optimizes it
   (HNSW graphs, no deleted points), flushes it and exits. The child runs at a lower priority; the serving
   process only waits for it.
3. *Load and replay*: the serving process opens the copy (one of the two calls every thread of the
   process waits for, with the old shard's close in step 4: about 0.1 s each at 50,000 chunks, since
   the payload indexes are mapped rather than read into RAM and the live shard is flushed as it goes;
   docs/performance.md) and applies the journal to it in batches, while new writes keep landing in the
   live shard and the journal.
4. *Swap* (`EdgeIndex.swap`): under the write lock, the last few journaled writes are applied, the metadata
   file names the new generation (the commit) and reads move to it; the old shard closes once its reads
   end, then its files are removed.

Replaying is exact because every write eventrag puts in the journal decides its effect from point ids alone
(an upsert sets a point; a delete or a version change selects points by workspace, file and revision, which
never change for an id): applied in order to a copy that holds each point as it was at any moment after the
journal began, they leave it equal to the live shard.

An optimize is abandoned, its copy removed and the live shard untouched, when the child fails, the index is
closing, or the journal passes `MAX_JOURNAL_POINTS`. A crash at any step leaves either the old generation
named (the copy is removed on the next open) or the new one (the old one is).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import qdrant_edge as qe

from stores.edge import EdgeIndex
from stores.edge_shard import (
    GENERATIONS,
    SHARD_CONFIG,
    Journal,
    create_payload_indexes,
    load_shard,
    shard_config,
)
from stores.errors import StoreError
from stores.points import DENSE, SPARSE

log = logging.getLogger(__name__)

PAGE = 64  # points per exported page: a few ms of scrolling and encoding in the serving process
REPLAY_BATCH = 16  # journaled writes applied per step before the swap
TAIL = 4  # at most this many journaled writes are applied under the write lock, at the swap
MAX_JOURNAL_POINTS = 100_000  # writes kept for the replay (their vectors are in memory) before giving up
CHILD_NICE = 10
WAIT_STEP_SECONDS = 0.5  # how often the wait for the child checks for a close
_ROOT = Path(__file__).resolve().parents[1]


class OptimizeAbandonedError(StoreError):
    """An online optimize stopped before its swap; the live shard is unchanged and the copy removed."""


@dataclass(slots=True)
class RebuildReport:
    points: int  # exported to the copy
    replayed: int  # journaled writes applied to the copy
    export_seconds: float
    child_seconds: float  # the child's whole run (writing the copy, optimizing, flushing)
    optimize_seconds: float  # of which `optimize()` in the child
    load_seconds: float  # opening the copy in the serving process (holds the GIL)
    swap_seconds: float  # the tail under the write lock and the commit
    retire_seconds: float  # closing the old shard (holds the GIL: a flush, freeing it) and removing its files
    total_seconds: float


def optimize_online(index: EdgeIndex, *, nice: int = CHILD_NICE) -> RebuildReport | None:
    """Build an optimized copy of the live shard in a child process and swap it in (module docstring).
    Returns None when another optimize is running; raises `OptimizeAbandonedError` when this one stops."""
    if not index.optimizing.acquire(blocking=False):
        return None
    try:
        if index.closing.is_set():
            raise OptimizeAbandonedError("the index is closing")
        return _rebuild(index, nice)
    finally:
        index.optimizing.release()


def _fault(index: EdgeIndex, step: str) -> None:
    if index.fault is not None:
        index.fault(step)


def _rebuild(index: EdgeIndex, nice: int) -> RebuildReport:
    with tempfile.TemporaryFile() as child_log:  # the child's stderr, shown if it fails
        return _rebuild_logged(index, nice, child_log)


def _rebuild_logged(index: EdgeIndex, nice: int, child_log: IO[bytes]) -> RebuildReport:
    started = time.perf_counter()
    meta = index.read_meta()
    generation = int(meta.get("generation", 0)) + 1
    staging = index.path / GENERATIONS / f"gen-{generation:06d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # The copy gets eventrag's shard configuration (`shard_config`: cheap to open), which also moves a shard
    # made with an older one onto it. An index without a recorded dimension keeps the live shard's own
    # configuration: Edge opens a directory holding only its config file as an empty shard of it.
    dimension = meta.get("dimension")
    if not isinstance(dimension, int):
        shutil.copyfile(index.shard_dir / SHARD_CONFIG, staging / SHARD_CONFIG)
    index.write_meta(generation=generation)  # a generation's name is never reused
    journal = index.start_journal()
    proc: subprocess.Popen[bytes] | None = None
    copy: qe.EdgeShard | None = None
    committed = False
    try:
        proc = _start_child(staging, nice, child_log, dimension if isinstance(dimension, int) else 0)
        t0 = time.perf_counter()
        exported = _export(index, journal, proc, child_log)
        export_seconds = time.perf_counter() - t0
        _fault(index, "exported")
        result = _wait_child(index, journal, proc, child_log)
        _check(index, journal)
        child_seconds = time.perf_counter() - t0 - export_seconds
        if result.get("points") != exported:
            raise OptimizeAbandonedError(f"the copy holds {result.get('points')} points, {exported} were exported")
        _fault(index, "child-done")
        t0 = time.perf_counter()
        copy = load_shard(staging)
        load_seconds = time.perf_counter() - t0
        with index.reading() as live:
            assert live is not None
            wanted = {k: v.data_type for k, v in live.info().payload_schema.items()}
        got = {k: v.data_type for k, v in copy.info().payload_schema.items()}
        if got != wanted:
            raise OptimizeAbandonedError(f"the copy's payload indexes {got} differ from the live shard's {wanted}")
        _fault(index, "loaded")
        replayed = 0
        while len(journal.ops) - replayed > TAIL:
            _check(index, journal)
            end = min(len(journal.ops), replayed + REPLAY_BATCH)
            for op in journal.ops[replayed:end]:
                copy.update(op)
            replayed = end
        _check(index, journal)
        t0 = time.perf_counter()
        old = index.swap(copy, staging, journal, replayed, exported)
        committed = True
        swap_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        index.retire(old)
        retire_seconds = time.perf_counter() - t0
        return RebuildReport(
            points=exported,
            replayed=len(journal.ops),
            export_seconds=round(export_seconds, 3),
            child_seconds=round(child_seconds, 3),
            optimize_seconds=float(result.get("optimize_seconds", 0.0)),
            load_seconds=round(load_seconds, 3),
            swap_seconds=round(swap_seconds, 4),
            retire_seconds=round(retire_seconds, 3),
            total_seconds=round(time.perf_counter() - started, 3),
        )
    except BaseException as exc:
        if committed:
            raise
        index.stop_journal()
        if proc is not None:
            _end_child(proc)
        if copy is not None:
            copy.close()
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OptimizeAbandonedError | KeyboardInterrupt | SystemExit):
            raise
        raise OptimizeAbandonedError(f"online optimize of {index.path} failed: {exc}") from exc


def _check(index: EdgeIndex, journal: Journal) -> None:
    if index.closing.is_set():
        raise OptimizeAbandonedError("the index is closing")
    if journal.points > MAX_JOURNAL_POINTS:
        raise OptimizeAbandonedError(
            f"{journal.points} points were written while the copy was built (more than {MAX_JOURNAL_POINTS});"
            " the next optimize tries again"
        )


def _start_child(staging: Path, nice: int, child_log: IO[bytes], dimension: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen(
        [sys.executable, "-m", "stores.edge_rebuild", str(staging), str(nice), str(os.getpid()), str(dimension)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=child_log,
        env=env,
    )


def _end_child(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None and not stream.closed:
            with contextlib.suppress(OSError):  # the child is gone: what was left in the pipe does not matter
                stream.close()


def _child_failure(proc: subprocess.Popen[bytes], child_log: IO[bytes]) -> OptimizeAbandonedError:
    if proc.poll() is None:
        proc.kill()
    code = proc.wait()
    child_log.seek(0)
    tail = child_log.read()[-2000:].decode(errors="replace").strip()
    return OptimizeAbandonedError(f"the optimizing process exited with {code}: {tail or 'no output'}")


def _export(index: EdgeIndex, journal: Journal, proc: subprocess.Popen[bytes], child_log: IO[bytes]) -> int:
    assert proc.stdin is not None
    exported = 0
    offset: Any = None
    try:
        while True:
            _check(index, journal)
            with index.reading() as live:
                assert live is not None
                records, offset = live.scroll(
                    qe.ScrollRequest(offset=offset, limit=PAGE, with_payload=True, with_vector=True)
                )
            if records:
                # Writing to the pipe releases the GIL; a full pipe (the child is busy) paces the export.
                pickle.dump(_encode(records), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                exported += len(records)
            if offset is None:
                break
        pickle.dump(None, proc.stdin)
        proc.stdin.close()
    except (BrokenPipeError, OSError) as exc:
        raise _child_failure(proc, child_log) from exc
    return exported


def _wait_child(
    index: EdgeIndex, journal: Journal, proc: subprocess.Popen[bytes], child_log: IO[bytes]
) -> dict[str, Any]:
    while True:
        try:
            proc.wait(WAIT_STEP_SECONDS)
            break
        except subprocess.TimeoutExpired:
            _check(index, journal)
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace").strip()
    proc.stdout.close()
    if proc.returncode != 0 or not out:
        raise _child_failure(proc, child_log)
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def _encode(records: list[qe.Record]) -> tuple[list[str], np.ndarray, list[Any], list[Any]]:
    ids, dense, sparse, payloads = [], [], [], []
    for r in records:
        vectors = r.vector if isinstance(r.vector, dict) else {}
        ids.append(str(r.id))
        dense.append(vectors[DENSE])
        sv = vectors.get(SPARSE)
        sparse.append((list(sv.indices), list(sv.values)) if isinstance(sv, qe.SparseVector) else None)
        payloads.append(r.payload or {})
    return ids, np.asarray(dense, dtype=np.float32), sparse, payloads


def _decode(page: tuple[list[str], np.ndarray, list[Any], list[Any]]) -> list[qe.Point]:
    ids, dense, sparse, payloads = page
    points = []
    for pid, vec, sv, payload in zip(ids, dense, sparse, payloads, strict=True):
        vector: dict[str, Any] = {DENSE: vec.tolist()}
        if sv is not None:
            vector[SPARSE] = qe.SparseVector(sv[0], sv[1])
        points.append(qe.Point(pid, vector, payload))
    return points


class EdgeMaintenance:
    """`eventrag serve`'s background upkeep of its Edge index: every `check_seconds`, optimize online
    (`optimize_online`) once at least `after_points` points, and at least `growth` times the optimized
    ones, were written since the last optimize.
    `after_points=0` turns online optimizing off (`eventrag optimize-index` still works offline)."""

    def __init__(self, index: EdgeIndex, *, after_points: int, growth: float, check_seconds: float) -> None:
        self.index = index
        self.after_points = after_points
        self.growth = growth
        self.check_seconds = check_seconds
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def due(self) -> bool:
        if self.after_points <= 0:
            return False
        optimized = int(self.index.read_meta().get("optimized_points", 0))
        return self.index.unoptimized_points() >= max(self.after_points, self.growth * optimized)

    def run_once(self) -> RebuildReport | None:
        if not self.due():
            return None
        try:
            report = optimize_online(self.index)
        except OptimizeAbandonedError as exc:
            self.failures += 1
            log.warning("online optimize abandoned (%s); the index keeps serving as it was", exc)
            return None
        self.failures = 0
        if report is not None:
            log.info(
                "optimized the index online: %d points, child %.1f s, serving process held for %.0f ms (load)"
                " + %.0f ms (retire)",
                report.points,
                report.child_seconds,
                report.load_seconds * 1000,
                report.retire_seconds * 1000,
            )
        return report

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("index maintenance failed; trying again later")
                self.failures += 1
            # After failures, wait longer (up to an hour) instead of rebuilding in a loop.
            self._stop.wait(min(self.check_seconds * 2 ** min(self.failures, 10), 3600.0))

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="eventrag-edge-maintenance", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self.index.closing.set()  # an optimize in progress gives up now
            self._thread.join(timeout)
            self.index.closing.clear()
            self._thread = None


# the child process ------------------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """A child left running by a killed server would optimize a copy nobody swaps in: on Linux the kernel
    kills it with its parent (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(3)


def main(argv: list[str]) -> int:
    staging, nice, parent, dimension = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    _die_with_parent(parent)
    os.nice(nice)
    # dimension 0: the parent copied the live shard's configuration into `staging`.
    shard = qe.EdgeShard.create(str(staging), shard_config(dimension)) if dimension else load_shard(staging)
    create_payload_indexes(shard)
    source = sys.stdin.buffer
    points = 0
    while (page := pickle.load(source)) is not None:
        batch = _decode(page)
        shard.update(qe.UpdateOperation.upsert_points(batch))
        points += len(batch)
    t0 = time.perf_counter()
    shard.optimize()
    optimize_seconds = time.perf_counter() - t0
    shard.close()  # flushes
    print(json.dumps({"points": points, "optimize_seconds": round(optimize_seconds, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
