"""The root of eventrag's errors, and the errors of the ground both paths stand on.

    EventragError                     base of every error eventrag raises on purpose; carries `status_code`
    ├── StoreError                    a store or the index cannot serve (this package)
    │   ├── EmbeddingModelMismatchError   the index was filled by another embedding model (503)
    │   └── StoreLockedError              the local store is held by another process (503)
    ├── stores.ssrf.UnsafeURLError    a URL eventrag must not call (SSRF rules; 422)
    ├── stores.paging.InvalidCursorError  a cursor not made by that listing (422)
    ├── ingest.errors.IngestError     the write path (webhooks, sources, parsing)
    └── retrieval.llm.LLMError        the chat model (the read path)

`status_code` is what the API answers when the error reaches a route, so the app maps every error with
one handler and never needs to import a path it does not serve.
"""

from __future__ import annotations


class EventragError(Exception):
    """Base class of every error eventrag raises on purpose."""

    status_code: int = 500


class StoreError(EventragError):
    """A store or the index cannot serve the request; retrying later may help."""

    status_code = 503


class EmbeddingModelMismatchError(StoreError):
    pass


class StoreLockedError(StoreError):
    pass
