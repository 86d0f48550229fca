"""Write a build's files into a staging folder: parquet shards (or the blog's CSV) and the card.

Both engines write shards through ShardWriter: the local engine a whole table, the Ray engine
rows as they stream in. Neither knows the number of shards up front, so a shard is closed once
it passes MAX_SHARD_BYTES, and the shards are named ``{split}-{i:05d}-of-{n:05d}.parquet`` at
the end.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config
from .card import render_card

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

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

    extra = extra_columns or {}
    features, schema = output_features(ds.features, vectors.shape[1], list(extra))
    table = append_vectors(
        ds.data.table, vectors, {k: pa.array(v, type=pa.string()) for k, v in extra.items()}
    )
    # The same writer as the Ray engine's, fed a row group at a time: the same shards.
    writer = ShardWriter(staged, meta["source"]["split"], schema)
    step = max(1, ROW_GROUP_BYTES * table.num_rows // max(table.nbytes, 1))
    try:
        for start in range(0, table.num_rows, step):
            writer.write(table.slice(start, step))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    readme = render_card(
        meta,
        data_files=f"data/{meta['source']['split']}-*",
        features=features,
        num_bytes=writer.num_bytes,
        dst=dst,
    )
    (staged / "README.md").write_text(readme, encoding="utf-8")


def append_vectors(table: pa.Table, vectors: np.ndarray, extra_columns: dict[str, Any]) -> pa.Table:
    """TABLE with VECTORS as the embedding column, then EXTRA_COLUMNS (name -> Arrow array);
    columns of TABLE with those names are replaced (output_features warns about them)."""
    import pyarrow as pa

    added = [config.EMBEDDING_COLUMN, *extra_columns]
    table = table.drop_columns([c for c in added if c in table.column_names])
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    table = table.append_column(
        config.EMBEDDING_COLUMN, pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    )
    for name, values in extra_columns.items():
        table = table.append_column(name, values)
    return table


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


# Rows are buffered to about this size before a write: one write is one parquet row group, and
# many tiny row groups make the files slow to read.
ROW_GROUP_BYTES = 64 << 20


def output_features(
    features: datasets.Features, dimension: int, extra_columns: list[str]
) -> tuple[datasets.Features, pa.Schema]:
    """The source's features plus the embedding column and EXTRA_COLUMNS (strings), as
    write_shards' table gets them, and the arrow schema that carries them for load_dataset."""
    import pyarrow as pa
    from datasets import Features

    added = [config.EMBEDDING_COLUMN, *extra_columns]
    clashes = [c for c in added if c in features]
    if clashes:
        log.warning("the source already has %s: replaced by this build's", ", ".join(map(repr, clashes)))
    kept = Features({k: v for k, v in features.items() if k not in added})
    schema = kept.arrow_schema.append(pa.field(config.EMBEDDING_COLUMN, pa.list_(pa.float32(), dimension)))
    for name in extra_columns:
        schema = schema.append(pa.field(name, pa.string()))
    out = Features.from_arrow_schema(schema)
    return out, out.arrow_schema


class ShardWriter:
    """Appends tables of SCHEMA to data/ under STAGED, one shard after another."""

    def __init__(
        self,
        staged: Path,
        split: str,
        schema: pa.Schema,
        *,
        max_shard_bytes: int = MAX_SHARD_BYTES,
        row_group_bytes: int = ROW_GROUP_BYTES,
    ) -> None:
        self.folder = staged / "data"
        self.split = split
        self.schema = schema
        self.max_shard_bytes = max_shard_bytes
        self.row_group_bytes = row_group_bytes
        self.rows = 0
        self.num_bytes = 0  # arrow bytes, as write_shards records them in the card
        self._paths: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._shard_bytes = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        self.rows += table.num_rows
        self.num_bytes += table.nbytes
        self._buffer.append(table)
        self._buffered += table.nbytes
        if self._buffered >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buffer:
            return
        if self._writer is None:
            self.folder.mkdir(exist_ok=True)
            path = self.folder / f".{self.split}-{len(self._paths):05d}.parquet"
            self._paths.append(path)
            self._writer = pq.ParquetWriter(path, self.schema, **parquet_options(self.schema))
        self._writer.write_table(pa.concat_tables(self._buffer))
        self._shard_bytes += self._buffered
        self._buffer, self._buffered = [], 0
        if self._shard_bytes >= self.max_shard_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer, self._shard_bytes = None, 0

    def close(self) -> list[Path]:
        """Finish the last shard and give every shard its final name; return them in order."""
        import pyarrow.parquet as pq

        self._flush()
        self._close_shard()
        if not self._paths:  # no rows: one empty shard, as write_shards writes
            self.folder.mkdir(exist_ok=True)
            self._paths.append(self.folder / f".{self.split}-00000.parquet")
            pq.write_table(self.schema.empty_table(), self._paths[0], **parquet_options(self.schema))
        n = len(self._paths)
        final = [self.folder / f"{self.split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
        for temp, path in zip(self._paths, final, strict=True):
            temp.rename(path)
        return final

    def abort(self) -> None:
        """Close the open file (the staging folder is discarded by the caller)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
