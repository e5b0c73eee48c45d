"""The vectors an extractive answer scores its quotes by are made at ingest, not per question.

- each chunk's units (`stores.units.units`, the extractor's own) get a vector mean-pooled from the token
  embeddings of the forward pass that embeds the chunk: no extra model call;
- the torch model and its ONNX export give the same unit vectors, the int8 export nearly;
- stored as int8 in the payload, they come back to cosine >= 0.9999, and a malformed payload is ignored;
  the cosines to a question read straight from the int8 rows of several chunks at once are those of the
  vectors read back;
- `/query` then embeds the question and nothing else; an index without them (filled before, or by a model
  that cannot give them) still answers, embedding the units it lacks;
- a changed document reuses the cached vectors of its unchanged chunks, units included.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stores.embedding import SentenceTransformerEmbedder, SqliteEmbeddingCache, embed_with_cache
from stores.onnx_embedding import OnnxEmbedder
from stores.units import UNITS_FORMAT, UnitVectors, pool_spans, stored_similarities, unit_spans
from tests.conftest import Harness
from tests.fakes.embedder import CountingEmbedder
from tests.fakes.webhooks import file_event
from tests.test_extracts import APACHE_REDISTRIBUTION, MPL_TERMINATION

TEXTS = [
    "Title: cells\nMitochondria are the powerhouse of the cell. They make ATP from glucose.\n"
    "In 2020, 35% of the cells were studied (see Fig. 3).",
    "# Parking\n\n- Visitors park on level minus two. Spaces 40 to 60.\n- Staff park on level minus one.\n\n"
    "| level | who |\n| -2 | visitors |",
    MPL_TERMINATION,
]


def cosines(a: UnitVectors, b: UnitVectors) -> np.ndarray[Any, Any]:
    assert a.spans == b.spans
    return np.sum(a.vectors * b.vectors, axis=1)


def test_unit_vectors_are_pooled_from_the_same_pass_as_the_chunk_vector(embedder: SentenceTransformerEmbedder) -> None:
    spans = [unit_spans(t) for t in TEXTS]
    vectors, pooled = embedder.embed_with_units(TEXTS, spans)
    # The chunk vectors are the ones `embed_documents` gives: the units cost nothing extra.
    assert np.allclose(np.asarray(vectors), np.asarray(embedder.embed_documents(TEXTS)), atol=1e-5)
    for text, text_spans, units in zip(TEXTS, spans, pooled, strict=True):
        assert units is not None and units.spans == tuple(text_spans) and len(text_spans) >= 3
        assert np.allclose(np.linalg.norm(units.vectors, axis=1), 1.0, atol=1e-5)
        # Each unit's vector is nearer its own text's embedding than a foreign sentence's is.
        own = np.asarray(embedder.embed_documents([text[a:b] for a, b in text_spans]))
        foreign = np.asarray(embedder.embed_query("The quarterly revenue of the shipping company fell."))
        assert all(float(o @ u) > float(foreign @ u) for o, u in zip(own, units.vectors, strict=True))


def test_the_onnx_exports_give_the_torch_unit_vectors(embedder: SentenceTransformerEmbedder, onnx_dir: Path) -> None:
    spans = [unit_spans(t) for t in TEXTS]
    _, torch_units = embedder.embed_with_units(TEXTS, spans)
    for quantized, floor in ((False, 0.999), (True, 0.97)):
        vectors, onnx_units = OnnxEmbedder(onnx_dir, quantized=quantized).embed_with_units(TEXTS, spans)
        assert len(vectors) == len(TEXTS)
        for a, b in zip(torch_units, onnx_units, strict=True):
            assert a is not None and b is not None
            assert float(cosines(a, b).min()) >= floor, quantized


def test_stored_unit_vectors_come_back_and_bad_payloads_are_ignored(embedder: SentenceTransformerEmbedder) -> None:
    _, [units] = embedder.embed_with_units([TEXTS[0]], [unit_spans(TEXTS[0])])
    assert units is not None
    payload = units.to_payload()
    back = UnitVectors.from_payload(payload, embedder.dimension)
    assert back is not None and float(cosines(units, back).min()) >= 0.9999
    assert len(base64.b64decode(payload["int8"])) == len(units.spans) * embedder.dimension  # a byte a number
    bad = [
        None,
        "not a mapping",
        {**payload, "format": UNITS_FORMAT + 1},  # another format: its spans may mean other units
        {**payload, "int8": "not base64!"},
        {**payload, "spans": payload["spans"][:-2]},  # spans and rows disagree
        {k: v for k, v in payload.items() if k != "scales"},
        {**payload, "scales": []},
        {**payload, "scales": 0.5},  # one number, not one per unit
        {**payload, "scales": [[0.5]] * len(units.spans)},
        {**payload, "scales": ["x"] * len(units.spans)},
    ]
    question = embedder.embed_query("What do mitochondria make?")
    for b in bad:
        assert UnitVectors.from_payload(b, embedder.dimension) is None, b
        assert stored_similarities([b], question, embedder.dimension) == [None], b
    assert UnitVectors.from_payload(payload, embedder.dimension + 1) is None  # another model's size
    assert stored_similarities([payload], question, embedder.dimension + 1) == [None]


def test_stored_similarities_are_the_cosines_of_the_vectors_read_back(embedder: SentenceTransformerEmbedder) -> None:
    _, pooled = embedder.embed_with_units(TEXTS, [unit_spans(t) for t in TEXTS])
    payloads: list[dict[str, Any] | None] = [u.to_payload() for u in pooled if u is not None]
    assert len(payloads) == len(TEXTS)
    payloads.insert(1, None)  # a chunk stored without them keeps its place
    question = embedder.embed_query("What share of the cells was studied in 2020?")
    found = stored_similarities(payloads, question, embedder.dimension)
    assert len(found) == len(payloads) and found[1] is None
    q = np.asarray(question, dtype=np.float32)
    for payload, similar in zip(payloads, found, strict=True):
        if payload is None:
            continue
        back = UnitVectors.from_payload(payload, embedder.dimension)
        assert back is not None and similar is not None and list(similar) == list(back.spans)
        expected = back.vectors @ q
        assert np.allclose(list(similar.values()), expected, atol=1e-6), (similar, expected)
    # The units that answer score highest: the cosines are not merely of the right shape.
    cells = found[0]
    assert cells is not None
    best = max(cells, key=lambda span: cells[span])
    assert TEXTS[0][best[0] : best[1]].startswith("In 2020, 35% of the cells")


def test_a_span_no_token_reaches_gets_no_vector() -> None:
    tokens = np.eye(4, dtype=np.float32)
    offsets = [(0, 0), (0, 5), (6, 9), (0, 0)]  # [CLS] "Hello" "you" [SEP]; the text went on, cut off
    units = pool_spans(tokens, offsets, [(0, 9), (10, 20)])
    assert units.spans == ((0, 9),)
    assert np.allclose(units.vectors[0], np.array([0, 1, 1, 0]) / np.sqrt(2))


def _pooled_one_by_one(
    tokens: np.ndarray[Any, Any], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> tuple[list[tuple[int, int]], list[np.ndarray[Any, Any]]]:
    """What `pool_spans` promises, a span at a time: the mean of the rows of the tokens that reach into the
    span, divided by its norm; spans no token reaches, or whose mean is zero, left out."""
    real = [i for i, (a, b) in enumerate(offsets) if b > a]
    kept, vectors = [], []
    for a, b in spans:
        rows = [i for i in real if offsets[i][1] > a and offsets[i][0] < b]
        if rows:
            v = tokens[rows].mean(axis=0)
            norm = float(np.linalg.norm(v))
            if norm > 0:
                kept.append((a, b))
                vectors.append(v / norm)
    return kept, vectors


def test_spans_pooled_at_once_are_bit_for_bit_those_pooled_one_by_one() -> None:
    # The index stores these vectors (int8, one scale per row): pooling all spans of a chunk at once must
    # not move a bit, or a re-index would write other payloads for the same text.
    rng = np.random.default_rng(7)
    for case in range(200):
        n = int(rng.integers(1, 40))
        width = rng.integers(1, 6, size=n)
        starts = np.concatenate([[0], np.cumsum(width + 1)[:-1]])
        offsets = [(int(s), int(s + w)) for s, w in zip(starts, width, strict=True)]
        if case % 3 == 0:  # [CLS] ... [SEP], and now and then a special token among the real ones
            offsets = [(0, 0), *offsets, (0, 0)]
            if n > 4:
                offsets.insert(n // 2, (0, 0))
        tokens = rng.standard_normal((len(offsets) + 3, 16)).astype(np.float32)  # padding rows after
        if case % 10 == 0:
            tokens[:] = 0.0  # every mean zero: no vector at all
        end = offsets[-1][1] + 8
        cuts = sorted(int(x) for x in rng.integers(0, end, size=2 * int(rng.integers(0, 8))))
        spans = list(zip(cuts[0::2], cuts[1::2], strict=True))
        spans += [(0, end), (1, max(2, end // 2)), (end + 1, end + 5)]  # overlapping, past the window
        kept, vectors = _pooled_one_by_one(tokens, offsets, spans)
        pooled = pool_spans(tokens, offsets, spans)
        assert pooled.spans == tuple(kept)
        assert pooled.vectors.dtype == np.float32 and pooled.vectors.shape == (len(kept), 16)
        assert all(np.array_equal(row, v) for row, v in zip(pooled.vectors, vectors, strict=True))


def index_licences(h: Harness) -> None:
    for file_id, text in {"mpl": MPL_TERMINATION, "apache": APACHE_REDISTRIBUTION}.items():
        h.post_event(file_event("created", file_id, path=f"{file_id}.txt", content=text, content_type="text/plain"))
    assert h.drain() == 2


def licence_chunks(h: Harness) -> list[Any]:
    """The active chunks of both licences, each file's asserted non-empty."""
    out = []
    for file_id in ("mpl", "apache"):
        doc = h.container.state.get_document("acme", file_id)
        assert doc is not None and doc.revision is not None
        chunks = h.container.index.file_chunks("acme", file_id, doc.revision)
        assert chunks
        out.extend(chunks)
    return out


