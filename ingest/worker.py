"""The ingest worker: applies queued file events to the index so it always equals the latest version of
every file, under at-least-once, out-of-order delivery and crashes.

For each event:

1. *decide*: older than what is applied for the file (the order rule of `stores.events`) -> `superseded`,
   index untouched; already switched by an earlier attempt that died before finishing -> only clean up
   (or, when the switched revision lost points, write them again: what a reconcile repair asks for).
2. *prepare*: fetch, then fingerprint what the points would be made of (`ingest.revisions`). The file's
   active revision has that fingerprint -> *keep* it: no parsing, chunking, embedding or writing. Else
   parse and chunk (a type we cannot parse -> the file is `skipped`, its old chunks go).
3. *embed*: the chunks of the whole batch together, cache first (per workspace), the rest sorted by length
   (`ingest.worker_loop` carries the texts of a partial batch into the next round).
4. *write*: upsert the new revision's points (deterministic ids; invisible until step 5).
5. *switch*: a compare-and-set of the document record makes the new revision the searchable one, only if
   nothing newer was applied meanwhile; if something was, this event is superseded and its points go. A
   kept revision is switched by the same compare-and-set, which also requires the revision to be still
   the active one; its points are not written (citations take the version from the record).
6. *clean up*: delete the file's points of revisions older than this event (never the active one, never
   a newer one being written); mark the event done.

A crash anywhere before 5 leaves the old revision searchable and the event queued; a crash after 5 is
finished by the retry (step 1 sees the switch). Searches trust only the revision recorded in step 5.

The steps live in the modules of the data flow; `IngestWorker` runs a batch through them:

    ingest/plans.py      the `Plan` an event's steps carry, its `Outcome`, the worker's settings
    ingest/planning.py   1-2: decide and prepare (`Planner`)
    ingest/worker.py     3: embed, across the whole batch; the batch itself
    ingest/applying.py   4-6: write, switch, clean up (`Applier`), and finish an interrupted attempt
    ingest/keeping.py    4-6 for an unchanged file: switch and clean up, nothing written (`Keeper`)
    ingest/revisions.py  revision names and fingerprints; the clean-up of older revisions
    ingest/settling.py   every event's end: status, outbox rows, log line, metrics; retry or give up
"""

from __future__ import annotations

from collections.abc import Sequence

from ingest.applying import Applier
from ingest.keeping import Keeper
from ingest.parsing import parse
from ingest.planning import Parser, Planner
from ingest.plans import Action, FaultHook, Outcome, Plan, WorkerConfig, no_fault
from ingest.settling import OutboxHook, Settler, log_fields
from stores.embedding import embed_with_cache
from stores.events import EventKey
from stores.outbox import Outbound
from stores.ports import ContentSource, Embedder, EmbeddingCache, StateStore, VectorIndex
from stores.sparse import Bm25Encoder
from stores.telemetry import bind


