"""The worker loop of the embedded queue: claims batches, hands them to `IngestWorker`, settles the jobs.

Full batches: the embedding model is fastest on full, length-sorted batches, but events arrive in claims of
`batch_size` events whose chunks rarely fill whole batches. So while claims come back full (more work is
queued), only whole embedding batches are embedded; the plans whose texts would make the last, partial
batch are *carried* (with their jobs, still leased) into the next round, where they are embedded first. A
short claim, a plan carried `MAX_CARRY_ROUNDS` times, or a lease half gone embeds everything. Within the
texts embedded, `stores.embedding.padded_batches` may still end a batch early where the padding it saves
pays for the extra model call.

Pipelined: while one claim is embedded and written, a helper thread claims and prepares the next (fetch,
parse, chunk: work that needs no model runs beside it, not before it). The queue never hands out two jobs
of one file at once, so the claim prepared ahead never holds a file of the claim being written.

A carried job stays leased by this queue instance (leases belong to their consumer): no other event of its
file is claimed meanwhile, and the switch's compare-and-set guards the rest. If the worker dies with plans
carried, what it carried dies with it: `forget_carried` (called by the start-up recovery) drops them, and
the recovery gives their leases back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ingest.plans import Outcome, Plan
from ingest.receiver import requeue_received
from ingest.worker import IngestWorker
from stores.events import EventKey
from stores.ports import Job, JobQueue

log = logging.getLogger(__name__)

MAX_CARRY_ROUNDS = 4  # a plan waits at most this many rounds for a full embedding batch


@dataclass(slots=True)
class _Carried:
    job: Job
    plan: Plan
    claimed_at: float


@dataclass(slots=True)
class _Claim:
    """A claim's jobs, prepared: the outcomes its preparation settled, the plans still to embed and apply."""

    jobs: list[Job]
    outcomes: dict[EventKey, Outcome]
    plans: list[Plan]
    at: float  # when it was claimed (time.monotonic)


@dataclass(slots=True)
class _Carry:
    """Plans waiting for a full embedding batch, with their (still leased) jobs, oldest first."""

    waiting: list[_Carried] = field(default_factory=list)
    rounds: int = 0

    @property
    def plans(self) -> list[Plan]:
        return [c.plan for c in self.waiting]

    def pop(self, key: EventKey) -> Job:
        for n, c in enumerate(self.waiting):
            if c.plan.event.key == key:
                del self.waiting[n]
                return c.job
        raise KeyError(key)


