"""Errors raised along the write path (a subtree of `stores.errors.EventragError`).

    IngestError                       (503 when it reaches a route: transient)
    ├── WebhookError                  a delivery is refused before anything is stored
    │   ├── SignatureError            bad, missing or unknown signature (401)
    │   ├── StaleTimestampError       webhook-timestamp outside the tolerance (401)
    │   ├── WorkspaceMismatchError    a workspace's secret used for another workspace (403)
    │   ├── InvalidEventError         malformed JSON, unknown type, bad fields (422)
    │   └── PayloadTooLargeError      the body is over EVENTRAG_MAX_BODY_BYTES (413)
    ├── SourceError                   fetching a file's bytes failed
    │   ├── SourceNotFoundError       the file is not there (permanent)
    │   ├── PathOutsideRootError      a path escapes EVENTRAG_SOURCE_ROOT (permanent)
    │   ├── FetchRefusedError         a URL the fetch policy refuses: not allowed, not public, too big
    │   │                             (permanent)
    │   └── SourceUnavailableError    network or backend trouble, 429 and 5xx (transient: retried; may
    │                                 carry the server's Retry-After)
    ├── UnsupportedContentError       a type or file we cannot parse: the file is recorded as skipped
    └── ParseError                    a parser broke on a file (permanent: the event fails, the previous
        └── ParseBudgetError          version stays searchable); or ran over its time or memory budget

`PermanentError` marks the errors a retry cannot fix; the worker records them at once instead of
backing off; when one reaches a route it is answered 422.
"""

from __future__ import annotations

from stores.errors import EventragError


class IngestError(EventragError):
    """Base class of every error raised by the ingest package."""

    status_code = 503


class PermanentError(IngestError):
    """Retrying will not help: the same input gives the same failure."""

    status_code = 422


class WebhookError(IngestError):
    status_code = 400


class SignatureError(WebhookError):
    status_code = 401


class StaleTimestampError(WebhookError):
    status_code = 401


class WorkspaceMismatchError(WebhookError):
    status_code = 403


class InvalidEventError(WebhookError):
    status_code = 422


class PayloadTooLargeError(WebhookError):
    status_code = 413


class SourceError(IngestError):
    pass


class SourceNotFoundError(SourceError, PermanentError):
    pass


class PathOutsideRootError(SourceError, PermanentError):
    pass


class FetchRefusedError(SourceError, PermanentError):
    pass


class SourceUnavailableError(SourceError):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds the source asked us to wait (HTTP Retry-After)


class UnsupportedContentError(PermanentError):
    pass


class ParseError(PermanentError):
    pass


class ParseBudgetError(ParseError):
    pass
