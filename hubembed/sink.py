"""Sink: publish a finished build, all at once, to a local folder or a Hub dataset repo.

A build is staged in full first; the sink then swaps the folder in or pushes one commit,
so readers see either the old dataset or the new one, never half of each.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from . import _hub, card
from .errors import AuthError, DestinationError, HubembedError, HubUnreachableError

log = logging.getLogger("hubembed")

# Files a build owns in DST; anything else already there is left alone.
OWNED_PREFIXES = ("data/", "vectors/", "index/", "embeddings.csv", "README.md")


class Sink(ABC):
    #: how downstream code refers to DST (a repo id or a path), used in the card's snippets
    ref: str
    #: the revision preflight saw (a commit sha on the Hub), to read the previous build at
    revision: str | None = None

    @abstractmethod
    def preflight(self) -> None:
        """Fail before any work if DST cannot be written. Writes nothing."""

    @abstractmethod
    def staging(self) -> Path:
        """An empty folder to assemble the build in."""

    @abstractmethod
    def publish(self, staged: Path, message: str) -> str:
        """Make STAGED the content of DST in one step; return a commit sha or the path."""

    def existing_card(self) -> str | None:
        """DST's current README.md, if DST exists and has one."""
        return None

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)


def open_sink(dst: str, *, token: str | None, private: bool) -> Sink:
    path = Path(dst)
    if dst.startswith(_hub.HF_PREFIX) or (not path.exists() and _is_hub_ref(dst)):
        return HubSink(_hub.strip_hf_prefix(dst), token=token, private=private)
    return LocalSink(path)


def _is_hub_ref(dst: str) -> bool:
    # "user/name" is a repo; "out", "./user/name" and "/abs/path" are folders.
    return dst.count("/") == 1 and not dst.startswith((".", "/", "~")) and _hub.looks_like_repo_id(dst)


class LocalSink(Sink):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ref = str(path)

    def preflight(self) -> None:
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise DestinationError(f"{self.path} is a file; give a folder (new, empty, or a previous build)")
        entries = list(self.path.iterdir())
        readme = self.path / "README.md"
        if entries and not (readme.is_file() and card.read_metadata(readme.read_text(encoding="utf-8"))):
            names = ", ".join(sorted(e.name for e in entries)[:5])
            raise DestinationError(
                f"{self.path} already holds other files ({names}) and is not a hubembed build; "
                "give a new or empty folder"
            )

    def existing_card(self) -> str | None:
        readme = self.path / "README.md"
        return readme.read_text(encoding="utf-8") if readme.is_file() else None

    def staging(self) -> Path:
        # Beside the target, so the final rename stays on one filesystem and is atomic.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staged = self.path.parent / f".{self.path.name}.hubembed-{uuid.uuid4().hex[:8]}"
        staged.mkdir()
        return staged

    def publish(self, staged: Path, message: str) -> str:
        old = None
        if self.path.exists():
            old = self.path.parent / f".{self.path.name}.hubembed-old-{uuid.uuid4().hex[:8]}"
            self.path.rename(old)
            # Keep files the user added beside a previous build.
            for entry in old.iterdir():
                name = f"{entry.name}/" if entry.is_dir() else entry.name  # "data/", as prefixes are
                if not name.startswith(OWNED_PREFIXES) and not (staged / entry.name).exists():
                    entry.rename(staged / entry.name)
        staged.rename(self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return str(self.path)


class HubSink(Sink):
    def __init__(self, repo_id: str, *, token: str | None, private: bool) -> None:
        self.repo_id = repo_id
        self.ref = repo_id
        self.token = token
        self.private = private
        self._parent: str | None = None
        self._files: list[str] = []
        self._card: str | None = None

    def _api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(token=self.token)

    def preflight(self) -> None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

        if not self.token:
            raise AuthError(f"pushing to {self.repo_id} needs a write token: {_hub.LOGIN_HINT}")
        api = self._api()
        try:
            me = api.whoami()
        except HfHubHTTPError as exc:
            raise AuthError(f"the Hub refused the token (invalid or expired): {_hub.LOGIN_HINT}") from exc
        except Exception as exc:
            if _hub.is_connection_error(exc):
                raise HubUnreachableError(f"cannot reach the Hub to push {self.repo_id}: {exc}") from exc
            raise
        namespace = self.repo_id.split("/")[0] if "/" in self.repo_id else me["name"]
        allowed = {me["name"], *(org.get("name") for org in me.get("orgs", []))}
        if namespace not in allowed:
            raise DestinationError(
                f"cannot write to {self.repo_id}: the token belongs to {me['name']!r}, who is not a member "
                f"of {namespace!r}; use a repo under {me['name']}/ or an organisation you belong to"
            )
        try:
            info = api.dataset_info(self.repo_id)
        except RepositoryNotFoundError:
            return
        if self.private and not info.private:
            # Pushing rows the user meant to keep private into a public repo cannot be undone;
            # changing an existing repo's visibility is theirs to decide.
            raise DestinationError(
                f"dataset {self.repo_id} exists and is public, and --private only applies to a repo "
                "the build creates; make it private in its settings on the Hub, or drop --private"
            )
        self._parent = self.revision = info.sha
        self._files = [s.rfilename for s in info.siblings or []]
        if "README.md" in self._files:
            path = hf_hub_download(
                self.repo_id, "README.md", repo_type="dataset", revision=info.sha, token=self.token
            )
            self._card = Path(path).read_text(encoding="utf-8")
        foreign = [f for f in self._files if f != ".gitattributes"]
        if foreign and not (self._card and card.read_metadata(self._card)):
            raise DestinationError(
                f"dataset {self.repo_id} already holds other files ({', '.join(foreign[:5])}) and is not a "
                "hubembed build; push to a new repo"
            )

    def existing_card(self) -> str | None:
        return self._card

    def staging(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="hubembed-"))

    def publish(self, staged: Path, message: str) -> str:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete
        from huggingface_hub.errors import HfHubHTTPError

        api = self._api()
        new = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
        ops: list[CommitOperationAdd | CommitOperationDelete] = [
            CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(staged / p)) for p in new
        ]
        stale = [f for f in self._files if f.startswith(OWNED_PREFIXES) and f not in new]
        ops += [CommitOperationDelete(path_in_repo=f) for f in stale]
        created = False
        try:
            if self._parent is None:
                api.create_repo(self.repo_id, repo_type="dataset", private=self.private)
                created = True
                self._parent = api.dataset_info(self.repo_id).sha
            commit = api.create_commit(
                self.repo_id,
                ops,
                commit_message=message,
                repo_type="dataset",
                parent_commit=self._parent,
            )
        except HfHubHTTPError as exc:
            if created:
                # Leave no empty repo behind: the build failed, DST stays as it was.
                api.delete_repo(self.repo_id, repo_type="dataset", missing_ok=True)
            status = exc.response.status_code if exc.response is not None else None
            if status == 412:
                raise DestinationError(
                    f"{self.repo_id} changed while this build ran; run the build again"
                ) from exc
            if status in (401, 403):
                raise DestinationError(f"the Hub refused to let this token write to {self.repo_id}") from exc
            raise HubembedError(
                f"pushing to {self.repo_id} failed (HTTP {status}); nothing was published, run the build again"
            ) from exc
        finally:
            self.discard(staged)
        return str(commit.oid)
