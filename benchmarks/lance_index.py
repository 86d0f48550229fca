"""Which Lance vector index `hubembed export --to lance` builds: recall@10 against exact search,
build time and query time, for each index type with Lance's default parameters, in one run.

    python benchmarks/lance_index.py [--rows 20000] [--dim 384] [--queries 100] [--kinds IVF_FLAT,...]

Seeded clustered unit vectors (200 centres plus noise, as embeddings of related texts cluster),
queries near stored vectors; exact top 10 by numpy. Each index is queried as a user would:
``to_table(nearest={"column", "q", "k": 10, "metric": "cosine", ...})``, with Lance's defaults
and with the setting each type offers to trade speed for recall (HNSW's ef, PQ's refine_factor).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

KINDS = ["IVF_FLAT", "IVF_HNSW_SQ", "IVF_PQ"]
SETTINGS = {
    "IVF_FLAT": [{}],
    "IVF_HNSW_SQ": [{}, {"ef": 100}, {"ef": 300}],
    "IVF_PQ": [{}, {"refine_factor": 4}],
}


def vectors(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    out = np.empty((rows, dim), np.float32)
    for a in range(0, rows, 50_000):
        m = min(50_000, rows - a)
        x = centres[rng.integers(0, 200, m)] + 0.7 * rng.standard_normal((m, dim)).astype(np.float32)
        out[a : a + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args()
    os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")
    import lance
    import pyarrow as pa

    rng = np.random.default_rng(0)
    v = vectors(args.rows, args.dim, rng)
    queries = v[: args.queries] + 0.5 * rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    exact = [set(np.argsort(-(v @ q))[:10].tolist()) for q in queries]
    table = pa.table(
        {
            "id": np.arange(args.rows),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), args.dim),
        }
    )
    print(f"# {args.rows} x {args.dim} clustered unit vectors, {args.queries} queries, top 10")
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs; pylance {lance.__version__}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print("| index | query settings | build s | recall@10 (mean) | recall@10 (worst query) | ms per query |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as work:
        for kind in ["none", *args.kinds.split(",")]:
            ds = lance.write_dataset(table, os.path.join(work, f"{kind}.lance"))
            start = time.perf_counter()
            if kind != "none":
                # IVF_PQ has no defaults for these: the usual sqrt(n) lists, 8 dimensions per code.
                pq = {"num_partitions": round(args.rows**0.5), "num_sub_vectors": args.dim // 8}
                ds.create_index(
                    "embedding", index_type=kind, metric="cosine", **(pq if kind == "IVF_PQ" else {})
                )
            built = time.perf_counter() - start
            for extra in SETTINGS.get(kind, [{}]):
                found, start = [], time.perf_counter()
                for q, want in zip(queries, exact, strict=True):
                    near = {"column": "embedding", "q": q, "k": 10, "metric": "cosine", **extra}
                    got = ds.to_table(nearest=near, columns=["id"])["id"].to_pylist()
                    found.append(len(set(got) & want) / 10)
                per_query = 1000 * (time.perf_counter() - start) / len(queries)
                label = "none (a scan)" if kind == "none" else kind
                shown = ", ".join(f"{k}={v}" for k, v in extra.items()) or "defaults"
                print(
                    f"| {label} | {shown} | {built:.1f} | {np.mean(found):.3f} | {min(found):.1f} | {per_query:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
