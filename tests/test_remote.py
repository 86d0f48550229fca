"""Remote embedding (issue 3) against a local server that answers like the HF Inference API,
TEI and /v1/embeddings, backed by the real model, with faults injected."""

from __future__ import annotations

import csv
import re
import time

import numpy as np
import pytest

import hubembed
from hubembed.cli import main
from hubembed.errors import RemoteError, TimeBudgetExceeded
from hubembed.retry import Deadline, RetryableError, RetryPolicy, call_with_retry
from tests.conftest import ALICE_TOKEN
from tests.inference_server import Fault

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture
def fresh(inference):
    return inference


@pytest.fixture
def corpus(tmp_path, medicare_texts):
    texts = medicare_texts + [f"{t} (case {i})" for i in range(7) for t in medicare_texts]  # 104 distinct
    path = tmp_path / "faqs.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text"])
        writer.writerows([t] for t in texts)
    return str(path), texts


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_a_build_survives_every_fault_with_every_row_once_in_order(fresh, corpus, tmp_path, st_model, capsys):
    src, texts = corpus
    fresh.inject(
        Fault.loading(estimated_time=0.3),
        Fault.rate_limited(retry_after=0),
        Fault.server_error(500),
        Fault.drop(),
        Fault.server_error(502),
        Fault.bad_vectors("count"),
        Fault.bad_vectors("nan"),
        Fault.server_error(504),
        Fault.bad_vectors("dim"),
    )
    url = f"{fresh.url}/embed"
    # Batches of 16 are refused (max_batch 8): the client splits them and remembers the size.
    code = main(
        ["build", src, str(tmp_path / "out"), "--remote", url, "--batch-size", "16", "--concurrency", "3"]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert fresh.pending_faults == 0
    assert "waiting 0 s: model loading" in err and "rate limited" in err and "server error 502" in err
    assert "the server refused 16 texts at once: sending batches of 8" in err
    index = hubembed.load(str(tmp_path / "out"))
    assert index.dataset["text"] == texts  # every row once, in order
    expected = st_model.encode(texts, normalize_embeddings=True)
    assert cosines(index.embeddings.numpy(), expected).min() >= 0.999
    assert set(fresh.embedded_texts) == set(texts)
    assert max(fresh.batch_sizes) <= 8
    meta = index.metadata
    assert meta["model"] == MODEL and meta["model_origin"] == f"remote ({url})" and meta["normalized"] is True


def test_openai_compatible_answers_are_put_back_in_input_order(fresh, corpus, tmp_path, st_model):
    src, texts = corpus
    assert fresh.shuffle_openai
    hubembed.build(
        src, str(tmp_path / "out"), remote=f"{fresh.url}/v1/embeddings", batch_size=8, progress=False
    )
    index = hubembed.load(str(tmp_path / "out"))
    expected = st_model.encode(texts, normalize_embeddings=True)
    assert cosines(index.embeddings.numpy(), expected).min() >= 0.999


def test_router_route_and_settings_sent_to_the_server(fresh, tmp_path, monkeypatch, st_model, medicare_texts):
    monkeypatch.setenv("HUBEMBED_INFERENCE_BASE", fresh.url)
    code = main(
        ["-q", "build", "sample:medicare-faqs", str(tmp_path / "o"), "--remote", "--truncate-dim", "128"]
    )
    assert code == 0
    bodies = [body for _, body in fresh.received]
    assert all(b["dimensions"] == 128 and b["normalize"] is True and b["truncate"] is True for b in bodies)
    assert all(path == f"/models/{MODEL}/pipeline/feature-extraction" for path, _ in fresh.received)
    index = hubembed.load(str(tmp_path / "o"))
    expected = st_model.encode(medicare_texts, truncate_dim=128, normalize_embeddings=True)
    assert cosines(index.embeddings.numpy(), expected).min() >= 0.999
    # Text queries use the model the card records, locally, with the same settings.
    query = st_model.encode(["How can Medicare help me?"], truncate_dim=128, normalize_embeddings=True)[0]
    want = list(np.argsort(-(expected @ query))[:3])
    assert [h["corpus_id"] for h in index.search("How can Medicare help me?", top_k=3)] == want


def test_requests_really_are_in_flight_concurrently(fresh, corpus, tmp_path):
    src, _ = corpus
    fresh.latency = 0.3
    hubembed.build(
        src, str(tmp_path / "o"), remote=f"{fresh.url}/embed", batch_size=8, concurrency=4, progress=False
    )
    assert fresh.max_in_flight == 4  # several at once, and never more than asked


@pytest.mark.parametrize(
    ("setup", "url_path", "expected", "code"),
    [
        ("token", "/embed", "the token was refused; log in with `hf auth login` or set the HF_TOKEN", 2),
        ("none", "/models/nobody/nothing/pipeline/feature-extraction", "no model 'nobody/nothing' there", 2),
        ("gated", f"/models/{MODEL}/pipeline/feature-extraction", "if it is gated, accept its licence at", 2),
        ("none", "/embed --prompt-name nope", "the request was rejected", 2),
    ],
    ids=["bad-token", "unknown-model", "gated", "bad-prompt"],
)
def test_errors_that_retrying_cannot_fix_fail_fast(fresh, tmp_path, capsys, setup, url_path, expected, code):
    if setup == "token":
        fresh.token = "hf_server_side_token"
    if setup == "gated":
        fresh.gated_models = {MODEL}
    path, *extra = url_path.split(" ")
    model = ["--model", "nobody/nothing"] if "nobody" in path else []
    rc = main(
        [
            "build",
            "sample:medicare-faqs",
            str(tmp_path / "o"),
            "--batch-size",
            "8",
            "--concurrency",
            "1",
            "--remote",
            fresh.url + path,
            *model,
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert rc == code and expected in err and "Traceback" not in err
    assert fresh.requests == 1  # no retries
    assert not (tmp_path / "o").exists()


def test_the_time_budget_stops_cleanly_and_the_rerun_resumes(fresh, corpus, tmp_path, capsys):
    """A server that stops answering: the job stops at its budget, keeps what it embedded,
    and the same command later embeds only the rest."""
    src, texts = corpus
    dst = tmp_path / "o"
    args = [
        "build",
        src,
        str(dst),
        "--remote",
        f"{fresh.url}/embed",
        "--batch-size",
        "8",
        "--concurrency",
        "1",
    ]
    fresh.always(Fault.loading(estimated_time=0.4), after=5)  # 5 batches answered, then "loading" forever
    start = time.monotonic()
    rc = main([*args, "--time-budget", "5"])
    elapsed = time.monotonic() - start
    fresh.always(None)
    err = capsys.readouterr().err
    assert rc == 1
    # The last request is cut short by the budget, or waits for the "loading" model: either way
    # the job stops at the budget. On a busy machine fewer than 5 batches may have made it.
    match = re.search(
        r"the time budget of 5 s ran out while the server kept answering: (.+?); "
        r"(\d+) texts were embedded and saved: run the same command again to continue",
        err,
    )
    assert match, err
    assert match.group(1) in ("model loading (about 0 s)", "the request timed out")
    saved = int(match.group(2))
    assert 0 < saved <= 40 and saved % 8 == 0
    assert elapsed < 20
    assert not dst.exists()
    # A request the client gave up on may still be running on the server: let it finish first.
    for _ in range(100):
        if not fresh._in_flight:
            break
        time.sleep(0.1)
    first = set(fresh.embedded_texts)
    fresh.reset_counters()
    assert main(["-q", *args]) == 0
    again = fresh.embedded_texts  # exactly the texts not saved, each once
    assert len(again) == len(set(again)) == 104 - saved and set(again) | first == set(texts)
    assert hubembed.load(str(dst)).dataset["text"] == texts


def test_the_token_goes_in_the_header_and_nowhere_else(fresh, tmp_path, capsys, monkeypatch):
    fresh.token = ALICE_TOKEN
    monkeypatch.setenv("HF_TOKEN", ALICE_TOKEN)
    assert (
        main(["-v", "build", "sample:medicare-faqs", str(tmp_path / "o"), "--remote", f"{fresh.url}/embed"])
        == 0
    )
    out = capsys.readouterr()
    assert ALICE_TOKEN not in out.out + out.err
    assert all(ALICE_TOKEN.encode() not in p.read_bytes() for p in (tmp_path / "o").rglob("*") if p.is_file())


def test_retry_policy_unit():
    policy = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.02, wait_max=5)
    assert policy.delay(1, RetryableError("x", retry_after=999)) == 5  # server waits are capped
    assert 0.005 <= policy.delay(4, RetryableError("x")) <= 0.02  # exponential, capped, jittered
    calls = []

    def flaky(timeout):
        calls.append(timeout)
        raise RetryableError("server error 500")

    with pytest.raises(RemoteError, match="gave up after 3 tries: server error 500"):
        call_with_retry(flaky, policy, Deadline(None))
    assert len(calls) == 3
    with pytest.raises(TimeBudgetExceeded):
        call_with_retry(
            lambda t: (_ for _ in ()).throw(RetryableError("slow", retry_after=1)), policy, Deadline(0.5)
        )


def test_ratelimit_header_and_teis_422_for_a_batch_too_large(fresh, tmp_path, capsys):
    """Rate limits announced only by the IETF RateLimit header (t=seconds), and TEI answering 422
    (not 413) above its max_client_batch_size: both handled, every row kept."""
    fresh.too_large_status = 422
    fresh.inject(Fault.rate_limited(retry_after=None, ratelimit=True))
    try:
        args = ["build", "sample:medicare-faqs", str(tmp_path / "o"), "--remote", f"{fresh.url}/embed"]
        code = main([*args, "--batch-size", "13", "--concurrency", "1"])
    finally:
        fresh.too_large_status = 413
    err = capsys.readouterr().err
    assert code == 0, err
    assert "waiting 1 s: rate limited" in err
    assert "the server refused 13 texts at once: sending batches of 6" in err
    assert hubembed.load(str(tmp_path / "o")).embeddings.shape == (13, 384)
