"""A map of an embedded dataset (issue 16): each row's place in 2-D as two columns, ``map_x``
and ``map_y``, and a picture of it, ``map.png``, shown in the card.

Three ways in, one computation (``make_map``): ``hubembed build --map`` maps the staged build
before its one commit; a refresh of a mapped build keeps the old rows' coordinates (matched by
text hash) and places the new rows near their nearest old ones, so the map a reader knows does
not move; ``hubembed map DST`` maps a build already published, through hubembed/augment.py,
in one commit. A chunked build is mapped chunk by chunk: the columns are per row, and a long
document's chunks may well be about different things.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config
from .errors import ColumnError, SourceError
from .projection import Projection, check_rows, place, project, require_map_extra
from .refresh import HASH_COLUMN, ReuseIndex, hash_keys

if TYPE_CHECKING:
    import pyarrow as pa

    from .augment import Added
    from .card import BuildRecord
    from .loader import EmbeddedDataset

log = logging.getLogger("hubembed")

COLUMNS = ("map_x", "map_y")
IMAGE = "map.png"


@dataclass
class Map:
    """Each row's coordinates (``xy``, n x 2), its region of the map and the regions' labels,
    and the picture (PNG bytes)."""

    xy: np.ndarray
    region: np.ndarray
    labels: list[str]
    png: bytes = field(repr=False)
    projection: Projection = field(repr=False)
    #: after a publish: the dataset as published
    index: EmbeddedDataset | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.xy)

    def save(self, path: str | Path) -> Path:
        """Write the picture to PATH (a .png file)."""
        out = Path(path)
        out.write_bytes(self.png)
        return out

    def record(self, fitted_rows: int | None = None) -> dict[str, Any]:
        """What the card records under ``map``."""
        p = self.projection
        return {
            "columns": list(COLUMNS),
            "image": IMAGE,
            "method": p.method,
            "n_neighbors": p.neighbors if p.method == "umap" else None,
            "fitted_rows": fitted_rows if fitted_rows is not None else p.fitted,
            "placed_rows": p.placed,
            "kept_rows": p.kept,
            "regions": self.labels,
        }


def make_map(
    vectors: np.ndarray,
    texts: pa.ChunkedArray | None,
    *,
    title: str,
    kept: tuple[np.ndarray, np.ndarray] | None = None,
) -> Map:
    """The map of VECTORS (n x d), its regions labelled from TEXTS (one per row; None: no
    labels). KEPT, (row numbers, their n x 2 coordinates), keeps those rows where they were and
    places the others near their nearest kept rows; without it, a new map is fitted."""
    from . import mapplot

    require_map_extra()
    n = len(vectors)
    check_rows(n, "the dataset")
    if kept is not None and len(kept[0]):
        rows, old_xy = kept
        new = np.setdiff1d(np.arange(n), rows)
        xy = np.empty((n, 2), dtype=np.float32)
        xy[rows] = old_xy
        xy[new] = place(vectors, rows, old_xy, new)
        projection = Projection(xy, 0, len(new), len(rows))
    else:
        projection = project(vectors)
    xy = projection.xy
    region = mapplot.regions(xy)
    k = int(region.max()) + 1  # 0: no region stands out
    sample = _text_sample(n)
    words = [""] * k
    if texts is not None and k:
        words = mapplot.telling_words(_texts(texts, sample), region[sample], k)
    shown = _texts(texts, np.arange(n)) if texts is not None and n <= mapplot.POINT_LABELS else None
    png = mapplot.draw(xy, shown, title=title, groups=region, labels=words)
    return Map(xy, region, words, png, projection)


def map_index(index: EmbeddedDataset) -> Map:
    """A new map of INDEX's rows (not published): see ``EmbeddedDataset.map``."""
    meta = index.metadata
    if not meta.get("model") or not index.embedding_columns:
        raise SourceError(
            f"{index.ref or 'the dataset'} is not an embedded dataset built by hubembed: "
            "build it with `hubembed build` first"
        )
    column = index.text_column
    texts = index.column(column) if column else None
    return make_map(index._matrix, texts, title=_title(meta))


def publish(dst: str, *, token: str | None = None, device: str = "auto") -> tuple[Map, str]:
    """Map DST's rows anew and add ``map_x``, ``map_y``, ``map.png`` and the card's map
    section to DST in one commit (a Hub repo) or one swap (a folder). Returns the map and the
    commit sha or path. DST is left as it was on any error."""
    from .augment import add_columns

    require_map_extra()
    done: list[Map] = []

    def compute(index: EmbeddedDataset) -> Added:
        drop = _replaceable(index)
        made = map_index(index)
        done.append(made)
        return _added(made, made.record(), drop)

    where = add_columns(
        dst, compute, message="hubembed map: map_x, map_y and map.png", token=token, device=device
    )
    result = done[0]
    if Path(where).is_dir():
        from .loader import load

        result.index = load(where, token=token, device=device)
    return result, where


