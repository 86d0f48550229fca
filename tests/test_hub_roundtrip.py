"""Hub to Hub through the real huggingface_hub and datasets clients, over HTTP, against the local Hub."""

from __future__ import annotations

import io

import pytest

from hubembed.config import sample_path
from tests.conftest import ALICE_TOKEN, MEDICARE_QUERY, parse_hits, run_cli
from tests.test_medicare import assert_blog_top5


def faqs_csv(extra: list[str] = ()) -> bytes:
    text = sample_path("medicare-faqs").read_bytes()
    return text + "".join(f"{line}\n" for line in extra).encode()


@pytest.fixture
def source(hub, repo_name) -> str:
    repo = f"alice/{repo_name}-src"
    hub.create_repo(repo, files={"data/train.csv": faqs_csv()})
    return repo


def test_build_from_hub_to_hub_then_load_dataset_and_search(hub, alice, source, repo_name, medicare_texts):
    from datasets import load_dataset

    import hubembed

    dst = f"alice/{repo_name}"
    built = run_cli("build", source, dst)
    assert built.returncode == 0, built.stderr
    commits = hub.commits(dst)
    assert len(commits) == 2  # the repo's initial commit, then ONE commit with everything
    files = hub.files(dst)
    assert "README.md" in files and any(f.startswith("data/") and f.endswith(".parquet") for f in files)

    ds = load_dataset(dst, split="train")
    assert ds["text"] == medicare_texts and len(ds[0]["embedding"]) == 384

    index = hubembed.load(dst)
    meta = index.metadata
    src_sha = hub.commits(source)[0]["id"]
    assert meta["source"] == {
        "kind": "hub",
        "id": source,
        "revision": src_sha,
        "config": "default",
        "split": "train",
        "column": "text",
    }
    assert_blog_top5(index.search(MEDICARE_QUERY, top_k=5))
    found = run_cli("-q", "search", dst, MEDICARE_QUERY, "--json")
    assert_blog_top5(parse_hits(found.stdout))


def test_second_build_makes_a_new_commit_that_downstream_loads_see(hub, alice, source, repo_name):
    from datasets import load_dataset

    import hubembed

    dst = f"alice/{repo_name}"
    hubembed.build(source, dst, progress=False)
    first = hub.commits(dst)[0]["id"]
    assert hubembed.load(dst).embeddings.shape == (13, 384)  # its decoded vectors now cached
    hub.commit_files(source, {"data/train.csv": faqs_csv(["Does Medicare cover dental care?"])})
    hubembed.build(source, dst, progress=False)
    assert len(hub.commits(dst)) == 3 and hub.commits(dst)[0]["id"] != first
    assert len(load_dataset(dst, split="train")) == 14
    index = hubembed.load(dst)
    assert index.embeddings.shape == (14, 384)
    assert index.search("dentist", top_k=1)[0]["row"]["text"] == "Does Medicare cover dental care?"
    # The old commit is still there for anyone who pinned it.
    assert hubembed.load(dst, revision=first).embeddings.shape == (13, 384)


def test_private_destination_is_refused_without_a_token(hub, alice, source, repo_name, monkeypatch):
    import hubembed
    from hubembed.errors import SourceError

    dst = f"alice/{repo_name}"
    assert run_cli("-q", "build", source, dst, "--private").returncode == 0
    assert hubembed.load(dst).embeddings.shape == (13, 384)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(SourceError, match="HF_TOKEN"):
        hubembed.load(dst)
    denied = run_cli("search", dst, MEDICARE_QUERY)
    assert denied.returncode == 2 and "not found" in denied.stderr and "Traceback" not in denied.stderr


def test_organisation_destination_and_hf_uri(hub, alice, source, repo_name):
    built = run_cli("-q", "build", source, f"hf://datasets/team/{repo_name}")
    assert built.returncode == 0, built.stderr
    assert hub.repo_exists(f"team/{repo_name}")


def test_blog_shaped_repo_without_a_card_loads_and_searches(hub, st_model, medicare_texts, repo_name):
    """ITESM/embedded_faqs_medicare holds only embeddings.csv: 13 rows, columns "0".."383"."""
    import pandas as pd

    import hubembed

    vectors = st_model.encode(medicare_texts)
    buffer = io.StringIO()
    pd.DataFrame(vectors).to_csv(buffer, index=False)
    repo = f"alice/{repo_name}"
    hub.create_repo(repo, files={"embeddings.csv": buffer.getvalue().encode()})
    index = hubembed.load(repo)
    assert index.metadata == {} and index.embeddings.shape == (13, 384)
    assert_blog_top5(index.search(MEDICARE_QUERY, top_k=5))


