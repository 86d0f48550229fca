"""The build: source -> embedder -> sink.

A build is also the refresh: run again on an existing DST it does nothing when neither the
source nor the settings changed, and otherwise embeds only the texts it has no vector for
(from the previous build or from the checkpoints of an interrupted one). The rows stream
through one loop (hubembed/stream.py) whichever engine embeds them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from . import config
from .build_compact import prepare_compact, same_compact
from .card import BuildRecord, read_metadata, truncation_note
from .embedder import Embedder, EmbedSettings, query_settings
from .engines import EmbedRun, Engine, LocalEngine, MakeEmbedder
from .errors import ColumnError, DestinationError, ModelError, UsageError
from .models import ResolvedModel, check_prompt_name, pick_devices, resolve_model
from .options import BuildOptions
from .output import BlogOutput, ShardOutput
from .refresh import HASH_COLUMN, Checkpoint, ReuseIndex, hash_keys
from .retry import Deadline, RetryPolicy
from .sink import Sink, open_sink
from .source import choose_column, open_stream, resolve_source
from .stream import CHUNK_COLUMNS, Chunking, run_stream
from .tokens import TruncationCounter

log = logging.getLogger("hubembed")

# embedder_factory(settings) -> (embedder, {"model": ..., "model_revision": ..., ...}): a
# ready embedder instead of one hubembed makes (tests, benchmarks, custom embedders).
EmbedderFactory = Any
_NO_QUERY = {"query_prompt_name": None, "query_prompt": None}


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
    src: str | BuildOptions,
    dst: str | None = None,
    *,
    progress: bool | None = None,
    embedder_factory: EmbedderFactory | None = None,
    **options: Any,
) -> BuildResult:
    """Embed a text column of SRC and publish the result to DST (a Hub repo id or a folder).

    OPTIONS are BuildOptions' fields (hubembed/options.py): ``column``, ``model``,
    ``batch_size``, ``remote`` ("router" for the HF Inference API, or an endpoint URL),
    ``engine="ray"`` with ``workers``, ``time_budget``, ``layout``, ``skip_empty``, ``force``...
    Or pass a BuildOptions as SRC. ``progress=None`` shows a bar only on a terminal.

    Raises UsageError subclasses (exit code 2) for input the user can fix; DST is untouched
    on any failure, and an interrupted build resumes from its checkpoints when run again.
    """
    if isinstance(src, BuildOptions):
        opts = src
        opts.validate()
    else:
        if dst is None:
            raise TypeError("build() needs SRC and DST")
        opts = BuildOptions.create(src, dst, **options)
    s, e, o, g = opts.source, opts.embedding, opts.output, opts.engine
    if g.engine == "ray":
        from .ray_engine import require_ray

        require_ray()  # say how to install it before any work
    token = config.hf_token()
    sink = open_sink(o.dst, token=token, private=o.private)
    sink.preflight()
    previous = BuildRecord.from_dict(read_metadata(sink.existing_card() or ""))
    # A mapped build stays mapped: a refresh keeps its rows' places and puts new rows on it.
    mapped = o.map or bool(previous is not None and previous.map)
    if mapped:
        from .projection import require_map_extra

        require_map_extra()  # say how to install it before any work

    make, model_fields, counter, resolved_model = _embedder(opts, token, embedder_factory)
    chunking = _chunking(opts, token, counter, resolved_model)
    resolved = resolve_source(
        s.src, revision=s.revision, config_name=s.config_name, split=s.split, token=token
    )
    rows = open_stream(resolved, token)
    source = rows.info
    source.column = choose_column(rows.features, s.column)
    row_features = rows.features
    if chunking is not None and not chunking.pool:
        row_features = chunk_features(rows.features, source.column)
    record = BuildRecord(
        **model_fields,
        **e.settings.to_dict(),
        trust_remote_code=e.trust_remote_code,
        source=source.to_dict(),
        layout=o.layout,
        embedding_column=config.EMBEDDING_COLUMN,
        hash_column=HASH_COLUMN if o.layout == "default" else None,
        engine=g.engine,
        hubembed_version=_version(),
        max_seq_length=counter.max_tokens if counter is not None else None,
        chunking={"tokens": e.chunk, "overlap": e.overlap, "pool": e.pool} if e.chunk else None,
        pooling=f"{e.pool}/{e.chunk}/{e.overlap}" if e.pool else None,
    )
    settings_key = record.fingerprint()
    same_settings = previous is not None and previous.fingerprint() == settings_key
    if previous is not None and not o.force and _origin(previous.source) != _origin(record.source):
        raise DestinationError(
            f"{sink.ref} holds a build of {previous.source.get('id')!r}, not of {source.id!r}: "
            "give another DST, or pass --force to replace it"
        )
    if (
        previous is not None
        and same_settings
        and not o.force
        and previous.layout == o.layout
        and previous.chunking == record.chunking
        and previous.source == record.source
        # The same source has the same blank rows: skipped before, they still may be, or not.
        and (not previous.skipped_rows or s.skip_empty)
        and same_compact(previous, o)
    ):
        log.debug("%s is up to date: source %s@%s, same settings", sink.ref, source.id, source.revision[:12])
        if mapped and not previous.map:  # the rows are as built: only the map is missing
            from .maps import publish

            made, location = publish(sink.ref, token=token)
            meta = {**previous.to_dict(), "map": made.record()}
            return BuildResult(sink.ref, location, previous.rows, previous.dimension, 0, False, meta)
        return BuildResult(sink.ref, sink.ref, previous.rows, previous.dimension, 0, True, previous.to_dict())

    checkpoint = Checkpoint(f"{source.id}\0{source.config}\0{source.split}\0{source.column}", settings_key)
    reuse = ReuseIndex()
    if o.force:
        checkpoint.clear()
    else:
        if previous is not None and not same_settings:
            log.info("the model or embedding settings changed: re-embedding everything")
        elif previous is not None and previous.layout != o.layout and previous.chunking == record.chunking:
            log.info("the layout changed (%s -> %s): embedding every row again", previous.layout, o.layout)
        elif previous is not None:
            if previous.chunking != record.chunking:
                log.info("the chunking changed: every row is written again, unchanged chunks reused")
            if previous.hash_column == HASH_COLUMN:
                _add_previous(sink, reuse)
        resumed = checkpoint.load_into(reuse)
        if resumed:
            log.info("resuming: %d vectors saved by an interrupted build", resumed)

    engine: Engine
    if g.engine == "ray":
        from .ray_engine import RayEngine

        engine = RayEngine(make, workers=g.workers, gpus_per_worker=g.gpus_per_worker, address=g.ray_address)
    else:
        engine = LocalEngine(make)
    run = EmbedRun(
        batch_size=e.batch_size,
        policy=RetryPolicy(request_timeout=e.request_timeout),
        deadline=Deadline(g.time_budget),
    )
    message = f"hubembed: embed {source.id} ({source.split}/{source.column}) with {record.model}"
    staged = sink.staging()
    try:
        writer = BlogOutput if o.layout == "blog" else ShardOutput
        output = writer(staged, row_features, split=source.split, dst=sink.ref)
        if isinstance(output, ShardOutput):
            # --force quantizes afresh too: new int8 ranges, from this build's first block.
            prepare_compact(output, o, previous if same_settings and not o.force else None, record.model)
        try:
            stats = run_stream(
                rows,
                column=source.column,
                engine=engine,
                run=run,
                reuse=reuse,
                checkpoint=checkpoint,
                output=output,
                skip_empty=s.skip_empty,
                progress=progress,
                counter=counter,
                chunking=chunking,
            )
        finally:
            engine.close()
        query = engine.query_meta
        if query is None:  # nothing embedded: the model was never loaded
            query = (
                {"query_prompt_name": previous.query_prompt_name, "query_prompt": previous.query_prompt}
                if previous is not None and same_settings
                else _NO_QUERY
            )
        record.query_prompt_name, record.query_prompt = query["query_prompt_name"], query["query_prompt"]
        _record_runtime(record, query, previous if same_settings else None)
        record.normalized = stats.normalized
        record.dimension = stats.dimension
        record.rows = stats.rows
        record.skipped_rows = stats.skipped
        record.truncated_texts = stats.truncated
        record.created_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        output.finish(record)
        if mapped:
            _add_map(staged, record, sink, previous if same_settings and not o.force else None)
        location = sink.publish(staged, message)
    except BaseException:
        sink.discard(staged)
        raise
    checkpoint.clear()
    checkpoint.prune_stale()
    if stats.truncated:
        log.warning("%s", truncation_note(stats.truncated, stats.rows, record.max_seq_length))
    log.debug("embedded %d texts, reused %d", stats.embedded, stats.rows - stats.embedded)
    return BuildResult(
        sink.ref, location, stats.rows, stats.dimension, stats.embedded, False, record.to_dict()
    )


def _embedder(
    opts: BuildOptions, token: str | None, factory: EmbedderFactory | None
) -> tuple[MakeEmbedder, dict[str, Any], TruncationCounter | None, ResolvedModel | None]:
    """How to make the embedder (where it runs: here, or on each Ray actor), the card's model
    fields, what counts the texts the model cuts short (None: a remote model or a given
    embedder, whose tokenizer is not at hand), and the local model (None for those). The model
    is resolved here, once; the device where the model loads."""
    e = opts.embedding
    settings = e.settings
    if factory is not None:
        embedder, meta = factory(settings)
        fields = {k: meta.get(k) for k in ("model", "model_revision", "model_origin")}
        query = {k: meta.get(k) for k in _NO_QUERY}
        return partial(_made, embedder, query), fields, None, None
    if e.remote:
        origin = f"remote ({e.remote})"
        make = partial(_remote_embedder, e.remote, e.api, e.model, settings, token, e.concurrency)
        return (
            make,
            {"model": e.model, "model_revision": e.model_revision, "model_origin": origin},
            None,
            None,
        )
    resolved = resolve_model(e.model, revision=e.model_revision, token=token)
    # Refused before the source is read or the model loads (seconds): a prompt the model's
    # config does not have, a GPU this machine does not have (on Ray, the workers' GPUs count).
    check_prompt_name(resolved, e.prompt_name)
    if opts.engine.engine == "local" and e.device not in ("auto", "cpu"):
        pick_devices(e.device)
    make = partial(
        _local_embedder, resolved, e.device, e.trust_remote_code, settings, token, e.backend, e.batch_size
    )
    fields = {
        "model": resolved.model_id,
        "model_revision": resolved.revision,
        "model_origin": resolved.origin,
        # What runs is known once the embedder is made (auto: by the device); the card records
        # that. Not in the fingerprint: backends give the same vectors, except int8's.
        "backend": e.backend,
        "precision": e.precision,
    }
    return make, fields, TruncationCounter.for_model(resolved, settings, token), resolved


def _add_map(staged: Any, record: BuildRecord, sink: Sink, previous: BuildRecord | None) -> None:
    """Map the staged build; a previous map's rows keep their places (hubembed/maps.py)."""
    from .loader import load
    from .maps import map_staged

    old = load(sink.ref, sink.revision) if previous is not None and previous.map else None
    map_staged(staged, record, sink.ref, old)


