"""hubembed export DST --to lance PATH: a Lance dataset of the rows and vectors with a vector
index, whose nearest neighbours are hubembed's exact top k; bad input refused, PATH untouched."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import hubembed
from hubembed.cli import main
from tests.conftest import MEDICARE_QUERY, MEDICARE_TOP5

lance = pytest.importorskip("lance")


def cli(capsys, *args):
    code = main([*map(str, args)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def nearest(path, vector, k):
    exported = lance.dataset(str(path))
    query = {"column": "embedding", "q": vector, "k": k, "metric": "cosine"}
    if exported.describe_indices():  # answered by the index, not by a scan
        assert "ANNSubIndex" in exported.scanner(nearest=query).explain_plan()
    table = exported.to_table(nearest=query)
    return table.to_pylist()


@pytest.fixture(scope="module")
def faqs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("built") / "faqs"
    hubembed.build("sample:medicare-faqs", str(folder), progress=False)
    return folder


def test_cli_export_from_the_hub_finds_the_blogs_top_5_through_the_index(
    hub, alice, repo_name, tmp_path, capsys
):
    dst = f"alice/{repo_name}"
    assert cli(capsys, "build", "sample:medicare-faqs", dst, "-q")[0] == 0
    code, out, err = cli(capsys, "export", dst, "--to", "lance", tmp_path / "faqs.lance")
    assert code == 0, err
    assert "13 rows, 384-d" in out and "IVF_FLAT index on 'embedding'" in out
    exported = lance.dataset(str(tmp_path / "faqs.lance"))
    assert exported.count_rows() == 13
    assert exported.schema.names == ["text", "embedding"]  # hubembed's text hash stays behind
    assert str(exported.schema.field("embedding").type) == "fixed_size_list<item: float>[384]"
    assert [(i.index_type, i.field_names) for i in exported.describe_indices()] == [
        ("IVF_FLAT", ["embedding"])
    ]

    index = hubembed.load(dst)
    query = index.embed_queries([MEDICARE_QUERY]).numpy()[0]
    got = nearest(tmp_path / "faqs.lance", query, 5)
    texts = index.column("text").to_pylist()
    assert [row["text"] for row in got] == [texts[i] for i, _ in MEDICARE_TOP5]
    # cosine distance: 1 - the score hubembed and the blog report
    assert [round(1 - row["_distance"], 4) for row in got] == [score for _, score in MEDICARE_TOP5]


def test_library_export_of_a_chunked_build_has_one_row_per_chunk(tmp_path, medicare_texts):
    docs = [" ".join(medicare_texts[i : i + 4]) for i in range(0, 12, 4)]
    src = tmp_path / "docs.jsonl"
    lines = [json.dumps({"title": f"faq {i}", "text": d}) + "\n" for i, d in enumerate(docs)]
    src.write_text("".join(lines), encoding="utf-8")
    hubembed.build(str(src), str(tmp_path / "built"), column="text", chunk=24, progress=False)
    index = hubembed.load(str(tmp_path / "built"))
    assert index.chunked

    result = hubembed.export(index, to="lance", path=tmp_path / "chunks.lance")
    chunks = index.dataset.num_rows
    assert (result.rows, result.dimension, result.index) == (chunks, 384, "IVF_FLAT")
    assert chunks > len(docs)
    exported = lance.dataset(str(tmp_path / "chunks.lance"))
    assert exported.count_rows() == chunks
    assert {"title", "source_row", "chunk", "chunk_index", "chunk_start", "chunk_end"} <= set(
        exported.schema.names
    )
    query = index.embed_queries([MEDICARE_QUERY]).numpy()[0]
    want = index.search(query, top_k=5, by_text=False)
    got = nearest(tmp_path / "chunks.lance", query, 5)
    assert [(r["source_row"], r["chunk_index"]) for r in got] == [
        (h["row"]["source_row"], h["row"]["chunk_index"]) for h in want
    ]


def test_export_of_a_folder_replaces_only_with_force_and_leaves_other_paths_alone(faqs, tmp_path, capsys):
    target = tmp_path / "out.lance"
    assert cli(capsys, "export", faqs, "--to", "lance", target, "--no-index")[0] == 0
    assert lance.dataset(str(target)).describe_indices() == []
    before = sorted(p.relative_to(target) for p in target.rglob("*"))

    code, _, err = cli(capsys, "export", faqs, "--to", "lance", target)
    assert code == 2 and "already holds a Lance dataset: pass --force" in err
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before

    code, out, err = cli(capsys, "export", faqs, "--to", "lance", target, "--force")
    assert code == 0, err
    assert lance.dataset(str(target)).count_rows() == 13 and lance.dataset(str(target)).describe_indices()

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    for force in ([], ["--force"]):
        code, _, err = cli(capsys, "export", faqs, "--to", "lance", other, *force)
        assert code == 2 and "is not a Lance dataset" in err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(capsys, "export", faqs, "--to", "lance", empty)[0] == 0
    assert lance.dataset(str(empty)).count_rows() == 13
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_bad_input_is_refused_with_exit_2_and_nothing_written(faqs, tmp_path, capsys, monkeypatch):
    target = tmp_path / "out.lance"
    code, _, err = cli(capsys, "export", faqs, "--to", "chroma", target)
    assert code == 2 and "cannot export to 'chroma': the formats are lance" in err

    plain = tmp_path / "plain.csv"
    plain.write_text("text\nhello\n")
    code, _, err = cli(capsys, "export", plain, "--to", "lance", target)
    assert code == 2 and "no embeddings found" in err

    code, _, err = cli(capsys, "export", tmp_path / "missing", "--to", "lance", target)
    assert code == 2 and "no such folder or file" in err

    code, _, err = cli(capsys, "export", faqs, "--to", "lance", tmp_path / "no" / "such" / "dir")
    assert code == 2 and "does not exist" in err

    monkeypatch.setitem(sys.modules, "lance", None)  # as if the extra were not installed
    code, _, err = cli(capsys, "export", faqs, "--to", "lance", target)
    assert code == 2 and "pip install 'hubembed[lance]'" in err
    assert not target.exists()


def test_the_index_over_many_rows_keeps_the_exact_top_10(tmp_path):
    """Clustered unit vectors, as embeddings are: the index's top 10 against exact search."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 64)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, 4000)] + 0.3 * rng.standard_normal((4000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    flat = pa.array(vectors.reshape(-1))
    table = pa.table({"id": np.arange(4000), "embedding": pa.FixedSizeListArray.from_arrays(flat, 64)})
    pq.write_table(table, tmp_path / "vectors.parquet")

    index = hubembed.load(str(tmp_path / "vectors.parquet"))
    hubembed.export(index, to="lance", path=tmp_path / "v.lance")
    queries = vectors[:50] + 0.1 * rng.standard_normal((50, 64)).astype(np.float32)
    found = 0
    for query, hits in zip(queries, index.search(queries, top_k=10), strict=True):
        got = {row["id"] for row in nearest(tmp_path / "v.lance", query, 10)}
        found += len(got & {hit["corpus_id"] for hit in hits})
    assert found / 500 >= 0.95
