"""An embedding column as one n x d float32 matrix: decoded from Arrow, or memory-mapped from
hubembed's cache of parquet shards already decoded once.

Decoding a parquet vector column costs about as much as the blog's whole CSV path, on every
load. The cache keeps the decoded matrix as a .npy file per dataset location, named by the
shards' identity (path, size, modification time), so a rebuilt folder or a new Hub commit never
reads a stale matrix, and a load after the first maps it in milliseconds. It is mapped
copy-on-write: the tensor is writable and edits stay in the process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import config
from ._pages import Range, plain_ranges
from .errors import ColumnError

log = logging.getLogger("hubembed")

# Rows decoded per step when filling the cache: bounded memory whatever the shard size.
DECODE_ROWS = 2048
# A cached matrix not loaded for this long is removed when another is written.
UNUSED_DAYS = 30


def matrix(table: Any, columns: list[str]) -> np.ndarray:
    """The vectors in COLUMNS of TABLE (one list column, or one column per dimension): n x d float32.

    One chunk of float32 vectors in writable memory comes back as a view of Arrow's buffer,
    not a copy. A memory-mapped file's buffers are read-only: those, several chunks, and other
    number types are copied, a chunk at a time. Raises ColumnError for rows that are not vectors
    of one length.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    if len(columns) > 1:
        out = np.empty((n, len(columns)), dtype=np.float32)
        for j, name in enumerate(columns):
            out[:, j] = table.column(name).to_numpy()
        return out
    name = columns[0]
    column = table.column(name)
    chunks = [c for c in column.chunks if len(c)]
    fixed = pa.types.is_fixed_size_list(column.type)
    if fixed:
        d = column.type.list_size
    elif chunks and (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        d = pc.list_value_length(chunks[0][:1])[0].as_py() or 0
    elif chunks:
        raise ColumnError(f"column {name!r} holds {column.type}, not vectors of numbers")
    else:
        d = 0

    def vectors(chunk: Any) -> np.ndarray:
        if chunk.null_count:
            raise ColumnError(f"column {name!r} has {chunk.null_count} rows without a vector")
        if not fixed:
            lengths = pc.min_max(pc.list_value_length(chunk))
            if (lengths["min"].as_py(), lengths["max"].as_py()) != (d, d):
                raise ColumnError(f"column {name!r} holds vectors of different lengths")
        values = chunk.flatten()
        if values.null_count or not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
            raise ColumnError(f"column {name!r} must hold vectors of numbers, with none missing")
        dtype = np.dtype(values.type.to_pandas_dtype())
        # frombuffer is writable exactly where Arrow's buffer is mutable (not a read-only mmap).
        flat = np.frombuffer(
            values.buffers()[1], dtype=dtype, count=len(values), offset=values.offset * dtype.itemsize
        )
        return flat.reshape(len(chunk), d)

    if len(chunks) == 1:
        view = vectors(chunks[0])
        if view.dtype == np.float32 and view.flags.writeable:
            return view
    out = np.empty((n, d), dtype=np.float32)
    offset = 0
    for chunk in chunks:
        out[offset : offset + len(chunk)] = vectors(chunk)
        offset += len(chunk)
    return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    """X's rows scaled to length 1, with torch.nn.functional.normalize's eps, so an all-zero row
    stays zero as in sentence-transformers."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def unit_length(vectors: np.ndarray) -> bool:
    """Whether every row has length 1, as a card's ``normalized`` records it (to 1e-3)."""
    # einsum: the squared norms without a temporary the size of VECTORS
    squares = np.einsum("ij,ij->i", vectors, vectors)
    return bool(np.allclose(np.sqrt(squares), 1.0, atol=1e-3))


def fingerprint(files: list[Path]) -> str:
    """A short key that changes whenever one of FILES is replaced or rewritten."""
    identity = "\0".join(
        f"{f.resolve()}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}" for f in files for st in [f.stat()]
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def cached_matrix(location: str, files: list[Path], column: str) -> np.ndarray:
    """COLUMN of the parquet FILES (in order) as an n x d float32 matrix, memory-mapped from the
    cache; the first call for these files decodes them into it.

    LOCATION names the dataset (a folder, a repo and split): its older entries are removed when
    a new one is written, so the cache holds one matrix per dataset. Where the cache cannot be
    written (read-only, full), the matrix is decoded into memory instead.
    """
    import pyarrow.parquet as pq

    n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if n == 0:
        return matrix(pq.read_table(files[0], columns=[column]), [column])
    beside = published(files, column, n)
    if beside is not None:
        return beside
    folder = config.cache_dir() / "vectors"
    stem = hashlib.sha256(f"{location}\0{column}".encode()).hexdigest()[:24]
    path = folder / f"{stem}-{fingerprint(files)}.npy"
    if path.is_file():
        try:
            loaded = np.load(path, mmap_mode="c")
            os.utime(path)  # last used now: see _prune
            return loaded
        except (OSError, ValueError) as exc:  # cut short by a crash or a full disk: decode again
            log.debug("ignoring unreadable vector cache %s: %s", path, exc)
    tmp = folder / f".{stem}-{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            _write_npy(out, files, column, n, plain_ranges(files, column))
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        log.warning("cannot cache decoded vectors under %s (%s): decoding into memory", folder, exc)
        return np.concatenate(list(decode_batches(files, column)))
    except BaseException:
        _remove(tmp)
        raise
    _prune(folder, stem, keep=path)
    return np.load(path, mmap_mode="c")


# The build's vectors as one .npy file beside its shards: vectors/{split}.npy.
PUBLISHED_FOLDER = "vectors"


def published_path(files: list[Path]) -> Path | None:
    """Where a build keeps the .npy of the shards FILES (data/{split}-i-of-n.parquet)."""
    import re

    named = re.fullmatch(r"(.+)-\d{5}-of-\d{5}\.parquet", files[0].name) if files else None
    return files[0].parent.parent / PUBLISHED_FOLDER / f"{named.group(1)}.npy" if named else None


def write_published(files: list[Path], column: str, folder: Path) -> Path | None:
    """Write COLUMN of the shards FILES under FOLDER as the .npy that ``published`` maps: the
    vectors' bytes copied from the shards' pages, no decoding. None (and nothing written) for
    shards that do not store the vectors plain. A file already there that holds these shards'
    vectors (a build whose shards were rewritten with columns added) is kept as it is."""
    import pyarrow.parquet as pq

    plain = plain_ranges(files, column)
    path = published_path(files)
    if plain is None or path is None:
        return None
    target = folder / PUBLISHED_FOLDER / path.name
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if target == path and published(files, column, n) is not None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        _write_npy(out, files, column, n, plain)
    return target


def published(files: list[Path], column: str, n: int) -> np.ndarray | None:
    """The build's own .npy of COLUMN beside the shards FILES (N rows), mapped copy-on-write,
    if there is one and it holds these shards' vectors; else None.

    Checked cheaply, not read: its shape, and each shard's first page of vectors against the
    file's rows there. A stale file (a folder edited by hand, a commit that kept an old one)
    fails the check and the vectors come from the shards instead.
    """
    path = published_path(files)
    if path is None or not path.is_file():
        return None
    try:
        loaded = np.load(path, mmap_mode="c")
    except (OSError, ValueError) as exc:
        log.debug("ignoring unreadable %s: %s", path, exc)
        return None
    firsts = plain_ranges(files, column, first_only=True)
    if loaded.dtype != np.float32 or loaded.ndim != 2 or len(loaded) != n or firsts is None:
        return None
    d, ranges = firsts
    if loaded.shape[1] != d or len(ranges) != len(files):
        return None
    import pyarrow.parquet as pq

    row = 0
    for (shard, offset, length), f in zip(ranges, files, strict=True):
        with open(shard, "rb") as fh:
            fh.seek(offset)
            head = fh.read(min(length, d * 4 * 16))
        if loaded[row : row + len(head) // (4 * d)].tobytes() != head[: len(head) // (4 * d) * 4 * d]:
            log.debug("ignoring %s: it does not hold the vectors of %s", path, f.name)
            return None
        row += pq.ParquetFile(f).metadata.num_rows
    return loaded


def _prune(folder: Path, stem: str, keep: Path) -> None:
    """Remove this dataset's older entries, and any entry unused for UNUSED_DAYS (a folder since
    deleted, a repo no longer read)."""
    cutoff = time.time() - UNUSED_DAYS * 86400
    for entry in folder.glob("*.npy"):
        with contextlib.suppress(OSError):  # removed by another process meanwhile
            if entry != keep and (entry.name.startswith(f"{stem}-") or entry.stat().st_mtime < cutoff):
                entry.unlink()


def _remove(path: Path) -> None:
    # Gone already (another process), or never made (no folder): either way, nothing to do.
    with contextlib.suppress(OSError):
        path.unlink()


def decode_batches(files: list[Path], column: str, rows: int = DECODE_ROWS) -> Iterator[np.ndarray]:
    """COLUMN of FILES as float32 matrices of at most ROWS rows each, in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for f in files:
        # Read, not mapped, and a page at a time: a mapped shard counts in the resident set.
        shard = pq.ParquetFile(f, memory_map=False, pre_buffer=False, buffer_size=1 << 20)
        batches = shard.iter_batches(batch_size=rows, columns=[column])
        for batch in batches:
            yield matrix(pa.Table.from_batches([batch]), [column])


def _copy(src: int, dst: int, offset: int, length: int) -> None:
    """LENGTH bytes of SRC from OFFSET appended to DST: in the kernel where it can, so the
    bytes never pass through this process's memory."""
    while length:
        try:
            done = os.copy_file_range(src, dst, length, offset)
        except (AttributeError, OSError):  # not Linux, or across file systems that refuse it
            done = os.write(dst, os.pread(src, min(length, 16 << 20), offset))
        if done == 0:
            raise OSError("a shard ended before its column's last page")
        offset, length = offset + done, length - done


def _write_npy(
    out: BinaryIO, files: list[Path], column: str, n: int, plain: tuple[int, list[Range]] | None
) -> None:
    """Write COLUMN of FILES (N rows) to OUT as one .npy array: the PLAIN byte ranges copied as
    they are where there are some (hubembed/_pages.py), else decoded a batch at a time. Plain
    writes, not a memory map, so a full disk is an OSError rather than a SIGBUS."""
    if plain is not None:
        header = {"descr": "<f4", "fortran_order": False, "shape": (n, plain[0])}
        np.lib.format.write_array_header_1_0(out, header)
        out.flush()
        ranges = plain[1]
        for path, offset, length in ranges:
            with open(path, "rb") as src:
                _copy(src.fileno(), out.fileno(), offset, length)
        return
    d: int | None = None
    rows = 0
    for m in decode_batches(files, column):
        if d is None:
            d = m.shape[1]
            np.lib.format.write_array_header_1_0(
                out, {"descr": "<f4", "fortran_order": False, "shape": (n, d)}
            )
        if m.shape[1] != d:
            raise ColumnError(f"column {column!r} holds vectors of different lengths")
        out.write(np.ascontiguousarray(m).tobytes())
        rows += len(m)
    if rows != n:
        raise OSError(f"read {rows} vectors where the files' metadata says {n}")
