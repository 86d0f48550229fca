"""The Ray engine: the source read as a Ray Dataset, embedded by a pool of actors, streamed to shards.

Parquet sources (a Hub repo's parquet files at the pinned commit, read through HfFileSystem,
or local parquet files when the workers can see this disk) are read by Ray itself: the files,
config and split are the ones `datasets` resolves for the local engine (source.resolve_source).
Other sources (csv/json, the bundled samples, local files a remote cluster cannot see) are
read with `datasets` here and handed to Ray as Arrow.

Each actor holds one embedder (a local model on its GPU, or the remote client) and the reuse
table (previous build plus checkpoints, through the object store); it hashes its rows, takes
the vectors it already has, and embeds the rest. This process streams the results in source
order into parquet shards, saving checkpoints as it goes, so it never holds all the texts or
all the vectors. Ray restarts an actor that dies and retries its block.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config, refresh
from .batching import embed_all
from .embedder import Embedder
from .errors import SourceError, UsageError
from .output import ShardWriter, append_vectors, output_features
from .source import (
    EMPTY_SOURCE,
    ResolvedSource,
    SourceInfo,
    all_texts_bad,
    bad_texts,
    load_source,
    refuse_bad_texts,
    resolve_source,
)
from .vectors import matrix, unit_length

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

log = logging.getLogger("hubembed")

MakeEmbedder = Callable[[], tuple[Embedder, dict[str, Any]]]
# Per-row flags the actors add for this process; never written.
_FRESH = "__hubembed_fresh"
_BAD = "__hubembed_bad"


def _require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise UsageError("--engine ray needs Ray: pip install 'hubembed[ray]'") from exc
    return ray


def _connect(address: str | None) -> Any:
    ray = _require_ray()
    if not ray.is_initialized():
        # RAY_ADDRESS is read by ray.init itself when ADDRESS is None.
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    if not log.isEnabledFor(logging.DEBUG):
        # Ray Data prints its plan and progress notices on the console; our own log and progress
        # bar say what a user needs, and -v (DEBUG) brings Ray's back.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    # Set before any Dataset exists: each one keeps a copy of the context it was made in.
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    return ray


@dataclass
class RaySource:
    """The source, with the features `datasets` gives it; its rows become a Ray Dataset only
    when something needs embedding (an up-to-date build starts no Ray)."""

    resolved: ResolvedSource
    features: datasets.Features
    rows: datasets.Dataset | None = None  # read with datasets: a format Ray does not read here
    filesystem: Any = None  # HfFileSystem for a Hub source

    @property
    def info(self) -> SourceInfo:
        return self.resolved.info

    def dataset(self, ray: Any) -> Any:
        """The rows as a ray.data.Dataset, read by Ray where the workers can reach the files."""
        resolved = self.resolved
        if self.rows is None and (self.filesystem is not None or _sees_local_files(ray)):
            paths = resolved.files
            if self.filesystem is not None:
                paths = [p.removeprefix("hf://") for p in paths]
            log.info("reading %s (%d parquet files) with Ray", resolved.info.id, len(paths))
            return ray.data.read_parquet(paths, filesystem=self.filesystem)
        if self.rows is None:
            self.rows = load_source(resolved)
        log.info("read %s with datasets; embedding on Ray", resolved.info.id)
        return ray.data.from_arrow(self.rows.data.table)


def open_ray_source(
    src: str,
    *,
    revision: str | None,
    config_name: str | None,
    split: str | None,
    token: str | None,
) -> RaySource:
    """SRC as the local engine resolves it (files, config, split), read only as far as its features."""
    resolved = resolve_source(src, revision=revision, config_name=config_name, split=split, token=token)
    if resolved.format != "parquet" or not resolved.files:
        rows = load_source(resolved)
        return RaySource(resolved, rows.features, rows)
    import pyarrow.parquet as pq
    from datasets import Features

    filesystem = None
    if resolved.builder is not None:
        from huggingface_hub import HfFileSystem

        # The URLs are pinned to the commit; the filesystem object carries endpoint and token
        # to the read tasks, wherever they run.
        filesystem = HfFileSystem(endpoint=config.hf_endpoint(), token=token)
    features = resolved.features
    if features is None:  # as datasets does: from the first file's schema
        first = resolved.files[0]
        with filesystem.open(first.removeprefix("hf://"), "rb") if filesystem else open(first, "rb") as fh:
            features = Features.from_arrow_schema(pq.read_schema(fh))
    return RaySource(resolved, features, filesystem=filesystem)


def _sees_local_files(ray: Any) -> bool:
    # A local Ray (one node, no client) reads on this machine; a cluster's nodes cannot see its disk.
    from ray.util.client import ray as client

    return not client.is_connected() and sum(1 for n in ray.nodes() if n.get("Alive")) == 1


class _EmbedActor:
    """Holds one embedder and the reuse table for the life of the actor; embeds one block per call."""

    def __init__(self, make: MakeEmbedder, batch_size: int, column: str, reuse: list[Any]) -> None:
        import ray

        self.embedder, _ = make()
        self.batch_size = batch_size
        self.column = column
        # In a list, so Ray hands over the reference and the table is read here, in place.
        self.reuse: refresh.VectorTable | None = ray.get(reuse[0]) if reuse[0] is not None else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        texts = batch.column(self.column)
        bad = bad_texts(texts)
        values = texts.to_pylist()
        digests = [
            b"" if b else hashlib.sha256(t.encode("utf-8")).digest() for t, b in zip(values, bad, strict=True)
        ]
        rows = np.full(len(bad), -1)
        if self.reuse is not None:
            rows = self.reuse.find(np.array(digests, dtype="S32"))
        missing = np.flatnonzero((rows < 0) & ~bad)
        # Each missing text once, at its first row.
        first: dict[bytes, int] = {}
        for i in missing:
            first.setdefault(digests[i], int(i))
        fresh = np.zeros(len(bad), dtype=bool)
        fresh[list(first.values())] = True
        embedded = (
            embed_all(
                self.embedder, [values[i] for i in first.values()], batch_size=self.batch_size, progress=False
            )
            if first
            else None
        )
        vectors = np.zeros((len(bad), self._dimension(embedded)), dtype=np.float32)
        if self.reuse is not None:
            hit = rows >= 0
            vectors[hit] = self.reuse.vectors[rows[hit]]
        if embedded is not None:
            slot = {d: k for k, d in enumerate(first)}
            vectors[missing] = embedded[[slot[digests[i]] for i in missing]]
        return append_vectors(
            batch,
            vectors,
            {
                refresh.HASH_COLUMN: pa.array([d.hex() for d in digests], type=pa.string()),
                _FRESH: pa.array(fresh),
                _BAD: pa.array(bad),
            },
        )

    def _dimension(self, embedded: np.ndarray | None) -> int:
        if embedded is not None:
            return int(embedded.shape[1])
        if self.reuse is not None:
            return int(self.reuse.vectors.shape[1])
        if self.embedder.dimension is None:
            # Every row here was blank and a remote model has not answered yet: ask it once,
            # so every block has the same schema.
            self.embedder.dimension = int(self.embedder.embed_batch(["dimension"]).shape[1])
        return int(self.embedder.dimension)


@dataclass
class RayOutput:
    """What the stream wrote (or, for the blog layout, gathered)."""

    rows: int
    skipped: int
    embedded: int
    dimension: int
    normalized: bool
    features: datasets.Features | None
    num_bytes: int
    vectors: np.ndarray | None = field(default=None, repr=False)  # blog layout only


def embed_to_shards(
    source: RaySource,
    staged: Path,
    *,
    make: MakeEmbedder,
    reuse: refresh.VectorTable | None,
    checkpoint: refresh.Checkpoint,
    skip_empty: bool,
    batch_size: int,
    workers: int,
    gpus_per_worker: float = 0,
    address: str | None = None,
    progress: bool | None = None,
    gather: bool = False,
) -> RayOutput:
    """Embed SOURCE's column on a pool of WORKERS actors and write the rows, in order, as parquet
    shards under STAGED/data (or, with GATHER, return the vectors: the blog layout is one CSV).

    Null or empty texts stop the stream unless SKIP_EMPTY: the column is then read once more,
    to name them (InvalidTextError). Checking as the rows stream, rather than before, spares a
    second read of a source that has none; what was embedded before the stop is checkpointed.
    """
    import pyarrow as pa
    from tqdm.auto import tqdm

    ray = _connect(address)
    column = source.info.column
    dataset = source.dataset(ray)
    reuse_ref = ray.put(reuse) if reuse is not None else None
    del reuse  # the object store has it now
    plan = dataset.repartition(target_num_rows_per_block=batch_size).map_batches(
        _EmbedActor,
        fn_constructor_args=(make, batch_size, column, [reuse_ref]),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus_per_worker or None,
        num_cpus=_cpus_per_actor(ray, workers),
        # No max_restarts here: Ray Data's actor pools default to restarting an actor that dies
        # (OOM, preemption, a crash) and retrying its block, which is what we want.
    )
    out = RayOutput(0, 0, 0, 0, True, None, 0)
    writer: ShardWriter | None = None
    gathered: list[np.ndarray] = []
    refused = False
    seen = 0
    blocks = iter(plan.iter_batches(batch_format="pyarrow", batch_size=None))
    try:
        with tqdm(
            unit="text", desc="embedding (ray)", disable=None if progress is None else not progress
        ) as bar:
            for block in blocks:
                bad = block.column(_BAD).to_numpy(zero_copy_only=False)
                seen += len(bad)
                bar.update(len(bad))
                if bad.any():
                    if not skip_empty:
                        refused = True
                        break
                    out.skipped += int(bad.sum())
                    block = block.filter(pa.array(~bad))
                if not block.num_rows:
                    continue
                vectors = matrix(block, [config.EMBEDDING_COLUMN])
                fresh = block.column(_FRESH).to_numpy(zero_copy_only=False)
                if fresh.any():
                    hashes = block.column(refresh.HASH_COLUMN).filter(pa.array(fresh)).to_pylist()
                    checkpoint.save(hashes, vectors[fresh])
                    out.embedded += int(fresh.sum())
                out.dimension = vectors.shape[1]
                out.normalized &= unit_length(vectors)
                out.rows += block.num_rows
                if gather:
                    gathered.append(vectors)
                    continue
                if writer is None:
                    out.features, schema = output_features(
                        source.features, out.dimension, [refresh.HASH_COLUMN]
                    )
                    writer = ShardWriter(staged, source.info.split, schema)
                writer.write(block.drop_columns([_FRESH, _BAD]))
        if refused:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()  # stop the actors before reading the column again
            raise refuse_bad_texts(column, _bad_mask(dataset, column))
        if not seen:
            raise SourceError(EMPTY_SOURCE)
        if not out.rows:
            raise all_texts_bad(column)
        if writer is not None:
            writer.close()
            out.num_bytes = writer.num_bytes
    finally:
        if writer is not None:
            writer.abort()
    if gather:
        out.vectors = np.concatenate(gathered)
    if out.skipped:
        log.warning("skipped %d rows with null or empty %r (--skip-empty)", out.skipped, column)
    return out


def _cpus_per_actor(ray: Any, workers: int) -> float:
    # Readers need a CPU too: actors that took every CPU would wait forever for their input.
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    return min(1.0, max(cpus - 1.0, 0.0) / workers)


def _bad_mask(dataset: Any, column: str) -> np.ndarray:
    """Which rows of the whole source hold null or empty texts (read again: only on refusal)."""
    parts = [
        bad_texts(b.column(column))
        for b in dataset.select_columns([column]).iter_batches(batch_format="pyarrow", batch_size=None)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
