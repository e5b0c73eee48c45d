"""The ONNX export embeds like the torch model it came from: same tokens, same vectors (cosine >= 0.999),
and the int8 variant close to them but recorded as another vector space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stores.embedding import SentenceTransformerEmbedder
from stores.onnx_embedding import META_FILE, OnnxEmbedder, OnnxModelMissingError, resolve_onnx_dir

SAMPLE = [
    "How many days of annual leave do I get?",
    "Visitor parking is on level minus two, spaces 40 to 60.",
    "# Leave policy\n\nEmployees accrue 2.5 days per month; unused days carry over until March.",
    "Größenordnung, naïve café, 東京 and emoji 🚀 in one line.",
    "x",
    # longer than the model window (256 tokens): both sides truncate the same way
    " ".join(f"token{i} of a long passage about the quarterly budget review" for i in range(80)),
    "Mycobacterium tuberculosis infection and interferon-gamma release assays in children under five.",
]


@pytest.fixture(scope="module")
def fp32(onnx_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(onnx_dir)


def cosines(a: list[list[float]], b: list[list[float]]) -> np.ndarray:
    x, y = np.asarray(a), np.asarray(b)
    return (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def test_fp32_vectors_match_the_torch_model(fp32: OnnxEmbedder, embedder: SentenceTransformerEmbedder) -> None:
    assert (fp32.model_id, fp32.dimension, fp32.max_tokens) == (embedder.model_id, embedder.dimension, 256)
    got = fp32.embed_documents(SAMPLE)
    want = embedder.embed_documents(SAMPLE)
    assert cosines(got, want).min() >= 0.999
    assert np.allclose(np.linalg.norm(np.asarray(got), axis=1), 1.0, atol=1e-4)  # normalised in the graph
    assert cosines([fp32.embed_query(SAMPLE[0])], [embedder.embed_query(SAMPLE[0])])[0] >= 0.999


def test_batching_and_padding_do_not_change_a_vector(fp32: OnnxEmbedder) -> None:
    alone = [fp32.embed_documents([t])[0] for t in SAMPLE]
    together = fp32.embed_documents(SAMPLE)  # one padded batch
    assert cosines(alone, together).min() >= 0.99999
    # More texts than a batch: sorted by length into batches, returned in the order asked.
    small = OnnxEmbedder(fp32.folder, batch_size=3)
    mixed = SAMPLE * 2
    assert cosines([alone[i % len(SAMPLE)] for i in range(len(mixed))], small.embed_documents(mixed)).min() >= 0.99999
    # A question asked twice (the search, then the extracts) gets the same vector, as a fresh list.
    first = small.embed_query(SAMPLE[0])
    first[0] += 1.0
    assert cosines([small.embed_query(SAMPLE[0])], [fp32.embed_documents([SAMPLE[0]])[0]])[0] >= 0.99999


def test_tokens_are_the_models_own(fp32: OnnxEmbedder, embedder: SentenceTransformerEmbedder) -> None:
    assert fp32.count_tokens(SAMPLE) == embedder.count_tokens(SAMPLE)
    for text in SAMPLE:
        assert fp32.token_offsets(text) == embedder.token_offsets(text)


def test_int8_is_close_but_its_own_vector_space(onnx_dir: Path, embedder: SentenceTransformerEmbedder) -> None:
    int8 = OnnxEmbedder(onnx_dir, quantized=True)
    assert int8.model_id == embedder.model_id + "+int8"  # the index and the cache never mix the two
    sims = cosines(int8.embed_documents(SAMPLE), embedder.embed_documents(SAMPLE))
    assert sims.min() >= 0.97 and sims.mean() >= 0.985


def test_a_configured_folder_without_an_export_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(OnnxModelMissingError, match="eventrag export-onnx"):
        resolve_onnx_dir(onnx_dir=tmp_path, cache_dir=None, model_id="m", model_location=None)


def test_the_export_records_what_it_came_from(onnx_dir: Path) -> None:
    meta = (onnx_dir / META_FILE).read_text()
    assert "all-MiniLM-L6-v2" in meta and '"dimension": 384' in meta and '"pooling": "mean"' in meta
