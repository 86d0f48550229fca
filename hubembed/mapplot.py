"""The map's picture (issue 16): the rows as small translucent points, grouped into regions of
the map, each region labelled by its most telling words (class-based TF-IDF over its texts, as
BERTopic labels topics). A map of a few rows labels each point with its own text instead.

matplotlib's object API with the Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

# Up to this many rows, each point is labelled with its text; above, regions are.
POINT_LABELS = 30
MAX_REGIONS = 24
REGION_SAMPLE = 10_000  # rows clustered into regions; the others take their nearest one's
WORDS = 3  # words per region's label
TEXT_ROWS = 20_000  # texts read per map to find the words (a seeded sample)
SIZE_PX = 1400
_DPI = 140


def regions(xy: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Each row's region of the map, -1 for rows in none: HDBSCAN over the 2-D coordinates of a
    seeded sample (groups a reader sees as islands, however many; k-means' fixed number of
    regions joined distant islands under one label), every row then taking its nearest sampled
    row's region. At most MAX_REGIONS regions are kept, the largest."""
    from sklearn.cluster import HDBSCAN
    from sklearn.neighbors import NearestNeighbors

    n = len(xy)
    pick = (
        np.arange(n)
        if n <= REGION_SAMPLE
        else np.sort(np.random.default_rng(seed).choice(n, REGION_SAMPLE, False))
    )
    sample = xy[pick]
    # A region is at least 2% of the rows: islands, not the specks inside them.
    smallest = max(5, len(sample) // 50)
    found = HDBSCAN(min_cluster_size=smallest, min_samples=min(10, len(sample) - 1), copy=True).fit_predict(
        sample
    )
    sizes = np.bincount(found[found >= 0]) if (found >= 0).any() else np.zeros(0, np.int64)
    keep = np.argsort(-sizes, kind="stable")[:MAX_REGIONS]
    renumber = np.full(len(sizes) + 1, -1, dtype=np.int64)
    renumber[keep] = np.arange(len(keep))
    found = renumber[found]  # -1 stays -1 (renumber[-1] is -1)
    if n == len(sample):
        return found
    nearest = NearestNeighbors(n_neighbors=1).fit(sample).kneighbors(xy, return_distance=False)[:, 0]
    return found[nearest]


def telling_words(texts: Sequence[str], groups: np.ndarray, k: int, words: int = WORDS) -> list[str]:
    """For each of K groups, its WORDS most telling words joined by " · ": class-based TF-IDF,
    a word's frequency in the group's texts against its frequency over all groups. "" for a
    group with no words."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(
        stop_words="english", token_pattern=r"(?u)\b[^\W\d_]{3,}\b", max_features=50_000
    )
    try:
        counts = vectorizer.fit_transform(texts)
    except ValueError:  # only stop words, or no words at all
        return [""] * k
    vocabulary = vectorizer.get_feature_names_out()
    per_group = np.zeros((k, counts.shape[1]), dtype=np.float64)
    for g in range(k):
        rows = np.flatnonzero(groups == g)
        if len(rows):
            per_group[g] = np.asarray(counts[rows].sum(axis=0)).ravel()
    frequency = per_group / np.maximum(per_group.sum(axis=1, keepdims=True), 1)
    average = per_group.sum() / k
    idf = np.log1p(average / np.maximum(per_group.sum(axis=0), 1))
    score = frequency * idf
    labels = []
    for g in range(k):
        top = [i for i in np.argsort(-score[g], kind="stable")[:words] if score[g, i] > 0]
        labels.append(" · ".join(vocabulary[i] for i in top))
    return labels


def draw(
    xy: np.ndarray, texts: Sequence[str] | None, *, title: str, groups: np.ndarray, labels: list[str]
) -> bytes:
    """The map as PNG bytes: XY's points coloured by GROUPS, each group's label at its centre
    (or, up to POINT_LABELS rows, each point's own text)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(xy)
    figure = Figure(figsize=(SIZE_PX / _DPI, SIZE_PX / _DPI), dpi=_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.02, 0.02, 0.96, 0.92))
    axes.set_axis_off()
    # Point area and opacity fall with the number of rows: 100k points of 2 pt^2 at alpha 0.5
    # show where rows are dense without merging into one blob.
    size = float(np.clip(200_000 / n, 1.0, 40))
    alpha = float(np.clip(50_000 / n, 0.5, 0.9))
    k = int(groups.max()) + 1 if n else 0
    palette = np.vstack([_palette(k), [[0.6, 0.6, 0.6, 1.0]]])  # the last: rows in no region
    order = np.random.default_rng(0).permutation(n)  # no region painted over all others
    axes.scatter(
        xy[order, 0],
        xy[order, 1],
        s=size,
        c=palette[groups[order]],
        alpha=alpha,
        linewidths=0,
        rasterized=True,
    )
    box = {"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "#888888", "alpha": 0.85}
    if texts is not None and n <= POINT_LABELS:
        for (x, y), text, (dx, dy), side in zip(
            xy.tolist(), texts, _label_offsets(xy), _sides(xy), strict=True
        ):
            axes.annotate(
                _short(text, 48),
                (x, y),
                xytext=(dx if side == "left" else -dx, dy),
                textcoords="offset points",
                ha=side,
                va="center",
                fontsize=8,
                color="#222222",
                # A text moved off its point (to clear another) keeps a line to it.
                arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.5} if dy else None,
            )
    else:
        texts_placed = []
        for g, label in enumerate(labels):  # regions are numbered largest first
            members = xy[groups == g]
            if label and len(members):
                x, y = _centre(members)
                texts_placed.append(
                    axes.text(
                        x, y, label, fontsize=9, ha="center", va="center", color="#111111", bbox=box, zorder=3
                    )
                )
        axes.margins(0.08)
        axes.autoscale_view()
        _separate(figure, texts_placed)
    axes.margins(0.08)
    figure.suptitle(title, fontsize=12, y=0.985)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=_DPI)
    return out.getvalue()


