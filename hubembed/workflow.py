"""Write a GitHub Actions workflow that re-runs `hubembed build SRC DST` on a schedule.

`render_workflow` returns the workflow's YAML; `init_workflow` writes it to
``.github/workflows/hubembed-refresh.yml``. The workflow is self-contained: the same steps as
the reusable workflows/hubembed-refresh.yml of this repository (tests keep the two in step),
or, given ``uses=``, one job calling that reusable workflow.

Every value the user gives reaches the shell through ``env:``, quoted by the YAML emitter, and
none may hold ``${{``: GitHub would evaluate it as an expression.

What the workflow pip installs is pinned to the hubembed running here (`installed_package`): the
release from the index, or the VCS URL and commit pip recorded (PEP 610 ``direct_url.json``). A
local or editable install cannot be installed by a runner: then ``package=`` (``--package``)
must say what to install.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shlex
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, _hub, config
from .errors import UsageError

WORKFLOW_PATH = Path(".github/workflows/hubembed-refresh.yml")
DEFAULT_CRON = "17 3 * * *"
DEFAULT_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
CHECKOUT = "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2"
SETUP_PYTHON = "actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065 # v5.6.0"
CACHE_SHA = "5a3ec84eff668545956fd18022155c47e93e2684 # v4.2.3"

_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")
_NAMESPACED_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_USES = re.compile(
    r"^(?:[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*|\.)/\.github/workflows/[\w.-]+\.ya?ml(?:@[\w./-]+)?$"
)
# (lowest, highest, names) of each cron field; names count from `lowest`.
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    ("day of week", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)


def render_workflow(
    src: str,
    dst: str,
    *,
    column: str | None = None,
    cron: str = DEFAULT_CRON,
    build_args: Sequence[str] = (),
    uses: str | None = None,
    model: str | None = None,
    package: str | None = None,
    python_version: str = "3.12",
    torch_index_url: str = DEFAULT_TORCH_INDEX,
    timeout_minutes: int = 60,
    checkout: bool | None = None,
    keepalive: bool = True,
) -> str:
    """The YAML of a workflow that refreshes DST from SRC on CRON (UTC) and on demand.

    SRC: a Hub dataset id, ``sample:NAME``, or a relative path in the repository (then the
    workflow checks the repository out; ``checkout`` overrides the guess). DST: a Hub dataset
    id. ``build_args`` are more `hubembed build` options; a ``--model`` among them keys the
    model cache. ``package`` is what pip installs, written as given (default: the hubembed
    installed here, as `installed_package` pins it, so the schedule runs what you tried).
    ``uses``: call that reusable workflow
    (``owner/repo/.github/workflows/hubembed-refresh.yml@<commit sha>``) instead of inlining
    its steps. ``keepalive`` adds the job that keeps GitHub from disabling the schedule.
    Raises UsageError for a value that cannot go into a workflow, and when ``package`` is not
    given and hubembed is installed from a local folder or file.
    """
    local_src = _check_src(src)
    dst = _check_dst(dst)
    _check_cron(cron)
    args = [_check_text("build option", a) for a in build_args]
    found, args = _take_model(args)
    model = _check_text("--model", model or found or config.DEFAULT_MODEL)
    if column is not None:
        column = _check_text("--column", column)
    package = _check_text("package", installed_package() if package is None else package)
    if "OWNER/REPO" in package or "<full commit sha>" in package:
        raise UsageError(f"package {package!r} still holds a placeholder: give a real repository and commit")
    package = with_extras(package, needed_extras(args))
    python_version = _check_text("python version", python_version)
    torch_index_url = _check_text("torch index url", torch_index_url, empty_ok=True)
    if not isinstance(timeout_minutes, int) or not 5 <= timeout_minutes <= 360:
        raise UsageError(f"timeout_minutes must be a whole number from 5 to 360, not {timeout_minutes!r}")
    if checkout is None:
        checkout = local_src

    values = {
        "CRON": cron,
        "SRC": src,
        "DST": dst,
        "COLUMN": column or "",
        "MODEL": model,
        "BUILD_ARGS": shlex.join(args),
        "PACKAGE": package,
        "TORCH_INDEX_URL": torch_index_url,
        "PYTHON": python_version,
        "GROUP": f"hubembed-refresh-{dst}",
        "USES": uses or "",
    }
    quoted = {key: _scalar(value) for key, value in values.items()}
    quoted["TIMEOUT"] = str(timeout_minutes)
    quoted["CHECKOUT_STEP"] = _CHECKOUT_STEP if checkout else ""
    quoted["CHECKOUT_INPUT"] = "      checkout: true\n" if checkout else ""
    quoted["COLUMN_INPUT"] = f"      column: {quoted['COLUMN']}\n" if column else ""
    quoted["TIMEOUT_INPUT"] = f"      timeout-minutes: {timeout_minutes}\n"
    if uses is not None:
        if not _USES.match(uses):
            raise UsageError(
                f"uses {uses!r} is not a reusable workflow reference like "
                "owner/repo/.github/workflows/hubembed-refresh.yml@<commit sha>"
            )
        body = _CALLER_JOB
    else:
        body = _INLINE_JOB
    template = _HEADER + body + (_KEEPALIVE_JOB if keepalive else "")
    # One pass, so a value holding "@DST@" stays text.
    return _PLACEHOLDER.sub(lambda m: quoted[m.group(1)], template)


def init_workflow(src: str, dst: str, *, repo_root: Path, force: bool = False, **kw: Any) -> Path:
    """Write the workflow of `render_workflow` (same arguments) into REPO_ROOT; return its path.

    A SRC that is a file or folder in REPO_ROOT is read from a checkout of the repository.
    Raises UsageError if the workflow file exists (unless ``force``), if REPO_ROOT is not a
    folder, or for any value `render_workflow` refuses; nothing is written then.
    """
    root = Path(repo_root)
    if not root.is_dir():
        raise UsageError(f"repository root {str(root)!r} is not a folder")
    if kw.get("checkout") is None:
        exists = not src.startswith(config.SAMPLE_PREFIX) and (root / src).exists()
        if _check_src(src) and not exists:
            raise UsageError(f"SRC {src!r} is neither a Hub dataset id nor a file or folder in {root}")
        kw["checkout"] = exists
    text = render_workflow(src, dst, **kw)
    path = root / WORKFLOW_PATH
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; use --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path


# --- the `hubembed workflow` command ----------------------------------------------------------

_OWN_OPTIONS = ("--column", "--cron", "--package", "--uses", "--repo-root")


def add_workflow_parser(
    subparsers: Any, *, build_parser: argparse.ArgumentParser | None = None
) -> argparse.ArgumentParser:
    """Add `workflow init` to the CLI's subparsers; BUILD_PARSER, if given, checks build options."""
    w = subparsers.add_parser(
        "workflow",
        help="write a GitHub Actions workflow that refreshes DST on a schedule",
        description="Write a GitHub Actions workflow that re-runs `hubembed build SRC DST` on a schedule.",
    )
    commands = w.add_subparsers(dest="workflow_command", required=True, metavar="COMMAND")
    i = commands.add_parser(
        "init",
        help=f"write {WORKFLOW_PATH}",
        description=f"Write {WORKFLOW_PATH} in the repository: `hubembed build SRC DST [BUILD OPTION ...]` "
        "daily and on demand, publishing with the repository secret HF_TOKEN. Options after DST are "
        "`hubembed build` options (--model, --batch-size, ...); --column, --cron, --force, --package, "
        "--uses and --repo-root may come there too, and --force there is this command's (replace the "
        "file), not the build's.",
    )
    i.add_argument("src", metavar="SRC", help="a Hub dataset id, sample:NAME, or a path in the repository")
    i.add_argument("dst", metavar="DST", help="the Hub dataset to publish (user/name)")
    i.add_argument("--column", help="the text column (default: the only string column)")
    i.add_argument("--cron", default=DEFAULT_CRON, help=f"when to run, in UTC (default: {DEFAULT_CRON!r})")
    i.add_argument("--force", action="store_true", help="replace an existing workflow file")
    i.add_argument(
        "--package",
        metavar="SPEC",
        help="what the workflow pip installs, written as given, e.g. hubembed==X.Y.Z or "
        "git+https://github.com/OWNER/REPO@COMMIT (default: the hubembed installed here, pinned: its "
        "release, or the VCS URL and commit pip recorded; a local or editable install needs --package)",
    )
    i.add_argument("--uses", help="call this reusable workflow instead of inlining the steps")
    i.add_argument("--repo-root", type=Path, help="the repository (default: the git repository here)")
    i.add_argument(
        "build_args",
        nargs=argparse.REMAINDER,
        metavar="BUILD OPTION",
        help="`hubembed build` options for every run, e.g. --model ID --batch-size 32",
    )
    i.set_defaults(workflow_build_parser=build_parser)
    return w


