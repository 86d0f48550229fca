"""Beyond one machine (issue 6): --engine ray reads parquet sources itself (Hub or local) and
gives the local engine's dataset, resumes from checkpoints, refreshes only edited rows, keeps the
empty-text policy; a worker that dies mid-job is retried with no row lost or duplicated; several
devices without Ray."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from contextlib import contextmanager

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hubembed
from hubembed import ray_engine, refresh
from hubembed.cli import main
from hubembed.embedder import Embedder
from hubembed.output import ShardWriter, output_features
from tests.conftest import run_cli


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


def parquet_bytes(texts: list[str | None], start: int = 0) -> bytes:
    table = pa.table({"id": list(range(start, start + len(texts))), "text": pa.array(texts, pa.string())})
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def same_build(a, b) -> None:
    """B holds A's rows in A's order, its vectors, and its card apart from engine and time."""
    assert b.dataset.column_names == a.dataset.column_names
    for name in a.dataset.column_names:
        if name != "embedding":
            assert b.dataset[name] == a.dataset[name], name
    assert np.allclose(a.embeddings.numpy(), b.embeddings.numpy(), atol=1e-5)
    ignore = {"engine", "created_at", "query_prompt_name", "query_prompt"}
    assert {k: v for k, v in b.metadata.items() if k not in ignore} == {
        k: v for k, v in a.metadata.items() if k not in ignore
    }
    assert b.metadata["engine"] == "ray"


@contextmanager
def read_by_ray_only(builder: bool = True):
    """Within it, a build cannot read the source with `datasets`: the Ray engine's fallback is
    refused, and so (BUILDER) is every datasets builder (the loader's too)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(ray_engine, "load_source", _refuse)
        if builder:
            m.setattr(datasets.DatasetBuilder, "download_and_prepare", _refuse)
        yield


class RecordingEmbedder(Embedder):
    """Deterministic unit vectors from the text; appends each text it embeds to LOG, from
    whichever Ray worker process it runs in."""

    dimension = 8

    def __init__(self, log: str) -> None:
        self.log = log

    def embed_batch(self, texts, timeout=None):
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(t) + "\n" for t in texts))
        vectors = np.array([list(hashlib.sha256(t.encode()).digest()[:8]) for t in texts], np.float32) + 1
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def embedded(self) -> list[str]:
        with open(self.log, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]


RECORDING_META = {"model": "test/recording", "model_revision": None, "model_origin": "test"}


def recording(log):
    embedder = RecordingEmbedder(str(log))
    return embedder, lambda settings: (embedder, RECORDING_META)


@pytest.mark.ray
def test_ray_reads_a_hub_parquet_source_itself_and_equals_the_local_engine(
    ray_cluster, hub, repo_name, medicare_texts, alice
):
    texts = medicare_texts + [f"{t} (case {i})" for i in range(3) for t in medicare_texts]  # 52
    src = f"alice/{repo_name}-src"
    hub.create_repo(
        src,
        files={
            "data/train-00000-of-00002.parquet": parquet_bytes(texts[:30]),
            "data/train-00001-of-00002.parquet": parquet_bytes(texts[30:], start=30),
            "data/test-00000-of-00001.parquet": parquet_bytes(["another split"]),
        },
    )
    assert main(["-q", "build", src, f"alice/{repo_name}-local", "--column", "text"]) == 0
    on_ray = ["-q", "build", src, f"alice/{repo_name}-ray", "--column", "text", "--engine", "ray"]
    with read_by_ray_only():
        assert main([*on_ray, "--workers", "2", "--batch-size", "4"]) == 0
        again = hubembed.build(src, f"alice/{repo_name}-ray", column="text", engine="ray", progress=False)
    assert again.up_to_date
    a, b = hubembed.load(f"alice/{repo_name}-local"), hubembed.load(f"alice/{repo_name}-ray")
    assert b.dataset["text"] == texts
    same_build(a, b)