def test_token_never_appears_in_output_or_pushed_files(hub, source, repo_name, tmp_path):
    env = {"HF_TOKEN": ALICE_TOKEN}
    dst = f"alice/{repo_name}"
    runs = [
        run_cli("-v", "build", source, dst, env=env),
        run_cli("-v", "build", source, dst, "--layout", "blog", env=env),
        run_cli("-v", "search", dst, MEDICARE_QUERY, "--json", env=env),
        run_cli("-v", "build", source, f"bob/{repo_name}", env=env),  # refused: its error too
        run_cli("-v", "build", "alice/missing-src", str(tmp_path / "x"), env=env),
        run_cli("-v", "build", source, dst, "--model", "nobody/missing-model", env=env),
    ]
    assert [r.returncode for r in runs] == [0, 0, 0, 2, 2, 2]
    for r in runs:
        assert ALICE_TOKEN not in r.stdout + r.stderr
        assert "s3cr3t" not in r.stdout + r.stderr
    for commit in hub.commits(dst):
        for name, content in hub.files(dst, revision=commit["id"]).items():
            assert ALICE_TOKEN.encode() not in content, name


def test_revision_config_and_split_of_a_hub_source(hub, alice, repo_name):
    import hubembed

    card = (
        "---\nconfigs:\n"
        "- config_name: en\n  data_files:\n  - split: train\n    path: en/train.csv\n  - split: test\n    path: en/test.csv\n"
        "- config_name: fr\n  data_files:\n  - split: train\n    path: fr/train.csv\n---\n"
    )
    src = f"alice/{repo_name}-src"
    first = hub.create_repo(
        src,
        files={
            "README.md": card.encode(),
            "en/train.csv": b"text\nHow do I sign up?\nWhat is Part B?\n",
            "en/test.csv": b"text\nWhat is TRICARE?\n",
            "fr/train.csv": b"text\nComment m'inscrire ?\n",
        },
    )
    hub.commit_files(src, {"en/train.csv": b"text\nHow do I sign up?\nWhat is Part B?\nWhat is Part D?\n"})
    dst = f"alice/{repo_name}"

    def built(*args: str) -> dict:
        result = run_cli("-q", "build", src, dst, *args)
        assert result.returncode == 0, result.stderr
        return hubembed.load(dst).metadata

    meta = built("--config", "en")  # two splits: train is taken, and the log says so
    assert (meta["source"]["config"], meta["source"]["split"], meta["rows"]) == ("en", "train", 3)
    meta = built("--config", "en", "--split", "test")
    assert (meta["source"]["split"], meta["rows"]) == ("test", 1)
    assert hubembed.load(dst).dataset["text"] == ["What is TRICARE?"]
    meta = built("--config", "fr")
    assert (meta["source"]["config"], meta["rows"]) == ("fr", 1)
    meta = built("--config", "en", "--revision", first)
    assert (meta["source"]["revision"], meta["rows"]) == (first, 2)
    bad = run_cli("build", src, dst, "--config", "de")
    assert bad.returncode == 2 and "cannot read dataset" in bad.stderr and "Traceback" not in bad.stderr


def test_search_with_the_hub_out_of_reach_says_so(tmp_path):
    """Nothing cached and nothing listening: a message and exit 1, not a traceback."""
    import socket

    with socket.socket() as s:  # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {"HF_ENDPOINT": dead, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": "1"}
    result = run_cli("search", "alice/anything", "a question", env=env)
    assert result.returncode == 1, result.stderr
    assert f"cannot reach the Hub at {dead}" in result.stderr and "Traceback" not in result.stderr


def test_a_loaded_repo_loads_again_offline_from_the_caches(hub, alice, source, repo_name, monkeypatch):
    """Downloaded once, a hubembed repo loads offline: shards from the HF cache, vectors mapped."""
    from huggingface_hub import constants

    import hubembed
    import hubembed.vectors

    dst = f"alice/{repo_name}"
    hubembed.build(source, dst, progress=False)
    online = hubembed.load(dst)
    want = online.embeddings.clone()
    assert online._dataset is None  # shards, not load_dataset
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hubembed.vectors, "decode_batches", None)  # a second decode would fail
    seen = len(hub.requests_log)
    offline = hubembed.load(dst)
    assert torch_equal(offline.embeddings, want)
    assert offline.search(want[8], top_k=1)[0]["corpus_id"] == 8
    assert len(hub.requests_log) == seen  # not one request


def torch_equal(a, b) -> bool:
    return bool((a == b).all()) and a.shape == b.shape
