"""Loading the vectors: hubembed.load(folder).embeddings against the blog's CSV path, in one run.

    python benchmarks/load.py [--rows 100000] [--dim 384] [--rounds 5]

Generates seeded random unit vectors (no downloads) and writes them twice: a hubembed build
(hubembed.build with an embedder that replays them: parquet shards and the card), and the
blog's embeddings.csv. The blog's path is its own code:
``torch.from_numpy(load_dataset(folder)["train"].to_pandas().to_numpy()).to(torch.float)``,
timed with datasets' cache already made (its first CSV -> Arrow conversion is reported
apart). hubembed.load is timed three ways: its first load of a build, which maps the build's
vectors/train.npy; the first load of the same shards without that file (a build made before
builds wrote it), which copies the shards' vector pages into hubembed's cache; and a later
one. Each measurement runs in a fresh process, imports done first, files in the page
cache: time, and the peak resident memory (VmHWM, reset just before) above the resident
memory at the start. Paths run in interleaved rounds; the best round counts.
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
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PEER = "blog: load_dataset(csv) -> to_pandas -> to_numpy -> torch"
PATHS = {
    "blog": PEER,
    "hubembed-first": "hubembed.load(folder).embeddings, first load (maps the build's vectors/train.npy)",
    "hubembed-pages": "the same, first load of the shards alone (copies their vector pages into its cache)",
    "hubembed": "hubembed.load(folder).embeddings",
    "floor": "pyarrow.parquet.read_table of the shard's vectors + a view per row group, joined",
}


def _status() -> dict[str, int]:
    """This process's VmRSS and VmHWM, in bytes (Linux)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> int:
    """Reset VmHWM to the current RSS (Linux 4.0+); return that RSS."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status()["VmRSS"]


def child(path: str, work: Path) -> None:
    """Measure one path in this (fresh) process; print one JSON line."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from datasets import load_dataset

    import hubembed
    import hubembed.loader  # noqa: F401  (imported before the clock starts, like the others)

    before = _reset_peak()
    start = time.perf_counter()
    if path == "blog":
        ds = load_dataset(str(work / "blog"))
    elif path == "hubembed-pages":
        index = hubembed.load(str(work / "shards-only"))
    elif path.startswith("hubembed"):
        index = hubembed.load(str(work / "hubembed"))
    else:
        (shard,) = (work / "hubembed" / "data").glob("*.parquet")
        table = pq.read_table(shard, columns=["embedding"])
    load_seconds = time.perf_counter() - start
    after_load = _status()
    middle = _reset_peak()
    start = time.perf_counter()
    if path == "blog":
        tensor = torch.from_numpy(ds["train"].to_pandas().to_numpy()).to(torch.float)
    elif path.startswith("hubembed"):
        tensor = index.embeddings
    else:
        # One view per chunk (a row group each), joined: a copy only where there are several.
        views = []
        for chunk in table.column("embedding").chunks:
            flat = chunk.flatten()
            views.append(np.frombuffer(flat.buffers()[1], np.float32, len(flat), flat.offset * 4))
        values = views[0] if len(views) == 1 else np.concatenate(views)
        tensor = torch.from_numpy(values.reshape(table.num_rows, -1))
    end = time.perf_counter()
    after = _status()
    expected = np.load(work / "expected.npy")
    got = tensor.numpy()
    same = got.shape == expected.shape and bool(np.array_equal(got, expected))
    diff = 0.0 if same or got.shape != expected.shape else float(np.abs(got - expected).max())
    result = {
        "load": load_seconds,
        "tensor": end - start,
        "total": load_seconds + end - start,
        # Peaks above the resident memory when each step began; end to end, above the start.
        "peak_tensor": after["VmHWM"] - middle,
        "peak": max(after_load["VmHWM"] - before, after["VmHWM"] - before),
        "held": after["VmRSS"] - before,
        "values": "same" if same else f"shape {got.shape}" if diff == 0 else f"max diff {diff:.2g}",
    }
    print(json.dumps(result))


def _mib(size: int, tensor_bytes: int) -> str:
    return f"{size / 2**20:.0f} MiB ({size / tensor_bytes:.2f}x)"