def _separate(figure: Any, texts: list[Any]) -> None:
    """Move each label off the larger regions' labels it would cover: up or down by a line at a
    time, a few lines at most; one that still covers another is left out (unreadable anyway)."""
    figure.canvas.draw()  # the axes' final limits, which the labels' boxes depend on
    renderer = figure.canvas.get_renderer()
    taken: list[Any] = []
    for text in texts:
        x, y = text.get_position()
        box = text.get_window_extent(renderer).expanded(1.0, 1.15)
        step = box.height
        to_data = text.axes.transData.inverted()
        for shift in (0, -1, 1, -2, 2, -3, 3):
            moved = box.translated(0, shift * step)
            if not any(moved.overlaps(other) for other in taken):
                if shift:
                    y_new = to_data.transform((0, text.axes.transData.transform((x, y))[1] + shift * step))[1]
                    text.set_position((x, y_new))
                taken.append(moved)
                break
        else:
            text.set_visible(False)


def _centre(members: np.ndarray) -> tuple[float, float]:
    """Where a region's label goes: on the member with most members near it, so the label sits
    on the region's points (a mean or median can fall between a region's arms)."""
    sample = members[:: max(1, len(members) // 500)]
    spread = np.ptp(members, axis=0).max() / 10 or 1.0
    close = (((sample[:, None, :] - sample[None, :, :]) ** 2).sum(-1) < spread**2).sum(1)
    x, y = sample[int(np.argmax(close))]
    return float(x), float(y)


def _sides(xy: np.ndarray) -> list[str]:
    """Which way each point's text runs: away from the nearer side, so none leaves the picture."""
    middle = float(xy[:, 0].min() + xy[:, 0].max()) / 2
    return ["left" if x <= middle else "right" for x in xy[:, 0].tolist()]


def _label_offsets(xy: np.ndarray) -> list[tuple[float, float]]:
    """Offsets in points for each point's text: a text that would sit on one already placed (a
    near-identical row) is moved down a line."""
    span = np.maximum(np.ptp(xy, axis=0), 1e-9)
    unit = (xy - xy.min(axis=0)) / span  # 0..1 across the picture
    line = 0.018  # one line of 8-point text, as a fraction of the points' height on the picture
    sides = _sides(xy)
    placed: list[tuple[float, float, str]] = []
    out = []
    for (x, y), side in zip(unit.tolist(), sides, strict=True):
        shift = 0.0
        while any(abs(x - px) < 0.25 and abs(y - shift - py) < line and s == side for px, py, s in placed):
            shift += line
        placed.append((x, y - shift, side))
        out.append((5.0, -shift / line * 10.0))
    return out


def _palette(k: int) -> np.ndarray:
    from matplotlib import colormaps

    # tab20's strong shades first, then its light ones: neighbouring regions stay distinct.
    colours = colormaps["tab20"](np.arange(20))
    picked = [colours[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20] for i in range(k)]
    return np.array(picked, dtype=np.float64).reshape(-1, 4)


def _short(text: str, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1].rstrip() + "…"