def run_workflow_command(args: argparse.Namespace) -> int:
    """Run `hubembed workflow init` with ARGS from `add_workflow_parser`. Raises UsageError."""
    rest = list(args.build_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    # argparse hands everything after DST to build_args, our own options included: take them back.
    own = argparse.ArgumentParser(prog="hubembed workflow init", add_help=False, allow_abbrev=False)
    for name in _OWN_OPTIONS:
        own.add_argument(name, type=Path if name == "--repo-root" else str)
    own.add_argument("--force", action="store_true")
    late, rest = own.parse_known_args(rest)
    for name, value in vars(late).items():
        if value not in (None, False):
            setattr(args, name, value)
    if {"-h", "--help"} & set(rest):
        raise UsageError("put -h before SRC: `hubembed workflow init -h`")
    build_parser = getattr(args, "workflow_build_parser", None)
    if build_parser is not None:
        _, unknown = build_parser.parse_known_args([*rest, "--", "SRC", "DST"])
        if unknown:
            raise UsageError(f"not options of `hubembed build`: {' '.join(unknown)}")
    root = args.repo_root or _git_root(Path.cwd())
    path = init_workflow(
        args.src,
        args.dst,
        repo_root=root,
        force=args.force,
        column=args.column,
        cron=args.cron,
        build_args=rest,
        uses=args.uses,
        package=args.package,
    )
    if not getattr(args, "quiet", False):
        shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        print(
            f"Wrote {shown}. Next:\n"
            "  1. add a repository secret HF_TOKEN, a Hub token that may write to "
            f"{_hub.strip_hf_prefix(args.dst)}: gh secret set HF_TOKEN\n"
            f"  2. commit and push {WORKFLOW_PATH}\n"
            f"  3. run it once now: gh workflow run {WORKFLOW_PATH.name}"
        )
    return 0


# --- what the workflow installs ------------------------------------------------------------------

_ASK_PACKAGE = (
    "a GitHub runner cannot install it. Say what the workflow should install with --package SPEC "
    "(package= in Python), e.g. --package hubembed==X.Y.Z (a release on PyPI) or --package {example}"
)
_EXAMPLE_PACKAGE = "git+https://github.com/OWNER/REPO@<full commit sha>"


def installed_package() -> str:
    """What pip should install on a runner to get the hubembed running here, pinned.

    Installed from an index: ``hubembed==VERSION``; from a VCS: ``git+URL@COMMIT`` (pip's record,
    PEP 610). Raises UsageError for a local or editable install, or a source tree on sys.path.
    """
    return package_spec(*_running_install())


# Build options whose work needs an extra on the runner: without it a scheduled refresh stops
# (a mapped build also stays mapped on refresh, hence --map's extra on every run).
_EXTRA_OPTIONS = {"--map": "map", "--quantize": "search", "--index": "search"}


def needed_extras(build_args: Sequence[str]) -> list[str]:
    """The extras of hubembed that the `hubembed build` options BUILD_ARGS need."""
    found = {_EXTRA_OPTIONS.get(a.split("=", 1)[0]) for a in build_args}
    pairs = itertools.pairwise(build_args)
    if "--engine=ray" in build_args or any(a == "--engine" and b == "ray" for a, b in pairs):
        found.add("ray")
    return sorted(e for e in found if e)


def with_extras(package: str, extras: Sequence[str]) -> str:
    """PACKAGE (a pip spec for hubembed) with EXTRAS: ``hubembed[map]==1.2`` or, for a URL, the
    PEP 508 ``hubembed[map]@URL``, written without spaces since the install step splits the spec
    on them. Any other spec (several packages, another name) is left as the user wrote it."""
    if not extras or any(c.isspace() for c in package):
        return package
    named = re.fullmatch(r"hubembed(?:\[([\w,-]*)\])?((?:[=<>!~]=?|===).*)?", package)
    if named:
        had = [e for e in (named.group(1) or "").split(",") if e]
        return f"hubembed[{','.join(sorted({*had, *extras}))}]{named.group(2) or ''}"
    if re.match(r"[a-z]+\+https://|https://", package):
        return f"hubembed[{','.join(extras)}]@{package}"
    return package


def package_spec(version: str, direct_url: str | None) -> str:
    """The pip spec that reinstalls a hubembed VERSION whose ``direct_url.json`` is DIRECT_URL.

    None (installed from an index): ``hubembed==VERSION``. A VCS URL: ``vcs+URL@COMMIT``. An
    https archive: its URL, with its hash. Raises UsageError for a local folder (editable or
    not), a local file or repository, a URL holding credentials, or a record it cannot read.
    """
    if direct_url is None:
        return f"hubembed=={version}"
    try:
        info = json.loads(direct_url)
    except ValueError:
        info = None
    url = info.get("url") if isinstance(info, dict) else None
    try:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    except ValueError:
        parts = None
    if not isinstance(info, dict) or not isinstance(url, str) or parts is None:
        raise UsageError(f"hubembed {version}: pip's record of where it came from is unreadable; " + _ask())
    if parts.scheme == "file" or "dir_info" in info:
        dir_info = info.get("dir_info")
        how = (
            "an editable install" if isinstance(dir_info, dict) and dir_info.get("editable") else "installed"
        )
        raise UsageError(
            f"hubembed {version} is {how} from the local {_local_name(url)}, so "
            + _ask(_file_path(url) if "dir_info" in info else None)
        )
    # Never show what stands before an @ in the host part: a user name, a token or a password.
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    if parts.scheme != "https" or not parts.hostname or any(c.isspace() for c in url):
        raise UsageError(f"hubembed {version} was installed from {shown!r}, not an https URL, so " + _ask())
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            f"hubembed {version} was installed from {shown!r} with credentials in the URL; " + _ask()
        )
    subdirectory = info.get("subdirectory")
    fragments = [f"subdirectory={subdirectory}"] if isinstance(subdirectory, str) and subdirectory else []
    vcs = info.get("vcs_info")
    if isinstance(vcs, dict):
        kind, commit = vcs.get("vcs"), vcs.get("commit_id")
        if not (isinstance(kind, str) and re.fullmatch(r"[a-z]+", kind)):
            raise UsageError(f"hubembed {version}: pip's record names no version control system; " + _ask())
        if not (isinstance(commit, str) and re.fullmatch(r"[\w.-]+", commit)):
            raise UsageError(f"hubembed {version}: pip's record of {shown} has no commit; " + _ask())
        return f"{kind}+{url}@{commit}" + "".join(f"#{f}" for f in fragments)
    archive = info.get("archive_info")
    if isinstance(archive, dict):
        hashes = archive.get("hashes")
        if not isinstance(hashes, dict):
            legacy = archive.get("hash")
            hashes = dict([legacy.split("=", 1)]) if isinstance(legacy, str) and "=" in legacy else {}
        # pip checks the download against a hash in the fragment.
        for name in ("sha256", "sha384", "sha512"):
            if isinstance(hashes.get(name), str) and re.fullmatch(r"[0-9a-f]+", hashes[name]):
                fragments.insert(0, f"{name}={hashes[name]}")
                break
        return url + ("#" + "&".join(fragments) if fragments else "")
    raise UsageError(
        f"hubembed {version}: pip's record of {shown} is neither a VCS nor an archive; " + _ask()
    )


