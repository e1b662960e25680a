"""An in-process fake of the Hugging Face Hub HTTP API, for tests that run without internet.

It serves just enough of the Hub's API for the real `huggingface_hub` client (2.x) to run
`create_repo`, `delete_repo`, `upload_folder` / `upload_file` / `create_commit`, `repo_info`,
`list_repo_files` / `list_repo_tree` / `list_repo_commits`, `whoami`, `hf_hub_download`,
`snapshot_download`, `create_branch`, `create_tag` and pull requests (`create_pr=True`,
`create_pull_request`) against it, for model, dataset and space repos::

    with FakeHub() as hub:
        api = HfApi(endpoint=hub.url, token=FAKE_TOKEN)
        api.create_repo("me/data", repo_type="dataset")
        api.upload_folder(folder_path=folder, repo_id="me/data", repo_type="dataset")
        assert hub.files("me/data", repo_type="dataset") == {...}

or, in pytest, request the `fake_hub` fixture, which also switches `huggingface_hub` back online.

Design choices, and why:

- The preupload endpoint answers `uploadMode: "regular"` for every file, so file contents arrive
  base64-encoded inside the commit NDJSON. That keeps LFS and Xet (and their external storage
  services) out of the picture entirely, whatever the file size or type.
- Repos live in memory; every commit keeps a full snapshot (path -> bytes) of the tree. Copying a
  dict of a few test files per commit is cheap, and it makes any past commit sha resolvable.
- A new repo gets an empty initial commit (the real Hub adds a `.gitattributes` file) so that
  `files()` and downloads contain exactly what the test uploaded.
- The server speaks HTTP/1.0: every request uses a fresh connection, so huggingface_hub's
  process-wide `httpx` client never keeps pooled connections to a server stopped by a previous test.
- Error responses carry the `X-Error-Code` / `X-Error-Message` headers that huggingface_hub maps
  to its typed errors (`RepositoryNotFoundError`, `RevisionNotFoundError`, ...).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

FAKE_TOKEN = "hf_fake"
FAKE_USER = "fake-user"

_TYPE_FROM_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}
# How each repo type is prefixed in web URLs (`/datasets/ns/name/resolve/...`); models are not.
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Message the Hub sends for a bad token: huggingface_hub then keeps the 401 as a plain
# HfHubHTTPError instead of reporting the repo as missing.
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"

_REPO_API = re.compile(
    r"^/api/(?P<plural>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
    r"(?:/(?P<action>revision|tree|preupload|commit|commits)/(?P<rev>[^/]+)(?:/(?P<path>.*))?)?/?$"
)
_RESOLVE = re.compile(
    r"^/(?:(?P<plural>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
)
_REFS_API = re.compile(
    r"^/api/(?P<plural>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
    r"/(?P<action>branch|tag|discussions)(?:/(?P<ref>[^/]+))?/?$"
)
_RANGE = re.compile(r"^bytes=(?P<start>\d+)-(?P<end>\d*)$")


def git_blob_oid(content: bytes) -> str:
    """The git blob sha1 of `content` (what `git hash-object` prints).

    The Hub reports it as the ETag and `oid` of regular files; huggingface_hub compares it with its
    own hash of a local file to skip committing unchanged files.
    """
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _hub_date(moment: datetime) -> str:
    # The only date format huggingface_hub's `parse_datetime` accepts.
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class Commit:
    """One commit of a fake repo: the full tree after it, not a diff."""

    oid: str
    title: str
    description: str
    files: Mapping[str, bytes]
    parent: str | None
    date: datetime


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake Hub received, for assertions on what the client sent."""

    method: str
    path: str
    token: str | None
    status: int


