"""Real model vectors for the compact-search benchmark: sentences embedded once with the
packaged model, cached on disk.

Random vectors say nothing about quantization (their coordinates are all alike), so recall is
measured on what the model gives. Nothing can be downloaded here, so the texts are the English
sentences of the docstrings of the installed packages (site-packages), deduplicated, in a
seeded order: real prose of many topics, a few thousand per package.
"""

from __future__ import annotations

import ast
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CACHE = Path(os.environ.get("HUBEMBED_BENCH_CACHE", Path.home() / ".cache" / "hubembed-bench"))
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def sentences(limit: int, seed: int = 0) -> list[str]:
    """Up to LIMIT distinct sentences of 5 to 60 words from the installed packages' docstrings."""
    import sysconfig

    root = Path(sysconfig.get_paths()["purelib"])
    seen: set[str] = set()
    out: list[str] = []
    files = sorted(root.rglob("*.py"))
    random.Random(seed).shuffle(files)
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef | ast.Module):
                continue
            doc = ast.get_docstring(node) or ""
            for part in _SENTENCE.split(" ".join(doc.split())):
                words = part.split()
                if 5 <= len(words) <= 60 and part not in seen and part[0].isalpha():
                    seen.add(part)
                    out.append(part)
        if len(out) >= limit:
            break
    return out[:limit]


def real_vectors(rows: int, *, batch_size: int = 128) -> tuple[np.ndarray, list[str]]:
    """ROWS sentences and their unit vectors from the packaged model, embedded on the first call
    and read from CACHE after (embedding tens of thousands takes minutes on a small CPU)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    vec_path, txt_path = CACHE / f"real-{rows}.npy", CACHE / f"real-{rows}.txt"
    if vec_path.is_file() and txt_path.is_file():
        return np.load(vec_path), txt_path.read_text(encoding="utf-8").split("\n")
    texts = sentences(rows)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from hubembed.models import PACKAGED_MODELS, _packaged

    resolved = _packaged(next(iter(PACKAGED_MODELS)))
    assert resolved is not None
    model = SentenceTransformer(str(resolved.location), device="cpu")
    model.max_seq_length = 128
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    print(f"embedded {len(texts)} texts in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    np.save(vec_path, vectors.astype(np.float32))
    txt_path.write_text("\n".join(t.replace("\n", " ") for t in texts), encoding="utf-8")
    return vectors.astype(np.float32), texts


if __name__ == "__main__":
    v, t = real_vectors(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
    print(v.shape, len(t))
