"""The fake inference server answers like the real APIs, with real vectors, and its faults fire once."""

from __future__ import annotations

import base64
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from tests.inference_server import DEFAULT_MODEL_ID, Fault, InferenceServer

TOKEN = "hf_test_token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GATED = "meta-llama/Gated-Embedder"
ROUTER = f"/models/{DEFAULT_MODEL_ID}/pipeline/feature-extraction"
TEXTS = [
    "How can Medicare help me?",
    "What is the deductible for Part B?",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "Where do I sign up?",
    "Paris is the capital of France.",
]


@pytest.fixture(scope="module")
def server() -> Iterator[InferenceServer]:
    srv = InferenceServer(token=TOKEN, max_batch=8, gated_models={GATED})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> Iterator[None]:
    if "server" not in request.fixturenames:
        yield
        return
    srv: InferenceServer = request.getfixturevalue("server")
    srv.reset_counters()
    yield
    assert srv.pending_faults == 0, "a test left injected faults unconsumed"
    srv.always(None)
    srv.latency = 0.0
    srv.too_large_status = 413


@pytest.fixture(scope="module")
def reference(server: InferenceServer) -> np.ndarray:
    return np.asarray(server.model.encode(TEXTS, normalize_embeddings=True))


def post(
    server: InferenceServer, path: str, body: Any, headers: dict[str, str] | None = None
) -> requests.Response:
    return requests.post(
        server.url + path, json=body, headers=AUTH if headers is None else headers, timeout=30
    )


def cosines(got: Any, want: np.ndarray) -> np.ndarray:
    got = np.asarray(got, dtype=np.float64)
    return (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)


@pytest.mark.parametrize("path", [ROUTER, "/embed", "/"])
def test_feature_extraction_gives_the_local_model_vectors(
    server: InferenceServer, reference: np.ndarray, path: str
) -> None:
    r = post(server, path, {"inputs": TEXTS, "options": {"wait_for_model": True}})
    assert r.status_code == 200, r.text
    vectors = r.json()
    assert len(vectors) == len(TEXTS) and all(len(v) == 384 for v in vectors)
    assert cosines(vectors, reference).min() >= 0.9999
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    single = post(server, path, {"inputs": TEXTS[0]}).json()  # a single string comes back unnested
    assert isinstance(single[0], float) and cosines([single], reference[:1])[0] >= 0.9999
    assert server.embedded_texts == TEXTS + TEXTS[:1] and server.batch_sizes == [6, 1]


def test_openai_route_is_shuffled_but_indexed(server: InferenceServer, reference: np.ndarray) -> None:
    r = post(
        server, "/v1/embeddings", {"input": TEXTS, "model": DEFAULT_MODEL_ID, "encoding_format": "float"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == DEFAULT_MODEL_ID
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(TEXTS)
    indices = [d["index"] for d in body["data"]]
    assert sorted(indices) == list(range(len(TEXTS))) and indices != sorted(indices)
    assert all(d["object"] == "embedding" for d in body["data"])
    ordered = [d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])]
    assert cosines(ordered, reference).min() >= 0.9999
    assert cosines([d["embedding"] for d in body["data"]], reference).min() < 0.99  # unsorted is wrong

    b64 = post(server, "/v1/embeddings", {"input": TEXTS[:2], "encoding_format": "base64"}).json()
    first = next(d for d in b64["data"] if d["index"] == 0)
    decoded = np.frombuffer(base64.b64decode(first["embedding"]), dtype="<f4")
    assert cosines([decoded], reference[:1])[0] >= 0.9999


def test_openai_shuffle_can_be_turned_off() -> None:
    with InferenceServer(shuffle_openai=False) as srv:  # the model is shared, so this is quick
        body = requests.post(srv.url + "/v1/embeddings", json={"input": TEXTS}, timeout=30).json()
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))


def test_dimensions_normalize_and_prompt_name(server: InferenceServer, reference: np.ndarray) -> None:
    raw = np.asarray(server.model.encode(TEXTS[:3]))
    short = np.asarray(post(server, "/embed", {"inputs": TEXTS[:3], "dimensions": 64}).json())
    want = raw[:, :64] / np.linalg.norm(raw[:, :64], axis=1, keepdims=True)
    assert short.shape == (3, 64) and np.allclose(short, want, atol=1e-5)
    unnormalized = post(server, ROUTER, {"inputs": TEXTS[:3], "normalize": False}).json()
    assert np.allclose(unnormalized, raw, atol=1e-5)
    openai = post(server, "/v1/embeddings", {"input": TEXTS[:3], "dimensions": 32}).json()
    assert all(len(d["embedding"]) == 32 for d in openai["data"])
    assert post(server, "/embed", {"inputs": TEXTS[:2], "dimensions": 0}).status_code == 422

    prompted = post(server, ROUTER, {"inputs": TEXTS[:2], "prompt_name": "query"})
    assert prompted.status_code == 200 and cosines(prompted.json(), reference[:2]).min() >= 0.9999
    bad = post(server, ROUTER, {"inputs": TEXTS[:2], "prompt_name": "no-such-prompt"})
    assert bad.status_code == 422 and "no-such-prompt" in bad.json()["error"]


