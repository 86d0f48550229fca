"""Scheduled refresh (issue 4): a rerun embeds only what changed and commits once, or nothing
at all; a build killed with SIGKILL leaves DST untouched and its rerun resumes."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest

import hubembed
from tests.conftest import ALICE_TOKEN, run_cli


@pytest.fixture
def counting(inference):
    return inference


def csv_bytes(texts: list[str]) -> bytes:
    out = io.StringIO()
    out.write("id,text\n")
    for i, t in enumerate(texts):
        out.write(f'{i},"{t}"\n')
    return out.getvalue().encode()


def check_vectors(index, st_model) -> None:
    expected = st_model.encode(index.dataset["text"], normalize_embeddings=True)
    got = index.embeddings.numpy()
    assert ((got * expected).sum(1)).min() >= 0.999


def test_unchanged_source_embeds_nothing_and_changes_embed_only_new_texts(
    hub, alice, counting, repo_name, medicare_texts, st_model
):
    src, dst = f"alice/{repo_name}-src", f"alice/{repo_name}"
    hub.create_repo(src, files={"data/train.csv": csv_bytes(medicare_texts)})
    build = ["build", src, dst, "--column", "text", "--remote", f"{counting.url}/embed"]
    first = run_cli(*build)
    assert first.returncode == 0, first.stderr
    assert sorted(counting.embedded_texts) == sorted(medicare_texts)
    commits = len(hub.commits(dst))

    counting.reset_counters()
    again = run_cli(*build)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert counting.requests == 0 and len(hub.commits(dst)) == commits

    # Edit two rows, remove one, add three.
    edited = list(medicare_texts)
    edited[0] = "How do I replace a lost Medicare card?"
    edited[5] = "Can I get Part B later if I already have Part A?"
    del edited[11]
    edited += ["Does Medicare cover dental care?", "Does Medicare cover glasses?", "What is Medigap?"]
    hub.commit_files(src, {"data/train.csv": csv_bytes(edited)})
    counting.reset_counters()
    changed = run_cli(*build)
    assert changed.returncode == 0, changed.stderr
    assert "15 rows, 384-d (5 embedded, 10 reused)" in changed.stdout
    new_texts = [edited[0], edited[5], *edited[-3:]]
    assert sorted(counting.embedded_texts) == sorted(new_texts)
    assert len(hub.commits(dst)) == commits + 1
    index = hubembed.load(dst)
    assert index.dataset["text"] == edited and medicare_texts[11] not in index.dataset["text"]
    check_vectors(index, st_model)
    assert index.metadata["source"]["revision"] == hub.commits(src)[0]["id"]


def test_a_settings_change_or_force_re_embeds_everything(hub, alice, counting, repo_name, medicare_texts):
    src, dst = f"alice/{repo_name}-src", f"alice/{repo_name}"
    hub.create_repo(src, files={"data/train.csv": csv_bytes(medicare_texts)})
    build = ["build", src, dst, "--column", "text", "--remote", f"{counting.url}/embed"]
    assert run_cli(*build).returncode == 0
    counting.reset_counters()
    truncated = run_cli(*build, "--truncate-dim", "64")
    assert truncated.returncode == 0 and "re-embedding everything" in truncated.stderr
    assert len(counting.embedded_texts) == 13
    counting.reset_counters()
    forced = run_cli(*build, "--truncate-dim", "64", "--force")
    assert forced.returncode == 0 and len(counting.embedded_texts) == 13
    assert hubembed.load(dst).embeddings.shape == (13, 64)


def test_a_build_killed_with_sigkill_leaves_dst_untouched_and_resumes(
    hub, counting, repo_name, medicare_texts, tmp_path, st_model
):
    texts = medicare_texts + [f"{t} (case {i})" for i in range(7) for t in medicare_texts]  # 104
    src, dst = f"alice/{repo_name}-src", f"alice/{repo_name}"
    hub.create_repo(src, files={"data/train.csv": csv_bytes(texts)})
    counting.latency = 0.25
    env = {**os.environ, "HF_TOKEN": ALICE_TOKEN}
    args = [
        "build",
        src,
        dst,
        "--column",
        "text",
        "--remote",
        f"{counting.url}/embed",
        "--batch-size",
        "8",
        "--concurrency",
        "1",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubembed.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while len(counting.embedded_texts) < 48 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_run = list(counting.embedded_texts)
    assert 48 <= len(killed_run) < 104, "the build was not killed mid-way"
    assert not hub.repo_exists(dst)  # DST untouched: no repo, no commit
    time.sleep(0.5)  # the server finishes the request the killed client had in flight

    counting.latency = 0.0
    counting.reset_counters()
    rerun = run_cli(*args, env={"HF_TOKEN": ALICE_TOKEN})
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr
    # Only the batch in flight at the kill may be embedded twice; every finished batch is reused.
    assert len(set(counting.embedded_texts) & set(killed_run)) <= 8
    assert set(counting.embedded_texts) | set(killed_run) == set(texts)
    index = hubembed.load(dst)
    assert index.dataset["text"] == texts
    check_vectors(index, st_model)
    assert len(hub.commits(dst)) == 2  # the repo's first commit, then one with everything


def test_checkpoints_are_cleaned_up_after_a_successful_push(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HUBEMBED_CACHE", str(cache))
    abandoned, recent = cache / "checkpoints" / "abandoned", cache / "checkpoints" / "recent"
    for folder in (abandoned, recent):
        folder.mkdir(parents=True)
        (folder / "run-1-1-d384.sha").write_bytes(b"")
    week_ago = time.time() - 8 * 86400
    os.utime(abandoned, (week_ago, week_ago))
    hubembed.build("sample:medicare-faqs", str(tmp_path / "o"), progress=False)
    # This build's own checkpoint is gone, another build's old one too; a recent one stays.
    assert sorted({p.parent.name for p in cache.rglob("run-*")}) == ["recent"]
