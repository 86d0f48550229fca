"""Compact vectors and the ANN index (issue 14), run by ``python benchmarks/search.py --compact``.

Real model vectors (benchmarks/_real.py: sentences embedded once with the packaged model and
cached); the last QUERIES of them are the queries, the rest the corpus. Beyond the real rows,
the corpus is scaled to ROWS with synthetic rows made from them (``scaled``: mixtures of
neighbouring real vectors by default, ``--corpus copies`` for noisy copies): a model's
distribution, not a uniform sphere, but not real texts either, so recall is reported on the
real rows alone as well, and ``--neighbourhoods`` compares the corpora's neighbourhoods.

Every dataset is made by ``hubembed.build`` (an embedder that replays the vectors) and read by
``hubembed.load``, and every search is ``EmbeddedDataset.search(vector, mode=...)``: what a user
runs. Recall@k is against ``mode="exact"`` on the same dataset. Latency is one query per call
(what ``hubembed search`` does), the median over the queries; the batch column is one call
with all queries.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CORPORA = ("mix", "copies")


def scaled(
    real: np.ndarray, rows: int, *, noise: float = 0.5, seed: int = 0, corpus: str = "mix"
) -> np.ndarray:
    """REAL followed by synthetic rows made from it, ROWS in all, unit length.

    "mix": a mixture of 3 real vectors, an anchor and 2 of its 256 nearest real neighbours,
    with random weights (Dirichlet(2, 2, 2)), unit length, plus Gaussian noise of norm NOISE:
    each row a combination of its own (14,900 x 256 x 256 of them), so rows spread between
    neighbouring real vectors instead of piling up on one.
    "copies": a real vector plus Gaussian noise of norm NOISE (the first construction, kept to
    compare): every real vector gets ~rows/len(REAL) copies around it, so the top 10 of a
    query are mostly copies of one real vector, near-ties that no compact code can order.
    Neither is a real corpus: benchmarks/README.md compares their neighbourhoods with the real rows'.
    """
    if corpus not in CORPORA:
        raise ValueError(f"corpus {corpus!r}: use one of {CORPORA}")
    out = np.empty((rows, real.shape[1]), dtype=np.float32)
    n = min(rows, len(real))
    out[:n] = real[:n]
    rng = np.random.default_rng(seed)
    near = _neighbours(real, min(256, len(real) - 1)) if corpus == "mix" and rows > n else None
    for start in range(n, rows, 65_536):
        block = out[start : start + 65_536]
        anchors = rng.integers(0, len(real), len(block))
        if near is None:
            block[:] = real[anchors]
        else:
            partners = near[anchors[:, None], rng.integers(0, near.shape[1], (len(block), 2))]
            weights = rng.dirichlet(np.full(3, 2.0), len(block)).astype(np.float32)
            block[:] = weights[:, :1] * real[anchors]
            block += weights[:, 1:2] * real[partners[:, 0]] + weights[:, 2:] * real[partners[:, 1]]
            block /= np.linalg.norm(block, axis=1, keepdims=True)
        block += rng.standard_normal(block.shape, dtype=np.float32) * (noise / np.sqrt(real.shape[1]))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _neighbours(real: np.ndarray, k: int) -> np.ndarray:
    """Each real row's K nearest other real rows (exact, by blocks)."""
    out = np.empty((len(real), k), dtype=np.int64)
    for start in range(0, len(real), 2048):
        scores = real[start : start + 2048] @ real.T
        scores[np.arange(len(scores)), np.arange(start, start + len(scores))] = -np.inf
        out[start : start + 2048] = np.argpartition(-scores, k, axis=1)[:, :k]
    return out


def neighbourhoods(corpus: np.ndarray, probes: np.ndarray, skip: np.ndarray | None = None) -> str:
    """The mean cosine of each probe's 1st, 10th and 100th nearest row of CORPUS (unit rows),
    leaving out row SKIP[i] for probe i (a probe taken from the corpus): how close and how
    tied a corpus' neighbourhoods are."""
    ranks = np.empty((len(probes), 100), dtype=np.float32)
    for i in range(0, len(probes), 16):
        s = probes[i : i + 16] @ corpus.T
        if skip is not None:
            s[np.arange(len(s)), skip[i : i + 16]] = -np.inf
        ranks[i : i + 16] = -np.sort(np.partition(-s, 99, axis=1)[:, :100], axis=1)
    first, tenth, hundredth = ranks[:, [0, 9, 99]].mean(0)
    return f"{first:.3f} / {tenth:.3f} / {hundredth:.3f}"


