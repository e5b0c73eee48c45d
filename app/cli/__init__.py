"""The `eventrag` command line: serve, ingest, ask, and the operator commands.

One Typer app (`common.py`), its commands grouped by what they do: `service.py` (serve, init-index,
redrive), `index.py` (export-onnx, optimize-index), `files.py` (ingest), `operate.py` (ask, retry, held,
reconcile), `evaluate.py` (eval).
"""

from __future__ import annotations

import os

from app.cli import evaluate, files, index, operate, service  # noqa: F401  (each module registers its commands)
from app.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    if "EVENTRAG_EMBEDDING_MODEL" not in os.environ:
        # The bundled model needs no hub; say so, so transformers never tries to reach one.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()
