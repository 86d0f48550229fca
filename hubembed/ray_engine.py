"""The Ray engine: the same build, with the embedding spread over a pool of Ray actors.

Only the embedding moves to Ray. Reading the source, reusing vectors, checkpoints, the card
and the single commit stay in the pipeline, so a Ray build is the local build's equal: same
rows in the same order, same card (engine recorded). Each actor builds the embedder once
(a local model on its GPU, or the remote client) and runs the same batching code as the local
engine; Ray restarts an actor that dies and retries its batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from .batching import OnBatch, embed_all
from .embedder import Embedder
from .errors import UsageError

log = logging.getLogger("hubembed")

MakeEmbedder = Callable[[], tuple[Embedder, dict[str, Any]]]


def _require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise UsageError("--engine ray needs Ray: pip install 'hubembed[ray]'") from exc
    return ray


class _EmbedActor:
    """Holds one embedder for the life of the actor; embeds one Ray batch per call."""

    def __init__(self, make: MakeEmbedder, batch_size: int) -> None:
        self.embedder, _ = make()
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        vectors = embed_all(self.embedder, texts, batch_size=self.batch_size, progress=False)
        return {"row": batch["row"], "vector": vectors}


def embed_with_ray(
    make: MakeEmbedder,
    texts: list[str],
    *,
    batch_size: int,
    workers: int,
    gpus_per_worker: float = 0,
    address: str | None = None,
    progress: bool | None = None,
    on_batch: OnBatch | None = None,
) -> np.ndarray:
    """Embed TEXTS on a Ray cluster (RAY_ADDRESS / ADDRESS, or a local one) into an (n, d) array.

    Batches come back to this process as they finish, in input order, and are handed to
    ON_BATCH (checkpoints) like the local engine's.
    """
    import pyarrow as pa
    from tqdm.auto import tqdm

    ray = _require_ray()
    if not ray.is_initialized():
        # RAY_ADDRESS is read by ray.init itself when ADDRESS is None.
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False

    table = pa.table({"row": np.arange(len(texts)), "text": pa.array(texts, type=pa.string())})
    # One block per batch, so the actors share the work from the start (no shuffle stage).
    dataset = ray.data.from_arrow([table.slice(s, batch_size) for s in range(0, len(texts), batch_size)])
    embedded = dataset.map_batches(
        _EmbedActor,
        fn_constructor_args=(make, batch_size),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus_per_worker or None,
        # No max_restarts here: Ray Data's actor pools default to restarting an actor that dies
        # (OOM, preemption, a crash) and retrying its batch, which is what we want.
    )
    out: np.ndarray | None = None
    with tqdm(
        total=len(texts),
        unit="text",
        desc="embedding (ray)",
        disable=None if progress is None else not progress,
    ) as bar:
        for batch in embedded.iter_batches(batch_format="numpy", batch_size=None):
            rows, vectors = batch["row"], np.stack(batch["vector"]).astype(np.float32, copy=False)
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
            if on_batch is not None:
                # Checkpoints take contiguous runs of rows; order is preserved, but do not rely on it.
                breaks = np.flatnonzero(np.diff(rows) != 1) + 1
                for run_rows, run_vectors in zip(
                    np.split(rows, breaks), np.split(vectors, breaks), strict=True
                ):
                    on_batch(int(run_rows[0]), run_vectors)
            bar.update(len(rows))
    if out is None:
        return np.empty((0, 0), dtype=np.float32)
    return out
