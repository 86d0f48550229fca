"""Beyond one machine (issue 6): --engine ray gives the local engine's dataset; a worker that
dies mid-job is retried with no row lost or duplicated; several devices without Ray."""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np
import pytest

import hubembed
from hubembed.cli import main
from hubembed.embedder import Embedder
from tests.conftest import ALICE_TOKEN, run_cli
from tests.test_refresh import csv_bytes


class DyingEmbedder(Embedder):
    """Deterministic vectors from the text; the worker process dies on its third batch, once."""

    dimension = 8

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.calls = 0

    def embed_batch(self, texts, timeout=None):
        self.calls += 1
        if self.calls == 3 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)  # the whole worker process goes, as on OOM or preemption
        digests = [hashlib.sha256(t.encode()).digest()[:8] for t in texts]
        return np.array([[b / 255 for b in d] for d in digests], dtype=np.float32)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    import cloudpickle

    # Ship this module's classes by value: Ray's workers do not have tests/ on their path.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_missing_ray_says_how_to_install_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    code = main(["build", "sample:medicare-faqs", str(tmp_path / "o"), "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and "--engine ray needs Ray: pip install 'hubembed[ray]'" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.ray
def test_ray_engine_on_a_hub_source_equals_the_local_engine(hub, repo_name, medicare_texts):
    texts = medicare_texts + [f"{t} (case {i})" for i in range(3) for t in medicare_texts]
    src = f"alice/{repo_name}-src"
    hub.create_repo(src, files={"data/train.csv": csv_bytes(texts)})
    env = {"HF_TOKEN": ALICE_TOKEN}
    local = run_cli("-q", "build", src, f"alice/{repo_name}-local", "--column", "text", env=env)
    assert local.returncode == 0, local.stderr
    on_ray = run_cli(
        "build",
        src,
        f"alice/{repo_name}-ray",
        "--column",
        "text",
        "--engine",
        "ray",
        "--workers",
        "2",
        "--batch-size",
        "8",
        env=env,
    )
    assert on_ray.returncode == 0, on_ray.stderr
    a, b = hubembed.load(f"alice/{repo_name}-local"), hubembed.load(f"alice/{repo_name}-ray")
    assert b.dataset["text"] == a.dataset["text"] == texts
    assert b.dataset["id"] == a.dataset["id"]
    assert np.allclose(a.embeddings.numpy(), b.embeddings.numpy(), atol=1e-5)
    ignore = {"engine", "created_at", "query_prompt_name", "query_prompt"}
    assert {k: v for k, v in b.metadata.items() if k not in ignore} == {
        k: v for k, v in a.metadata.items() if k not in ignore
    }
    assert b.metadata["engine"] == "ray"
    again = run_cli("build", src, f"alice/{repo_name}-ray", "--column", "text", "--engine", "ray", env=env)
    assert again.returncode == 0 and "up to date" in again.stdout


@pytest.mark.ray
def test_a_worker_that_dies_is_retried_and_no_rows_are_lost_or_duplicated(
    ray_cluster, tmp_path, medicare_texts
):
    texts = [f"{t} #{i}" for i in range(8) for t in medicare_texts]  # 104
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f'{{"text": "{t}"}}\n' for t in texts))
    marker = tmp_path / "died-once"
    reference = DyingEmbedder(str(tmp_path / "never"))

    def factory(settings):
        return DyingEmbedder(str(marker)), {
            "model": "test/dying",
            "model_revision": None,
            "model_origin": "test",
        }

    result = hubembed.build(
        str(src),
        str(tmp_path / "out"),
        engine="ray",
        workers=2,
        batch_size=8,
        embedder_factory=factory,
        progress=False,
    )
    assert marker.exists(), "no worker died: the test did not test anything"
    assert result.rows == 104
    index = hubembed.load(str(tmp_path / "out"))
    assert index.dataset["text"] == texts
    assert np.allclose(index.embeddings.numpy(), reference.embed_batch(texts), atol=1e-6)


@pytest.mark.ray
def test_several_devices_without_ray_one_model_each(tmp_path, st_model, medicare_texts):
    """--device cuda:0,cuda:1 on a GPU box; here the same code path with two CPU copies."""
    assert main(["-q", "build", "sample:medicare-faqs", str(tmp_path / "o"), "--device", "cpu,cpu"]) == 0
    vectors = hubembed.load(str(tmp_path / "o")).embeddings.numpy()
    expected = st_model.encode(medicare_texts, normalize_embeddings=True)
    assert ((vectors * expected).sum(1)).min() >= 0.9999
