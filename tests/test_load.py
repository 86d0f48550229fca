"""hubembed.load maps a build's vectors from its cache of decoded shards: right vectors, never a
stale build's, private to the process, and still a load where the cache cannot be written."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import hubembed
from hubembed.embedder import Embedder


class HashEmbedder(Embedder):
    """Seeded vectors from each text's hash: no model, and a different SALT gives other vectors."""

    def __init__(self, dimension: int = 8, salt: str = "") -> None:
        self.dimension, self.salt = dimension, salt

    def embed_batch(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
        return np.stack([vector(t, self.dimension, self.salt) for t in texts])


def vector(text: str, dimension: int = 8, salt: str = "") -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(f"{salt}{text}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)


def build(src, dst, *, npy=False, **kwargs):
    """A build; without its vectors/ .npy unless NPY (the cache serves the shards alone)."""
    embedder = HashEmbedder(**kwargs)
    meta = {"model": f"test/hash-{kwargs}"}
    result = hubembed.build(str(src), str(dst), embedder_factory=lambda _: (embedder, meta), progress=False)
    if not npy:
        shutil.rmtree(Path(dst) / "vectors")
    return result


@pytest.fixture
def source(tmp_path):
    texts = [f"text number {i}" for i in range(5000)]
    path = tmp_path / "src.csv"
    path.write_text("text\n" + "\n".join(texts) + "\n", encoding="utf-8")
    return path, texts


def cached_files():
    return sorted((hubembed.config.cache_dir() / "vectors").glob("*.npy"))


def test_second_load_maps_the_cached_matrix_and_edits_stay_private(tmp_path, source, monkeypatch):
    import hubembed.vectors

    src, texts = source
    build(src, tmp_path / "o")
    want = np.stack([vector(t) for t in texts])
    first = hubembed.load(str(tmp_path / "o")).embeddings
    np.testing.assert_array_equal(first.numpy(), want)
    (cached,) = cached_files()

    def no_decoding(*args):
        raise AssertionError("decoded the shards again")

    monkeypatch.setattr(hubembed.vectors, "decode_batches", no_decoding)
    second = hubembed.load(str(tmp_path / "o")).embeddings
    np.testing.assert_array_equal(second.numpy(), want)
    second[0] = 0  # copy-on-write: neither the cache file nor the next load sees it
    np.testing.assert_array_equal(np.load(cached)[0], want[0])
    np.testing.assert_array_equal(hubembed.load(str(tmp_path / "o")).embeddings.numpy()[0], want[0])
    assert cached_files() == [cached]


def test_rebuilt_folder_replaces_its_cache_entry(tmp_path, source):
    src, texts = source
    build(src, tmp_path / "o")
    hubembed.load(str(tmp_path / "o")).embeddings  # noqa: B018  (fills the cache)
    build(src, tmp_path / "o", salt="other")
    again = hubembed.load(str(tmp_path / "o"))
    np.testing.assert_array_equal(
        again.embeddings.numpy(), np.stack([vector(t, salt="other") for t in texts])
    )
    assert len(cached_files()) == 1  # one entry per folder, not one per build
    (first_folder,) = cached_files()
    build(src, tmp_path / "p", dimension=4)  # another folder: its own entry
    assert hubembed.load(str(tmp_path / "p")).embeddings.shape == (len(texts), 4)
    assert len(cached_files()) == 2
    # An entry unused for a month goes when another is written; one in use stays.
    os.utime(first_folder, (0, 0))
    hubembed.load(str(tmp_path / "p")).embeddings  # noqa: B018  (a hit: marks it used)
    build(src, tmp_path / "q", dimension=2)
    hubembed.load(str(tmp_path / "q")).embeddings  # noqa: B018
    assert len(cached_files()) == 2 and not first_folder.exists()


def test_unwritable_cache_still_loads(tmp_path, source, monkeypatch, caplog):
    src, texts = source
    build(src, tmp_path / "o")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("HUBEMBED_CACHE", str(blocked))
    with caplog.at_level(logging.WARNING, logger="hubembed"):
        index = hubembed.load(str(tmp_path / "o"))
        np.testing.assert_array_equal(index.embeddings.numpy(), np.stack([vector(t) for t in texts]))
    assert "cannot cache decoded vectors" in caplog.text
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_search_rows_and_dataset_without_decoding_the_vectors_twice(tmp_path, source):
    src, texts = source
    build(src, tmp_path / "o")
    index = hubembed.load(str(tmp_path / "o"))
    hits = index.search(index.embeddings[[42, 7]], top_k=1)
    assert [(h[0]["corpus_id"], h[0]["row"]) for h in hits] == [
        (42, {"text": texts[42]}),
        (7, {"text": texts[7]}),
    ]
    assert index.column("text_sha256").to_pylist()[:1] == [hashlib.sha256(texts[0].encode()).hexdigest()]
    assert index._dataset is None  # hits and that column were read alone
    assert index.dataset["text"] == texts and index.dataset.column_names == [
        "text",
        "embedding",
        "text_sha256",
    ]
    # New rows given by the user: the vectors follow them.
    index.dataset = index.dataset.select([9, 3])
    np.testing.assert_array_equal(index.embeddings.numpy(), np.stack([vector(texts[9]), vector(texts[3])]))
    assert index.search(index.embeddings[1], top_k=1)[0]["row"] == {"text": texts[3]}


def test_shards_store_vectors_plain(tmp_path, source):
    """No dictionary page or codec on the vectors: they decode several times faster."""
    import pyarrow.parquet as pq

    build(source[0], tmp_path / "o")
    (shard,) = (tmp_path / "o" / "data").glob("*.parquet")
    meta = pq.ParquetFile(shard).metadata.row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    vectors = columns["embedding.list.element"]
    assert vectors.compression == "UNCOMPRESSED"
    assert not any("DICTIONARY" in e for e in vectors.encodings)
    assert columns["text"].compression == "SNAPPY"


def test_first_load_maps_the_builds_npy_without_decoding_or_copying(tmp_path, source, monkeypatch):
    from datasets import load_dataset

    import hubembed.vectors

    src, texts = source
    build(src, tmp_path / "o", npy=True)
    assert (tmp_path / "o" / "vectors" / "train.npy").is_file()

    def refuse(*args):
        raise AssertionError("read the shards' vectors")

    monkeypatch.setattr(hubembed.vectors, "decode_batches", refuse)
    monkeypatch.setattr(hubembed.vectors, "_copy", refuse)
    index = hubembed.load(str(tmp_path / "o"))
    np.testing.assert_array_equal(index.embeddings.numpy(), np.stack([vector(t) for t in texts]))
    index.embeddings[0] = 0  # copy-on-write: the build's file is not changed
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "vectors" / "train.npy")[0], vector(texts[0]))
    assert cached_files() == []
    # load_dataset reads the card's data files: the rows, not the .npy.
    rows = load_dataset(str(tmp_path / "o"), split="train")
    assert rows.column_names == ["text", "embedding", "text_sha256"] and len(rows) == len(texts)
    assert rows.features["embedding"].length == 8