@dataclass
class _Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, dict[str, Any]] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch or tag name (``refs/pr/N`` for a pull request) or a full commit sha -> that
        commit, or None."""
        return self.commits.get(self.branches.get(revision, self.tags.get(revision, revision)))


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
        headers = {"Content-Type": "application/json", **(headers or {})}
        return cls(status, json.dumps(payload).encode(), headers)


class _HubError(Exception):
    """An HTTP error answer, shaped like the Hub's so that huggingface_hub raises its typed errors."""

    def __init__(
        self, status: int, message: str, error_code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = headers or {}

    def to_response(self) -> _Response:
        headers = dict(self.headers)
        # HTTP headers are latin-1: escape whatever a unicode path or repo name would break.
        headers["X-Error-Message"] = self.message.encode("ascii", "backslashreplace").decode()
        if self.error_code is not None:
            headers["X-Error-Code"] = self.error_code
        return _Response.of_json({"error": self.message}, status=self.status, headers=headers)


class FakeHub:
    """A fake Hugging Face Hub serving `url` from a daemon thread until `stop()` (or the `with` exit).

    Auth model, close to the real Hub's:

    - a token that is sent must be valid: any token when `valid_tokens` is None (the default),
      otherwise one of `valid_tokens`; an invalid one gets a 401 on every endpoint;
    - writes (create/delete repo, preupload, commit) and `whoami` need a token;
    - reads need one only for private repos (401 + RepoNotFound, like the Hub), or for every
      request when `require_auth` is set; any valid token may read any repo.

    `valid_tokens` and `require_auth` are plain attributes: a test may change them at any time.
    """

    def __init__(
        self,
        *,
        valid_tokens: Iterable[str] | None = None,
        require_auth: bool = False,
        username: str = FAKE_USER,
    ) -> None:
        self.valid_tokens: set[str] | None = set(valid_tokens) if valid_tokens is not None else None
        self.require_auth = require_auth
        self.username = username
        self.requests: list[RecordedRequest] = []
        self._repos: dict[tuple[str, str], _Repo] = {}
        # One lock around all state: requests arrive on several threads (snapshot_download uses
        # a thread pool) and the fake favours obviously-correct over concurrent.
        self._lock = threading.RLock()
        self._commit_counter = itertools.count()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeHub:
        if self._server is not None:
            raise RuntimeError("FakeHub is already running")
        # Port 0: the OS picks a free port, so parallel test runs never collide.
        self._server = _Server(("127.0.0.1", 0), hub=self)
        # A short poll interval: `stop()` waits up to that long for the serving loop to notice.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The endpoint to give huggingface_hub (`HfApi(endpoint=...)`, `snapshot_download(endpoint=...)`)."""
        if self._server is None:
            raise RuntimeError("FakeHub is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ inspection and seeding

    @property
    def seen_tokens(self) -> set[str]:
        """Every bearer token received so far (requests without one are not counted)."""
        with self._lock:
            return {r.token for r in self.requests if r.token is not None}

    def repo_exists(self, repo_id: str, repo_type: str = "dataset") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def is_private(self, repo_id: str, repo_type: str = "dataset") -> bool:
        with self._lock:
            return self._repo_for_test(repo_id, repo_type).private

    def files(self, repo_id: str, repo_type: str = "dataset", revision: str = "main") -> dict[str, bytes]:
        """The files of a repo at `revision` (branch or commit sha), as path -> content."""
        with self._lock:
            return dict(self._commit_for_test(self._repo_for_test(repo_id, repo_type), revision).files)

    def commits(self, repo_id: str, repo_type: str = "dataset", revision: str = "main") -> list[Commit]:
        """The history up to `revision` (branch or sha), newest first; the initial empty commit is last."""
        with self._lock:
            repo = self._repo_for_test(repo_id, repo_type)
            history = []
            commit: Commit | None = self._commit_for_test(repo, revision)
            while commit is not None:
                history.append(commit)
                commit = repo.commits.get(commit.parent) if commit.parent is not None else None
            return history

    def branches(self, repo_id: str, repo_type: str = "dataset") -> dict[str, str]:
        """Branch name -> head commit sha (pull requests are the branches ``refs/pr/N``)."""
        with self._lock:
            return dict(self._repo_for_test(repo_id, repo_type).branches)

    def tags(self, repo_id: str, repo_type: str = "dataset") -> dict[str, str]:
        """Tag name -> commit sha."""
        with self._lock:
            return dict(self._repo_for_test(repo_id, repo_type).tags)

    def pull_requests(self, repo_id: str, repo_type: str = "dataset") -> dict[int, dict[str, Any]]:
        """Pull request number -> its title and description."""
        with self._lock:
            repo = self._repo_for_test(repo_id, repo_type)
            return {num: dict(pr) for num, pr in repo.pull_requests.items()}

    def create_repo(self, repo_id: str, repo_type: str = "dataset", private: bool = False) -> None:
        """Create a repo directly (no HTTP), e.g. to seed a repo that a test only downloads from."""
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise ValueError(f"{repo_type} repo {repo_id} already exists")
            repo = _Repo(repo_id=repo_id, repo_type=repo_type, private=private)
            self._repos[(repo_type, repo_id)] = repo
            self._add_commit(repo, "main", {}, title="initial commit", parent=None)

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        repo_type: str = "dataset",
        *,
        deletions: Iterable[str] = (),
        message: str = "Seed files",
    ) -> str:
        """Commit `files` (and delete `deletions`) on main directly (no HTTP); returns the commit sha."""
        with self._lock:
            repo = self._repo_for_test(repo_id, repo_type)
            head = self._commit_for_test(repo, "main")
            tree = dict(head.files)
            for path in deletions:
                del tree[path]
            tree.update(files)
            return self._add_commit(repo, "main", tree, title=message, parent=head.oid).oid

    # ------------------------------------------------------------------ state helpers

    # The public helpers above raise KeyError, the HTTP endpoints below answer 404.
    def _repo_for_test(self, repo_id: str, repo_type: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            known = sorted(f"{t}:{r}" for t, r in self._repos)
            raise KeyError(f"FakeHub has no {repo_type} repo {repo_id!r} (repos: {known})")
        return repo

    @staticmethod
    def _commit_for_test(repo: _Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise KeyError(f"FakeHub {repo.repo_type} repo {repo.repo_id!r} has no revision {revision!r}")
        return commit

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, f"{repo_type} repo {repo_id} not found", "RepoNotFound")
        return repo

    def _get_commit(self, repo: _Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _add_commit(
        self,
        repo: _Repo,
        branch: str,
        files: Mapping[str, bytes],
        *,
        title: str,
        parent: str | None,
        description: str = "",
    ) -> Commit:
        # Any unique 40-hex string will do: huggingface_hub only checks the shape of commit shas
        # (it uses them as cache folder names and as revisions for follow-up requests).
        seed = f"{repo.repo_type}/{repo.repo_id}/{next(self._commit_counter)}/{parent}/{title}"
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid, title, description, dict(files), parent, datetime.now(timezone.utc))
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    # ------------------------------------------------------------------ auth

    def _is_valid(self, token: str) -> bool:
        return self.valid_tokens is None or token in self.valid_tokens

    def _check_token(self, token: str | None) -> None:
        """Applied to every request: the Hub rejects a bad token even where none is needed."""
        if token is not None and not self._is_valid(token):
            raise _HubError(401, _INVALID_CREDENTIALS)
        if token is None and self.require_auth:
            raise _HubError(401, "Invalid username or password.")

    def _require_token(self, token: str | None) -> None:
        if token is None:
            raise _HubError(401, "Invalid username or password.")

    def _check_read(self, repo: _Repo, token: str | None) -> None:
        if repo.private and token is None:
            # What the Hub answers for a private repo without credentials: it does not reveal
            # whether the repo exists (huggingface_hub raises RepositoryNotFoundError).
            raise _HubError(401, "Repository not found", "RepoNotFound")

    # ------------------------------------------------------------------ routing

    def _dispatch(
        self, method: str, raw_path: str, query: dict[str, list[str]], body: bytes, token: str | None
    ) -> _Response:
        self._check_token(token)
        if raw_path == "/api/repos/create" and method == "POST":
            return self._create_repo(_json_body(body), token)
        if raw_path == "/api/repos/delete" and method == "DELETE":
            return self._delete_repo(_json_body(body), token)
        if raw_path == "/api/validate-yaml" and method == "POST":
            # Accept any model card: the fake does not reimplement the Hub's metadata validation.
            return _Response.of_json({"errors": [], "warnings": []})
        if raw_path == "/api/whoami-v2" and method == "GET":
            self._require_token(token)
            return _Response.of_json(self._whoami())

        if match := _RESOLVE.match(raw_path):
            if method not in ("GET", "HEAD"):
                raise _HubError(405, f"{method} not allowed on resolve URLs")
            repo_type = _TYPE_FROM_PLURAL[match["plural"] or "models"]
            repo = self._get_repo(repo_type, f"{match['ns']}/{match['name']}")
            self._check_read(repo, token)
            return self._resolve(repo, unquote(match["rev"]), unquote(match["path"]))

        if match := _REFS_API.match(raw_path):
            repo = self._get_repo(_TYPE_FROM_PLURAL[match["plural"]], f"{match['ns']}/{match['name']}")
            return self._refs(repo, method, match["action"], unquote(match["ref"] or ""), body, token)

        if match := _REPO_API.match(raw_path):
            repo = self._get_repo(_TYPE_FROM_PLURAL[match["plural"]], f"{match['ns']}/{match['name']}")
            action, revision = match["action"], unquote(match["rev"] or "main")
            path = unquote(match["path"] or "")
            route = (method, action)
            if route in (("GET", None), ("GET", "revision")):
                self._check_read(repo, token)
                return self._repo_info(repo, revision)
            if route == ("GET", "tree"):
                self._check_read(repo, token)
                return self._tree(repo, revision, path.strip("/"), _flag(query, "recursive"))
            if route == ("GET", "commits"):
                self._check_read(repo, token)
                return self._list_commits(repo, revision)
            if route == ("POST", "preupload"):
                self._require_token(token)
                return self._preupload(repo, revision, _json_body(body))
            if route == ("POST", "commit"):
                self._require_token(token)
                if _flag(query, "create_pr"):
                    # the commit goes to a new pull request's branch, opened against `revision`
                    revision = self._open_pull_request(repo, revision, "", "")
                return self._commit(repo, revision, body)

        raise _HubError(404, f"FakeHub does not implement {method} {raw_path}")

    # ------------------------------------------------------------------ endpoints

    def _whoami(self) -> dict[str, Any]:
        return {
            "type": "user",
            "name": self.username,
            "fullname": "Fake User",
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
        }

    def _create_repo(self, payload: dict[str, Any], token: str | None) -> _Response:
        self._require_token(token)
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise _HubError(400, f"Invalid repo type {repo_type!r}")
        # Without an organization, the Hub creates the repo in the token owner's namespace.
        repo_id = f"{payload.get('organization') or self.username}/{payload['name']}"
        existing = self._repos.get((repo_type, repo_id))
        if existing is not None:
            # huggingface_hub reads `url` from this 409 body too when `exist_ok=True`.
            return _Response.of_json(
                {"error": f"You already created this {repo_type} repo", "url": self._repo_url(existing)}, 409
            )
        private = payload.get("visibility") == "private" or payload.get("private") is True
        self.create_repo(repo_id, repo_type, private=private)
        repo = self._repos[(repo_type, repo_id)]
        return _Response.of_json({"url": self._repo_url(repo), "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict[str, Any], token: str | None) -> _Response:
        self._require_token(token)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.username}/{payload['name']}"
        self._get_repo(repo_type, repo_id)  # 404 if missing
        del self._repos[(repo_type, repo_id)]
        return _Response(200)

    def _repo_info(self, repo: _Repo, revision: str) -> _Response:
        commit = self._get_commit(repo, revision)
        namespace = repo.repo_id.split("/")[0]
        return _Response.of_json(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": namespace,
                "sha": commit.oid,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "createdAt": _hub_date(next(c.date for c in repo.commits.values() if c.parent is None)),
                "lastModified": _hub_date(commit.date),
                "siblings": [
                    {"rfilename": path, "size": len(content), "blobId": git_blob_oid(content)}
                    for path, content in sorted(commit.files.items())
                ],
            }
        )

    def _tree(self, repo: _Repo, revision: str, folder: str, recursive: bool) -> _Response:
        commit = self._get_commit(repo, revision)
        prefix = f"{folder}/" if folder else ""
        below = sorted(path for path in commit.files if path.startswith(prefix))
        if folder and not below:
            raise _HubError(404, f"{folder} does not exist on {revision}", "EntryNotFound")
        files: dict[str, bytes] = {}
        folders: set[str] = set()
        for path in below:
            parts = path[len(prefix) :].split("/")
            # Every folder between `folder` and the file, or only the first one when not recursive.
            depth = len(parts) - 1 if recursive else min(len(parts) - 1, 1)
            folders.update(prefix + "/".join(parts[: i + 1]) for i in range(depth))
            if recursive or len(parts) == 1:
                files[path] = commit.files[path]
        # Folders have a git tree oid on the Hub; any stable fake value will do.
        entries: list[dict[str, Any]] = [
            {
                "type": "directory",
                "path": path,
                "oid": hashlib.sha1(f"{commit.oid}:{path}".encode()).hexdigest(),
            }
            for path in sorted(folders)
        ]
        entries += [
            {"type": "file", "path": path, "size": len(content), "oid": git_blob_oid(content)}
            for path, content in files.items()
        ]
        return _Response.of_json(entries)

    def _list_commits(self, repo: _Repo, revision: str) -> _Response:
        self._get_commit(repo, revision)  # 404 if unknown
        history = self.commits(repo.repo_id, repo.repo_type, revision)
        return _Response.of_json(
            [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.description,
                    "authors": [{"user": self.username}],
                    "date": _hub_date(c.date),
                }
                for c in history
            ]
        )

    def _preupload(self, repo: _Repo, revision: str, payload: dict[str, Any]) -> _Response:
        head = self._get_commit(repo, revision)
        answers = []
        for entry in payload.get("files", []):
            answer: dict[str, Any] = {"path": entry["path"], "uploadMode": "regular", "shouldIgnore": False}
            if entry["path"] in head.files:
                # Lets huggingface_hub drop files identical to the ones already committed.
                answer["oid"] = git_blob_oid(head.files[entry["path"]])
            answers.append(answer)
        return _Response.of_json({"files": answers, "commitOid": head.oid})

    def _commit(self, repo: _Repo, branch: str, body: bytes) -> _Response:
        if branch not in repo.branches:
            raise _HubError(404, f"No branch {branch} (FakeHub only commits to branches)", "RevisionNotFound")
        head = self._get_commit(repo, branch)
        tree = dict(head.files)
        title, description = "", ""
        for line in body.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise _HubError(400, f"Invalid NDJSON line in commit payload: {err}") from err
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                title, description = value.get("summary", ""), value.get("description", "")
                parent = value.get("parentCommit")
                if parent is not None and parent != head.oid:
                    raise _HubError(412, f"parentCommit {parent} is not the head of {branch} ({head.oid})")
            elif key == "file":
                if value.get("encoding") == "base64":
                    tree[value["path"]] = base64.b64decode(value["content"])
                else:
                    tree[value["path"]] = value["content"].encode()
            elif key == "deletedFile":
                if value["path"] not in tree:
                    message = f"A file with this name doesn't exist: {value['path']}"
                    raise _HubError(404, message, "EntryNotFound")
                del tree[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                doomed = [path for path in tree if path.startswith(prefix)]
                if not doomed:
                    message = f"A folder with this name doesn't exist: {value['path']}"
                    raise _HubError(404, message, "EntryNotFound")
                for path in doomed:
                    del tree[path]
            else:
                # `lfsFile` would mean the client uploaded content elsewhere (LFS/Xet storage), which
                # cannot happen since preupload always answers "regular".
                raise _HubError(400, f"FakeHub does not support commit operation {key!r}")
        commit = self._add_commit(repo, branch, tree, title=title, description=description, parent=head.oid)
        return _Response.of_json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self._repo_url(repo)}/commit/{commit.oid}",
                "pullRequestUrl": (
                    f"{self._repo_url(repo)}/discussions/{branch.rsplit('/', 1)[1]}"
                    if branch.startswith("refs/pr/")
                    else None
                ),
            }
        )

    def _refs(
        self, repo: _Repo, method: str, action: str, ref: str, body: bytes, token: str | None
    ) -> _Response:
        """Branches, tags and pull requests (discussions that are pull requests)."""
        if action == "discussions" and method == "GET" and ref:
            self._check_read(repo, token)
            return self._pull_request_details(repo, int(ref))
        if method != "POST":
            raise _HubError(405, f"FakeHub does not implement {method} on {action}")
        self._require_token(token)
        payload = _json_body(body)
        if action == "branch":
            if ref in repo.branches:
                raise _HubError(409, f"Reference already exists: refs/heads/{ref}")
            start = self._get_commit(repo, payload.get("startingPoint") or "main")
            repo.branches[ref] = start.oid
            return _Response.of_json({})
        if action == "tag":
            if payload["tag"] in repo.tags:
                raise _HubError(409, f"Tag {payload['tag']} already exists")
            repo.tags[payload["tag"]] = self._get_commit(repo, ref or "main").oid
            return _Response.of_json({})
        if not payload.get("pullRequest"):
            raise _HubError(400, "FakeHub only supports discussions that are pull requests")
        title, description = payload.get("title", ""), payload.get("description", "")
        branch = self._open_pull_request(repo, "main", title, description)
        return _Response.of_json({"num": int(branch.rsplit("/", 1)[1])})

    def _open_pull_request(self, repo: _Repo, base: str, title: str, description: str) -> str:
        """A new pull request against ``base``: its branch ``refs/pr/N`` starts at ``base``'s head."""
        num = max(repo.pull_requests, default=0) + 1
        head = self._get_commit(repo, base)
        repo.pull_requests[num] = {"title": title, "description": description, "base": base}
        repo.branches[f"refs/pr/{num}"] = head.oid
        return f"refs/pr/{num}"

    def _pull_request_details(self, repo: _Repo, num: int) -> _Response:
        pr = repo.pull_requests.get(num)
        if pr is None:
            raise _HubError(404, f"Discussion {num} not found")
        return _Response.of_json(
            {
                "num": num,
                "title": pr["title"],
                "author": {"name": self.username},
                "createdAt": _hub_date(datetime.now(timezone.utc)),
                "status": "draft",
                "repo": {"name": repo.repo_id, "type": repo.repo_type},
                "isPullRequest": True,
                "events": [],
                "changes": {"base": f"refs/heads/{pr['base']}"},
                "filesWithConflicts": [],
            }
        )

    def _resolve(self, repo: _Repo, revision: str, path: str) -> _Response:
        commit = self._get_commit(repo, revision)
        # X-Repo-Commit must come with every answer, errors included: huggingface_hub refuses files
        # without it and caches the absence of a file under that commit.
        headers = {"X-Repo-Commit": commit.oid}
        content = commit.files.get(path)
        if content is None:
            raise _HubError(404, f"Entry not found: {path}", "EntryNotFound", headers)
        # No X-Xet-Hash / Link xet-auth headers: they would send the client to Xet storage.
        headers |= {
            "ETag": f'"{git_blob_oid(content)}"',
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        return _Response(200, content, headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], hub: FakeHub) -> None:
        super().__init__(address, _Handler)
        self.hub = hub


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # One request per connection (see the module docstring); also the stdlib default.
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        # Silence the default stderr access log; `FakeHub.requests` records what tests need.
        pass

    def _handle(self) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        token = _bearer_token(self.headers.get("Authorization"))
        try:
            body = _read_body(self.rfile, self.headers)
            with hub._lock:
                response = hub._dispatch(self.command, split.path, parse_qs(split.query), body, token)
        except _HubError as err:
            response = err.to_response()
        except Exception as err:  # a bug in the fake or a malformed request: answer instead of hanging up
            response = _HubError(500, f"FakeHub error: {type(err).__name__}: {err}").to_response()
        if response.status == 200 and self.command in ("GET", "HEAD"):
            response = _apply_range(response, self.headers.get("Range"))
        with hub._lock:
            hub.requests.append(RecordedRequest(self.command, self.path, token, response.status))
        self._send(response)

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        # Sent for HEAD too: it is how huggingface_hub learns the size of a file before downloading it.
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else authorization


