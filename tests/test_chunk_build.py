"""Long documents (issue 15): --chunk splits each text into chunks the model reads whole, one
row each; search gives each document by its best passage; --pool mean gives one vector per
document; --max-seq-length changes what the model reads; a refresh embeds only changed chunks."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest

import hubembed
from hubembed import source
from hubembed.cli import main
from hubembed.embedder import Embedder

TOPICS = {
    "cooking": "Whisk the eggs with sugar, fold in the flour, and bake the sponge until golden. "
    "Season the soup with thyme and simmer the stock for an hour. Knead the dough and let it rise.",
    "gardening": "Water the tomatoes at dawn and mulch the beds against weeds. Prune the roses in "
    "late winter and sow the lettuce in shallow rows. Compost keeps the soil rich.",
    "astronomy": "Jupiter's moons orbit in resonance, and Saturn's rings are ice. A refracting "
    "telescope gathers light with lenses; the Andromeda galaxy is visible on dark nights.",
    "sailing": "Trim the jib and ease the mainsheet as the wind backs. Tack through the eye of the "
    "wind and keep the boat balanced. Reef early when the gusts build over the bay.",
}
NEEDLE = "The Zorblax 3000 dishwasher warranty covers water damage for exactly twelve years."
QUERY = "How many years does the Zorblax 3000 warranty cover water damage?"


def long_text(topic: str, words: int, seed: int, needle_at: float | None = None) -> str:
    rng = random.Random(seed)
    sentences = [s.strip() + "." for s in TOPICS[topic].split(".") if s.strip()]
    out: list[str] = []
    while sum(len(s.split()) for s in out) < words:
        out.append(rng.choice(sentences))
    if needle_at is not None:
        out.insert(int(len(out) * needle_at), NEEDLE)
    # Paragraphs of a few sentences, as documents have.
    return "\n\n".join(" ".join(out[i : i + 6]) for i in range(0, len(out), 6))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    decoy = "Dishwasher care: clean the filter monthly and run an empty hot cycle with vinegar. " * 3
    docs = [
        {"title": "decoy", "text": decoy + long_text("sailing", 600, 1)},
        {"title": "manual", "text": long_text("cooking", 5000, 2, needle_at=0.85)},
        {"title": "garden", "text": long_text("gardening", 3000, 3)},
        {"title": "sky", "text": long_text("astronomy", 2000, 4)},
    ]
    path = folder / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path, docs


def cli(capsys, *args):
    code = main([*map(str, args)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def test_the_answer_deep_in_a_long_document_is_found_with_chunks_and_missed_without(capsys, tmp_path, corpus):
    path, docs = corpus
    whole, chunked = tmp_path / "whole", tmp_path / "chunked"
    assert cli(capsys, "-q", "build", path, whole, "--column", "text")[0] == 0
    assert (
        cli(capsys, "-q", "build", path, chunked, "--column", "text", "--chunk", "64", "--overlap", "8")[0]
        == 0
    )
    missed = hubembed.load(str(whole)).search(QUERY, top_k=1)[0]
    assert missed["row"]["title"] != "manual"  # past 256 tokens the model never read it
    index = hubembed.load(str(chunked))
    found = index.search(QUERY, top_k=2)
    assert found[0]["row"]["title"] == "manual" and found[0]["document"] == 1
    passage = found[0]["passage"]
    assert NEEDLE in passage["text"] and docs[1]["text"][passage["start"] : passage["end"]] == passage["text"]
    assert passage["start"] > 0.75 * len(docs[1]["text"]) - 2000  # in the document's last part
    assert found[1]["document"] != 1  # one hit per document
    code, out, err = cli(capsys, "search", chunked, QUERY, "-k", "1", "--json")
    (hit,) = json.loads(out)
    assert code == 0 and hit["document"] == 1 and NEEDLE in hit["passage"]["text"]
    code, out, err = cli(capsys, "search", chunked, QUERY, "-k", "3", "--chunks", "--json")
    chunk_hits = json.loads(out)
    assert "passage" not in chunk_hits[0] and chunk_hits[0]["row"]["source_row"] == 1


def test_chunk_rows_hold_their_text_offsets_and_source_row_and_the_card_records_it(
    capsys, tmp_path, corpus, st_model
):
    path, docs = corpus
    dst = tmp_path / "o"
    assert (
        cli(capsys, "-q", "build", path, dst, "--column", "text", "--chunk", "100", "--overlap", "10")[0] == 0
    )
    index = hubembed.load(str(dst))
    ds = index.dataset
    assert index.metadata["chunking"] == {"tokens": 100, "overlap": 10, "pool": None}
    # The source's columns but its whole text (held once, in the source), then the chunk's own.
    assert set(ds.column_names) - {"embedding", "text_sha256"} == {
        "title",
        "chunk",
        "chunk_index",
        "chunk_start",
        "chunk_end",
        "source_row",
    }
    assert sorted(set(ds["source_row"])) == [0, 1, 2, 3] and len(ds) > 50
    for row in ds.select(range(0, len(ds), 7)):
        assert docs[row["source_row"]]["text"][row["chunk_start"] : row["chunk_end"]] == row["chunk"]
    tokenizer = st_model.tokenizer  # the tokenizer the model reads with
    assert max(len(tokenizer(c)["input_ids"]) for c in ds["chunk"]) <= 100
    assert index.metadata["rows"] == len(ds) and index.metadata["truncated_texts"] == 0


class Recorder(Embedder):
    """Unit vectors from each text's hash; remembers what it embedded."""

    dimension = 8

    def __init__(self) -> None:
        self.seen: list[str] = []

    def embed_batch(self, texts, timeout=None):
        self.seen += texts
        raw = np.array([list(hashlib.sha256(t.encode()).digest()[:8]) for t in texts], np.float32) + 1
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def recorded_build(src, dst, embedder, **options):
    return hubembed.build(
        str(src),
        str(dst),
        embedder_factory=lambda _: (embedder, {"model": "test/recorder"}),
        progress=False,
        **options,
    )