def run_child(path: str, work: Path) -> dict:
    if path in ("hubembed-first", "hubembed-pages"):
        shutil.rmtree(Path(os.environ["HUBEMBED_CACHE"]) / "vectors", ignore_errors=True)
    done = subprocess.run(
        [sys.executable, __file__, "--child", path, "--work", str(work)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="keep the generated files here (default: a temp dir)")
    parser.add_argument("--child", choices=sorted(PATHS), help=argparse.SUPPRESS)
    args = parser.parse_args()

    from _corpus import build_dataset, isolate_caches, unit_vectors, write_blog_csv

    if args.child:
        child(args.child, args.work)
        return
    if not Path("/proc/self/clear_refs").exists():
        parser.error("needs Linux: peak memory is read from /proc/self/status")
    work = args.work or Path(tempfile.mkdtemp(prefix="hubembed-bench-load-"))
    work.mkdir(parents=True, exist_ok=True)
    isolate_caches(work)  # before datasets is imported: nothing lands in the user's caches

    import datasets
    import numpy as np
    import pyarrow
    import torch

    try:
        vectors = unit_vectors(args.rows, args.dim, seed=args.seed)
        np.save(work / "expected.npy", vectors)
        start = time.perf_counter()
        build_dataset(work / "hubembed", vectors, work)
        built = time.perf_counter() - start
        # The same build without its vectors/ (as one made before builds wrote it): shards only.
        shutil.rmtree(work / "shards-only", ignore_errors=True)
        shutil.copytree(work / "hubembed", work / "shards-only", ignore=shutil.ignore_patterns("vectors"))
        start = time.perf_counter()
        write_blog_csv(work / "blog", vectors)
        written = time.perf_counter() - start
        first = run_child("blog", work)  # makes datasets' Arrow cache of the CSV
        tensor_bytes = vectors.nbytes
        del vectors

        print(f"# {args.rows} x {args.dim} float32 vectors ({tensor_bytes / 2**20:.0f} MiB as one tensor)")
        print(
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
            f"datasets {datasets.__version__}, pyarrow {pyarrow.__version__}; python {platform.python_version()}"
        )
        print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        results: dict[str, list[dict]] = {name: [] for name in PATHS}
        for _ in range(args.rounds):
            for name in PATHS:
                results[name].append(run_child(name, work))
        print(
            f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; best of {args.rounds} rounds"
        )
        sizes = {
            "hubembed build (parquet)": sum(f.stat().st_size for f in (work / "hubembed" / "data").iterdir()),
            "its vectors/train.npy": (work / "hubembed" / "vectors" / "train.npy").stat().st_size,
            "blog CSV": (work / "blog" / "embeddings.csv").stat().st_size,
        }
        print(
            f"# made in {built:.1f} s (hubembed.build) and {written:.1f} s (CSV); "
            + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sizes.items())
        )
        print(
            f"# the blog's first load_dataset (CSV -> Arrow cache, not in the table): {first['total']:.1f} s"
        )
        print()
        base = min(r["total"] for r in results["blog"])
        base_tensor = min(r["tensor"] for r in results["blog"])
        print(
            "| path | load s | to tensor s | total s (best) | total s (median) | speed-up, total "
            "| speed-up, to tensor | peak extra RSS, to tensor | peak extra RSS, total | RSS held after | values |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for name, label in PATHS.items():
            runs = results[name]
            best = min(runs, key=lambda r: r["total"])
            # The least any round needed: a busy machine only adds.
            peak, peak_tensor = min(r["peak"] for r in runs), min(r["peak_tensor"] for r in runs)
            fastest_tensor = min(r["tensor"] for r in runs)
            median = statistics.median(r["total"] for r in runs)
            print(
                f"| {label} | {best['load']:.3f} | {best['tensor']:.3f} | {best['total']:.3f} | {median:.3f} "
                f"| {base / best['total']:.1f}x | {base_tensor / max(fastest_tensor, 1e-6):.0f}x "
                f"| {_mib(peak_tensor, tensor_bytes)} | {_mib(peak, tensor_bytes)} "
                f"| {_mib(best['held'], tensor_bytes)} | {best['values']} |"
            )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
