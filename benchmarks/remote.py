"""Remote embedding throughput: hubembed's client versus the blog's serial loop.

Both embed the same texts through the same local server (tests/inference_server.py, backed
by the real all-MiniLM-L6-v2) that adds a fixed latency per request, standing in for the
network and a remote GPU. Run from the repository root:

    python benchmarks/remote.py [--texts 2048] [--latency 0.25] [--batch-size 32] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hubembed.batching import embed_all  # noqa: E402
from hubembed.embedder import EmbedSettings  # noqa: E402
from hubembed.remote import RemoteEmbedder  # noqa: E402
from tests.inference_server import InferenceServer  # noqa: E402

SUBJECTS = [
    "Medicare Part A",
    "Medicare Part B",
    "my premium",
    "a replacement card",
    "late enrollment",
    "TRICARE",
]
QUESTIONS = ["How do I sign up for {}?", "What does {} cost?", "Can I change {} later?", "Who can get {}?"]


def corpus(n: int) -> list[str]:
    return [QUESTIONS[i % 4].format(SUBJECTS[i % 6]) + f" (question {i})" for i in range(n)]


def blog_loop(url: str, texts: list[str], batch_size: int) -> np.ndarray:
    """The blog's flow: one requests.post per batch, one at a time."""
    import requests

    out = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        response = requests.post(url, json={"inputs": batch, "options": {"wait_for_model": True}})
        out.append(np.asarray(response.json(), dtype=np.float32))
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--latency", type=float, default=0.25, help="seconds added to every request")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    server = InferenceServer(latency=args.latency)
    url = f"{server.start()}/embed"
    texts = corpus(args.texts)
    blog_loop(url, texts[: args.batch_size], args.batch_size)  # warm the server's model

    start = time.perf_counter()
    reference = blog_loop(url, texts, args.batch_size)
    blog_s = time.perf_counter() - start

    embedder = RemoteEmbedder(
        url,
        model="sentence-transformers/all-MiniLM-L6-v2",
        settings=EmbedSettings(),
        concurrency=args.concurrency,
    )
    start = time.perf_counter()
    ours = embed_all(embedder, texts, batch_size=args.batch_size, progress=False)
    ours_s = time.perf_counter() - start
    server.stop()

    cos = float(
        ((ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)).min()
    )
    print(f"{args.texts} texts, batch {args.batch_size}, {args.latency:g} s latency per request")
    print("| path | texts/s | ratio |\n|---|---|---|")
    print(f"| blog serial loop (requests.post per batch) | {args.texts / blog_s:,.0f} | 1.00 |")
    print(
        f"| hubembed, {args.concurrency} in flight, pooled session | {args.texts / ours_s:,.0f} | {blog_s / ours_s:.2f} |"
    )
    print(
        f"min cosine hubembed vs blog: {cos:.6f}; max requests in flight seen by the server: {server.max_in_flight}"
    )


if __name__ == "__main__":
    main()
