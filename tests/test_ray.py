"""Beyond one machine (issues 6 and 11): --engine ray embeds each block's missing texts on a pool
of Ray actors (plain Ray core), spread over a cluster's nodes, under the local engine's retry
policy and time budget; an unplaceable request fails at once and a stuck one is reported; a
worker that dies mid-job is retried with no row lost or duplicated; actors' errors reach the
driver as hubembed's own. End to end, a Ray build equals the local one, resumes from
checkpoints, refreshes only edited rows and keeps the empty-text policy. Also: several devices
without Ray."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hubembed
from hubembed.cli import main
from hubembed.embedder import Embedder
from hubembed.engines import EmbedRun
from hubembed.errors import ModelError, RemoteError, TimeBudgetExceeded, UsageError
from hubembed.output import ShardWriter, output_features
from hubembed.ray_engine import RayEngine, place
from hubembed.retry import Deadline
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
    """Ray's own two-node cluster on this machine (a head and one more node, 1 CPU each), joined
    by this process; one for the whole module, as each start costs seconds."""
    ray = pytest.importorskip("ray")
    import cloudpickle
    from ray.cluster_utils import Cluster

    # Ship this module's classes by value: Ray's workers do not have tests/ on their path.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


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


class StoppingEmbedder(RecordingEmbedder):
    """A RecordingEmbedder whose calls after the first AFTER_CALLS fail."""

    def __init__(self, log: str, after_calls: int) -> None:
        super().__init__(log)
        self.after_calls = after_calls

    def embed_batch(self, texts, timeout=None):
        self.after_calls -= 1
        if self.after_calls < 0:
            raise RemoteError("stopped")
        time.sleep(0.02)  # as a model takes time: its batches are worth checkpointing
        return super().embed_batch(texts, timeout)


RECORDING_META = {"model": "test/recording", "model_revision": None, "model_origin": "test"}


def recording(log):
    embedder = RecordingEmbedder(str(log))
    return embedder, lambda settings: (embedder, RECORDING_META)


NO_QUERY = {"query_prompt_name": None, "query_prompt": None}


def unit_vectors(texts: list[str]) -> np.ndarray:
    vectors = np.array([list(hashlib.sha256(t.encode()).digest()[:8]) for t in texts], np.float32) + 1
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class NodeEmbedder(Embedder):
    """Unit vectors from the text; logs (node, text) for each text it embeds. Its first batch
    waits (up to 30 s) until WORKERS of them have been made, so that every actor gets work."""

    dimension = 8

    def __init__(self, log: str, started: str, workers: int) -> None:
        import ray

        self.log, self.started, self.workers = log, started, workers
        self.node = ray.get_runtime_context().get_node_id()
        Path(started, str(os.getpid())).write_text(self.node)

    def embed_batch(self, texts, timeout=None):
        give_up = time.monotonic() + 30
        while len(os.listdir(self.started)) < self.workers and time.monotonic() < give_up:
            time.sleep(0.05)
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps([self.node, t]) + "\n" for t in texts))
        return unit_vectors(texts)


class SlowEmbedder(Embedder):
    dimension = 8

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def embed_batch(self, texts, timeout=None):
        time.sleep(self.seconds)
        return unit_vectors(texts)


class Pieces:
    """An on_batch that checks it runs in the calling thread and keeps what it was handed."""

    def __init__(self, n: int) -> None:
        self.seen = np.zeros(n, dtype=int)
        self.vectors: dict[int, np.ndarray] = {}
        self.thread = threading.get_ident()

    def __call__(self, start: int, vectors: np.ndarray) -> None:
        assert threading.get_ident() == self.thread
        self.seen[start : start + len(vectors)] += 1
        self.vectors[start] = np.array(vectors)

    def check(self, texts: list[str], expected: np.ndarray) -> None:
        """Every piece handed over holds the right vectors; no row was handed over twice."""
        assert self.seen.max() <= 1
        for start, vectors in self.vectors.items():
            assert np.allclose(vectors, expected[start : start + len(vectors)], atol=1e-6)


def test_actors_get_as_much_cpu_as_fits_at_most_one_and_an_unplaceable_pool_says_what_is_lacking():
    one_cpu = {"CPU": 1.0, "memory": 1e9}
    assert place([one_cpu, one_cpu], 2, 0) == 1.0  # one actor on each node
    assert place([{"CPU": 2.0}], 2, 0) == 1.0  # a local Ray: the driver needs no Ray CPU
    assert place([one_cpu, one_cpu], 3, 0) == 0.5
    assert place([{"CPU": 2.0}], 3, 0) == 0.6666  # rounded down to Ray's precision
    assert place([{"CPU": 0.0}, {"CPU": 0.0, "GPU": 2.0}], 2, 1) == 0.0  # a GPU node listing no CPU
    assert place([{"CPU": 8.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}], 2, 1) == 1.0
    assert place([{"CPU": 1.0, "GPU": 1.0}], 2, 0.5) == 0.5
    with pytest.raises(UsageError) as info:
        place([one_cpu, one_cpu], 2, 1)
    assert str(info.value) == (
        "--workers 2 with 1 GPU each cannot be placed: the Ray cluster has 0 GPUs (nodes: 1 CPU, 1 CPU); "
        "lower --workers or --gpus-per-worker, or add nodes"
    )
    with pytest.raises(UsageError, match=r"has 1 GPU \(nodes: 8 CPUs, 1 GPU, 2 CPUs\)"):
        place([{"CPU": 8.0, "GPU": 1.0}, {"CPU": 2.0}], 2, 1)
    with pytest.raises(UsageError, match="--workers 2 cannot be placed: the Ray cluster has 0 CPUs"):
        place([{"CPU": 0.0}], 2, 0)


@pytest.mark.ray
def test_ray_engine_spreads_texts_over_the_nodes_of_a_cluster_in_order(ray_cluster, tmp_path):
    texts = [f"text number {i}" for i in range(300)]
    log, started = tmp_path / "log", tmp_path / "started"
    started.mkdir()
    engine = RayEngine(lambda: (NodeEmbedder(str(log), str(started), 2), NO_QUERY), workers=2)
    pieces = Pieces(len(texts))
    try:
        vectors = engine.embed(texts, EmbedRun(batch_size=8, on_batch=pieces))
    finally:
        engine.close()
    expected = unit_vectors(texts)
    assert vectors.shape == (300, 8) and np.allclose(vectors, expected, atol=1e-6)
    assert (pieces.seen == 1).all()
    pieces.check(texts, expected)
    assert engine.query_meta == NO_QUERY and engine.cpus_per_worker == 1.0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(t for _, t in lines) == sorted(texts)  # each embedded once
    assert len({node for node, _ in lines}) == 2, "both nodes embed"
    assert len({p.read_text() for p in started.iterdir()}) == 2, "one actor on each node"


@pytest.mark.ray
def test_ray_engine_refuses_a_pool_the_cluster_cannot_hold_at_once(ray_cluster):
    engine = RayEngine(lambda: (SlowEmbedder(0), NO_QUERY), workers=2, gpus_per_worker=1)
    began = time.monotonic()
    with pytest.raises(UsageError, match=r"the Ray cluster has 0 GPUs \(nodes: 1 CPU, 1 CPU\)"):
        engine.embed(["a text"], EmbedRun(batch_size=8))
    assert time.monotonic() - began < 5
    engine.close()


@pytest.mark.ray
def test_ray_engine_keeps_the_time_budget_and_hands_over_what_finished(ray_cluster):
    engine = RayEngine(lambda: (SlowEmbedder(0.2), NO_QUERY), workers=2)
    try:
        engine.embed(["warm up"], EmbedRun(batch_size=4))  # the actors start outside the budget
        texts = [f"text {i}" for i in range(200)]  # 8 chunks of 25 texts: 1.4 s each
        pieces = Pieces(len(texts))
        began = time.monotonic()
        with pytest.raises(TimeBudgetExceeded, match=r"the time budget of 2\.5 s ran out; \d+ of 200 texts"):
            engine.embed(texts, EmbedRun(batch_size=4, deadline=Deadline(2.5), on_batch=pieces))
        assert time.monotonic() - began < 4.5
    finally:
        engine.close()
    assert 0 < pieces.seen.sum() < 200, "some chunks finished in time, not all"
    pieces.check(texts, unit_vectors(texts))


@pytest.mark.ray
def test_ray_engine_retries_a_worker_that_dies_and_loses_or_repeats_no_row(ray_cluster, tmp_path):
    texts = [f"text {i}" for i in range(104)]
    marker = tmp_path / "died-once"
    engine = RayEngine(lambda: (DyingEmbedder(str(marker)), NO_QUERY), workers=2)
    pieces = Pieces(len(texts))
    try:
        vectors = engine.embed(texts, EmbedRun(batch_size=8, on_batch=pieces))
    finally:
        engine.close()
    assert marker.exists(), "no worker died: the test did not test anything"
    expected = DyingEmbedder(str(tmp_path / "never")).embed_batch(texts)
    assert np.allclose(vectors, expected, atol=1e-6)
    assert (pieces.seen == 1).all()
    pieces.check(texts, expected)


class RefusingEmbedder(Embedder):
    dimension = 8

    def embed_batch(self, texts, timeout=None):
        raise RemoteError("the endpoint refuses the texts (HTTP 400)", status=400)


def no_such_model():
    raise ModelError("model 'nobody/nothing' not found on the Hub")


@pytest.mark.ray
def test_an_actors_error_reaches_the_driver_as_hubembeds_own(ray_cluster):
    for make, kind, message in (
        (no_such_model, ModelError, "model 'nobody/nothing' not found on the Hub"),
        (lambda: (RefusingEmbedder(), NO_QUERY), RemoteError, "the endpoint refuses the texts (HTTP 400)"),
    ):
        engine = RayEngine(make, workers=2)
        try:
            with pytest.raises(kind) as info:
                engine.embed(["a", "b", "c"], EmbedRun(batch_size=8))
        finally:
            engine.close()
        assert type(info.value) is kind and str(info.value) == message
    assert getattr(info.value, "status", None) == 400


def slow_to_load():
    time.sleep(2.5)
    return SlowEmbedder(0), NO_QUERY


@pytest.mark.ray
def test_a_stalled_ray_job_says_what_ray_sees_and_still_finishes(ray_cluster, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("hubembed"), "propagate", True)  # the CLI turns it off
    engine = RayEngine(slow_to_load, workers=2, stall_seconds=1)
    try:
        with caplog.at_level(logging.WARNING, logger="hubembed"):
            vectors = engine.embed(["a", "b"], EmbedRun(batch_size=8))
    finally:
        engine.close()
    assert np.allclose(vectors, unit_vectors(["a", "b"]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "no word while nothing moved"
    assert re.search(r"no progress for \d+ s \(0 of 2 texts embedded\): 0 of 2 actors ready", warnings[0])
    assert (
        "free/total resources: CPU " in warnings[0]
        and "/2" in warnings[0]
        and "each actor needs 1 CPU, 0 GPU" in warnings[0]
    )


@pytest.mark.ray
def test_a_build_on_a_ray_cluster_by_its_address(ray_cluster, tmp_path, medicare_texts):
    """hubembed.build joins the cluster at ray_address, embeds on both nodes, leaves it running."""
    import ray

    texts = [f"{t} #{i}" for i in range(4) for t in medicare_texts]  # 52
    src = tmp_path / "in.parquet"
    src.write_bytes(parquet_bytes(texts))
    embedder, factory = recording(tmp_path / "log")
    ray.shutdown()  # this process leaves the cluster; the build joins it by its address
    try:
        result = hubembed.build(
            str(src),
            str(tmp_path / "out"),
            engine="ray",
            ray_address=ray_cluster.address,
            workers=2,
            batch_size=4,
            embedder_factory=factory,
            progress=False,
        )
        assert not ray.is_initialized(), "the build left the cluster when done"
    finally:
        if not ray.is_initialized():
            ray.init(address=ray_cluster.address, include_dashboard=False, log_to_driver=False)
    assert result.rows == result.embedded == 52 and result.metadata["engine"] == "ray"
    assert sorted(embedder.embedded()) == sorted(texts)
    index = hubembed.load(str(tmp_path / "out"))
    assert index.dataset["text"] == texts
    assert np.allclose(index.embeddings.numpy(), unit_vectors(texts), atol=1e-6)
    assert ray.cluster_resources().get("CPU") == 2, "the cluster is still up"


@pytest.mark.ray
def test_ray_on_a_hub_parquet_source_equals_the_local_engine(
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
    # A build stopped after 10 vectors were checkpointed (two batches of 5; the third fails).
    stopping = StoppingEmbedder(str(tmp_path / "stopped.log"), after_calls=2)
    with pytest.raises(RemoteError, match="stopped"):
        hubembed.build(
            str(src),
            str(tmp_path / "ray"),
            batch_size=5,
            embedder_factory=lambda settings: (stopping, RECORDING_META),
            progress=False,
        )
    saved = stopping.embedded()
    assert len(saved) == 10
    embedder, factory = recording(tmp_path / "ray.log")

    def ray_build() -> hubembed.BuildResult:
        dst = str(tmp_path / "ray")
        return hubembed.build(
            str(src), dst, engine="ray", batch_size=8, embedder_factory=factory, progress=False
        )

    first = ray_build()  # resumes from those 10
    assert first.embedded == 29 and sorted(embedder.embedded()) == sorted(set(texts) - set(saved))
    same_build(hubembed.load(str(tmp_path / "local")), hubembed.load(str(tmp_path / "ray")))

    edited = list(texts)
    for i in (2, 21, 38):
        edited[i] = f"edited {i}"
    (src / "a.parquet").write_bytes(parquet_bytes(edited[:20]))
    (src / "b.parquet").write_bytes(parquet_bytes(edited[20:], start=20))
    (tmp_path / "ray.log").unlink()
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
    assert "column 'text' has 3 null or empty texts (rows 2, 4, 5, counting from 1)" in refused.stderr
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