def _ask(folder: Path | None = None) -> str:
    return _ASK_PACKAGE.format(example=(folder and _git_package(folder)) or _EXAMPLE_PACKAGE)


def _local_name(url: str) -> str:
    path = _file_path(url)
    kind = "folder" if path is not None and path.is_dir() else "file"
    return f"{kind} {str(path) if path is not None else url!r}"


def _file_path(url: object) -> Path | None:
    if not isinstance(url, str):
        return None
    parts = urllib.parse.urlsplit(url)
    return Path(urllib.request.url2pathname(parts.path)) if parts.scheme == "file" else None


def _git_package(folder: Path) -> str | None:
    """``git+https://HOST/PATH@HEAD`` for a git checkout whose origin is a public-looking remote."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        origin, head = git("remote", "get-url", "origin"), git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None
    scp = re.fullmatch(r"[\w.-]+@([\w.-]+):(?!/)(\S+)", origin)  # git@github.com:owner/repo.git
    if scp:
        origin = f"https://{scp[1]}/{scp[2]}"
    parts = urllib.parse.urlsplit(origin)
    if parts.scheme == "ssh" and parts.hostname:
        origin = f"https://{parts.hostname}{parts.path}"
    parts = urllib.parse.urlsplit(origin)
    if parts.scheme != "https" or parts.username or parts.password or not re.fullmatch(r"[0-9a-f]{40}", head):
        return None
    return f"git+{origin}@{head} (the commit checked out in {folder}, once pushed)"


def _running_install() -> tuple[str, str | None]:
    """(version, direct_url.json or None) of the installed distribution this hubembed runs from.

    The distribution must hold this very module (or, editable, point at its folder): a source
    tree on sys.path (its hubembed.egg-info, say) shadows whatever is installed.
    """
    import importlib.metadata

    init = Path(__file__).resolve().with_name("__init__.py")
    for dist in importlib.metadata.distributions(name="hubembed"):
        direct = dist.read_text("direct_url.json")
        try:
            info = json.loads(direct) if direct else {}
        except ValueError:
            info = {}
        dir_info = info.get("dir_info") if isinstance(info, dict) else None
        if isinstance(dir_info, dict) and dir_info.get("editable"):
            folder = _file_path(info.get("url"))
            if folder is not None and init.is_relative_to(folder.resolve()):
                return dist.version, direct
            continue
        if dist.read_text("RECORD") is None and dist.read_text("installed-files.txt") is None:
            continue  # the metadata of a source tree, not of an installation
        for file in dist.files or ():
            if file.name == "__init__.py" and Path(str(dist.locate_file(file))).resolve() == init:
                return dist.version, direct
    raise UsageError(
        f"hubembed runs from {init.parent}, which no installed distribution holds (a source tree on "
        "sys.path?), so " + _ask(init.parent.parent)
    )


# --- checks ------------------------------------------------------------------------------------


def _check_text(what: str, value: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty_ok):
        raise UsageError(f"{what} must be a non-empty string, not {value!r}")
    if not value.isprintable():
        raise UsageError(f"{what} {value!r} holds a line break or another unprintable character")
    if "${{" in value:
        raise UsageError(f"{what} {value!r} holds '${{{{', which GitHub would run as an expression")
    return value


def _check_src(src: str) -> bool:
    """Check SRC; True if it is a path in the repository rather than a Hub id or a sample."""
    _check_text("SRC", src)
    if src.startswith(config.SAMPLE_PREFIX):
        if src[len(config.SAMPLE_PREFIX) :] not in config.SAMPLES:
            raise UsageError(f"unknown sample {src!r}; available: {', '.join(config.SAMPLES)}")
        return False
    if src.startswith(_hub.HF_PREFIX):
        if not _NAMESPACED_ID.match(_hub.strip_hf_prefix(src)):
            raise UsageError(f"SRC {src!r} is not a Hub dataset id like hf://datasets/user/name")
        return False
    if src.count("/") <= 1 and _hub.looks_like_repo_id(src):
        return False  # "user/name" (or a canonical "name"): a folder of that name wins in init_workflow
    path = Path(src)
    if path.is_absolute() or src.startswith("~") or ".." in path.parts:
        raise UsageError(
            f"SRC {src!r}: the workflow runs on a fresh machine, so SRC must be a Hub dataset id or a "
            "path inside the repository, relative to its root"
        )
    return True


def _check_dst(dst: str) -> str:
    _check_text("DST", dst)
    if not _NAMESPACED_ID.match(_hub.strip_hf_prefix(dst)):
        raise UsageError(
            f"DST {dst!r} must be a Hub dataset id like user/name: a scheduled build runs on a fresh "
            "machine, so a local folder would be lost"
        )
    return dst


def _check_cron(cron: str) -> None:
    """A five-field cron line, as GitHub reads it (UTC), at most every 5 minutes."""
    _check_text("cron", cron)
    fields = cron.split()
    if len(fields) != 5:
        raise UsageError(
            f"cron {cron!r} must have 5 fields: minute hour day-of-month month day-of-week "
            f"(e.g. {DEFAULT_CRON!r}: daily at 03:17 UTC)"
        )
    minutes: set[int] = set()
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        values = _cron_field(text, name, low, high, names, cron)
        if name == "minute":
            minutes = values
    ordered = sorted(minutes)
    gaps = [b - a for a, b in itertools.pairwise(ordered)] + [ordered[0] + 60 - ordered[-1]]
    if min(gaps) < 5:
        raise UsageError(f"cron {cron!r} runs more often than every 5 minutes, which GitHub does not allow")


def _cron_field(text: str, name: str, low: int, high: int, names: Sequence[str], cron: str) -> set[int]:
    def number(token: str) -> int:
        if token.lower() in names:
            return low + list(names).index(token.lower())
        if not token.isdigit() or not low <= int(token) <= high + (name == "day of week"):
            raise UsageError(f"cron {cron!r}: {token!r} is not a valid {name} ({low}-{high})")
        return int(token)

    values: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        step = number(step_text) if step_text else 1
        if step < 1:
            raise UsageError(f"cron {cron!r}: step {step_text!r} must be at least 1")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = number(a), number(b)
        else:
            first = number(span)
            last = high if step_text else first
        if first > last:
            raise UsageError(f"cron {cron!r}: the range {span!r} runs backwards")
        values.update(range(first, last + 1, step))
    return values


def _take_model(args: list[str]) -> tuple[str | None, list[str]]:
    """Pull `--model X` out of build options: the workflow passes it on itself, and keys its cache on it."""
    model, rest, i = None, [], 0
    while i < len(args):
        if args[i] == "--model" and i + 1 < len(args):
            model, i = args[i + 1], i + 2
            continue
        if args[i].startswith("--model="):
            model = args[i].partition("=")[2]
        else:
            rest.append(args[i])
        i += 1
    return model, rest


def _scalar(value: str) -> str:
    """VALUE as a double-quoted YAML scalar: no YAML or shell meaning survives."""
    import yaml

    return str(yaml.safe_dump(value, default_style='"', width=float("inf"), allow_unicode=True)).strip()


def _git_root(start: Path) -> Path:
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    raise UsageError(f"{start} is not in a git repository; give the repository with --repo-root")


# --- the workflow --------------------------------------------------------------------------------
# The scripts below are those of workflows/hubembed-refresh.yml (tests/test_workflow.py checks).

_HEADER = f"""\
# Refreshes an embedded dataset on the Hugging Face Hub: `hubembed build` daily and on demand
# (Actions tab > hubembed refresh > Run workflow). Written by `hubembed workflow init`
# (hubembed {__version__}); run it again with --force to change it.
#
# It needs a repository secret HF_TOKEN: a Hub token that may write to DST (a fine-grained token
# limited to that repo is best). Values reach the scripts only through `env:`.
name: hubembed refresh

