"""The onnx backend gives the vectors sentence-transformers gives, and exports a model once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hubembed.embedder import EmbedSettings
from hubembed.errors import ModelError
from tests.conftest import MEDICARE_QUERY, MEDICARE_TOP5

pytest.importorskip("onnxruntime")

from hubembed.onnx_embedder import OnnxEmbedder, make_onnx_embedder  # noqa: E402

# Past the model's 256-token limit, so both backends must truncate the same way.
LONG_TEXTS = [
    " ".join(f"Medicare Part {part} covers item {i} for members over {60 + i % 10}." for i in range(40))
    for part in "ABD"
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx_cache")


@pytest.fixture(autouse=True)
def shared_cache(own_checkpoints, onnx_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One hubembed cache for this module's tests, so the model is exported once, not per test."""
    monkeypatch.setenv("HUBEMBED_CACHE", str(onnx_cache))


@pytest.fixture(scope="module")
def onnx(st_model, onnx_cache: Path) -> OnnxEmbedder:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUBEMBED_CACHE", str(onnx_cache))
        return make_onnx_embedder(st_model, EmbedSettings())


def test_same_vectors_as_encode(onnx, st_model, medicare_texts):
    assert onnx.exported and onnx.path.is_file()
    assert all(len(ids) > 256 for ids in st_model.tokenizer(LONG_TEXTS, verbose=False)["input_ids"])
    texts = [*medicare_texts, *LONG_TEXTS, "x"]
    got = onnx.embed_batch(texts)
    expected = st_model.encode(texts, normalize_embeddings=True)
    assert got.dtype == np.float32 and got.shape == (len(texts), 384) == (len(texts), onnx.dimension)
    assert cosines(got, expected).min() >= 0.999
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert onnx.embed_batch([]).shape == (0, 384)


def test_parallel_sub_batches_keep_input_order(st_model, medicare_texts):
    # Mixed lengths, so texts are reordered and cut into many sub-batches run by both workers.
    texts = [*LONG_TEXTS, *medicare_texts, "x", *medicare_texts[::-1]]
    serial = make_onnx_embedder(st_model, EmbedSettings(), threads=1)
    parallel = make_onnx_embedder(st_model, EmbedSettings(), threads=2)
    expected = serial.embed_batch(texts)
    assert np.allclose(parallel.embed_batch(texts), expected, atol=1e-6)
    parallel.close()
    assert np.allclose(parallel.embed_batch(texts), expected, atol=1e-6)


def test_medicare_ranking_unchanged(onnx, medicare_texts):
    docs = onnx.embed_batch(medicare_texts)
    query = onnx.embed_batch([MEDICARE_QUERY])[0]
    scores = docs @ query
    top = np.argsort(-scores)[:5]
    assert [int(i) for i in top] == [i for i, _ in MEDICARE_TOP5]
    assert scores[top] == pytest.approx([s for _, s in MEDICARE_TOP5], abs=1e-3)


@pytest.mark.parametrize(
    ("settings", "kwargs"),
    [
        (EmbedSettings(prompt="query: "), {"prompt": "query: ", "normalize_embeddings": True}),
        (EmbedSettings(prompt_name="query"), {"prompt_name": "query", "normalize_embeddings": True}),
        (EmbedSettings(truncate_dim=128), {"truncate_dim": 128, "normalize_embeddings": True}),
        (EmbedSettings(truncate_dim=64, normalize=False), {"truncate_dim": 64}),
    ],
)
def test_settings_are_honoured(st_model, medicare_texts, settings, kwargs):
    embedder = make_onnx_embedder(st_model, settings)
    got = embedder.embed_batch(medicare_texts)
    expected = st_model.encode(medicare_texts, **kwargs)
    assert got.shape == expected.shape == (len(medicare_texts), embedder.dimension)
    assert np.abs(got - expected).max() < 1e-4


def test_a_prompt_changes_the_vectors(onnx, st_model, medicare_texts):
    prompted = make_onnx_embedder(st_model, EmbedSettings(prompt="Represent this question: "))
    assert cosines(prompted.embed_batch(medicare_texts), onnx.embed_batch(medicare_texts)).min() < 0.99


def test_second_construction_reuses_the_export(onnx, st_model):
    mtime = onnx.path.stat().st_mtime_ns
    again = make_onnx_embedder(st_model, EmbedSettings(truncate_dim=32))
    assert again.path == onnx.path
    assert not again.exported
    assert onnx.path.stat().st_mtime_ns == mtime
    assert not list(onnx.path.parent.glob(".*.tmp"))


def test_bad_settings_and_unsupported_models_are_refused(st_model):
    with pytest.raises(ModelError, match="no prompt named"):
        make_onnx_embedder(st_model, EmbedSettings(prompt_name="nope"))
    with pytest.raises(ModelError, match="truncate-dim"):
        make_onnx_embedder(st_model, EmbedSettings(truncate_dim=1000))
    from sentence_transformers import SentenceTransformer

    bare = SentenceTransformer(modules=[st_model[0]])  # no pooling: token embeddings only
    with pytest.raises(ModelError, match="torch backend"):
        make_onnx_embedder(bare, EmbedSettings())


