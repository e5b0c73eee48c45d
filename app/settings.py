"""Typed settings: every `EVENTRAG_*` variable, its default, and the checks that refuse unsafe values.

Read once, in the composition root (`app.container.build_container`), never at import time.
Nested groups use `__` in the environment (`EVENTRAG_CHUNKING__CHUNK_TOKENS=180`).
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, TypeAdapter, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stores.onnx_embedding import EmbeddingBackend
from stores.ports import SearchMode


class IndexBackend(StrEnum):
    """The embedded engine used when no EVENTRAG_QDRANT_URL is set."""

    EDGE = "edge"  # Qdrant Edge: Qdrant's Rust engine in the process (docs/performance.md)
    QDRANT_LOCAL = "qdrant-local"  # qdrant-client's local mode: plain Python over numpy, small indexes only


class StateBackend(StrEnum):
    SQLITE = "sqlite"
    DYNAMODB = "dynamodb"


class QueueBackend(StrEnum):
    LOCAL = "local"  # a table in the SQLite state file, drained by an in-process worker
    SQS = "sqs"


class ChunkingSettings(BaseModel):
    chunk_tokens: int = Field(200, ge=32, description="target chunk size in model tokens")
    overlap_tokens: int = Field(40, ge=0, description="overlap between consecutive chunks of a section")

    @model_validator(mode="after")
    def _overlap_smaller(self) -> ChunkingSettings:
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError("chunking.overlap_tokens must be smaller than chunking.chunk_tokens")
        return self


class EdgeSettings(BaseModel):
    """When `eventrag serve` optimizes its embedded Edge index, online (`stores.edge_rebuild`): an optimized
    copy built in a child process and swapped in, so no request waits for the optimize itself."""

    optimize_after_points: int = Field(
        10_000,
        ge=0,
        description="optimize online once this many points were written since the last optimize (0: never"
        " online; `eventrag optimize-index` still optimizes offline)",
    )
    optimize_growth: float = Field(
        0.2, ge=0, description="and once they are at least this share of the points optimized last time"
    )
    optimize_check_seconds: float = Field(60.0, gt=0, description="how often the server checks")


class WorkerSettings(BaseModel):
    # 32: the embedder sorts a claim's chunks by length before batching them, so a bigger claim pads less
    # (1,000 SciFact abstracts: 14.4% more tokens than a corpus-wide sort with claims of 8, 4.3% with 32,
    # 2.1% with 64), while a claim of large files still embeds well within its lease.
    batch_size: int = Field(32, ge=1, le=256, description="events claimed (and embedded together) per batch")
    threads: int = Field(1, ge=1, le=32, description="worker threads in `eventrag serve`")
    max_attempts: int = Field(5, ge=1, description="attempts before an event is marked failed")
    backoff_seconds: float = Field(2.0, ge=0, description="first retry delay; doubles per attempt")
    backoff_max_seconds: float = Field(300.0, ge=0)
    lease_seconds: float = Field(600.0, gt=0, description="a claimed job is redelivered after this long")
    poll_seconds: float = Field(0.5, gt=0)
    mass_delete_share: float = Field(
        0.2, gt=0, le=1, description="deletes beyond this share of a workspace wait as held (1 = off)"
    )
    mass_delete_min: int = Field(5, ge=1, description="the brake ignores bursts smaller than this")
    mass_delete_window_seconds: float = Field(600.0, gt=0, description="how far back deletes count as a burst")


class ParsingSettings(BaseModel):
    sandbox: bool = Field(
        True, description="parse in child processes with the time and memory budgets (false: in the worker)"
    )
    timeout_seconds: float = Field(60.0, gt=0, description="time budget to parse one file; then it fails")
    max_memory_mb: int = Field(1024, ge=64, description="memory budget to parse one file; then it fails")
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1024, description="larger files are skipped")
    max_rows: int = Field(50_000, ge=1, description="spreadsheet and CSV rows per file; more are skipped")
    max_chars: int = Field(20_000_000, ge=1000, description="characters of parsed text per file")


class FetchSettings(BaseModel):
    allowed_urls: list[str] | dict[str, list[str]] = Field(
        default_factory=list,
        description='URL prefixes data.url may point under: ["https://files.example.com/"] for every'
        ' workspace, or {"acme": [...]}; empty: URL fetching is off',
    )
    allow_private_addresses: bool = Field(
        False, description="fetch from loopback/private/link-local addresses too (tests, trusted LANs only)"
    )
    allowed_networks: list[str] = Field(
        default_factory=list,
        description='non-public networks that may be fetched from all the same, e.g. ["10.0.5.0/24"]',
    )
    allow_http: bool = Field(False, description="allow plain-HTTP prefixes (default: https only)")
    max_bytes: int = Field(50 * 1024 * 1024, ge=1024, description="larger bodies are refused while streaming")
    connect_timeout_seconds: float = Field(10.0, gt=0)
    read_timeout_seconds: float = Field(30.0, gt=0, description="between two reads of the body")
    total_timeout_seconds: float = Field(300.0, gt=0, description="for the whole download")
    max_redirects: int = Field(5, ge=0, le=20)
    authorization: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        description='host -> Authorization header value, e.g. {"files.example.com": "Bearer ..."}',
    )

    @field_validator("authorization", mode="before")
    @classmethod
    def _authorization(cls, value: Any) -> Any:
        parsed = _parse_mapping(value, "EVENTRAG_FETCH__AUTHORIZATION")
        if isinstance(parsed, dict):
            return {str(k).lower(): v[0] if isinstance(v, list) else v for k, v in parsed.items()}
        return parsed

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"EVENTRAG_FETCH__ALLOWED_NETWORKS: {net!r} is not a network ({exc})") from exc
        return value

    @model_validator(mode="after")
    def _prefixes(self) -> FetchSettings:
        from urllib.parse import urlsplit

        lists = self.allowed_urls.values() if isinstance(self.allowed_urls, dict) else [self.allowed_urls]
        for prefix in (p for items in lists for p in items):
            parts = urlsplit(prefix)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"EVENTRAG_FETCH__ALLOWED_URLS: {prefix!r} is not an http(s) URL prefix with a host")
            if parts.username is not None or parts.password is not None:
                raise ValueError(
                    f"EVENTRAG_FETCH__ALLOWED_URLS: {prefix!r} holds credentials; use EVENTRAG_FETCH__AUTHORIZATION"
                )
            if parts.scheme == "http" and not self.allow_http:
                raise ValueError(
                    f"EVENTRAG_FETCH__ALLOWED_URLS: {prefix!r} is plain HTTP; use https, or set"
                    " EVENTRAG_FETCH__ALLOW_HTTP=true"
                )
        return self


class AgentSettings(BaseModel):
    tools: bool = Field(True, description="let the LLM call search/read/list tools (needs tool-call support)")
    max_steps: int = Field(4, ge=1, le=20, description="model calls that may use tools before answering")
    time_budget_seconds: float = Field(60.0, gt=0, description="after this, the answer is forced")
    history_tokens: int = Field(1500, ge=0, description="conversation history kept in the prompt")
    session_ttl_days: float = Field(30.0, gt=0, description="sessions expire this long after their last turn")
    session_max_turns: int = Field(100, ge=2, le=10_000, description="turns a stored session keeps (oldest dropped)")
    # DynamoDB items hold at most 400 KB; the bound leaves room for the item's other attributes.
    session_max_bytes: int = Field(
        256 * 1024, ge=4096, le=350 * 1024, description="bytes of turns a stored session keeps (oldest dropped)"
    )


class MetadataSettings(BaseModel):
    """Bounds on webhook metadata, which is copied into the index payload of every chunk of a file."""

    max_keys: int = Field(32, ge=0, le=1000, description="keys per event")
    max_value_chars: int = Field(1024, ge=1, description="characters per string value (each list item)")
    max_list_items: int = Field(64, ge=1, description="values in one list")
    max_bytes: int = Field(8192, ge=64, description="the whole metadata object as JSON")


class OutboundSettings(BaseModel):
    """How outbound webhook deliveries are sent and retried (the subscribers are `outbound_webhooks`)."""

    allow_private: bool = Field(
        False, description="let subscriber URLs resolve to private, loopback or link-local addresses"
    )
    max_attempts: int = Field(12, ge=1, le=100, description="attempts before a delivery is marked failed")
    backoff_seconds: float = Field(5.0, ge=0, description="first retry delay; doubles per attempt, with jitter")
    backoff_max_seconds: float = Field(3600.0, ge=0, description="the longest wait between two attempts")
    max_age_hours: float = Field(24.0, gt=0, description="a delivery still failing after this long is failed")
    timeout_seconds: float = Field(10.0, gt=0, le=60, description="per attempt: connect, send and answer")
    poll_seconds: float = Field(1.0, gt=0, description="how often the local relay looks for due deliveries")
    concurrency: int = Field(4, ge=1, le=32, description="attempts in flight at once, so one slow receiver")
    retention_days: float = Field(7.0, gt=0, description="delivered and failed deliveries are kept this long")


class SubscriberSettings(BaseModel):
    """One outbound webhook subscriber of a workspace."""

    model_config = {"extra": "forbid"}

    url: str = Field(description="https:// (or http://) endpoint that receives the deliveries")
    secret: SecretStr = Field(description="its Standard Webhooks secret, whsec_<base64>")
    events: list[str] = Field(default_factory=list, description="types to send; empty = all")
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="a stable name; default: from the URL")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("outbound webhook URLs must start with https:// or http://")
        return value

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("whsec_"):
            raise ValueError("outbound webhook secrets must be Standard Webhooks secrets 'whsec_<base64>'")
        return value

    @field_validator("events")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        from stores.outbox import OutboundType

        known = {t.value for t in OutboundType}
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ValueError(f"unknown outbound event type(s) {unknown}; known: {sorted(known)}")
        return value


# At most 20 subscribers per workspace: their deliveries are written in one DynamoDB transaction with the
# event (at most 100 items), and each settled event writes one row per subscriber.
SubscribersByWorkspace = dict[str, Annotated[list[SubscriberSettings], Field(max_length=20)]]


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def _parse_mapping(value: Any, what: str) -> Any:
    """Accept JSON, or the short form `a=b,c=d` that is easier to write in a shell."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return {}
    if text[0] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what} is not valid JSON: {exc}") from exc
    pairs: dict[str, list[str]] = {}
    for item in text.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep or not key or not val:
            raise ValueError(f"{what}: expected JSON or key=value pairs separated by commas, got {item!r}")
        pairs.setdefault(key.strip(), []).append(val.strip())
    return pairs


WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _check_workspace(name: str, what: str) -> None:
    """Workspace names are what webhook bodies may name: letters, digits, `_`, `.` and `-`. A `/` would make
    the per-file queue group `<workspace>/<file id>` ambiguous."""
    if not WORKSPACE_NAME.match(name):
        raise ValueError(
            f"{what}: workspace name {name!r} must start with a letter or digit and contain only letters, digits,"
            " '_', '.' and '-' (at most 128)"
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EVENTRAG_", env_nested_delimiter="__", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Field(Path("./.eventrag"), description="local state: SQLite, Qdrant files, secrets")

    # Security
    webhook_secrets: Annotated[dict[str, list[SecretStr]], NoDecode] = Field(
        default_factory=dict,
        description='workspace -> Standard Webhooks secrets, e.g. {"acme": ["whsec_new", "whsec_old"]}',
    )
    api_keys: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description='API key -> workspace, e.g. {"k_123": "acme"}'
    )
    webhook_tolerance_seconds: int = Field(300, ge=1, le=86400, description="max age of webhook-timestamp")
    max_body_bytes: int = Field(5 * 1024 * 1024, ge=1024, description="largest webhook body accepted")
    max_request_bytes: int = Field(
        2 * 1024 * 1024, ge=1024, description="largest request body of every other route (413 beyond it)"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins whose browser pages may call the API and /mcp (CORS), comma-separated or a JSON"
        ' list, e.g. "https://inspector.example.com"; "*" for any; empty: none (no CORS headers)',
    )
    event_retention_days: float = Field(7.0, gt=0, description="how long event ids are remembered (dedupe)")
    anonymous_workspace: str | None = Field(
        None, description="workspace for requests without a key (set by `eventrag serve` on loopback only)"
    )

    # Sources
    source_root: Annotated[str | dict[str, str] | None, NoDecode] = Field(
        None,
        description="the folder events without inline content are read from: a path with {workspace} in it,"
        ' a map {"acme": "/srv/acme"}, or a plain path when there is one workspace',
    )

    # Index
    qdrant_url: str | None = Field(None, description="Qdrant server URL; unset = the embedded engine")
    index_backend: IndexBackend = Field(
        IndexBackend.EDGE, description="embedded engine without a Qdrant URL: edge or qdrant-local"
    )
    qdrant_api_key: SecretStr | None = None
    qdrant_collection: str = "eventrag"

    # Models
    embedding_model: str | None = Field(
        None, description="sentence-transformers name or path; default: the bundled all-MiniLM-L6-v2"
    )
    embedding_backend: EmbeddingBackend | None = Field(
        None,
        description="ingest embedder: torch, onnx (fp32) or onnx-int8; unset: what the index records, onnx-int8"
        " for a new index; questions: ONNX",
    )
    onnx_dir: Path | None = Field(
        None, description="a folder made by `eventrag export-onnx`; unset = the cache, exported on first use"
    )
    onnx_cache_dir: Path | None = Field(
        None, description="where ONNX exports are cached; unset = $XDG_CACHE_HOME/eventrag/onnx (~/.cache)"
    )
    embedding_batch_size: int | None = Field(
        None, ge=1, le=1024, description="texts per model call; unset = 32 for torch, 8 for the ONNX backends"
    )
    embedding_runs: int | None = Field(
        None,
        ge=1,
        le=32,
        description="ONNX ingest: model calls at once, each on its share of the cores; unset = 2 with two"
        " or more cores, else 1 (torch: always 1)",
    )
    llm_model: str | None = Field(None, description="chat model name; unset = extractive answers")
    llm_timeout_seconds: float = Field(60.0, gt=0)

    # Retrieval
    top_k_default: int = Field(5, ge=1, le=100)
    top_k_max: int = Field(50, ge=1, le=500)
    search_mode: SearchMode = Field(SearchMode.HYBRID, description="dense, sparse or hybrid")
    # The relevance bar counts either signal: a passage is relevant when its cosine similarity to the
    # question clears `min_score` OR its BM25 keyword score clears `min_keyword_score` (docs/answers.md
    # has the measurements behind both defaults).
    min_score: float = Field(0.2, description="passages at least this similar (cosine) to the question are relevant")
    min_keyword_score: float | None = Field(
        2.0, description="passages with at least this BM25 score are relevant too (unset: only the cosine bar)"
    )

    metadata: MetadataSettings = Field(default_factory=MetadataSettings)  # type: ignore[arg-type]
    # Outbound webhooks, metrics, logs
    outbound_webhooks: Annotated[SubscribersByWorkspace, NoDecode] = Field(
        default_factory=dict,
        description='workspace -> subscribers, e.g. {"acme": [{"url": "https://...", "secret": "whsec_...",'
        ' "events": ["document.indexed"]}]}',
    )
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)  # type: ignore[arg-type]
    metrics_enabled: bool = Field(True, description="serve GET /metrics (Prometheus text format)")
    metrics_api_key: SecretStr | None = Field(
        None, description="bearer token /metrics requires; without one it answers only in loopback single-user mode"
    )
    log_format: LogFormat = Field(LogFormat.TEXT, description="text, or json: one JSON object per line")
    log_level: str = Field("INFO", pattern=r"^(?i:debug|info|warning|error)$")

    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)  # type: ignore[arg-type]
    worker: WorkerSettings = Field(default_factory=WorkerSettings)  # type: ignore[arg-type]
    edge: EdgeSettings = Field(default_factory=EdgeSettings)  # type: ignore[arg-type]
    parsing: ParsingSettings = Field(default_factory=ParsingSettings)  # type: ignore[arg-type]
    fetch: FetchSettings = Field(default_factory=FetchSettings)  # type: ignore[arg-type]
    agent: AgentSettings = Field(default_factory=AgentSettings)  # type: ignore[arg-type]

    # Backends (the AWS deployment sets these)
    state_backend: StateBackend = StateBackend.SQLITE
    queue_backend: QueueBackend = QueueBackend.LOCAL
    dynamodb_events_table: str = "eventrag-events"
    dynamodb_documents_table: str = "eventrag-documents"
    dynamodb_sessions_table: str = "eventrag-sessions"
    dynamodb_outbox_table: str = "eventrag-outbox"
    dynamodb_subscriptions_table: str = "eventrag-subscriptions"
    outbound_queue_url: str | None = Field(None, description="SQS queue that hands deliveries to the outbound function")
    sqs_queue_url: str | None = None
    sqs_dlq_url: str | None = Field(None, description="the ingest dead-letter queue, for `eventrag redrive`")
    source_bucket: str | None = Field(None, description="S3 bucket that s3:// sources and S3 notifications use")
    s3_workspace: str = Field(
        "default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="workspace that S3 notifications write to"
    )
    reconcile_repair: bool = Field(
        False, description="the scheduled reconcile (AWS) repairs what it finds instead of only reporting it"
    )
    # Names of SSM parameters read at cold start, so secrets never sit in the template or its environment.
    qdrant_url_ssm_parameter: str | None = None
    qdrant_api_key_ssm_parameter: str | None = None
    webhook_secrets_ssm_parameter: str | None = None
    api_keys_ssm_parameter: str | None = None
    openai_api_key_ssm_parameter: str | None = None
    outbound_webhooks_ssm_parameter: str | None = None

    @field_validator("source_root", mode="before")
    @classmethod
    def _source_root(cls, value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            if text.startswith("{") and not text.startswith("{workspace}"):
                try:
                    parsed = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"EVENTRAG_SOURCE_ROOT looks like a JSON map but is not valid JSON: {exc}"
                    ) from exc
                return cls._source_root(parsed)
            return text
        if isinstance(value, dict):
            for ws in value:
                _check_workspace(ws, "EVENTRAG_SOURCE_ROOT")
            return {ws: str(folder) for ws, folder in value.items()}
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _cors_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"EVENTRAG_CORS_ORIGINS is not valid JSON: {exc}") from exc
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        origins = [o.strip().rstrip("/") for o in value]  # a browser sends no trailing slash: one is forgiven
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/?#\s]+", origin):
                raise ValueError(
                    f"EVENTRAG_CORS_ORIGINS: {origin!r} is not an origin (scheme://host[:port], no path) or '*'"
                )
        return origins

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _secrets(cls, value: Any) -> Any:
        parsed = _parse_mapping(value, "EVENTRAG_WEBHOOK_SECRETS")
        if isinstance(parsed, dict):
            out: dict[str, list[str]] = {}
            for ws, secrets in parsed.items():
                _check_workspace(ws, "EVENTRAG_WEBHOOK_SECRETS")
                items = [secrets] if isinstance(secrets, str | SecretStr) else list(secrets)
                for s in items:
                    raw = s.get_secret_value() if isinstance(s, SecretStr) else str(s)
                    if not raw.startswith("whsec_"):
                        raise ValueError(
                            f"webhook secret for workspace {ws!r} must be a Standard Webhooks secret 'whsec_<base64>'"
                        )
                out[ws] = [s.get_secret_value() if isinstance(s, SecretStr) else str(s) for s in items]
            return out
        return parsed

    @field_validator("outbound_webhooks", mode="before")
    @classmethod
    def _outbound(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return {}
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"EVENTRAG_OUTBOUND_WEBHOOKS is not valid JSON: {exc}") from exc
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        parsed = _parse_mapping(value, "EVENTRAG_API_KEYS")
        if isinstance(parsed, dict):
            out = {}
            for key, ws in parsed.items():
                ws_name = ws[0] if isinstance(ws, list) else ws
                _check_workspace(str(ws_name), "EVENTRAG_API_KEYS")
                if len(key) < 16:
                    raise ValueError("API keys must be at least 16 characters long")
                out[key] = ws_name
            return out
        return parsed

    @classmethod
    def parse_webhook_secrets(cls, value: str) -> dict[str, list[str]]:
        parsed: dict[str, list[str]] = cls._secrets(value)
        return parsed

    @classmethod
    def parse_outbound_webhooks(cls, value: str) -> SubscribersByWorkspace:
        return TypeAdapter(SubscribersByWorkspace).validate_python(cls._outbound(value))

    @classmethod
    def parse_api_keys(cls, value: str) -> dict[str, str]:
        parsed: dict[str, str] = cls._keys(value)
        return parsed

    @field_validator("qdrant_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("EVENTRAG_QDRANT_URL must start with http:// or https://")
        return value or None

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.top_k_default > self.top_k_max:
            raise ValueError("top_k_default must not exceed top_k_max")
        if self.queue_backend is QueueBackend.LOCAL and self.state_backend is not StateBackend.SQLITE:
            raise ValueError("the local queue lives in the SQLite state file: use queue_backend=sqs with dynamodb")
        return self

    def resolved_qdrant(self) -> tuple[str | None, str | None]:
        """(url, api key), read from SSM when parameter names are configured."""
        url = self.qdrant_url
        key = self.qdrant_api_key.get_secret_value() if self.qdrant_api_key else None
        if self.qdrant_url_ssm_parameter:
            url = read_ssm_parameter(self.qdrant_url_ssm_parameter)
        if self.qdrant_api_key_ssm_parameter:
            key = read_ssm_parameter(self.qdrant_api_key_ssm_parameter)
        return url, key

    # Derived locations
    @property
    def state_path(self) -> Path:
        return self.data_dir / "state.sqlite3"

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def edge_path(self) -> Path:
        return self.data_dir / "edge" / self.qdrant_collection

    @property
    def embedding_cache_path(self) -> Path:
        return self.data_dir / "embeddings.sqlite3"

    @property
    def generated_secret_path(self) -> Path:
        return self.data_dir / "webhook-secret.json"


def read_ssm_parameter(name: str) -> str:
    import boto3

    value = boto3.client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    return str(value)
