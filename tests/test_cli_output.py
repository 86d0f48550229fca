"""What a new user sees (issue 12): bad arguments refused before anything loads, local paths
told apart from Hub ids, one line per fact, -q/-v anywhere, search output that fits a terminal
and JSON that keeps a hit's fields apart from the row's."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

import hubembed
from hubembed import models
from hubembed.cli import main
from tests.conftest import MEDICARE_QUERY, run_cli


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


@pytest.fixture
def no_model(monkeypatch):
    """Within it, loading a model fails the test: the error had to come before."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad argument was refused")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr("hubembed.backends.load_model", refuse)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    dst = tmp_path_factory.mktemp("built") / "faqs"
    hubembed.build("sample:medicare-faqs", str(dst), progress=False)
    return dst


@pytest.mark.parametrize("where", ["./nope", "/tmp/does/not/exist", "a/b/c"])
def test_search_of_a_missing_local_path_says_so(capsys, where):
    code, out, err = cli(capsys, "search", where, "hello")
    assert code == 2 and f"no such folder or file: {where}" in err


def test_a_mistyped_local_folder_is_not_retried_on_an_unreachable_hub(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {"HF_ENDPOINT": dead, "HF_HOME": str(tmp_path / "hf")}
    result = run_cli("search", "faqs-embeded", "card", env=env, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "there is no local folder or file 'faqs-embeded' either" in result.stderr
    assert "Retrying" not in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["search", "{dst}", "q", "-k", "0"], "-k/--top-k must be at least 1 (got 0)"),
        (["search", "{dst}", "q", "-k", "-2"], "-k/--top-k must be at least 1 (got -2)"),
        (["search", "{dst}", "q", "--device", "cuda"], "no CUDA GPU is available here"),
        (
            ["build", "sample:medicare-faqs", "{out}", "--truncate-dim", "0"],
            "--truncate-dim must be at least 1",
        ),
        (["build", "sample:medicare-faqs", "{out}", "--prompt-name", "nope"], "no prompt named 'nope'"),
        (["build", "sample:medicare-faqs", "{out}", "--device", "cuda"], "no CUDA GPU is available here"),
    ],
)
def test_bad_arguments_are_refused_before_any_model_loads(capsys, no_model, built, tmp_path, args, expected):
    code, out, err = cli(capsys, *(a.format(dst=built, out=tmp_path / "o") for a in args))
    assert code == 2 and expected in err
    assert not (tmp_path / "o").exists()


def test_a_different_source_into_an_existing_dst_is_refused_without_force(capsys, tmp_path, built):
    other = tmp_path / "other.csv"
    other.write_text("text\nOne question\nAnother one\n")
    before = sorted(p.read_bytes() for p in built.rglob("*") if p.is_file())
    code, out, err = cli(capsys, "build", str(other), str(built))
    assert code == 2
    assert f"{built} holds a build of 'sample:medicare-faqs', not of '{other}'" in err
    assert "pass --force to replace it" in err
    assert sorted(p.read_bytes() for p in built.rglob("*") if p.is_file()) == before
    copy = tmp_path / "copy"
    assert cli(capsys, "-q", "build", "sample:medicare-faqs", str(copy))[0] == 0
    assert cli(capsys, "-q", "build", str(other), str(copy), "--force")[0] == 0
    assert hubembed.load(str(copy)).dataset["text"] == ["One question", "Another one"]


def test_counts_and_rows_read_as_a_person_would_say_them(capsys, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "ok"}\n{"text": "fine"}\n{"text": ""}\n')
    code, out, err = cli(capsys, "build", str(src), str(tmp_path / "o"))
    assert code == 2 and "has 1 null or empty text (row 3, counting from 1)" in err
    code, out, err = cli(capsys, "build", str(src), str(tmp_path / "o"), "--skip-empty")
    assert code == 0 and "skipped 1 row with null or empty 'text'" in err
    assert "2 rows, 384-d (2 embedded, 0 reused)" in out


def test_quiet_and_verbose_work_after_the_subcommand_and_quiet_keeps_results(capsys, tmp_path):
    dst = str(tmp_path / "o")
    code, out, err = cli(capsys, "build", "sample:medicare-faqs", dst, "-q")
    assert code == 0 and out.startswith(f"{dst}: 13 rows, 384-d") and err == ""
    code, out, err = cli(capsys, "build", "sample:medicare-faqs", dst)
    # One line, once: no log lines repeating it, no notice about the packaged model.
    assert out == f"{dst}: up to date with sample:medicare-faqs@sha256:233cb (13 rows); nothing to do\n"
    assert err == ""
    code, out, err = cli(capsys, "build", "sample:medicare-faqs", dst, "-v")
    assert code == 0 and "packaged copy" in err
    code, out, err = cli(capsys, "search", dst, MEDICARE_QUERY, "-k", "1", "-q")
    assert code == 0 and out.startswith("  1  0.7565") and err == ""
    helped = run_cli("build", "--help")
    assert "-q, --quiet" in helped.stdout and "-v, --verbose" in helped.stdout
    both = run_cli("-q", "build", "sample:medicare-faqs", dst, "-v")
    assert both.returncode == 2 and "cannot be used together" in both.stderr


def test_a_fresh_build_says_what_it_did_once(capsys, tmp_path):
    dst = str(tmp_path / "o")
    code, out, err = cli(capsys, "build", "sample:medicare-faqs", dst)
    assert code == 0 and out == f"{dst}: 13 rows, 384-d (13 embedded, 0 reused), at {dst}\n"
    assert "13" not in err  # the counts are said once, on stdout


def test_long_fields_are_shortened_in_the_human_format_only(capsys, tmp_path):
    long_text = "Medicare " + " ".join(f"word{i}" for i in range(5000))
    src = tmp_path / "in.csv"
    src.write_text(f"text,score\n{long_text},7\nWhat is Medicare?,8\n")
    dst = str(tmp_path / "o")
    assert cli(capsys, "-q", "build", str(src), dst, "--column", "text")[0] == 0
    code, out, err = cli(capsys, "search", dst, "What is Medicare?", "-k", "2")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and all(len(line) <= 200 for line in lines)
    assert any(line.endswith("…") for line in lines)
    code, out, err = cli(capsys, "search", dst, "What is Medicare?", "-k", "2", "--json")
    hits = json.loads(out)
    # The row's own "score" column stays in the row; the hit's score is the similarity.
    assert {h["row"]["text"] for h in hits} == {long_text, "What is Medicare?"}
    assert {h["row"]["score"] for h in hits} == {7, 8}
    assert all(0 < h["score"] <= 1.0001 for h in hits) and [h["rank"] for h in hits] == [1, 2]


def test_the_first_search_in_a_program_prints_nothing_and_the_index_says_what_it_is(capfd, built):
    index = hubembed.load(str(built))
    capfd.readouterr()
    index.search(MEDICARE_QUERY, top_k=1)
    out = capfd.readouterr()
    assert out.out == "" and "Loading weights" not in out.err
    assert repr(index) == (
        f"EmbeddedDataset('{built}', rows=13, dimension=384, model='sentence-transformers/all-MiniLM-L6-v2', "
        "source='sample:medicare-faqs@sha256:233cb')"
    )


def test_blog_layout_search_says_why_there_is_no_text_and_a_layout_change_says_so(capsys, tmp_path):
    dst = str(tmp_path / "o")
    assert cli(capsys, "-q", "build", "sample:medicare-faqs", dst, "--layout", "blog")[0] == 0
    code, out, err = cli(capsys, "search", dst, MEDICARE_QUERY, "-k", "1")
    assert code == 0 and out.split() == ["1", "0.7565", "#8"]
    assert "stores only the vectors" in err
    code, out, err = cli(capsys, "build", "sample:medicare-faqs", dst)
    assert code == 0 and "the layout changed (blog -> default)" in err
    assert "settings changed" not in err


def test_the_card_carries_what_the_hub_indexes_and_no_dead_link(hub, alice, repo_name):
    import yaml
    from huggingface_hub import hf_hub_download

    src = f"alice/{repo_name}-src"
    hub.create_repo(src, files={"data/train.csv": b"text\nWhat is Part A?\nWhat is Part B?\n"})
    hubembed.build(src, f"alice/{repo_name}", progress=False)
    card = Path(hf_hub_download(f"alice/{repo_name}", "README.md", repo_type="dataset")).read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["pretty_name"] == f"Embeddings of {src}"
    assert meta["source_datasets"] == [f"extended|{src}"]
    assert meta["task_categories"] == ["feature-extraction", "sentence-similarity"]
    assert meta["size_categories"] == ["n<1K"]
    assert "](http" not in card  # no link to a page that may not exist


def test_texts_longer_than_the_model_reads_are_counted_on_every_build_and_in_the_card(
    capsys, tmp_path, st_model
):
    words = " ".join(f"coverage{i}" for i in range(300))  # far past 256 tokens
    texts = [
        "What is Medicare?",
        words,
        "é" * 300,  # 300 characters, 600 bytes, yet only a few tokens: counted, not cut
        "Part B coverage " * 120,  # 360 tokens
        "a " * 250,  # 250 words: 252 tokens with [CLS] and [SEP], within 256
    ]
    src = tmp_path / "in.csv"
    src.write_text("text\n" + "".join(f"{t}\n" for t in texts))
    lengths = [len(st_model.tokenizer(t)["input_ids"]) for t in texts]
    expected = sum(n > st_model.max_seq_length for n in lengths)
    assert expected == 2 and st_model.max_seq_length == 256
    dst = tmp_path / "o"
    code, out, err = cli(capsys, "build", str(src), str(dst))
    assert code == 0 and "2 of 5 texts were longer than 256 tokens and were truncated" in err
    index = hubembed.load(str(dst))
    assert index.metadata["truncated_texts"] == 2 and index.metadata["max_seq_length"] == 256
    assert "| Truncated | 2 of 5 texts were longer than 256 tokens" in (dst / "README.md").read_text()
    # A rebuild that reuses every vector says it again.
    src.write_text("text\n" + "".join(f"{t}\n" for t in [*texts, "One more question"]))
    code, out, err = cli(capsys, "build", str(src), str(dst))
    assert code == 0 and "(1 embedded, 5 reused)" in out
    assert "2 of 6 texts were longer than 256 tokens and were truncated" in err
