"""The build's one loop, for every engine: read a block, hash it, reuse what is known, embed
what is missing, checkpoint it, write it.

Three threads share the work so that a fast embedder never waits on I/O: a reader (rows, text
hashes, the null/empty check, chunks), this thread (reuse, embedding, checkpoints) and a writer
(parquet or CSV). Bounded queues between them (hubembed/pipes.py) keep at most a few blocks in
memory whatever the size of the source: nothing here holds all the rows, texts, hashes or
vectors.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .engines import EmbedRun, Engine
from .errors import HubembedError, SourceError, TimeBudgetExceeded
from .output import Output
from .pipes import Consumer, Producer
from .refresh import Checkpoint, ReuseIndex
from .source import EMPTY_SOURCE, RowStream, all_texts_bad, bad_texts, plural, refuse_bad_texts
from .tokens import TruncationCounter
from .vectors import unit_length

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("hubembed")

_HEX = np.array([f"{i:02x}".encode() for i in range(256)], dtype="S2")


@dataclass
class StreamStats:
    """What went through the loop."""

    rows: int = 0  # written
    skipped: int = 0  # null or empty texts left out (skip_empty)
    embedded: int = 0  # texts embedded by this run
    dimension: int = 0
    normalized: bool = True
    truncated: int | None = None  # texts longer than the model reads; None: not counted


@dataclass
class _Block:
    """A block of the source as the loop sees it: the rows to write (the good source rows, or
    their chunks) and what the reader found in the source rows they come from."""

    table: pa.Table  # the rows to write
    texts: pa.ChunkedArray  # what is embedded for each of them
    digests: np.ndarray  # S32 sha256 of each of TEXTS
    bad: np.ndarray  # over the source rows read: null or blank texts
    truncated: int = 0  # of TEXTS, how many the model cuts short


@dataclass
class Chunking:
    """How the reader splits texts (--chunk), or the embedding pools their chunks (--pool)."""

    chunker: Any  # hubembed.chunking.Chunker
    pool: bool = False  # one vector per text, the mean of its chunks'
    normalize: bool = True  # a pooled vector gets unit length again


# The columns a chunked build adds to each row: the chunk's text, its place among its text's
# chunks, its character offsets in that text, and the source row it comes from (0-based).
CHUNK_COLUMNS = ("chunk", "chunk_index", "chunk_start", "chunk_end", "source_row")


def run_stream(
    rows: RowStream,
    *,
    column: str,
    engine: Engine,
    run: EmbedRun,
    reuse: ReuseIndex,
    checkpoint: Checkpoint,
    output: Output,
    skip_empty: bool,
    progress: bool | None = None,
    counter: TruncationCounter | None = None,
    chunking: Chunking | None = None,
) -> StreamStats:
    """Embed column COLUMN of ROWS into OUTPUT, reusing REUSE's vectors, checkpointing the new ones.

    Null or empty texts stop the embedding unless SKIP_EMPTY; the rest of the column is still
    read, to name the first of them and count them all (InvalidTextError). What was embedded
    before is kept in the checkpoints, as on any failure.
    """
    from tqdm.auto import tqdm

    stats = StreamStats(truncated=0 if counter is not None else None)
    refused: list[int] = []  # the first bad rows, 0-based, when they are refused
    refused_count = 0
    seen = 0
    stop = threading.Event()
    counting = threading.Event()  # texts are refused: the reader only finds the bad ones
    split = chunking if chunking is not None and not chunking.pool else None
    reader = Producer(lambda put: _read(rows, column, put, counting, counter, split), stop)
    writer = Consumer(lambda item: output.write(item[0], item[1], hex_digests(item[2])), output.abort, stop)
    bar = tqdm(
        total=rows.count(), unit="row", desc="embedding", disable=None if progress is None else not progress
    )

    def on_wait(seconds: float, reason: str) -> None:
        bar.set_postfix_str(f"waiting {seconds:.0f} s: {reason}", refresh=True)
        log.info("waiting %.0f s: %s", seconds, reason)

    saver = _Saver(checkpoint)
    run.on_wait = on_wait
    try:
        for block in reader.items():
            n = len(block.bad)
            if block.bad.any() and not skip_empty:
                bad_rows = np.flatnonzero(block.bad)
                refused.extend(int(seen + i) for i in bad_rows[: 5 - len(refused)])
                refused_count += len(bad_rows)
            seen += n
            if refused_count:  # from here on only count: nothing more is embedded or written
                counting.set()
                bar.update(n)
                continue
            stats.skipped += int(block.bad.sum())
            if not len(block.digests):
                bar.update(n)
                continue
            progress_left = [n]

            def advance(count: int, left: list[int] = progress_left) -> None:
                # Rows of the source; a chunked build embeds more texts than it reads rows.
                step = min(count, left[0])
                left[0] -= step
                bar.update(step)

            pool = chunking if chunking is not None and chunking.pool else None
            vectors, embedded = _vectors(block, engine, run, reuse, saver, advance, pool)
            if stats.dimension and vectors.shape[1] != stats.dimension:
                raise HubembedError(
                    f"the embedder returned {vectors.shape[1]}-d vectors after {stats.dimension}-d ones"
                )
            stats.dimension = vectors.shape[1]
            stats.normalized &= unit_length(vectors)
            stats.embedded += embedded
            stats.rows += len(vectors)
            if stats.truncated is not None:
                stats.truncated += block.truncated
            writer.put((block.table, vectors, block.digests))
            bar.update(progress_left[0])
            bar.set_postfix_str(
                f"{stats.embedded} embedded, {stats.rows - stats.embedded} reused", refresh=False
            )
        writer.finish()
    except TimeBudgetExceeded as exc:
        raise TimeBudgetExceeded(
            f"{exc.reason}; {saver.texts} texts were embedded and saved: run the same command again to continue",
            reason=exc.reason,
        ) from exc
    finally:
        stop.set()
        bar.close()
        checkpoint.close()
        if not writer.finished:
            writer.abort()
    if refused_count:
        raise refuse_bad_texts(column, refused_count, refused)
    if not seen:
        raise SourceError(EMPTY_SOURCE)
    if not stats.rows:
        raise all_texts_bad(column)
    if stats.skipped:
        log.warning("skipped %s with null or empty %r (--skip-empty)", plural(stats.skipped, "row"), column)
    return stats


def _read(
    rows: RowStream,
    column: str,
    put: Callable[[Any], None],
    counting: threading.Event,
    counter: TruncationCounter | None,
    chunking: Chunking | None,
) -> None:
    """The reader thread: each block's good rows (or, with CHUNKING, their chunks) with sha256
    digests and how many the model will cut short, and the source rows' null/empty mask (once
    COUNTING is set, the mask alone)."""
    sha256 = hashlib.sha256
    offset = 0  # source rows read before this block
    for table in rows.blocks():
        texts = table.column(column)
        bad = bad_texts(texts)
        if counting.is_set():
            put(_Block(table, texts, np.empty(0, "S32"), bad))
            offset += len(bad)
            continue
        if bad.any():
            keep = ~bad
            table, texts = table.filter(keep), texts.filter(keep)
        if chunking is not None:
            table, texts, values = _chunks(
                table, column, texts, chunking.chunker, offset + np.flatnonzero(~bad)
            )
        else:
            values = texts.to_pylist()
        digests = b"".join(sha256(t.encode("utf-8")).digest() for t in values)
        truncated = counter.count(texts) if counter is not None else 0
        put(_Block(table, texts, np.frombuffer(digests, dtype="S32"), bad, truncated))
        offset += len(bad)


def _chunks(
    table: pa.Table, column: str, texts: pa.ChunkedArray, chunker: Any, source_rows: np.ndarray
) -> tuple[pa.Table, pa.ChunkedArray, list[str]]:
    """TABLE with a row per chunk of each text: the row's other columns, then CHUNK_COLUMNS;
    and the chunks' texts, as Arrow and as a list.

    The whole text (COLUMN) is not repeated in each of its chunks' rows: a 5,000-word document
    in 30 chunks would be held and stored 30 times. `source_row` and the offsets point into it.
    """
    import pyarrow as pa

    pieces, owner, index, starts, ends = _split(chunker, texts.to_pylist())
    chunk_texts = pa.array(pieces, pa.string())
    rest = table.drop_columns([column]).take(pa.array(owner))
    # Built from columns, not appended to REST: a table with no columns left takes 0 rows.
    arrays = (chunk_texts, pa.array(index), pa.array(starts), pa.array(ends), pa.array(source_rows[owner]))
    out = pa.table(
        [*rest.columns, *arrays], names=[*rest.column_names, *CHUNK_COLUMNS], metadata=rest.schema.metadata
    )
    return out, pa.chunked_array([chunk_texts]), pieces


def _split(
    chunker: Any, values: list[str]
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The chunks of VALUES: their texts, the value each comes from, its place among that
    value's chunks, and its character offsets in it."""
    spans = chunker.split_many(values)
    counts = np.array([len(s) for s in spans], dtype=np.int64)
    owner = np.repeat(np.arange(len(values)), counts)
    index = (np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)).astype(np.int32)
    starts = np.array([a for s in spans for a, _ in s], dtype=np.int64)
    ends = np.array([b for s in spans for _, b in s], dtype=np.int64)
    pieces = [values[o][a:b] for o, a, b in zip(owner, starts, ends, strict=True)]
    return pieces, owner, index, starts, ends