def _add_previous(sink: Sink, reuse: ReuseIndex) -> None:
    """Make the previous build's vectors findable by text hash: its hash column is read a batch
    at a time, its vectors stay memory-mapped in the loader's cache."""
    import pyarrow.parquet as pq

    from .loader import load

    old = load(sink.ref, sink.revision)
    vectors = old.embeddings.numpy()
    files = old.shard_files
    if files:
        batches = (
            b.column(0)
            for f in files
            for b in pq.ParquetFile(f, memory_map=True).iter_batches(columns=[HASH_COLUMN], batch_size=65_536)
        )
    else:
        batches = iter(old.column(HASH_COLUMN).chunks)
    reuse.add(hash_keys(batches), vectors)


def _chunking(
    opts: BuildOptions, token: str | None, counter: TruncationCounter | None, resolved: ResolvedModel | None
) -> Chunking | None:
    """The chunker for --chunk, checked against what the model reads, before any work."""
    e = opts.embedding
    if (
        counter is not None
        and e.max_seq_length
        and counter.positions
        and e.max_seq_length > counter.positions
    ):
        raise ModelError(
            f"--max-seq-length {e.max_seq_length} is more than {e.model} can read: at most "
            f"{counter.positions} tokens"
        )
    if e.chunk is None:
        return None
    from .chunking import Chunker

    limit = counter.max_tokens if counter is not None else None
    if limit is not None and e.chunk > limit:
        more = (
            f", or raise --max-seq-length (up to {counter.positions})"
            if counter and counter.positions
            else ""
        )
        raise UsageError(
            f"--chunk {e.chunk} is more than {e.model} reads ({limit} tokens): lower --chunk{more}"
        )
    # The model's tokenizer counts the tokens (a given embedder's build uses --model's).
    resolved = resolved or resolve_model(e.model, revision=e.model_revision, token=token)
    try:
        chunker = Chunker.for_model(resolved, e.settings, e.chunk, e.overlap, token=token)
    except ValueError as exc:  # a --chunk too small for the prompt and special tokens
        raise UsageError(f"--chunk {e.chunk} --overlap {e.overlap}: {exc}") from exc
    return Chunking(chunker, pool=e.pool is not None, normalize=e.normalize)


