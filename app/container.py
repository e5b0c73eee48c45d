"""The composition root: the one place that turns settings into adapters and wires them together.

Every port gets exactly one adapter here, chosen by a `match` on the configured backend; optional
dependencies (boto3) are imported inside the branch that needs them. Nothing here runs at import time.

The write path (`ingest`: the webhook verifier, the content sources, the worker and its loop) is built on
first use, so a process that only answers questions (the Lambda API function serving `/query`) never
imports it: see `Container.write_path`.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from app.outbound.subscriptions import StoredLookup, Subscribers, build_subscribers, secret_lookup
from app.settings import QueueBackend, Settings, StateBackend, read_ssm_parameter
from retrieval.agent import Agent, AgentConfig
from retrieval.answering import Answerer
from retrieval.llm import ChatModel, OpenAIChatModel
from retrieval.search import Searcher
from stores.embedding import SentenceTransformerEmbedder, SqliteEmbeddingCache
from stores.errors import StoreLockedError
from stores.outbox import Delivery, OutboxStore, SubscriptionStore
from stores.ports import Embedder, EmbeddingCache, JobQueue, StateStore, VectorIndex
from stores.qdrant import QdrantIndex, open_qdrant
from stores.sessions import SessionStore
from stores.sparse import Bm25Encoder
from stores.sqlite.database import SqliteDatabase
from stores.sqlite.outbox import SqliteOutboxStore
from stores.sqlite.queue import SqliteJobQueue
from stores.sqlite.sessions import SqliteSessionStore
from stores.sqlite.state import SqliteStateStore
from stores.sqlite.subscriptions import SqliteSubscriptionStore

if TYPE_CHECKING:
    from app.outbound.relay import OutboundRelay, RelayLoop
    from ingest.receiver import WebhookVerifier
    from ingest.sources import ContentRouter
    from ingest.webhook_body import BodyLimits
    from ingest.worker import IngestWorker, WorkerLoop
    from stores.sqs import SqsDeliveryQueue

log = logging.getLogger(__name__)

# A hook the crash tests use to kill the worker between steps (`ingest.worker.FaultHook`).
FaultHook = Callable[[str, Any], None]

DEFAULT_WORKSPACE = "default"


@dataclass
class WritePath:
    """The ingest side of a container: built on first use (`Container.write_path`)."""

    sources: ContentRouter
    verifier: WebhookVerifier
    limits: BodyLimits
    worker: IngestWorker
    loop: WorkerLoop | None


@dataclass
class Container:
    settings: Settings
    state: StateStore
    queue: JobQueue
    index: VectorIndex
    embedder: Embedder
    sparse: Bm25Encoder
    cache: EmbeddingCache | None
    searcher: Searcher
    answerer: Answerer
    agent: Agent
    sessions: SessionStore
    chat: ChatModel | None
    webhook_secrets: dict[str, list[str]]
    outbox: OutboxStore | None = None
    subscribers: Subscribers = field(default_factory=Subscribers)
    delivery_queue: SqsDeliveryQueue | None = None
    # Subscribers created through the API (POST /webhook-subscriptions), and the cached view the worker and
    # the relay read them through.
    subscription_store: SubscriptionStore | None = None
    stored_subscriptions: StoredLookup | None = None
    generated_secret: str | None = None
    fault: FaultHook | None = None
    aws: dict[str, Any] | None = None
    _closers: list[Any] = field(default_factory=list)
    _write: WritePath | None = None
    # Two first requests (a webhook and a retry, say) must not build two workers.
    _write_lock: threading.Lock = field(default_factory=threading.Lock)
    _relay: OutboundRelay | None = None
    _relay_loop: RelayLoop | None = None

    @property
    def relay(self) -> OutboundRelay | None:
        """Sends outbox deliveries (built on first use); None without an outbox."""
        with self._write_lock:
            if self._relay is None and self.outbox is not None:
                from app.outbound.relay import OutboundRelay

                secret_for = secret_lookup(self.subscribers, self.stored_subscriptions)
                self._relay = OutboundRelay(self.outbox, secret_for, self.settings.outbound)
                self._closers.append(self._relay.close)
            return self._relay

    @property
    def relay_loop(self) -> RelayLoop | None:
        """The in-process relay of `eventrag serve` (the embedded queue); on AWS a Lambda drains the outbox."""
        if self.settings.queue_backend is not QueueBackend.LOCAL or self.relay is None:
            return None
        if self._relay_loop is None:
            from app.outbound.relay import RelayLoop

            self._relay_loop = RelayLoop(self.relay, poll_seconds=self.settings.outbound.poll_seconds)
        return self._relay_loop

    def outbox_written(self, deliveries: Sequence[Delivery]) -> None:
        """The worker wrote deliveries: wake the local relay (on AWS: queue them for the outbound function)."""
        if self._relay_loop is not None:
            self._relay_loop.notify()
        if self.delivery_queue is not None:
            self.delivery_queue.send([d.delivery_id for d in deliveries])

    @property
    def write_path(self) -> WritePath:
        with self._write_lock:
            if self._write is None:
                self._write = build_write_path(self)
            return self._write

    @property
    def sources(self) -> ContentRouter:
        return self.write_path.sources

    @property
    def verifier(self) -> WebhookVerifier:
        return self.write_path.verifier

    @property
    def limits(self) -> BodyLimits:
        return self.write_path.limits

    @property
    def worker(self) -> IngestWorker:
        return self.write_path.worker

    @property
    def loop(self) -> WorkerLoop | None:
        """The in-process worker loop of the embedded queue; None with SQS (the Lambda worker drains it)."""
        if self.settings.queue_backend is not QueueBackend.LOCAL:
            return None
        return self.write_path.loop

    def recover(self) -> None:
        """Start-up recovery: give back the leases of consumers that are gone (never a live process's),
        queue events stored long enough ago but never queued."""
        released = self.queue.release_dead_leases()
        if released:
            log.info("re-queued %d job(s) that were in flight when their process stopped", released)
        from ingest.receiver import requeue_received

        requeue_received(self.state, self.queue)

    def close(self) -> None:
        if self._write is not None and self._write.loop is not None:
            self._write.loop.stop()
        if self._relay_loop is not None:
            self._relay_loop.stop()
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:  # closing is best effort; say so instead of hiding it
                log.exception("error while closing %r", closer)
        self._closers.clear()


def local_webhook_secrets(settings: Settings) -> tuple[dict[str, list[str]], str | None]:
    """Configured secrets, or for a single local user a generated one kept in the data dir.

    Returns (secrets by workspace, the generated secret if one was created or loaded).
    """
    if settings.webhook_secrets:
        return {ws: [s.get_secret_value() for s in items] for ws, items in settings.webhook_secrets.items()}, None
    path = settings.generated_secret_path
    if path.exists():
        secret = json.loads(path.read_text())[DEFAULT_WORKSPACE]
    else:
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({DEFAULT_WORKSPACE: secret}, fh)
    return {DEFAULT_WORKSPACE: [secret]}, secret


def with_remote_secrets(settings: Settings) -> Settings:
    """Settings with webhook secrets and API keys read from SSM Parameter Store when parameter names are
    configured (the AWS deployment): the template and the function environment hold names, never values."""
    update: dict[str, Any] = {}
    if settings.webhook_secrets_ssm_parameter:
        raw = Settings.parse_webhook_secrets(read_ssm_parameter(settings.webhook_secrets_ssm_parameter))
        update["webhook_secrets"] = {ws: [SecretStr(s) for s in items] for ws, items in raw.items()}
    if settings.api_keys_ssm_parameter:
        update["api_keys"] = Settings.parse_api_keys(read_ssm_parameter(settings.api_keys_ssm_parameter))
    if settings.outbound_webhooks_ssm_parameter:
        try:
            subscribers = read_ssm_parameter(settings.outbound_webhooks_ssm_parameter)
        except Exception as exc:
            # Optional: a deployment without subscribers has no such parameter.
            if type(exc).__name__ != "ParameterNotFound":
                raise
            log.info(
                "no outbound webhook subscribers (SSM parameter %s not found)", settings.outbound_webhooks_ssm_parameter
            )
        else:
            update["outbound_webhooks"] = Settings.parse_outbound_webhooks(subscribers)
    return settings.model_copy(update=update) if update else settings


def build_state_and_queue(settings: Settings, *, aws: dict[str, Any] | None = None) -> tuple[StateStore, JobQueue]:
    """Only the state store and the job queue, chosen as in `build_container`: for what needs neither the
    index nor the model, i.e. the S3 notification mapper (a 512 MB function that must not load torch) and
    `eventrag redrive`. The caller closes the state store."""
    match settings.state_backend:
        case StateBackend.SQLITE:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            state: StateStore = SqliteStateStore(SqliteDatabase(settings.state_path))
        case StateBackend.DYNAMODB:
            from stores.dynamodb.state import DynamoStateStore

            state = DynamoStateStore.from_settings(settings, client=(aws or {}).get("dynamodb"))
    match settings.queue_backend:
        case QueueBackend.LOCAL:
            assert isinstance(state, SqliteStateStore)
            queue: JobQueue = SqliteJobQueue(state.db)
        case QueueBackend.SQS:
            from stores.sqs import SqsJobQueue

            queue = SqsJobQueue.from_settings(settings, client=(aws or {}).get("sqs"))
    return state, queue


def build_index(settings: Settings, qdrant_client: Any | None = None) -> QdrantIndex:
    """The vector index of `settings` (or over an injected client), without checking its model."""
    if qdrant_client is None:
        url, api_key = settings.resolved_qdrant()
        try:
            qdrant_client = open_qdrant(url=url, api_key=api_key, path=str(settings.qdrant_path))
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise StoreLockedError(
                    f"the local index at {settings.qdrant_path} is open in another process (probably"
                    " `eventrag serve`). Talk to that server (the CLI does so when it is running), stop it, or"
                    " use a Qdrant server (EVENTRAG_QDRANT_URL) for concurrent access."
                ) from exc
            raise
    return QdrantIndex(qdrant_client, settings.qdrant_collection)


def build_outbox(
    settings: Settings, *, aws: dict[str, Any] | None = None
) -> tuple[OutboxStore, SqsDeliveryQueue | None, SubscriptionStore]:
    """The AWS outbox (DynamoDB), the queue that hands its deliveries to the outbound function and the
    API-created subscribers: all that function needs, so it never loads the index or the model."""
    from stores.dynamodb.common import default_client
    from stores.dynamodb.outbox import DynamoOutboxStore
    from stores.dynamodb.subscriptions import DynamoSubscriptionStore
    from stores.sqs import SqsDeliveryQueue

    ddb = (aws or {}).get("dynamodb") or default_client("dynamodb")
    outbox = DynamoOutboxStore(
        ddb, table=settings.dynamodb_outbox_table, retention=timedelta(days=settings.outbound.retention_days)
    )
    queue = None
    if settings.outbound_queue_url:
        queue = SqsDeliveryQueue((aws or {}).get("sqs") or default_client("sqs"), settings.outbound_queue_url)
    return outbox, queue, DynamoSubscriptionStore(ddb, table=settings.dynamodb_subscriptions_table)


def build_container(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    chat: ChatModel | None = None,
    qdrant_client: Any | None = None,
    fault: FaultHook | None = None,
    aws: dict[str, Any] | None = None,
) -> Container:
    """Build every adapter from `settings`. Tests inject a shared embedder, a chat model or clients."""
    closers: list[Any] = []
    settings = with_remote_secrets(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    secrets_by_ws, generated = (
        local_webhook_secrets(settings)
        if settings.state_backend is StateBackend.SQLITE
        else (
            {ws: [s.get_secret_value() for s in items] for ws, items in settings.webhook_secrets.items()},
            None,
        )
    )
    check_source_root(settings, secrets_by_ws)

    try:
        return _assemble(
            settings,
            secrets_by_ws,
            generated,
            closers,
            embedder=embedder,
            chat=chat,
            qdrant_client=qdrant_client,
            fault=fault,
            aws=aws,
        )
    except BaseException:
        # Whatever was opened before the failure (the state file, the queue's lease lock, the index) is
        # closed again: a refused start leaves nothing locked.
        for closer in reversed(closers):
            try:
                closer()
            except Exception:
                log.exception("error while closing %r after a failed start", closer)
        raise


def _assemble(
    settings: Settings,
    secrets_by_ws: dict[str, list[str]],
    generated: str | None,
    closers: list[Any],
    *,
    embedder: Embedder | None,
    chat: ChatModel | None,
    qdrant_client: Any | None,
    fault: FaultHook | None,
    aws: dict[str, Any] | None,
) -> Container:
    state, queue = build_state_and_queue(settings, aws=aws)
    closers.append(state.close)
    if isinstance(queue, SqliteJobQueue):
        closers.append(queue.close)
    sessions: SessionStore
    outbox: OutboxStore | None = None
    delivery_queue: SqsDeliveryQueue | None = None
    subscription_store: SubscriptionStore | None = None
    if isinstance(state, SqliteStateStore):
        agent_settings = settings.agent
        sessions = SqliteSessionStore(
            state.db, max_turns=agent_settings.session_max_turns, max_bytes=agent_settings.session_max_bytes
        )
        outbox = SqliteOutboxStore(state.db)
        subscription_store = SqliteSubscriptionStore(state.db)
    else:
        from stores.dynamodb.sessions import DynamoSessionStore

        sessions = DynamoSessionStore.from_settings(settings, client=(aws or {}).get("dynamodb"))
        outbox, delivery_queue, subscription_store = build_outbox(settings, aws=aws)

    index = build_index(settings, qdrant_client)
    closers.append(index.close)

    embedder = embedder or SentenceTransformerEmbedder(
        settings.embedding_model, batch_size=settings.embedding_batch_size
    )
    index.ensure_ready(embedder.model_id, embedder.dimension)

    cache: EmbeddingCache | None = None
    if settings.state_backend is StateBackend.SQLITE:
        sqlite_cache = SqliteEmbeddingCache(settings.embedding_cache_path)
        closers.append(sqlite_cache.close)
        cache = sqlite_cache

    sparse = Bm25Encoder()

    if chat is None and settings.llm_model:
        key = (
            read_ssm_parameter(settings.openai_api_key_ssm_parameter) if settings.openai_api_key_ssm_parameter else None
        )
        chat = OpenAIChatModel(settings.llm_model, timeout=settings.llm_timeout_seconds, api_key=key)

    searcher = Searcher(index=index, state=state, embedder=embedder, sparse=sparse)
    answerer = Answerer(
        searcher=searcher,
        chat=chat,
        terms=sparse,
        min_similarity=settings.min_score,
        min_keyword_score=settings.min_keyword_score,
    )
    agent = Agent(
        answerer=answerer,
        chat=chat,
        state=state,
        index=index,
        count_tokens=embedder.count_tokens,
        config=AgentConfig(
            tools=settings.agent.tools,
            max_steps=settings.agent.max_steps,
            time_budget_seconds=settings.agent.time_budget_seconds,
            history_tokens=settings.agent.history_tokens,
            top_k_max=settings.top_k_max,
        ),
    )
    subscribers = build_subscribers(settings)
    stored = StoredLookup(subscription_store) if subscription_store is not None else None
    if stored is not None:
        subscribers.outbound.stored = stored.subscriptions
    return Container(
        settings=settings,
        state=state,
        queue=queue,
        index=index,
        embedder=embedder,
        sparse=sparse,
        cache=cache,
        searcher=searcher,
        answerer=answerer,
        agent=agent,
        sessions=sessions,
        chat=chat,
        webhook_secrets=secrets_by_ws,
        outbox=outbox,
        subscribers=subscribers,
        delivery_queue=delivery_queue,
        subscription_store=subscription_store,
        stored_subscriptions=stored,
        generated_secret=generated,
        fault=fault,
        aws=aws,
        _closers=closers,
    )


def check_source_root(settings: Settings, secrets_by_ws: dict[str, list[str]]) -> None:
    """Refuse at start-up what `ingest.sources.WorkspaceFolders` would refuse on the first webhook: one
    plain folder shared by several workspaces (each could read the others' files)."""
    root = settings.source_root
    if isinstance(root, str) and "{workspace}" not in root and len(secrets_by_ws) > 1:
        names = ", ".join(sorted(secrets_by_ws))
        raise ValueError(
            f"EVENTRAG_SOURCE_ROOT is one folder ({root}) but {len(secrets_by_ws)} workspaces are configured"
            f" ({names}): each would read the others' files. Use a path with {{workspace}} in it, or a map"
            ' such as {"acme": "/srv/acme"}.'
        )


def build_write_path(c: Container) -> WritePath:
    """The ingest side of `c`: content sources, the webhook verifier, the worker and (with the embedded
    queue) its loop. Imported and built here, on first use, so the read path never loads it."""
    from ingest.parsing import ParseLimits, parse
    from ingest.receiver import WebhookVerifier
    from ingest.sandbox import ParserPool
    from ingest.sources import ContentRouter, WorkspaceFolders
    from ingest.sources_url import FetchPolicy, UrlSource
    from ingest.webhook_body import BodyLimits
    from ingest.worker import IngestWorker, Parser, WorkerConfig, WorkerLoop

    settings = c.settings
    folder = WorkspaceFolders(settings.source_root, c.webhook_secrets) if settings.source_root else None
    m = settings.metadata
    body_limits = BodyLimits(
        max_metadata_keys=m.max_keys,
        max_metadata_value_chars=m.max_value_chars,
        max_metadata_list_items=m.max_list_items,
        max_metadata_bytes=m.max_bytes,
        future_tolerance_seconds=settings.webhook_tolerance_seconds,
    )
    extra: dict[str, Any] = {}
    if settings.source_bucket:
        from ingest.sources_s3 import S3Source

        extra["s3"] = S3Source(client=(c.aws or {}).get("s3"), bucket=settings.source_bucket)
    # s3:// content is the S3 event source's: only its workspace may point at it, so one tenant's webhook
    # cannot read another tenant's objects from the shared bucket.
    f = settings.fetch
    url_source = None
    if f.allowed_urls:
        url_source = UrlSource(
            FetchPolicy.from_prefixes(
                f.allowed_urls,
                allow_private_addresses=f.allow_private_addresses,
                allowed_networks=tuple(ipaddress.ip_network(n, strict=False) for n in f.allowed_networks),
                allow_http=f.allow_http,
                max_bytes=f.max_bytes,
                connect_timeout_seconds=f.connect_timeout_seconds,
                read_timeout_seconds=f.read_timeout_seconds,
                total_timeout_seconds=f.total_timeout_seconds,
                max_redirects=f.max_redirects,
                authorization={host: value.get_secret_value() for host, value in f.authorization.items()},
            )
        )
        c._closers.append(url_source.close)
    sources = ContentRouter(folder=folder, url=url_source, extra=extra, scheme_workspaces={"s3": settings.s3_workspace})
    verifier = WebhookVerifier(c.webhook_secrets, settings.webhook_tolerance_seconds)

    p = settings.parsing
    limits = ParseLimits(max_bytes=p.max_file_bytes, max_rows=p.max_rows, max_chars=p.max_chars)
    parser: Parser
    if p.sandbox:
        pool = ParserPool(
            timeout_seconds=p.timeout_seconds,
            max_memory_mb=p.max_memory_mb,
            limits=limits,
            processes=settings.worker.threads,
        )
        c._closers.append(pool.close)
        parser = pool
    else:

        def parser(data: bytes, content_type: str | None, path: str) -> Any:
            return parse(data, content_type, path, limits)

    w = settings.worker
    worker = IngestWorker(
        state=c.state,
        index=c.index,
        embedder=c.embedder,
        sources=sources,
        cache=c.cache,
        sparse=c.sparse,
        config=WorkerConfig(
            max_attempts=w.max_attempts,
            backoff_seconds=w.backoff_seconds,
            backoff_max_seconds=w.backoff_max_seconds,
            embed_batch_size=settings.embedding_batch_size,
            chunk_tokens=settings.chunking.chunk_tokens,
            overlap_tokens=settings.chunking.overlap_tokens,
            mass_delete_share=w.mass_delete_share,
            mass_delete_min=w.mass_delete_min,
            mass_delete_window_seconds=w.mass_delete_window_seconds,
        ),
        fault=c.fault,
        outbound=c.subscribers.outbound,
        on_outbox=c.outbox_written,
        parser=parser,
    )
    loop = None
    if settings.queue_backend is QueueBackend.LOCAL:
        loop = WorkerLoop(
            worker,
            c.queue,
            batch_size=w.batch_size,
            lease_seconds=w.lease_seconds,
            poll_seconds=w.poll_seconds,
            threads=w.threads,
            retention=timedelta(days=settings.event_retention_days),
        )
    return WritePath(sources=sources, verifier=verifier, limits=body_limits, worker=worker, loop=loop)


def data_dir_in_use(path: Path) -> bool:
    """True when another process holds the local Qdrant directory."""
    lock = path / "qdrant" / ".lock"
    if not lock.exists():
        return False
    try:
        import portalocker

        with open(lock, "r+") as fh:
            portalocker.lock(fh, portalocker.LOCK_EX | portalocker.LOCK_NB)
            portalocker.unlock(fh)
        return False
    except Exception:
        return True
