"""Write a build's files into a staging folder: parquet shards (or the blog's CSV) and the card."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config
from .card import render_card

if TYPE_CHECKING:
    import datasets

log = logging.getLogger("hubembed")

# Shards of about this many bytes, like datasets' push_to_hub.
MAX_SHARD_BYTES = 500 << 20


def write_shards(
    staged: Path,
    ds: datasets.Dataset,
    vectors: np.ndarray,
    meta: dict[str, Any],
    *,
    dst: str,
    extra_columns: dict[str, list[str]] | None = None,
) -> None:
    """The source rows plus the embedding column (and EXTRA_COLUMNS) as parquet under data/."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    added = [config.EMBEDDING_COLUMN, *(extra_columns or {})]
    clashes = [c for c in added if c in ds.column_names]
    if clashes:
        ds = ds.remove_columns(clashes)
        log.warning("the source already has %s: replaced by this build's", ", ".join(map(repr, clashes)))
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    table = ds.data.table.append_column(
        config.EMBEDDING_COLUMN, pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    )
    for name, values in (extra_columns or {}).items():
        table = table.append_column(name, pa.array(values, type=pa.string()))
    out = Dataset(table)
    num_bytes = int(table.nbytes)
    shards = max(1, math.ceil(num_bytes / MAX_SHARD_BYTES))
    split = meta["source"]["split"]
    (staged / "data").mkdir()
    # The schema carries datasets' features metadata, so load_dataset reads the fixed-length
    # float32 list back exactly; slices are zero-copy.
    full = out.data.table
    per_shard = math.ceil(len(out) / shards)
    options = parquet_options(full.schema)
    for i in range(shards):
        pq.write_table(
            full.slice(i * per_shard, per_shard),
            staged / "data" / f"{split}-{i:05d}-of-{shards:05d}.parquet",
            **options,
        )
    readme = render_card(
        meta, data_files=f"data/{split}-*", features=out.features, num_bytes=num_bytes, dst=dst
    )
    (staged / "README.md").write_text(readme, encoding="utf-8")


def parquet_options(schema: Any) -> dict[str, Any]:
    """pyarrow.parquet writer options for a table of SCHEMA: the vectors stored plain.

    A dictionary page and snappy buy nothing on float vectors, but decoding them made reading
    a shard 3.7x slower (benchmarks/README.md, "Load"). Other columns keep pyarrow's defaults.
    """
    import io

    import pyarrow.parquet as pq

    # Writer options name leaf columns by their parquet path ("embedding.list.element").
    probe = io.BytesIO()
    pq.write_table(schema.empty_table(), probe)
    probe.seek(0)
    parquet_schema = pq.ParquetFile(probe).schema
    paths = [parquet_schema.column(i).path for i in range(len(parquet_schema))]
    vectors = f"{config.EMBEDDING_COLUMN}."
    return {
        "use_dictionary": [p for p in paths if not p.startswith(vectors)],
        "compression": {p: "none" if p.startswith(vectors) else "snappy" for p in paths},
    }


def write_blog(staged: Path, vectors: np.ndarray, meta: dict[str, Any], *, dst: str) -> None:
    """The blog's artefact: embeddings.csv with columns "0".."d-1" and nothing else per row."""
    import pandas as pd

    pd.DataFrame(vectors).to_csv(staged / "embeddings.csv", index=False)
    # No dataset_info: datasets infers the float columns from the CSV itself.
    readme = render_card(meta, data_files="embeddings.csv", features=None, num_bytes=0, dst=dst)
    (staged / "README.md").write_text(readme, encoding="utf-8")
