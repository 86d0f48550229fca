"""A local stand-in for the Hugging Face Hub HTTP API, for tests.

It speaks the part of the Hub's protocol that the real ``huggingface_hub`` and ``datasets`` clients use
(see /work/shared/HUB_PROTOCOL.md): repo create/delete/info, tree and paths-info listings, commit history,
preupload + git-LFS batch uploads, ndjson commits, ``resolve`` downloads with Range support, and whoami.
Repos are stored under ``root`` (content-addressed blobs plus one JSON file per repo). Stdlib only; PyYAML is
used if importable, to fill ``cardData`` and to validate README metadata.

Clients must run with ``HF_ENDPOINT=<server.url>`` and ``HF_HUB_DISABLE_XET=1`` (both read at import time):
see ``HubServer.client_env`` and ``HubServer.patch_clients``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import json
import os
import pathlib
import re
import secrets
import threading
import traceback
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

try:  # optional, only for `cardData` and README validation
    import yaml
except ImportError:  # pragma: no cover
    yaml = None  # type: ignore[assignment]

PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_SUFFIXES = (
    ".parquet", ".arrow", ".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".npy", ".npz",
    ".pkl", ".pickle", ".joblib", ".msgpack", ".model", ".zip", ".gz", ".tar", ".zst", ".tgz", ".xz", ".7z",
    ".png", ".jpg", ".jpeg", ".wav", ".mp3", ".flac", ".tflite", ".ot",
)  # fmt: skip
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
REGULAR_MAX_SIZE = 10 * 1024 * 1024
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


class HubError(Exception):
    """An HTTP error answer: status, message (JSON `error` + X-Error-Message) and optional X-Error-Code."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def is_lfs(path: str, size: int, sample: bytes) -> bool:
    """The Hub decides from .gitattributes; here: binary suffixes, NUL bytes in the sample, or big files."""
    return path.lower().endswith(LFS_SUFFIXES) or b"\0" in sample or size > REGULAR_MAX_SIZE


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_card(readme: bytes) -> dict | None:
    text = readme.decode("utf-8", errors="replace")
    if yaml is None or not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    try:
        data = yaml.safe_load(text[3:end]) if end != -1 else None
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def use_local_hub(url: str, root: pathlib.Path) -> None:
    """Point huggingface_hub, datasets and hubembed at the server at URL, with their caches under
    ROOT, online and with no token. They read HF_ENDPOINT when imported: call this first."""
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_OFFLINE",
    ):
        os.environ.pop(name, None)
    os.environ.update(
        HF_ENDPOINT=url,
        HF_HOME=str(root / "hf_home"),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HUBEMBED_CACHE=str(root / "hubembed_cache"),
        TOKENIZERS_PARALLELISM="false",
    )


