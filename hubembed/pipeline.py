"""The build: source -> embedder -> sink.

A build is also the refresh: run again on an existing DST it does nothing when neither the
source nor the settings changed, and otherwise embeds only the texts it has no vector for
(from the previous build or from the checkpoints of an interrupted one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from . import config, refresh
from .batching import embed_all
from .card import read_metadata, render_card
from .embedder import Embedder, EmbedSettings, LocalEmbedder, query_settings
from .errors import TimeBudgetExceeded, UsageError
from .models import load_model, pick_devices, resolve_model
from .output import write_blog, write_shards
from .retry import RetryPolicy
from .sink import Sink, open_sink
from .source import SourceInfo, check_texts, choose_column, open_source
from .vectors import unit_length

log = logging.getLogger("hubembed")

LAYOUTS = ("default", "blog")
ENGINES = ("local", "ray")
BACKENDS = ("torch", "onnx", "onnx-int8")
# The backends that run the model exported to ONNX on the CPU, and at which precision.
ONNX_PRECISION = {"onnx": "fp32", "onnx-int8": "int8"}
# Forward passes handed to a local embedder per call (a checkpoint each). The onnx backend
# splits a call into sub-batches and runs one per core, idling a core at the end of each call:
# bigger calls keep both busy (benchmarks/README.md, "Embedding (CPU)").
PASSES_PER_CHUNK = {"torch": 4, "onnx": 32, "onnx-int8": 32}
EmbedderFactory = Callable[[EmbedSettings], tuple[Embedder, dict[str, Any]]]


@dataclass
class BuildResult:
    """What a build did: where it went, how many texts it embedded, what the card records."""

    destination: str
    location: str  # commit sha for the Hub, the folder for a local DST
    rows: int
    dimension: int
    embedded: int  # texts embedded by this run (the rest were reused)
    up_to_date: bool
    metadata: dict[str, Any] = field(repr=False)


def build(
    src: str,
    dst: str,
    *,
    column: str | None = None,
    model: str = config.DEFAULT_MODEL,
    model_revision: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    revision: str | None = None,
    config_name: str | None = None,
    split: str | None = None,
    private: bool = False,
    prompt_name: str | None = None,
    prompt: str | None = None,
    truncate_dim: int | None = None,
    normalize: bool = True,
    layout: str = "default",
    trust_remote_code: bool = False,
    backend: str = "torch",
    skip_empty: bool = False,
    force: bool = False,
    remote: str | None = None,
    api: str | None = None,
    concurrency: int = 4,
    time_budget: float | None = None,
    request_timeout: float = 120.0,
    engine: str = "local",
    workers: int = 2,
    gpus_per_worker: float = 0,
    ray_address: str | None = None,
    progress: bool | None = None,
    embedder_factory: EmbedderFactory | None = None,
) -> BuildResult:
    """Embed column COLUMN of SRC and publish the result to DST (a Hub repo id or a folder).

    ``remote`` embeds through an API instead of locally: "router" for the HF Inference API's
    route for MODEL, or an endpoint URL. ``engine="ray"`` spreads the embedding over WORKERS
    Ray actors (at RAY_ADDRESS, else on a local Ray). ``progress=None`` shows a bar only on a terminal.
    Raises UsageError subclasses (exit code 2) for input the user can fix; DST is untouched
    on any failure, and an interrupted build resumes from its checkpoints when run again.
    """
    if prompt_name and prompt:
        raise UsageError("give either --prompt-name or --prompt, not both")
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if batch_size is None:
        batch_size = 32  # TEI's default max_client_batch_size; sentence-transformers' default
    for flag, value in (("--batch-size", batch_size), ("--concurrency", concurrency), ("--workers", workers)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1 (got {value})")
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine == "ray":
        from .ray_engine import _require_ray

        _require_ray()  # say how to install it before any work
    token = config.hf_token()
    sink = open_sink(dst, token=token, private=private)
    sink.preflight()
    previous = read_metadata(sink.existing_card() or "")

    skipped: int | None
    if engine == "ray":
        from .ray_engine import open_ray_source

        ray_source = open_ray_source(
            src, revision=revision, config_name=config_name, split=split, token=token
        )
        source = ray_source.info
        source.column = choose_column(ray_source.features, column)
        # Rows are checked as they stream. The same source has the same blank rows: the previous
        # count holds if they may be skipped, and otherwise the build refuses them.
        skipped = previous.get("skipped_rows", 0)
        if skipped and not skip_empty:
            skipped = None
    else:
        ds, source = open_source(src, revision=revision, config_name=config_name, split=split, token=token)
        source.column = choose_column(ds.features, column)
        ds, skipped = check_texts(ds, source.column, skip_empty=skip_empty)

    settings = EmbedSettings(prompt_name, prompt, truncate_dim, normalize)
    # `make` builds the embedder only once something needs embedding (and on each Ray actor).
    make: Callable[[], tuple[Embedder, dict[str, Any]]]
    if embedder_factory is not None:
        made = embedder_factory(settings)
        model_meta = made[1]
        make = partial(_given, made)
    elif remote:
        if backend != "torch":
            raise UsageError(
                f"--backend {backend} runs a local model and --remote embeds on a server: drop one of them"
            )
        model_meta = {"model": model, "model_revision": model_revision, "model_origin": f"remote ({remote})"}
        make = partial(_remote_embedder, remote, api, model, settings, token, concurrency)
    else:
        if backend not in BACKENDS:
            raise UsageError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if backend in ONNX_PRECISION and device not in ("auto", "cpu"):
            raise UsageError(
                f"--backend {backend} runs on the CPU: drop --device {device}, or use --backend torch"
            )
        devices = pick_devices(device)  # a bad --device is an error even when nothing needs embedding
        model_batch, batch_size = batch_size, batch_size * PASSES_PER_CHUNK[backend] * len(devices)
        resolved = resolve_model(model, revision=model_revision, token=token)
        model_meta = {
            "model": resolved.model_id,
            "model_revision": resolved.revision,
            "model_origin": resolved.origin,
        }
        make = partial(
            _local_embedder, resolved, device, trust_remote_code, settings, token, backend, model_batch
        )
    meta: dict[str, Any] = {**model_meta, **settings.to_dict(), "trust_remote_code": trust_remote_code}
    if not remote and embedder_factory is None:
        meta["backend"] = backend  # not in the settings fingerprint: onnx gives torch's vectors
        if ONNX_PRECISION.get(backend) == "int8":
            meta["precision"] = "int8"  # in the fingerprint: int8 vectors are close, not the same
    settings_key = refresh.fingerprint(meta)
    same_settings = (
        bool(previous) and refresh.fingerprint(previous) == settings_key and previous.get("layout") == layout
    )

    if (
        same_settings
        and not force
        and _same_source(previous, source)
        and previous.get("skipped_rows", 0) == skipped
    ):
        log.info("%s is up to date: source %s@%s, same settings", sink.ref, source.id, source.revision[:12])
        return BuildResult(sink.ref, sink.ref, previous["rows"], previous["dimension"], 0, True, previous)

    checkpoint = refresh.Checkpoint(
        f"{source.id}\0{source.config}\0{source.split}\0{source.column}", settings_key
    )
    cache = refresh.VectorCache()
    if force:
        checkpoint.clear()
    else:
        _reuse(previous, same_settings, sink, cache)
        resumed = checkpoint.load_into(cache)
        if resumed:
            log.info("resuming: %d vectors saved by an interrupted build", resumed)
    query_meta = {k: previous.get(k) for k in ("query_prompt_name", "query_prompt")} if same_settings else {}
    message = f"hubembed: embed {source.id} ({source.split}/{source.column}) with {meta['model']}"
    if engine == "ray":
        from .ray_engine import RayOutput, embed_to_shards

        out = RayOutput(0, 0, 0, 0, True, None, 0)

        def stream(staged: Path) -> None:
            nonlocal out, query_meta
            try:
                out = embed_to_shards(
                    ray_source,
                    staged,
                    make=make,
                    reuse=cache.take_table(),
                    checkpoint=checkpoint,
                    skip_empty=skip_empty,
                    batch_size=batch_size,
                    workers=workers,
                    gpus_per_worker=gpus_per_worker,
                    address=ray_address,
                    progress=progress,
                    gather=layout == "blog",
                )
            finally:
                checkpoint.close()
            if out.embedded:
                query_meta = {"query_prompt_name": None, "query_prompt": None}  # the loader derives them
            _describe(
                meta, query_meta, source, layout, engine, out.rows, out.dimension, out.normalized, out.skipped
            )
            if out.vectors is not None:
                write_blog(staged, out.vectors, meta, dst=sink.ref)
            else:
                card = render_card(
                    meta,
                    data_files=f"data/{source.split}-*",
                    features=out.features,
                    num_bytes=out.num_bytes,
                    dst=sink.ref,
                )
                (staged / "README.md").write_text(card, encoding="utf-8")

        location = _publish(sink, message, stream)
        rows, embedded = out.rows, out.embedded
    else:
        texts: list[str] = ds.data.column(source.column).to_pylist()
        hashes = refresh.text_hashes(texts)
        todo_hashes, todo_texts = _missing(hashes, texts, cache)
        if todo_texts:

            def save(start: int, vectors: np.ndarray) -> None:
                checkpoint.save(todo_hashes[start : start + len(vectors)], vectors)

            try:
                embedder, query_meta = make()
                try:
                    fresh = embed_all(
                        embedder,
                        todo_texts,
                        batch_size=batch_size,
                        progress=progress,
                        policy=RetryPolicy(request_timeout=request_timeout),
                        time_budget=time_budget,
                        on_batch=save,
                    )
                finally:
                    embedder.close()  # worker processes of a multi-device pool
            except TimeBudgetExceeded as exc:
                raise TimeBudgetExceeded(f"{exc} and saved: run the same command again to continue") from exc
            finally:
                checkpoint.close()
            cache.add(todo_hashes, fresh)
        vectors = np.stack([cache.get(h) for h in hashes]) if hashes else np.empty((0, 0), np.float32)
        normalized = unit_length(vectors)
        _describe(
            meta, query_meta, source, layout, engine, len(texts), int(vectors.shape[1]), normalized, skipped
        )

        def write(staged: Path) -> None:
            if layout == "blog":
                write_blog(staged, vectors, meta, dst=sink.ref)
            else:
                extra = {refresh.HASH_COLUMN: hashes}
                write_shards(staged, ds, vectors, meta, dst=sink.ref, extra_columns=extra)

        location = _publish(sink, message, write)
        rows, embedded = len(texts), len(todo_texts)
    checkpoint.clear()
    checkpoint.prune_stale()
    log.info("embedded %d texts, reused %d", embedded, rows - embedded)
    log.info("wrote %d rows of %d-d embeddings to %s", rows, meta["dimension"], sink.ref)
    return BuildResult(sink.ref, location, rows, meta["dimension"], embedded, False, meta)


def _publish(sink: Sink, message: str, write: Callable[[Path], None]) -> str:
    """Stage the build with WRITE, then publish it in one step; DST stays as it was on any failure."""
    staged = sink.staging()
    try:
        write(staged)
        return sink.publish(staged, message)
    except BaseException:
        sink.discard(staged)
        raise


def _describe(
    meta: dict[str, Any],
    query_meta: dict[str, Any],
    source: SourceInfo,
    layout: str,
    engine: str,
    rows: int,
    dimension: int,
    normalized: bool,
    skipped: int | None,
) -> None:
    """Complete META, the card's record, with what the embedding found."""
    meta.update(
        query_meta,
        normalized=normalized,
        dimension=dimension,
        rows=rows,
        skipped_rows=skipped,
        source=source.to_dict(),
        layout=layout,
        embedding_column=config.EMBEDDING_COLUMN,
        hash_column=refresh.HASH_COLUMN if layout == "default" else None,
        engine=engine,
        hubembed_version=_version(),
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def _same_source(previous: dict[str, Any], source: SourceInfo) -> bool:
    return previous.get("source") == source.to_dict()


def _reuse(previous: dict[str, Any], same_settings: bool, sink: Sink, cache: refresh.VectorCache) -> None:
    """Put the previous build's vectors in CACHE when they were made the same way."""
    if not previous:
        return
    if not same_settings:
        log.info("the model or embedding settings changed: re-embedding everything")
        return
    if previous.get("hash_column") != refresh.HASH_COLUMN:
        return
    from .loader import load

    old = load(sink.ref, sink.revision)
    cache.add(old.column(refresh.HASH_COLUMN).to_pylist(), old.embeddings.numpy())


def _missing(hashes: list[str], texts: list[str], cache: refresh.VectorCache) -> tuple[list[str], list[str]]:
    """The texts with no vector yet, each once, longest first.

    Like encode's own sort, but over all of them rather than within one call: texts of a
    length share a pass, so less of each pass is padding (4-6% on CPU, benchmarks/README.md).
    Vectors are matched back by hash, so the order is free.
    """
    todo = {h: t for h, t in zip(hashes, texts, strict=True) if h not in cache}
    ordered = sorted(todo.items(), key=lambda item: -len(item[1]))
    return [h for h, _ in ordered], [t for _, t in ordered]


def _given(made: tuple[Embedder, dict[str, Any]]) -> tuple[Embedder, dict[str, Any]]:
    return made


def _local_embedder(
    resolved: Any,
    device: str,
    trust_remote_code: bool,
    settings: EmbedSettings,
    token: str | None,
    backend: str = "torch",
    batch_size: int = 32,
) -> tuple[Embedder, dict[str, Any]]:
    devices = pick_devices(device)
    embedder: Embedder
    if backend in ONNX_PRECISION:
        from .onnx_embedder import make_onnx_embedder

        st_model = load_model(resolved, device="cpu", token=token, trust_remote_code=trust_remote_code)
        embedder = make_onnx_embedder(st_model, settings, precision=ONNX_PRECISION[backend])
    else:
        st_model = load_model(resolved, device=devices[0], token=token, trust_remote_code=trust_remote_code)
        embedder = LocalEmbedder(st_model, settings, devices, batch_size=batch_size)
    query = query_settings(settings, st_model.prompts or {})
    return embedder, {"query_prompt_name": query.prompt_name, "query_prompt": query.prompt}


def _remote_embedder(
    remote: str,
    api: str | None,
    model: str,
    settings: EmbedSettings,
    token: str | None,
    concurrency: int,
) -> tuple[Embedder, dict[str, Any]]:
    from .remote import RemoteEmbedder, router_url

    url = router_url(model) if remote == "router" else remote
    embedder = RemoteEmbedder(
        url, model=model, settings=settings, api=api, token=token, concurrency=concurrency
    )
    # The remote model's prompts are unknown here; the loader derives the query side from the
    # model it loads for queries.
    return embedder, {"query_prompt_name": None, "query_prompt": None}


def _version() -> str:
    from . import __version__

    return __version__