on:
  schedule:
    - cron: @CRON@ # UTC
  workflow_dispatch:

permissions: {{}}

jobs:
"""

_CHECKOUT_STEP = f"""\
      - name: Check out the repository
        uses: {CHECKOUT}
        with:
          persist-credentials: false

"""

_CALLER_JOB = """\
  refresh:
    name: hubembed build
    permissions:
      contents: read # for the checkout, if any; nothing else uses the GITHUB_TOKEN
    uses: @USES@
    with:
      src: @SRC@
      dst: @DST@
@COLUMN_INPUT@      model: @MODEL@
      build-args: @BUILD_ARGS@
      package: @PACKAGE@
      python-version: @PYTHON@
      torch-index-url: @TORCH_INDEX_URL@
@CHECKOUT_INPUT@@TIMEOUT_INPUT@    secrets:
      HF_TOKEN: ${{ secrets.HF_TOKEN }}
"""

_INLINE_JOB = (
    """\
  refresh:
    name: hubembed build
    runs-on: ubuntu-latest
    permissions:
      contents: read # for the checkout, if any; nothing else uses the GITHUB_TOKEN
    timeout-minutes: @TIMEOUT@
    # Two refreshes of one dataset never overlap: a second one waits for the first to finish.
    concurrency:
      group: @GROUP@
      cancel-in-progress: false
    defaults:
      run:
        shell: bash
    env:
      SRC: @SRC@
      DST: @DST@
      COLUMN: @COLUMN@
      MODEL: @MODEL@
      BUILD_ARGS: @BUILD_ARGS@
      HUBEMBED_PACKAGE: @PACKAGE@
      TORCH_INDEX_URL: @TORCH_INDEX_URL@
      TIMEOUT_MINUTES: @TIMEOUT@
      PIP_DISABLE_PIP_VERSION_CHECK: "1"
      PYTHONUNBUFFERED: "1"
    steps:
