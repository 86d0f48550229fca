"""One streaming build (issue 11): blocks in, blocks out. Whatever the block size the output is
the same; a bad text far into the stream is refused by row with what came before kept; a
failure while writing leaves DST untouched; the options are checked once, alike for the CLI and
the library; the card's record round-trips."""

from __future__ import annotations

import hashlib
import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hubembed
from hubembed import output, source
from hubembed.card import BuildRecord, read_metadata, settings_fingerprint
from hubembed.embedder import Embedder
from hubembed.errors import InvalidTextError, UsageError
from hubembed.options import BuildOptions


class Recorder(Embedder):
    """Unit vectors from each text's hash; remembers every text it was asked to embed."""

    dimension = 8

    def __init__(self, seconds_per_call: float = 0.0) -> None:
        self.seen: list[str] = []
        self.seconds_per_call = seconds_per_call

    def embed_batch(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
        time.sleep(self.seconds_per_call)  # as a model takes time: its work is worth saving
        self.seen += texts
        raw = np.array([list(hashlib.sha256(t.encode()).digest()[:8]) for t in texts], np.float32) + 1
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def build(src, dst, embedder: Recorder, **kwargs) -> hubembed.BuildResult:
    meta = {"model": "test/recorder"}
    return hubembed.build(
        str(src), str(dst), embedder_factory=lambda _: (embedder, meta), progress=False, **kwargs
    )


def write_parquet(path, texts) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": pa.array(texts, pa.string())}), buffer)
    path.write_bytes(buffer.getvalue())


@pytest.fixture
def texts() -> list[str]:
    # Repeats within and across blocks, and lengths that reorder them when sorted.
    return [f"text {i % 37} " + "word " * (i % 37 % 11) for i in range(200)]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_many_small_blocks_give_the_same_dataset_as_one(tmp_path, monkeypatch, texts, fmt):
    src = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        write_parquet(src, texts)
    else:
        src.write_text("".join(f'{{"id": {i}, "text": "{t}"}}\n' for i, t in enumerate(texts)))
    whole = build(src, tmp_path / "whole", Recorder())
    assert whole.embedded == 37  # each distinct text once
    monkeypatch.setattr(source, "BLOCK_ROWS", 16)
    monkeypatch.setattr(output, "ROW_GROUP_BYTES", 1000)  # many row groups, several writes per shard
    blocks = build(src, tmp_path / "blocks", Recorder())
    assert blocks.rows == whole.rows == 200
    a, b = hubembed.load(str(tmp_path / "whole")), hubembed.load(str(tmp_path / "blocks"))
    assert b.dataset["text"] == a.dataset["text"] == texts
    assert b.dataset["id"] == list(range(200))
    assert np.array_equal(a.embeddings.numpy(), b.embeddings.numpy())
    assert a.embeddings.numpy() == pytest.approx(Recorder().embed_batch(texts))
    assert b.dataset["text_sha256"] == [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    ignore = {"created_at"}
    assert {k: v for k, v in a.metadata.items() if k not in ignore} == {
        k: v for k, v in b.metadata.items() if k not in ignore
    }


def test_a_null_text_far_into_the_stream_is_refused_and_the_work_before_it_is_kept(
    tmp_path, monkeypatch, capsys
):
    from hubembed.cli import main

    texts = [f"passage number {i}" for i in range(200)]
    bad = list(texts)
    bad[150], bad[170], bad[199] = "", None, "   "
    src = tmp_path / "in.parquet"
    write_parquet(src, bad)
    monkeypatch.setattr(source, "BLOCK_ROWS", 16)
    first = Recorder(seconds_per_call=0.01)
    with pytest.raises(InvalidTextError) as refused:
        build(src, tmp_path / "out", first)
    assert "column 'text' has 3 null or empty texts (rows 151, 171, 200, counting from 1)" in str(
        refused.value
    )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    assert sorted(first.seen) == sorted(texts[:144])  # 9 blocks of 16 before the one with row 150
    # The CLI says the same, exit 2.
    assert main(["build", str(src), str(tmp_path / "out")]) == 2
    assert "rows 151, 171, 200" in capsys.readouterr().err
    # Fixed, the build embeds only what the refused one did not.
    write_parquet(src, texts)
    second = Recorder()
    result = build(src, tmp_path / "out", second)
    assert result.rows == 200 and result.embedded == 56
    assert sorted(second.seen) == sorted(texts[144:])
    assert hubembed.load(str(tmp_path / "out")).dataset["text"] == texts


def test_a_failure_while_writing_leaves_dst_as_it_was(tmp_path, monkeypatch, texts):
    src = tmp_path / "in.parquet"
    write_parquet(src, texts)
    dst = tmp_path / "out"
    build(src, dst, Recorder())
    before = {p.relative_to(dst): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    write_parquet(src, [t + " edited" for t in texts])
    monkeypatch.setattr(source, "BLOCK_ROWS", 16)
    calls = []

    def failing_write(self, table, vectors, hashes):
        calls.append(len(table))
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return original(self, table, vectors, hashes)

    original = output.ShardOutput.write
    monkeypatch.setattr(output.ShardOutput, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        build(src, dst, Recorder())
    after = {p.relative_to(dst): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "out"]  # no staging left


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"batch_size": 0}, "--batch-size must be at least 1 (got 0)"),
        ({"prompt": "a", "prompt_name": "b"}, "give either --prompt-name or --prompt"),
        ({"engine": "spark"}, "unknown engine 'spark'"),
        ({"device": "gpu"}, "unknown device 'gpu'"),
        ({"time_budget": 0}, "--time-budget must be a positive number"),
        ({"backend": "onnx", "remote": "http://x/embed"}, "drop one of them"),
    ],
)
def test_the_library_refuses_what_the_cli_refuses_before_any_work(tmp_path, options, expected):
    with pytest.raises(UsageError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        hubembed.build("sample:medicare-faqs", str(tmp_path / "o"), **options)
    assert not (tmp_path / "o").exists()
    with pytest.raises(TypeError, match="batchsize"):
        hubembed.build("sample:medicare-faqs", str(tmp_path / "o"), batchsize=3)


def test_the_cli_and_the_library_describe_a_build_the_same_way():
    from hubembed.cli import _parser

    args = _parser().parse_args(
        ["build", "a", "b", "--batch-size", "64", "--engine", "ray", "--workers", "3", "--skip-empty"]
    )
    from_cli = BuildOptions.create(args.src, args.dst, **{k: getattr(args, k) for k in BuildOptions.names()})
    assert from_cli == BuildOptions.create("a", "b", batch_size=64, engine="ray", workers=3, skip_empty=True)
    assert from_cli.embedding.batch_size == 64 and from_cli.engine.workers == 3


def test_the_card_record_round_trips_and_old_cards_still_match(tmp_path, medicare_texts):
    result = build("sample:medicare-faqs", tmp_path / "o", Recorder())
    meta = read_metadata((tmp_path / "o" / "README.md").read_text())
    record = BuildRecord.from_dict(meta)
    assert record is not None and record.to_dict() == meta == result.metadata
    assert record.rows == 13 and record.dimension == 8 and record.hash_column == "text_sha256"
    # A card from before "precision" and "backend" existed: the same settings.
    old = {k: v for k, v in meta.items() if k not in ("precision", "backend")}
    assert BuildRecord.from_dict(old).fingerprint() == record.fingerprint() == settings_fingerprint(meta)
    assert BuildRecord.from_dict({}) is None and BuildRecord.from_dict({"other": 1}) is None


def test_work_that_costs_less_than_saving_it_is_not_checkpointed(tmp_path, monkeypatch, texts):
    """A model's batches are saved as they finish; a batch that took less time to embed than
    saving takes is not worth saving: a killed build embeds it again instead."""
    from hubembed import refresh
    from hubembed.stream import _Saver

    saved = []
    original = refresh.Checkpoint.save

    def counting(self, digests, vectors):
        saved.append(len(vectors))
        return original(self, digests, vectors)

    monkeypatch.setattr(refresh.Checkpoint, "save", counting)
    monkeypatch.setattr(source, "BLOCK_ROWS", 16)
    src = tmp_path / "in.parquet"
    write_parquet(src, [f"{t} {i}" for i, t in enumerate(texts)])
    build(src, tmp_path / "out", Recorder(seconds_per_call=0.01))
    assert sum(saved) == 200  # every batch of a model that takes time
    saved.clear()
    saver = _Saver(refresh.Checkpoint("src", "settings"))
    digests = np.zeros(1000, "S32")
    vectors = np.ones((1000, 384), np.float32)
    saver.save(digests, vectors, cost=0.0)  # the first is saved, and timed
    saver.save(digests, vectors, cost=0.0)  # free to embed again: not saved
    saver.save(digests, vectors, cost=10.0)  # ten seconds of work: saved
    assert saved == [1000, 1000]