def test_truncation_options(server: InferenceServer) -> None:
    long_text = " ".join(["alpha"] * 300 + ["omega"] * 300)
    right = post(server, "/embed", {"inputs": [long_text], "truncate": True}).json()
    left = post(
        server, "/embed", {"inputs": [long_text], "truncate": True, "truncation_direction": "Left"}
    ).json()
    assert cosines(left, np.asarray(right))[0] < 0.99  # the other end of the text was kept
    assert post(server, "/embed", {"inputs": [long_text], "truncation_direction": "up"}).status_code == 422
    server.reject_long_inputs = True
    try:
        r = post(server, "/embed", {"inputs": [long_text]})
        assert r.status_code == 413 and "must have less than 256 tokens" in r.json()["error"]
        assert post(server, "/embed", {"inputs": [long_text], "truncate": True}).status_code == 200
    finally:
        server.reject_long_inputs = False


@pytest.mark.parametrize(
    "body",
    [{"inputs": []}, {"inputs": [1, 2]}, {"inputs": ["ok", None]}, {"inputs": {"text": "x"}}, {"text": "x"}],
)
def test_invalid_inputs_are_422(server: InferenceServer, body: dict[str, Any]) -> None:
    r = post(server, "/embed", body)
    assert r.status_code == 422 and "error" in r.json()
    key = "input" if "inputs" in body else "text"
    assert post(server, "/v1/embeddings", {key: body.get("inputs", "x") or []}).status_code == 422


def test_unparsable_json_is_422(server: InferenceServer) -> None:
    r = requests.post(server.url + "/embed", data=b"{not json", headers=AUTH, timeout=30)
    assert r.status_code == 422 and "error" in r.json()


def test_batch_above_max_batch_is_refused(server: InferenceServer) -> None:
    texts = [f"text {i}" for i in range(9)]
    r = post(server, ROUTER, {"inputs": texts})
    assert r.status_code == 413
    assert r.json()["error"] == "batch size 9 > maximum allowed batch size 8"
    server.too_large_status = 422
    assert post(server, "/v1/embeddings", {"input": texts}).status_code == 422
    assert post(server, ROUTER, {"inputs": texts[:8]}).status_code == 200
    assert server.embedded_texts == texts[:8]