@CHECKOUT_STEP@"""
    + f"""\
      - name: Set up Python
        uses: {SETUP_PYTHON}
        with:
          python-version: @PYTHON@
"""
    + r"""
      - name: Compute cache keys and the build's deadline
        id: keys
        run: |
          # Fixed cache folders, whatever the runner's environment says.
          echo "HF_HOME=$HOME/.cache/huggingface" >> "$GITHUB_ENV"
          echo "PIP_CACHE_DIR=$HOME/.cache/pip" >> "$GITHUB_ENV"
          # Stop the build before the job's limit, keeping a tenth of it (2 to 10 minutes) for
          # saving the checkpoints: a job killed at its limit would save nothing.
          reserve=$(( TIMEOUT_MINUTES * 6 ))
          reserve=$(( reserve < 120 ? 120 : reserve > 600 ? 600 : reserve ))
          echo "HUBEMBED_DEADLINE=$(( $(date +%s) + TIMEOUT_MINUTES * 60 - reserve ))" >> "$GITHUB_ENV"
          # Cache keys may not hold commas, and model ids and specs are free text: use digests.
          digest() { printf '%s' "$1" | python -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])'; }
          week=$(date -u +%G-W%V)
          pyver=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
          hf="hubembed-$RUNNER_OS-$(digest "$MODEL $DST")"
          pip="pip-$RUNNER_OS-py$pyver-$(digest "$HUBEMBED_PACKAGE $TORCH_INDEX_URL")"
          {
            echo "hf=$hf-$week-$GITHUB_RUN_ID-$GITHUB_RUN_ATTEMPT"
            echo "hf-week=$hf-$week-"
            echo "hf-any=$hf-"
            echo "pip=$pip-$week"
            echo "pip-any=$pip-"
          } >> "$GITHUB_OUTPUT"

      # pip's downloads, renewed weekly so new releases are picked up.
      - name: Cache pip downloads
        uses: actions/cache@"""
    + CACHE_SHA
    + r"""
        with:
          path: ~/.cache/pip
          key: ${{ steps.keys.outputs.pip }}
          restore-keys: ${{ steps.keys.outputs.pip-any }}

      # The model and hubembed's checkpoints, not the source's files. A cache entry can never be
      # overwritten, so each run saves under its own key and the next restores the newest: a
      # build killed half-way leaves its checkpoints to the next run, which resumes from them.
      - name: Restore the model and checkpoints
        id: restore
        uses: actions/cache/restore@"""
    + CACHE_SHA
    + r"""
        with:
          path: |
            ~/.cache/huggingface/hub/models--*
            ~/.cache/huggingface/hubembed
          key: ${{ steps.keys.outputs.hf }}
          restore-keys: ${{ steps.keys.outputs.hf-any }}

      - name: Install hubembed
        id: install
        run: |
          # A package left empty or holding the placeholder OWNER/REPO stops here, before any install.
          case "$HUBEMBED_PACKAGE" in
            "" | *OWNER/REPO*)
              echo "::error::set package to what pip installs: hubembed==X.Y.Z (a release on PyPI) or git+https://github.com/<owner>/<repo>@<full commit sha>"
              exit 1
              ;;
          esac
          if [ -n "$TORCH_INDEX_URL" ]; then
            python -m pip install torch --index-url "$TORCH_INDEX_URL"
          fi
          read -r -a packages <<< "$HUBEMBED_PACKAGE"
          python -m pip install "${packages[@]}"
          hubembed --version

      - name: Build and publish
        id: build
        env:
          HF_TOKEN: ${{ secrets.HF_TOKEN }}
        run: |
          args=()
          if [ -n "$MODEL" ]; then args+=(--model "$MODEL"); fi
          if [ -n "$COLUMN" ]; then args+=(--column "$COLUMN"); fi
          # Python's shlex splits BUILD_ARGS: quotes work, and nothing in it is expanded or run.
          split=$(mktemp)
          python -c 'import os, shlex, sys; sys.stdout.write("".join(a + "\0" for a in shlex.split(os.environ["BUILD_ARGS"])))' > "$split"
          while IFS= read -r -d '' arg; do args+=("$arg"); done < "$split"
          left=$(( HUBEMBED_DEADLINE - $(date +%s) ))
          if [ "$left" -lt 60 ]; then
            echo "::error::no time left for the build; raise timeout-minutes"
            exit 1
          fi
          # At the deadline, Ctrl-C: hubembed stops cleanly, keeping its checkpoints.
          timeout --signal=INT --kill-after=60 "$left" hubembed build "${args[@]}" -- "$SRC" "$DST"

      # Saved when the build did not finish (its checkpoints let the next run resume), and once
      # a week otherwise (a fresh copy of the model); an unchanged cache is not uploaded daily.
      - name: Save the model and checkpoints
        if: >-
          always() && steps.keys.outcome == 'success' && (steps.build.outcome != 'success'
          || !startsWith(steps.restore.outputs.cache-matched-key, steps.keys.outputs.hf-week))
        uses: actions/cache/save@"""
    + CACHE_SHA
    + r"""
        with:
          path: |
            ~/.cache/huggingface/hub/models--*
            ~/.cache/huggingface/hubembed
          key: ${{ steps.keys.outputs.hf }}
"""
)

_KEEPALIVE_JOB = r"""
  # GitHub disables the schedule of a public repository's workflows after 60 days without
  # activity in the repository, with one e-mail and no failed run to notice. Enabling a workflow
  # through the API restarts that clock even when it is enabled, so each scheduled run
  # re-enables its own workflow: this job alone gets `actions: write`, with the run's own token.
  keepalive:
    name: Keep the schedule enabled
    if: github.event_name == 'schedule'
    runs-on: ubuntu-latest
    permissions:
      actions: write # to re-enable this workflow, and nothing else
    timeout-minutes: 5
    steps:
      - name: Re-enable this workflow
        env:
          GH_TOKEN: ${{ github.token }}
        run: |
          # GITHUB_WORKFLOW_REF is owner/repo/.github/workflows/NAME.yml@ref; the API takes NAME.yml.
          path=${GITHUB_WORKFLOW_REF%%@*}
          gh api --method PUT "repos/$GITHUB_REPOSITORY/actions/workflows/${path##*/}/enable"
"""
