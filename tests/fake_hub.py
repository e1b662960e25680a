"""A double for the ``huggingface_hub`` calls of pdd-hub: ``HfApi`` and ``snapshot_download``, which
pdd-hub imports from ``huggingface_hub`` where used, so the ``fake_hub`` fixture replaces those names.
Each call is bound to the real function's signature (a keyword the real client lacks fails here too)
and recorded with the token it would send: the call's, the ``HfApi``'s, else ``HF_TOKEN`` (never a
cached login). Repos are commits of ``path -> bytes``; pattern matching and errors are the client's.
HF_HUB_OFFLINE stays set: a call the double does not answer fails instead of going online."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from pathlib import Path
from typing import Any, NamedTuple

import huggingface_hub
import pytest
from huggingface_hub import errors
from huggingface_hub.hf_api import CommitInfo
from huggingface_hub.utils import filter_repo_objects

# huggingface_hub's HTTP errors need a response with its request, of its own HTTP library (httpx2).
_http = importlib.import_module(errors.Response.__module__.split(".")[0])
REAL_API, REAL_SNAPSHOT = huggingface_hub.HfApi, huggingface_hub.snapshot_download
WRITES = {"create_repo", "create_branch", "upload_folder", "create_tag", "delete_repo"}
TOKEN = "hf_test"
ENDPOINT = "https://hub.test"


def http_error(cls: type[errors.HfHubHTTPError], status: int, message: str) -> errors.HfHubHTTPError:
    return cls(message, response=_http.Response(status, request=_http.Request("GET", ENDPOINT)))


class Call(NamedTuple):
    name: str
    args: dict[str, Any]  # every parameter of the real function by name, defaults applied
    token: str | None  # the one the real client would send


class Commit(NamedTuple):
    oid: str
    message: str
    files: dict[str, bytes]


class FakeHub:
    def __init__(self, root: Path) -> None:
        self.root = root  # where downloads are written
        self.refs: dict[str, dict[str, Commit]] = {}  # repo -> its branches (refs/pr/N: a PR) and tags
        self.private: dict[str, bool | None] = {}  # repo -> private, as the call that created it said
        self.commits: dict[str, Commit] = {}  # every commit by oid, of every repo
        self.apis: list[dict[str, Any]] = []  # the arguments of each HfApi(...)
        self.calls: list[Call] = []
        self.valid_tokens: set[str] | None = None  # None: any token is accepted

    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    def last(self, name: str) -> dict[str, Any]:
        return [c.args for c in self.calls if c.name == name][-1]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return self.commit_of(repo_id, revision).files

    def commit_of(self, repo_id: str, revision: str | None) -> Commit:
        if repo_id not in self.refs:
            raise http_error(errors.RepositoryNotFoundError, 404, f"Repository Not Found for url: {repo_id}")
        found = self.refs[repo_id].get(revision or "main") or self.commits.get(revision or "main")
        if found is None:
            raise http_error(errors.RevisionNotFoundError, 404, f"Invalid rev id: {revision}")
        return found

    def commit(self, repo_id: str, branch: str, message: str, files: dict[str, bytes]) -> Commit:
        """A new commit on ``branch``: also how a test seeds a repo (no call is recorded)."""
        done = Commit(f"{len(self.commits):040x}", message, files)  # unique (none is forgotten), sha1-shaped
        self.refs.setdefault(repo_id, {})[branch] = self.commits[done.oid] = done
        return done

    def record(self, name: str, api_token: str | None, args: tuple, kwargs: dict, real: Any = None) -> dict:
        bound = inspect.signature(real or getattr(REAL_API, name)).bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
        if arguments.get("repo_type", "dataset") != "dataset":  # a model repo of the same name
            raise ValueError(f"{name}: pdd-hub publishes dataset repos, not {arguments['repo_type']}")
        token = arguments.get("token") or api_token or os.environ.get("HF_TOKEN")
        self.calls.append(Call(name, arguments, token))
        if name == "whoami" or name in WRITES:
            if token is None:
                raise errors.LocalTokenNotFoundError("Token is required but no token found")
            if self.valid_tokens is not None and token not in self.valid_tokens:
                raise http_error(errors.HfHubHTTPError, 401, "Invalid credentials in Authorization header")
        return arguments

    def snapshot_download(self, *args: Any, **kwargs: Any) -> str:
        a = self.record("snapshot_download", None, args, kwargs, REAL_SNAPSHOT)
        commit = self.commit_of(a["repo_id"], a["revision"])
        for name in filter_repo_objects(commit.files, allow_patterns=a["allow_patterns"]):
            _write(self.root / "snapshots" / commit.oid / name, commit.files[name])
        return str(self.root / "snapshots" / commit.oid)


def _write(path: Path, content: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


class FakeApi:
    """What ``huggingface_hub.HfApi(...)`` makes under ``fake_hub``: ``api.NAME(...)`` is recorded,
    then answered by ``on_NAME`` with every argument by name (no ``on_NAME``: AttributeError)."""

    def __init__(self, hub: FakeHub, *args: Any, **kwargs: Any) -> None:
        bound = inspect.signature(REAL_API).bind(*args, **kwargs)
        self.hub, self.token = hub, bound.arguments.get("token")
        hub.apis.append(dict(bound.arguments))

    def __getattr__(self, name: str) -> Any:
        answer = getattr(type(self), f"on_{name}")
        return lambda *args, **kw: answer(self, self.hub.record(name, self.token, (self, *args), kw))

    def on_whoami(self, a: dict) -> dict[str, Any]:
        return {"name": "test-user"}

    def on_repo_exists(self, a: dict) -> bool:
        return a["repo_id"] in self.hub.refs

    def on_create_repo(self, a: dict) -> None:
        if a["repo_id"] not in self.hub.refs:  # private applies to a repo the call creates
            self.hub.private[a["repo_id"]] = a["private"]
            self.hub.commit(a["repo_id"], "main", "initial commit", {})
        elif not a["exist_ok"]:
            raise http_error(errors.HfHubHTTPError, 409, "You already created this dataset repo")

    def on_create_branch(self, a: dict) -> None:  # and create_tag: a tag is a ref that stays put
        start, refs = self.hub.commit_of(a["repo_id"], a["revision"]), self.hub.refs[a["repo_id"]]
        ref = a.get("branch") or a["tag"]
        if ref in refs and not a["exist_ok"]:
            raise http_error(errors.HfHubHTTPError, 409, f"Reference already exists: {ref}")
        refs.setdefault(ref, start)

    on_create_tag = on_create_branch

    def on_delete_repo(self, a: dict) -> None:
        del self.hub.refs[a["repo_id"]]

    def on_list_repo_files(self, a: dict) -> list[str]:
        return sorted(self.hub.commit_of(a["repo_id"], a["revision"]).files)

    def on_hf_hub_download(self, a: dict) -> str:
        commit = self.hub.commit_of(a["repo_id"], a["revision"])
        if a["filename"] not in commit.files:
            raise http_error(errors.RemoteEntryNotFoundError, 404, f"Entry not found: {a['filename']}")
        return _write(self.hub.root / "files" / commit.oid / a["filename"], commit.files[a["filename"]])

    def on_upload_folder(self, a: dict) -> CommitInfo:
        """One commit of the folder's files on ``revision``, or on a new ``refs/pr/N`` with
        ``create_pr``; the head's files matching ``delete_patterns`` are dropped first."""
        repo_id, folder = a["repo_id"], Path(a["folder_path"])
        head, refs = self.hub.commit_of(repo_id, a["revision"]), self.hub.refs[repo_id]
        pr = sum(r.startswith("refs/pr/") for r in refs) + 1 if a["create_pr"] else None
        stale = set(filter_repo_objects(head.files, allow_patterns=a["delete_patterns"] or []))
        files = {k: v for k, v in head.files.items() if k not in stale}
        files |= {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        branch = f"refs/pr/{pr}" if pr else a["revision"] or "main"
        done = self.hub.commit(repo_id, branch, a["commit_message"], files)
        url = f"{ENDPOINT}/datasets/{repo_id}"
        pr_url = f"{url}/discussions/{pr}" if pr else None
        return CommitInfo(f"{url}/commit/{done.oid}", done.message, "", done.oid, ENDPOINT, pr_url)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> FakeHub:
    """pdd-hub's Hub calls go to a :class:`FakeHub`; no token but the test's own (HF_TOKEN unset)."""
    hub = FakeHub(tmp_path_factory.mktemp("fake_hub"))
    monkeypatch.setattr(huggingface_hub, "HfApi", functools.partial(FakeApi, hub))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub
