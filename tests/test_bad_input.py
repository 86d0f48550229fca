"""Bad input: a clear message saying what is wrong and how to fix it, exit code 2, no traceback,
and the destination untouched (no repo created, no commit, no folder)."""

from __future__ import annotations

import pytest

from hubembed.cli import main
from tests.conftest import BOB_TOKEN


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out + out.err


@pytest.fixture
def csv_file(tmp_path):
    def write(text: str, name: str = "in.csv"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


@pytest.mark.parametrize(
    ("content", "args", "expected"),
    [
        ("q,a\nhi,there\n", ["--column", "nope"], "column 'nope' does not exist; available columns: q, a"),
        ("q,n\nhi,1\n", ["--column", "n"], "column 'n' holds int64, not text; text columns: q"),
        ("q,a\nhi,there\n", [], "several text columns: q, a; choose one with --column"),
        ("n,m\n1,2\n", [], "no text column"),
        ("text\n", [], "the source dataset is empty"),
    ],
    ids=["missing-column", "non-text-column", "ambiguous", "no-text", "empty"],
)
def test_bad_local_source(capsys, tmp_path, csv_file, content, args, expected):
    dst = tmp_path / "out"
    code, output = cli(capsys, "build", csv_file(content), str(dst), *args)
    assert code == 2
    assert expected in output
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if "hubembed" in p.name]  # no staging left behind


MIXED_JSONL = '{"text": "ok"}\n{"text": ""}\n{"text": "fine"}\n{"text": null}\n{"text": "  "}\n'


def test_null_and_empty_texts_are_refused_naming_the_rows(capsys, tmp_path, csv_file):
    dst = tmp_path / "out"
    code, output = cli(capsys, "build", csv_file(MIXED_JSONL, "in.jsonl"), str(dst))
    assert code == 2
    assert (
        "column 'text' has 3 null or empty texts (rows 2, 4, 5, counting from 1); fix them in the source, "
        "or pass --skip-empty" in output
    )
    assert not dst.exists()


def test_skip_empty_leaves_those_rows_out_and_says_so(capsys, tmp_path, csv_file):
    import hubembed

    dst = tmp_path / "out"
    code, output = cli(capsys, "build", csv_file(MIXED_JSONL, "in.jsonl"), str(dst), "--skip-empty")
    assert code == 0 and "skipped 3 rows" in output
    index = hubembed.load(str(dst))
    assert index.dataset["text"] == ["ok", "fine"]
    assert index.metadata["skipped_rows"] == 3 and index.metadata["rows"] == 2


def test_source_that_does_not_exist(capsys, tmp_path, alice):
    code, output = cli(capsys, "build", "alice/no-such-dataset", str(tmp_path / "out"))
    assert code == 2 and "dataset 'alice/no-such-dataset' was not found on the Hub" in output
    code, output = cli(capsys, "build", "./missing.csv", str(tmp_path / "out"))
    assert code == 2 and "neither an existing file or folder nor a Hub dataset id" in output


def test_private_source_without_a_token_says_how_to_log_in(capsys, hub, tmp_path, repo_name, monkeypatch):
    hub.create_repo(f"alice/{repo_name}", private=True, files={"data.csv": b"text\nhello\n"})
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code, output = cli(capsys, "build", f"alice/{repo_name}", str(tmp_path / "out"))
    assert code == 2
    assert "not found on the Hub (if it is private, log in with `hf auth login` or set the HF_TOKEN" in output
    assert not (tmp_path / "out").exists()


def test_gated_source(capsys, hub, tmp_path, repo_name, monkeypatch):
    hub.create_repo(f"bob/{repo_name}", gated=True, files={"data.csv": b"text\nhello\n"})
    monkeypatch.setenv("HF_TOKEN", "hf_alice_" + "s3cr3t" * 4)
    code, output = cli(capsys, "build", f"bob/{repo_name}", str(tmp_path / "out"))
    assert code == 2 and "is gated: accept its conditions at" in output


def test_model_that_does_not_exist(capsys, tmp_path):
    code, output = cli(capsys, "build", "sample:medicare-faqs", str(tmp_path / "o"), "--model", "nobody/nope")
    assert code == 2 and "model 'nobody/nope' was not found on the Hub" in output
    assert not (tmp_path / "o").exists()


def test_gated_model_says_to_accept_the_licence(capsys, hub, tmp_path, alice):
    """Seed 000: EmbeddingGemma is gated; its licence must be accepted on its page first."""
    if not hub.repo_exists("google/embeddinggemma-300m", repo_type="model"):
        hub.create_repo(
            "google/embeddinggemma-300m",
            repo_type="model",
            gated=True,
            files={"modules.json": b"[]", "config.json": b"{}"},
        )
    code, output = cli(
        capsys, "build", "sample:medicare-faqs", str(tmp_path / "o"), "--model", "google/embeddinggemma-300m"
    )
    assert code == 2
    assert "model 'google/embeddinggemma-300m' is gated: accept its licence at" in output
    assert "/google/embeddinggemma-300m" in output


def test_local_destination_holding_something_else_is_left_alone(capsys, tmp_path):
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "notes.txt").write_text("precious")
    code, output = cli(capsys, "build", "sample:medicare-faqs", str(dst))
    assert code == 2 and "already holds other files (notes.txt) and is not a hubembed build" in output
    assert [p.name for p in dst.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    code, output = cli(capsys, "build", "sample:medicare-faqs", str(tmp_path / "file"))
    assert code == 2 and "is a file" in output


def test_failed_rebuild_leaves_the_previous_build_intact(capsys, tmp_path):
    dst = tmp_path / "out"
    assert cli(capsys, "-q", "build", "sample:medicare-faqs", str(dst))[0] == 0
    before = {p.relative_to(dst): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    code, output = cli(capsys, "build", "sample:medicare-faqs", str(dst), "--prompt-name", "nope")
    assert code == 2 and "the model has no prompt named 'nope'; its prompts: 'query', 'document'" in output
    after = {p.relative_to(dst): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_hub_destination_you_cannot_write_to(capsys, hub, tmp_path, alice, repo_name):
    code, output = cli(capsys, "build", "sample:medicare-faqs", f"bob/{repo_name}")
    assert code == 2
    assert "cannot write to bob/" in output and "the token belongs to 'alice'" in output
    assert not hub.repo_exists(f"bob/{repo_name}")


def test_hub_destination_without_a_token(capsys, hub, monkeypatch, repo_name):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code, output = cli(capsys, "build", "sample:medicare-faqs", f"alice/{repo_name}")
    assert code == 2 and "needs a write token: log in with `hf auth login` or set the HF_TOKEN" in output
    assert not hub.repo_exists(f"alice/{repo_name}")


def test_hub_destination_with_a_refused_token(capsys, hub, monkeypatch, repo_name):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    code, output = cli(capsys, "build", "sample:medicare-faqs", f"alice/{repo_name}")
    assert code == 2 and "the Hub refused the token (invalid or expired)" in output
    assert "hf_not_a_real_token" not in output
    assert not hub.repo_exists(f"alice/{repo_name}")


def test_hub_destination_holding_another_dataset_is_left_alone(capsys, hub, alice, repo_name):
    repo = f"alice/{repo_name}"
    hub.create_repo(repo, files={"data/train.csv": b"text\nkeep me\n"})
    commits = len(hub.commits(repo))
    code, output = cli(capsys, "build", "sample:medicare-faqs", repo)
    assert code == 2 and "already holds other files (data/train.csv) and is not a hubembed build" in output
    assert len(hub.commits(repo)) == commits


def test_a_push_that_fails_after_creating_the_repo_leaves_no_repo_behind(capsys, hub, monkeypatch, repo_name):
    """The Hub failing the commit (a 500 here) after create_repo: the new, empty repo is removed."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    def fail(self, *args, **kwargs):
        request = httpx2.Request("POST", "http://hub/commit")
        raise HfHubHTTPError("500 Server Error", response=httpx2.Response(500, request=request))

    monkeypatch.setenv("HF_TOKEN", BOB_TOKEN)
    monkeypatch.setattr(HfApi, "create_commit", fail)
    code, output = cli(capsys, "build", "sample:medicare-faqs", f"bob/{repo_name}")
    assert code == 1
    assert f"pushing to bob/{repo_name} failed (HTTP 500); nothing was published" in output
    assert not hub.repo_exists(f"bob/{repo_name}")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--prompt-name", "query", "--prompt", "x"], "not allowed with argument"),
        (["--layout", "weird"], "invalid choice: 'weird'"),
        (["--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
        (["--workers", "0"], "--workers must be at least 1 (got 0)"),
        (["--device", "cuda"], "no CUDA GPU is available here"),
        (["--truncate-dim", "999"], "--truncate-dim 999 must be between 1 and 384"),
        (["--backend", "onnx-int8", "--device", "cuda:0"], "--backend onnx-int8 runs on the CPU"),
        (["--backend", "onnx", "--remote", "http://127.0.0.1:9/embed"], "drop one of them"),
    ],
)
def test_bad_options(capsys, tmp_path, args, expected):
    try:
        code = main(["build", "sample:medicare-faqs", str(tmp_path / "o"), *args])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out = capsys.readouterr()
    assert code == 2 and expected in out.out + out.err
    assert not (tmp_path / "o").exists()


def test_private_build_into_an_existing_public_repo_is_refused(capsys, hub, alice, repo_name):
    repo = f"alice/{repo_name}"
    assert cli(capsys, "-q", "build", "sample:medicare-faqs", repo)[0] == 0
    commits = len(hub.commits(repo))
    code, output = cli(capsys, "build", "sample:medicare-faqs", repo, "--private", "--force")
    assert code == 2 and f"dataset {repo} exists and is public" in output and "drop --private" in output
    assert len(hub.commits(repo)) == commits
    private = f"{repo}-private"
    assert cli(capsys, "-q", "build", "sample:medicare-faqs", private, "--private")[0] == 0
    assert cli(capsys, "-q", "build", "sample:medicare-faqs", private, "--private", "--force")[0] == 0
    from huggingface_hub import HfApi

    assert HfApi().dataset_info(private).private is True