def report_neighbourhoods(base: np.ndarray, queries: np.ndarray, corpora: dict[str, np.ndarray]) -> None:
    """The neighbourhood check of benchmarks/README.md: real rows against synthetic corpora,
    probed by the held-out queries and by 100 of each corpus' own (synthetic) rows."""
    rng = np.random.default_rng(5)
    print("\n| corpus | rows | held-out queries: 1st / 10th / 100th | own rows: 1st / 10th / 100th |")
    print("| --- | ---: | --- | --- |")
    for name, corpus in {"real": base, **corpora}.items():
        first = 0 if name == "real" else len(base) // 2 if len(corpus) == len(base) else len(base)
        skip = rng.choice(np.arange(first, len(corpus)), 100, replace=False)
        print(
            f"| {name} | {len(corpus):,} | {neighbourhoods(corpus, queries)} | "
            f"{neighbourhoods(corpus, corpus[skip], skip)} |"
        )


def build(folder: Path, vectors: np.ndarray, **options: Any) -> float:
    """hubembed.build of VECTORS (one text per row) into FOLDER; the seconds it took."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import hubembed
    from hubembed.embedder import Embedder

    class Replay(Embedder):
        dimension = int(vectors.shape[1])

        def embed_batch(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
            return vectors[[int(t) for t in texts]]

    source = folder.parent / f"{folder.name}-source.parquet"
    if not source.exists():
        pq.write_table(pa.table({"text": [str(i) for i in range(len(vectors))]}), source)
    start = time.perf_counter()
    hubembed.build(
        str(source),
        str(folder),
        embedder_factory=lambda _: (Replay(), {"model": "bench/replay"}),
        batch_size=8192,
        progress=False,
        force=True,
        **options,
    )
    return time.perf_counter() - start


def in_ram(index: Any, queries: np.ndarray, k: int) -> dict[str, float]:
    """The plainest exact search, the float32 matrix in RAM, np.dot and argpartition: a second
    baseline, as fast as exact search gets here for one query."""
    corpus = np.array(index.embeddings.numpy())  # a copy in RAM, not the map

    def top(q: np.ndarray) -> np.ndarray:
        scores = corpus @ q.T
        best = np.argpartition(-scores, k, axis=0)[:k]
        return np.take_along_axis(best, np.argsort(-np.take_along_axis(scores, best, 0), 0), 0)

    top(queries[:1])
    seconds = []
    for q in queries:
        start = time.perf_counter()
        top(q[None])
        seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    top(queries)
    batch = time.perf_counter() - start
    return {"median": statistics.median(seconds), "batch": batch, "recall": 1.0}


def time_modes(index: Any, queries: np.ndarray, k: int, modes: list[str]) -> dict[str, dict[str, float]]:
    """Per mode: median single-query seconds, one batch's seconds, recall@k against exact.

    A mode may name its rescoring and, for ann, the index's ef_search: "binary x100",
    "ann x4 ef256"; a plain name uses hubembed's defaults."""
    out = {"float32 in RAM, numpy": in_ram(index, queries, k)}
    exact: list[list[int]] = []
    for spec in ["exact", *modes]:
        mode, *rest = spec.split()
        opts = {"rescore": int(rest[0][1:])} if rest and rest[0].startswith("x") else {}
        ef = [int(r[2:]) for r in rest if r.startswith("ef")]
        index.search(queries[0], top_k=k, mode=mode, **opts)  # opens scanners, maps files
        if ef:  # the query-time expansion of the opened index (the card's value otherwise)
            index._compact._scanner("ann").expansion_search = ef[0]
        for q in queries:  # warm-up: the pages of the index and vectors these queries visit,
            index.search(q, top_k=k, mode=mode, **opts)  # else the first mode timed pays for them
        seconds, ids = [], []
        for q in queries:
            start = time.perf_counter()
            hits = index.search(q, top_k=k, mode=mode, **opts)
            seconds.append(time.perf_counter() - start)
            ids.append([h["corpus_id"] for h in hits])
        start = time.perf_counter()
        index.search(queries, top_k=k, mode=mode, **opts)
        batch = time.perf_counter() - start
        if mode == "exact":
            exact = ids
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact, strict=True)])
        out[spec] = {"median": statistics.median(seconds), "batch": batch, "recall": float(recall)}
        if ef:
            index._compact._scanner("ann").expansion_search = index.metadata["index"]["expansion_search"]
    return out


