"""Small helpers shared by everything that talks to the Hub."""

from __future__ import annotations

import re

from . import config

LOGIN_HINT = "log in with `hf auth login` or set the HF_TOKEN environment variable"

# A Hub repo id: "name" (canonical) or "namespace/name".
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
HF_PREFIX = "hf://datasets/"


def looks_like_repo_id(value: str) -> bool:
    return bool(_REPO_ID.match(value)) and not value.endswith((".csv", ".json", ".jsonl", ".parquet"))


def repo_id_of(ref: str) -> str | None:
    """The Hub dataset id REF names ("user/name", "name", "hf://datasets/user/name"), or None
    where REF can only be a local path ("./x", "/x", "~/x", "a/b/c", "x.csv")."""
    if ref.startswith(HF_PREFIX):
        return strip_hf_prefix(ref)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1 or not looks_like_repo_id(ref):
        return None
    return ref


def strip_hf_prefix(value: str) -> str:
    return value[len(HF_PREFIX) :] if value.startswith(HF_PREFIX) else value


def repo_url(repo_id: str, repo_type: str = "dataset") -> str:
    prefix = "datasets/" if repo_type == "dataset" else ""
    return f"{config.hf_endpoint()}/{prefix}{repo_id}"


def is_connection_error(exc: BaseException) -> bool:
    """True for failures to reach a server at all (DNS, refused, reset, timeout).

    huggingface_hub raises its HTTP client's transport errors, whose module has changed
    between releases (requests, httpx, httpx2), so we match on the class names they share.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    transport = {"TransportError", "ConnectError", "ConnectionError", "Timeout", "TimeoutException"}
    return bool(names & transport) or isinstance(exc, (ConnectionError, TimeoutError))


def source_error(
    exc: BaseException, repo_id: str, revision: str | None, token: str | None
) -> Exception | None:
    """The error to raise instead of EXC, a Hub client's failure to read dataset REPO_ID:
    SourceError (gated, missing, no such revision) or HubUnreachableError; None if not ours."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from .errors import HubUnreachableError, SourceError

    if is_connection_error(exc):
        return HubUnreachableError(f"cannot reach the Hub at {config.hf_endpoint()}: {exc}")
    if isinstance(exc, GatedRepoError):
        return SourceError(
            f"dataset {repo_id!r} is gated: accept its conditions at {repo_url(repo_id)} and {LOGIN_HINT}"
        )
    if isinstance(exc, RepositoryNotFoundError):
        hint = "check the id" if token else f"if it is private, {LOGIN_HINT}"
        return SourceError(f"dataset {repo_id!r} was not found on the Hub ({hint})")
    if isinstance(exc, RevisionNotFoundError):
        return SourceError(f"dataset {repo_id!r} has no revision {revision!r}")
    return None