def map_staged(staged: Path, record: BuildRecord, dst: str, previous: EmbeddedDataset | None) -> None:
    """Add the map to the build staged in STAGED before it is published: its shards rewritten
    with the two columns, the picture beside them, the card's record and section. PREVIOUS, a
    mapped build with the same embedding settings, keeps its rows' coordinates."""
    import pyarrow.parquet as pq

    from .augment import write_added
    from .vectors import matrix, published

    aside = staged / ".hubembed-unmapped"
    (staged / "data").rename(aside)
    files = sorted(aside.glob("*.parquet"))
    present = set(pq.read_schema(files[0]).names)
    clashes = [c for c in COLUMNS if c in present]
    if clashes:
        raise ColumnError(
            f"the source already has {', '.join(map(repr, clashes))}, which --map adds: rename it in "
            "the source, or drop --map"
        )
    check_rows(record.rows, "the build")
    column = "chunk" if "chunk" in present and "source_row" in present else record.source.get("column")
    # The build's own .npy of its vectors (staged beside the shards), mapped: not decoded into memory.
    vectors = published(files, config.EMBEDDING_COLUMN, record.rows)
    if vectors is None:
        vectors = matrix(pq.read_table(files, columns=[config.EMBEDDING_COLUMN]), [config.EMBEDDING_COLUMN])
    texts = pq.read_table(files, columns=[column]).column(column) if column in present else None
    hashes = pq.read_table(files, columns=[HASH_COLUMN]).column(HASH_COLUMN)
    kept = _kept(previous, hashes) if previous is not None else None
    made = make_map(vectors, texts, title=_title(record.to_dict()), kept=kept)
    fitted = None
    if made.projection.kept and previous is not None:  # none kept: a new map was fitted
        before = previous.metadata["map"]
        # The map is still the one fitted then, the new rows placed on it.
        fitted, made.projection.method = before.get("fitted_rows"), before.get("method", "umap")
        made.projection.neighbors = before.get("n_neighbors") or 0
        log.info(
            "map: %d rows kept their place, %d new rows placed", made.projection.kept, made.projection.placed
        )
    record.map = made.record(fitted)
    write_added(staged, files, _added(made, record.map, []), record.to_dict(), record, dst)
    shutil.rmtree(aside)


def _has_map(previous: EmbeddedDataset) -> bool:
    """Whether PREVIOUS carries a map whose coordinates a refresh can keep."""
    names = set(previous._column_names)
    return bool(previous.metadata.get("map")) and {*COLUMNS, HASH_COLUMN} <= names


def _kept(previous: EmbeddedDataset, hashes: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows whose text hash the previous build has, and that build's coordinates of them."""
    if not _has_map(previous):
        return None
    old = previous._columns([HASH_COLUMN, *COLUMNS])
    old_xy = np.column_stack([old.column(c).to_numpy() for c in COLUMNS]).astype(np.float32)
    # Looked up as a refresh looks up vectors: by text hash, the coordinates in place of vectors.
    places = ReuseIndex()
    places.add(hash_keys(old.column(HASH_COLUMN).chunks), old_xy)
    ids = places.find(hash_keys(hashes.chunks))
    found = np.flatnonzero(ids >= 0)
    return found, places.take(ids[found])


def _replaceable(index: EmbeddedDataset) -> list[str]:
    """The map columns a previous map added (replaced); refuses columns of the rows' own."""
    from .augment import replaceable

    ours = (index.metadata.get("map") or {}).get("columns") or []
    return replaceable(index, COLUMNS, ours, ", which the map would overwrite; rename it first")


def _added(made: Map, record: dict[str, Any], drop: list[str]) -> Added:
    import pyarrow as pa

    from .augment import Added

    columns = {name: pa.array(made.xy[:, i], type=pa.float32()) for i, name in enumerate(COLUMNS)}
    return Added(columns=columns, record={"map": record}, drop=drop, files={IMAGE: made.png})


def _text_sample(n: int) -> np.ndarray:
    from .mapplot import TEXT_ROWS

    if n <= TEXT_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, TEXT_ROWS, replace=False))


def _texts(texts: pa.ChunkedArray | None, rows: np.ndarray) -> list[str]:
    import pyarrow as pa

    if texts is None:
        return []
    taken = texts.take(pa.array(rows)) if len(rows) != len(texts) else texts
    return ["" if t is None else str(t) for t in taken.to_pylist()]


def _title(meta: dict[str, Any]) -> str:
    source = (meta.get("source") or {}).get("id") or "the dataset"
    name = (
        str(source)
        if (meta.get("source") or {}).get("kind") == "hub"
        else str(source).rstrip("/").rsplit("/", 1)[-1]
    )
    rows = meta.get("rows")
    count = f", {rows:,} rows" if isinstance(rows, int) else ""
    return f"{name}{count}, embedded by {meta.get('model')}"
