"""Logging set-up: plain text on a terminal (the default), or one JSON object per line (`EVENTRAG_LOG_FORMAT=json`,
what the AWS deployment sets so CloudWatch Logs Insights can filter on fields).

Every line about an event carries `event_id`, `workspace` and `file_id` (bound by the worker with
`stores.telemetry.bind`); other `extra=` fields of a record become fields of the JSON line too. The
standard library is enough here: on Lambda the runtime's own handler is kept and given this formatter, so
lines keep the request id the runtime adds (`aws_request_id`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from app.settings import LogFormat, Settings
from stores.telemetry import LogContextFilter

# Attributes every LogRecord has; anything else on a record came from `extra=` or the log context.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", ...fields}` on one line; exceptions under `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


def formatter_for(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt is LogFormat.JSON else logging.Formatter(TEXT_FORMAT)


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    """Give the root logger a handler (or re-format the ones there, e.g. Lambda's) at the configured level."""
    root = logging.getLogger()
    root.setLevel(settings.log_level.upper())
    if not root.handlers:
        root.addHandler(logging.StreamHandler(stream or sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(formatter_for(settings.log_format))
        if not any(isinstance(f, LogContextFilter) for f in handler.filters):
            handler.addFilter(LogContextFilter())