def chunk_features(features: Any, column: str) -> Any:
    """FEATURES without the text COLUMN, plus the columns a chunked build adds (CHUNK_COLUMNS)."""
    from datasets import Features, Value

    clashes = [c for c in CHUNK_COLUMNS if c in features]
    if clashes:
        raise ColumnError(
            f"the source already has {', '.join(map(repr, clashes))}, which --chunk adds: rename "
            "them in the source"
        )
    types = {"chunk": "string", "chunk_index": "int32", "chunk_start": "int64", "chunk_end": "int64"}
    added = {name: Value(types.get(name, "int64")) for name in CHUNK_COLUMNS}
    return Features({**{k: v for k, v in features.items() if k != column}, **added})


def _origin(source: dict[str, Any]) -> tuple[Any, ...]:
    # Another SRC, not the same one at another revision, config, split or column: those are
    # asked for by name, and a refresh follows the source's revisions.
    return source.get("kind"), source.get("id")


def _made(embedder: Embedder, query: dict[str, Any]) -> tuple[Embedder, dict[str, Any]]:
    return embedder, query


def _local_embedder(
    resolved: Any,
    device: str,
    trust_remote_code: bool,
    settings: EmbedSettings,
    token: str | None,
    backend: str = "auto",
    batch_size: int = 32,
) -> tuple[Embedder, dict[str, Any]]:
    from .backends import local_embedder

    embedder, st_model, runs = local_embedder(
        resolved, device, trust_remote_code, settings, token, backend, batch_size
    )
    query = query_settings(settings, st_model.prompts or {})
    return embedder, {"query_prompt_name": query.prompt_name, "query_prompt": query.prompt, **runs}


def _record_runtime(record: BuildRecord, made: dict[str, Any], previous: BuildRecord | None) -> None:
    """The backend and precision that ran into RECORD: from the embedder MADE, else (nothing
    embedded, the model never loaded) from the PREVIOUS build with the same settings."""
    if "backend" in made:
        record.backend, record.precision = made["backend"], made.get("precision")
    elif previous is not None and record.backend == "auto":
        record.backend, record.precision = previous.backend, previous.precision


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
    return embedder, dict(_NO_QUERY)


def _version() -> str:
    from . import __version__

    return __version__
