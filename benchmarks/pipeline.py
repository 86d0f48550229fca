"""The build pipeline alone: time and memory against the number of rows, with a near-free embedder.

    python benchmarks/pipeline.py [--rows 250000,1000000] [--rounds 1] [--work DIR]
                                  [--paths hubembed,peer] [--timeout 3600] [--src DIR]
    python benchmarks/pipeline.py --rows 250000,1000000,4000000

With an embedder that costs almost nothing (``NullEmbedder``: 384-d unit vectors copied from
a small seeded pool, no per-text work), what is left is the pipeline: reading the source,
hashing the texts, gathering the vectors, writing parquet. Two paths over the same corpus
(N distinct short texts, columns ``id`` and ``text``, written once under ``--work`` and reused):

- ``hubembed``: ``hubembed.build`` of the parquet file into a new local folder;
- ``peer``, the plain way: ``datasets.load_dataset("parquet")``, then ``.map(batched=True)``
  adding ``embedding`` (the same NullEmbedder) and ``text_sha256`` (what hubembed stores too),
  then ``.to_parquet``.

Each (path, N) runs in a fresh subprocess (this script with ``--child``), with fresh datasets
and hubembed caches, so its peak memory is its own. The child reports its wall time (imports
included, and the imports alone), peak RSS (VmHWM: file-backed pages too, such as the
memory-mapped Arrow files of ``datasets``) and peak anonymous memory (RssAnon, sampled every
20 ms: the heap, what a run really needs). Paths alternate within each round; the table keeps
each one's best time and highest memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DIM = 384
BATCH = 8192  # texts per embedder call, on both paths
PATHS = ("hubembed", "peer")
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# The parent: corpus, children, table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="250000,1000000", help="comma-separated row counts")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/hubembed-bench-pipeline"),
        help="kept between runs: the corpora are generated once",
    )
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument(
        "--src",
        type=Path,
        default=ROOT,
        help="the folder holding the hubembed package to time (default: this checkout); e.g. "
        "`git archive <commit> hubembed | tar -x -C DIR` to time a commit while the tree is edited",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per child")
    parser.add_argument(
        "--always-checkpoint",
        action="store_true",
        help="hubembed saves every embedded batch to its checkpoints, as it does for a real model; by "
        "default it skips those that embed faster than they save, as it does for this embedder",
    )
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.always_checkpoint:
        os.environ["BENCH_ALWAYS_CHECKPOINT"] = "1"  # read by the children

    sys.path.insert(0, str(args.src.resolve()))  # before ROOT and the editable install
    if args.child:
        child(args.child, int(args.rows), args.work, args.run_dir)
        return
    sizes = sorted({int(n.replace("_", "")) for n in args.rows.split(",")})
    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown path(s) {', '.join(sorted(unknown))}; use {', '.join(PATHS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    for n in sizes:
        corpus_path(args.work, n)  # generated before any timing

    results: dict[tuple[str, int], list[dict[str, Any]]] = {(p, n): [] for p in paths for n in sizes}
    load_before = os.getloadavg()
    for n in sizes:
        for r in range(args.rounds):
            for path in paths:
                run_dir = args.work / "runs" / f"{path}-{n}-r{r}"
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir(parents=True)
                try:
                    out = spawn(path, n, args.work, run_dir, args.src, args.timeout)
                finally:
                    shutil.rmtree(run_dir, ignore_errors=True)  # gigabytes of shards per run
                results[(path, n)].append(out)
                status = f"{out['seconds']:.1f} s" if "error" not in out else f"FAILED: {out['error']}"
                print(f"# round {r + 1}: {path} {n:,} rows: {status}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    report(results, paths, sizes, args.rounds, args.src, load_before, load_after)


def spawn(path: str, rows: int, work: Path, run_dir: Path, src: Path, timeout: float) -> dict[str, Any]:
    """Run one (path, rows) in a fresh interpreter; its last stdout line is its JSON result."""
    cmd = [sys.executable, __file__, "--child", path, "--rows", str(rows), "--work", str(work)]
    cmd += ["--run-dir", str(run_dir), "--src", str(src)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return dict(json.loads(lines[-1]))


def report(
    results: dict[tuple[str, int], list[dict[str, Any]]],
    paths: list[str],
    sizes: list[int],
    rounds: int,
    src: Path,
    load_before: tuple[float, ...],
    load_after: tuple[float, ...],
) -> None:
    ok = {key: [r for r in runs if "error" not in r] for key, runs in results.items()}
    versions = next((runs[0]["versions"] for runs in ok.values() if runs), {})
    where = next((runs[0]["hubembed_file"] for runs in ok.values() if runs), "?")
    if src.resolve() == ROOT:
        describe = ["git", "describe", "--always", "--dirty", "--exclude", "*"]
        where += " at " + subprocess.run(describe, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"# NullEmbedder ({DIM}-d, {BATCH} texts per call); hubembed from {where}")
    print(
        f"# {cpu_model()}, {os.cpu_count()} CPUs; python {platform.python_version()}; "
        + "; ".join(f"{name} {v}" for name, v in versions.items())
    )
    print(
        f"# load average {' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after; best of {rounds} round(s), highest memory"
    )
    print()
    columns = ("path", "rows", "seconds", "of which imports", "rows/s", "peak RSS MiB", "peak anon MiB")
    print("| " + " | ".join((*columns, "rate vs peer")) + " |")
    print("| --- |" + " ---: |" * len(columns))
    summary: dict[tuple[str, int], dict[str, float]] = {}
    for n in sizes:
        for path in paths:
            runs = ok[(path, n)]
            if not runs:
                print(f"| {path} | {n:,} | {results[(path, n)][-1]['error']} | | | | | |")
                continue
            summary[(path, n)] = {
                "seconds": min(r["seconds"] for r in runs),
                "imports": statistics.median(r["import_seconds"] for r in runs),
                "rss": max(r["peak_rss"] for r in runs) / MIB,
                "anon": max(r["peak_anon"] for r in runs) / MIB,
            }
        peer = summary.get(("peer", n))
        for path in paths:
            s = summary.get((path, n))
            if s is None:
                continue
            ratio = f"{peer['seconds'] / s['seconds']:.2f}x" if peer else ""
            print(
                f"| {path} | {n:,} | {s['seconds']:.1f} | {s['imports']:.1f} | {n / s['seconds']:,.0f} "
                f"| {s['rss']:,.0f} | {s['anon']:,.0f} | {ratio} |"
            )
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        print()
        for path in paths:
            a, b = summary.get((path, lo)), summary.get((path, hi))
            if a and b:
                per_m = 1e6 / (hi - lo)  # from MiB to MiB per million extra rows
                print(
                    f"- {path}, {lo:,} -> {hi:,} rows: peak RSS {b['rss'] - a['rss']:+,.0f} MiB "
                    f"({(b['rss'] - a['rss']) * per_m:,.0f} MiB per 1M rows), peak anon "
                    f"{b['anon'] - a['anon']:+,.0f} MiB ({(b['anon'] - a['anon']) * per_m:,.0f} MiB per 1M rows)"
                )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def corpus_path(work: Path, rows: int, seed: int = 0) -> Path:
    """The N-row corpus as parquet under WORK, generated on first use and kept.

    Texts are "question {i} about" plus a tail drawn from a seeded pool of phrases built
    from benchmarks/embed.py's vocabulary: 5-21 words (median 10), distinct by their number.
    Built with Arrow's vectorised string functions, so 4M rows take seconds, not minutes.
    """
    path = work / f"corpus-{rows}-s{seed}.parquet"
    if path.exists():
        return path
    import random

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from embed import ADJECTIVES, OBJECTS, PLACES, SUBJECTS, TIMES, VERBS

    rng = random.Random(seed)
    pool = []
    for _ in range(4096):
        parts = [rng.choice(ADJECTIVES), rng.choice(OBJECTS)]
        if rng.random() < 0.5:
            parts += ["that", rng.choice(SUBJECTS), rng.choice(VERBS)]
        parts += [rng.choice(PLACES)] if rng.random() < 0.6 else []
        parts += [rng.choice(TIMES)] if rng.random() < 0.4 else []
        pool.append(" ".join(parts))
    ids = pa.array(np.arange(rows, dtype=np.int64))
    tails = pa.array(pool).take(pa.array(np.random.default_rng(seed).integers(0, len(pool), rows)))
    text = pc.binary_join_element_wise("question", pc.cast(ids, pa.string()), "about", tails, " ")
    partial = path.with_suffix(".partial")
    pq.write_table(pa.table({"id": ids, "text": text}), partial)
    partial.rename(path)  # a killed run leaves no half-written corpus behind
    return path


# ---------------------------------------------------------------------------------------------
# The child: one path over one corpus, in a fresh process


class MemorySampler(threading.Thread):
    """The highest RssAnon seen, read every 20 ms. The kernel keeps a high-water mark of the
    whole RSS (VmHWM) but not of anonymous memory, which is what the build itself allocates
    (RSS also counts the page-cache pages of memory-mapped files, which the kernel can drop)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, status_kib("RssAnon") * 1024)
            self._done.wait(0.02)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, status_kib("RssAnon") * 1024)


