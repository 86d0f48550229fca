"""benchmarks/gpu.py runs end to end on a CPU (--smoke), also where `datasets` is missing, as on
the GPU machines it is written for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Run the script with `import datasets` failing, as in an image without it.
NO_DATASETS = """
import importlib.metadata as md, runpy, sys
sys.modules["datasets"] = None  # `import datasets` fails, find_spec says it is not there
def hidden(real):
    def lookup(name):
        if name == "datasets":
            raise md.PackageNotFoundError(name)
        return real(name)
    return lookup
md.metadata, md.version = hidden(md.metadata), hidden(md.version)  # nor do installed packages
sys.argv = ["gpu.py", "--smoke"]
runpy.run_path("benchmarks/gpu.py", run_name="__main__")
"""


def run(args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table(stdout: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in stdout.splitlines()
        if line.startswith("| ")
    ]


@pytest.mark.slow
def test_gpu_benchmark_smoke_prints_every_figure():
    rows = table(run([sys.executable, "benchmarks/gpu.py", "--smoke"]))
    paths = [r[1] for r in rows]
    for kind in ("short", "paragraph"):
        mine = [r for r in rows if r[0].startswith("all-MiniLM") and kind in r[0]]
        assert [r[1][:3] for r in mine] == ["(a)", "(b)", "(c)", "(d)"]
        assert float(mine[3][7]) > 0.9999  # the fast path gives encode's vectors
    assert any(r[0].startswith("BERT-base") and r[3].endswith("M") for r in rows)
    assert "whole build (hubembed.build)" in paths and "embed only (fast path)" in paths


@pytest.mark.slow
def test_gpu_benchmark_runs_without_datasets():
    rows = table(run([sys.executable, "-c", NO_DATASETS]))
    assert [r[1] for r in rows if r[0].startswith("whole build")] == [
        "not measured: `datasets` is not installed here"
    ]
    assert len([r for r in rows if "(d) hubembed fast path" in r[1]]) == 3