def test_shards_alone_are_copied_page_by_page_and_never_decoded(tmp_path, source, monkeypatch):
    import hubembed.vectors

    src, texts = source
    build(src, tmp_path / "o", dimension=384)  # several pages of vectors

    def no_decoding(*args):
        raise AssertionError("decoded the shards")

    monkeypatch.setattr(hubembed.vectors, "decode_batches", no_decoding)
    got = hubembed.load(str(tmp_path / "o")).embeddings.numpy()
    np.testing.assert_array_equal(got, np.stack([vector(t, 384) for t in texts]))
    assert len(cached_files()) == 1


def test_a_stale_or_broken_npy_is_ignored(tmp_path, source):
    src, texts = source
    build(src, tmp_path / "o", npy=True)
    npy = tmp_path / "o" / "vectors" / "train.npy"
    want = np.stack([vector(t) for t in texts])
    np.save(npy, want[::-1].copy())  # another build's vectors, same shape
    np.testing.assert_array_equal(hubembed.load(str(tmp_path / "o")).embeddings.numpy(), want)
    npy.write_bytes(b"not an npy")
    np.testing.assert_array_equal(hubembed.load(str(tmp_path / "o")).embeddings.numpy(), want)


@pytest.mark.parametrize("layout", ["dictionary+snappy", "list<float32>", "data pages v2", "several files"])
def test_shards_written_otherwise_still_load(tmp_path, layout):
    """Builds from before the vectors were stored plain, foreign writers' layouts: decoded or
    copied, the same vectors either way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hubembed._pages import plain_ranges
    from hubembed.output import parquet_options

    want = np.random.default_rng(0).standard_normal((3000, 64)).astype(np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(want.reshape(-1)), 64)
    if layout == "list<float32>":
        vectors = vectors.cast(pa.list_(pa.float32()))
    table = pa.table({"text": [str(i) for i in range(len(want))], "embedding": vectors})
    (tmp_path / "o" / "data").mkdir(parents=True)
    options = {} if layout == "dictionary+snappy" else parquet_options(table.schema)
    if layout == "data pages v2":
        options["data_page_version"] = "2.0"
    parts = [table.slice(0, 1000), table.slice(1000)] if layout == "several files" else [table]
    files = [
        tmp_path / "o" / "data" / f"train-{i:05d}-of-{len(parts):05d}.parquet" for i in range(len(parts))
    ]
    for part, path in zip(parts, files, strict=True):
        pq.write_table(part, path, row_group_size=700, **options)
    plain = layout in ("data pages v2", "several files")
    assert (plain_ranges(files, "embedding") is not None) == plain
    np.testing.assert_array_equal(hubembed.load(str(tmp_path / "o")).embeddings.numpy(), want)


def test_vectors_with_nulls_are_not_taken_as_plain(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hubembed._pages import plain_ranges
    from hubembed.output import parquet_options

    values = np.arange(40, dtype=np.float32).tolist()
    cases = {
        "null vector": pa.FixedSizeListArray.from_arrays(
            pa.array(values), 4, mask=pa.array([False] * 9 + [True])
        ),
        "null element": pa.FixedSizeListArray.from_arrays(pa.array([None, *values[1:]], pa.float32()), 4),
    }
    for name, column in cases.items():
        path = tmp_path / f"{name}.parquet"
        table = pa.table({"embedding": column})
        pq.write_table(table, path, **parquet_options(table.schema))
        assert plain_ranges([path], "embedding") is None, name


def test_a_hub_build_publishes_its_npy_and_a_load_maps_it_then_a_refresh_reuses_it(
    hub, alice, repo_name, source, monkeypatch
):
    import hubembed.vectors

    src, texts = source
    dst = f"alice/{repo_name}"
    build(src, dst, npy=True)
    assert "vectors/train.npy" in hub.files(dst)

    def refuse(*args):
        raise AssertionError("read the shards' vectors")

    with monkeypatch.context() as patched:
        patched.setattr(hubembed.vectors, "decode_batches", refuse)
        patched.setattr(hubembed.vectors, "_copy", refuse)
        got = hubembed.load(dst).embeddings.numpy()
    np.testing.assert_array_equal(got, np.stack([vector(t) for t in texts]))
    src.write_text("text\n" + "\n".join([*texts, "one more"]) + "\n", encoding="utf-8")
    result = build(src, dst, npy=True)
    assert (result.rows, result.embedded) == (len(texts) + 1, 1)
    assert hubembed.load(dst).embeddings.numpy()[-1].tolist() == vector("one more").tolist()