def _vectors(
    block: _Block,
    engine: Engine,
    run: EmbedRun,
    reuse: ReuseIndex,
    checkpoint: _Saver,
    advance: Callable[[int], Any],
    pool: Chunking | None = None,
) -> tuple[np.ndarray, int]:
    """BLOCK's vectors, reused where REUSE has them, embedded (each distinct text once, longest
    first, checkpointed as each piece finishes) where not; and how many texts were embedded.
    With POOL, a missing text's vector is the mean of its chunks' (_pooled)."""
    import pyarrow.compute as pc

    known = reuse.find(block.digests)
    missing = np.flatnonzero(known < 0)
    vectors: np.ndarray | None = None
    embedded = 0
    if len(missing):
        _, first, inverse = np.unique(block.digests[missing], return_index=True, return_inverse=True)
        todo = missing[first]
        # Like encode's own sort, over the block: texts of a length share a forward pass, so less
        # of it is padding (4-6% on CPU, benchmarks/README.md). Vectors go back by position.
        lengths = pc.utf8_length(block.texts.take(todo)).to_numpy(zero_copy_only=False)
        order = np.argsort(-lengths, kind="stable")
        todo_digests = block.digests[todo[order]]

        started = time.perf_counter()

        def save(start: int, piece: np.ndarray) -> None:
            # What embedding it again would cost: its share of this call's time so far.
            cost = (time.perf_counter() - started) * len(piece) / (start + len(piece))
            checkpoint.save(todo_digests[start : start + len(piece)], piece, cost)
            advance(len(piece))

        run.on_batch = save
        texts = block.texts.take(todo[order]).to_pylist()
        if pool is not None:
            fresh = _pooled(texts, pool, engine, run, advance)
            checkpoint.save(todo_digests, fresh, time.perf_counter() - started)
        else:
            fresh = engine.embed(texts, run)
        embedded = len(texts)
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        vectors = np.empty((len(known), fresh.shape[1]), dtype=np.float32)
        where = rank[inverse.reshape(-1)]
        if len(missing) == len(known):  # nothing reused: gather straight into place
            np.take(fresh, where, axis=0, out=vectors)
        else:
            vectors[missing] = fresh[where]
    hits = np.flatnonzero(known >= 0)
    if len(hits):
        reused = reuse.take(known[hits])
        if vectors is None:
            vectors = np.empty((len(known), reused.shape[1]), dtype=np.float32)
        vectors[hits] = reused
    assert vectors is not None
    return vectors, embedded