def test_a_refresh_embeds_only_the_chunks_of_changed_documents_and_blocks_change_nothing(
    tmp_path, monkeypatch, corpus
):
    docs = corpus[1]
    path = tmp_path / "docs.jsonl"
    path.write_text(corpus[0].read_text())
    whole = recorded_build(path, tmp_path / "o", Recorder(), column="text", chunk=64)
    edited = [dict(d) for d in docs]
    edited[2]["text"] = edited[2]["text"] + "\n\nA new closing paragraph about compost."
    path.write_text("".join(json.dumps(d) + "\n" for d in edited))
    again = Recorder()
    second = recorded_build(path, tmp_path / "o", again, column="text", chunk=64)
    # Only the chunks the new paragraph changed (the last one or two of document 2).
    assert 1 <= second.embedded <= 2 and all(t in edited[2]["text"] for t in again.seen)
    assert second.rows >= whole.rows
    # The same build in blocks of 2 documents: the same rows and vectors.
    monkeypatch.setattr(source, "BLOCK_ROWS", 2)
    recorded_build(path, tmp_path / "blocks", Recorder(), column="text", chunk=64)
    a, b = hubembed.load(str(tmp_path / "o")), hubembed.load(str(tmp_path / "blocks"))
    assert a.dataset["chunk"] == b.dataset["chunk"] and a.dataset["source_row"] == b.dataset["source_row"]
    assert np.array_equal(a.embeddings.numpy(), b.embeddings.numpy())


def test_pool_mean_gives_one_normalised_vector_per_document(tmp_path, corpus, st_model):
    path, docs = corpus
    dst = tmp_path / "o"
    result = hubembed.build(str(path), str(dst), column="text", chunk=200, pool="mean", progress=False)
    index = hubembed.load(str(dst))
    assert result.rows == 4 and "chunk" not in index.dataset.column_names
    assert result.embedded == 4  # texts, each through its chunks: "N embedded, rows - N reused"
    assert index.metadata["pooling"] == "mean/200/0" and index.metadata["normalized"] is True
    from hubembed.chunking import Chunker
    from hubembed.embedder import EmbedSettings
    from hubembed.models import resolve_model

    chunker = Chunker.for_model(resolve_model("sentence-transformers/all-MiniLM-L6-v2"), EmbedSettings(), 200)
    spans = chunker.split(docs[3]["text"])
    chunks = st_model.encode([docs[3]["text"][a:b] for a, b in spans], normalize_embeddings=True)
    expected = chunks.mean(axis=0)
    expected /= np.linalg.norm(expected)
    assert float(index.embeddings.numpy()[3] @ expected) > 0.9999