def test_the_index_stores_a_vector_per_unit_and_a_query_embeds_only_its_question(
    make_harness: Callable[..., Harness], embedder: SentenceTransformerEmbedder
) -> None:
    counting = CountingEmbedder(embedder)
    h = make_harness(model=counting)
    index_licences(h)
    for hit in licence_chunks(h):
        stored = UnitVectors.from_payload(hit.units, embedder.dimension)
        assert stored is not None and stored.spans == tuple(unit_spans(hit.text))
    counting.queries.clear()
    counting.documents.clear()
    question = "How many days after receiving notice of non-compliance does a licensee have to become compliant?"
    res = h.query(question).json()
    assert res["mode"] == "extractive" and "30 days after Your receipt of the notice" in res["answer"]
    assert counting.queries == [question]
    assert counting.documents == []  # not one sentence embedded: their vectors came with the passages


class NoUnits(CountingEmbedder):
    """A model that cannot give span vectors (an ONNX export of the older format)."""

    def embed_with_units(self, texts: Any, spans: Any) -> tuple[list[list[float]], list[UnitVectors | None]]:
        return self.inner.embed_documents(texts), [None] * len(texts)


def test_an_index_without_unit_vectors_embeds_the_units_it_lacks(
    make_harness: Callable[..., Harness], embedder: SentenceTransformerEmbedder
) -> None:
    model = NoUnits(embedder)
    h = make_harness(model=model)
    index_licences(h)
    doc = h.container.state.get_document("acme", "mpl")
    assert doc is not None and doc.revision is not None
    assert all(hit.units is None for hit in h.container.index.file_chunks("acme", "mpl", doc.revision))
    model.documents.clear()
    question = "How many days after receiving notice of non-compliance does a licensee have to become compliant?"
    res = h.query(question).json()
    assert "30 days after Your receipt of the notice" in res["answer"]
    assert model.documents  # the units were embedded at query time instead