def table(results: dict[str, dict[str, float]], held: dict[str, str]) -> list[str]:
    # Speed-ups against the faster of the two exact searches, for one query and for the batch.
    numpy = results["float32 in RAM, numpy"]
    base = min(results["exact"]["median"], numpy["median"])
    base_batch = min(results["exact"]["batch"], numpy["batch"])
    lines = [
        "| mode | median query | speed-up | batch | speed-up | recall@10 | held in RAM |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for mode, r in results.items():
        lines.append(
            f"| {mode} | {r['median'] * 1000:.2f} ms | {base / r['median']:.1f}x | {r['batch']:.3f} s | "
            f"{base_batch / r['batch']:.1f}x | {r['recall']:.4f} | {held.get(mode, '')} |"
        )
    return lines


def run(args: Any) -> None:
    work = Path(tempfile.mkdtemp(prefix="hubembed-compact-"))
    os.environ["HUBEMBED_CACHE"] = str(work / "cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from _real import real_vectors

    import hubembed

    # One thread everywhere when asked (OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1): on a busy
    # 2-core machine a 2-thread BLAS call waits for the other thread's core, and made one
    # float32 query over 20k rows 18 ms instead of 1 ms.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    real, _ = real_vectors(args.real)
    queries, base = real[-args.queries :], real[: -args.queries]
    k = args.top_k
    print(f"# real vectors: {len(real)} sentences embedded with the packaged all-MiniLM-L6-v2")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    if args.compare_libraries:
        compare_libraries(base, queries, args.rows, k)
        return
    if args.neighbourhoods:
        half = base[: len(base) // 2]
        corpora = {}
        for kind in CORPORA:  # as many rows as the real ones, made from half of them
            corpora[f"half the real rows + {kind}"] = scaled(half, len(base), noise=args.noise, corpus=kind)
        for kind in CORPORA:
            corpora[f"real + {kind}"] = scaled(base, args.rows, noise=args.noise, seed=1, corpus=kind)
        report_neighbourhoods(base, queries, corpora)
        return

    # 1. Recall on real rows only, every mode.
    folder = work / "real"
    build(folder, base, quantize="int8,binary", index=True)
    print(f"\n**{len(base)} real rows, {args.queries} held-out real queries, top {k}**\n")
    print("\n".join(table(time_modes(hubembed.load(str(folder)), queries, k, ["ann", "int8", "binary"]), {})))

    # 2. Speed at ROWS (real + synthetic rows), int8 and binary.
    corpus = scaled(base, args.rows, noise=args.noise, corpus=args.corpus)
    folder = work / "scaled"
    seconds = build(folder, corpus, quantize="int8,binary")
    del corpus
    index = hubembed.load(str(folder))
    f32 = args.rows * base.shape[1] * 4
    held = {
        "exact": f"{f32 / 2**20:,.0f} MiB float32 (mapped)",
        "int8": f"{f32 / 4 / 2**20:,.0f} MiB int8 codes (1/4)",
        "binary": f"{f32 / 32 / 2**20:,.0f} MiB sign bits (1/32)",
    }
    print(
        f"\n**{args.rows:,} rows ({len(base)} real + {args.corpus}, noise {args.noise}), built in {seconds:.0f} s**\n"
    )
    print("\n".join(table(time_modes(index, queries, k, ["int8", "binary", *args.binary_modes]), held)))
    del index
    from _real import CACHE

    memory(folder, CACHE / f"real-{args.real}.npy", ["exact", "int8", "binary"])

    # 3. ANN at ANN_ROWS: build time and latency.
    if args.ann_rows:
        corpus = scaled(base, args.ann_rows, noise=args.noise, seed=1, corpus=args.corpus)
        folder = work / "ann"
        seconds = build(folder, corpus, index=True)
        del corpus
        index = hubembed.load(str(folder))
        info = index.metadata["index"]
        print(
            f"\n**ANN: {args.ann_rows:,} rows, usearch HNSW M={info['connectivity']} "
            f"ef_construction={info['expansion_add']} ef_search={info['expansion_search']} {info['dtype']}; "
            f"index built in {info['build_seconds']:.0f} s (whole build {seconds:.0f} s)**\n"
        )
        print("\n".join(table(time_modes(index, queries, k, ["ann", *args.ann_modes]), {})))
        del index

    # 4. What --quantize adds to a build: near-free embedder, so only the writing counts.
    if args.build_rows:
        corpus = scaled(base, args.build_rows, seed=2, corpus=args.corpus)
        plain, compact = [], []
        for _ in range(2):
            plain.append(build(work / "b-plain", corpus))
            compact.append(build(work / "b-compact", corpus, quantize="int8,binary,float16"))
        extra = min(compact) - min(plain)
        per_million = extra / args.build_rows * 1e6
        print(
            f"\n**--quantize int8,binary,float16 on a {args.build_rows:,}-row build with a near-free "
            f"embedder: {min(plain):.1f} s -> {min(compact):.1f} s (+{extra:.1f} s, "
            f"{extra / min(plain):.0%}); {per_million:.1f} s per million rows**"
        )
    print(f"\n# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def compare_libraries(base: np.ndarray, queries: np.ndarray, rows: int, k: int) -> None:
    """The measurements behind the choice of library: scans of ROWS codes (one query, one
    thread) and HNSW over the real rows (build time, latency, recall after rescoring)."""
    import faiss
    from usearch.index import Index, MetricKind, search

    from hubembed.compact import binary_codes, int8_codes

    faiss.omp_set_num_threads(1)
    corpus = scaled(base, rows, seed=3)
    low, high = base.min(0), base.max(0)
    codes = int8_codes(corpus, low, (high - low) / 255)
    bits = binary_codes(corpus)
    q, qbits = queries[:1], binary_codes(queries[:1])
    w = np.rint(q * ((high - low) / 255) * 127 / np.abs(q * ((high - low) / 255)).max()).astype(np.float32)

    def best(call: Any, rounds: int = 5) -> float:
        call()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return min(times)

    flat = faiss.IndexBinaryFlat(bits.shape[1] * 8)
    flat.add(bits)
    words, qwords = bits.view(np.uint64), qbits.view(np.uint64)
    direct = faiss.IndexScalarQuantizer(
        codes.shape[1], faiss.ScalarQuantizer.QT_8bit_direct_signed, faiss.METRIC_INNER_PRODUCT
    )
    faiss.copy_array_to_vector((codes.view(np.uint8) ^ np.uint8(0x80)).reshape(-1), direct.codes)
    direct.ntotal = len(codes)
    ranged = faiss.IndexScalarQuantizer(
        codes.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    ranged.train(base)
    ranged.add(corpus)
    scans = {
        "float32, numpy (the baseline)": lambda: np.argpartition(-(corpus @ q[0]), k)[:k],
        "binary: faiss IndexBinaryFlat": lambda: flat.search(qbits, 4 * k),
        "binary: numpy bitwise_count": lambda: np.argpartition(
            np.bitwise_count(words ^ qwords).sum(1, dtype=np.uint16), 4 * k
        )[: 4 * k],
        "binary: usearch exact Hamming": lambda: search(
            bits, qbits, 4 * k, MetricKind.Hamming, exact=True, threads=1
        ),
        "int8: faiss QT_8bit_direct_signed (chosen)": lambda: direct.search(w, 4 * k),
        "int8: faiss QT_8bit (its own ranges)": lambda: ranged.search(q, 4 * k),
        "int8: usearch exact i8 inner product": lambda: search(
            codes, w.astype(np.int8), 4 * k, MetricKind.IP, exact=True, threads=1
        ),
    }
    print(f"\n**Scans of {rows:,} rows, one query, one thread (best of 5)**\n")
    print("| scan | seconds | vs float32 |\n| --- | ---: | ---: |")
    base_s = None
    for name, call in scans.items():
        s = best(call)
        base_s = base_s or s
        print(f"| {name} | {s * 1000:.1f} ms | {base_s / s:.1f}x |")

    exact = np.argsort(-(queries @ base.T), axis=1)[:, :k]

    def recall_of(keys: list[np.ndarray]) -> float:
        found = [c[np.argsort(-(base[c] @ qq))][:k] for c, qq in zip(keys, queries, strict=True)]
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact, strict=True)]))

    print(
        f"\n**HNSW over the {len(base):,} real rows, M=16, ef_construction=128, ef_search=64, 2 threads to build**\n"
    )
    print("| library | build | file | open | median query | recall@10 (rescored from 40) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    work = Path(tempfile.mkdtemp(prefix="hubembed-hnsw-"))
    start = time.perf_counter()
    u = Index(
        ndim=base.shape[1], metric="ip", dtype="i8", connectivity=16, expansion_add=128, expansion_search=64
    )
    u.add(np.arange(len(base)), base, threads=2)
    built = time.perf_counter() - start
    u.save(str(work / "u.usearch"))
    start = time.perf_counter()
    view = Index.restore(str(work / "u.usearch"), view=True)
    opened = time.perf_counter() - start
    view.expansion_search = 64
    times, keys = [], []
    for qq in queries:
        t0 = time.perf_counter()
        keys.append(np.asarray(view.search(qq, 4 * k, threads=1).keys, dtype=np.int64))
        times.append(time.perf_counter() - t0)
    size = (work / "u.usearch").stat().st_size / 2**20
    print(
        f"| usearch (i8, memory-mapped view) | {built:.1f} s | {size:.0f} MiB | {opened * 1000:.1f} ms | "
        f"{statistics.median(times) * 1000:.2f} ms | {recall_of(keys):.4f} |"
    )
    faiss.omp_set_num_threads(2)
    start = time.perf_counter()
    h = faiss.IndexHNSWFlat(base.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    h.hnsw.efConstruction = 128
    h.add(base)
    built = time.perf_counter() - start
    faiss.write_index(h, str(work / "f.faiss"))
    start = time.perf_counter()
    h = faiss.read_index(str(work / "f.faiss"))
    opened = time.perf_counter() - start
    h.hnsw.efSearch = 64
    faiss.omp_set_num_threads(1)
    times, keys = [], []
    for qq in queries:
        t0 = time.perf_counter()
        keys.append(h.search(qq[None], 4 * k)[1][0])
        times.append(time.perf_counter() - t0)
    size = (work / "f.faiss").stat().st_size / 2**20
    print(
        f"| faiss IndexHNSWFlat (read whole) | {built:.1f} s | {size:.0f} MiB | {opened * 1000:.1f} ms | "
        f"{statistics.median(times) * 1000:.2f} ms | {recall_of(keys):.4f} |"
    )


_MEMORY = """
import sys, numpy as np, hubembed
folder, mode, cache = sys.argv[1], sys.argv[2], sys.argv[3]
queries = np.load(cache)[-100:]
index = hubembed.load(folder)
for q in queries:
    index.search(q, top_k=10, mode=mode)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(mode, status["RssAnon"].split()[0], status["RssFile"].split()[0])
"""


def memory(folder: Path, cache: Path, modes: list[str]) -> None:
    """Each MODE in a fresh process: load FOLDER, answer 100 queries one by one, then report
    the process's anonymous memory (what it holds) and its file-backed resident pages (the
    memory-mapped vectors and index it touched; the kernel can drop them)."""
    import subprocess
    import sys

    print("\n| mode | anonymous RSS | file-backed RSS |\n| --- | ---: | ---: |")
    for mode in modes:
        done = subprocess.run(
            [sys.executable, "-c", _MEMORY, str(folder), mode, str(cache)],
            capture_output=True,
            text=True,
            check=True,
        )
        name, anon, file = done.stdout.split()
        print(f"| {name} | {int(anon) / 1024:,.0f} MiB | {int(file) / 1024:,.0f} MiB |")
