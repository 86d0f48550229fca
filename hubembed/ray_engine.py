"""The Ray engine: a block's missing texts embedded by a pool of Ray actors.

The build's loop (hubembed/stream.py) reads the source, hashes, reuses, checkpoints and writes
shards in this process, whichever the engine; this one only spreads the embedding over WORKERS
actors of plain Ray core. Each actor makes its own embedder (the model loads there, on that
node's device: a driver without a GPU drives workers with GPUs) and embeds chunks of texts with
the same retry policy, request timeout and time budget as the local engine. This process keeps
every ready actor busy with a couple of chunks, hands each finished chunk to ``run.on_batch``
(the loop checkpoints there) and puts the vectors back in input order. Ray restarts an actor
that dies and retries its chunk.

Before any actor is asked for, the request is checked against the cluster's nodes: one that no
node can hold fails at once with what is lacking, rather than waiting forever. When nothing
finishes for ``stall_seconds``, Ray's view (free and total resources, actor states) is logged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from .batching import embed_all
from .engines import EmbedRun, Engine, MakeEmbedder
from .errors import HubembedError, RemoteError, TimeBudgetExceeded, UsageError
from .retry import RetryPolicy

log = logging.getLogger("hubembed")

IN_FLIGHT = 2  # chunks queued on each actor: the next one is there when the last one finishes
POLL_SECONDS = 2.0  # longest wait on Ray before looking at the deadline and the stall clock
TASK_RETRIES = 3  # a chunk whose actor died this many times fails the build (a poison pill)
CHUNK_BATCHES = (4, 16)  # a chunk is this many batches, at least and at most


def require_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise UsageError("--engine ray needs Ray: pip install 'hubembed[ray]'") from exc
    return ray


class _Cancelled(Exception):
    pass


class _Worker:
    """One actor: one embedder for its life, one chunk of texts per call."""

    def __init__(self, make: MakeEmbedder) -> None:
        self.embedder, self.query_meta = make()

    def info(self) -> tuple[dict[str, Any], int | None, int | None]:
        return self.query_meta, self.embedder.texts_per_call, self.embedder.dimension

    def embed(self, texts: list[str], batch_size: int, policy: RetryPolicy, end: float | None) -> np.ndarray:
        import ray

        context = ray.get_runtime_context()

        def stop_if_cancelled(start: int, vectors: np.ndarray) -> None:
            if context.is_canceled():  # ray.cancel only flags a running task of a plain actor
                raise _Cancelled()

        embedder = self.embedder
        return embed_all(
            embedder,
            texts,
            batch_size=embedder.texts_per_call or batch_size,
            progress=False,
            policy=policy,
            # Wall-clock, so the budget counts from when the driver set it, not from when this
            # chunk left the actor's queue.
            time_budget=None if end is None else end - time.time(),
            on_batch=stop_if_cancelled,
        )

    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())


@dataclass
class _Chunk:
    start: int
    end: int
    actor: int


class RayEngine(Engine):
    """Embeds on WORKERS Ray actors, each holding GPUS_PER_WORKER GPUs and the model made by MAKE.

    Ray starts (or, with ADDRESS or RAY_ADDRESS, is joined) on the first ``embed``: a build that
    reuses every vector starts none.
    """

    def __init__(
        self,
        make: MakeEmbedder,
        *,
        workers: int,
        gpus_per_worker: float = 0,
        address: str | None = None,
        stall_seconds: float = 120.0,
    ) -> None:
        # WORKERS and GPUS_PER_WORKER were checked with the other options (hubembed/options.py).
        self._make = make
        self.workers = workers
        self.gpus_per_worker = float(gpus_per_worker)
        self.address = address
        self.stall_seconds = stall_seconds
        self._ray: Any = None
        self._started_ray = False
        self._actors: list[Any] = []
        self._starting: dict[Any, int] = {}  # info() call -> actor, until the actor answers
        self._ready: list[int] = []
        self._texts_per_call: int | None = None
        self._dimension: int | None = None
        self.cpus_per_worker: float | None = None

    # -- the pool -----------------------------------------------------------------------------

    def _start(self) -> Any:
        if self._ray is not None:
            return self._ray
        ray = require_ray()
        if not ray.is_initialized():
            # RAY_ADDRESS is read by ray.init itself when ADDRESS is None.
            ray.init(
                address=self.address,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
            self._started_ray = True
        try:
            nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
            self.cpus_per_worker = place(nodes, self.workers, self.gpus_per_worker)
        except BaseException:
            if self._started_ray:
                ray.shutdown()
                self._started_ray = False
            raise
        self._ray = ray
        actor_class = ray.remote(_Worker).options(
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,
            max_restarts=-1,  # preemption, OOM: the actor comes back (on another node if need be)
            max_task_retries=TASK_RETRIES,  # and the chunk it held is run again
        )
        log.info(
            "starting %d Ray actors (%g CPU, %g GPU each)",
            self.workers,
            self.cpus_per_worker,
            self.gpus_per_worker,
        )
        self._actors = [actor_class.remote(self._make) for _ in range(self.workers)]
        self._starting = {actor.info.remote(): i for i, actor in enumerate(self._actors)}
        return ray

    def _on_ready(self, ref: Any) -> None:
        index = self._starting.pop(ref)
        query_meta, texts_per_call, dimension = self._get(ref)
        if not self._ready:
            self.query_meta, self._texts_per_call, self._dimension = query_meta, texts_per_call, dimension
        self._ready.append(index)

    def close(self) -> None:
        ray, self._ray = self._ray, None
        if ray is None:
            return
        for actor in self._actors:
            with contextlib.suppress(Exception):  # already gone, or Ray is
                ray.kill(actor, no_restart=True)
        self._actors, self._starting, self._ready = [], {}, []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()  # stops a local Ray we started; leaves a cluster we only joined

    # -- embedding ----------------------------------------------------------------------------

    def embed(self, texts: list[str], run: EmbedRun) -> np.ndarray:
        if not texts:
            return np.empty((0, self._dimension or 0), dtype=np.float32)
        ray = self._start()
        queue: deque[tuple[int, int]] | None = None  # chunked once an actor says its batch size
        pending: dict[Any, _Chunk] = {}
        load = [0] * len(self._actors)
        out: np.ndarray | None = None
        done = 0
        last_news = last_warning = time.monotonic()
        try:
            while queue is None or queue or pending:
                remaining = run.deadline.remaining()
                if remaining is not None and remaining <= 0:
                    reason = f"the time budget of {run.deadline.budget:g} s ran out"
                    raise TimeBudgetExceeded(
                        f"{reason}; {done} of {len(texts)} texts were embedded", reason=reason
                    )
                if queue is None and self._ready:
                    queue = deque(self._chunks(len(texts), run.batch_size))
                if queue:
                    end = None if remaining is None else time.time() + remaining
                    for index in sorted(self._ready, key=lambda i: load[i]):
                        while queue and load[index] < IN_FLIGHT:
                            start, stop = queue.popleft()
                            ref = self._actors[index].embed.remote(
                                texts[start:stop], run.batch_size, run.policy, end
                            )
                            pending[ref] = _Chunk(start, stop, index)
                            load[index] += 1
                now = time.monotonic()
                timeout = max(0.01, max(last_news, last_warning) + self.stall_seconds - now)
                timeout = min(timeout, POLL_SECONDS, remaining if remaining is not None else POLL_SECONDS)
                finished, _ = ray.wait([*pending, *self._starting], num_returns=1, timeout=timeout)
                for ref in finished:
                    last_news = time.monotonic()
                    if ref in self._starting:
                        self._on_ready(ref)
                        continue
                    chunk = pending.pop(ref)
                    load[chunk.actor] -= 1
                    vectors = np.asarray(self._get(ref, run, done, len(texts)), dtype=np.float32)
                    if out is None:
                        out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
                    if vectors.shape != (chunk.end - chunk.start, out.shape[1]):
                        raise RemoteError(
                            f"the embedder returned shape {vectors.shape} for {chunk.end - chunk.start} "
                            f"texts where {out.shape[1]} columns were expected"
                        )
                    out[chunk.start : chunk.end] = vectors
                    if run.on_batch is not None:
                        run.on_batch(chunk.start, out[chunk.start : chunk.end])
                    done += len(vectors)
                now = time.monotonic()
                if not finished and now - max(last_news, last_warning) >= self.stall_seconds:
                    last_warning = now
                    self._report_stall(now - last_news, done, len(texts))
        except BaseException:
            for ref in pending:
                with contextlib.suppress(Exception):  # finished meanwhile, or its actor is gone
                    ray.cancel(ref)
            raise
        assert out is not None
        return out

    def _chunks(self, n: int, batch_size: int) -> list[tuple[int, int]]:
        # Enough chunks that every actor has several (the last ones finish together), few enough
        # that each is a handful of batches (a chunk is what a kill loses, and what is checkpointed).
        per = self._texts_per_call or batch_size
        low, high = CHUNK_BATCHES
        size = min(max(per * low, math.ceil(n / (self.workers * 4))), per * high)
        return [(s, min(s + size, n)) for s in range(0, n, size)]

    def _get(self, ref: Any, run: EmbedRun | None = None, done: int = 0, total: int = 0) -> Any:
        """ray.get, with the actor's own error raised as the hubembed error it was."""
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            cause = _root_cause(exc)
            if isinstance(cause, TimeBudgetExceeded) and run is not None:
                reason = f"the time budget of {run.deadline.budget:g} s ran out"
                raise TimeBudgetExceeded(
                    f"{reason}; {done} of {total} texts were embedded", reason=reason
                ) from None
            if isinstance(cause, HubembedError):
                raise cause from None
            if isinstance(cause, ray.exceptions.RayActorError):
                raise HubembedError(f"a Ray worker died and could not be brought back: {cause}") from exc
            raise

    def _report_stall(self, seconds: float, done: int, total: int) -> None:
        ray = self._ray
        states: dict[str, int] = {}
        for actor in self._actors:
            try:
                from ray._private import state

                info = state.actors(actor_id=actor._actor_id.hex())
                name = str(info.get("State", "UNKNOWN")) if info else "UNKNOWN"
            except Exception:  # a private API: its absence must not stop the build
                name = "UNKNOWN"
            states[name] = states.get(name, 0) + 1
        try:
            free, total_resources = ray.available_resources(), ray.cluster_resources()
        except Exception:
            free, total_resources = {}, {}
        resources = ", ".join(
            f"{name} {free.get(name, 0):g}/{total_resources.get(name, 0):g}"
            for name in ("CPU", "GPU")
            if name in total_resources or name == "CPU"
        )
        log.warning(
            "Ray has made no progress for %.0f s (%d of %d texts embedded): %d of %d actors ready, "
            "actor states: %s; free/total resources: %s; each actor needs %g CPU, %g GPU",
            seconds,
            done,
            total,
            len(self._ready),
            len(self._actors),
            ", ".join(f"{n} {name}" for name, n in sorted(states.items())),
            resources,
            self.cpus_per_worker or 0,
            self.gpus_per_worker,
        )


