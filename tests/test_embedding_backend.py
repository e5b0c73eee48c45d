"""Which backend embeds when EVENTRAG_EMBEDDING_BACKEND is unset: the one whose vectors the index holds, so
an index filled before an upgrade keeps opening (and is never mixed), and int8 for a new index."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.container import build_container
from stores.edge import EdgeIndex
from stores.embedding import DEFAULT_MODEL_ID
from stores.errors import EmbeddingModelMismatchError
from stores.onnx_embedding import EmbeddingBackend, OnnxEmbedder
from tests.conftest import base_settings


def _record(data: Path, model_id: str) -> None:
    """An index created for `model_id`, as an earlier install would have left it."""
    index = EdgeIndex(base_settings(data).edge_path)
    index.ensure_ready(model_id, 384)
    index.close()


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        (None, EmbeddingBackend.ONNX_INT8),  # a new index
        (DEFAULT_MODEL_ID, EmbeddingBackend.TORCH),  # filled by torch (or fp32 ONNX: the same vectors)
        (DEFAULT_MODEL_ID + "+int8", EmbeddingBackend.ONNX_INT8),
    ],
)
def test_unset_backend_follows_the_index(
    tmp_path: Path, onnx_dir: Path, recorded: str | None, expected: EmbeddingBackend
) -> None:
    if recorded is not None:
        _record(tmp_path, recorded)
    c = build_container(base_settings(tmp_path, onnx_dir=onnx_dir))
    try:
        assert c.settings.embedding_backend is None
        assert c.backend is expected
        # The query encoder is the ONNX export of that backend, and the index opens with it.
        q = c.query_embedder
        assert isinstance(q, OnnxEmbedder) and q.quantized is expected.quantized
        assert c.index.recorded_model() == (recorded or DEFAULT_MODEL_ID + "+int8")
        assert not c.built("embedder")  # answering questions never built the ingest model
    finally:
        c.close()


def test_a_configured_backend_wins_and_a_mismatch_is_refused(tmp_path: Path, onnx_dir: Path) -> None:
    _record(tmp_path, DEFAULT_MODEL_ID)
    c = build_container(base_settings(tmp_path, onnx_dir=onnx_dir, embedding_backend="onnx-int8"))
    try:
        assert c.backend is EmbeddingBackend.ONNX_INT8
        with pytest.raises(EmbeddingModelMismatchError, match="int8"):
            c.index  # noqa: B018 - the torch-filled index refuses int8 vectors
    finally:
        c.close()


@pytest.mark.parametrize(("configured", "runs"), [(None, 2), (1, 1), (3, 3)])
def test_ingest_runs_model_calls_at_once_and_questions_one_at_a_time(
    tmp_path: Path, onnx_dir: Path, monkeypatch: pytest.MonkeyPatch, configured: int | None, runs: int
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # (the default is for a machine of two cores or more)
    c = build_container(base_settings(tmp_path, onnx_dir=onnx_dir, embedding_runs=configured))
    try:
        ingest, query = c.embedder, c.query_embedder
        assert isinstance(ingest, OnnxEmbedder) and isinstance(query, OnnxEmbedder)
        assert (ingest.runs, query.runs) == (runs, 1)
        # Each run its share of the two cores; a question every core (onnxruntime's default).
        assert ingest._threads == (None if runs == 1 else max(1, 2 // runs)) and query._threads is None
    finally:
        c.close()


def test_one_core_runs_one_call(tmp_path: Path, onnx_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    c = build_container(base_settings(tmp_path, onnx_dir=onnx_dir))
    try:
        assert c.embedder.runs == 1
    finally:
        c.close()
