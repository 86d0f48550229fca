"""The build: source -> embedder -> sink. Batching and progress live here, once."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config
from .card import render_card
from .embedder import Embedder, EmbedSettings, LocalEmbedder, query_settings
from .errors import UsageError
from .models import load_model, resolve_model
from .sink import Sink, open_sink
from .source import check_texts, choose_column, open_source

if TYPE_CHECKING:
    import datasets

log = logging.getLogger("hubembed")

LAYOUTS = ("default", "blog")
# Shards of about this many bytes, like datasets' push_to_hub.
MAX_SHARD_BYTES = 500 << 20


@dataclass
class BuildResult:
    """What a build produced: where it went and what the card records."""

    destination: str
    location: str  # commit sha for the Hub, the folder for a local DST
    rows: int
    dimension: int
    metadata: dict[str, Any] = field(repr=False)


def build(
    src: str,
    dst: str,
    *,
    column: str | None = None,
    model: str = config.DEFAULT_MODEL,
    model_revision: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    revision: str | None = None,
    config_name: str | None = None,
    split: str | None = None,
    private: bool = False,
    prompt_name: str | None = None,
    prompt: str | None = None,
    truncate_dim: int | None = None,
    normalize: bool = True,
    layout: str = "default",
    trust_remote_code: bool = False,
    skip_empty: bool = False,
    progress: bool | None = None,
    embedder_factory: Callable[[EmbedSettings], tuple[Embedder, dict[str, Any]]] | None = None,
) -> BuildResult:
    """Embed column COLUMN of SRC and publish the result to DST (a Hub repo id or a folder).

    ``progress=None`` shows a progress bar only on a terminal. Raises UsageError subclasses
    (exit code 2) for input the user can fix; DST is untouched on any failure.
    """
    if prompt_name and prompt:
        raise UsageError("give either --prompt-name or --prompt, not both")
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    token = config.hf_token()
    sink = open_sink(dst, token=token, private=private)
    sink.preflight()

    ds, source = open_source(src, revision=revision, config_name=config_name, split=split, token=token)
    source.column = choose_column(ds, column)
    ds, skipped = check_texts(ds, source.column, skip_empty=skip_empty)

    settings = EmbedSettings(prompt_name, prompt, truncate_dim, normalize)
    if embedder_factory is not None:
        embedder, model_meta = embedder_factory(settings)
    else:
        embedder, model_meta = _local_embedder(
            model, model_revision, device, trust_remote_code, settings, token
        )

    texts: list[str] = ds.data.column(source.column).to_pylist()
    vectors = embed_all(embedder, texts, batch_size=batch_size, progress=progress)

    meta = {
        **model_meta,
        "dimension": embedder.dimension,
        "rows": len(texts),
        "skipped_rows": skipped,
        "source": source.to_dict(),
        "layout": layout,
        "embedding_column": config.EMBEDDING_COLUMN,
        "engine": "local",
        "hubembed_version": _version(),
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    staged = sink.staging()
    try:
        if layout == "blog":
            _write_blog(staged, vectors, meta, sink)
        else:
            _write_shards(staged, ds, vectors, meta, sink)
        message = f"hubembed: embed {source.id} ({source.split}/{source.column}) with {meta['model']}"
        location = sink.publish(staged, message)
    except BaseException:
        sink.discard(staged)
        raise
    log.info("wrote %d rows of %d-d embeddings to %s", len(texts), embedder.dimension, sink.ref)
    return BuildResult(sink.ref, location, len(texts), embedder.dimension, meta)


def _local_embedder(
    model: str,
    model_revision: str | None,
    device: str,
    trust_remote_code: bool,
    settings: EmbedSettings,
    token: str | None,
) -> tuple[Embedder, dict[str, Any]]:
    resolved = resolve_model(model, revision=model_revision, token=token)
    st_model = load_model(resolved, device=device, token=token, trust_remote_code=trust_remote_code)
    embedder = LocalEmbedder(st_model, settings)
    query = query_settings(settings, st_model.prompts or {})
    meta = {
        "model": resolved.model_id,
        "model_revision": resolved.revision,
        "model_origin": resolved.origin,
        "normalized": embedder.outputs_unit_vectors(),
        **settings.to_dict(),
        "query_prompt_name": query.prompt_name,
        "query_prompt": query.prompt,
        "trust_remote_code": trust_remote_code,
    }
    return embedder, meta


def embed_all(embedder: Embedder, texts: list[str], *, batch_size: int, progress: bool | None) -> np.ndarray:
    """Embed TEXTS in batches into one (n, d) float32 array, rows in input order."""
    from tqdm.auto import tqdm

    out = np.empty((len(texts), embedder.dimension), dtype=np.float32)
    with tqdm(total=len(texts), unit="text", desc="embedding", disable=_bar_disabled(progress)) as bar:
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            vectors = embedder.embed_batch(batch)
            if vectors.shape != (len(batch), embedder.dimension):
                raise RuntimeError(
                    f"embedder returned shape {vectors.shape} for {len(batch)} texts of dimension "
                    f"{embedder.dimension}"
                )
            out[start : start + len(batch)] = vectors
            bar.update(len(batch))
    return out


def _bar_disabled(progress: bool | None) -> bool | None:
    # tqdm reads disable=None as "only on a terminal".
    return None if progress is None else not progress


def _write_shards(
    staged: Path, ds: datasets.Dataset, vectors: np.ndarray, meta: dict[str, Any], sink: Sink
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    if config.EMBEDDING_COLUMN in ds.column_names:
        ds = ds.remove_columns(config.EMBEDDING_COLUMN)
        log.warning("the source already has an %r column: it is replaced", config.EMBEDDING_COLUMN)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    table = ds.data.table.append_column(config.EMBEDDING_COLUMN, column)
    out = Dataset(table)
    num_bytes = int(table.nbytes)
    shards = max(1, math.ceil(num_bytes / MAX_SHARD_BYTES))
    split = meta["source"]["split"]
    (staged / "data").mkdir()
    # The schema carries datasets' features metadata, so load_dataset reads the fixed-length
    # float32 list back exactly; slices are zero-copy.
    full = out.data.table
    per_shard = math.ceil(len(out) / shards)
    for i in range(shards):
        part = full.slice(i * per_shard, per_shard)
        pq.write_table(part, staged / "data" / f"{split}-{i:05d}-of-{shards:05d}.parquet")
    readme = render_card(
        meta, data_files=f"data/{split}-*", features=out.features, num_bytes=num_bytes, dst=sink.ref
    )
    (staged / "README.md").write_text(readme, encoding="utf-8")


def _write_blog(staged: Path, vectors: np.ndarray, meta: dict[str, Any], sink: Sink) -> None:
    """The blog's artefact: embeddings.csv with columns "0".."d-1" and nothing else per row."""
    import pandas as pd

    pd.DataFrame(vectors).to_csv(staged / "embeddings.csv", index=False)
    # No dataset_info: datasets infers the 384 float columns from the CSV itself.
    readme = render_card(meta, data_files="embeddings.csv", features=None, num_bytes=0, dst=sink.ref)
    (staged / "README.md").write_text(readme, encoding="utf-8")


def _version() -> str:
    from . import __version__

    return __version__
