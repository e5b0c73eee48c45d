"""The embedding model exported to ONNX, run by onnxruntime with the `tokenizers` package: no torch.

This is what the query path uses (the Lambda API function carries no torch), and what ingest uses with
`EVENTRAG_EMBEDDING_BACKEND=onnx` or `onnx-int8`. Importing this module imports neither torch, transformers
nor sentence-transformers; `tests/test_torch_free.py` checks it in a fresh process.

An exported model is a folder (`stores.onnx_export` writes it):

    model.onnx          the transformer with mean pooling and L2 normalisation inside the graph (fp32)
    model-int8.onnx     the same, MatMul weights quantized to int8 per channel (dynamic quantization)
    tokenizer.json      the model's own tokenizer
    eventrag-onnx.json  model id, dimension, window (max_seq_length), the source it was exported from

Where it comes from (`resolve_onnx_dir`): `EVENTRAG_ONNX_DIR` when set (an image or zip ships the folder),
else the cache `EVENTRAG_ONNX_CACHE_DIR` (default `~/.cache/eventrag/onnx`, `$XDG_CACHE_HOME` honoured),
exported there on first use when torch is installed (`eventrag export-onnx` does it ahead of time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stores import denormals
from stores.errors import StoreError
from stores.token_spans import SpanCounter, SpanTokens
from stores.units import UnitVectors, pool_spans

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

META_FILE = "eventrag-onnx.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
EMBEDDING_OUTPUT = "embedding"  # the graph's outputs: the pooled, normalised vector...
TOKENS_OUTPUT = "token_embeddings"  # ...and the last hidden state (format 2 on)
# Bump when the exported graph changes: a new cache folder is made. 2: the token embeddings are an output too.
EXPORT_FORMAT = 2


class EmbeddingBackend(StrEnum):
    TORCH = "torch"  # sentence-transformers on torch (fp32)
    ONNX = "onnx"  # the same model exported to ONNX, fp32: the same vectors (cosine >= 0.999)
    ONNX_INT8 = "onnx-int8"  # MatMul weights quantized to int8: different vectors, recorded as such

    @property
    def quantized(self) -> bool:
        return self is EmbeddingBackend.ONNX_INT8


def backend_model_id(model_id: str, backend: EmbeddingBackend) -> str:
    """The id recorded in the index and the embedding cache. fp32 torch and fp32 ONNX give the same vectors
    and share an id; int8 vectors are another space, so they get their own and are never mixed silently."""
    return f"{model_id}+int8" if backend.quantized else model_id


def recorded_backend(recorded_model_id: str | None) -> EmbeddingBackend:
    """The backend to embed with when none is configured: the one whose vectors the index holds (an int8 id
    says int8, any other id the fp32 vectors torch and ONNX share), and int8 for an index not created yet
    (as good as fp32 on SciFact, about twice as fast: docs/performance.md)."""
    if recorded_model_id is None or recorded_model_id.endswith("+int8"):
        return EmbeddingBackend.ONNX_INT8
    return EmbeddingBackend.TORCH


class OnnxModelMissingError(StoreError):
    """No exported model where the settings point, and it cannot be exported here (no torch)."""


@dataclass(frozen=True, slots=True)
class OnnxModelInfo:
    model_id: str
    dimension: int
    max_tokens: int

    @classmethod
    def read(cls, folder: Path) -> OnnxModelInfo:
        meta = json.loads((folder / META_FILE).read_text())
        return cls(model_id=str(meta["model_id"]), dimension=int(meta["dimension"]), max_tokens=int(meta["max_tokens"]))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "eventrag" / "onnx"


def source_fingerprint(model_location: str) -> str:
    """Cheap identity of a model folder (file names and sizes) plus the export format: a new model, or a new
    export format, gets a new cache folder instead of a stale one."""
    root = Path(model_location)
    h = hashlib.sha256(f"format={EXPORT_FORMAT}".encode())
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            h.update(f"{p.relative_to(root)}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:12]


def cache_folder(cache_dir: Path, model_id: str, model_location: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id).strip("_")[-60:]
    return cache_dir / f"{slug}-{source_fingerprint(model_location)}"


def is_exported(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (META_FILE, FP32_FILE, INT8_FILE, TOKENIZER_FILE))


def resolve_onnx_dir(
    *, onnx_dir: Path | None, cache_dir: Path | None, model_id: str, model_location: str | None
) -> Path:
    """The folder of an exported model: the configured one, or the cache's (exported now if missing)."""
    if onnx_dir is not None:
        if not is_exported(onnx_dir):
            raise OnnxModelMissingError(
                f"EVENTRAG_ONNX_DIR={onnx_dir} holds no exported model (expected {META_FILE}, {FP32_FILE}, "
                f"{INT8_FILE}, {TOKENIZER_FILE}); make one with `eventrag export-onnx --out {onnx_dir}`"
            )
        return onnx_dir
    if model_location is None or not Path(model_location).is_dir():
        raise OnnxModelMissingError(
            f"the ONNX backend needs a local model folder to export, got {model_location!r}; or set "
            "EVENTRAG_ONNX_DIR to a folder made by `eventrag export-onnx`"
        )
    folder = cache_folder(cache_dir or default_cache_dir(), model_id, model_location)
    if is_exported(folder):
        return folder
    try:
        from stores.onnx_export import export_onnx
    except ImportError as exc:  # pragma: no cover - the torch-free image ships EVENTRAG_ONNX_DIR instead
        raise OnnxModelMissingError(
            f"no ONNX export of {model_id} in {folder}, and this install cannot export one ({exc}); run "
            "`eventrag export-onnx` where torch is installed and set EVENTRAG_ONNX_DIR"
        ) from exc
    log.info("exporting %s to ONNX in %s (once; later runs reuse it)", model_id, folder)
    export_onnx(model_location, folder, model_id=model_id)
    return folder


