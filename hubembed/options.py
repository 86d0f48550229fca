"""A build, described once: what to read, how to embed, where to write, and on what.

The CLI and ``hubembed.build(...)`` both make a ``BuildOptions`` with ``BuildOptions.create``
and every check of the options as given happens in ``validate``, before any work. What can
only be known later (whether a GPU is there, whether the model has a prompt) is checked where
it is used: the device where the model loads, the prompt by the embedder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from . import config
from .embedder import EmbedSettings
from .errors import UsageError

LAYOUTS = ("default", "blog")
ENGINES = ("local", "ray")
# auto: the ONNX export in fp32 on a CPU, the fast torch path on CUDA (hubembed/backends.py).
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
# The backends that run the model exported to ONNX on the CPU, and at which precision.
ONNX_PRECISION = {"onnx": "fp32", "onnx-int8": "int8"}
POOLS = ("mean",)
# auto, all, cpu, mps, cuda, cuda:N, or a comma-separated list of those (one model each).
_DEVICE = re.compile(r"^(auto|all|cpu|mps|cuda(:\d+)?)(\s*,\s*(cpu|mps|cuda(:\d+)?))*$")


@dataclass(frozen=True)
class SourceSpec:
    src: str
    column: str | None = None
    revision: str | None = None
    config_name: str | None = None
    split: str | None = None
    skip_empty: bool = False


@dataclass(frozen=True)
class EmbeddingSpec:
    model: str = config.DEFAULT_MODEL
    model_revision: str | None = None
    prompt_name: str | None = None
    prompt: str | None = None
    truncate_dim: int | None = None
    normalize: bool = True
    trust_remote_code: bool = False
    backend: str = "auto"
    device: str = "auto"
    #: texts per forward pass, or per request with ``remote``; TEI's default
    #: max_client_batch_size and sentence-transformers' default
    batch_size: int = 32
    #: "router" (the HF Inference API's route for ``model``) or an endpoint URL
    remote: str | None = None
    api: str | None = None
    concurrency: int = 4
    request_timeout: float = 120.0
    #: split each text into chunks of at most this many tokens, one row (and vector) each
    chunk: int | None = None
    overlap: int = 0  # tokens shared by consecutive chunks
    pool: str | None = None  # "mean": one vector per text, the mean of its chunks'
    max_seq_length: int | None = None  # tokens the model reads, instead of its own limit

    @property
    def settings(self) -> EmbedSettings:
        return EmbedSettings(
            self.prompt_name, self.prompt, self.truncate_dim, self.normalize, self.max_seq_length
        )

    @property
    def precision(self) -> str | None:
        """ "int8" for the quantised backend; None (fp32) otherwise."""
        return "int8" if not self.remote and ONNX_PRECISION.get(self.backend) == "int8" else None


@dataclass(frozen=True)
class OutputSpec:
    dst: str
    layout: str = "default"
    private: bool = False
    force: bool = False  # re-embed every row, reusing nothing
    map: bool = False  # a 2-D map of the rows: two columns and a picture (hubembed/maps.py)
    #: compact copies beside the vectors: "int8,binary,float16" or a subset (hubembed/compact.py)
    quantize: str | tuple[str, ...] | None = None
    index: bool = False  # publish an ANN index of the vectors (hubembed/ann.py)

    @property
    def quantize_kinds(self) -> tuple[str, ...]:
        from .compact import parse_kinds

        return parse_kinds(self.quantize)


@dataclass(frozen=True)
class EngineSpec:
    engine: str = "local"
    workers: int = 2  # Ray actors
    gpus_per_worker: float = 0
    ray_address: str | None = None
    time_budget: float | None = None  # seconds for the whole job, whichever engine


@dataclass(frozen=True)
class BuildOptions:
    source: SourceSpec
    embedding: EmbeddingSpec = field(default_factory=EmbeddingSpec)
    output: OutputSpec = field(default_factory=lambda: OutputSpec(""))
    engine: EngineSpec = field(default_factory=EngineSpec)

    @classmethod
    def create(cls, src: str, dst: str, **options: Any) -> BuildOptions:
        """Options from flat keywords, each the name of one spec's field (``column``, ``model``,
        ``batch_size``, ``layout``, ``engine``...); None means the default. Validated."""
        specs: dict[str, dict[str, Any]] = {name: {} for name in _SPECS}
        for key, value in options.items():
            owner = _OWNER.get(key)
            if owner is None:
                raise TypeError(f"build() got an unexpected keyword argument {key!r}")
            if value is not None:
                specs[owner][key] = value
        built = cls(
            SourceSpec(src, **specs["source"]),
            EmbeddingSpec(**specs["embedding"]),
            OutputSpec(dst, **specs["output"]),
            EngineSpec(**specs["engine"]),
        )
        built.validate()
        return built

    @staticmethod
    def names() -> list[str]:
        """The flat keywords ``create`` takes besides SRC and DST."""
        return list(_OWNER)

    def validate(self) -> None:
        """Refuse options that contradict each other or cannot be right (UsageError, exit 2)."""
        e, o, g = self.embedding, self.output, self.engine
        if e.prompt_name and e.prompt:
            raise UsageError("give either --prompt-name or --prompt, not both")
        _one_of("layout", o.layout, LAYOUTS)
        _one_of("engine", g.engine, ENGINES)
        _one_of("backend", e.backend, BACKENDS)
        if (o.quantize_kinds or o.index) and o.layout == "blog":
            raise UsageError("--layout blog stores only the vectors as CSV: drop --quantize and --index")
        for flag, value in (
            ("--batch-size", e.batch_size),
            ("--concurrency", e.concurrency),
            ("--workers", g.workers),
        ):
            if value < 1:
                raise UsageError(f"{flag} must be at least 1 (got {value})")
        if e.truncate_dim is not None and e.truncate_dim < 1:
            raise UsageError(f"--truncate-dim must be at least 1 (got {e.truncate_dim})")
        if e.max_seq_length is not None and e.max_seq_length < 1:
            raise UsageError(f"--max-seq-length must be at least 1 (got {e.max_seq_length})")
        if e.pool is not None and e.pool not in POOLS:
            raise UsageError(f"unknown --pool {e.pool!r}; use one of {', '.join(POOLS)}")
        if e.pool is not None and e.chunk is None:
            raise UsageError(f"--pool {e.pool} averages the vectors of a text's chunks: give --chunk too")
        if e.chunk is None and e.overlap:
            raise UsageError("--overlap is the overlap of chunks: give --chunk too")
        if e.chunk is not None:
            if e.chunk < 1:
                raise UsageError(f"--chunk must be at least 1 token (got {e.chunk})")
            if not 0 <= e.overlap < e.chunk:
                raise UsageError(
                    f"--overlap must be at least 0 and smaller than --chunk {e.chunk} (got {e.overlap})"
                )
            if e.remote:
                raise UsageError(
                    "--chunk counts tokens with the local model's tokenizer; with --remote, chunk the "
                    "texts before the build"
                )
        for flag, seconds in (("--time-budget", g.time_budget), ("--request-timeout", e.request_timeout)):
            if seconds is not None and seconds <= 0:
                raise UsageError(f"{flag} must be a positive number of seconds (got {seconds:g})")
        if g.gpus_per_worker < 0:
            raise UsageError(f"--gpus-per-worker must be 0 or more (got {g.gpus_per_worker:g})")
        if o.map and o.layout == "blog":
            raise UsageError(
                "--map adds two columns to the rows, and --layout blog stores only the vectors: drop one of them"
            )
        if not _DEVICE.match(e.device.strip()):
            raise UsageError(
                f"unknown device {e.device!r}; use auto, cpu, cuda, cuda:N, a list of them, or all"
            )
        if e.backend in ONNX_PRECISION:
            if e.remote:
                raise UsageError(
                    f"--backend {e.backend} runs a local model and --remote embeds on a server: drop one of them"
                )
            if e.device not in ("auto", "cpu"):
                raise UsageError(
                    f"--backend {e.backend} runs on the CPU: drop --device {e.device}, or use --backend torch"
                )


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"unknown {name} {value!r}; use one of {', '.join(allowed)}")


_SPECS = {"source": SourceSpec, "embedding": EmbeddingSpec, "output": OutputSpec, "engine": EngineSpec}
_OWNER = {f.name: spec for spec, cls in _SPECS.items() for f in fields(cls) if f.name not in ("src", "dst")}
