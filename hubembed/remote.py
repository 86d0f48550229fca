"""Remote embedders: the HF Inference API (router), Inference Endpoints and TEI, and any
OpenAI-compatible /v1/embeddings server. One request per batch; the pipeline retries,
splits and runs requests concurrently, guided by the errors raised here."""

from __future__ import annotations

import email.utils
import re
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _hub, config
from .embedder import Embedder, EmbedSettings
from .errors import AuthError, ModelError, RemoteError
from .retry import BatchTooLargeError, RetryableError

if TYPE_CHECKING:
    import requests

APIS = ("hf", "openai")


def router_url(model: str) -> str:
    """The HF router's feature-extraction route for MODEL (base from HUBEMBED_INFERENCE_BASE)."""
    return f"{config.inference_base()}/models/{model}/pipeline/feature-extraction"


def detect_api(url: str) -> str:
    return "openai" if url.rstrip("/").endswith("/v1/embeddings") else "hf"


class RemoteEmbedder(Embedder):
    """Embeds through HTTP. ``api`` is "hf" (``{"inputs": [...]}`` -> vectors) or "openai"."""

    def __init__(
        self,
        url: str,
        *,
        model: str,
        settings: EmbedSettings,
        api: str | None = None,
        token: str | None = None,
        concurrency: int = 4,
    ) -> None:
        import requests

        self.url = url
        self.api = api or detect_api(url)
        if self.api not in APIS:
            raise ModelError(f"unknown API {self.api!r}; use one of {', '.join(APIS)}")
        self.model = model
        self.settings = settings
        self.dimension: int | None = None  # learnt from the first answer
        self.max_concurrency = concurrency
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=max(concurrency, 1))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["Content-Type"] = "application/json"
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"
        # Servers have honoured the wait-for-model hint as a header, a body option, or neither.
        self._session.headers["x-wait-for-model"] = "true"

    def _body(self, texts: list[str]) -> dict[str, Any]:
        s = self.settings
        if s.prompt:  # no API takes a literal prompt: prepend it, as sentence-transformers does
            texts = [s.prompt + t for t in texts]
        if self.api == "openai":
            body: dict[str, Any] = {"input": texts, "model": self.model, "encoding_format": "float"}
            if s.truncate_dim:
                body["dimensions"] = s.truncate_dim
            return body
        body = {
            "inputs": texts,
            "normalize": s.normalize,
            "truncate": True,
            "options": {"wait_for_model": True},
        }
        if s.prompt_name:
            body["prompt_name"] = s.prompt_name
        if s.truncate_dim:
            body["dimensions"] = s.truncate_dim
        return body

    def embed_batch(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
        import requests

        try:
            response = self._session.post(self.url, json=self._body(texts), timeout=timeout or 120.0)
        except requests.Timeout as exc:
            raise RetryableError("the request timed out") from exc
        except requests.ConnectionError as exc:
            raise RetryableError("the connection failed or was dropped") from exc
        if response.status_code != 200:
            raise self._error(response, len(texts))
        try:
            payload = response.json()
        except ValueError as exc:
            raise RetryableError("the server answered with invalid JSON") from exc
        return self._vectors(payload, len(texts))

    def _vectors(self, payload: Any, n: int) -> np.ndarray:
        if self.api == "openai":
            items = payload.get("data") if isinstance(payload, dict) else None
            if not isinstance(items, list) or sorted(i.get("index", -1) for i in items) != list(range(n)):
                raise RetryableError(f"the server's answer does not hold one vector per input ({n} sent)")
            payload = [item["embedding"] for item in sorted(items, key=lambda i: i["index"])]
        try:
            vectors = np.asarray(payload, dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise RetryableError("the server's vectors have different lengths") from exc
        if vectors.ndim != 2 or vectors.shape[0] != n:
            raise RetryableError(f"the server answered with shape {vectors.shape} for {n} texts")
        if not np.isfinite(vectors).all():
            raise RetryableError("the server answered with NaN or infinite numbers")
        vectors = self._apply_settings(vectors)
        if self.dimension is not None and vectors.shape[1] != self.dimension:
            raise RetryableError(f"the server changed dimension from {self.dimension} to {vectors.shape[1]}")
        self.dimension = vectors.shape[1]
        return vectors

    def _apply_settings(self, vectors: np.ndarray) -> np.ndarray:
        """Truncate and normalise here too: some servers ignore `dimensions` or `normalize`."""
        s = self.settings
        if s.truncate_dim and vectors.shape[1] > s.truncate_dim:
            vectors = np.ascontiguousarray(vectors[:, : s.truncate_dim])
        if s.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def _error(self, response: requests.Response, n: int) -> Exception:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {}
        message = (
            str(body.get("error") or body.get("message") or response.reason or "")
            if isinstance(body, dict)
            else ""
        )
        where = f"{self.url} answered {status}"
        if status == 503 and isinstance(body, dict) and "estimated_time" in body:
            estimated = float(body.get("estimated_time") or 10.0)
            return RetryableError(
                f"model loading (about {estimated:.0f} s)", retry_after=estimated, waiting=True
            )
        if status == 429:
            return RetryableError("rate limited", retry_after=_retry_after(response), waiting=True)
        if status in (408, 424, 500, 502, 503, 504):
            return RetryableError(f"server error {status}", retry_after=_retry_after(response))
        if status == 413 or (
            status == 422 and re.search(r"batch|too (large|long|many)|payload", message, re.I)
        ):
            return BatchTooLargeError(f"{where} for a batch of {n}: {message}", status=status)
        if status == 401:
            return AuthError(f"{where}: the token was refused; {_hub.LOGIN_HINT}")
        if status == 403:
            return ModelError(
                f"{where}: access to {self.model!r} is restricted; if it is gated, accept its licence at "
                f"{_hub.repo_url(self.model, 'model')}, and check that the token may call this endpoint"
            )
        if status == 404:
            return ModelError(f"{where}: no model {self.model!r} there; check --model and the URL")
        if status in (400, 422):
            return ModelError(
                f"{where}: the request was rejected ({message}); check that {self.model!r} is an "
                "embedding (feature-extraction) model and that the options suit it"
            )
        return RemoteError(f"{where}: {message}", status=status)


def _retry_after(response: requests.Response) -> float | None:
    """Seconds from Retry-After (seconds or a date) or the RateLimit header's reset (t=)."""
    value = response.headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value)
            if parsed is not None:
                return max(0.0, parsed.timestamp() - time.time())
    match = re.search(r"(?:^|[;,\s])(?:t|reset)=(\d+(?:\.\d+)?)", response.headers.get("RateLimit", ""))
    return float(match.group(1)) if match else None