def test_max_seq_length_lowers_what_the_model_reads(tmp_path, st_model):
    src = tmp_path / "in.csv"
    long = "Medicare covers hospital stays. " + "Premiums and deductibles vary by plan. " * 40
    src.write_text(f"text\n{long}\nWhat is Medicare?\n")
    dst = tmp_path / "o"
    hubembed.build(str(src), str(dst), max_seq_length=32, progress=False)
    index = hubembed.load(str(dst))
    assert index.metadata["max_seq_length"] == 32 and index.metadata["seq_length"] == 32
    st_model.max_seq_length = 32
    try:
        expected = st_model.encode([long], normalize_embeddings=True)[0]
    finally:
        st_model.max_seq_length = 256
    assert float(index.embeddings.numpy()[0] @ expected) > 0.9999
    assert index.metadata["truncated_texts"] == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--chunk", "64", "--overlap", "64"], "--overlap must be at least 0 and smaller than --chunk 64"),
        (
            ["--chunk", "300"],
            "--chunk 300 is more than sentence-transformers/all-MiniLM-L6-v2 reads (256 tokens)",
        ),
        (["--pool", "mean"], "--pool mean averages the vectors of a text's chunks: give --chunk too"),
        (["--overlap", "8"], "--overlap is the overlap of chunks: give --chunk too"),
        (["--max-seq-length", "600"], "--max-seq-length 600 is more than"),
    ],
)
def test_bad_chunk_options_are_refused_before_any_work(capsys, tmp_path, monkeypatch, args, expected):
    from hubembed import models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the bad option was refused")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr("hubembed.backends.load_model", refuse)
    code, out, err = cli(capsys, "build", "sample:medicare-faqs", tmp_path / "o", *args)
    assert code == 2 and expected in err
    assert not (tmp_path / "o").exists()


def test_a_chunk_too_small_for_the_prompt_is_a_usage_error(capsys, tmp_path):
    code, out, err = cli(
        capsys,
        "build",
        "sample:medicare-faqs",
        tmp_path / "o",
        "--chunk",
        "4",
        "--prompt",
        "Represent this: ",
    )
    assert code == 2 and "--chunk 4 --overlap 0:" in err
    assert not (tmp_path / "o").exists()


def test_max_seq_length_raises_what_the_model_reads_up_to_its_position_limit(tmp_path, st_model):
    src = tmp_path / "in.csv"
    long = "Medicare covers hospital stays and doctor visits. " * 45  # about 400 tokens
    src.write_text(f"text\n{long}\n")
    hubembed.build(str(src), str(tmp_path / "o"), max_seq_length=512, progress=False)
    index = hubembed.load(str(tmp_path / "o"))
    assert index.metadata["max_seq_length"] == 512 and index.metadata["truncated_texts"] == 0
    st_model.max_seq_length = 512
    try:
        whole = st_model.encode([long], normalize_embeddings=True)[0]
    finally:
        st_model.max_seq_length = 256
    cut = st_model.encode([long], normalize_embeddings=True)[0]
    vector = index.embeddings.numpy()[0]
    assert float(vector @ whole) > 0.9999 and float(vector @ cut) < 0.9999


def test_a_source_with_only_the_text_column_is_chunked_too(tmp_path, corpus):
    path, docs = corpus
    only_text = tmp_path / "only.jsonl"
    only_text.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in docs))
    dst = tmp_path / "o"
    recorded_build(only_text, dst, Recorder(), column="text", chunk=100)
    ds = hubembed.load(str(dst)).dataset
    assert set(ds.column_names) - {"embedding", "text_sha256"} == {
        "chunk",
        "chunk_index",
        "chunk_start",
        "chunk_end",
        "source_row",
    }
    assert sorted(set(ds["source_row"])) == [0, 1, 2, 3]
    for row in ds:
        assert docs[row["source_row"]]["text"][row["chunk_start"] : row["chunk_end"]] == row["chunk"]
