"""Project vectors to 2-D (issue 16): UMAP fitted on a sample, the other rows placed by their
nearest fitted rows.

UMAP (umap-learn) is fitted on at most FIT_ROWS rows, reduced to PCA_DIMS dimensions first,
with the neighbour graph computed here by a blocked matrix product instead of pynndescent:
pynndescent's JIT compile alone took longer than the whole fit (benchmarks/README.md, "Map").
Every other row, and every new row of a refresh, is placed at the similarity-weighted mean of
its PLACE_NEIGHBORS nearest placed rows: deterministic, numpy only, no fitted model to keep
(UMAP's own ``transform`` would need the model pickled next to the data, and a pickle on the
Hub is code run by whoever loads it).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import UsageError
from .vectors import unit_rows

log = logging.getLogger("hubembed")

# A map of fewer than 5 rows shows nothing a list of them would not.
MIN_ROWS = 5
NEIGHBORS = 15  # UMAP's default n_neighbors
# Below this many rows, UMAP's graph of 15 neighbours links nearly every row to every other and
# its layout is noise: the two principal axes show such a set as it is.
UMAP_ROWS = 50
FIT_ROWS = 10_000  # rows UMAP is fitted on; the rest are placed (benchmarks/README.md, "Map")
PCA_DIMS = 50
PLACE_NEIGHBORS = 8
REFERENCE_ROWS = 10_000  # placed rows a new row is compared with (the cost is linear in it)
SEED = 0
_BLOCK = 2048


@dataclass
class Projection:
    """2-D coordinates (n x 2 float32), and how many rows were fitted, placed, or kept from a
    previous map."""

    xy: np.ndarray
    fitted: int
    placed: int
    kept: int = 0
    neighbors: int = NEIGHBORS
    method: str = "umap"  # or "pca", for fewer than UMAP_ROWS rows
    seconds: dict[str, float] = field(default_factory=dict)  # "fit" and "place": where time went


def require_map_extra() -> None:
    """Raise a UsageError naming the extra to install when umap-learn or matplotlib is missing."""
    missing = [name for name in ("umap", "matplotlib") if not _installed(name)]
    if missing:
        raise UsageError(f"a map needs {' and '.join(missing)} (not installed): pip install 'hubembed[map]'")


def _installed(name: str) -> bool:
    import importlib.util

    try:  # found without importing it: umap's import compiles for seconds
        return importlib.util.find_spec(name) is not None
    except ValueError:  # sys.modules[name] is None: its import is blocked
        return False


def check_rows(rows: int, what: str) -> None:
    if rows < MIN_ROWS:
        raise UsageError(
            f"a map needs at least {MIN_ROWS} rows and {what} has {rows}: add rows, or drop --map"
        )


def project(vectors: np.ndarray, *, fit_rows: int = FIT_ROWS, seed: int = SEED) -> Projection:
    """VECTORS (n x d, any float, memory-mapped or not) in 2-D: UMAP on a seeded sample of at
    most FIT_ROWS rows, the others placed by their nearest fitted rows. Deterministic."""
    start_time = time.perf_counter()
    n = len(vectors)
    check_rows(n, "the dataset")
    fitted = (
        np.arange(n) if n <= fit_rows else np.sort(np.random.default_rng(seed).choice(n, fit_rows, False))
    )
    sample = unit_rows(np.asarray(vectors[fitted], dtype=np.float32))
    reduced = _reduce(sample, *_pca(sample))
    xy = np.empty((n, 2), dtype=np.float32)
    if n < UMAP_ROWS:
        return Projection(np.ascontiguousarray(reduced[:, :2]), n, 0, 0, 0, "pca")
    neighbors = NEIGHBORS
    xy[fitted] = _umap(reduced, neighbors, seed)
    fit_done = time.perf_counter()
    rest = np.setdiff1d(np.arange(n), fitted, assume_unique=True)
    # Every fitted row is a reference: the same PCA of the same sample as the fit's.
    xy[rest] = place(vectors, fitted, xy[fitted], rest, reference_rows=len(fitted))
    seconds = {"fit": fit_done - start_time, "place": time.perf_counter() - fit_done}
    log.debug(
        "map: UMAP of %d rows in %.1f s, %d placed in %.1f s",
        len(fitted),
        seconds["fit"],
        len(rest),
        seconds["place"],
    )
    return Projection(xy, len(fitted), len(rest), 0, neighbors, seconds=seconds)


def place(
    vectors: np.ndarray,
    known: np.ndarray,
    known_xy: np.ndarray,
    new: np.ndarray,
    *,
    reference_rows: int = REFERENCE_ROWS,
    seed: int = SEED,
) -> np.ndarray:
    """Coordinates for the rows NEW of VECTORS (n x d, memory-mapped or not) on a map whose
    rows KNOWN sit at KNOWN_XY: each at the similarity-weighted mean of its nearest known rows
    (compared with at most REFERENCE_ROWS of them, a seeded sample). Only the reference rows and
    a block of new rows at a time are read into memory."""
    if len(new) == 0:
        return np.empty((0, 2), dtype=np.float32)
    n = len(known)
    pick = (
        np.arange(n)
        if n <= reference_rows
        else np.sort(np.random.default_rng(seed).choice(n, reference_rows, False))
    )
    reference = unit_rows(np.asarray(vectors[known[pick]], dtype=np.float32))
    mean, basis = _pca(reference)
    reduced = _reduce(reference, mean, basis)
    reference_xy = np.asarray(known_xy)[pick]
    out = np.empty((len(new), 2), dtype=np.float32)
    for start in range(0, len(new), 65_536):
        block = unit_rows(np.asarray(vectors[new[start : start + 65_536]], dtype=np.float32))
        out[start : start + len(block)] = _place(reduced, reference_xy, _reduce(block, mean, basis))
    return out


def _pca(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the top PCA_DIMS principal axes (d x k) of ROWS, from the d x d covariance:
    an eigendecomposition of 384 x 384 instead of an SVD of the rows."""
    mean = rows.mean(axis=0, dtype=np.float64).astype(np.float32)
    centred = rows - mean
    values, vectors = np.linalg.eigh(centred.T.astype(np.float64) @ centred.astype(np.float64))
    dims = min(PCA_DIMS, rows.shape[1])
    return mean, np.ascontiguousarray(vectors[:, ::-1][:, :dims], dtype=np.float32)


