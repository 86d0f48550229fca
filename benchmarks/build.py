"""The whole build against embedding alone: how much do reading, hashing, writing and pushing add?

    python benchmarks/build.py [--texts 4000] [--kind short|paragraph] [--backend torch|onnx|onnx-int8]
                               [--device cpu|cuda] [--rounds 3]

Writes a seeded corpus (benchmarks/embed.py's, nothing downloaded) as a parquet file, then
times in interleaved rounds, each path loading the model itself:

- embed only: the embedder a build uses (same backend, device, batch sizes) over the distinct
  texts (a build embeds each once);
- ``hubembed.build`` into a new local folder: read, hash, embed, write shards and card;
- ``hubembed.build`` into a new repo on a local Hub server (tests/hub_server.py, the real
  huggingface_hub client over HTTP): the same plus the upload and commit.

The ratio is the build's rate over the embed-only rate (target: >= 90%).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--kind", choices=("short", "paragraph"), default="short")
    parser.add_argument("--backend", choices=("torch", "onnx", "onnx-int8"), default="torch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hubembed-bench-build-"))
    # The Hub server must be up, and the environment set, before huggingface_hub is imported.
    from tests.hub_server import HubServer, use_local_hub

    token = "hf_bench_" + "x" * 24
    server = HubServer(work / "hub", users={token: "bench"})
    use_local_hub(server.start(), work)
    os.environ["HF_TOKEN"] = token
    try:
        run(args, work)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    import logging

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from embed import make_corpus

    import hubembed
    from hubembed import pipeline
    from hubembed.batching import embed_all
    from hubembed.embedder import EmbedSettings
    from hubembed.models import resolve_model

    logging.getLogger("hubembed").setLevel(logging.ERROR)  # the model fallback warns every build
    texts = make_corpus(args.texts, args.kind)
    unique = list(dict.fromkeys(texts))  # a build embeds each distinct text once
    source = work / "source.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), source)

    def embed_only() -> None:
        # What build() does for a local model: the same factory, batch sizes and batching code.
        resolved = resolve_model(hubembed.config.DEFAULT_MODEL, revision=None, token=None)
        embedder, _ = pipeline._local_embedder(
            resolved, args.device, False, EmbedSettings(), None, args.backend, 32
        )
        embed_all(embedder, unique, batch_size=embedder.texts_per_call or 32, progress=False)

    counter = iter(range(10**6))

    def build_to(where: str) -> None:
        dst = str(work / f"out-{next(counter)}") if where == "folder" else f"bench/out-{next(counter)}"
        result = hubembed.build(
            str(source), dst, device=args.device, backend=args.backend, progress=False, force=True
        )
        assert result.rows == len(texts) and result.embedded == len(unique)

    paths = {
        "embed only (the build's embedder, model load included)": embed_only,
        "hubembed.build -> local folder": lambda: build_to("folder"),
        "hubembed.build -> local Hub server (upload + commit)": lambda: build_to("hub"),
    }
    embed_only()  # warm-up: file caches, the ONNX export, allocator
    times: dict[str, list[float]] = {name: [] for name in paths}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    load_after = os.getloadavg()

    print(
        f"# {args.texts} {args.kind} texts ({len(unique)} distinct), backend {args.backend}, device {args.device}"
    )
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}; "
        f"hubembed {hubembed.__version__}; python {platform.python_version()}"
    )
    print(
        f"# load average {' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after; best of {args.rounds} rounds"
    )
    print()
    base = min(next(iter(times.values())))
    print("| path | best s | median s | texts/s | rate vs embed only |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, runs in times.items():
        best = min(runs)
        print(
            f"| {name} | {best:.2f} | {statistics.median(runs):.2f} | {len(texts) / best:.0f} "
            f"| {base / best:.0%} |"
        )


if __name__ == "__main__":
    main()
