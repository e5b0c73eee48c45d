"""Errors of the read path (the chat model's own errors are in `retrieval.llm`).

EventragError (stores.errors)
└── RetrievalError
    └── QuestionRejectedError     the question cannot be answered as asked (422)
        └── TopKTooLargeError     more passages asked for than the server's maximum (EVENTRAG_TOP_K_MAX)
"""

from __future__ import annotations

from stores.errors import EventragError


class RetrievalError(EventragError):
    """Base of the read path's errors."""


class QuestionRejectedError(RetrievalError):
    """The request is well-formed but asks for what the server does not do; the message says what."""

    status_code = 422


class TopKTooLargeError(QuestionRejectedError):
    def __init__(self, top_k: int, maximum: int) -> None:
        super().__init__(
            f"top_k {top_k} is above the maximum of {maximum} passages per answer (EVENTRAG_TOP_K_MAX); "
            f"ask for {maximum} or fewer"
        )
        self.top_k = top_k
        self.maximum = maximum