def test_missing_onnxruntime_says_what_to_install(st_model, monkeypatch):
    import sys

    from hubembed.errors import UsageError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UsageError, match=r"pip install 'hubembed\[onnx\]'"):
        make_onnx_embedder(st_model, EmbedSettings())


@pytest.fixture(scope="module")
def int8(st_model, onnx_cache: Path) -> OnnxEmbedder:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUBEMBED_CACHE", str(onnx_cache))
        return make_onnx_embedder(st_model, EmbedSettings(), precision="int8")


def test_int8_vectors_stay_within_cosine_0999_of_encode(int8, onnx, st_model, medicare_texts):
    texts = [*medicare_texts, *LONG_TEXTS, "x", *(line for line in SAMPLE_PROSE.splitlines() if line)]
    got = int8.embed_batch(texts)
    expected = st_model.encode(texts, normalize_embeddings=True)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert cosines(got, expected).min() >= 0.999
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    # Really quantised, not the fp32 graph under another name.
    assert np.abs(got - onnx.embed_batch(texts)).max() > 1e-4


def test_int8_runs_very_short_texts_in_fp32_and_any_batch_gives_the_same(int8, onnx, medicare_texts):
    tiny = ["x", "yes", "Paris", "hello world", "What is Medicare Part B?"]
    assert all(len(ids) <= int8.fp32_up_to for ids in int8.tokenizer(tiny)["input_ids"])
    assert np.allclose(int8.embed_batch(tiny), onnx.embed_batch(tiny), atol=1e-6)
    mixed = [*tiny, *medicare_texts, *LONG_TEXTS]
    alone = np.vstack([int8.embed_batch([t]) for t in mixed])
    assert cosines(int8.embed_batch(mixed), alone).min() > 0.99999


def test_int8_quantises_all_but_the_down_projections(int8, onnx):
    import onnx as onnx_lib

    assert int8.path != onnx.path and int8.path.parent == onnx.path.parent
    graph = onnx_lib.load(str(int8.path)).graph
    weights = {init.name for init in graph.initializer}
    ops = [node.op_type for node in graph.node]
    fp32_products = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    # 6 layers x (query, key, value, attention output, feed-forward in) in int8; the 6 feed-forward
    # outputs stay fp32.
    assert ops.count("MatMulIntegerToFloat") == 30
    assert len(fp32_products) == 6
    assert all("output/dense" in n.name and "attention" not in n.name for n in fp32_products)


def test_int8_keeps_the_medicare_ranking(int8, medicare_texts):
    docs = int8.embed_batch(medicare_texts)
    scores = docs @ int8.embed_batch([MEDICARE_QUERY])[0]
    top = np.argsort(-scores)[:5]
    assert [int(i) for i in top] == [i for i, _ in MEDICARE_TOP5]
    assert scores[top] == pytest.approx([s for _, s in MEDICARE_TOP5], abs=5e-3)


def test_int8_export_is_reused(int8, st_model):
    mtime = int8.path.stat().st_mtime_ns
    again = make_onnx_embedder(st_model, EmbedSettings(), precision="int8")
    assert again.path == int8.path and not again.exported
    assert int8.path.stat().st_mtime_ns == mtime
    assert not list(int8.path.parent.glob(".*.tmp"))


def test_int8_refuses_a_model_it_moves_too_far(st_model, tmp_path, monkeypatch):
    from hubembed import onnx_int8

    monkeypatch.setenv("HUBEMBED_CACHE", str(tmp_path))
    monkeypatch.setattr(onnx_int8, "MIN_COSINE", 0.99999)  # stricter than this model's int8 can hold
    with pytest.raises(ModelError, match=r"lowest cosine 0\.99\d+ .*use --backend onnx"):
        make_onnx_embedder(st_model, EmbedSettings(), precision="int8")
    assert list(tmp_path.rglob("model.onnx"))  # the fp32 export is kept for --backend onnx
    assert not list(tmp_path.rglob("model-int8*")) and not list(tmp_path.rglob(".*.tmp"))


def test_unknown_precision_is_a_usage_error(st_model):
    from hubembed.errors import UsageError

    with pytest.raises(UsageError, match="fp32 or int8"):
        make_onnx_embedder(st_model, EmbedSettings(), precision="int4")


# Text unlike the Medicare FAQ and unlike hubembed's calibration file.
SAMPLE_PROSE = """
The lighthouse keeper logged every passing ship in a leather-bound book, noting the weather and the hour.
Rotate the bolt a quarter turn counter-clockwise, then lift the panel away from the frame.
Is there a vegetarian option on the set menu, or should we order à la carte?
A 2-to-1 multiplexer selects one of two inputs depending on the value of a single control bit.
Glaciers carve U-shaped valleys, while rivers cut V-shaped ones; both leave sediment far downstream.
"""
