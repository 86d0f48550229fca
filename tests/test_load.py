"""hubembed.load maps a build's vectors from its cache of decoded shards: right vectors, never a
stale build's, private to the process, and still a load where the cache cannot be written."""

from __future__ import annotations

import hashlib
import logging
import os

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


def build(src, dst, **kwargs):
    embedder = HashEmbedder(**kwargs)
    meta = {"model": f"test/hash-{kwargs}"}
    return hubembed.build(str(src), str(dst), embedder_factory=lambda _: (embedder, meta), progress=False)


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

    monkeypatch.setattr(hubembed.vectors, "_decode", no_decoding)
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
