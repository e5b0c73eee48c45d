"""Denormals flushed to zero only inside model calls (`stores.denormals`): set on the calling thread inside
the block, the thread's own mode back after it, and nothing left behind by creating an ONNX session."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np
import pytest

from stores import denormals, onnx_embedding
from stores.onnx_embedding import INT8_FILE, OnnxEmbedder

needs_mode = pytest.mark.skipif(not denormals.available(), reason="no fegetenv/fesetenv layout known here")

TINY = np.float32(1e-39)  # a float32 denormal: below the smallest normal, 1.18e-38


def _flushes() -> bool:
    """Does arithmetic on this thread flush denormals right now? (The mode, seen by what it does.)"""
    return bool(np.multiply(TINY, np.float32(1.0)) == 0.0)


@needs_mode
def test_the_mode_holds_inside_the_block_only() -> None:
    before = denormals.control_bits()
    assert not _flushes()
    with denormals.flushed():
        assert denormals.control_bits() & denormals.flush_bits() == denormals.flush_bits()
        assert _flushes()
    assert denormals.control_bits() == before
    assert not _flushes()


@needs_mode
def test_the_mode_is_put_back_when_the_block_raises() -> None:
    before = denormals.control_bits()
    with pytest.raises(RuntimeError), denormals.flushed():
        raise RuntimeError("the model call failed")
    assert denormals.control_bits() == before


@needs_mode
def test_a_thread_that_flushes_already_keeps_flushing_after_a_block() -> None:
    with denormals.flushed():
        with denormals.flushed():  # nested: the inner block finds the mode set and leaves it
            assert _flushes()
        assert _flushes()
    assert not _flushes()


@needs_mode
def test_preserved_undoes_what_the_block_set() -> None:
    before = denormals.control_bits()
    with denormals.preserved():
        libm = denormals._functions()
        size, offset, bits = denormals._LAYOUTS[denormals.platform.machine().lower()]
        env = (denormals.ctypes.c_ubyte * size)()
        assert libm.fegetenv(env) == 0
        value = int.from_bytes(bytes(env[offset : offset + 4]), "little") | bits
        env[offset : offset + 4] = list(value.to_bytes(4, "little"))
        assert libm.fesetenv(env) == 0  # what onnxruntime does to the thread creating a session
        assert _flushes()
    assert denormals.control_bits() == before


@needs_mode
def test_the_onnx_embedder_leaves_no_thread_flushing(onnx_dir: Path) -> None:
    """onnxruntime's `session.set_denormal_as_zero` sets the mode for good on the thread creating the
    session (and every thread it starts later); the embedder puts it back, on the loading thread and on
    one that only calls."""
    seen: dict[str, bool] = {}

    def load_and_embed() -> None:
        fresh = OnnxEmbedder(onnx_dir, quantized=True)
        fresh.embed_documents(["a short text", "and a longer one, padded beside it in one batch of two"])
        seen["loader"] = _flushes()
        later = threading.Thread(target=lambda: seen.setdefault("started later", _flushes()))
        later.start()
        later.join()
        fresh.embed_query("a question")
        seen["after a query"] = _flushes()

    t = threading.Thread(target=load_and_embed)
    t.start()
    t.join()
    assert seen == {"loader": False, "started later": False, "after a query": False}
    assert not _flushes()


@needs_mode
def test_flushing_does_not_move_a_vector(onnx_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 export's vectors of padded batches, with the mode (as embedded) and without it."""
    import onnxruntime as ort

    texts = [
        "x",
        "Visitor parking is on level minus two, spaces 40 to 60.",
        " ".join(f"word{i} in a passage about interferon-gamma release assays" for i in range(30)),
        "Größenordnung, naïve café, 東京 and emoji 🚀 in one line.",
    ]
    embedder = OnnxEmbedder(onnx_dir, quantized=True, batch_size=4)
    flushed = np.asarray(embedder.embed_documents(texts))
    embedder._session = ort.InferenceSession(str(onnx_dir / INT8_FILE), providers=["CPUExecutionProvider"])
    monkeypatch.setattr(onnx_embedding.denormals, "flushed", contextlib.nullcontext)
    assert not _flushes()
    unflushed = np.asarray(embedder.embed_documents(texts))
    assert np.allclose(flushed, unflushed, atol=1e-6)


@needs_mode
def test_every_model_call_runs_flushed(onnx_dir: Path) -> None:
    """Both of the embedder's calls of the session (texts; tokens with unit vectors) run with the mode."""

    class Watched:
        def __init__(self, session: object) -> None:
            self.session, self.modes = session, []

        def run(self, *args: object) -> object:
            self.modes.append(_flushes())
            return self.session.run(*args)  # type: ignore[attr-defined]

    embedder = OnnxEmbedder(onnx_dir, quantized=True, batch_size=2)
    watched = Watched(embedder._load())
    embedder._session = watched  # type: ignore[assignment]
    embedder.embed_documents(["one", "two", "three"])
    text = "A first sentence. A second one."
    tokens = embedder.span_tokens(text, [(0, len(text))], "title")
    embedder.embed_tokens_with_units([f"title\n{text}"], [[(6, 23)]], tokens)
    assert watched.modes == [True, True, True]
    assert not _flushes()