def test_the_cache_gives_back_unit_vectors_with_the_chunk_vector(
    embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    cache = SqliteEmbeddingCache(tmp_path / "cache.sqlite3")
    counting = CountingEmbedder(embedder)
    spans = [unit_spans(t) for t in TEXTS]
    first, stats = embed_with_cache(counting, cache, TEXTS, scopes=["acme"] * 3, spans=spans)
    assert stats.embedded == 3
    again, stats = embed_with_cache(counting, cache, TEXTS, scopes=["acme"] * 3, spans=spans)
    assert stats.embedded == 0 and stats.reused == 3
    for a, b in zip(first, again, strict=True):
        assert a is not None and b is not None and a.units is not None and b.units is not None
        assert np.allclose(a.vector, b.vector) and float(cosines(a.units, b.units).min()) >= 0.99999
    # Other spans of the same text are another entry: never rows of one set of units read as another's.
    other = [s[:-1] for s in spans]
    _, stats = embed_with_cache(counting, cache, TEXTS, scopes=["acme"] * 3, spans=other)
    assert stats.embedded == 3
    # Entries without units (cached by an older version, or for a caller that wants none) stay as they were.
    _, stats = embed_with_cache(counting, cache, TEXTS, scopes=["acme"] * 3)
    assert stats.embedded == 3
    cache.close()


def test_an_edited_document_reuses_the_unit_vectors_of_its_unchanged_chunks(
    make_harness: Callable[..., Harness], embedder: SentenceTransformerEmbedder
) -> None:
    h = make_harness()
    long = f"{APACHE_REDISTRIBUTION}\n\n{MPL_TERMINATION}\n\n{APACHE_REDISTRIBUTION.upper()}"
    h.post_event(file_event("created", "lic", path="lic.txt", content=long, content_type="text/plain", version=1))
    assert h.drain() == 1
    edited = long + "\n\nThis sentence was added in the second version of the licence."
    h.post_event(file_event("updated", "lic", path="lic.txt", content=edited, content_type="text/plain", version=2))
    assert h.drain() == 1
    doc = h.container.state.get_document("acme", "lic")
    assert doc is not None and doc.revision is not None and doc.version == 2
    assert doc.reused > 0 and doc.embedded > 0  # unchanged chunks came from the cache
    chunks = h.container.index.file_chunks("acme", "lic", doc.revision)
    assert len(chunks) == doc.chunk_count
    for hit in chunks:
        stored = UnitVectors.from_payload(hit.units, embedder.dimension)
        assert stored is not None and stored.spans == tuple(unit_spans(hit.text))


@pytest.mark.parametrize("text", ["", "   \n\n  "])
def test_a_chunk_without_units_stores_none(embedder: SentenceTransformerEmbedder, text: str) -> None:
    _, [units] = embedder.embed_with_units([text], [unit_spans(text)])
    assert units is not None and units.spans == ()
