"""The fake Hub in hub_server.py, exercised over HTTP by the real huggingface_hub and datasets clients.

Client code runs in subprocesses (HF_ENDPOINT and HF_HUB_DISABLE_XET are read at import time), each with a
fresh HF_HOME so that nothing is served from a local cache.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.hub_server import HubServer

ALICE, BOB = "hf_alice_token", "hf_bob_token"
DIM, ROWS = 8, 1000

PRELUDE = """
import json, sys
import numpy as np

def emit(obj):
    print("@@RESULT@@" + json.dumps(obj))

def error_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception as e:
        response = getattr(e, "response", None)
        return [type(e).__name__, getattr(response, "status_code", None)]
    return None
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """This module's own server (it shadows conftest's session `hub`), with the users these tests need."""
    server = HubServer(
        tmp_path_factory.mktemp("hub"), users={ALICE: "alice", BOB: "bob"}, orgs={"acme": ["alice"]}
    )
    server.start()
    yield server
    server.stop()
    assert server.errors == [], server.errors[0]


@pytest.fixture
def client(hub, tmp_path_factory):
    """Run a script with the real clients against `hub` in a fresh HF_HOME; return what it `emit`s."""

    def run(code: str) -> dict:
        env = hub.client_env(tmp_path_factory.mktemp("hf_home"))
        script = PRELUDE + textwrap.dedent(code)
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        results = [line for line in proc.stdout.splitlines() if line.startswith("@@RESULT@@")]
        assert proc.returncode == 0 and results, f"client failed:\n{proc.stdout}\n{proc.stderr}"
        return json.loads(results[-1].removeprefix("@@RESULT@@"))

    return run


def embeddings(offset: float) -> np.ndarray:
    return (np.arange(ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM) / 7 + offset).astype(np.float32)


PUSH = """
from datasets import Dataset, Features, List, Value
texts = [f"row {{i}}" for i in range({rows})]
emb = (np.arange({rows} * {dim}, dtype=np.float32).reshape({rows}, {dim}) / 7 + {offset}).astype(np.float32)
features = Features({{"text": Value("string"), "embedding": List(Value("float32"), length={dim})}})
ds = Dataset.from_dict({{"text": texts, "embedding": emb.tolist()}}, features=features)
info = ds.push_to_hub("{repo}", token="{token}")
emit({{"oid": info.oid}})
"""

LOAD = """
from datasets import load_dataset
ds = load_dataset("{repo}", split="train")
emit({{"features": str(ds.features), **ds.to_dict()}})
"""


def test_push_to_hub_then_load_dataset_sees_each_push(hub, client):
    repo = "alice/embedded"
    created = client(f"""
        from huggingface_hub import HfApi
        url = HfApi().create_repo("{repo}", repo_type="dataset", token="{ALICE}")
        again = HfApi().create_repo("{repo}", repo_type="dataset", token="{ALICE}", exist_ok=True)
        emit({{"repo_id": url.repo_id, "again": again.repo_id}})
    """)
    assert created == {"repo_id": repo, "again": repo}
    assert [c["title"] for c in hub.commits(repo)] == ["initial commit"]

    first = client(PUSH.format(rows=ROWS, dim=DIM, offset=0.0, repo=repo, token=ALICE))
    assert hub.commits(repo)[0]["id"] == first["oid"]
    assert any(p.startswith("data/train-") and p.endswith(".parquet") for p in hub.files(repo))
    loaded = client(LOAD.format(repo=repo))
    assert "List(Value('float32'), length=8)" in loaded["features"]
    assert loaded["text"] == [f"row {i}" for i in range(ROWS)]
    np.testing.assert_array_equal(np.asarray(loaded["embedding"], dtype=np.float32), embeddings(0.0))

    second = client(PUSH.format(rows=ROWS, dim=DIM, offset=0.5, repo=repo, token=ALICE))
    assert second["oid"] != first["oid"] and hub.commits(repo)[0]["id"] == second["oid"]
    loaded = client(LOAD.format(repo=repo))
    np.testing.assert_array_equal(np.asarray(loaded["embedding"], dtype=np.float32), embeddings(0.5))
    assert len([p for p in hub.files(repo) if p.endswith(".parquet")]) == 1  # the old shard was replaced