class IngestWorker:
    """Runs batches of events through the steps above, each step over the whole batch at once."""

    def __init__(
        self,
        *,
        state: StateStore,
        index: VectorIndex,
        embedder: Embedder,
        sources: ContentSource,
        cache: EmbeddingCache | None = None,
        sparse: Bm25Encoder | None = None,
        config: WorkerConfig | None = None,
        fault: FaultHook | None = None,
        outbound: Outbound | None = None,
        on_outbox: OutboxHook | None = None,
        parser: Parser | None = None,
    ) -> None:
        self.state = state
        self.embedder = embedder
        self.cache = cache
        self.config = config or WorkerConfig()
        self.step: FaultHook = fault or no_fault
        self.settler = Settler(state=state, config=self.config, outbound=outbound, on_outbox=on_outbox)
        self.planner = Planner(
            state=state,
            index=index,
            embedder=embedder,
            sources=sources,
            sparse=sparse,
            config=self.config,
            parser=parser or parse,
            settler=self.settler,
            step=self.step,
        )
        self.applier = Applier(state=state, index=index, sparse=sparse, settler=self.settler, step=self.step)
        self.keeper = Keeper(state=state, index=index, settler=self.settler, step=self.step)

    # the batch ----------------------------------------------------------------------------------------
    def process(self, keys: Sequence[EventKey]) -> dict[EventKey, Outcome]:
        """Apply a batch of events (at most one per file). Returns an outcome per event key."""
        outcomes, plans = self.prepare(keys)
        ready, failed = self.embed(plans)
        outcomes.update(failed)
        outcomes.update(self.apply(ready))
        return outcomes

    def prepare(self, keys: Sequence[EventKey]) -> tuple[dict[EventKey, Outcome], list[Plan]]:
        """Steps 1 and 2 (`Planner.prepare`): the outcomes already settled, and the plans still to carry out."""
        return self.planner.prepare(keys)

    def embed(
        self, plans: Sequence[Plan], *, whole_batches_only: bool = False
    ) -> tuple[list[Plan], dict[EventKey, Outcome]]:
        """Step 3 for the plans (oldest first): returns the plans now ready to apply (every vector known) and
        the failures. With `whole_batches_only`, texts that would make a partial batch are left for a later
        call, and so are the plans they belong to (`WorkerLoop` carries them)."""
        to_embed = [p for p in plans if p.waiting_for_vectors]
        failed: dict[EventKey, Outcome] = {}
        if to_embed:
            try:
                self._embed(to_embed, whole_batches_only)
            except Exception as exc:
                for p in to_embed:
                    failed[p.event.key] = self.settler.failure(p.record, exc)
                    self.settler.started.pop(p.event.key, None)
        ready = [p for p in plans if p.event.key not in failed and not p.waiting_for_vectors]
        return ready, failed

    def _embed(self, plans: list[Plan], whole_batches_only: bool) -> None:
        """Embed the texts of `plans` (cache first); a plan gets its vectors once all of its texts have one
        (the vectors of a plan left half done wait on it for the next call)."""
        wanted = [(p, i) for p in plans for i in range(len(p.embed_texts)) if i not in p.partial]
        vectors, stats = embed_with_cache(
            self.embedder,
            self.cache,
            [p.embed_texts[i] for p, i in wanted],
            [p.token_counts[i] for p, i in wanted],
            self.config.embed_batch_size,
            scopes=[p.event.workspace for p, _ in wanted],
            spans=[p.unit_spans[i] for p, i in wanted],
            whole_batches_only=whole_batches_only,
            tokens=[p.tokens[i] if p.tokens else None for p, i in wanted],
        )
        for (p, i), vec, cached in zip(wanted, vectors, stats.cached, strict=True):
            if vec is not None:
                p.partial[i] = vec
                p.reused += int(cached)
        for p in plans:
            n = len(p.embed_texts)
            if len(p.partial) == n:
                p.vectors = [p.partial[i] for i in range(n)]
                p.embedded = n - p.reused
                p.partial = {}
                self.step("embedded", p.event)

    def apply(self, plans: Sequence[Plan]) -> dict[EventKey, Outcome]:
        """Steps 4 to 6 for plans whose vectors are known."""
        keeps = [p for p in plans if p.action is Action.KEEP]
        outcomes = self.keeper.keep(keeps) if keeps else {}
        for plan in plans:
            if plan.action is Action.FINISH:
                try:
                    with bind(**log_fields(plan.event)):
                        outcomes[plan.event.key] = self.applier.finish(plan)
                except Exception as exc:
                    outcomes[plan.event.key] = self.settler.failure(plan.record, exc)
        written = [p for p in plans if p.action in (Action.INDEX, Action.EMPTY)]
        if written:
            outcomes.update(self.applier.apply(written))
        for plan in plans:
            self.settler.started.pop(plan.event.key, None)
        return outcomes