def _reduce(rows: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((rows - mean) @ basis, dtype=np.float32)


def _nearest(reference: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each of ROWS' K nearest REFERENCE rows (euclidean), nearest first: indices and distances."""
    k = min(k, len(reference))
    squares = np.einsum("ij,ij->i", reference, reference)
    index = np.empty((len(rows), k), dtype=np.int64)
    distance = np.empty((len(rows), k), dtype=np.float32)
    for a in range(0, len(rows), _BLOCK):
        block = rows[a : a + _BLOCK]
        d2 = squares[None, :] - 2 * (block @ reference.T)
        d2 += np.einsum("ij,ij->i", block, block)[:, None]
        part = (
            np.argpartition(d2, k - 1, axis=1)[:, :k]
            if k < len(reference)
            else np.tile(np.arange(k), (len(block), 1))
        )
        near = np.take_along_axis(d2, part, axis=1)
        order = np.argsort(near, axis=1, kind="stable")
        index[a : a + len(block)] = np.take_along_axis(part, order, axis=1)
        distance[a : a + len(block)] = np.sqrt(np.maximum(np.take_along_axis(near, order, axis=1), 0))
    return index, distance


def _place(reference: np.ndarray, reference_xy: np.ndarray, rows: np.ndarray) -> np.ndarray:
    index, distance = _nearest(reference, rows, PLACE_NEIGHBORS)
    # Weights fall off with distance relative to the nearest: a row close to one known row sits
    # on it, one between two groups is not pulled to the middle by far neighbours.
    scale = np.maximum(distance[:, :1], 1e-6)
    weights = np.exp(-((distance / scale) ** 2 - 1))
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("ik,ikj->ij", weights, reference_xy[index]).astype(np.float32)


def _umap(reduced: np.ndarray, neighbors: int, seed: int) -> np.ndarray:
    import umap

    # Each row is its own first neighbour, as umap's own graph has it.
    index, distance = _nearest(reduced, reduced, neighbors)
    with warnings.catch_warnings():
        # "n_jobs overridden by setting random_state": wanted, a seeded map is reproducible.
        warnings.simplefilter("ignore", UserWarning)
        model = umap.UMAP(
            n_neighbors=neighbors,
            n_components=2,
            init="pca",  # as good here as spectral, without an eigensolve of the graph
            n_epochs=200,  # UMAP's own for large data; it takes 500 below 10,000 rows
            random_state=seed,
            precomputed_knn=(index, distance, None),
            verbose=False,
        )
        xy = model.fit_transform(reduced)
    return np.asarray(xy, dtype=np.float32)