def test_auth_gated_and_unknown_models(server: InferenceServer) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = post(server, ROUTER, {"inputs": TEXTS}, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"] == "Invalid credentials in Authorization header"
    gated = post(server, f"/models/{GATED}/pipeline/feature-extraction", {"inputs": TEXTS})
    assert gated.status_code == 403 and gated.json()["error"].startswith(
        f"Access to model {GATED} is restricted"
    )
    assert post(server, "/v1/embeddings", {"input": TEXTS, "model": GATED}).status_code == 403
    unknown = post(server, "/models/nobody/no-model/pipeline/feature-extraction", {"inputs": TEXTS})
    assert unknown.status_code == 404 and unknown.json()["error"] == "Model nobody/no-model does not exist"
    assert post(server, "/no/such/route", {"inputs": TEXTS}).status_code == 404
    assert server.embedded_texts == []


def _check_fault(kind: str, r: requests.Response | None, error: Exception | None) -> None:
    if kind == "drop":
        assert r is None and isinstance(error, requests.ConnectionError)
        return
    assert r is not None, error
    body = r.json()
    if kind == "loading":
        assert r.status_code == 503 and body["estimated_time"] == 2.5
        assert body["error"] == f"Model {DEFAULT_MODEL_ID} is currently loading"
    elif kind == "rate_limited":
        assert r.status_code == 429 and body == {"error": "Rate limit reached"}
        assert r.headers["Retry-After"] == "3" and r.headers["RateLimit"] == '"api";r=0;t=3'
    elif kind.startswith("server_error"):
        assert r.status_code == int(kind[-3:]) and "error" in body
    elif kind == "bad_count":
        assert r.status_code == 200 and len(body) == 2
    elif kind == "bad_dim":
        assert r.status_code == 200 and [len(v) for v in body] == [383, 384, 384]
    elif kind == "bad_nan":
        assert r.status_code == 200 and math.isnan(body[0][0]) and not math.isnan(body[0][1])


FAULTS = {
    "loading": Fault.loading(estimated_time=2.5),
    "rate_limited": Fault.rate_limited(retry_after=3, ratelimit=True),
    "server_error_500": Fault.server_error(500),
    "server_error_502": Fault.server_error(502),
    "server_error_504": Fault.server_error(504),
    "drop": Fault.drop(),
    "bad_count": Fault.bad_vectors("count"),
    "bad_dim": Fault.bad_vectors("dim"),
    "bad_nan": Fault.bad_vectors("nan"),
}


@pytest.mark.parametrize("kind", list(FAULTS))
def test_each_fault_fires_once_then_service_resumes(
    server: InferenceServer, reference: np.ndarray, kind: str
) -> None:
    server.inject(FAULTS[kind])
    r, error = None, None
    try:
        r = post(server, ROUTER, {"inputs": TEXTS[:3]})
    except requests.RequestException as exc:
        error = exc
    _check_fault(kind, r, error)
    assert server.embedded_texts == []  # a faulty answer embedded nothing
    again = post(server, ROUTER, {"inputs": TEXTS[:3]})
    assert again.status_code == 200 and cosines(again.json(), reference[:3]).min() >= 0.9999
    assert server.requests == 2 and server.embedded_texts == TEXTS[:3]
    assert server.statuses == [0 if r is None else r.status_code, 200]


def test_faults_fire_in_order_on_any_route(server: InferenceServer) -> None:
    server.inject(
        Fault.loading(1.0), Fault.rate_limited(retry_after=1), Fault.server_error(502), Fault.drop()
    )
    codes = [post(server, path, {"inputs": TEXTS[:1]}).status_code for path in (ROUTER, "/embed", "/")]
    with pytest.raises(requests.ConnectionError):
        post(server, "/v1/embeddings", {"input": TEXTS[:1]})
    assert codes == [503, 429, 502] and post(server, "/embed", {"inputs": TEXTS[:1]}).status_code == 200
    assert server.statuses == [503, 429, 502, 0, 200]


def test_bad_vectors_on_openai_route(server: InferenceServer) -> None:
    server.inject(Fault.bad_vectors("count"))
    assert len(post(server, "/v1/embeddings", {"input": TEXTS[:3]}).json()["data"]) == 2


def test_delay_fault_then_normal_answer(server: InferenceServer) -> None:
    server.inject(Fault.delay(0.6))
    with pytest.raises(requests.Timeout):
        requests.post(server.url + "/embed", json={"inputs": ["slow"]}, headers=AUTH, timeout=0.2)
    deadline = time.monotonic() + 10
    while not server.statuses and time.monotonic() < deadline:  # the server still answers, late
        time.sleep(0.05)
    assert post(server, "/embed", {"inputs": ["fast"]}).status_code == 200
    assert server.embedded_texts == ["slow", "fast"]


def test_always_persists_until_cleared(server: InferenceServer) -> None:
    server.always(Fault.loading(estimated_time=0.1))
    assert [post(server, "/embed", {"inputs": ["x"]}).status_code for _ in range(4)] == [503] * 4
    server.always(None)
    assert post(server, "/embed", {"inputs": ["x"]}).status_code == 200
    assert server.embedded_texts == ["x"] and server.requests == 5


def test_requests_overlap_under_latency(server: InferenceServer) -> None:
    server.latency = 0.5
    results: list[int] = []

    def client(i: int) -> None:
        with requests.Session() as session:
            r = session.post(server.url + ROUTER, json={"inputs": [f"text {i}"]}, headers=AUTH, timeout=30)
            results.append(r.status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    assert results == [200] * 4
    assert server.max_in_flight >= 4 and elapsed < 1.5, (server.max_in_flight, elapsed)
    assert sorted(server.embedded_texts) == [f"text {i}" for i in range(4)]


def test_server_is_quiet(server: InferenceServer, capfd: pytest.CaptureFixture[str]) -> None:
    post(server, "/embed", {"inputs": ["quiet"]})
    server.inject(Fault.drop())
    with pytest.raises(requests.ConnectionError):
        post(server, "/embed", {"inputs": ["quiet"]})
    post(server, "/nowhere", {})
    assert capfd.readouterr().err == ""


def test_stop_closes_the_port() -> None:
    srv = InferenceServer()
    url = srv.start()
    with requests.Session() as session:  # a kept-alive connection must not outlive stop()
        assert session.get(url + "/health", timeout=5).status_code == 200
        srv.stop()
        with pytest.raises(requests.ConnectionError):
            session.post(url + "/embed", json={"inputs": ["x"]}, timeout=5)
    assert srv.requests == 1