def test_push_to_hub_creates_a_missing_repo(hub, client):
    client(PUSH.format(rows=10, dim=DIM, offset=0.0, repo="acme/auto-created", token=ALICE))
    assert hub.repo_exists("acme/auto-created")
    assert "README.md" in hub.files("acme/auto-created")


def test_hfapi_commits_uploads_listings_and_old_revisions(hub, client):
    repo = "alice/files"
    out = client(f"""
        import io
        import pyarrow as pa, pyarrow.parquet as pq
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download
        api = HfApi(token="{ALICE}")
        api.create_repo("{repo}", repo_type="dataset")
        sha0 = api.dataset_info("{repo}").sha
        buf = io.BytesIO()
        pq.write_table(pa.table({{"x": [1, 2, 3]}}), buf)
        readme = b"---\\nlicense: mit\\ntags:\\n- embeddings\\n---\\n# Card\\n"
        info = api.create_commit("{repo}", repo_type="dataset", commit_message="add data + card", operations=[
            CommitOperationAdd("data/train.parquet", buf.getvalue()),
            CommitOperationAdd("README.md", readme),
        ])
        sha1 = api.dataset_info("{repo}").sha
        kw = dict(path_in_repo="notes.txt", repo_id="{repo}", repo_type="dataset")
        v1, v2 = api.upload_file(path_or_fileobj=b"v1", **kw), api.upload_file(path_or_fileobj=b"v2", **kw)
        def read(rev, name="notes.txt"):
            return open(hf_hub_download("{repo}", name, repo_type="dataset", revision=rev), "rb").read()
        tree = api.list_repo_tree("{repo}", repo_type="dataset", recursive=True, expand=True)
        entries = {{e.path: type(e).__name__ for e in tree}}
        lfs = api.get_paths_info("{repo}", ["data/train.parquet", "missing"], repo_type="dataset")[0].lfs
        stale = error_of(api.create_commit, "{repo}", repo_type="dataset", commit_message="stale",
                         operations=[CommitOperationAdd("late.txt", b"x")], parent_commit=sha1)
        files = api.list_repo_files("{repo}", repo_type="dataset")
        api.create_commit("{repo}", repo_type="dataset", commit_message="drop data",
                          operations=[CommitOperationDelete("data/")])
        emit({{
            "shas": [sha0, info.oid, sha1, v1.oid, v2.oid],
            "files": files,
            "old": read(v1.oid).decode(), "new": read("main").decode(),
            "parquet": pq.read_table(hf_hub_download("{repo}", "data/train.parquet", repo_type="dataset",
                                                     revision=sha1)).to_pydict(),
            "card": api.dataset_info("{repo}").card_data.to_dict(),
            "entries": entries, "lfs_size": lfs.size, "stale": stale,
            "commits": [c.title for c in api.list_repo_commits("{repo}", repo_type="dataset")],
            "after_delete": api.list_repo_files("{repo}", repo_type="dataset"),
        }})
    """)
    sha0, commit_oid, sha1, v1, v2 = out["shas"]
    assert sha0 != sha1 == commit_oid != v1 != v2
    assert all(len(s) == 40 and s == s.lower() for s in out["shas"])
    assert out["files"] == [".gitattributes", "README.md", "data/train.parquet", "notes.txt"]
    assert out["old"] == "v1" and out["new"] == "v2"
    assert out["parquet"] == {"x": [1, 2, 3]}
    assert out["card"]["license"] == "mit" and out["card"]["tags"] == ["embeddings"]
    assert out["entries"]["data"] == "RepoFolder" and out["entries"]["data/train.parquet"] == "RepoFile"
    assert out["lfs_size"] > 0 and out["stale"] == ["HfHubHTTPError", 412]
    upload = "Upload notes.txt with huggingface_hub"
    assert out["commits"] == ["drop data", upload, upload, "add data + card", "initial commit"]
    assert out["after_delete"] == [".gitattributes", "README.md", "notes.txt"]
    assert hub.files(repo, revision=v1)["notes.txt"] == b"v1"


