"""The map (issue 16): `hubembed build --map`, `hubembed map DST` and `index.map()` give each row
two coordinates and publish a picture the card shows, in the same commit as the rows; a refresh
keeps the old rows where they were and places new ones by their nearest neighbours; bad input is
refused with DST untouched."""

from __future__ import annotations

import csv
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

import hubembed
from hubembed.cli import main
from hubembed.maps import COLUMNS, IMAGE
from hubembed.projection import MIN_ROWS, project

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("map_cache")


@pytest.fixture(autouse=True)
def shared_cache(own_checkpoints, module_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBEMBED_CACHE", str(module_cache))


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def write_csv(path: Path, texts: list[str]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text"])
        writer.writerows([t] for t in texts)
    return path


def rows(folder: Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    return pq.read_table(sorted((folder / "data").glob("*.parquet"))).to_pydict()


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_build_with_map_to_a_folder(tmp_path, medicare_texts, st_model):
    dst = tmp_path / "faqs"
    result = hubembed.build("sample:medicare-faqs", str(dst), progress=False, map=True)
    table = rows(dst)
    xy = np.column_stack([table[c] for c in COLUMNS])
    assert xy.shape == (13, 2) and np.isfinite(xy).all() and len(np.unique(xy, axis=0)) == 13
    assert table["text"] == medicare_texts  # the rows as they were, the columns added
    assert (dst / IMAGE).read_bytes().startswith(PNG)
    readme = (dst / "README.md").read_text()
    assert "![map](map.png)" in readme
    assert result.metadata["map"]["columns"] == list(COLUMNS)
    # 13 rows: the two principal axes of the vectors, as PCA of the same vectors gives them
    vectors = st_model.encode(medicare_texts, normalize_embeddings=True)
    centred = vectors - vectors.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ axes[:2].T
    for j in range(2):  # an axis' sign is arbitrary
        assert abs(np.corrcoef(xy[:, j], expected[:, j])[0, 1]) > 0.999
    # and the dataset still loads and searches as before
    index = hubembed.load(str(dst))
    assert index.search("How can Medicare help me?", top_k=1)[0]["corpus_id"] == 8


def test_build_with_map_to_the_hub_is_one_commit(capsys, hub, alice, repo_name):
    from huggingface_hub import HfApi, hf_hub_download

    repo = f"alice/{repo_name}"
    code, out, err = cli(capsys, "build", "sample:medicare-faqs", repo, "--map", "-q")
    assert code == 0, err
    api = HfApi(token=alice)
    commits = api.list_repo_commits(repo, repo_type="dataset")
    sha = api.dataset_info(repo).sha
    assert commits[0].commit_id == sha and commits[0].title.startswith("hubembed: embed")
    files = api.list_repo_files(repo, repo_type="dataset", revision=sha)
    assert IMAGE in files and any(f.startswith("data/") for f in files)
    # the commit before the build's (the repo's creation) had neither
    before = api.list_repo_files(repo, repo_type="dataset", revision=commits[1].commit_id)
    assert IMAGE not in before and not any(f.startswith("data/") for f in before)
    readme = Path(hf_hub_download(repo, "README.md", repo_type="dataset", revision=sha)).read_text()
    assert "![map](map.png)" in readme
    png = Path(hf_hub_download(repo, IMAGE, repo_type="dataset", revision=sha)).read_bytes()
    assert png.startswith(PNG)
    index = hubembed.load(repo)
    assert set(COLUMNS) <= set(index.dataset.column_names) and len(index.dataset) == 13


def test_a_refresh_keeps_the_old_places_and_puts_new_rows_by_their_neighbours(tmp_path, medicare_texts):
    source = write_csv(tmp_path / "faqs.csv", medicare_texts[:10])
    dst = tmp_path / "faqs"
    hubembed.build(str(source), str(dst), progress=False, map=True)
    before = rows(dst)
    old = {t: (x, y) for t, x, y in zip(before["text"], before["map_x"], before["map_y"], strict=True)}
    twin = "What is the monthly premium for Medicare Part B?"
    assert twin in old
    new = [f"{twin} And in 2025?", "What is TRICARE ?"]
    write_csv(source, [*medicare_texts[:10], *new])
    result = hubembed.build(str(source), str(dst), progress=False)  # no --map: the map is kept up
    after = rows(dst)
    place = {t: (x, y) for t, x, y in zip(after["text"], after["map_x"], after["map_y"], strict=True)}
    assert all(place[t] == xy for t, xy in old.items())  # the old rows did not move
    xy = np.array(list(old.values()))
    extent = np.ptp(xy, axis=0).max()
    assert np.hypot(*np.subtract(place[new[0]], old[twin])) < 0.1 * extent
    made = result.metadata["map"]
    assert made["kept_rows"] == 10 and made["placed_rows"] == 2
    assert made["method"] == "pca" and made["fitted_rows"] == 10  # the map fitted then, rows added
    assert "![map](map.png)" in (dst / "README.md").read_text()


def test_map_an_existing_build_from_the_cli_on_the_hub(capsys, hub, alice, repo_name, tmp_path):
    from huggingface_hub import HfApi

    repo = f"alice/{repo_name}"
    hubembed.build("sample:medicare-faqs", repo, progress=False)
    api = HfApi(token=alice)
    before = api.dataset_info(repo).sha
    commits = len(api.list_repo_commits(repo, repo_type="dataset"))
    png = tmp_path / "local.png"
    code, out, err = cli(capsys, "map", repo, "--png", str(png))
    assert code == 0, err
    sha = api.dataset_info(repo).sha
    assert f"at {sha}" in out.splitlines()[0]
    assert len(api.list_repo_commits(repo, repo_type="dataset")) == commits + 1
    assert IMAGE in api.list_repo_files(repo, repo_type="dataset", revision=sha)
    assert IMAGE not in api.list_repo_files(repo, repo_type="dataset", revision=before)
    assert png.read_bytes().startswith(PNG)
    index = hubembed.load(repo)
    assert index.metadata["map"]["image"] == IMAGE
    ours = index.map()  # the library's map of the same rows: the same coordinates
    published = np.column_stack([index.dataset[c] for c in COLUMNS])
    assert np.allclose(published, ours.xy, atol=1e-5)


def test_a_library_map_of_a_folder_keeps_what_classify_added(tmp_path):
    dst = tmp_path / "faqs"
    hubembed.build("sample:medicare-faqs", str(dst), progress=False)
    made, where = hubembed.map(str(dst))
    assert where == str(dst) and len(made) == 13
    assert (dst / IMAGE).read_bytes() == made.png
    again, _ = hubembed.map(str(dst))  # mapping again replaces the columns, adds none
    assert np.array_equal(again.xy, made.xy) and list(rows(dst)).count("map_x") == 1
    from hubembed.classify import publish

    publish(str(dst), ["premiums and costs", "signing up"])
    table = rows(dst)
    assert {"label", *COLUMNS} <= set(table)
    assert "![map](map.png)" in (dst / "README.md").read_text()  # the card still shows the map
    assert (dst / IMAGE).read_bytes() == made.png


def test_map_on_a_build_already_up_to_date_adds_only_the_map(tmp_path):
    dst = tmp_path / "faqs"
    hubembed.build("sample:medicare-faqs", str(dst), progress=False)
    before = rows(dst)
    result = hubembed.build("sample:medicare-faqs", str(dst), progress=False, map=True)
    assert not result.up_to_date and result.embedded == 0 and result.metadata["map"]["fitted_rows"] == 13
    after = rows(dst)
    assert all(after[c] == before[c] for c in before) and set(COLUMNS) <= set(after)
    again = hubembed.build("sample:medicare-faqs", str(dst), progress=False, map=True)
    assert again.up_to_date and rows(dst) == after


@pytest.mark.slow
def test_a_chunked_build_maps_each_chunk(tmp_path, medicare_texts):
    source = tmp_path / "faqs.csv"
    with source.open("w", newline="") as fh:
        csv.writer(fh).writerows([("id", "text"), *enumerate(medicare_texts)])
    dst = tmp_path / "chunks"
    result = hubembed.build(str(source), str(dst), progress=False, map=True, chunk=10)
    table = rows(dst)
    assert result.rows > 13 and len(table["map_x"]) == result.rows == len(table["chunk"])
    assert np.isfinite(table["map_x"]).all()


def test_umap_on_a_sample_places_the_rest_by_their_neighbours():
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((4, 64)).astype(np.float32) * 3
    group = np.repeat(np.arange(4), 150)
    vectors = centres[group] + rng.standard_normal((600, 64)).astype(np.float32)
    first = project(vectors, fit_rows=150)
    assert first.method == "umap" and first.fitted == 150 and first.placed == 450
    means = np.stack([first.xy[group == g].mean(axis=0) for g in range(4)])
    nearest = ((first.xy[:, None] - means[None]) ** 2).sum(-1).argmin(axis=1)
    assert (nearest == group).mean() > 0.98  # placed rows sit with their group too


def test_too_few_rows_for_a_map(capsys, tmp_path, hub, alice, repo_name, medicare_texts):
    source = write_csv(tmp_path / "few.csv", medicare_texts[: MIN_ROWS - 1])
    dst = tmp_path / "few"
    code, _, err = cli(capsys, "build", str(source), str(dst), "--map", "-q")
    assert code == 2 and f"at least {MIN_ROWS} rows" in err and "drop --map" in err
    assert not dst.exists() and not list(tmp_path.glob(".few*"))
    code, _, err = cli(capsys, "build", str(source), f"alice/{repo_name}", "--map", "-q")
    assert code == 2 and f"at least {MIN_ROWS} rows" in err
    from huggingface_hub import HfApi

    assert not HfApi(token=alice).repo_exists(f"alice/{repo_name}", repo_type="dataset")


def test_bad_map_input(capsys, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "map", str(other))
    assert code == 2 and "not a hubembed build" in err
    assert tree(other) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}

    code, _, err = cli(
        capsys, "build", "sample:medicare-faqs", str(tmp_path / "b"), "--map", "--layout", "blog"
    )
    assert code == 2 and "--layout blog" in err and not (tmp_path / "b").exists()

    blog = tmp_path / "blog"
    hubembed.build("sample:medicare-faqs", str(blog), layout="blog", progress=False)
    untouched = tree(blog)
    code, _, err = cli(capsys, "map", str(blog))
    assert code == 2 and "--layout blog" in err and tree(blog) == untouched

    monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn not installed
    code, _, err = cli(capsys, "map", str(blog))
    assert code == 2 and "pip install 'hubembed[map]'" in err and tree(blog) == untouched
    code, _, err = cli(capsys, "build", "sample:medicare-faqs", str(tmp_path / "c"), "--map")
    assert code == 2 and "hubembed[map]" in err and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_a_umap_build_and_its_refresh_from_the_cli(capsys, tmp_path):
    subjects = [
        "Medicare premiums and costs",
        "signing up for Medicare",
        "hospital coverage",
        "prescription drugs",
    ]
    asks = ["How much is", "Tell me about", "Questions on", "Help with", "Rules for", "Deadlines for",
            "Forms for", "News on", "Changes to", "Limits of", "Appeals about", "Mail about",
            "Phone help on", "A guide to", "Basics of", "Myths about"]  # fmt: skip
    texts = [f"{ask} {subject}?" for subject in subjects for ask in asks]
    source = write_csv(tmp_path / "many.csv", texts)
    dst = tmp_path / "many"
    code, _, err = cli(capsys, "build", str(source), str(dst), "--map", "-q")
    assert code == 0, err
    meta = hubembed.load(str(dst)).metadata["map"]
    assert meta["method"] == "umap" and meta["fitted_rows"] == 64
    before = rows(dst)
    write_csv(source, [*texts, "How much is Medicare premiums and costs in 2025?"])
    assert cli(capsys, "build", str(source), str(dst), "-q")[0] == 0
    after = rows(dst)
    assert after["map_x"][:64] == before["map_x"] and after["map_y"][:64] == before["map_y"]
    twin = np.array([before["map_x"][0], before["map_y"][0]])
    new = np.array([after["map_x"][64], after["map_y"][64]])
    spread = np.ptp(np.column_stack([before["map_x"], before["map_y"]]), axis=0).max()
    assert np.hypot(*(new - twin)) < 0.15 * spread
