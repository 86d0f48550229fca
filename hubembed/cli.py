"""The command line: parse arguments, call the library, print. No work of its own."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, config
from .errors import HubembedError
from .source import plural
from .workflow import add_workflow_parser, run_workflow_command

log = logging.getLogger("hubembed")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubembed", description="Embed a text dataset and publish it on the Hugging Face Hub."
    )
    parser.add_argument("--version", action="version", version=f"hubembed {__version__}")
    _verbosity(parser, False)
    # The same flags after the subcommand (`hubembed build -q ...`), listed in its --help.
    common = argparse.ArgumentParser(add_help=False)
    _verbosity(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = commands.add_parser(
        "build",
        parents=[common],
        help="embed SRC and publish it to DST",
        description="Embed a text column of SRC and publish the rows with an 'embedding' column to DST. "
        "SRC: a Hub dataset id (user/name), a local csv/json/jsonl/parquet file or folder, or "
        "sample:medicare-faqs. DST: a Hub dataset id (user/name, or hf://datasets/user/name) or a local "
        "folder (./name).",
    )
    b.add_argument("src", metavar="SRC")
    b.add_argument("dst", metavar="DST")
    b.add_argument("--column", help="the text column (default: the only string column)")
    b.add_argument("--model", default=config.DEFAULT_MODEL, help="a Hub model id or a local folder")
    b.add_argument("--model-revision", help="a revision (branch, tag or commit) of --model")
    b.add_argument(
        "--device",
        "--devices",
        default="auto",
        help="auto, cpu, cuda, cuda:N, several (cuda:0,cuda:1: one model per GPU), or all (default: auto)",
    )
    b.add_argument(
        "--batch-size", type=int, help="texts per forward pass, or per request with --remote (default: 32)"
    )
    b.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx", "onnx-int8"],
        default="auto",
        help="auto (default): on CPU the model exported to ONNX, run by onnxruntime in fp32; on "
        "CUDA a fast torch path in fp16 (checked against fp32); both give encode's vectors. "
        "torch: sentence-transformers' encode; onnx: the ONNX export; onnx-int8: quantised, "
        "faster, vectors within cosine 0.999 of fp32",
    )
    b.add_argument("--revision", help="a revision (branch, tag or commit) of SRC")
    b.add_argument("--config", dest="config_name", metavar="NAME", help="the configuration of SRC")
    b.add_argument("--split", help="the split of SRC (default: the only split, else train)")
    b.add_argument(
        "--private",
        action="store_true",
        help="create DST as a private repo (refused if DST exists and is public)",
    )
    prompt = b.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-name", help="one of the model's prompts, e.g. Retrieval-document")
    prompt.add_argument("--prompt", help="a literal prompt put before every text")
    b.add_argument("--truncate-dim", type=int, metavar="D", help="keep the first D dimensions (Matryoshka)")
    b.add_argument("--no-normalize", dest="normalize", action="store_false", help="keep raw vector lengths")
    b.add_argument(
        "--layout", choices=["default", "blog"], default="default", help="blog: embeddings.csv only"
    )
    b.add_argument("--trust-remote-code", action="store_true", help="allow models that run their own code")
    c = b.add_argument_group("long texts")
    c.add_argument(
        "--chunk",
        type=int,
        metavar="TOKENS",
        help="split each text into chunks the model reads whole (at most TOKENS tokens, at paragraph "
        "and sentence ends where it can): one row and vector per chunk",
    )
    c.add_argument(
        "--overlap", type=int, default=0, metavar="TOKENS", help="tokens shared by consecutive chunks"
    )
    c.add_argument(
        "--pool", choices=["mean"], help="one vector per text instead: the mean of its chunks' vectors"
    )
    c.add_argument(
        "--max-seq-length",
        type=int,
        metavar="TOKENS",
        help="tokens the model reads (default: its own limit; at most its position limit)",
    )
    b.add_argument("--force", action="store_true", help="re-embed every row, reusing nothing")
    b.add_argument(
        "--map",
        action="store_true",
        help="add a 2-D map of the rows: map_x and map_y columns and map.png, shown in the card "
        "(needs hubembed[map]); a refresh keeps a mapped build's map and places new rows on it",
    )
    q = b.add_argument_group("search structures (need unit-length vectors)")
    q.add_argument(
        "--quantize",
        metavar="KINDS",
        help="store compact copies beside the vectors: int8, binary, float16, or a comma-separated list",
    )
    q.add_argument("--index", action="store_true", help="publish an ANN (HNSW) index of the vectors")
    e = b.add_argument_group("engine")
    e.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="where to embed (default: local)"
    )
    e.add_argument("--workers", type=int, default=2, help="Ray actors, one model each (default: 2)")
    e.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per Ray actor (default: 0)")
    e.add_argument("--ray-address", help="an existing Ray cluster (default: RAY_ADDRESS, else a local one)")
    r = b.add_argument_group("remote embedding (instead of a local model)")
    r.add_argument(
        "--remote",
        nargs="?",
        const="router",
        metavar="URL",
        help="embed through an API: alone, the HF Inference API's route for --model; or an endpoint URL "
        "(Inference Endpoints, TEI /embed, or an OpenAI-compatible .../v1/embeddings)",
    )
    r.add_argument("--api", choices=["hf", "openai"], help="the request format (default: from the URL)")
    r.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default: 4)")
    r.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop cleanly after this long")
    r.add_argument("--request-timeout", type=float, default=120.0, metavar="SECONDS", help="per request")
    b.add_argument(
        "--skip-empty",
        action="store_true",
        help="leave out rows whose text is null or empty (default: refuse such a source)",
    )

    s = commands.add_parser(
        "search", parents=[common], help="search an embedded dataset", description="Search DST for QUERY."
    )
    s.add_argument("dst", metavar="DST", help="a Hub dataset id or a local folder built by hubembed")
    s.add_argument("query", metavar="QUERY")
    s.add_argument("-k", "--top-k", type=int, default=5, help="how many hits (default: 5)")
    s.add_argument("--revision", help="a revision of DST")
    s.add_argument("--model", help="embed the query with this model instead of the card's")
    s.add_argument("--device", default="auto")
    s.add_argument(
        "--mode",
        help="exact, ann (an index), int8 or binary (compact copies); default: the best DST has",
    )
    s.add_argument(
        "--rescore",
        type=int,
        metavar="N",
        help="with --mode ann/int8/binary: rescore N x top-k candidates in float32 (default: 4; 16 for binary)",
    )
    s.add_argument(
        "--chunks",
        action="store_true",
        help="for a build made with --chunk: every matching chunk, not the best passage of each text",
    )
    s.add_argument(
        "--json",
        action="store_true",
        help='print hits as a JSON list of {"rank", "corpus_id", "score", "row"}, rows whole',
    )
    _classify_parser(commands, common)
    _export_parser(commands, common)
    _map_parser(commands, common)
    add_workflow_parser(commands, build_parser=b)
    return parser


def _classify_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    k = commands.add_parser(
        "classify",
        parents=[common],
        help="label each row of an embedded dataset",
        description="Label each row of DST with the nearest of LABELS: the highest cosine between the row's "
        "vector and the label's, the labels embedded by the model DST's card records (with its "
        "classification prompt where it has one, else as search queries).",
    )
    k.add_argument("dst", metavar="DST", help="a Hub dataset id or a local folder built by hubembed")
    k.add_argument(
        "--labels", required=True, help='the labels, separated by commas: "billing,enrollment,coverage"'
    )
    k.add_argument(
        "--publish",
        action="store_true",
        help="add the label and its score to DST as columns (label, label_score), in one commit",
    )
    k.add_argument(
        "--column",
        default="label",
        metavar="NAME",
        help="with --publish: the label's column (default: label)",
    )
    k.add_argument(
        "--examples",
        type=int,
        default=3,
        metavar="N",
        help="show each label's N rows of highest score (default: 3; 0: only the counts)",
    )
    k.add_argument(
        "--json",
        action="store_true",
        help='print {"labels", "counts", "model", "prompt_name", "prompt", "published", "rows": '
        '[{"row", "label", "score"}, ...]}, every row (0-based)',
    )
    k.add_argument("--revision", help="a revision of DST (not with --publish: that adds to the latest)")
    k.add_argument("--device", default="auto")


def _export_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    x = commands.add_parser(
        "export",
        parents=[common],
        help="write an embedded dataset to a vector store",
        description="Write DST's rows and vectors to PATH as a Lance dataset with a vector index "
        "(IVF_FLAT, cosine): open it with lance.dataset(PATH) and search it with "
        "to_table(nearest=...), no server needed. A chunked build exports one row per chunk.",
    )
    x.add_argument("dst", metavar="DST", help="a Hub dataset id or a local folder built by hubembed")
    x.add_argument(
        "--to", nargs=2, required=True, metavar=("FORMAT", "PATH"), help="the format (lance) and a new folder"
    )
    x.add_argument("--force", action="store_true", help="replace a Lance dataset already at PATH")
    x.add_argument("--no-index", dest="index", action="store_false", help="write the rows without an index")
    x.add_argument("--revision", help="a revision of DST")


def _map_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    m = commands.add_parser(
        "map",
        parents=[common],
        help="add a 2-D map of an embedded dataset's rows",
        description="Map DST's rows in 2-D (UMAP, labelled regions) and add map_x, map_y and map.png to "
        "DST, shown in its card, in one commit. Needs hubembed[map].",
    )
    m.add_argument("dst", metavar="DST", help="a Hub dataset id or a local folder built by hubembed")
    m.add_argument("--png", metavar="FILE", help="also save the picture to FILE")
    m.add_argument("--device", default="auto")


def _verbosity(parser: argparse.ArgumentParser, default: Any) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="only print errors and results"
    )
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="say more about each step"
    )


def _setup_output(args: argparse.Namespace) -> bool | None:
    """Logging and progress bars for this run; returns the `progress` flag for the library."""
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    import os

    # The libraries underneath print their own bars and notices; keep them for -v only.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.verbose:
        # Through the environment, read when (and if) each library is imported: importing them
        # here only to silence them cost a search 0.7 s (benchmarks/README.md, "Search start-up").
        for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(name, "1")
        for name in ("DATASETS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
            os.environ.setdefault(name, "error")
        logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    return False if args.quiet else None


def _build(args: argparse.Namespace, progress: bool | None) -> int:
    from .options import BuildOptions
    from .pipeline import build

    options = BuildOptions.create(args.src, args.dst, **{k: getattr(args, k) for k in BuildOptions.names()})
    result = build(options, progress=progress)
    if result.up_to_date:
        source = result.metadata.get("source") or {}
        print(
            f"{result.destination}: up to date with {source.get('id')}@{str(source.get('revision'))[:12]} "
            f"({plural(result.rows, 'row')}); nothing to do"
        )
    else:
        print(
            f"{result.destination}: {plural(result.rows, 'row')}, {result.dimension}-d "
            f"({result.embedded:,} embedded, {result.rows - result.embedded:,} reused), at {result.location}"
        )
    return 0


def _search(args: argparse.Namespace) -> int:
    from .errors import UsageError
    from .loader import load

    # Checked before anything loads: a model takes seconds.
    if args.top_k < 1:
        raise UsageError(f"-k/--top-k must be at least 1 (got {args.top_k})")
    from .modes import check_mode

    check_mode(args.mode, args.rescore)
    if args.device not in ("auto", "cpu"):
        from .models import pick_devices

        pick_devices(args.device)
    index = load(args.dst, args.revision, model=args.model, device=args.device)
    hits = index.search(
        args.query, top_k=args.top_k, by_text=not args.chunks, mode=args.mode, rescore=args.rescore
    )
    records = [
        {"rank": rank, **hit, "score": round(hit["score"], 6)} for rank, hit in enumerate(hits, start=1)
    ]
    if args.json:
        print(json.dumps(records, ensure_ascii=False, default=str))
        return 0
    column = index.text_column
    width = max(shutil.get_terminal_size((100, 24)).columns - 15, 40)
    for r in records:
        text = r["passage"]["text"] if "passage" in r else r["row"].get(column) if column else None
        shown = _one_line(text, width) if text is not None else f"#{r['corpus_id']}"
        print(f"{r['rank']:>3}  {r['score']:.4f}  {shown}")
    if records and column is None and index.metadata.get("layout") == "blog":
        print(
            "(a --layout blog build stores only the vectors: the numbers are row numbers of the "
            f"source, {(index.metadata.get('source') or {}).get('id')})",
            file=sys.stderr,
        )
    return 0


def _classify(args: argparse.Namespace) -> int:
    from .classify import classify, parse_labels, publish
    from .errors import UsageError
    from .loader import load

    # Checked before anything loads: a model takes seconds.
    labels = parse_labels(args.labels)
    if args.examples < 0:
        raise UsageError(f"--examples must be 0 or more (got {args.examples})")
    if args.publish and args.revision:
        raise UsageError("--publish adds to DST's latest commit: drop --revision")
    if args.device not in ("auto", "cpu"):
        from .models import pick_devices

        pick_devices(args.device)
    published = None
    if args.publish:
        result, published = publish(args.dst, labels, column=args.column, device=args.device)
    else:
        result = classify(load(args.dst, args.revision, device=args.device), labels)
    counts = result.counts()
    if args.json:
        head = {
            "labels": result.labels,
            "counts": counts,
            "model": result.model,
            "prompt_name": result.prompt_name,
            "prompt": result.prompt,
            "published": published,
        }
        out = sys.stdout
        out.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "rows": [')
        names = [json.dumps(n, ensure_ascii=False) for n in result.labels]
        for i, (j, score) in enumerate(zip(result.label.tolist(), result.score.tolist(), strict=True)):
            out.write(f'{", " if i else ""}{{"row": {i}, "label": {names[j]}, "score": {round(score, 6)}}}')
        out.write("]}\n")
        return 0
    prompt = result.prompt_name or result.prompt
    print(
        f"{args.dst}: {plural(len(result), 'row')} labelled by {result.model}"
        f"{f' (prompt {prompt!r})' if prompt else ''}"
    )
    width = max(len(n) for n in result.labels)
    for name, n in counts.items():
        print(f"  {name:<{width}}  {n:>9,}  {n / max(len(result), 1):6.1%}")
    index = result.index
    column = index.text_column if index is not None else None
    if args.examples and index is not None and column is not None:
        texts = index.column(column)
        line = max(shutil.get_terminal_size((100, 24)).columns - 12, 40)
        for name, rows in result.top(args.examples).items():
            if len(rows):
                print(f"{name}:")
            for i in rows.tolist():
                print(f"  {result.score[i]:.4f}  {_one_line(texts[i].as_py(), line)}")
    if published is not None:
        print(f"{args.dst}: added {args.column} and {args.column}_score, at {published}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .exporter import export

    fmt, path = args.to
    result = export(args.dst, to=fmt, path=path, force=args.force, index=args.index, revision=args.revision)
    index = f"{result.index} index on {result.vector_column!r}" if result.index else "no index"
    print(
        f"{args.dst}: {plural(result.rows, 'row')}, {result.dimension}-d, exported to {fmt} at {result.path} "
        f"({index})"
    )
    return 0


def _map(args: argparse.Namespace) -> int:
    from .maps import publish

    made, where = publish(args.dst, device=args.device)
    if args.png:
        made.save(args.png)
    regions = [label for label in made.labels if label]
    print(f"{args.dst}: mapped {plural(len(made), 'row')}; added map_x, map_y and map.png, at {where}")
    for label in regions:
        print(f"  {label}")
    return 0


def _one_line(text: Any, width: int) -> str:
    """TEXT on one line of at most WIDTH characters: the human format shortens, --json does not."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1].rstrip() + "…"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hubembed` command. Returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:  # one before the subcommand, one after
        parser.error("-q/--quiet and -v/--verbose cannot be used together")
    progress = _setup_output(args)
    try:
        if args.command == "workflow":
            return run_workflow_command(args)
        if args.command == "build":
            return _build(args, progress)
        if args.command == "classify":
            return _classify(args)
        if args.command == "export":
            return _export(args)
        if args.command == "map":
            return _map(args)
        return _search(args)
    except HubembedError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Interrupted: nothing was published.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
