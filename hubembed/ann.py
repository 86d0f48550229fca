"""The ANN index a build publishes with its rows (``--index``): HNSW, built by usearch.

usearch rather than faiss (benchmarks/README.md, "Compact vectors and indexes"): on the same
vectors and machine its graph gave the same recall at a shorter build, and its saved file opens
memory-mapped (``Index.restore(path, view=True)``), so loading it reads nothing up front and a
search touches only the pages it visits; faiss reads an HNSW graph into memory whole.

The index is built once all shards are written, from the staged files a batch at a time, and
stored as ``index/{split}.usearch`` in the same commit. Its keys are row numbers. The card
records its parameters and what it covers: the row count and a fingerprint of the rows' hash
column, which the loader checks before trusting it (a stale file answers for other rows).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError

log = logging.getLogger("hubembed")

FOLDER = "index"
# HNSW parameters, measured over 1M rows of model-like vectors (benchmarks/README.md, "Compact
# vectors and indexes"): connectivity (M) 32, not usearch's 16, and expansion 384 while
# searching, not 64. With M=16, ef_search 64 found 0.80 of the top 10 and 512 only 0.95 in
# 1.9 ms; with M=32, 384 found 0.97 in 1.7 ms, for a file a quarter larger (630 MiB per 1M
# rows). Expansion 128 while building (usearch's default). The vectors kept as int8 (a
# quarter of float32, in the file and in the page cache), since every hit is rescored in
# float32 anyway; float16 found no more at 200k rows.
PARAMS = {"metric": "ip", "dtype": "i8", "connectivity": 32, "expansion_add": 128, "expansion_search": 384}
_BATCH = 65_536


class IndexError_(UsageError):
    """The dataset's index is missing or does not match its rows."""


def require_usearch() -> Any:
    try:
        import usearch.index
    except ImportError as exc:  # an optional extra
        raise UsageError("an ANN index needs usearch: pip install 'hubembed[search]'") from exc
    return usearch.index


def relative_path(split: str) -> str:
    return f"{FOLDER}/{split}.usearch"


def rows_fingerprint(files: list[Path], hash_column: str) -> tuple[int, str]:
    """The row count of FILES and a digest of their HASH_COLUMN, in order: what an index covers."""
    import pyarrow.parquet as pq

    digest = hashlib.sha256()
    rows = 0
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(columns=[hash_column], batch_size=_BATCH):
            column = batch.column(0)
            rows += len(column)
            # The strings' bytes straight from Arrow's buffers (each hash is 64 hex characters,
            # so their concatenation is unambiguous): no Python string per row.
            offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset :][: len(column) + 1]
            data = column.buffers()[2]
            if data is not None and len(offsets):
                digest.update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])
    return rows, digest.hexdigest()[:32]


def build_index(files: list[Path], staged: Path, split: str, column: str, hash_column: str) -> dict[str, Any]:
    """Build the HNSW index over COLUMN of the staged FILES, save it under STAGED, and return
    what the card records about it."""
    from .vectors import decode_batches

    usearch = require_usearch()
    started = time.perf_counter()
    index = None
    offset = 0
    for vectors in decode_batches(files, column, _BATCH):
        if index is None:
            index = usearch.Index(
                ndim=vectors.shape[1],
                metric=PARAMS["metric"],
                dtype=PARAMS["dtype"],
                connectivity=PARAMS["connectivity"],
                expansion_add=PARAMS["expansion_add"],
                expansion_search=PARAMS["expansion_search"],
            )
        index.add(np.arange(offset, offset + len(vectors), dtype=np.uint64), vectors)
        offset += len(vectors)
    if index is None:
        raise UsageError("--index: the build has no rows to index")
    path = staged / relative_path(split)
    path.parent.mkdir(parents=True, exist_ok=True)
    index.save(str(path))
    rows, hashes = rows_fingerprint(files, hash_column)
    seconds = time.perf_counter() - started
    log.info("indexed %d vectors in %.1f s", rows, seconds)
    from usearch import __version__ as version

    return {
        "library": "usearch",
        "library_version": version,
        "kind": "hnsw",
        "file": relative_path(split),
        **PARAMS,
        "rows": rows,
        "hashes": hashes,
        "build_seconds": round(seconds, 2),
    }


def open_index(folder: Path, record: dict[str, Any], files: list[Path], hash_column: str | None) -> Any:
    """The index RECORD describes, memory-mapped from FOLDER, after checking that it covers
    exactly the rows of FILES; IndexError_ (exit 2) otherwise."""
    usearch = require_usearch()
    path = folder / record["file"]
    if not path.is_file():
        raise IndexError_(f"the card records an index at {record['file']} but there is no such file")
    if hash_column:
        rows, hashes = rows_fingerprint(files, hash_column)
        if (rows, hashes) != (record.get("rows"), record.get("hashes")):
            raise IndexError_(
                f"the index {record['file']} was built for other rows ({record.get('rows')} rows) than the "
                f"dataset holds ({rows}): rebuild it with `hubembed build ... --index`, or search with "
                "--mode exact"
            )
    index = usearch.Index.restore(str(path), view=True)
    if index is None or len(index) != record.get("rows"):
        raise IndexError_(
            f"the index file {record['file']} is not a usearch index of {record.get('rows')} rows"
        )
    index.expansion_search = int(record.get("expansion_search", PARAMS["expansion_search"]))
    return index