_RECENT_QUERIES = 64  # question vectors an OnnxEmbedder remembers


# What one more onnxruntime call costs, in padded tokens (`Embedder.call_tokens`): the int8 export on 400
# SciFact abstracts sorted longest first, embedded in batches of 1, 2, 4, 8 and 16, twice each (2026-12-03),
# fitted as seconds = a * padded tokens + b * calls: a = 54 us a token, b = 3.5 ms a call, b / a = 64. (Its
# batches of 4 and 8 took the same time, 16 longer: onnxruntime gains little from wide batches on a CPU, so
# a short batch that saves padding costs it little.) On the worker's rounds of SciFact's first 1,000
# abstracts at batches of 8: 2.3% padding over a corpus-wide sort, against 4.3% in full batches.
ONNX_CALL_TOKENS = 64


class OnnxEmbedder:
    """`Embedder` over an exported model folder. Loads the session on first embed, never at construction;
    `dimension`, `max_tokens` and `model_id` come from the folder's metadata without loading the model.

    `runs`: how many calls `embed_with_cache` makes at once on the one session (onnxruntime's `run` is
    thread-safe and releases the GIL), each with `threads` intra-op threads, by default the cores shared
    out among them. Ingest runs two single-threaded calls on two cores: they made ingest 10-13% faster
    than one call on both cores (docs/performance.md); questions keep one call on every core,
    the fastest for one text."""

    def __init__(
        self,
        folder: Path | str,
        *,
        quantized: bool = False,
        batch_size: int = 32,
        threads: int | None = None,
        runs: int = 1,
    ) -> None:
        if runs < 1:
            raise ValueError(f"runs must be at least 1, not {runs}")
        self.folder = Path(folder)
        self.info = OnnxModelInfo.read(self.folder)
        self.quantized = quantized
        self.batch_size = batch_size
        # `runs` calls at once (`Embedder.runs`), each on its share of the cores unless `threads` says.
        self._runs = runs
        self._threads = threads if threads is not None or runs == 1 else max(1, (os.cpu_count() or 1) // runs)
        self._session: onnxruntime.InferenceSession | None = None
        self._counter: Tokenizer | None = None
        self._encoder: Tokenizer | None = None
        self._spans: SpanCounter | None = None
        self._pad_id = 0  # the tokenizer's [PAD], read with it
        self._input_names: set[str] = set()
        self._output_names: set[str] = set()
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, tuple[float, ...]] = OrderedDict()

    @property
    def backend(self) -> EmbeddingBackend:
        return EmbeddingBackend.ONNX_INT8 if self.quantized else EmbeddingBackend.ONNX

    @property
    def model_id(self) -> str:
        return backend_model_id(self.info.model_id, self.backend)

    @property
    def dimension(self) -> int:
        return self.info.dimension

    @property
    def max_tokens(self) -> int:
        return self.info.max_tokens

    @property
    def call_tokens(self) -> int:
        return ONNX_CALL_TOKENS

    @property
    def runs(self) -> int:
        return self._runs

    # tokenizers: one counts (no truncation, no padding), one feeds the model (truncated to the window,
    # padded to the longest text of the batch); two objects because their settings are per object.
    def _tokenizers(self) -> tuple[Tokenizer, Tokenizer]:
        if self._counter is None or self._encoder is None:
            with self._lock:
                if self._counter is None or self._encoder is None:
                    from tokenizers import Tokenizer

                    path = str(self.folder / TOKENIZER_FILE)
                    counter = Tokenizer.from_file(path)
                    counter.no_padding()
                    counter.no_truncation()
                    encoder = Tokenizer.from_file(path)
                    encoder.enable_truncation(self.info.max_tokens)
                    pad_id = encoder.token_to_id("[PAD]")
                    self._pad_id = pad_id if pad_id is not None else 0
                    encoder.enable_padding(pad_id=self._pad_id, pad_token="[PAD]")
                    self._encoder = encoder
                    self._spans = SpanCounter.of(counter, self.count_tokens)
                    self._counter = counter
        return self._counter, self._encoder

    def _load(self) -> onnxruntime.InferenceSession:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    import onnxruntime as ort

                    options = ort.SessionOptions()
                    if self._threads:
                        options.intra_op_num_threads = self._threads
                    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                    # No busy-waiting between calls: the session shares the cores with the worker (`eventrag
                    # serve`) and other requests; spinning threads took 1.8x longer for a query's sentences
                    # on this 2-core machine under load (docs/performance.md).
                    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                    # Padded batches compute with denormal floats, slow on x86: flushed to zero in the pool's
                    # threads here and in the calling thread by `denormals.flushed()` around each call
                    # (padded batches of 8 took 35-45% longer than full-length ones; the same with both).
                    options.add_session_config_entry("session.set_denormal_as_zero", "1")
                    path = self.folder / (INT8_FILE if self.quantized else FP32_FILE)
                    log.info("loading ONNX embedding model %s", path)
                    with denormals.preserved():  # (onnxruntime sets the mode on this thread for good)
                        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    self._input_names = {i.name for i in session.get_inputs()}
                    self._output_names = {o.name for o in session.get_outputs()}
                    self._session = session
        return self._session

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        counter, _ = self._tokenizers()
        return [len(e.ids) for e in counter.encode_batch(list(texts), add_special_tokens=True)]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        counter, _ = self._tokenizers()
        return [(int(a), int(b)) for a, b in counter.encode(text, add_special_tokens=False).offsets]

    def count_spans(self, text: str, spans: Sequence[tuple[int, int]]) -> list[int]:
        self._tokenizers()
        if self._spans is None:
            return self.count_tokens([text[a:b] for a, b in spans])
        return self._spans.count(text, spans)

    def span_tokens(self, text: str, spans: Sequence[tuple[int, int]], prefix: str) -> list[SpanTokens | None]:
        """See `stores.ports.TokenReuse`."""
        self._tokenizers()
        if self._spans is None:
            return [None] * len(spans)
        return self._spans.tokens(text, spans, prefix, self.info.max_tokens)

    def _encode(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        session = self._load()
        _, encoder = self._tokenizers()
        if len(texts) > self.batch_size:
            # Longest first, so each batch pads to a length close to its own texts' (a query's sentences
            # range from a heading to a paragraph); the result comes back in the order asked.
            lengths = self.count_tokens(texts)
            order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        else:
            order = list(range(len(texts)))
        out = []
        for i in range(0, len(order), self.batch_size):
            batch = encoder.encode_batch([texts[j] for j in order[i : i + self.batch_size]])
            with denormals.flushed():  # (see `_load`)
                embedded = session.run([EMBEDDING_OUTPUT], self._feed(batch))[0]
            out.append(np.asarray(embedded, dtype=np.float32))
        if not out:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = np.concatenate(out)
        result = np.empty_like(vectors)
        result[order] = vectors
        return result

    def _feed(self, batch: Sequence[Any]) -> dict[str, np.ndarray[Any, Any]]:
        feed = {
            "input_ids": np.asarray([e.ids for e in batch], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in batch], dtype=np.int64),
        }
        if "token_type_ids" in self._input_names:
            feed["token_type_ids"] = np.asarray([e.type_ids for e in batch], dtype=np.int64)
        return feed

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        return self._encode(texts).tolist()  # type: ignore[no-any-return]

    def embed_with_units(
        self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]
    ) -> tuple[list[list[float]], list[UnitVectors | None]]:
        """See `Embedder.embed_with_units`: one run gives both outputs. An export of format 1 has no token
        output: its span vectors are None (re-export, `eventrag export-onnx`, to get them)."""
        return self.embed_tokens_with_units(texts, spans, [None] * len(texts))

    def embed_tokens_with_units(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[tuple[int, int]]],
        tokens: Sequence[SpanTokens | None],
    ) -> tuple[list[list[float]], list[UnitVectors | None]]:
        """See `stores.ports.TokenReuse`: a batch whose texts all come with their tokens is not tokenized
        again; its input is what the encoder would have made of them (padded alike)."""
        if not texts:
            return [], []
        session = self._load()
        if TOKENS_OUTPUT not in self._output_names:
            return self._encode(texts).tolist(), [None] * len(texts)
        _, encoder = self._tokenizers()
        vectors: list[list[float]] = []
        pooled: list[UnitVectors | None] = []
        for b in range(0, len(texts), self.batch_size):
            given = tokens[b : b + self.batch_size]
            if all(t is not None for t in given):
                batch: Sequence[Any] = [t for t in given if t is not None]
                feed = self._feed_tokens(batch)
            else:
                batch = encoder.encode_batch(list(texts[b : b + self.batch_size]))
                feed = self._feed(batch)
            with denormals.flushed():  # (see `_load`)
                embedded, token_rows = session.run([EMBEDDING_OUTPUT, TOKENS_OUTPUT], feed)
            vectors.extend(np.asarray(embedded, dtype=np.float32).tolist())
            for e, token_vectors, text_spans in zip(batch, token_rows, spans[b : b + self.batch_size], strict=True):
                pooled.append(pool_spans(token_vectors, e.offsets, text_spans))
        return vectors, pooled

    def _feed_tokens(self, batch: Sequence[SpanTokens]) -> dict[str, np.ndarray[Any, Any]]:
        """`_feed` of the encoder's encodings of these tokens: padded on the right to the longest with the
        [PAD] id, attention 1 on the tokens and 0 on the padding, token types all 0."""
        width = max(len(t.ids) for t in batch)
        ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, t in enumerate(batch):
            ids[row, : len(t.ids)] = t.ids
            mask[row, : len(t.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feed["token_type_ids"] = np.zeros((len(batch), width), dtype=np.int64)
        return feed

    def forget_queries(self) -> None:
        """Forget the questions remembered by `embed_query` (a measurement that times one embedding each)."""
        with self._lock:
            self._recent.clear()

    def embed_query(self, text: str) -> list[float]:
        """One question's vector. The last few are remembered: one `/query` embeds its question for the
        search and again for choosing the extracts."""
        with self._lock:
            cached = self._recent.get(text)
            if cached is not None:
                self._recent.move_to_end(text)
                return list(cached)
        vector: list[float] = self._encode([text])[0].tolist()
        with self._lock:
            self._recent[text] = tuple(vector)
            while len(self._recent) > _RECENT_QUERIES:
                self._recent.popitem(last=False)
        return vector