def _root_cause(exc: BaseException) -> BaseException:
    """The exception raised on the actor, inside Ray's wrappers: a task's error is RayTaskError
    (its ``cause``); an error in the actor's constructor, ActorDiedError holding that."""
    for _ in range(10):
        inner = getattr(exc, "cause", None)
        if inner is None and type(exc).__name__ == "ActorDiedError" and exc.args:
            inner = exc.args[0]  # its constructor's argument: RayTaskError, or a death context
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def place(nodes: list[dict[str, float]], workers: int, gpus: float) -> float:
    """CPUs per actor for WORKERS actors of GPUS GPUs each on NODES (their total resources):
    as much as fits, at most 1. Raises UsageError, naming what is lacking, when they cannot fit."""

    def fits(cpus: float) -> int:
        count = 0
        for node in nodes:
            by_cpu = math.floor(node.get("CPU", 0.0) / cpus + 1e-9) if cpus else workers
            by_gpu = math.floor(node.get("GPU", 0.0) / gpus + 1e-9) if gpus else workers
            count += min(by_cpu, by_gpu)
        return count

    # Fractions that pack WORKERS actors onto some node's CPUs, rounded down to Ray's precision;
    # with GPUs, none at all (the GPU is the actor's resource, and a GPU node may list no CPU).
    candidates = {1.0} | {
        math.floor(node.get("CPU", 0.0) / k * 10_000) / 10_000
        for node in nodes
        for k in range(1, workers + 1)
    }
    for cpus in sorted((c for c in candidates if 0 < c <= 1), reverse=True) + ([0.0] if gpus else []):
        if fits(cpus) >= workers:
            return cpus
    if gpus:
        have = sum(node.get("GPU", 0.0) for node in nodes)
        what = f"--workers {workers} with {gpus:g} GPU{'' if gpus == 1 else 's'} each"
        lacking = f"{have:g} GPU{'' if have == 1 else 's'}"
        lower = "lower --workers or --gpus-per-worker"
    else:
        have = sum(node.get("CPU", 0.0) for node in nodes)
        what = f"--workers {workers}"
        lacking = f"{have:g} CPU{'' if have == 1 else 's'}"
        lower = "lower --workers"
    described = ", ".join(_describe(node) for node in nodes) or "none alive"
    raise UsageError(
        f"{what} cannot be placed: the Ray cluster has {lacking} (nodes: {described}); {lower}, or add nodes"
    )


def _describe(node: dict[str, float]) -> str:
    parts = []
    for name in ("CPU", "GPU"):
        amount = node.get(name, 0.0)
        if amount or name == "CPU":
            parts.append(f"{amount:g} {name}{'' if amount == 1 else 's'}")
    return ", ".join(parts)
