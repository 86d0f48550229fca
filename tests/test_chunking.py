"""hubembed.chunking: chunks the model reads whole, at paragraph and sentence ends where they can be.

Every chunk is counted again here, with a tokenizer loaded apart from the chunker's, exactly
as the model reads it: the prompt, the chunk and the special tokens, nothing cut.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from hubembed import config
from hubembed.chunking import Chunker, _Text
from hubembed.embedder import EmbedSettings
from hubembed.errors import ModelError
from hubembed.models import ResolvedModel, resolve_model

WORDS = [
    "the", "patient", "doctor", "insurance", "plan", "covers", "annual", "premiums", "claims", "hospital",
    "pharmacy", "review", "benefits", "unexpected", "monthly", "appointment", "delays", "website",
    "members", "region", "family", "invoice",
]  # fmt: skip


@pytest.fixture(scope="module")
def resolved() -> ResolvedModel:
    model = resolve_model(config.DEFAULT_MODEL)
    assert Path(model.location, "tokenizer.json").is_file()  # the packaged copy: no network
    return model


@pytest.fixture(scope="module")
def reference(resolved: ResolvedModel) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(Path(resolved.location) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def make(resolved: ResolvedModel, max_tokens: int, overlap: int = 0, prompt: str | None = None) -> Chunker:
    return Chunker.for_model(resolved, EmbedSettings(prompt=prompt), max_tokens, overlap)


def sentence(rng: random.Random, words: int | None = None) -> str:
    body = " ".join(rng.choice(WORDS) for _ in range(words or rng.randint(5, 14)))
    return body[0].upper() + body[1:] + rng.choice(".?!")


def paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


def document(words: int, seed: int = 0, newline: str = "\n") -> str:
    rng = random.Random(seed)
    paragraphs: list[str] = []
    while sum(len(p.split()) for p in paragraphs) < words:
        paragraphs.append(paragraph(rng, rng.choice((1, 2, 3, 5, 8, 20))))
    return (newline * 2).join(paragraphs)


def check(
    chunker: Chunker, reference: Tokenizer, text: str, spans: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Everything split() promises, for TEXT and its SPANS."""
    if not text.strip():
        assert spans == []
        return spans
    assert spans, "a non-blank text gives at least one chunk"
    for start, end in spans:
        assert 0 <= start < end <= len(text)
        chunk = text[start:end]
        assert chunk.strip(), "no blank chunk"
        tokens = len(reference.encode(chunker.prompt + chunk).ids)
        assert tokens <= chunker.max_tokens, (tokens, chunk[:80])
        if len(spans) > 1:
            assert chunk == chunk.strip()
    offsets = reference.encode(text, add_special_tokens=False).offsets
    covered = bytearray(len(text))
    for start, end in spans:
        covered[start:end] = b"\1" * (end - start)
    assert all(covered[i] or c.isspace() for i, c in enumerate(text)), (
        "every non-blank character is in a chunk"
    )
    for (start, end), (next_start, next_end) in zip(spans, spans[1:], strict=False):
        assert start < next_start and end < next_end, "in order, each with something new"
        if chunker.overlap == 0:
            assert next_start >= end and not text[end:next_start].strip()
        elif next_start < end:  # the text's own tokens the two chunks share
            assert sum(next_start <= a and b <= end for a, b in offsets) <= chunker.overlap
    return spans


def reassemble(text: str, spans: list[tuple[int, int]]) -> str:
    """The chunks put back together, each overlap once, with the whitespace between them."""
    out, done = "", spans[0][0]
    for start, end in spans:
        out += text[done:end] if start <= done else text[done:start] + text[start:end]
        done = max(done, end)
    return out


def test_a_text_that_fits_is_one_chunk_of_the_whole_text(resolved, reference):
    chunker = make(resolved, 64)
    for text in ("Hello world.", "  padded text\r\n", "a" * 10_000, "\u200b", "one\n\ntwo\n\nthree"):
        assert check(chunker, reference, text, chunker.split(text)) == [(0, len(text))]
    for blank in ("", " ", "\n\r\n\t "):
        assert chunker.split(blank) == []
    # the limit itself: 62 words of one token each, and the two special tokens
    text = " ".join(["plan"] * 62)
    assert chunker.split(text) == [(0, len(text))]
    assert len(chunker.split(text + " plan")) == 2


