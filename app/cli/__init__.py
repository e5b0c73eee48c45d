"""The `eventrag` command line: serve, ingest, ask, and the operator commands.

One Typer app (`common.py`), its commands grouped by what they do: `service.py` (serve, init-index,
redrive), `index.py` (export-onnx, optimize-index), `files.py` (ingest), `watch.py` (watch), `operate.py`
(ask, retry, held, reconcile), `evaluate.py` (eval); `delivery.py` is what ingest and watch share (signed
deliveries, run reports).
"""

from __future__ import annotations

import os

from app.cli import evaluate, files, index, operate, service, watch  # noqa: F401  (each module registers its commands)
from app.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    if "EVENTRAG_EMBEDDING_MODEL" not in os.environ:
        # The bundled model needs no hub; say so, so transformers never tries to reach one.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()
