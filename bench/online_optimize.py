"""The Edge shard optimized while it serves (`stores.edge_rebuild`), measured in one run on synthetic points:

- hybrid p50/p99 before (the appendable segment scanned exactly), *during* the online optimize (queries
  back to back in one thread while a second thread writes a small batch every `write_every` seconds, as the
  worker would), the same load for `baseline_seconds` without an optimize (what the machine itself does to
  the figures), and after it;
- what the serving process waits for: a ticker thread that asks to run every millisecond records the
  longest gap, per step of the optimize (export, child, load, replay and swap, retire);
- the optimize's own figures (export, child, load, retire seconds) and whether every write made during it
  is in the new shard;
- recall@10 of dense queries after (HNSW) against before (exact);
- for comparison, what an in-process `optimize()` of `incremental` points written on top of the optimized
  shard holds the GIL for (the "small steps" alternative, docs/performance.md).
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import median, percentile
from bench.search import DIM, Terms, _points, query
from stores.ports import SearchMode


class _Ticker:
    """A thread that wants to run every millisecond: the gaps between its runs are how long the other
    threads of the process were kept from running (the GIL held, or the CPU taken)."""

    def __init__(self) -> None:
        self.gaps: list[tuple[float, float]] = []  # (when, gap seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            self.gaps.append((now, now - last - 0.001))
            last = now

    def __enter__(self) -> _Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def longest(self, start: float, end: float) -> float:
        """The longest gap that began between `start` and `end`. (A gap is recorded when the ticker runs
        again, which can be after the step that caused it ended: a call holding the GIL is followed by
        the same thread's Python code until the interpreter switches threads.)"""
        return max((g for t, g in self.gaps if start <= t - g - 0.001 <= end), default=0.0)


def _hybrid_latencies(index: Any, rng: np.random.Generator, n: int, terms: Terms) -> list[float]:
    out = []
    for _ in range(n):
        dense, sparse = query(rng, terms)
        t0 = time.perf_counter()
        index.search("bench", dense=dense, sparse=sparse, mode=SearchMode.HYBRID, limit=25)
        out.append(time.perf_counter() - t0)
    return out


def _ms(x: float) -> float:
    return round(x * 1000, 2)


def _clustered_points(rng: np.random.Generator, centers: np.ndarray, start: int, n: int, terms: Terms) -> list[Any]:
    """`bench.search`'s points with dense vectors drawn around a few hundred centres: like real embeddings,
    they have structure. (Independent random 384-d vectors are HNSW's worst case: after any optimize,
    in place or online, recall@10 on them was 0.39 to 0.42 at 20,000 points; on these, 1.0.)"""
    points = _points(rng, start, n, terms)
    vecs = centers[rng.integers(0, len(centers), n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [replace(p, dense=v.tolist()) for p, v in zip(points, vecs, strict=True)]


class _Load:
    """What a serving process does meanwhile: queries back to back in this thread (5 ms apart) and a
    writer thread upserting 20 points of another workspace every `write_every` seconds."""

    def __init__(self, index: Any, seed: int, write_every: float, terms: Terms) -> None:
        self.index = index
        self.terms = terms
        self.write_every = write_every
        self.rng = np.random.default_rng(seed)
        self.queries: list[float] = []
        self.writes: list[float] = []
        self.written = 0
        self._stop = threading.Event()
        self._seed = seed

    def _writer(self) -> None:
        wrng = np.random.default_rng(self._seed + 1)
        while not self._stop.wait(self.write_every):
            # Another workspace's files: the probes' exact answers (workspace "bench") stay the same.
            batch = [
                replace(p, workspace="other")
                for p in _points(wrng, 10_000_000 + self._seed * 100_000 + self.written, 20, self.terms)
            ]
            t0 = time.perf_counter()
            self.index.upsert(batch)
            self.writes.append(time.perf_counter() - t0)
            self.written += len(batch)

    def run(self, until: Any) -> None:
        writer = threading.Thread(target=self._writer)
        writer.start()
        try:
            while not until():
                dense, sparse = query(self.rng, self.terms)
                t0 = time.perf_counter()
                self.index.search("bench", dense=dense, sparse=sparse, mode=SearchMode.HYBRID, limit=25)
                self.queries.append(time.perf_counter() - t0)
                time.sleep(0.005)
        finally:
            self._stop.set()
            writer.join()

    def figures(self, prefix: str) -> dict[str, Any]:
        q, w = self.queries, self.writes
        return {
            f"{prefix}_queries": len(q),
            f"{prefix}_p50_ms": _ms(median(q)),
            f"{prefix}_p99_ms": _ms(percentile(q, 99)),
            f"{prefix}_max_ms": _ms(max(q)),
            f"{prefix}_over_100ms": sum(1 for d in q if d > 0.1),
            f"{prefix}_writes": len(w),
            f"{prefix}_write_p50_ms": _ms(median(w)) if w else None,
            f"{prefix}_write_max_ms": _ms(max(w)) if w else None,
        }


def measure_online(
    size: int,
    *,
    queries: int = 200,
    write_every: float = 0.25,
    baseline_seconds: float = 30.0,
    incremental: int = 10_000,
    seed: int = 11,
    terms: str = "text",
) -> dict[str, Any]:
    from stores.edge import EdgeIndex
    from stores.edge_rebuild import optimize_online

    rng = np.random.default_rng(seed)
    shape = Terms(terms)
    centers = rng.standard_normal((300, DIM)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="bench-online-") as tmp:
        marks: dict[str, float] = {}

        def mark(step: str) -> None:
            marks.setdefault(step, time.perf_counter())

        index = EdgeIndex(Path(tmp) / "edge", fault=mark)
        index.ensure_ready("bench/synthetic", DIM)
        for start in range(0, size, 2000):
            index.upsert(_clustered_points(rng, centers, start, min(2000, size - start), shape))
        before = _hybrid_latencies(index, rng, queries, shape)
        probes = []
        for _ in range(50):
            q = centers[rng.integers(0, len(centers))] + 0.35 * rng.standard_normal(DIM).astype(np.float32)
            probes.append((q / np.linalg.norm(q)).tolist())
        exact = [
            [h.point_id for h in index.search("bench", dense=q, sparse=None, mode=SearchMode.DENSE, limit=10)]
            for q in probes
        ]

        # The same load without an optimize first: what this machine does to the figures on its own.
        baseline = _Load(index, seed + 2, write_every, shape)
        with _Ticker() as quiet:
            t_end = time.perf_counter() + baseline_seconds
            baseline.run(lambda: time.perf_counter() > t_end)

        report: dict[str, Any] = {}
        failure: list[BaseException] = []

        def run() -> None:
            try:
                report["result"] = optimize_online(index)
            except BaseException as exc:
                failure.append(exc)

        during = _Load(index, seed + 3, write_every, shape)
        with _Ticker() as ticker:
            started = time.perf_counter()
            optimizer = threading.Thread(target=run)
            optimizer.start()
            during.run(lambda: not optimizer.is_alive())
            optimizer.join()
            finished = time.perf_counter()
        if failure:
            raise failure[0]
        result = report["result"]
        steps = [("export", started, marks.get("exported", finished))]
        steps.append(("child", marks.get("exported", started), marks.get("child-done", finished)))
        steps.append(("load", marks.get("child-done", started), marks.get("loaded", finished)))
        steps.append(("replay + swap", marks.get("loaded", started), marks.get("committed", finished)))
        steps.append(("retire", marks.get("committed", started), finished))
        stalls = {name: _ms(ticker.longest(a, b)) for name, a, b in steps}

        count_ok = index.points_count() == size + baseline.written + during.written
        after = _hybrid_latencies(index, rng, queries, shape)
        recall = [
            len(
                set(e)
                & {h.point_id for h in index.search("bench", dense=q, sparse=None, mode=SearchMode.DENSE, limit=10)}
            )
            / 10
            for q, e in zip(probes, exact, strict=True)
        ]

        # The alternative: optimize in place, in steps. One step = the points written since.
        for start in range(0, incremental, 2000):
            index.upsert(_clustered_points(rng, centers, 20_000_000 + start, min(2000, incremental - start), shape))
        with _Ticker() as step_ticker:
            t0 = time.perf_counter()
            index.optimize()
            step_seconds = time.perf_counter() - t0
        index.close()

    return {
        "chunks": size,
        "terms": terms,
        "before_p50_ms": _ms(median(before)),
        "before_p99_ms": _ms(percentile(before, 99)),
        **baseline.figures("baseline"),
        "baseline_longest_stall_ms": _ms(quiet.longest(0.0, float("inf"))),
        **during.figures("during"),
        "after_p50_ms": _ms(median(after)),
        "after_p99_ms": _ms(percentile(after, 99)),
        "recall_at_10": round(sum(recall) / len(recall), 3),
        "all_writes_kept": count_ok,
        "online_seconds": round(finished - started, 1),
        "export_s": result.export_seconds,
        "child_s": result.child_seconds,
        "child_optimize_s": result.optimize_seconds,
        "load_s": result.load_seconds,
        "swap_s": result.swap_seconds,
        "retire_s": result.retire_seconds,
        "replayed_writes": result.replayed,
        "longest_stall_ms": stalls,
        "in_place_step_points": incremental,
        "in_place_step_s": round(step_seconds, 1),
        "in_place_step_longest_stall_ms": _ms(step_ticker.longest(0.0, float("inf"))),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(measure_online(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000), indent=2))