def _read_body(stream: Any, headers: Message) -> bytes:
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while size := int(stream.readline().split(b";")[0], 16):
            chunks.append(stream.read(size))
            stream.readline()  # CRLF closing the chunk
        stream.readline()  # CRLF after the last (empty) chunk
        return b"".join(chunks)
    length = int(headers.get("Content-Length") or 0)
    return stream.read(length) if length else b""


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body or b"{}")
    except json.JSONDecodeError as err:
        raise _HubError(400, f"Invalid JSON body: {err}") from err
    if not isinstance(payload, dict):
        raise _HubError(400, "Expected a JSON object")
    return payload


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true")


def _apply_range(response: _Response, range_header: str | None) -> _Response:
    """Serve `Range: bytes=a-[b]`, which huggingface_hub sends to resume an interrupted download."""
    match = _RANGE.match(range_header or "")
    if match is None:
        return response
    total = len(response.body)
    start = int(match["start"])
    end = min(int(match["end"]), total - 1) if match["end"] else total - 1
    if start >= total:
        return _Response(416, b"", {"Content-Range": f"bytes */{total}"})
    headers = dict(response.headers) | {"Content-Range": f"bytes {start}-{end}/{total}"}
    return _Response(206, response.body[start : end + 1], headers)


def allow_hub_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let huggingface_hub make HTTP requests for the rest of the test, even if offline mode is on.

    huggingface_hub reads HF_HUB_OFFLINE once, at import, into `constants.HF_HUB_OFFLINE` (which
    `is_offline_mode()` returns), so setting the environment variable in a test has no effect on
    an already imported library: the constant itself must be patched.
    """
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # for subprocesses and code that re-reads the env
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # With telemetry on, building request headers fetches an "agent harnesses" registry from
    # constants.ENDPOINT (the real huggingface.co), whatever endpoint the call targets.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running `FakeHub` (accepting any token) with huggingface_hub allowed online for the test."""
    allow_hub_requests(monkeypatch)
    with FakeHub() as hub:
        yield hub