def test_private_repo_is_invisible_without_the_owners_token(hub, client):
    hub.create_repo("alice/secret", private=True, files={"data/train.csv": b"a,b\n1,2\n3,4\n"})
    out = client(f"""
        from datasets import load_dataset
        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi()
        emit({{
            "anon_info": error_of(api.dataset_info, "alice/secret"),
            "anon_download": error_of(hf_hub_download, "alice/secret", "data/train.csv", repo_type="dataset"),
            "anon_load": error_of(load_dataset, "alice/secret", split="train"),
            "bob_info": error_of(api.dataset_info, "alice/secret", token="{BOB}"),
            "owner_private": api.dataset_info("alice/secret", token="{ALICE}").private,
            "owner_rows": load_dataset("alice/secret", split="train", token="{ALICE}").to_dict(),
        }})
    """)
    assert out["anon_info"][0] == out["anon_download"][0] == out["bob_info"][0] == "RepositoryNotFoundError"
    assert out["anon_load"][0] == "DatasetNotFoundError"
    assert out["owner_private"] is True
    assert out["owner_rows"] == {"a": [1, 3], "b": [2, 4]}


def test_gated_repos_missing_repos_and_unknown_revisions(hub, client):
    hub.create_repo("alice/gated", gated=True, files={"data.csv": b"a\n1\n"})
    hub.create_repo("alice/tiny-model", repo_type="model", files={"config.json": b'{"dim": 8}'})
    out = client(f"""
        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi()
        gated = ("alice/gated", "data.csv")
        get = lambda repo, name, **kw: open(hf_hub_download(repo, name, **kw), "rb").read().decode()
        emit({{
            "bob_gated": error_of(hf_hub_download, *gated, repo_type="dataset", token="{BOB}"),
            "anon_gated": error_of(hf_hub_download, *gated, repo_type="dataset"),
            "gated_meta": api.dataset_info("alice/gated").gated,
            "owner_gated": get("alice/gated", "data.csv", repo_type="dataset", token="{ALICE}"),
            "missing_model": error_of(api.model_info, "nope/nope"),
            "bare_model": error_of(api.model_info, "nope", revision="main"),
            "model_sha": api.model_info("alice/tiny-model").sha,
            "model_file": get("alice/tiny-model", "config.json"),
            "bad_revision": error_of(api.dataset_info, "alice/gated", revision="v9"),
            "bad_sha": error_of(hf_hub_download, "alice/tiny-model", "config.json", revision="0" * 40),
            "missing_file": error_of(hf_hub_download, "alice/tiny-model", "nope.bin"),
        }})
    """)
    assert out["bob_gated"] == ["GatedRepoError", 403] and out["anon_gated"] == ["GatedRepoError", 403]
    assert out["gated_meta"] == "auto" and out["owner_gated"] == "a\n1\n"
    assert out["missing_model"] == out["bare_model"] == ["RepositoryNotFoundError", 404]
    assert out["model_sha"] == hub.commits("alice/tiny-model", repo_type="model")[0]["id"]
    assert out["model_file"] == '{"dim": 8}'
    assert out["bad_revision"] == out["bad_sha"] == ["RevisionNotFoundError", 404]
    assert out["missing_file"] == ["RemoteEntryNotFoundError", 404]


