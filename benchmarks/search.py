"""Exact search: hubembed against sentence-transformers' util.semantic_search, in one run.

    python benchmarks/search.py [--rows 1000000] [--queries 100] [--top-k 10] [--device cpu]
    python benchmarks/search.py --device cuda
    python benchmarks/search.py --threads 1 --clock cpu   # on a machine others are using
    python benchmarks/search.py --compact [--rows 1000000] [--real 15000] [--ann-rows 200000]
    python benchmarks/search.py --compact --neighbourhoods   # the scaled corpora against the real rows

--compact times the search modes of issue 14 (ann, int8, binary, each rescored in float32)
against exact search, on real model vectors: see benchmarks/_compact.py.

Generates seeded random vectors (no downloads): a unit-length corpus, and the same corpus
with rows of random length (an unnormalised model). Every path runs in this one process
in interleaved rounds (A B C, A B C, ...) after a warm-up call each; the best round counts,
so a busy machine slows them alike. Each path's hits are checked against
util.semantic_search's on the same corpus: same ids (ties aside) and scores (to 1e-5).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PEER = "util.semantic_search (cos_sim, the blog's call)"
PEER_FP16 = "util.semantic_search, fp16 corpus"


def same_hits(got: list, want: list, atol: float = 1e-5) -> str:
    """ "same", or how many queries differ: in a score, or in an id whose score is not tied."""
    bad = 0
    for g, w in zip(got, want, strict=True):
        scores = [h["score"] for h in w]
        ok = len(g) == len(w) and all(abs(a["score"] - b["score"]) <= atol for a, b in zip(g, w, strict=True))
        for i, (a, b) in enumerate(zip(g, w, strict=True)):
            tied = i == len(w) - 1 or any(abs(s - scores[i]) <= atol for j, s in enumerate(scores) if j != i)
            ok = ok and (a["corpus_id"] == b["corpus_id"] or tied)
        bad += not ok
    return "same" if not bad else f"DIFFERENT ({bad} of {len(want)} queries)"


def paths(args: argparse.Namespace, queries, corpus, *, unit: bool) -> dict[str, Callable[[], Any]]:
    """Name -> a call returning hits, for one corpus; the peer first."""
    import torch
    from sentence_transformers import util

    from hubembed import semantic_search
    from hubembed.search import row_norms

    k = args.top_k
    out: dict[str, Callable[[], Any]] = {PEER: lambda: util.semantic_search(queries, corpus, top_k=k)}
    if unit:
        out["util.semantic_search, score_function=dot_score"] = lambda: util.semantic_search(
            queries, corpus, top_k=k, score_function=util.dot_score
        )
    out["hubembed.semantic_search (same call)"] = lambda: semantic_search(queries, corpus, top_k=k)
    if unit:
        out["hubembed.semantic_search, normalized=True"] = lambda: semantic_search(
            queries, corpus, top_k=k, normalized=True
        )
        half = corpus.to(torch.float16)
        out[PEER_FP16] = lambda: util.semantic_search(queries, half, top_k=k)
        out["hubembed.semantic_search, fp16 corpus"] = lambda: semantic_search(queries, half, top_k=k)
    else:
        norms = row_norms(corpus)
        out["hubembed.semantic_search, corpus_norms cached"] = lambda: semantic_search(
            queries, corpus, top_k=k, corpus_norms=norms
        )
    if corpus.device.type == "cpu":
        index = embedded_dataset(corpus, unit=unit)
        out["EmbeddedDataset.search (hits with rows)"] = lambda: [
            [{"corpus_id": h["corpus_id"], "score": h["score"]} for h in hits]
            for hits in index.search(queries, top_k=k)
        ]
    return out


def embedded_dataset(corpus, *, unit: bool):
    """An EmbeddedDataset over CORPUS, as hubembed.load gives one: Arrow table, card metadata."""
    import datasets
    import pyarrow as pa
    from _corpus import text

    from hubembed import EmbeddedDataset

    vectors = corpus.numpy()
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    table = pa.table({"text": [text(i) for i in range(len(vectors))], "embedding": column})
    meta = {"embedding_column": "embedding", "normalized": unit, "source": {"column": "text"}}
    # An explicit fingerprint: datasets would otherwise hash the whole in-memory table.
    return EmbeddedDataset(datasets.Dataset(table, fingerprint=f"bench-{unit}"), meta)


def time_rounds(
    todo: dict[str, Callable[[], Any]], rounds: int, clock: Callable[[], float]
) -> tuple[dict[str, list[float]], dict]:
    for call in todo.values():  # warm-up: first calls allocate and fill caches (and the norms)
        call()
    seconds: dict[str, list[float]] = {name: [] for name in todo}
    hits: dict[str, Any] = {}
    for _ in range(rounds):
        for name, call in todo.items():
            start = clock()
            hits[name] = call()
            seconds[name].append(clock() - start)
    return seconds, hits


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this process's CPU time, which other processes barely change (use with --threads 1)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compact", action="store_true", help="the search modes: ann, int8, binary")
    parser.add_argument("--real", type=int, default=15_000, help="--compact: real vectors to embed/cache")
    parser.add_argument("--ann-rows", type=int, default=200_000, help="--compact: rows of the ANN run")
    parser.add_argument("--build-rows", type=int, default=200_000, help="--compact: rows of the build run")
    parser.add_argument(
        "--noise", type=float, default=0.5, help="--compact: norm of the noise added to synthetic rows"
    )
    parser.add_argument(
        "--corpus",
        choices=("mix", "copies"),
        default="mix",
        help="--compact: how rows beyond the real ones are made (benchmarks/_compact.py, scaled)",
    )
    parser.add_argument(
        "--binary-modes",
        nargs="*",
        default=[],
        help='--compact: more binary runs at 1M, e.g. "binary x100" (rescore 100)',
    )
    parser.add_argument(
        "--ann-modes",
        nargs="*",
        default=[],
        help='--compact: more ann runs, e.g. "ann x4 ef256" (rescore 4, ef_search 256)',
    )
    parser.add_argument(
        "--neighbourhoods",
        action="store_true",
        help="--compact: compare the neighbourhoods of the real rows and of both scaled corpora",
    )
    parser.add_argument(
        "--compare-libraries", action="store_true", help="--compact: faiss, usearch, numpy scans and HNSW"
    )
    args = parser.parse_args()
    if args.compact:
        from _compact import run

        run(args)
        return

    import datasets
    import sentence_transformers
    import torch
    from _corpus import row_lengths, unit_vectors

    from hubembed import EmbeddedDataset

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU here")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu counts threads waiting for each other too: give --threads 1")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    device = torch.device(args.device)
    vectors = torch.from_numpy(unit_vectors(args.rows, args.dim, seed=args.seed))
    queries = torch.from_numpy(unit_vectors(args.queries, args.dim, seed=args.seed + 1))
    corpora = {
        "unit-length corpus": (vectors.to(device), True),
        "unnormalised corpus (rows of length 0.5-2)": (
            (vectors * torch.from_numpy(row_lengths(args.rows, seed=args.seed + 2)).unsqueeze(1)).to(device),
            False,
        ),
    }
    del vectors

    if device.type == "cpu":
        hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    else:
        hardware = torch.cuda.get_device_name(device)
    versions = f"torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}, "
    versions += f"datasets {datasets.__version__}; python {platform.python_version()}"
    print(
        f"# {args.rows} x {args.dim} float32 corpus, {args.queries} queries, top {args.top_k}, on {device}; "
        f"{'CPU' if args.clock == 'cpu' else 'wall-clock'} seconds"
    )
    print(f"# {hardware}; {versions}")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    tables = []
    for label, (corpus, unit) in corpora.items():
        todo = paths(args, queries, corpus, unit=unit)
        if device.type == "cpu":
            fresh: EmbeddedDataset = embedded_dataset(corpus, unit=unit)
            start = clock()
            fresh.search(queries, top_k=args.top_k)
            first = clock() - start
        seconds, hits = time_rounds(todo, args.rounds, clock)
        want = {name: hits[PEER] for name in todo}
        if unit:  # fp16 rows are checked against the peer on the same fp16 vectors
            want[PEER_FP16] = want["hubembed.semantic_search, fp16 corpus"] = hits[PEER_FP16]
        base = min(seconds[PEER])
        lines = [f"**{label}**", "", "| path | best s | median s | speed-up vs util | hits |"]
        lines.append("| --- | ---: | ---: | ---: | --- |")
        for name in todo:
            best, median = min(seconds[name]), statistics.median(seconds[name])
            check = "(peer)" if name in (PEER, PEER_FP16) else same_hits(hits[name], want[name])
            lines.append(f"| {name} | {best:.3f} | {median:.3f} | {base / best:.2f}x | {check} |")
        if device.type == "cpu":
            lines += [
                "",
                f"First EmbeddedDataset.search on a fresh load (row norms checked once): {first:.3f} s",
            ]
        tables.append("\n".join(lines))
        del todo

    print(
        f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; best of {args.rounds} rounds"
    )
    for table in tables:
        print()
        print(table)


if __name__ == "__main__":
    main()