def status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(path: str, rows: int, work: Path, run_dir: Path) -> None:
    sampler = MemorySampler()
    sampler.start()
    corpus = corpus_path(work, rows)
    # Fresh caches, set before datasets or huggingface_hub is imported: nothing from an
    # earlier run (an Arrow copy of the corpus, a checkpoint) is reused.
    os.environ["HF_HOME"] = str(run_dir / "hf_home")
    os.environ["HF_DATASETS_CACHE"] = str(run_dir / "datasets_cache")
    os.environ["HUBEMBED_CACHE"] = str(run_dir / "hubembed_cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"

    start = time.perf_counter()
    # Both paths pay for datasets (hubembed reads the source with it): counted as imports.
    import datasets  # noqa: F401

    if path == "hubembed":
        import hubembed.pipeline  # noqa: F401 - hubembed.build imports it lazily
    embedder = null_embedder()
    imported = time.perf_counter()
    out = (run_hubembed if path == "hubembed" else run_peer)(corpus, run_dir, embedder)
    seconds = time.perf_counter() - start
    peak_anon = sampler.stop()
    peak_rss = status_kib("VmHWM") * 1024

    import pyarrow.parquet as pq

    import hubembed

    files = sorted(out.rglob("*.parquet")) if out.is_dir() else [out]
    written = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if written != rows:  # a benchmark that wrote the wrong thing measures nothing
        raise SystemExit(f"{path} wrote {written} rows, expected {rows}")
    result = {
        "path": path,
        "rows": rows,
        "seconds": seconds,
        "import_seconds": imported - start,
        "peak_rss": peak_rss,
        "peak_anon": peak_anon,
        "hubembed_file": str(Path(hubembed.__file__).parent),
        "output_bytes": sum(f.stat().st_size for f in files),
        "output_files": len(files),
        "versions": {
            **{name: metadata.version(name) for name in ("pyarrow", "datasets", "numpy")},
            "hubembed": hubembed.__version__,
        },
    }
    print(json.dumps(result))


def null_embedder() -> Any:
    """A hubembed Embedder that costs next to nothing: rows of a small pool of random unit vectors."""
    import numpy as np

    from hubembed.embedder import Embedder

    rng = np.random.default_rng(0)
    pool = rng.standard_normal((BATCH, DIM), dtype=np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)

    class NullEmbedder(Embedder):
        dimension = DIM
        texts_per_call = BATCH  # read by the streaming pipeline; earlier code ignores it

        def embed_batch(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
            # A fresh array per call, as a real model returns: a view of the pool would let
            # the pipeline keep every batch for the price of one and understate its memory.
            n = len(texts)
            if n <= BATCH:
                return pool[:n].copy()
            return pool[np.arange(n) % BATCH]

    return NullEmbedder()


def run_hubembed(corpus: Path, run_dir: Path, embedder: Any) -> Path:
    import hubembed

    if os.environ.get("BENCH_ALWAYS_CHECKPOINT"):
        from hubembed import stream

        def always(self: Any, digests: Any, vectors: Any, cost: float) -> None:
            self.checkpoint.save(digests, vectors)

        stream._Saver.save = always  # type: ignore[method-assign]

    dst = run_dir / "out"
    meta = {"model": "bench/null", "model_revision": None, "model_origin": "bench"}
    result = hubembed.build(
        str(corpus),
        str(dst),
        column="text",
        embedder_factory=lambda settings: (embedder, meta),
        batch_size=BATCH,
        progress=False,
        force=True,
    )
    assert result.rows == result.embedded, result
    return dst


def run_peer(corpus: Path, run_dir: Path, embedder: Any) -> Path:
    """The plain way with datasets: load, map a batch at a time, write one parquet file."""
    import hashlib

    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files=str(corpus), split="train", cache_dir=str(run_dir / "peer_cache")
    )
    features = ds.features.copy()
    # A fixed-size list, as hubembed writes; without it datasets infers a variable-length list.
    features["embedding"] = datasets.List(datasets.Value("float32"), length=DIM)
    features["text_sha256"] = datasets.Value("string")

    def add(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = batch["text"]
        batch["embedding"] = embedder.embed_batch(texts)  # 2-D array: one row per text
        batch["text_sha256"] = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        return batch

    ds = ds.map(add, batched=True, batch_size=BATCH, features=features)
    out = run_dir / "peer.parquet"
    ds.to_parquet(str(out))
    return out


if __name__ == "__main__":
    main()