@pytest.mark.ray
def test_ray_on_a_local_parquet_folder_equals_local_resumes_and_embeds_only_edited_rows(
    ray_cluster, tmp_path, medicare_texts
):
    texts = [f"{t} #{i}" for i in range(3) for t in medicare_texts]  # 39
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.parquet").write_bytes(parquet_bytes(texts[:20]))
    (src / "b.parquet").write_bytes(parquet_bytes(texts[20:], start=20))
    _, factory = recording(tmp_path / "local.log")
    hubembed.build(str(src), str(tmp_path / "local"), embedder_factory=factory, progress=False)
    # As if a Ray build had been stopped after saving its first 10 vectors: it resumes from them.
    stopped = refresh.Checkpoint(
        f"{src}\0None\0train\0text", refresh.fingerprint({**RECORDING_META, "normalize": True})
    )
    stopped.save(refresh.text_hashes(texts[:10]), RecordingEmbedder(os.devnull).embed_batch(texts[:10]))
    stopped.close()
    embedder, factory = recording(tmp_path / "ray.log")

    def ray_build() -> hubembed.BuildResult:
        dst = str(tmp_path / "ray")
        return hubembed.build(
            str(src), dst, engine="ray", batch_size=8, embedder_factory=factory, progress=False
        )

    with read_by_ray_only():
        first = ray_build()
    assert first.embedded == 29 and sorted(embedder.embedded()) == sorted(texts[10:])
    same_build(hubembed.load(str(tmp_path / "local")), hubembed.load(str(tmp_path / "ray")))

    edited = list(texts)
    for i in (2, 21, 38):
        edited[i] = f"edited {i}"
    (src / "a.parquet").write_bytes(parquet_bytes(edited[:20]))
    (src / "b.parquet").write_bytes(parquet_bytes(edited[20:], start=20))
    (tmp_path / "ray.log").unlink()
    with read_by_ray_only(builder=False):  # the loader reads the previous build with datasets
        again = ray_build()
    assert again.embedded == 3 and sorted(embedder.embedded()) == ["edited 2", "edited 21", "edited 38"]
    index = hubembed.load(str(tmp_path / "ray"))
    assert index.dataset["text"] == edited
    assert np.allclose(index.embeddings.numpy(), embedder.embed_batch(edited), atol=1e-6)


@pytest.mark.ray
def test_ray_applies_the_empty_text_policy_as_the_local_engine_does(ray_cluster, tmp_path, medicare_texts):
    src = tmp_path / "in.parquet"
    src.write_bytes(parquet_bytes([medicare_texts[0], "", medicare_texts[1], None, "  ", medicare_texts[2]]))
    # The command as a user runs it, starting its own Ray.
    refused = run_cli("build", str(src), str(tmp_path / "o"), "--engine", "ray", "--workers", "1")
    assert refused.returncode == 2, refused.stderr
    assert "column 'text' has 3 null or empty texts (rows 1, 3, 4)" in refused.stderr
    assert not (tmp_path / "o").exists()
    _, factory = recording(tmp_path / "log")
    local = hubembed.build(
        str(src), str(tmp_path / "local"), skip_empty=True, embedder_factory=factory, progress=False
    )
    on_ray = hubembed.build(
        str(src), str(tmp_path / "o"), engine="ray", skip_empty=True, embedder_factory=factory, progress=False
    )
    assert on_ray.rows == local.rows == 3 and on_ray.metadata["skipped_rows"] == 3
    same_build(hubembed.load(str(tmp_path / "local")), hubembed.load(str(tmp_path / "o")))


def _refuse(*args, **kwargs):
    raise AssertionError("the source was read with datasets, not by Ray")


def test_streamed_shards_roll_over_and_read_back_in_order(tmp_path):
    """The Ray engine's writer: shards of about max_shard_bytes, named -of-N once N is known."""
    features = datasets.Features({"id": datasets.Value("int64"), "text": datasets.Value("string")})
    _, schema = output_features(features, 4, ["text_sha256"])
    writer = ShardWriter(tmp_path, "train", schema, max_shard_bytes=2000, row_group_bytes=500)
    for start in range(0, 100, 10):
        rows = range(start, start + 10)
        writer.write(
            pa.table(
                {
                    "id": list(rows),
                    "text": [f"text {i}" for i in rows],
                    "embedding": pa.array([[float(i)] * 4 for i in rows], pa.list_(pa.float32(), 4)),
                    "text_sha256": [f"h{i}" for i in rows],
                }
            )
        )
    shards = writer.close()
    assert len(shards) > 1 and [p.name for p in sorted((tmp_path / "data").iterdir())] == [
        f"train-{i:05d}-of-{len(shards):05d}.parquet" for i in range(len(shards))
    ]
    back = datasets.load_dataset("parquet", data_files=[str(p) for p in shards], split="train")
    assert back.features == output_features(features, 4, ["text_sha256"])[0]
    assert back["id"] == list(range(100)) and back[99]["embedding"] == [99.0] * 4
    encodings = pq.ParquetFile(shards[0]).metadata.row_group(0).column(2).encodings
    assert "PLAIN_DICTIONARY" not in encodings and "RLE_DICTIONARY" not in encodings


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