def test_write_permissions_and_whoami(hub, client):
    hub.create_repo("bob/public", files={"a.txt": b"a"})
    before = hub.commits("bob/public")
    out = client(f"""
        from huggingface_hub import HfApi
        api = HfApi(token="{ALICE}")
        emit({{
            "whoami": api.whoami(),
            "bad_token": error_of(HfApi(token="hf_nope").whoami),
            "bad_token_info": error_of(HfApi(token="hf_nope").dataset_info, "bob/public"),
            "create_other": error_of(api.create_repo, "bob/mine", repo_type="dataset"),
            "create_anon": error_of(HfApi().create_repo, "alice/anon", repo_type="dataset"),
            "upload_other": error_of(api.upload_file, path_or_fileobj=b"x", path_in_repo="x.txt",
                                     repo_id="bob/public", repo_type="dataset"),
            "delete_other": error_of(api.delete_repo, "bob/public", repo_type="dataset"),
            "create_org": api.create_repo("acme/shared", repo_type="dataset").repo_id,
            "bob_org": error_of(HfApi(token="{BOB}").create_repo, "acme/bobs", repo_type="dataset"),
        }})
    """)
    assert out["whoami"]["name"] == "alice" and out["whoami"]["orgs"] == [{"name": "acme", "type": "org"}]
    assert out["bad_token"] == ["HfHubHTTPError", 401] and out["bad_token_info"] == ["HfHubHTTPError", 401]
    assert out["create_other"] == ["HfHubHTTPError", 403] and out["bob_org"] == ["HfHubHTTPError", 403]
    assert out["upload_other"] == ["HfHubHTTPError", 403] and out["delete_other"] == ["HfHubHTTPError", 403]
    assert out["create_anon"][1] == 401 and not hub.repo_exists("alice/anon")
    assert out["create_org"] == "acme/shared" and hub.repo_exists("acme/shared")
    assert hub.commits("bob/public") == before and not hub.repo_exists("bob/mine")
    uploads = [(path, headers) for method, path, headers in hub.requests_log if method == "PUT"]
    assert uploads and all("Authorization" not in headers for _, headers in uploads)


def test_resolve_ranges_and_percent_encoded_paths(hub):
    sha = hub.create_repo("alice/raw", files={"dir/a b.txt": b"0123456789"})
    base = f"{hub.url}/datasets/alice/raw/resolve"

    def get(url: str, **headers):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    status, headers, body = get(f"{base}/main/dir%2Fa%20b.txt")
    assert (status, body, headers["X-Repo-Commit"]) == (200, b"0123456789", sha)
    assert headers["ETag"].startswith('"') and "X-Xet-Hash" not in headers
    assert get(f"{base}/{sha}/dir/a%20b.txt", Range="bytes=2-4")[::2] == (206, b"234")
    assert get(f"{base}/main/dir/a%20b.txt", Range="bytes=-3")[2] == b"789"
    assert get(f"{base}/main/dir/a%20b.txt", Range="bytes=20-")[0] == 416
    status, headers, _ = get(f"{base}/refs%2Fconvert%2Fparquet/dir/a%20b.txt")
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")
    status, headers, _ = get(f"{base}/main/nope.txt")
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")
    status, headers, _ = get(f"{hub.url}/api/datasets/alice/nope")
    assert (status, headers["X-Error-Code"]) == (404, "RepoNotFound")
    assert hub.files("alice/raw", revision=sha) == {
        ".gitattributes": hub.files("alice/raw")[".gitattributes"],
        "dir/a b.txt": b"0123456789",
    }


def test_patch_clients_in_process_with_concurrent_commits(hub, monkeypatch, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    hub.patch_clients(monkeypatch)
    api, repo = HfApi(token=ALICE), "alice/in-process"
    api.create_repo(repo, repo_type="dataset", private=True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().dataset_info(repo, token=False)

    def upload(i: int) -> str:
        data = f"file {i}".encode()
        return api.upload_file(
            path_or_fileobj=data, path_in_repo=f"c/{i}.txt", repo_id=repo, repo_type="dataset"
        ).oid

    with ThreadPoolExecutor(8) as pool:
        oids = list(pool.map(upload, range(8)))
    assert len(set(oids)) == 8 and len(hub.commits(repo)) == 9
    assert {p for p in hub.files(repo) if p.startswith("c/")} == {f"c/{i}.txt" for i in range(8)}
    path = hf_hub_download(repo, "c/3.txt", repo_type="dataset", cache_dir=tmp_path, token=ALICE)
    assert pathlib.Path(path).read_bytes() == b"file 3"
    api.update_repo_settings(repo, repo_type="dataset", private=False)
    assert HfApi().dataset_info(repo, token=False).sha == hub.commits(repo)[0]["id"]  # public now
