"""hubembed.semantic_search gives util.semantic_search's answers, and the loader's tensors are the stored ones."""

from __future__ import annotations

import inspect

import numpy as np
import pyarrow as pa
import pytest
import torch
from sentence_transformers import util

from hubembed.search import row_norms, semantic_search

D = 16


def rand(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(rand(*shape, seed=seed), dim=1)


def assert_same_hits(got: list, want: list, atol: float = 1e-5) -> None:
    """Same scores, best first, and the same ids wherever a score is not tied with another."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w)
        assert [h["score"] for h in g] == pytest.approx([h["score"] for h in w], abs=atol)
        scores = [h["score"] for h in w]
        for i, (gh, wh) in enumerate(zip(g, w, strict=True)):
            tied = i == len(w) - 1 or any(abs(s - scores[i]) <= atol for j, s in enumerate(scores) if j != i)
            assert gh["corpus_id"] == wh["corpus_id"] or tied, (i, gh, wh)
        assert all(isinstance(h["corpus_id"], int) and isinstance(h["score"], float) for h in g)


@pytest.fixture(params=["pruned", "topk"])
def strategy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways to find a chunk's best: block pruning (two passes), and torch.topk.

    Which one runs depends on the corpus size; small test corpora are made to take each.
    """
    import hubembed.search as search

    monkeypatch.setattr(search, "_PRUNE_FACTOR", 4 if request.param == "pruned" else 10**9)
    return request.param


@pytest.mark.parametrize(
    ("n", "chunk", "top_k"),
    [
        (1000, None, 10),  # one chunk
        (10_007, 3000, 5),  # chunks not dividing N (pruned: a partial last block)
        (40_000, None, 10),  # the default chunk size, twice over
        (5000, 64, 3),  # many small chunks
        (700, 100, 1),
    ],
)
def test_unnormalized_corpus_matches_util(n, chunk, top_k, strategy):
    corpus, queries = rand(n, D, seed=1, scale=3.0), rand(7, D, seed=2)
    want = util.semantic_search(queries, corpus, top_k=top_k)
    assert_same_hits(semantic_search(queries, corpus, top_k=top_k, corpus_chunk_size=chunk), want)
    norms = row_norms(corpus)
    assert_same_hits(
        semantic_search(queries, corpus, top_k=top_k, corpus_chunk_size=chunk, corpus_norms=norms), want
    )


@pytest.mark.parametrize("chunk", [None, 2500, 777])
def test_unit_corpus_skips_norms_with_the_same_answer(chunk, strategy):
    corpus, queries = unit(12_345, D, seed=3), rand(5, D, seed=4)
    want = util.semantic_search(queries, corpus, top_k=10)
    assert_same_hits(
        semantic_search(queries, corpus, top_k=10, normalized=True, corpus_chunk_size=chunk), want
    )


def test_tight_memory_budgets_give_the_same_hits(monkeypatch, strategy):
    """Query groups, corpus segments and one-query rescoring: the paths a huge search takes."""
    import hubembed.search as search

    monkeypatch.setattr(search, "_SCORE_BUDGET", 4096)  # groups of 4 queries
    monkeypatch.setattr(search, "_BLOCKMAX_BUDGET", 64)  # a segment per chunk
    monkeypatch.setattr(search, "_GATHER_BUDGET", 1000)  # rescoring one query at a time
    corpus, queries = rand(9000, D, seed=30, scale=2.0), rand(9, D, seed=31)
    want = util.semantic_search(queries, corpus, top_k=7)
    assert_same_hits(semantic_search(queries, corpus, top_k=7, corpus_chunk_size=1000), want)
    assert_same_hits(
        semantic_search(queries, corpus.half(), top_k=7, corpus_chunk_size=1000),
        util.semantic_search(queries, corpus.half().float(), top_k=7),
    )


def test_best_hits_in_one_block_are_all_found(strategy):
    """Pruning keeps k blocks: the top k crowded into one block must all come back."""
    corpus = rand(8192, D, seed=5)
    query = rand(D, seed=6)
    corpus[100:110] = query * torch.linspace(1, 2, 10).unsqueeze(1)  # cosine 1, all in block 1
    corpus[300] = query + 0.01 * rand(D, seed=7)
    hits = semantic_search(query, corpus, top_k=11)
    assert {h["corpus_id"] for h in hits[0][:10]} == set(range(100, 110))
    assert hits[0][10]["corpus_id"] == 300
    assert_same_hits(hits, util.semantic_search(query, corpus, top_k=11))


def test_ties_between_duplicate_rows(strategy):
    base = rand(50, D, seed=8)
    corpus = torch.cat([base] * 200)  # 10k rows, each score 200 times
    queries = rand(3, D, seed=9)
    got = semantic_search(queries, corpus, top_k=10, corpus_chunk_size=4096)
    assert_same_hits(got, util.semantic_search(queries, corpus, top_k=10))
    for hits in got:
        assert len({h["corpus_id"] for h in hits}) == 10


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_corpus_is_scored_in_float32(dtype, strategy):
    corpus, queries = rand(6000, D, seed=10, scale=2.0).to(dtype), rand(4, D, seed=11)
    want = util.semantic_search(queries, corpus.float(), top_k=10)
    assert_same_hits(semantic_search(queries, corpus, top_k=10, corpus_chunk_size=2048), want)
    norms = row_norms(corpus)
    assert norms.dtype == torch.float32
    assert_same_hits(semantic_search(queries, corpus, top_k=10, corpus_norms=norms), want)


def test_float64_corpus(strategy):
    corpus, queries = rand(3000, D, seed=12).double(), rand(2, D, seed=13).double()
    assert_same_hits(
        semantic_search(queries, corpus, top_k=5), util.semantic_search(queries, corpus, top_k=5)
    )


def test_top_k_larger_than_the_corpus_returns_every_row_ranked(strategy):
    corpus, queries = rand(7, D, seed=14), rand(2, D, seed=15)
    got = semantic_search(queries, corpus, top_k=50, corpus_chunk_size=3)
    assert [sorted(h["corpus_id"] for h in hits) for hits in got] == [list(range(7))] * 2
    assert_same_hits(got, util.semantic_search(queries, corpus, top_k=50))


def test_one_vector_and_numpy_input():
    corpus, query = rand(500, D, seed=16), rand(D, seed=17)
    want = util.semantic_search(query, corpus, top_k=4)
    got = semantic_search(query.numpy(), corpus.numpy(), top_k=4)
    assert len(got) == 1
    assert_same_hits(got, want)


def test_zero_vectors_score_zero_like_util(strategy):
    corpus = rand(300, D, seed=18)
    corpus[5] = 0
    query = -corpus[:1]  # every other row scores about 0 or below; the zero row scores exactly 0
    want = util.semantic_search(query, corpus, top_k=300)
    got = semantic_search(query, corpus, top_k=300)
    assert_same_hits(got, want)
    assert {h["corpus_id"]: h["score"] for h in got[0]}[5] == 0.0


def test_empty_corpus_or_queries():
    assert semantic_search(rand(2, D), torch.empty(0, D), top_k=3) == [[], []]
    assert semantic_search(torch.empty(0, D), rand(5, D), top_k=3) == []


# util.semantic_search's whole signature: query_chunk_size, corpus_chunk_size, top_k, score_function.


def corpus_of(n: int, unit_rows: bool, seed: int) -> torch.Tensor:
    """Unit-length rows, or rows of random lengths from 0.1 to 5."""
    if unit_rows:
        return unit(n, D, seed=seed)
    lengths = torch.rand(n, 1, generator=torch.Generator().manual_seed(seed + 1000)) * 4.9 + 0.1
    return unit(n, D, seed=seed) * lengths


UNIT_ROWS = pytest.mark.parametrize("unit_rows", [True, False], ids=["unit-rows", "unnormalised"])


@UNIT_ROWS
def test_the_issues_call_with_utils_keywords(unit_rows, strategy):
    corpus, queries = corpus_of(3000, unit_rows, seed=40), rand(12, D, seed=41)
    kwargs = {"top_k": 10, "query_chunk_size": 5, "corpus_chunk_size": 17}
    got = semantic_search(queries, corpus, **kwargs)
    assert [len(hits) for hits in got] == [10] * 12
    assert_same_hits(got, util.semantic_search(queries, corpus, **kwargs))


@UNIT_ROWS
def test_positional_arguments_in_utils_order(unit_rows, strategy):
    """(q, c, 5, 17, 3): query_chunk_size=5, corpus_chunk_size=17, top_k=3, as in util."""
    corpus, queries = corpus_of(2000, unit_rows, seed=42), rand(11, D, seed=43)
    got = semantic_search(queries, corpus, 5, 17, 3)
    assert [len(hits) for hits in got] == [3] * 11
    assert_same_hits(got, util.semantic_search(queries, corpus, 5, 17, 3))
    assert_same_hits(
        semantic_search(queries, corpus, 100, 500_000, 4, util.cos_sim),
        util.semantic_search(queries, corpus, 100, 500_000, 4, util.cos_sim),
    )


@UNIT_ROWS
@pytest.mark.parametrize(
    "chunks", [{}, {"query_chunk_size": 5, "corpus_chunk_size": 17}], ids=["default", "small"]
)
def test_dot_score_matches_util(unit_rows, chunks, strategy):
    corpus, queries = corpus_of(5000, unit_rows, seed=44), rand(9, D, seed=45, scale=2.0)
    kwargs = {"top_k": 8, "score_function": util.dot_score, **chunks}
    got = semantic_search(queries, corpus, **kwargs)
    assert_same_hits(got, util.semantic_search(queries, corpus, **kwargs), atol=1e-4)
    if not unit_rows:  # not cosine: the longest rows win
        cosine = semantic_search(queries, corpus, top_k=8)
        assert [h["corpus_id"] for h in got[0]] != [h["corpus_id"] for h in cosine[0]]


def negative_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return -torch.cdist(a, b)


@UNIT_ROWS
@pytest.mark.parametrize(
    "score_function",
    [negative_distance, lambda a, b: util.cos_sim(a, b) * 2 - 1],
    ids=["negative-distance", "lambda"],
)
@pytest.mark.parametrize(
    "chunks", [{}, {"query_chunk_size": 4, "corpus_chunk_size": 100}], ids=["default", "small"]
)
def test_custom_score_function_matches_util(unit_rows, score_function, chunks):
    corpus, queries = corpus_of(1500, unit_rows, seed=46), rand(7, D, seed=47)
    kwargs = {"top_k": 6, "score_function": score_function, **chunks}
    assert_same_hits(
        semantic_search(queries, corpus, **kwargs), util.semantic_search(queries, corpus, **kwargs), atol=1e-4
    )


def test_score_function_may_return_an_array():
    corpus, queries = rand(300, D, seed=54), rand(3, D, seed=55)
    got = semantic_search(queries, corpus, 2, 50, score_function=lambda a, b: (a @ b.T).numpy())
    assert_same_hits(got, util.semantic_search(queries, corpus, score_function=util.dot_score))


def test_cosine_and_dot_score_take_the_fast_path(monkeypatch):
    """Cosine (ours or util's) and util.dot_score never call the function; others go through it."""
    import hubembed.search as search

    scans: list[tuple[int, int]] = []

    class Spy(search._Scan):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            scans.append((self.group, self.chunk))

    monkeypatch.setattr(search, "_Scan", Spy)
    monkeypatch.setattr(search, "_PRUNE_FACTOR", 10**9)  # chunks exactly as asked
    corpus, queries = rand(500, D, seed=48), rand(30, D, seed=49)
    for score_function in (search.cos_sim, util.cos_sim, util.dot_score):
        semantic_search(queries, corpus, score_function=score_function)
    assert len(scans) == 3
    calls = []

    def counted(a, b):
        calls.append((a.shape[0], b.shape[0]))
        return util.cos_sim(a, b)

    semantic_search(queries, corpus, 8, 300, score_function=counted)
    assert len(scans) == 3
    assert calls == [(8, 300), (8, 200)] * 3 + [(6, 300), (6, 200)]
    # util's chunk sizes bound the fast path's memory: at most 5 x 17 scores at once.
    semantic_search(queries, corpus, 5, 17)
    group, chunk = scans[-1]
    assert chunk <= 17 and group * chunk <= 5 * 17


def test_signature_is_utils_then_keyword_only_extras():
    import hubembed.search as search

    ours = inspect.signature(semantic_search).parameters
    theirs = inspect.signature(util.semantic_search).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    for name, param in theirs.items():
        assert ours[name].kind == param.kind, name
        if name != "score_function":
            assert ours[name].default == param.default, name
    assert (
        ours["score_function"].default is search.cos_sim
    )  # util.cos_sim without importing sentence-transformers
    a, b = rand(4, D, seed=50), rand(9, D, seed=51, scale=3.0)
    torch.testing.assert_close(search.cos_sim(a, b), util.cos_sim(a, b))
    extras = list(ours)[len(theirs) :]
    assert extras == ["normalized", "corpus_norms"]
    assert all(ours[name].kind is inspect.Parameter.KEYWORD_ONLY for name in extras)


def test_none_corpus_chunk_size_is_utils_default():
    corpus, queries = rand(800, D, seed=52), rand(3, D, seed=53)
    assert semantic_search(queries, corpus, corpus_chunk_size=None) == semantic_search(queries, corpus)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"query_embeddings": rand(2, 8)},
            "query_embeddings have dimension 8 but corpus_embeddings have dimension 16",
        ),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"top_k": 2.5}, "top_k must be a whole number"),
        ({"corpus_chunk_size": 0}, "corpus_chunk_size must be at least 1"),
        ({"query_chunk_size": 0}, "query_chunk_size must be at least 1"),
        ({"query_chunk_size": -3, "score_function": util.dot_score}, "query_chunk_size must be at least 1"),
        ({"corpus_chunk_size": 0, "score_function": torch.cdist}, "corpus_chunk_size must be at least 1"),
        ({"score_function": "cos_sim"}, "score_function must be a function"),
        (
            {"score_function": lambda a, b: util.dot_score(a, b)[:, :1]},
            r"one score per pair, shape \(2, 10\)",
        ),
        ({"corpus_norms": torch.ones(3)}, r"one norm per corpus row, shape \(10,\)"),
        ({"corpus_embeddings": rand(2, 3, 4)}, r"matrix of vectors \(n x d\), got shape \(2, 3, 4\)"),
        ({"corpus_embeddings": rand(10, D).to_sparse()}, "sparse"),
        ({"query_embeddings": ["a", "b"]}, "tensor or an array of numbers"),
    ],
)
def test_bad_input_raises_value_error(kwargs, message):
    args = {"query_embeddings": rand(2, D), "corpus_embeddings": rand(10, D), "top_k": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        semantic_search(**args)


# The loader: EmbeddedDataset.embeddings and EmbeddedDataset.search.


def embedded(table: pa.Table, meta: dict | None = None):
    import datasets

    from hubembed.loader import EmbeddedDataset

    return EmbeddedDataset(datasets.Dataset(table), meta or {"embedding_column": "embedding"})


def vector_column(vectors: np.ndarray, value_type: pa.DataType | None = None) -> pa.Array:
    value_type = value_type or pa.float32()
    flat = pa.array(vectors.reshape(-1).astype(value_type.to_pandas_dtype()), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def table_of(vectors: np.ndarray, **kwargs) -> pa.Table:
    texts = pa.array([f"row {i}" for i in range(len(vectors))], type=pa.string())
    return pa.table({"text": texts, "embedding": vector_column(vectors, **kwargs)})


def test_one_chunk_is_shared_not_copied():
    vectors = rand(300, D, seed=20).numpy()
    table = table_of(vectors)
    index = embedded(table)
    assert index.embeddings.dtype == torch.float32
    np.testing.assert_array_equal(index.embeddings.numpy(), vectors)
    arrow_values = np.frombuffer(table.column("embedding").chunks[0].flatten().buffers()[1], np.float32)
    assert np.shares_memory(index.embeddings.numpy(), arrow_values)


def test_chunked_and_sliced_tables_give_the_stored_vectors():
    vectors = rand(1000, D, seed=21).numpy()
    parts = [table_of(vectors[a:b]) for a, b in [(0, 10), (10, 10), (10, 600), (600, 1000)]]
    chunked = pa.concat_tables(parts)
    assert chunked.column("embedding").num_chunks == 4
    np.testing.assert_array_equal(embedded(chunked).embeddings.numpy(), vectors)
    sliced = chunked.slice(205, 500)  # starts and ends inside chunks
    np.testing.assert_array_equal(embedded(sliced).embeddings.numpy(), vectors[205:705])
    index = embedded(table_of(vectors))
    index.dataset = index.dataset.select([5, 3, 900])  # an indices mapping
    np.testing.assert_array_equal(index.embeddings.numpy(), vectors[[5, 3, 900]])


def test_memory_mapped_vectors_are_copied_to_a_writable_tensor(tmp_path):
    import datasets

    from hubembed.loader import EmbeddedDataset

    vectors = rand(200, D, seed=22).numpy()
    datasets.Dataset(table_of(vectors)).save_to_disk(str(tmp_path / "saved"))
    ds = datasets.load_from_disk(str(tmp_path / "saved"))
    assert ds.cache_files  # memory-mapped: Arrow's buffers are read-only
    tensor = EmbeddedDataset(ds, {}).embeddings
    np.testing.assert_array_equal(tensor.numpy(), vectors)
    tensor[0] = 0  # a copy: writable, and the dataset keeps its vector
    assert ds[0]["embedding"] == pytest.approx(vectors[0].tolist())


def test_other_vector_types_are_converted_to_float32():
    vectors = rand(100, D, seed=23).numpy()
    half = embedded(table_of(vectors, value_type=pa.float16())).embeddings
    assert half.dtype == torch.float32
    np.testing.assert_array_equal(half.numpy(), vectors.astype(np.float16).astype(np.float32))
    lists = pa.table({"embedding": pa.array(vectors.tolist(), type=pa.list_(pa.float32()))})
    np.testing.assert_array_equal(embedded(lists).embeddings.numpy(), vectors)


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (pa.array([[1.0, 2.0], [3.0]], type=pa.list_(pa.float32())), "vectors of different lengths"),
        (pa.array([[1.0, 2.0], None], type=pa.list_(pa.float32(), 2)), "1 rows without a vector"),
        (pa.array(["a", "b"]), "not vectors of numbers"),
    ],
)
def test_bad_vectors_are_a_column_error(column, message):
    from hubembed.errors import ColumnError

    with pytest.raises(ColumnError, match=message):
        embedded(pa.table({"embedding": column})).embeddings  # noqa: B018


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_dataset_search_matches_util_and_computes_norms_once(scale):
    vectors = (unit(5000, D, seed=24) * scale).numpy()
    index = embedded(table_of(vectors), {"embedding_column": "embedding", "normalized": scale == 1.0})
    queries = rand(3, D, seed=25)
    want = util.semantic_search(queries, torch.from_numpy(vectors), top_k=5)
    got = index.search(queries, top_k=5)
    assert_same_hits([[{k: h[k] for k in ("corpus_id", "score")} for h in hits] for hits in got], want)
    assert got[0][0]["row"] == {"text": f"row {want[0][0]['corpus_id']}"}
    assert (index._corpus_norms is None) == (scale == 1.0)
    assert index._corpus_norms is index._corpus_norms  # cached, not recomputed per search
    single = index.search(queries[0].numpy(), top_k=2)
    assert [h["corpus_id"] for h in single] == [h["corpus_id"] for h in got[0][:2]]


def test_search_rows_follow_a_selected_and_reordered_dataset(tmp_path, medicare_texts):
    """Hits must carry the row at corpus_id of the dataset as given, indices mapping and all."""
    import hubembed
    from hubembed.loader import EmbeddedDataset

    hubembed.build("sample:medicare-faqs", str(tmp_path / "o"), progress=False)
    full = hubembed.load(str(tmp_path / "o"))
    subset = EmbeddedDataset(full.dataset.select([12, 0, 5]), full.metadata)
    hits = subset.search(full.embeddings[0], top_k=3)
    assert hits[0]["corpus_id"] == 1 and hits[0]["row"] == {"text": medicare_texts[0]}
    assert sorted(h["row"]["text"] for h in hits) == sorted(medicare_texts[i] for i in (12, 0, 5))
