"""The map (issue 16): hubembed's map of N rows against plain ``umap.UMAP().fit_transform``.

    python benchmarks/map.py [--rows 100000] [--dim 384] [--no-peer] [--png map.png]

Seeded vectors shaped like a sentence model's (no downloads): 40 topics of 5 subtopics each,
every row its topic's direction plus its subtopic's plus noise, unit length, so neighbours
share a topic as real texts do; each row's text is 8 words of its topic's vocabulary
(generated words) and 4 common ones, for the labels.

Each path runs in a fresh process, as a CLI run does, timed from before ``import umap``:

- hubembed, cold: numba's cache empty (NUMBA_CACHE_DIR a new folder), as the first map on a
  machine; then warm: the cache as the cold run left it, as every later map. Split into
  import, UMAP fit (sample, PCA, neighbour graph, layout), placement of the other rows, and
  the picture (regions, their words, drawing and the PNG).
- the peer: ``umap.UMAP().fit_transform(vectors)`` on every row (pynndescent's neighbour
  graph, 200 epochs, unseeded so it runs in parallel), with the warm cache.

A measure of quality beside the time: the share of each row's 10 nearest neighbours in 2-D
that are among its 10 nearest in the original space (a sample of 2,000 rows), and the share
of rows whose nearest region centre in 2-D is their own topic's (cluster purity).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOPICS = 40


def corpus(rows: int, dim: int, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((TOPICS, dim)).astype(np.float32)
    subs = rng.standard_normal((TOPICS * 5, dim)).astype(np.float32)
    topic = rng.integers(0, TOPICS, rows)
    sub = topic * 5 + rng.integers(0, 5, rows)
    vectors = centres[topic] + 0.6 * subs[sub] + 1.2 * rng.standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    syllables = ["ka", "mo", "ri", "tu", "len", "sa", "vo", "ne", "pi", "dar", "lo", "mi", "zen", "ta", "ro"]
    words = ["".join(rng.choice(syllables, 3)) for _ in range(TOPICS * 8)]
    common = ["question", "answer", "people", "time", "year", "work", "place", "thing"]
    picks = rng.integers(0, 8, (rows, 8))
    commons = rng.integers(0, len(common), (rows, 4))
    texts = [
        " ".join([*(words[t * 8 + j] for j in picks[i]), *(common[j] for j in commons[i])])
        for i, t in enumerate(topic.tolist())
    ]
    return vectors, texts, topic


def run_hubembed(data: Path, png: str | None) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    import pyarrow as pa
    import umap  # noqa: F401  (its import compiles numba functions: timed)

    from hubembed import mapplot
    from hubembed.maps import _text_sample, _texts
    from hubembed.projection import project

    imported = time.perf_counter()
    vectors = np.load(data / "vectors.npy")
    texts = pa.chunked_array([pa.array(json.loads((data / "texts.json").read_text()))])
    loaded = time.perf_counter()
    projection = project(vectors)
    projected = time.perf_counter()
    region = mapplot.regions(projection.xy)
    k = int(region.max()) + 1
    sample = _text_sample(len(vectors))
    labels = mapplot.telling_words(_texts(texts, sample), region[sample], k)
    picture = mapplot.draw(projection.xy, None, title="benchmark", groups=region, labels=labels)
    drawn, cpu_done = time.perf_counter(), time.process_time()
    if png:
        Path(png).write_bytes(picture)
    np.save(data / "hubembed_xy.npy", projection.xy)
    return {
        "import": imported - start,
        "fit": projection.seconds["fit"],
        "place": projection.seconds["place"],
        "picture": drawn - projected,
        "total": drawn - start - (loaded - imported),
        "cpu": cpu_done - cpu,  # the data's loading included (under a second)
        "labels": labels,
    }


def run_peer(data: Path) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    import umap

    imported = time.perf_counter()
    vectors = np.load(data / "vectors.npy")
    loaded = time.perf_counter()
    xy = umap.UMAP().fit_transform(vectors)
    done, cpu_done = time.perf_counter(), time.process_time()
    np.save(data / "peer_xy.npy", xy)
    total = done - start - (loaded - imported)
    return {"import": imported - start, "fit": done - loaded, "total": total, "cpu": cpu_done - cpu}


def quality(vectors: np.ndarray, xy: np.ndarray, topic: np.ndarray) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    rows = rng.choice(len(vectors), 2000, replace=False)
    xy = np.asarray(xy, dtype=np.float32)
    kept = []
    for row in rows.tolist():
        high = vectors @ vectors[row]
        low = ((xy - xy[row]) ** 2).sum(1)
        a = set(np.argpartition(-high, 11)[:11].tolist()) - {row}
        b = set(np.argpartition(low, 11)[:11].tolist()) - {row}
        kept.append(len(a & b) / 10)
    centres = np.stack([xy[topic == t].mean(0) for t in range(TOPICS)])
    nearest = ((xy[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    return float(np.mean(kept)), float((nearest == topic).mean())


def child(kind: str, data: Path, cache: Path, png: str | None, timeout: float) -> dict | None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    code = [sys.executable, __file__, "--child", kind, "--data", str(data), *(["--png", png] if png else [])]
    try:
        out = subprocess.run(code, env=env, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--png", help="save hubembed's picture here")
    parser.add_argument("--peer-timeout", type=float, default=900)
    parser.add_argument("--child")
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.child:
        result = run_hubembed(args.data, args.png) if args.child == "hubembed" else run_peer(args.data)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="hubembed-map-bench-") as tmp:
        data = Path(tmp)
        vectors, texts, topic = corpus(args.rows, args.dim)
        np.save(data / "vectors.npy", vectors)
        (data / "texts.json").write_text(json.dumps(texts))
        cache = data / "numba_cache"
        cold = child("hubembed", data, cache, None, 900)
        warm = child("hubembed", data, cache, args.png, 900)
        assert cold and warm
        ours = quality(vectors, np.load(data / "hubembed_xy.npy"), topic)
        peer = None if args.no_peer else child("peer", data, cache, None, args.peer_timeout)
        peer_quality = quality(vectors, np.load(data / "peer_xy.npy"), topic) if peer else None
    print(
        f"{args.rows:,} rows x {args.dim}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end\n"
    )
    print(
        "| path | import | fit | placement | picture | total | CPU time | vs peer | 10-NN kept | topic purity |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = peer["total"] if peer else None
    for name, r in (("hubembed, cold numba cache", cold), ("hubembed, warm numba cache", warm)):
        ratio = f"{base / r['total']:.1f}x faster" if base else ""
        print(
            f"| {name} | {r['import']:.1f} s | {r['fit']:.1f} s | {r['place']:.1f} s | {r['picture']:.1f} s "
            f"| {r['total']:.1f} s | {r['cpu']:.1f} s | {ratio} | {ours[0]:.2f} | {ours[1]:.3f} |"
        )
    if peer and peer_quality:
        print(
            f"| umap.UMAP().fit_transform, all rows | {peer['import']:.1f} s | {peer['fit']:.1f} s | | "
            f"| {peer['total']:.1f} s | {peer['cpu']:.1f} s | 1.0x | {peer_quality[0]:.2f} | {peer_quality[1]:.3f} |"
        )
    elif not args.no_peer:
        print(
            f"| umap.UMAP().fit_transform, all rows | did not finish in {args.peer_timeout:.0f} s | | | | | | | |"
        )
    print("\nregion labels:", "; ".join(warm["labels"]))


if __name__ == "__main__":
    main()