@pytest.mark.parametrize("max_tokens", [3, 8, 16, 64, 256])
def test_every_chunk_within_the_budget(resolved, reference, max_tokens):
    chunker = make(resolved, max_tokens)
    text = document(1200, seed=max_tokens)
    spans = check(chunker, reference, text, chunker.split(text))
    tokens = chunker.tokens([text[s:e] for s, e in spans])
    assert max(tokens) <= max_tokens
    if max_tokens >= 16:  # chunks are not cut needlessly short
        assert sum(tokens) / len(tokens) >= 0.6 * max_tokens


def test_paragraphs_are_kept_whole_where_they_fit(resolved, reference):
    rng = random.Random(1)
    paragraphs = [paragraph(rng, 3) for _ in range(40)]  # ~40 tokens each, 64 at most
    chunker = make(resolved, 64)
    assert all(len(reference.encode(p).ids) <= 64 for p in paragraphs)
    for newline in ("\n", "\r\n"):
        text = (newline * 2).join(paragraphs)
        spans = check(chunker, reference, text, chunker.split(text))
        chunks = [text[s:e] for s, e in spans]
        # each chunk is whole paragraphs: as many as fit, at least one
        for chunk in chunks:
            assert all(part in paragraphs for part in re.split(r"(?:\r?\n){2}", chunk))
        assert not any("\r" in c[-1:] + c[:1] for c in chunks)


def test_long_paragraphs_are_cut_at_sentence_ends(resolved, reference):
    rng = random.Random(2)
    text = paragraph(rng, 5) + "\n\n" + paragraph(rng, 60) + "\n\n" + paragraph(rng, 2)
    chunker = make(resolved, 48)
    spans = check(chunker, reference, text, chunker.split(text))
    assert len(spans) > 10
    for start, end in spans:
        assert text[end - 1] in ".?!", text[start:end]
        assert text[start].isupper()


def test_a_long_line_of_no_punctuation_is_cut_between_words(resolved, reference):
    text = " ".join(random.Random(3).choice(WORDS) for _ in range(3000))
    chunker = make(resolved, 100, overlap=10)
    spans = check(chunker, reference, text, chunker.split(text))
    for start, end in spans:
        assert start == 0 or text[start - 1] == " "
        assert end == len(text) or text[end] == " "


def test_text_with_no_whitespace(resolved, reference):
    rng = random.Random(4)
    cjk = "".join(chr(0x4E00 + rng.randrange(2000)) for _ in range(10_000))
    sentences = "".join(cjk[i : i + rng.randint(10, 40)] + "。" for i in range(0, 3000, 40))
    path = "/".join(rng.choice(WORDS) for _ in range(3000))  # one "word" of pre-tokens
    for text in (cjk, sentences, path, "x" * 100 + "y" * 100 + "z" * 10_000):
        for overlap in (0, 20):
            chunker = make(resolved, 128, overlap=overlap)
            spans = check(chunker, reference, text, chunker.split(text))
            if text is sentences and overlap == 0:
                assert all(text[e - 1] == "。" for _, e in spans)


def test_words_cut_when_nothing_else_fits(resolved, reference):
    # three tokens of text a chunk: long words are cut between their pieces, and a piece re-read
    # as the start of a word is counted again (and the chunk made shorter where it grew)
    text = "antidisestablishmentarianism incomprehensibilities " * 20
    chunker = make(resolved, 5)
    spans = check(chunker, reference, text, chunker.split(text))
    assert reassemble(text, spans) == text.strip()


def test_emoji_and_non_ascii(resolved, reference):
    rng = random.Random(5)
    extras = (
        "😀",
        "🎉👩‍👩‍👧",
        "naïve café",
        "Ünïcödé",
        "Ελληνικά",
        "русский текст",
        "עברית",
        "…",
        "\u200b",
        "\x00",
    )
    text = "\n\n".join(
        " ".join(sentence(rng) + " " + rng.choice(extras) for _ in range(rng.randint(1, 9)))
        for _ in range(80)
    )
    for overlap in (0, 12):
        chunker = make(resolved, 40, overlap=overlap)
        spans = check(chunker, reference, text, chunker.split(text))
        if overlap == 0:
            assert reassemble(text, spans) == text.strip()


@pytest.mark.parametrize("overlap", [0, 1, 16, 61])
def test_overlap(resolved, reference, overlap):
    chunker = make(resolved, 64, overlap=overlap)  # 62 tokens of text a chunk: 61 is the most
    text = document(1500 if overlap < 61 else 300, seed=overlap)
    spans = check(chunker, reference, text, chunker.split(text))
    assert reassemble(text, spans) == text.strip()
    if overlap:
        shared = [
            len(reference.encode(text[b:e], add_special_tokens=False).ids)
            for (_, e), (b, _) in zip(spans, spans[1:], strict=False)
        ]
        assert max(shared) <= overlap
        if overlap > 1:  # about as asked (one token after a sentence end is its full stop: none then)
            assert sum(shared) / len(shared) >= 0.6 * overlap
        assert all(text[b - 1].isspace() for b, _ in spans[1:])  # and at word starts


