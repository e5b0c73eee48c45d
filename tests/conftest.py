"""Shared fixtures: one embedding model per session, an app per test on a fresh data dir."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from app.container import Container, build_container  # noqa: E402
from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402
from stores.embedding import DEFAULT_MODEL_ID, SentenceTransformerEmbedder, default_model_path  # noqa: E402
from stores.onnx_embedding import default_cache_dir, resolve_onnx_dir  # noqa: E402
from tests.fakes.webhooks import sign  # noqa: E402

SECRET_ACME = "whsec_" + base64.b64encode(b"acme-secret-0123456789abcdef0123").decode()
SECRET_ACME_OLD = "whsec_" + base64.b64encode(b"acme-old-secret-0123456789abcdef").decode()
SECRET_BETA = "whsec_" + base64.b64encode(b"beta-secret-0123456789abcdef0123").decode()
KEY_ACME = "key-acme-0123456789abcdef"
KEY_BETA = "key-beta-0123456789abcdef"


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """The real all-MiniLM-L6-v2, loaded once for the whole session."""
    e = SentenceTransformerEmbedder()
    _ = e.dimension  # load now, not inside the first timed-out request
    return e


@pytest.fixture(scope="session")
def onnx_dir() -> Path:
    """The bundled model exported to ONNX, in the product's own cache (exported once per machine, as
    `eventrag export-onnx` or a first use would)."""
    return resolve_onnx_dir(
        onnx_dir=None, cache_dir=default_cache_dir(), model_id=DEFAULT_MODEL_ID, model_location=default_model_path()
    )


def base_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "webhook_secrets": {"acme": [SECRET_ACME, SECRET_ACME_OLD], "beta": [SECRET_BETA]},
        "api_keys": {KEY_ACME: "acme", KEY_BETA: "beta"},
        "worker": {"backoff_seconds": 0.0, "poll_seconds": 0.05},
        # Parsing runs in the worker process here, for speed: each sandbox child costs a second to start.
        # The sandbox (the default) has its own tests (test_sandbox.py, test_documents.py, the CLI tests).
        "parsing": {"sandbox": False},
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Harness:
    """An app on a fresh data dir, driven through the real HTTP stack (TestClient over ASGI)."""

    client: TestClient
    container: Container
    settings: Settings

    def post_event(self, body: dict[str, Any], *, secret: str = SECRET_ACME, event_id: str | None = None) -> Any:
        raw, headers = sign(secret, body, event_id=event_id)
        return self.client.post("/webhooks", content=raw, headers=headers)

    def drain(self) -> int:
        assert self.container.loop is not None
        return self.container.loop.drain()

    def query(self, question: str, key: str = KEY_ACME, **extra: Any) -> Any:
        return self.client.post("/query", json={"question": question, **extra}, headers={"X-API-Key": key})

    def get(self, url: str, key: str = KEY_ACME) -> Any:
        return self.client.get(url, headers={"X-API-Key": key})


@pytest.fixture
def make_harness(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> Iterator[Callable[..., Harness]]:
    """Builds harnesses; the worker does not run in the background, tests call `drain()`."""
    made: list[tuple[TestClient, Container]] = []

    def make(
        *,
        data_dir: Path | None = None,
        chat: Any = None,
        fault: Any = None,
        model: Any = None,
        **overrides: Any,
    ) -> Harness:
        settings = base_settings(data_dir or tmp_path / "data", **overrides)
        container = build_container(settings, embedder=model or embedder, chat=chat, fault=fault)
        client = TestClient(create_app(container, start_worker=False))
        client.__enter__()
        made.append((client, container))
        return Harness(client, container, settings)

    yield make
    for client, container in reversed(made):
        client.__exit__(None, None, None)
        container.close()


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()
