"""The chunker (issue 15): its cost against embedding, and semchunk against it.

    python benchmarks/chunk.py [--docs 1000] [--words 5000] [--short 100000] [--chunk 256]
                               [--overlap 32] [--overlap-docs 300] [--embed-sample 192]

Writes seeded corpora (benchmarks/embed.py's sentences, nothing downloaded): DOCS documents of
about WORDS words in paragraphs of 1 to 20 sentences, and SHORT one-line texts that need no
split. Then, with the packaged all-MiniLM-L6-v2's tokenizer and chunks of CHUNK tokens:

- times ``hubembed.chunking.Chunker.split_many`` and semchunk 4 (``chunkerify`` with a token
  counter that counts exactly what the model reads: the text and its special tokens), once
  each, on the long documents (no overlap; then OVERLAP tokens, on the first OVERLAP_DOCS of
  them) and on the short texts;
- counts every chunk of both again (``Chunker.tokens``: prompt, chunk and special tokens, no
  truncation), and checks on a sample that the model's own tokenizer, as sentence-transformers
  loads it, gives the same counts;
- says where chunks end: at a paragraph break, a sentence end, other whitespace, or inside a
  word (or at punctuation with no space);
- splits a few edge cases (10,000 CJK characters, with and without full stops, long runs of
  words joined by "/" or "-", CRLF paragraphs, 3,000 emoji) in chunks of 64 tokens, with and
  without overlap and a prompt, and counts the chunks over 64;
- times ``SentenceTransformer.encode`` (CPU, batch 32) on a seeded sample of EMBED_SAMPLE of
  the long documents' chunks and 1,000 short texts, and extrapolates to all of them: the
  chunker's time is given as a share of that embedding time.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

Spans = list[list[tuple[int, int]]]
_GAP = re.compile(r"\s*")
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n|\r[^\S\r\n]*\r")
_SENTENCE = re.compile(r"(?:[.!?\u2026][\"'\u201d\u2019)\]]*|[\u3002\uff01\uff1f])$")


def long_docs(n: int, words: int, seed: int = 0) -> list[str]:
    from embed import sentence

    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        paragraphs: list[str] = []
        count = 0
        target = rng.randint(int(words * 0.9), int(words * 1.1))
        while count < target:
            k = rng.choice((1, 2, 3, 4, 6, 8, 12, 20))
            text = " ".join(sentence(rng, question=rng.random() < 0.1) for _ in range(k))
            paragraphs.append(text)
            count += text.count(" ") + 1
        docs.append("\n\n".join(paragraphs))
    return docs


def end_kind(text: str, end: int) -> str:
    gap = _GAP.match(text, end).group()  # type: ignore[union-attr]
    if _PARAGRAPH.search(gap):
        return "paragraph"
    if (gap or text[end - 1] in "\u3002\uff01\uff1f") and _SENTENCE.search(text[max(0, end - 4) : end]):
        return "sentence"
    return "whitespace" if gap else "inside a word"


def describe(
    name: str, seconds: tuple[float, float], texts: list[str], spans: Spans, count: Callable, budget: int
) -> dict:
    chunks = [t[s:e] for t, sp in zip(texts, spans, strict=True) for s, e in sp]
    tokens = count(chunks)
    split = [
        n for n, k in zip(tokens, (k for sp in spans for k in [len(sp)] * len(sp)), strict=True) if k > 1
    ]
    ends = [end_kind(t, e) for t, sp in zip(texts, spans, strict=True) for _, e in sp[:-1]]
    overlaps = [
        t[b:e]
        for t, sp in zip(texts, spans, strict=True)
        for (_, e), (b, _) in zip(sp, sp[1:], strict=False)
        if b < e
    ]
    specials = count([""])[0]
    shared = [n - specials for n in count(overlaps)]
    row = {
        "splitter": name,
        "s": seconds,
        "chunks": len(chunks),
        "mean tokens": statistics.fmean(tokens) if tokens else 0.0,
        "max": max(tokens, default=0),
        "over": sum(n > budget for n in tokens),
        "small": sum(n < budget / 4 for n in split) / max(1, len(split)),
        "overlap": (statistics.fmean(shared), max(shared)) if shared else None,
    }
    for kind in ("paragraph", "sentence", "whitespace", "inside a word"):
        row[kind] = ends.count(kind) / max(1, len(ends))
    return row


def timed(fn: Callable[[], Any]) -> tuple[tuple[float, float], Any]:
    """((wall-clock s, CPU s of this process, all its threads), what FN gives)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return (time.perf_counter() - start, time.process_time() - cpu), out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--words", type=int, default=5000)
    parser.add_argument("--short", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument(
        "--overlap-docs", type=int, default=300, help="of the documents, split with overlap too"
    )
    parser.add_argument("--embed-sample", type=int, default=192)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

    import logging

    import tokenizers
    import torch
    from embed import make_corpus

    import hubembed
    from hubembed.chunking import Chunker
    from hubembed.embedder import EmbedSettings
    from hubembed.models import load_model, resolve_model

    try:
        import semchunk
    except ImportError:
        semchunk = None
    logging.getLogger("hubembed").setLevel(logging.ERROR)

    load_before = os.getloadavg()
    start = time.perf_counter()
    docs = long_docs(args.docs, args.words)
    short = make_corpus(args.short, "short")
    made = time.perf_counter() - start
    resolved = resolve_model(hubembed.config.DEFAULT_MODEL)
    ours = {ov: Chunker.for_model(resolved, EmbedSettings(), args.chunk, ov) for ov in (0, args.overlap)}
    count = ours[0].tokens
    doc_tokens = sum(len(e.ids) for e in ours[0].tokenizer.encode_batch(docs, add_special_tokens=False))

    def our_split(chunker: Chunker, texts: list[str], batch: int) -> Spans:
        out: Spans = []
        for i in range(0, len(texts), batch):  # as a build hands them over, a batch at a time
            out += chunker.split_many(texts[i : i + batch])
        return out

    def semchunk_split(texts: list[str], overlap: int) -> Spans:
        # the chunker's tokenizer: truncation off (the file's own, 128 tokens, would count wrong)
        counter = exact_counter(ours[0].tokenizer, "")
        chunker = semchunk.chunkerify(counter, args.chunk)
        _, offsets = chunker(texts, offsets=True, overlap=overlap or None)
        return [list(o) for o in offsets]

    rows: list[tuple[str, dict]] = []
    times: dict[str, float] = {}
    cached = None
    runs = (
        ("long", docs, 64, 0),
        ("long", docs[: args.overlap_docs], 64, args.overlap),
        ("short", short, 10_000, 0),
    )
    for label, texts, batch, overlap in runs:
        what = f"{len(texts):,} {label}, overlap {overlap}"
        seconds, spans = timed(lambda t=texts, b=batch, o=overlap: our_split(ours[o], t, b))
        times[label, overlap] = seconds
        rows.append((what, describe("hubembed.chunking", seconds, texts, spans, count, args.chunk)))
        if (label, overlap) == ("long", 0):
            long_spans = spans
        if semchunk is not None:
            seconds, spans = timed(lambda t=texts, o=overlap: semchunk_split(t, o))
            rows.append(
                (what, describe(f"semchunk {semchunk_version()}", seconds, texts, spans, count, args.chunk))
            )
            if (label, overlap) == ("long", 0):
                cached = memo_size(semchunk)

    # The edge cases, for both: no whitespace, emoji, Windows newlines, a prompt, a small budget.
    edge = edge_cases()
    edge_rows = []
    for prompt in ("", "query: "):
        for overlap in (0, 16):
            chunker = Chunker(ours[0].tokenizer, 64, overlap, prompt)
            spans = chunker.split_many(edge)
            over = sum(
                n > 64
                for n in chunker.tokens([t[s:e] for t, sp in zip(edge, spans, strict=True) for s, e in sp])
            )
            sem = None
            if semchunk is not None:
                counter = exact_counter(chunker.tokenizer, prompt)
                _, offs = semchunk.chunkerify(counter, 64)(edge, offsets=True, overlap=overlap or None)
                sem = sum(
                    n > 64
                    for n in chunker.tokens([t[s:e] for t, sp in zip(edge, offs, strict=True) for s, e in sp])
                )
            edge_rows.append((prompt, overlap, over, sem))

    # Embedding, on samples, extrapolated.
    model = load_model(resolved, device="cpu")
    rng = random.Random(1)
    chunks = [d[s:e] for d, sp in zip(docs, long_spans, strict=True) for s, e in sp]
    sample = rng.sample(chunks, min(args.embed_sample, len(chunks)))
    short_sample = rng.sample(short, min(1000, len(short)))
    model.encode(sample[:32], batch_size=32)  # warm-up
    long_s, _ = timed(lambda: model.encode(sample, batch_size=32))
    short_s, _ = timed(lambda: model.encode(short_sample, batch_size=32))
    embed_long = [x / len(sample) * len(chunks) for x in long_s]
    embed_short = [x / len(short_sample) * len(short) for x in short_s]
    seen = [len(ids) for ids in model.tokenizer(sample, truncation=False)["input_ids"]]
    agree = sum(a == b for a, b in zip(seen, count(sample), strict=True))
    load_after = os.getloadavg()

    print(
        f"# {args.docs} documents of ~{args.words} words ({doc_tokens:,} tokens), {args.short:,} short texts; "
        f"chunks of {args.chunk} tokens, overlap 0 and {args.overlap}; corpus made in {made:.1f} s"
    )
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; tokenizers {tokenizers.__version__}; "
        f"semchunk {semchunk_version()}; torch {torch.__version__}; hubembed {hubembed.__version__}; "
        f"python {platform.python_version()}"
    )
    print(
        f"# load average {' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after; one run each"
    )
    print()
    print(
        "| texts | splitter | s (CPU s) | chunks | mean tokens | max | over | < 1/4 full (of split texts) | overlap mean/max "
        "| ends: paragraph | sentence | whitespace | inside a word |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for what, r in rows:
        overlap = f"{r['overlap'][0]:.1f} / {r['overlap'][1]}" if r["overlap"] else "-"
        print(
            f"| {what} | {r['splitter']} | {r['s'][0]:.1f} ({r['s'][1]:.1f}) | {r['chunks']:,} | {r['mean tokens']:.0f} | {r['max']} "
            f"| {r['over']} | {r['small']:.1%} | {overlap} | {r['paragraph']:.1%} | {r['sentence']:.1%} "
            f"| {r['whitespace']:.1%} | {r['inside a word']:.1%} |"
        )
    print()
    print(f"Edge cases ({len(edge)} texts: no whitespace, emoji, CRLF, long words), chunks of 64 tokens:")
    print()
    print("| prompt | overlap | chunks over 64, hubembed.chunking | chunks over 64, semchunk |")
    print("| --- | ---: | ---: | ---: |")
    for prompt, overlap, over, sem in edge_rows:
        print(f"| {prompt!r} | {overlap} | {over} | {'-' if sem is None else sem} |")
    print()
    if cached is not None:
        print(
            f"semchunk's token-count cache (memoize=True, its default, unbounded) after the long documents: {cached:,} strings."
        )
        print()
    print(f"Model's own tokenizer (sentence-transformers) on {len(sample)} chunks: same count for {agree}.")
    print()
    print(
        "| texts | chunking s (CPU s) | embedding s (CPU s), extrapolated | embedding sample "
        "| chunking / embedding (CPU) |"
    )
    print("| --- | ---: | ---: | --- | ---: |")
    for what, split, embed, measured, (wall, cpu) in (
        (
            f"{args.docs:,} documents, {len(chunks):,} chunks",
            times["long", 0],
            embed_long,
            len(sample),
            long_s,
        ),
        (f"{args.short:,} short texts", times["short", 0], embed_short, len(short_sample), short_s),
    ):
        print(
            f"| {what} | {split[0]:.1f} ({split[1]:.1f}) | {embed[0]:.0f} ({embed[1]:.0f}) "
            f"| {measured:,} texts in {wall:.1f} s ({cpu:.1f} CPU s) "
            f"| {split[0] / embed[0]:.2%} ({split[1] / embed[1]:.2%}) |"
        )


def exact_counter(tokenizer: Any, prompt: str) -> Callable[[str], int]:
    """What the model reads of PROMPT + TEXT: special tokens included."""

    def counter(text: str) -> int:
        return len(tokenizer.encode(prompt + text).ids)

    return counter


def edge_cases() -> list[str]:
    rng = random.Random(2)
    words = [
        "insurance",
        "premiums",
        "antidisestablishmentarianism",
        "naïve",
        "café",
        "😀",
        "Ελληνικά",
        "русский",
    ]
    cjk = "".join(chr(0x4E00 + rng.randrange(2000)) for _ in range(10_000))
    return [
        cjk,
        "".join(cjk[i : i + rng.randint(10, 40)] + "\u3002" for i in range(0, 4000, 40)),
        "/".join(rng.choice(words) for _ in range(2000)),
        "-".join(rng.choice(words) for _ in range(2000)),
        "\r\n\r\n".join(
            " ".join(rng.choice(words) for _ in range(rng.randint(5, 120))) + "." for _ in range(40)
        ),
        " ".join(rng.choice(words) for _ in range(3000)),
        "😀" * 3000,
    ]


def memo_size(semchunk: Any) -> int | None:
    """How many strings semchunk's token-count cache (memoize=True, its default) holds."""
    try:
        return list(semchunk.semchunk._memoized_token_counters.values())[-1].cache_info().currsize
    except Exception:
        return None


def semchunk_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("semchunk")
    except PackageNotFoundError:
        return "(not installed)"


if __name__ == "__main__":
    main()