def test_prompt_is_counted(resolved, reference):
    text = document(800, seed=6)
    plain, prompted = make(resolved, 64), make(resolved, 64, prompt="query: ")
    assert prompted.budget == plain.budget - 2  # "query", ":"
    spans = check(prompted, reference, text, prompted.split(text))
    assert max(prompted.tokens([text[s:e] for s, e in spans])) <= 64
    assert len(spans) > len(plain.split(text))


def test_a_prompt_that_joins_the_text_is_counted_exactly(resolved, reference):
    # "un" + "beliefs" is read as one word, of more pieces than the two apart (un ##bel ##ie ##fs):
    # the plan made from the text's own tokens goes over, and the exact count shortens those chunks
    chunker = Chunker(Tokenizer.from_file(str(Path(resolved.location) / "tokenizer.json")), 10, prompt="un")
    text = "beliefs " * 100
    planned = _Text(text, chunker.tokenizer.encode(text, add_special_tokens=False)).plan(chunker.budget, 0)
    assert max(chunker.tokens([text[s:e] for s, e in planned])) > 10
    check(chunker, reference, text, chunker.split(text))


def test_too_small_a_budget_is_refused(resolved):
    with pytest.raises(ValueError, match="give at least 3"):
        make(resolved, 2)
    with pytest.raises(ValueError, match="prompt's 2 tokens"):
        make(resolved, 4, prompt="query: ")
    make(resolved, 5, prompt="query: ")
    with pytest.raises(ValueError, match="give 0 to 61"):
        make(resolved, 64, overlap=62)
    with pytest.raises(ValueError, match="overlap"):
        make(resolved, 64, overlap=-1)


def test_split_many_is_split_of_each(resolved, reference, monkeypatch):
    import hubembed.chunking

    texts = [document(400, seed=i) for i in range(6)] + ["", "short one", " \n ", "中文。" * 300]
    chunker = make(resolved, 50, overlap=8)
    expected = [chunker.split(t) for t in texts]
    assert chunker.split_many(texts) == expected
    monkeypatch.setattr(hubembed.chunking, "_GROUP_CHARS", 3000)  # in several groups
    assert chunker.split_many(texts) == expected
    assert chunker.split_many([]) == []


def test_a_5000_word_document_reassembles(resolved, reference):
    text = document(5000, seed=7)
    chunker = make(resolved, 256)
    spans = check(chunker, reference, text, chunker.split(text))
    assert reassemble(text, spans) == text.strip()
    tokens = chunker.tokens([text[s:e] for s, e in spans])
    assert sum(tokens) - 2 * len(spans) == len(reference.encode(text, add_special_tokens=False).ids)
    overlapped = make(resolved, 256, overlap=32)
    assert reassemble(text, check(overlapped, reference, text, overlapped.split(text))) == text.strip()


def test_for_model(resolved, tmp_path):
    chunker = make(resolved, 128)
    assert (chunker.max_tokens, chunker.overlap, chunker.prompt, chunker.model_max_length) == (
        128,
        0,
        "",
        256,
    )
    assert chunker.tokenizer.truncation is None and chunker.tokenizer.padding is None
    # a model folder without tokenizer.json (a slow tokenizer only)
    with pytest.raises(ModelError, match="fast tokenizer"):
        Chunker.for_model(ResolvedModel("someone/slow", str(tmp_path), None, "local"), EmbedSettings(), 128)
    # sentence-transformers' do_lower_case: lowercased as the model reads it
    folder = tmp_path / "model"
    folder.mkdir()
    tokenizer = json.loads((Path(resolved.location) / "tokenizer.json").read_text())
    tokenizer["normalizer"]["lowercase"] = False
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    shutil.copy(Path(resolved.location) / "config_sentence_transformers.json", folder)
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 128, "do_lower_case": true}')
    local = ResolvedModel(str(folder), str(folder), None, "local")
    cased = Chunker.for_model(local, EmbedSettings(), 64)
    assert cased.tokenizer.encode("HELLO").tokens == ["[CLS]", "hello", "[SEP]"]
    assert cased.model_max_length == 128
