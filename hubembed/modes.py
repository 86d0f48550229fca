"""Search modes beyond exact: candidates from a compact copy of the vectors or the ANN index,
rescored in float32.

    exact   every float32 vector (EmbeddedDataset's own search)
    ann     the HNSW index published with the rows (--index)
    int8    the int8 copy (--quantize int8), scored against the float query
    binary  the sign bits (--quantize binary), by Hamming distance to the query's sign bits

The last three take the best ``rescore x top_k`` candidates and score them again against the
float32 vectors, read from the memory-mapped vector cache: only those rows are touched. What
stays in memory is the compact copy itself (binary: 1/32 of the float32 vectors; int8: 1/4)
or, for ann, the index's memory map.

faiss does the scans: its IndexBinaryFlat counts bits with popcount (22.6x a float32 scan with
numpy for one query at 1M rows, where numpy's bitwise_count was 1.8x and usearch's exact
Hamming slower than float32), and its 8-bit scalar quantizer decodes exactly the buckets the
card records (benchmarks/README.md, "Compact vectors and indexes").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import UsageError

if TYPE_CHECKING:
    from .loader import EmbeddedDataset

MODES = ("exact", "ann", "int8", "binary")
# Candidates per hit, by mode: the fewest that kept recall@10 against exact search above 0.95
# on real model vectors (benchmarks/README.md, "Compact vectors and indexes"). Sign bits rank
# coarsely: 4 (sentence-transformers' demo) gave 0.87 there, 10 gave 0.96, 16 0.98.
DEFAULT_RESCORE = {"ann": 4, "int8": 4, "binary": 16}


def check_mode(mode: str | None, rescore: int | None) -> None:
    """Refuse an unknown MODE or a RESCORE below 1 (UsageError), before anything loads."""
    if mode is not None and mode not in MODES:
        raise UsageError(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}")
    if rescore is not None and rescore < 1:
        raise UsageError(f"--rescore must be at least 1 (got {rescore}): it is how many candidates per hit")


def available(meta: dict[str, Any]) -> list[str]:
    """The modes a dataset with card META can be searched in, best first."""
    kinds = (meta.get("quantization") or {}).get("kinds") or []
    found = ["ann"] if meta.get("index") else []
    # Binary before int8: 32x less to scan than float32, int8 4x (benchmarks/README.md).
    found += [k for k in ("binary", "int8") if k in kinds]
    return [*found, "exact"]


def require(meta: dict[str, Any], mode: str, ref: str | None) -> None:
    if mode not in available(meta):
        how = "--index" if mode == "ann" else f"--quantize {mode}"
        raise UsageError(
            f"{ref or 'this dataset'} has no {'index' if mode == 'ann' else mode + ' vectors'} for --mode {mode}: "
            f"build it with `hubembed build ... {how}`, or use --mode {' or '.join(available(meta))}"
        )


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise UsageError("int8 and binary search need faiss: pip install 'hubembed[search]'") from exc
    return faiss


@contextlib.contextmanager
def _threads(queries: int) -> Iterator[None]:
    """One thread for a few queries: waking OpenMP's threads cost a single binary scan 290 ms on
    a busy 2-core machine where the scan alone takes 2 ms."""
    if queries >= 8:
        yield
        return
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class CompactSearch:
    """Candidates and rescoring for one loaded dataset; its scanners are made on first use."""

    def __init__(self, dataset: EmbeddedDataset) -> None:
        self.ds = dataset
        self._scanners: dict[str, Any] = {}

    def top_k(self, vectors: np.ndarray, top_k: int, mode: str, rescore: int) -> list[list[dict[str, Any]]]:
        """The top_k rows of each of VECTORS (unit length), found in MODE, rescored in float32."""
        queries = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, vectors.shape[-1]))
        corpus = self.ds._matrix
        wanted = min(len(corpus), max(top_k, rescore * top_k))
        ids = self._candidates(queries, wanted, mode)
        out = []
        for q, row_ids in zip(queries, ids, strict=True):
            row_ids = np.unique(row_ids[(row_ids >= 0) & (row_ids < len(corpus))])
            scores = np.asarray(corpus[row_ids], dtype=np.float32) @ q
            order = np.argsort(-scores, kind="stable")[:top_k]
            out.append([{"corpus_id": int(row_ids[i]), "score": float(scores[i])} for i in order])
        return out

    def _candidates(self, queries: np.ndarray, n: int, mode: str) -> np.ndarray:
        if mode == "ann":
            index = self._scanner("ann")
            found = index.search(queries, n, threads=1 if len(queries) < 8 else 0)
            keys = np.asarray(found.keys, dtype=np.int64).reshape(len(queries), -1)
            # One query gives Matches (a count), several BatchMatches (counts); past the count
            # a row's keys are padding.
            counts = np.atleast_1d(getattr(found, "counts", len(found)))
            for i, c in enumerate(counts):
                keys[i, int(c) :] = -1
            return keys
        scanner = self._scanner(mode)
        with _threads(len(queries)):
            if mode == "binary":
                from .compact import binary_codes

                _, ids = scanner.search(binary_codes(queries), n)
            else:
                from .compact import query_int8

                weights, _ = query_int8(queries, self.ds.metadata["quantization"]["int8_ranges"])
                # faiss rounds the query to whole numbers too (an int8 x int8 dot product, hence
                # its speed): scaled to fill -127..127, which leaves the ranking as it was.
                weights *= 127 / np.maximum(np.abs(weights).max(axis=1, keepdims=True), 1e-30)
                _, ids = scanner.search(np.ascontiguousarray(np.rint(weights)), n)
        return np.asarray(ids, dtype=np.int64)

    def _scanner(self, mode: str) -> Any:
        if mode not in self._scanners:
            import pyarrow as pa

            self._scanners[mode] = self._open(mode)
            # The column was read through Arrow and copied into faiss: hand Arrow's freed
            # pages back now, or the process keeps them resident (~2-5x the codes' size).
            pa.default_memory_pool().release_unused()
        return self._scanners[mode]

    def _open(self, mode: str) -> Any:
        meta = self.ds.metadata
        if mode == "ann":
            from .ann import open_index

            files = self.ds.shard_files or []
            if not files:
                raise UsageError("--mode ann needs a dataset loaded from its folder or Hub repo")
            return open_index(files[0].parent.parent, meta["index"], files, meta.get("hash_column"))
        faiss = _faiss()
        quantization = meta["quantization"]
        codes = self.ds.column_matrix(quantization["columns"][mode])
        d = int(meta.get("dimension") or self.ds._matrix.shape[1])
        if mode == "binary":
            index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
            index.add(np.ascontiguousarray(codes, dtype=np.uint8))
            return index
        # The codes as they are, scored against the query's per-dimension weights (query_int8):
        # "direct signed" reads byte b as b - 128 with no per-dimension decoding, 2.5x faster
        # than faiss' own 8-bit ranges (QT_8bit) over 1M rows, the same ranking.
        index = faiss.IndexScalarQuantizer(
            d, faiss.ScalarQuantizer.QT_8bit_direct_signed, faiss.METRIC_INNER_PRODUCT
        )
        shifted = (np.ascontiguousarray(codes).view(np.uint8) ^ np.uint8(0x80)).reshape(-1)
        faiss.copy_array_to_vector(shifted, index.codes)
        index.ntotal = len(codes)
        return index