class HubServer:
    """In-process fake Hub. ``users`` maps token -> user name, ``orgs`` maps org name -> member user names."""

    def __init__(
        self,
        root: pathlib.Path,
        users: dict[str, str] | None = None,
        orgs: dict[str, list[str]] | None = None,
    ):
        self.root = pathlib.Path(root)
        self.users = dict(users or {})
        self.orgs = {org: list(members) for org, members in (orgs or {}).items()}
        self.url = ""
        self.requests_log: list[tuple[str, str, dict]] = []
        self.errors: list[str] = []  # tracebacks of requests that crashed the server (answered 500)
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], dict] = {}
        self._pending_uploads: dict[str, tuple[str, int]] = {}  # one-time upload secret -> (sha256, size)
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        for path in sorted(self.root.glob("repos/**/*.json")):
            repo = json.loads(path.read_text())
            self._repos[(repo["type"], repo["id"])] = repo

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        handler = type("BoundHubHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub_server", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        httpd, thread, self._httpd, self._thread = self._httpd, self._thread, None, None
        if httpd is not None and thread is not None:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def client_env(self, hf_home: os.PathLike | str, token: str | None = None) -> dict[str, str]:
        """Environment for a client subprocess: this endpoint, no xet, no offline mode, a private HF_HOME."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(
            HF_ENDPOINT=self.url,
            HF_HOME=str(hf_home),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        )
        if token is not None:
            env["HF_TOKEN"] = token
        return env

    def patch_clients(self, monkeypatch) -> None:
        """Point already-imported huggingface_hub / datasets at this server (pytest's monkeypatch fixture)."""
        import huggingface_hub
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        # the module-level HfApi behind huggingface_hub.upload_file & co. captured the endpoint at import
        monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", self.url)
        huggingface_hub.HfFileSystem.clear_instance_cache()
        try:
            import datasets.config
        except ImportError:  # pragma: no cover
            return
        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", self.url)
        monkeypatch.setattr(
            datasets.config, "HUB_DATASETS_URL", self.url + "/datasets/{repo_id}/resolve/{revision}/{path}"
        )
        monkeypatch.setattr(datasets.config, "USE_PARQUET_EXPORT", False)

    # ------------------------------------------------------------------ test helpers (no HTTP)

    def create_repo(
        self,
        repo_id: str,
        repo_type: str = "dataset",
        private: bool = False,
        gated: bool = False,
        files: dict[str, bytes] | None = None,
        author: str = "hub_server",
    ) -> str:
        """Create a repo whose initial commit holds `.gitattributes` plus `files`; returns the commit sha."""
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise ValueError(f"{repo_type} repo {repo_id} already exists")
            repo = {
                "type": repo_type,
                "id": repo_id,
                "private": private,
                "gated": gated,
                "created": now_iso(),
            }
            repo["commits"] = []
            snapshot = {".gitattributes": self._store(".gitattributes", GITATTRIBUTES)}
            snapshot.update({path: self._store(path, data) for path, data in (files or {}).items()})
            self._repos[(repo_type, repo_id)] = repo
            return self._add_commit(repo, snapshot, "initial commit", "", author)

    def commit_files(
        self,
        repo_id: str,
        files: dict[str, bytes],
        repo_type: str = "dataset",
        deletes: Sequence[str] = (),
        message: str = "Update files (hub_server)",
    ) -> str:
        """Make a new commit on main that adds/overwrites `files` and deletes `deletes`; returns its sha."""
        with self._lock:
            repo = self._get(repo_type, repo_id)
            snapshot = dict(repo["commits"][-1]["files"])
            for path in deletes:
                del snapshot[path]
            snapshot.update({path: self._store(path, data) for path, data in files.items()})
            return self._add_commit(repo, snapshot, message, "", "hub_server")

    def commits(self, repo_id: str, repo_type: str = "dataset") -> list[dict]:
        """Commit history of main, newest first: dicts with id, title, message, date, authors."""
        with self._lock:
            return [_commit_json(c) for c in reversed(self._get(repo_type, repo_id)["commits"])]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        with self._lock:
            commit = self._resolve(self._get(repo_type, repo_id), revision)
            return {path: self._blob(entry["sha256"]) for path, entry in commit["files"].items()}

    def repo_exists(self, repo_id: str, repo_type: str = "dataset") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    # ------------------------------------------------------------------ storage

    def _get(self, repo_type: str, repo_id: str) -> dict:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id}")
        return repo

    def _blob_path(self, sha256: str) -> pathlib.Path:
        return self.root / "blobs" / sha256

    def _has_blob(self, sha256: str, size: int | None = None) -> bool:
        path = self._blob_path(sha256)
        return bool(SHA256_RE.fullmatch(sha256)) and path.exists() and size in (None, path.stat().st_size)

    def _blob(self, sha256: str) -> bytes:
        return self._blob_path(sha256).read_bytes()

    def _put_blob(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self._blob_path(sha256)
        if not path.exists():
            tmp = path.with_suffix(f".tmp{next(self._counter)}")
            tmp.write_bytes(data)
            tmp.replace(path)
        return sha256

    def _entry(self, sha256: str, lfs: bool) -> dict:
        data = self._blob(sha256)
        return {"sha256": sha256, "sha1": git_blob_sha1(data), "size": len(data), "lfs": lfs}

    def _store(self, path: str, data: bytes) -> dict:
        return self._entry(self._put_blob(data), is_lfs(path, len(data), data[:512]))

    def _add_commit(self, repo: dict, snapshot: dict, title: str, message: str, author: str) -> str:
        parent = repo["commits"][-1]["id"] if repo["commits"] else ""
        seed = json.dumps([repo["type"], repo["id"], parent, snapshot, title, now_iso(), next(self._counter)])
        commit_id = hashlib.sha1(seed.encode()).hexdigest()
        commit = {"id": commit_id, "title": title, "message": message, "date": now_iso(), "author": author}
        repo["commits"].append({**commit, "files": dict(sorted(snapshot.items()))})
        self._save(repo)
        return commit_id

    def _repo_file(self, repo_type: str, repo_id: str) -> pathlib.Path:
        return self.root / "repos" / repo_type / f"{repo_id}.json"

    def _save(self, repo: dict) -> None:
        path = self._repo_file(repo["type"], repo["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(repo))

    def _delete(self, repo: dict) -> None:
        del self._repos[(repo["type"], repo["id"])]
        self._repo_file(repo["type"], repo["id"]).unlink(missing_ok=True)

    @staticmethod
    def _resolve(repo: dict, revision: str) -> dict:
        if revision in ("main", "refs/heads/main"):
            return repo["commits"][-1]
        if COMMIT_RE.fullmatch(revision):
            for commit in repo["commits"]:
                if commit["id"] == revision:
                    return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _last_commit(self, repo: dict, head: dict, path: str, is_dir: bool) -> dict:
        """Newest commit (up to `head`) that changed `path` (a file, or anything under a directory)."""

        def state(files: dict):
            if not is_dir:
                return files.get(path)
            return [(p, e["sha256"]) for p, e in files.items() if p.startswith(path + "/")]

        commits = repo["commits"][: repo["commits"].index(head) + 1]
        for i in range(len(commits) - 1, 0, -1):
            if state(commits[i]["files"]) != state(commits[i - 1]["files"]):
                return commits[i]
        return commits[0]

    def _is_member(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, []))


def _commit_json(commit: dict) -> dict:
    fields = {key: commit[key] for key in ("id", "title", "message", "date")}
    return {**fields, "authors": [{"user": commit["author"]}]}


def _file_json(path: str, entry: dict) -> dict:
    out = {"type": "file", "path": path, "size": entry["size"], "oid": entry["sha1"]}
    if entry["lfs"]:
        pointer = lfs_pointer(entry["sha256"], entry["size"])
        out["oid"] = git_blob_sha1(pointer)
        out["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": len(pointer)}
    return out


def _dir_json(path: str, files: dict) -> dict:
    content = sorted((p, e["sha256"]) for p, e in files.items() if p.startswith(path + "/"))
    return {"type": "directory", "path": path, "size": 0, "oid": git_blob_sha1(json.dumps(content).encode())}


def _dirs_of(files: dict) -> set[str]:
    return {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}


KINDS = {"models": "model", "datasets": "dataset", "spaces": "space", None: "model"}
_REPO = r"(?P<repo>(?:[^/]+/)?[^/]+?)"  # ns/name, or a bare name (never created here: answers RepoNotFound)
_API = rf"api/(?P<kind>models|datasets|spaces)/{_REPO}"  # /api/{type}s/{repo}
_WEB = rf"(?:(?P<kind>datasets|spaces)/)?{_REPO}"  # /[{type}s/]{repo}: models have no prefix
_REV = r"(?P<rev>[^/]+)"  # the clients percent-encode "/" inside revisions
_ROUTE_TABLE = [  # (method, pattern matched against the still percent-encoded path, handler); HEAD uses GET's
    ("GET", r"api/whoami-v2", "_whoami"),
    ("POST", r"api/repos/create", "_create_repo"),
    ("DELETE", r"api/repos/delete", "_delete_repo"),
    ("POST", r"api/validate-yaml", "_validate_yaml"),
    ("GET", _API + rf"(?:/revision/{_REV})?", "_info"),
    ("GET", _API + rf"/tree/{_REV}(?:/(?P<path>.*))?", "_tree"),
    ("POST", _API + rf"/paths-info/{_REV}", "_paths_info"),
    ("GET", _API + rf"/commits/{_REV}", "_list_commits"),
    ("GET", _API + r"/refs", "_refs"),
    ("PUT", _API + r"/settings", "_settings"),
    ("POST", _API + rf"/preupload/{_REV}", "_preupload"),
    ("POST", _API + rf"/commit/{_REV}", "_commit"),
    ("GET", _API + r"/xet-.*", "_no_xet"),
    ("POST", _WEB + r"\.git/info/lfs/objects/batch", "_lfs_batch"),
    ("POST", _WEB + r"\.git/info/lfs/objects/verify", "_lfs_verify"),
    ("PUT", r"_lfs/upload/(?P<secret>[\w-]+)", "_lfs_put"),
    ("GET", _WEB + rf"/resolve/{_REV}/(?P<path>.+)", "_resolve_file"),
]
ROUTES = [(method, re.compile(pattern), name) for method, pattern, name in _ROUTE_TABLE]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer
    user: str | None  # set per request, from the Authorization header

    def log_message(self, format, *args) -> None:  # no line per request on stderr
        pass

    def _dispatch(self) -> None:
        method = self.command
        self.body = self._read_body()
        self.hub.requests_log.append((method, self.path, dict(self.headers)))
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        try:
            self.user = self._user()  # an unknown token is refused everywhere
            with self.hub._lock:
                status, payload, headers = self._route("GET" if method == "HEAD" else method, split.path)
        except HubError as e:
            status, payload = e.status, {"error": e.message, **e.extra}
            headers = {"X-Error-Message": " ".join(e.message.split())}
            if e.code:
                headers["X-Error-Code"] = e.code
        except Exception:
            self.hub.errors.append(traceback.format_exc())
            status, payload, headers = 500, {"error": traceback.format_exc()}, {}
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json")
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def _route(self, method: str, path: str):
        for verb, pattern, name in ROUTES:
            match = pattern.fullmatch(path.strip("/"))
            if match and verb == method:
                args = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                if "repo" in args:
                    args["repo_type"], args["repo_id"] = KINDS[match["kind"]], args.pop("repo")
                    args.pop("kind", None)
                return getattr(self, name)(**args)
        raise HubError(404, f"hub_server: no route for {method} {path}")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json(self):
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, "Invalid JSON body") from None

    def _flag(self, name: str, source: dict | None = None) -> bool:
        return (source or self.query).get(name, ["false"])[0].lower() in ("1", "true")

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.hub.users:
            raise HubError(401, INVALID_CREDENTIALS)
        return self.hub.users[token]

    def _readable(self, repo_type: str, repo_id: str) -> dict:
        repo = self.hub._repos.get((repo_type, repo_id))
        if repo is None or (repo["private"] and not self.hub._is_member(self.user, repo_id.split("/")[0])):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _writable(self, repo_type: str, repo_id: str) -> dict:
        if self.user is None:
            raise HubError(401, "You must be authenticated to write to a repo")
        repo = self._readable(repo_type, repo_id)
        if not self.hub._is_member(self.user, repo_id.split("/")[0]):
            raise HubError(403, f"You don't have the rights to write to {repo_type} repo {repo_id}")
        return repo

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.hub.url}/{PREFIXES[repo_type]}{repo_id}"

    # ------------------------------------------------------------------ accounts and repo management

    def _whoami(self):
        if self.user is None:
            raise HubError(401, INVALID_CREDENTIALS)
        orgs = [
            {"name": org, "type": "org"}
            for org, members in sorted(self.hub.orgs.items())
            if self.user in members
        ]
        auth = {"type": "access_token", "accessToken": {"displayName": "test token", "role": "write"}}
        return 200, {"name": self.user, "fullname": self.user, "type": "user", "orgs": orgs, "auth": auth}, {}

    def _create_repo(self):
        body, user = self._json(), self.user
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        repo_type, namespace, name = (
            body.get("type") or "model",
            body.get("organization") or user,
            body.get("name"),
        )
        if repo_type not in PREFIXES or not NAME_RE.fullmatch(name or "") or not NAME_RE.fullmatch(namespace):
            raise HubError(400, f"Invalid repo name or type: {namespace}/{name} ({repo_type})")
        if not self.hub._is_member(user, namespace):
            raise HubError(
                403, f"You don't have the rights to create a {repo_type} under namespace {namespace}"
            )
        repo_id = f"{namespace}/{name}"
        url = self._repo_url(repo_type, repo_id)
        if (repo_type, repo_id) in self.hub._repos:
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        private = bool(body.get("private")) or body.get("visibility") == "private"
        self.hub.create_repo(repo_id, repo_type, private=private, author=user)
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def _delete_repo(self):
        body = self._json()
        repo_type, repo_id = (
            body.get("type") or "model",
            f"{body.get('organization') or self.user}/{body.get('name')}",
        )
        if repo_type not in PREFIXES:
            raise HubError(400, f"Invalid repo type {repo_type}")
        self.hub._delete(self._writable(repo_type, repo_id))
        return 200, {}, {}

    def _settings(self, repo_type: str, repo_id: str):
        repo, body = self._writable(repo_type, repo_id), self._json()
        if "visibility" in body or "private" in body:
            repo["private"] = body.get("visibility") == "private" or body.get("private") is True
        if "gated" in body:
            repo["gated"] = bool(body["gated"])
        self.hub._save(repo)
        return 200, {}, {}

    def _validate_yaml(self):
        card = self._json().get("content") or ""
        if yaml is not None and card.startswith("---"):
            end = card.find("\n---", 3)
            try:
                yaml.safe_load(card[3:end] if end != -1 else card[3:])
            except yaml.YAMLError as e:
                return 400, {"errors": [{"message": f"Invalid YAML: {e}"}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _no_xet(self, repo_type: str, repo_id: str):
        raise HubError(400, "hub_server speaks git-LFS only: run the client with HF_HUB_DISABLE_XET=1")

    # ------------------------------------------------------------------ reading

    def _info(self, repo_type: str, repo_id: str, rev: str = "main"):
        repo = self._readable(repo_type, repo_id)
        commit = self.hub._resolve(repo, rev)
        siblings = []
        for path, entry in commit["files"].items():
            siblings.append({"rfilename": path})
            if self._flag("blobs"):  # files_metadata=True
                file_json = _file_json(path, entry)
                siblings[-1].update(size=entry["size"], blobId=file_json["oid"])
                if "lfs" in file_json:
                    lfs = file_json["lfs"]
                    siblings[-1]["lfs"] = {
                        "size": lfs["size"],
                        "sha256": lfs["oid"],
                        "pointerSize": lfs["pointerSize"],
                    }
        info = {
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit["id"],
            "lastModified": commit["date"],
        }
        info.update(
            createdAt=repo["created"], private=repo["private"], gated="auto" if repo["gated"] else False
        )
        info.update(disabled=False, downloads=0, likes=0, tags=[], siblings=siblings)
        if "README.md" in commit["files"]:
            card = parse_card(self.hub._blob(commit["files"]["README.md"]["sha256"]))
            if card is not None:
                info["cardData"] = card
        return 200, info, {}

    def _entries(self, repo: dict, commit: dict, paths: list[str], expand: bool) -> list[dict]:
        files, dirs, out = commit["files"], _dirs_of(commit["files"]), []
        for path in paths:
            if path not in files and path not in dirs:
                continue
            out.append(_file_json(path, files[path]) if path in files else _dir_json(path, files))
            if expand:
                last = self.hub._last_commit(repo, commit, path, path in dirs)
                out[-1]["lastCommit"] = {"id": last["id"], "title": last["title"], "date": last["date"]}
        return out

    def _tree(self, repo_type: str, repo_id: str, rev: str, path: str = ""):
        repo = self._readable(repo_type, repo_id)
        commit = self.hub._resolve(repo, rev)
        files, dirs, path = commit["files"], _dirs_of(commit["files"]), path.strip("/")
        if path and path not in dirs:
            raise HubError(404, f"Entry not found: {path} is not a directory", "EntryNotFound")
        prefix = path + "/" if path else ""
        children = [p for p in (*dirs, *files) if p.startswith(prefix)]
        if not self._flag("recursive"):
            children = [p for p in children if "/" not in p[len(prefix) :]]
        children.sort(key=lambda p: (p not in dirs, p))  # directories first, like the Hub
        return 200, self._entries(repo, commit, children, self._flag("expand")), {}

    def _paths_info(self, repo_type: str, repo_id: str, rev: str):
        repo = self._readable(repo_type, repo_id)
        form = parse_qs(self.body.decode())
        paths = [p.strip("/") for p in form.get("paths", [])]
        return 200, self._entries(repo, self.hub._resolve(repo, rev), paths, self._flag("expand", form)), {}

    def _list_commits(self, repo_type: str, repo_id: str, rev: str):
        repo = self._readable(repo_type, repo_id)
        history = repo["commits"][: repo["commits"].index(self.hub._resolve(repo, rev)) + 1]
        return 200, [_commit_json(c) for c in reversed(history)], {}

    def _refs(self, repo_type: str, repo_id: str):
        head = self._readable(repo_type, repo_id)["commits"][-1]["id"]
        main = {"name": "main", "ref": "refs/heads/main", "targetCommit": head}
        return 200, {"branches": [main], "tags": [], "converts": []}, {}

    def _resolve_file(self, repo_type: str, repo_id: str, rev: str, path: str):
        repo = self._readable(repo_type, repo_id)
        if repo["gated"] and not self.hub._is_member(self.user, repo_id.split("/")[0]):
            raise HubError(
                403, f"Access to {repo_type} {repo_id} is restricted: accept its conditions", "GatedRepo"
            )
        commit = self.hub._resolve(repo, rev)
        entry = commit["files"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        etag = f'"{entry["sha256"] if entry["lfs"] else entry["sha1"]}"'  # never X-Xet-Hash: no xet downloads
        headers = {"X-Repo-Commit": commit["id"], "ETag": etag, "Accept-Ranges": "bytes"}
        headers["Content-Type"] = "application/octet-stream"
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": entry["size"]})
        size, data = entry["size"], self.hub._blob(entry["sha256"])
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if not match or match.groups() == ("", ""):
            return 200, data, headers
        first, last = match.groups()
        start, end = (int(first), int(last or size - 1)) if first else (max(size - int(last), 0), size - 1)
        end = min(end, size - 1)
        if start > end:
            headers["Content-Range"] = f"bytes */{size}"
            return 416, b"", headers
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return 206, data[start : end + 1], headers

    # ------------------------------------------------------------------ writing

    def _preupload(self, repo_type: str, repo_id: str, rev: str):
        head = self.hub._resolve(self._writable(repo_type, repo_id), rev)
        out = []
        for item in self._json().get("files", []):
            path, size = item["path"], int(item.get("size", 0))
            mode = "lfs" if is_lfs(path, size, base64.b64decode(item.get("sample") or "")) else "regular"
            out.append({"path": path, "uploadMode": mode, "shouldIgnore": False})
            if path in head["files"]:  # lets the client skip unchanged files
                out[-1]["oid"] = head["files"][path]["sha256" if mode == "lfs" else "sha1"]
        return 200, {"files": out, "commitOid": head["id"]}, {}

    def _lfs_batch(self, repo_type: str, repo_id: str):
        self._writable(repo_type, repo_id)
        body = self._json()
        if body.get("operation") != "upload":
            raise HubError(400, "hub_server only supports the LFS 'upload' operation (downloads use resolve)")
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj.get("oid")), int(obj.get("size", -1))
            if not SHA256_RE.fullmatch(oid):
                raise HubError(400, f"Invalid LFS oid {oid!r}")
            objects.append({"oid": oid, "size": size, "authenticated": True})
            if not self.hub._has_blob(oid, size):  # else no `actions`: the client skips the upload
                secret = secrets.token_urlsafe(24)  # the PUT arrives without Authorization
                self.hub._pending_uploads[secret] = (oid, size)
                upload = {"href": f"{self.hub.url}/_lfs/upload/{secret}"}
                verify = {"href": f"{self._repo_url(repo_type, repo_id)}.git/info/lfs/objects/verify"}
                objects[-1]["actions"] = {"upload": upload, "verify": verify}
        return (
            200,
            {"transfer": "basic", "objects": objects},
            {"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_put(self, secret: str):
        if secret not in self.hub._pending_uploads:
            raise HubError(403, "Unknown or already used LFS upload URL")
        oid, size = self.hub._pending_uploads.pop(secret)
        if len(self.body) != size or hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid} / size {size}")
        self.hub._put_blob(self.body)
        return 200, b"", {"ETag": f'"{oid}"'}

    def _lfs_verify(self, repo_type: str, repo_id: str):
        self._writable(repo_type, repo_id)
        body = self._json()
        if not self.hub._has_blob(str(body.get("oid")), body.get("size")):
            raise HubError(404, f"LFS object {body.get('oid')} not found")
        return 200, {"success": True}, {}

    def _commit(self, repo_type: str, repo_id: str, rev: str):
        repo = self._writable(repo_type, repo_id)
        if rev not in ("main", "refs/heads/main"):
            raise HubError(
                404, f"Invalid rev id: {rev} (hub_server only has a main branch)", "RevisionNotFound"
            )
        if self._flag("create_pr"):
            raise HubError(400, "hub_server does not support pull requests (create_pr)")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header" or not lines[0]["value"].get("summary"):
            raise HubError(400, "The commit needs a header line with a summary")
        header, head = lines[0]["value"], repo["commits"][-1]
        if header.get("parentCommit") and header["parentCommit"] != head["id"]:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head["files"])
        for op in lines[1:]:
            key, value = op.get("key"), op.get("value", {})
            path = str(value.get("path", "")).strip("/")
            if key == "file":
                content = value.get("content", "")
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                files[path] = self.hub._entry(self.hub._put_blob(data), lfs=False)
            elif key == "lfsFile":
                if not self.hub._has_blob(str(value.get("oid"))):
                    raise HubError(400, f"LFS object {value.get('oid')} for {path} was never uploaded")
                files[path] = self.hub._entry(value["oid"], lfs=True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                doomed = [p for p in files if p.startswith(path + "/")]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise HubError(400, f"Unsupported commit operation {key!r}")
        commit_id = self.hub._add_commit(
            repo, files, header["summary"], header.get("description", ""), self.user or ""
        )
        url = f"{self._repo_url(repo_type, repo_id)}/commit/{commit_id}"
        return 200, {"success": True, "commitOid": commit_id, "commitUrl": url, "pullRequestUrl": None}, {}
