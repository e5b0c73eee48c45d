"""Retrieval quality on a BEIR-layout dataset, measured through the production ingest and search code.

The point is to measure what users get, so nothing here re-implements a step of the pipeline:

1. *load*: `corpus.jsonl` ({_id, title, text}), `queries.jsonl` ({_id, text}) and `qrels/<split>.tsv`
   (query-id, corpus-id, score; a header row) from a BEIR folder.
2. *index*: every document becomes a `file.created` event (Markdown: a "# title" heading line, a blank
   line, the text; file id = the BEIR `_id`, version 1) stored and queued exactly as a webhook would be,
   then the production `WorkerLoop` drains the queue: the worker's batches hold many documents, so
   embedding batches are sorted by length across documents as in production.
3. *search*: every query goes through `Searcher.search` with `group_by_document=True` (a document is
   scored by its best chunk) for its top 100 documents, once per search mode.
4. *score*: `app.evaluation.metrics.score_run`: nDCG@10, recall@100 and MRR@10 over the judged queries;
   and nDCG@10 again with the answer path's relevance bar applied (documents whose best passage an
   answer would not count as relevant are dropped), which shows what the bar costs.
5. *answers* (optional): every judged claim with rationales is asked through the production answer path
   (`Agent.answer`, extractive) and the answers scored by `app.evaluation.answers`.

The store is fresh and temporary for every run. This module does not build it: the caller passes a
`StoreFactory` (the CLI builds one from `app.container.build_container`), which keeps the import direction
of the code base (nothing in `retrieval/` imports `app/`).

Errors::

    EvaluationError
    └── DatasetFormatError   the folder is not a readable BEIR dataset
"""

from __future__ import annotations

import csv
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from app.evaluation.answers import AnswerScores, Rationale, evaluate_answers
from app.evaluation.jsonl import read_jsonl
from app.evaluation.metrics import RetrievalScores, score_run
from ingest.worker_loop import WorkerLoop
from retrieval.agent import Agent, Ask
from retrieval.search import Searcher, SearchRequest
from stores.events import EventStatus, EventType, FileEvent
from stores.ports import Hit, JobQueue, SearchMode, StateStore

if TYPE_CHECKING:
    from rich.progress import Progress

EVAL_WORKSPACE = "eval"
# The time every evaluation event says it was sent. A point's id comes from its revision, which names the
# event's position (its timestamp among it): a fixed time gives every run the same point ids, so scores
# that tie (BM25 often does; fused ranks too) are ordered the same way in every run, and a figure moves
# only when the code or the data does. (`datetime.now()` here moved hybrid nDCG@10 on SciFact train by up
# to 0.0017 between identical runs.)
EVAL_SENT_AT = datetime(2026, 1, 1, tzinfo=UTC)
RANK_DEPTH = 100  # recall@100 needs the top 100 documents


class EvaluationError(Exception):
    """Base of the evaluation errors."""


class DatasetFormatError(EvaluationError):
    """The folder is not a BEIR dataset we can read; the message names the file and the line."""


# the dataset ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BeirDocument:
    doc_id: str
    title: str
    text: str

    def markdown(self) -> str:
        """The file the evaluation sends: the title as a Markdown heading, so the parser finds it."""
        title = " ".join(self.title.split())  # a heading is one line
        return f"# {title}\n\n{self.text}" if title else self.text


