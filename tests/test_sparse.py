"""BM25 sparse encoder: tokenizer, weights, stable indices, and ranking in a real Qdrant (local mode)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qdrant_client import QdrantClient, models

from stores.sparse import ENGLISH_STOP_WORDS, Bm25Encoder


@pytest.fixture
def encoder() -> Bm25Encoder:
    return Bm25Encoder()


def weight_of(encoder: Bm25Encoder, text: str, token: str) -> float:
    indices, values = encoder.encode_document(text)
    return values[indices.index(encoder.token_index(token))]


class TestTokenize:
    def test_stemming_merges_inflections(self, encoder: Bm25Encoder) -> None:
        assert encoder.tokenize("running runs run") == ["run", "run", "run"]

    def test_stop_words_dropped(self, encoder: Bm25Encoder) -> None:
        assert encoder.tokenize("The cells of the patient are in it") == ["cell", "patient"]
        assert {"the", "of", "are", "in", "it"} <= ENGLISH_STOP_WORDS

    def test_splits_on_non_alphanumerics_and_keeps_alnum_tokens(self, encoder: Bm25Encoder) -> None:
        tokens = encoder.tokenize("IL-6, p53 and CD4+ (snake_case)")
        assert tokens == ["il", "6", "p53", "cd4", "snake", "case"]

    def test_unicode_words_and_normal_forms(self, encoder: Bm25Encoder) -> None:
        composed, decomposed = "caf\u00e9", "cafe\u0301"
        assert encoder.tokenize(composed) == encoder.tokenize(decomposed) == ["café"]

    @pytest.mark.parametrize("text", ["", "   ", "the and of", "--- !!! ..."])
    def test_nothing_indexable(self, encoder: Bm25Encoder, text: str) -> None:
        assert encoder.tokenize(text) == []
        assert encoder.encode_document(text) == ([], [])
        assert encoder.encode_query(text) == ([], [])


class TestEncodeDocument:
    def test_indices_sorted_and_unique(self, encoder: Bm25Encoder) -> None:
        text = "zeta alpha beta alpha gamma running runs delta zeta epsilon " * 3
        indices, values = encoder.encode_document(text)
        assert indices == sorted(set(indices))
        assert len(indices) == len(values) == len(set(encoder.tokenize(text)))

    def test_exact_bm25_value(self, encoder: Bm25Encoder) -> None:
        # tokens [run, run, run, fast]: doc_len 4, tf(run) 3
        # norm = 1.2 * (1 - 0.75 + 0.75 * 4 / 120) = 1.2 * 0.275 = 0.33
        # w = 3 * 2.2 / (3 + 0.33) = 6.6 / 3.33 = 1.981982
        assert weight_of(encoder, "running runs run fast", "run") == pytest.approx(6.6 / 3.33)

    def test_saturation(self, encoder: Bm25Encoder) -> None:
        # Same length (10 tokens) so only tf differs.
        tf10 = weight_of(encoder, " ".join(["apple"] * 10), "appl")
        tf1 = weight_of(encoder, "apple " + " ".join(f"w{i}" for i in range(9)), "appl")
        assert tf1 < tf10 < 10 * tf1
        assert tf10 < encoder.k1 + 1  # the BM25 ceiling

    def test_length_normalisation(self, encoder: Bm25Encoder) -> None:
        short = weight_of(encoder, "apple pear", "appl")
        long = weight_of(encoder, "apple " + " ".join(f"w{i}" for i in range(200)), "appl")
        assert long < short

    def test_document_vector_is_encode_document_of_the_counted_text(self, encoder: Bm25Encoder) -> None:
        text = "cells cells grow; cells divide and grow in tissue"
        counts = Counter(encoder.token_index(t) for t in encoder.tokenize(text))
        assert encoder.document_vector(counts, sum(counts.values())) == encoder.encode_document(text)
        assert encoder.document_vector({}, 0) == ([], [])

    def test_encode_documents_matches_single(self, encoder: Bm25Encoder) -> None:
        texts = ["running fast", "", "p53 binds DNA"]
        assert encoder.encode_documents(texts) == [encoder.encode_document(t) for t in texts]

    def test_thread_safe(self, encoder: Bm25Encoder) -> None:
        texts = [f"document {i} about running studies of cells and vaccination {i % 7}" for i in range(400)]
        expected = [Bm25Encoder().encode_document(t) for t in texts]
        with ThreadPoolExecutor(max_workers=8) as pool:
            assert list(pool.map(encoder.encode_document, texts)) == expected


class TestEncodeQuery:
    def test_unique_terms_weight_one(self, encoder: Bm25Encoder) -> None:
        indices, values = encoder.encode_query("running runs of the p53 p53")
        assert indices == sorted([encoder.token_index("run"), encoder.token_index("p53")])
        assert values == [1.0, 1.0]


def test_token_index_is_stable(encoder: Bm25Encoder) -> None:
    # Hard-coded from blake2b-32 (little endian, 31-bit mask); changing the hash must fail here because
    # it would silently orphan every vector already stored.
    assert encoder.token_index("run") == 1518968264
    assert encoder.token_index("p53") == 1367906838
    assert 0 <= encoder.token_index("any token at all") < 2**31


@pytest.mark.parametrize(
    "kwargs",
    [{"language": "klingon"}, {"k1": -0.1}, {"b": 1.5}, {"avg_doc_tokens": 0.0}],
)
def test_rejects_bad_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Bm25Encoder(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
def qdrant() -> Iterator[QdrantClient]:
    client = QdrantClient(location=":memory:")
    yield client
    client.close()


def test_ranks_rare_term_first_in_qdrant(encoder: Bm25Encoder, qdrant: QdrantClient) -> None:
    docs = [
        "Patients were treated with antibiotics and patients recovered.",
        "Most patients in the trial received placebo; patients patients patients.",
        "The vaccination of elderly patients reduced hospital admissions.",
        "Patients reported headaches after the treatment.",
        "Blood pressure of patients was measured twice daily.",
    ]
    qdrant.create_collection(
        "docs",
        vectors_config={},
        sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    qdrant.upsert(
        "docs",
        points=[
            models.PointStruct(id=i, vector={"bm25": models.SparseVector(indices=indices, values=values)}, payload={})
            for i, (indices, values) in enumerate(encoder.encode_documents(docs))
        ],
    )

    # "vaccination" and "vaccinated" both stem to "vaccin"; "patients" is in every document (low IDF).
    for query in ("vaccination patients", "vaccinated patients"):
        indices, values = encoder.encode_query(query)
        hits = qdrant.query_points(
            "docs", query=models.SparseVector(indices=indices, values=values), using="bm25", limit=3
        ).points
        assert hits[0].id == 2, query
        assert len(hits) == 3


def test_memo_full_starts_over_with_the_same_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    # Words are stemmed and hashed once and remembered; a full memo is replaced. Neither may change a vector.
    monkeypatch.setattr("stores.sparse._MEMO_WORDS", 8)
    texts = [f"running studies {i} of cells, vaccinations and p53 binding in run {i % 3}" for i in range(30)]
    encoder = Bm25Encoder()
    got = [encoder.encode_document(t) for t in texts]
    assert len(encoder._memo) <= 8 + 12  # replaced when full: at most one text's new words over the bound
    assert got == [Bm25Encoder().encode_document(t) for t in texts]  # each from an empty memo


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["Running", "runs", "café", "cafe\u0301", "the", "IS", "x-ray", "42", "ﬁle", "\n"])))
def test_term_set_is_the_distinct_indices_of_the_tokens(words: list[str]) -> None:
    """What the extractor compares sentences by: memoised, and the same terms as `tokenize` gives."""
    encoder = Bm25Encoder()
    text = " ".join(words)
    expected = {encoder.token_index(t) for t in encoder.tokenize(text)}
    assert encoder.term_set(text) == expected
    assert encoder.term_set(text) == expected  # the second time from the memo
