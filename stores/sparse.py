"""BM25 sparse vectors for Qdrant collections whose sparse vector uses `Modifier.IDF`.

With `modifier=IDF` Qdrant multiplies each matching dimension by the term's inverse document frequency,
computed server-side from the live collection, so an encoder supplies only the other parts of BM25:

    document value = tf * (k1 + 1) / (tf + k1 * (1 - b + b * doc_len / avg_doc_tokens))
    query value    = 1.0 per distinct query term

and the score Qdrant returns is `sum(idf(t) * doc_value(t))` over the query's terms, i.e. Okapi BM25.

Contract shared by every `encode_*` method:

- a vector is `(indices, values)`, indices unique and sorted ascending, both lists the same length;
- text with no indexable tokens (empty, only stop words, only punctuation) gives `([], [])`;
- a token's index is `token_index(token)`: a 31-bit hash that is the same in every process, platform and
  Python version, so vectors written by one worker match queries built by another. Two tokens that
  collide on an index are counted as one term; with 2**31 slots that costs nothing measurable.

`avg_doc_tokens` is a fixed corpus estimate, not a running average: Qdrant stores the values we send, so a
drifting average would leave old and new points scored on different scales.
"""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence

import Stemmer

SparseVector = tuple[list[int], list[float]]

# NLTK's classic 179-word English stop-word list minus its 26 apostrophe forms ("don't", "you're"): our
# tokenizer splits on apostrophes, so those can never be tokens, and their pieces ("don", "t", "re") are
# in the list already. 153 words.
ENGLISH_STOP_WORDS: frozenset[str] = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her
    hers herself it its itself they them their theirs themselves what which who whom this that these
    those am is are was were be been being have has had having do does did doing a an the and but if or
    because as until while of at by for with about against between into through during before after
    above below to from up down in out on off over under again further then once here there when where
    why how all any both each few more most other some such no nor not only own same so than too very s
    t can will just don should now d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma
    mightn mustn needn shan shouldn wasn weren won wouldn
    """.split()  # noqa: SIM905 -- as a list literal the formatter spreads it over 153 lines
)

# Unicode letters and digits; everything else (punctuation, "_", "-", "+") separates tokens, so
# "IL-6" -> "il", "6" and "CD4+" -> "cd4" while "p53" stays whole.
_TOKEN_RE = re.compile(r"[^\W_]+")

# Qdrant sparse indices are u32; keeping them below 2**31 also keeps them valid as signed 32-bit ints in
# any client or store that round-trips them.
_INDEX_MASK = 0x7FFFFFFF

# Words whose index (or whose lack of one: a word that stems to "") an encoder remembers: stemming and
# hashing each occurrence again was half of a document's encoding. Full, the memo starts over.
_MEMO_WORDS = 65536
# Part of `Bm25Encoder.term_space`: bump it when the words, their stems or their indices change, so that
# terms stored with older chunks (`stores.units.Layout`) are not compared with new ones.
TERMS_VERSION = 1


class Bm25Encoder:
    """Turns text into BM25 term-frequency sparse vectors (see the module docstring for the contract).

    Safe to share between threads: the one stemmer object is used under a lock.
    """

    def __init__(
        self,
        *,
        language: str = "english",
        k1: float = 1.2,
        b: float = 0.75,
        avg_doc_tokens: float = 120.0,
    ) -> None:
        """Build an encoder.

        `language` is a Snowball algorithm name (`Stemmer.algorithms()`). Stop words are removed only for
        "english", the one list we embed; other languages are stemmed without stop-word removal, which
        BM25's IDF tolerates (stop words get near-zero weight anyway).

        Raises ValueError for an unknown language, k1 < 0, b outside [0, 1] or avg_doc_tokens <= 0.
        """
        if k1 < 0:
            raise ValueError(f"k1 must be >= 0, got {k1}")
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"b must be in [0, 1], got {b}")
        if avg_doc_tokens <= 0:
            raise ValueError(f"avg_doc_tokens must be > 0, got {avg_doc_tokens}")
        try:
            self._stemmer = Stemmer.Stemmer(language)
        except KeyError as exc:
            raise ValueError(f"unknown stemmer language {language!r}; see Stemmer.algorithms()") from exc
        # PyStemmer objects keep mutable C state (and a word cache) and are not thread-safe.
        self._stemmer_lock = threading.Lock()
        self._stop_words = ENGLISH_STOP_WORDS if language == "english" else frozenset()
        # word -> its stem's index, None for a word that stems to nothing (see `_indices_of`).
        self._memo: dict[str, int | None] = {}
        self.language = language
        self.k1 = k1
        self.b = b
        self.avg_doc_tokens = avg_doc_tokens

    def tokenize(self, text: str) -> list[str]:
        """Return the stemmed, stop-word-free tokens of `text` in order, duplicates kept."""
        words = self._words(text)
        if not words:
            return []
        return [s for s in self._stem(words) if s]

    def _words(self, text: str) -> list[str]:
        """The words of `text` to stem: normalised, lower-cased, stop words removed."""
        # NFKC first so that composed and decomposed accents ("café" typed two ways), ligatures and
        # full-width characters give the same tokens in documents and queries.
        normalized = unicodedata.normalize("NFKC", text).lower()
        return [w for w in _TOKEN_RE.findall(normalized) if w not in self._stop_words]

    def _stem(self, words: list[str]) -> list[str]:
        with self._stemmer_lock:
            stems: list[str] = self._stemmer.stemWords(words)
        return stems

    def _indices_of(self, words: list[str]) -> dict[str, int | None]:
        """Each distinct word's token index (`token_index` of its stem), None for a word that stems to "".
        A word's stem depends on the word alone, so it is looked up in the memo before it is stemmed."""
        memo = self._memo  # replaced when full, never emptied: a thread holding the old one still reads it
        found: dict[str, int | None] = {}
        missing: list[str] = []
        for w in dict.fromkeys(words):
            if w in memo:
                found[w] = memo[w]
            else:
                missing.append(w)
        if missing:
            learned = {w: self.token_index(s) if s else None for w, s in zip(missing, self._stem(missing), strict=True)}
            found.update(learned)
            if len(memo) + len(learned) > _MEMO_WORDS:
                self._memo = learned
            else:
                memo.update(learned)
        return found

    @property
    def term_space(self) -> str:
        """The name of the space `term_set` maps into: the same name, the same indices for the same text."""
        return f"bm25/{self.language}/{TERMS_VERSION}"

    def term_set(self, text: str) -> set[int]:
        """The distinct terms of `text` as their sparse-vector indices: `{token_index(t) for t in
        tokenize(text)}`, with each word's stem looked up in the memo first (the extractor asks this of
        every sentence of every passage it is shown, and most words come back)."""
        index_of = self._indices_of(self._words(text))
        return {i for i in index_of.values() if i is not None}

    def token_index(self, token: str) -> int:
        """Return the sparse-vector index of `token`: blake2b-32 of its UTF-8 bytes, masked to 31 bits.

        Deliberately not `hash()`, which is salted per process for str.
        """
        digest = hashlib.blake2b(token.encode("utf-8"), digest_size=4).digest()
        return int.from_bytes(digest, "little") & _INDEX_MASK

    def encode_document(self, text: str) -> SparseVector:
        """Return the BM25 term-frequency vector of one document (or chunk)."""
        words = self._words(text)
        index_of = self._indices_of(words)
        term_freqs: dict[int, int] = {}
        length = 0  # tokens after stop-word removal, as `avg_doc_tokens` counts them
        for word, n in Counter(words).items():
            index = index_of[word]
            if index is not None:
                term_freqs[index] = term_freqs.get(index, 0) + n
                length += n
        return self.document_vector(term_freqs, length)

    def document_vector(self, term_freqs: Mapping[int, int], length: int) -> SparseVector:
        """The BM25 vector of a document of `length` indexable tokens whose terms occur `term_freqs[index]`
        times (`encode_document` once the text is counted; the synthetic corpora of `bench` too)."""
        if not length:
            return [], []
        length_norm = self.k1 * (1.0 - self.b + self.b * length / self.avg_doc_tokens)
        indices = sorted(term_freqs)
        values = [tf * (self.k1 + 1.0) / (tf + length_norm) for tf in map(term_freqs.__getitem__, indices)]
        return indices, values

    def encode_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """Return `encode_document(t)` for each text, in order."""
        return [self.encode_document(text) for text in texts]

    def encode_query(self, text: str) -> SparseVector:
        """Return the query vector: each distinct query term once, weight 1.0 (Qdrant applies IDF)."""
        indices = sorted({self.token_index(t) for t in self.tokenize(text)})
        return indices, [1.0] * len(indices)