def _pooled(
    texts: list[str], pool: Chunking, engine: Engine, run: EmbedRun, advance: Callable[[int], Any]
) -> np.ndarray:
    """One vector per text: the mean of its chunks' vectors (unit length again where the build
    normalises). Saved per block, not per piece: a piece holds parts of texts."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pieces, owner, _, _, _ = _split(pool.chunker, texts)
    counts = np.bincount(owner, minlength=len(texts))
    order = np.argsort(-pc.utf8_length(pa.array(pieces, pa.string())).to_numpy(), kind="stable")
    run.on_batch = lambda start, piece: advance(len(piece))
    vectors = engine.embed([pieces[i] for i in order], run)
    pooled = np.zeros((len(texts), vectors.shape[1]), dtype=np.float64)
    np.add.at(pooled, owner[order], vectors)
    pooled /= np.maximum(counts, 1)[:, None]
    if pool.normalize:
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled.astype(np.float32)


def hex_digests(digests: np.ndarray) -> pa.Array:
    """S32 digests as the hash column's hex strings, without a Python loop."""
    import pyarrow as pa

    raw = np.frombuffer(digests.tobytes(), dtype=np.uint8).reshape(len(digests), 32)
    text = np.ascontiguousarray(_HEX[raw]).view("S64").reshape(-1)
    return pa.array(text, type=pa.binary(64)).cast(pa.string())


class _Saver:
    """Checkpoints each embedded piece that is worth keeping: one whose embedding took longer
    than saving it takes. A model on a CPU or GPU, or a remote API, always is; an embedder as
    fast as the disk is not, and saving its vectors would double the build's writes for
    nothing (benchmarks/README.md, "Pipeline"): after a kill it embeds them again instead."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.seconds_per_byte: float | None = None  # measured on the saves so far
        self.texts = 0  # saved by this run

    def save(self, digests: np.ndarray, vectors: np.ndarray, cost: float) -> None:
        if self.seconds_per_byte is not None and cost < self.seconds_per_byte * vectors.nbytes:
            return
        start = time.perf_counter()
        self.checkpoint.save(digests, vectors)
        self.texts += len(digests)
        rate = (time.perf_counter() - start) / max(vectors.nbytes, 1)
        old = self.seconds_per_byte
        self.seconds_per_byte = rate if old is None else 0.8 * old + 0.2 * rate
