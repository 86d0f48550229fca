"""Write a build's files into a staging folder as its blocks arrive: parquet shards (or the
blog's CSV), then the card.

The number of shards is not known up front, so a shard is closed once it passes
MAX_SHARD_BYTES, and the shards are named ``{split}-{i:05d}-of-{n:05d}.parquet`` at the end.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config
from .card import BuildRecord, render_card
from .compact import Quantizer
from .refresh import HASH_COLUMN
from .vectors import write_published

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

log = logging.getLogger("hubembed")

# Shards of about this many bytes, like datasets' push_to_hub.
MAX_SHARD_BYTES = 500 << 20


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
    # The compact copies (--quantize, "embedding_int8"...) are vectors too.
    vectors = (f"{config.EMBEDDING_COLUMN}.", f"{config.EMBEDDING_COLUMN}_")
    return {
        "use_dictionary": [p for p in paths if not p.startswith(vectors)],
        "compression": {p: "none" if p.startswith(vectors) else "snappy" for p in paths},
    }


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


class Output(ABC):
    """Where the loop's blocks go, in order: rows, their vectors and their text hashes."""

    #: called with the finished shards and the record before the card is written (--index)
    before_card: Callable[[list[Path], BuildRecord], None] | None = None

    def __init__(self, staged: Path, features: datasets.Features, *, split: str, dst: str) -> None:
        self.staged = staged
        self.source_features = features
        self.split = split
        self.dst = dst  # how the card's snippets refer to DST

    @abstractmethod
    def write(self, table: pa.Table, vectors: np.ndarray, hashes: pa.Array) -> None:
        """Append TABLE's rows with VECTORS and HASHES (hex strings)."""

    @abstractmethod
    def finish(self, record: BuildRecord) -> None:
        """Close the files and write the card."""

    def abort(self) -> None:  # noqa: B027 - optional hook
        """Close open files after a failure (the staging folder is discarded by the caller)."""


class ShardOutput(Output):
    """The default layout: the source rows plus the embedding and hash columns, as parquet."""

    _writer: ShardWriter | None = None
    _features: datasets.Features | None = None
    quantizer: Quantizer | None = None  # --quantize: compact copies beside the vectors
    shards: list[Path] | None = None  # the files, once finished

    def write(self, table: pa.Table, vectors: np.ndarray, hashes: pa.Array) -> None:
        extra = {HASH_COLUMN: hashes}
        if self.quantizer is not None:
            extra.update(self.quantizer.columns(vectors))
        if self._writer is None:
            self._features, schema = output_features(self.source_features, vectors.shape[1], [HASH_COLUMN])
            if self.quantizer is not None:
                from datasets import Features

                for f in self.quantizer.fields(vectors.shape[1]):
                    schema = schema.append(f)
                self._features = Features.from_arrow_schema(schema)
                schema = self._features.arrow_schema
            self._writer = ShardWriter(self.staged, self.split, schema)
        self._writer.write(append_vectors(table, vectors, extra))

    def finish(self, record: BuildRecord) -> None:
        assert self._writer is not None, "a build writes at least one row"
        self.shards = self._writer.close()
        # The vectors once more, as one .npy a load maps without decoding or copying
        # (benchmarks/README.md, "Load"); load_dataset and the viewer read only data/.
        write_published(self.shards, config.EMBEDDING_COLUMN, self.staged)
        if self.before_card is not None:
            self.before_card(self.shards, record)
        readme = render_card(
            record,
            data_files=f"data/{self.split}-*",
            features=self._features,
            num_bytes=self._writer.num_bytes,
            dst=self.dst,
        )
        (self.staged / "README.md").write_text(readme, encoding="utf-8")

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()


class BlogOutput(Output):
    """The blog's artefact: embeddings.csv with columns "0".."d-1" and nothing else per row,
    appended a block at a time."""

    _rows = 0

    def write(self, table: pa.Table, vectors: np.ndarray, hashes: pa.Array) -> None:
        import pandas as pd

        with (self.staged / "embeddings.csv").open("a", encoding="utf-8", newline="") as fh:
            pd.DataFrame(vectors).to_csv(fh, index=False, header=not self._rows)
        self._rows += len(vectors)

    def finish(self, record: BuildRecord) -> None:
        # No dataset_info: datasets infers the float columns from the CSV itself.
        readme = render_card(record, data_files="embeddings.csv", features=None, num_bytes=0, dst=self.dst)
        (self.staged / "README.md").write_text(readme, encoding="utf-8")