class WorkerLoop:
    """Drains the local queue in background threads (`eventrag serve`), or on demand (`drain`)."""

    def __init__(
        self,
        worker: IngestWorker,
        queue: JobQueue,
        *,
        batch_size: int = 8,
        lease_seconds: float = 600.0,
        poll_seconds: float = 0.5,
        threads: int = 1,
        retention: timedelta = timedelta(days=7),
    ) -> None:
        self.worker = worker
        self.queue = queue
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.n_threads = threads
        self.retention = retention
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._local = threading.local()  # each thread carries its own plans
        self._carries: list[_Carry] = []
        self._carries_lock = threading.Lock()
        self._last_purge = datetime.min.replace(tzinfo=UTC)
        self._last_sweep = datetime.min.replace(tzinfo=UTC)
        self._maintenance = threading.Lock()

    def run_once(self) -> int:
        """Claim one batch, apply what is ready and settle it; returns how many jobs were claimed."""
        return self._finish(self._claim())

    def _claim(self) -> _Claim:
        """Steps 1 and 2 of a new claim (the part of a batch that needs no model)."""
        jobs = self.queue.claim(self.batch_size, self.lease_seconds)
        at = time.monotonic()
        if not jobs:
            return _Claim([], {}, [], at)
        by_key = {j.key: j for j in jobs}
        outcomes, plans = self.worker.prepare(list(by_key))
        return _Claim(jobs, outcomes, plans, at)

    def _finish(self, claim: _Claim) -> int:
        """Settle what `claim`'s preparation settled; embed and apply its plans with those carried."""
        carry = self._carry()
        if not claim.jobs and not carry.waiting:
            return 0
        by_key = {j.key: j for j in claim.jobs}
        self._settle([(by_key[key], outcome) for key, outcome in claim.outcomes.items()])
        carry.waiting.extend(_Carried(by_key[p.event.key], p, claim.at) for p in claim.plans)
        now = time.monotonic()
        oldest = min((c.claimed_at for c in carry.waiting), default=now)
        final = (
            len(claim.jobs) < self.batch_size
            or carry.rounds >= MAX_CARRY_ROUNDS
            # A carried job must be settled well within its lease, or another claim could run it too.
            or now - oldest > self.lease_seconds / 2
        )
        ready, failed = self.worker.embed(carry.plans, whole_batches_only=not final)
        applied = self.worker.apply(ready)
        self._settle([(carry.pop(key), outcome) for key, outcome in {**failed, **applied}.items()])
        carry.rounds = carry.rounds + 1 if carry.waiting else 0
        return len(claim.jobs)

    def _hand_back(self, claim: _Claim) -> None:
        """A claim prepared for a round that will not come: what it settled is settled, the rest is given
        back now (its events are prepared again when claimed again), not after its lease."""
        by_key = {j.key: j for j in claim.jobs}
        self._settle([(by_key[key], outcome) for key, outcome in claim.outcomes.items()])
        for plan in claim.plans:
            self.queue.release(by_key[plan.event.key], 0)

    def _carry(self) -> _Carry:
        carry: _Carry | None = getattr(self._local, "carry", None)
        if carry is None:
            carry = self._local.carry = _Carry()
            with self._carries_lock:
                self._carries.append(carry)
        return carry

    def forget_carried(self) -> int:
        """Drop the plans carried for a next round without settling their jobs (the worker died: the
        recovery gives their leases back). Returns how many."""
        with self._carries_lock:
            n = sum(len(c.waiting) for c in self._carries)
            for carry in self._carries:
                carry.waiting.clear()
                carry.rounds = 0
        return n

    def _settle(self, settled: list[tuple[Job, Outcome]]) -> None:
        self.queue.ack_many([job for job, outcome in settled if outcome.settled])
        for job, outcome in settled:
            if not outcome.settled:
                self.queue.release(job, outcome.delay)

    def drain(self, max_batches: int | None = None, *, on_batch: Callable[[int], None] | None = None) -> int:
        """Process until nothing is claimable now (delayed retries are left for later), pipelined as the
        background threads are (`_Ahead`). `on_batch` hears how many jobs each batch claimed (progress)."""
        total = batches = 0
        with _Ahead(self) as ahead:
            while max_batches is None or batches < max_batches:
                claim = ahead.take()
                if not claim.jobs and batches and not self._carry().waiting:
                    # Perhaps claimed while the last batch was still being written: what that released since
                    # (a retry due now) was not claimable then.
                    claim = self._claim()
                if max_batches is None or batches + 1 < max_batches:
                    ahead.prepare_next(claim)
                n = self._finish(claim)
                if n == 0:
                    break
                total += n
                batches += 1
                if on_batch is not None:
                    on_batch(n)
        return total

    def notify(self) -> None:
        """A new job was queued: wake an idle thread now instead of at the next poll."""
        self._wake.set()

    def _loop(self) -> None:
        with _Ahead(self) as ahead:
            while not self._stop.is_set():
                try:
                    self._maybe_purge()
                    claim = ahead.take()
                    ahead.prepare_next(claim)
                    n = self._finish(claim)
                except Exception:
                    log.exception("worker loop error; continuing")
                    n = 0
                if n == 0:
                    self._wake.wait(self.poll_seconds)
                    self._wake.clear()

    def _maybe_purge(self) -> None:
        """Hourly: forget event ids past the retention. Every minute: queue events stored but never queued
        (another process sharing the state file may have died between the two writes)."""
        if not self._maintenance.acquire(blocking=False):
            return  # another worker thread is at it
        try:
            now = datetime.now(UTC)
            if now - self._last_sweep > timedelta(minutes=1):
                self._last_sweep = now
                if requeue_received(self.worker.state, self.queue):
                    self._wake.set()
            if now - self._last_purge > timedelta(hours=1):
                self._last_purge = now
                purged = self.worker.state.purge_events(now - self.retention)
                if purged:
                    log.info("forgot %d event id(s) older than %s", purged, self.retention)
        finally:
            self._maintenance.release()

    def start(self) -> None:
        self._stop.clear()
        for i in range(self.n_threads):
            t = threading.Thread(target=self._loop, name=f"eventrag-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        # Jobs carried for a next round that will not come: hand them back now, not after their lease.
        with self._carries_lock:
            for carry in self._carries:
                for c in carry.waiting:
                    self.queue.release(c.job, 0)
                carry.waiting.clear()
                carry.rounds = 0


class _Ahead:
    """The next claim, claimed and prepared (fetch, parse, chunk) in a helper thread while this thread
    embeds and writes the current one: the work that needs no model runs beside the model's calls, not
    between them. Only when the current claim gives the model work: a claim of unchanged files (a re-sync)
    is all Python, which two threads only slow down (they take turns on the GIL). On exit, a claim
    prepared for a round that will not come is handed back (`WorkerLoop._hand_back`)."""

    def __init__(self, loop: WorkerLoop) -> None:
        self.loop = loop
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="eventrag-prepare")
        self._next: Future[_Claim] | None = None

    def __enter__(self) -> _Ahead:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._next is not None:
                self.loop._hand_back(self.take())
        finally:
            self._pool.shutdown()

    def take(self) -> _Claim:
        """The claim prepared ahead, or a claim now."""
        if self._next is None:
            return self.loop._claim()
        ahead, self._next = self._next, None
        return ahead.result()

    def prepare_next(self, current: _Claim) -> None:
        if current.jobs and (any(p.waiting_for_vectors for p in current.plans) or self.loop._carry().waiting):
            self._next = self._pool.submit(self.loop._claim)