@dataclass(slots=True)
class BeirDataset:
    """A corpus (in file order), the queries and the split's judgments (query id -> doc id -> grade)."""

    corpus: dict[str, BeirDocument]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @property
    def judged_queries(self) -> list[str]:
        """Ids of the queries with at least one judgment, in `queries.jsonl` order: the ones scored."""
        return [q for q in self.queries if self.qrels.get(q)]

    def subset(self, *, queries: int | None = None, documents: int | None = None) -> BeirDataset:
        """A deterministic smaller dataset.

        `queries`: the first N judged queries in file order. `documents`: every document judged for the
        kept queries (so no query loses its answers), then the first documents of the corpus in file
        order until there are N (more than N only when the judged documents alone exceed N).
        """
        kept_queries = self.judged_queries if queries is None else self.judged_queries[:queries]
        qrels = {q: dict(self.qrels[q]) for q in kept_queries}
        if documents is None:
            corpus = dict(self.corpus)
        else:
            wanted = {d for judged in qrels.values() for d in judged if d in self.corpus}
            for doc_id in self.corpus:
                if len(wanted) >= documents:
                    break
                wanted.add(doc_id)
            corpus = {d: doc for d, doc in self.corpus.items() if d in wanted}
        return BeirDataset(corpus=corpus, queries={q: self.queries[q] for q in kept_queries}, qrels=qrels)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    missing = " (a BEIR dataset has corpus.jsonl and queries.jsonl)"
    for _, row in read_jsonl(path, fields=["_id"], error=DatasetFormatError, missing=missing):
        yield row


def load_beir(folder: Path, split: str = "train") -> BeirDataset:
    """Read a BEIR folder. Raises DatasetFormatError naming the file (and line) that is wrong."""
    corpus: dict[str, BeirDocument] = {}
    for row in _read_jsonl(folder / "corpus.jsonl"):
        doc_id = str(row["_id"])
        corpus[doc_id] = BeirDocument(doc_id, str(row.get("title") or ""), str(row.get("text") or ""))
    queries = {str(row["_id"]): str(row.get("text") or "") for row in _read_jsonl(folder / "queries.jsonl")}

    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        found = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise DatasetFormatError(f"{qrels_path} is missing; splits found: {', '.join(found) or 'none'}")
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8", newline="") as fh:
        for line_no, fields in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if not fields or (line_no == 1 and fields[0] == "query-id"):
                continue  # BEIR's header row
            if len(fields) != 3:
                raise DatasetFormatError(f"{qrels_path}:{line_no}: expected query-id, corpus-id, score")
            query_id, doc_id, grade = fields
            try:
                qrels.setdefault(query_id, {})[doc_id] = int(grade)
            except ValueError as exc:
                raise DatasetFormatError(f"{qrels_path}:{line_no}: score {grade!r} is no integer") from exc
    unknown = sorted(set(qrels) - set(queries))
    if unknown:
        raise DatasetFormatError(
            f"{qrels_path}: {len(unknown)} judged query id(s) not in queries.jsonl, e.g. {unknown[0]}"
        )
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels)


# the store under test ---------------------------------------------------------------------------------


class EvalStore(Protocol):
    """What the evaluation needs of a built store: `app.container.Container` is one."""

    @property
    def state(self) -> StateStore: ...

    @property
    def queue(self) -> JobQueue: ...

    @property
    def loop(self) -> WorkerLoop | None: ...

    @property
    def searcher(self) -> Searcher: ...

    @property
    def agent(self) -> Agent: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class IndexVariant:
    """How the corpus is cut before embedding.

    `chunked`: the configured chunk size and overlap (what production does). `whole-document`: chunks as
    large as the embedding model reads whole (its window, less the title prefix) and no overlap: the
    closest the pipeline gets to one vector per document without truncating anything.
    """

    name: str
    whole_documents: bool = False


CHUNKED = IndexVariant("chunked")
WHOLE_DOCUMENT = IndexVariant("whole-document", whole_documents=True)

# Opens a fresh store in `data_dir` configured for `variant`; the caller closes it.
StoreFactory = Callable[[Path, IndexVariant], EvalStore]


def document_event(doc: BeirDocument, workspace: str = EVAL_WORKSPACE) -> FileEvent:
    """The webhook event a file source would send for one document (created, version 1, `EVAL_SENT_AT`)."""
    return FileEvent(
        event_id=f"eval-{doc.doc_id}",
        workspace=workspace,
        type=EventType.CREATED,
        file_id=doc.doc_id,
        path=f"{doc.doc_id}.md",
        timestamp=EVAL_SENT_AT,
        version=1,
        content_type="text/markdown",
        content=doc.markdown(),
    )


@contextmanager
def _task(progress: Progress | None, description: str, total: int) -> Iterator[Callable[[int], None]]:
    if progress is None:
        yield lambda n: None
        return
    task = progress.add_task(description, total=total)
    try:
        yield lambda n: progress.advance(task, n)
    finally:
        progress.update(task, completed=total)


def index_corpus(
    store: EvalStore, documents: Iterable[BeirDocument], *, progress: Progress | None = None, label: str = ""
) -> int:
    """Store and queue one event per document, then drain the queue with the production worker.

    Returns the number of documents indexed. Raises EvaluationError if any event did not end `done`.
    """
    docs = list(documents)
    if store.loop is None:
        raise EvaluationError("the evaluation needs the local queue and its worker loop")
    from ingest.receiver import record_and_enqueue

    for doc in docs:
        record_and_enqueue(document_event(doc), state=store.state, queue=store.queue)
    with _task(progress, f"indexing {label}".strip(), len(docs)) as advance:
        store.loop.drain(on_batch=advance)
    failed = []
    for doc in docs:
        record = store.state.get_event(EVAL_WORKSPACE, f"eval-{doc.doc_id}")
        if record is None or record.status is not EventStatus.DONE:
            why = f"{record.status.value}: {record.error}" if record is not None else "missing"
            failed.append(f"{doc.doc_id} ({why})")
    if failed:
        raise EvaluationError(f"{len(failed)} document(s) were not indexed, e.g. {failed[0]}")
    return len(docs)


def rank_hits(searcher: Searcher, query: str, mode: SearchMode, depth: int = RANK_DEPTH) -> list[Hit]:
    """The best chunk of each of the best `depth` documents for `query`, best first."""
    return searcher.search(SearchRequest(EVAL_WORKSPACE, query, top_k=depth, mode=mode, group_by_document=True))


def rank_documents(searcher: Searcher, query: str, mode: SearchMode, depth: int = RANK_DEPTH) -> list[str]:
    """The file ids of the best `depth` documents for `query`, each scored by its best chunk."""
    return [h.file_id for h in rank_hits(searcher, query, mode, depth)]


Run = dict[str, list[str]]  # query id -> ranked document ids


def run_queries(
    searcher: Searcher,
    dataset: BeirDataset,
    mode: SearchMode,
    *,
    progress: Progress | None = None,
    label: str = "",
    relevant: Callable[[Hit], bool] | None = None,
) -> tuple[Run, Run | None]:
    """A BEIR run (judged query id -> ranked document ids); with `relevant`, also the run an answer would
    see: the same ranking without the documents whose best passage fails the relevance bar."""
    judged = dataset.judged_queries
    run: Run = {}
    barred: Run | None = {} if relevant is not None else None
    with _task(progress, f"querying {label} {mode.value}".replace("  ", " "), len(judged)) as advance:
        for query_id in judged:
            hits = rank_hits(searcher, dataset.queries[query_id], mode)
            run[query_id] = [h.file_id for h in hits]
            if barred is not None and relevant is not None:
                barred[query_id] = [h.file_id for h in hits if relevant(h)]
            advance(1)
    return run, barred


# the report -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ModeResult:
    mode: str
    scores: RetrievalScores
    query_seconds: float
    # The same ranking after the answer path's relevance bar (EVENTRAG_MIN_SCORE / _MIN_KEYWORD_SCORE):
    # what the bar costs. None when the store has no answer path to take the bar from.
    with_bar: RetrievalScores | None = None


@dataclass(slots=True)
class VariantResult:
    variant: str
    documents: int
    chunks: int
    index_seconds: float
    modes: list[ModeResult] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AnswerRequest:
    """Score extractive answers too: `top_k` passages per answer, searched in `mode`."""

    rationales: dict[str, list[Rationale]]
    top_k: int = 5
    mode: SearchMode = SearchMode.HYBRID


@dataclass(slots=True)
class EvalReport:
    dataset: str
    split: str
    queries: int
    documents: int
    settings: dict[str, Any]
    variants: list[VariantResult] = field(default_factory=list)
    answers: AnswerScores | None = None
    wall_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[tuple[str, str, float, float, float, float | None]]:
        """(variant, mode, nDCG@10, recall@100, MRR@10, nDCG@10 with the relevance bar) per combination."""
        return [
            (
                v.variant,
                m.mode,
                m.scores.ndcg_at_10,
                m.scores.recall_at_100,
                m.scores.mrr_at_10,
                m.with_bar.ndcg_at_10 if m.with_bar is not None else None,
            )
            for v in self.variants
            for m in v.modes
        ]


def evaluate(
    dataset: BeirDataset,
    open_store: StoreFactory,
    *,
    modes: Sequence[SearchMode] = (SearchMode.DENSE, SearchMode.SPARSE, SearchMode.HYBRID),
    variants: Sequence[IndexVariant] = (CHUNKED,),
    progress: Progress | None = None,
    name: str = "",
    split: str = "train",
    settings: dict[str, Any] | None = None,
    answers: AnswerRequest | None = None,
) -> EvalReport:
    """Index `dataset` into a fresh temporary store per variant and score every mode on it; with
    `answers`, also score the extractive answers to the claims with rationales (on the first variant)."""
    started = time.perf_counter()
    report = EvalReport(
        dataset=name,
        split=split,
        queries=len(dataset.judged_queries),
        documents=len(dataset.corpus),
        settings=dict(settings or {}),
    )
    for variant in variants:
        with tempfile.TemporaryDirectory(prefix="eventrag-eval-") as tmp:
            store = open_store(Path(tmp), variant)
            try:
                t0 = time.perf_counter()
                indexed = index_corpus(store, dataset.corpus.values(), progress=progress, label=variant.name)
                result = VariantResult(
                    variant=variant.name,
                    documents=indexed,
                    chunks=sum(d.chunk_count for d in _documents(store.state)),
                    index_seconds=round(time.perf_counter() - t0, 1),
                )
                for mode in modes:
                    t0 = time.perf_counter()
                    run, barred = run_queries(
                        store.searcher,
                        dataset,
                        mode,
                        progress=progress,
                        label=variant.name,
                        relevant=store.agent.answerer.relevant,
                    )
                    seconds = round(time.perf_counter() - t0, 1)
                    with_bar = score_run(barred, dataset.qrels) if barred is not None else None
                    result.modes.append(ModeResult(mode.value, score_run(run, dataset.qrels), seconds, with_bar))
                report.variants.append(result)
                if answers is not None and report.answers is None:
                    report.answers = answer_claims(store, dataset, answers, progress=progress)
            finally:
                store.close()
    report.wall_seconds = round(time.perf_counter() - started, 1)
    return report


def answer_claims(
    store: EvalStore, dataset: BeirDataset, request: AnswerRequest, *, progress: Progress | None = None
) -> AnswerScores:
    """Every judged claim with rationales, asked as a user would (extractive), its answer scored."""

    def ask(claim: str) -> Any:
        return store.agent.answer(Ask(EVAL_WORKSPACE, claim, top_k=request.top_k, mode=request.mode, extractive=True))

    claims = {q: dataset.queries[q] for q in dataset.judged_queries}
    scores, _ = evaluate_answers(
        ask, claims, request.rationales, top_k=request.top_k, mode=request.mode.value, progress=progress
    )
    return scores


def _documents(state: StateStore) -> Iterator[Any]:
    offset = 0
    while page := state.list_documents(EVAL_WORKSPACE, limit=1000, offset=offset):
        yield from page
        offset += len(page)
