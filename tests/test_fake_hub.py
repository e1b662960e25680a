"""The fake Hub must round-trip real huggingface_hub uploads and downloads byte for byte.

Only public huggingface_hub calls are used here, so these tests also pin down which client code
paths the fake supports (and fail loudly if a huggingface_hub upgrade starts calling something new).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.fake_hub import FAKE_TOKEN, FakeHub
from tests.fake_hub import fake_hub as fake_hub_fixture

# Rebinding (rather than importing the fixture under its own name) keeps ruff from reporting every
# test argument named `fake_hub` as a redefinition of an unused import (F811).
fake_hub = fake_hub_fixture

REPO_ID = "pdd-tests/distilled-digits"


def _binary(size: int, seed: int) -> bytes:
    # Every byte value, including NUL and non-UTF-8 sequences, so that any text/encoding mangling
    # on the way shows up as a mismatch.
    return random.Random(seed).randbytes(size)


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for relpath, content in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def _read_tree(root: str | Path) -> dict[str, bytes]:
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _sample_dataset_files() -> dict[str, bytes]:
    return {
        "README.md": b"---\nlicense: apache-2.0\ntags:\n- dataset-distillation\n---\n# Distilled digits\n",
        "data/train-00000-of-00001.parquet": b"PAR1" + _binary(300_000, seed=1) + b"PAR1",
        "data/meta.json": json.dumps({"ipc": 10, "classes": list(range(10))}).encode(),
        "model.safetensors": _binary(200_000, seed=2),
    }


@pytest.fixture
def api(fake_hub: FakeHub) -> HfApi:
    return HfApi(endpoint=fake_hub.url, token=FAKE_TOKEN)


@pytest.fixture(params=["xet-pipeline", "legacy-commit"])
def upload_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run upload tests through both of huggingface_hub's upload_folder implementations.

    With hf_xet installed (the default here) upload_folder goes through the streamed multi-commit
    pipeline; HF_HUB_DISABLE_XET (read at import into a constant) selects the single create_commit path.
    """
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", request.param == "legacy-commit")
    return request.param


def test_upload_folder_then_snapshot_download_round_trips(
    fake_hub: FakeHub, api: HfApi, upload_path: str, tmp_path: Path
) -> None:
    files = _sample_dataset_files()
    folder = _write_tree(tmp_path / "upload", files)

    repo_url = api.create_repo(REPO_ID, repo_type="dataset", exist_ok=True, private=True)
    assert repo_url.repo_id == REPO_ID
    assert repo_url.repo_type == "dataset"
    # A second create with exist_ok=True is how pdd-hub re-publishes: it must not fail.
    api.create_repo(REPO_ID, repo_type="dataset", exist_ok=True, private=True)
    assert fake_hub.is_private(REPO_ID)

    commit = api.upload_folder(
        folder_path=folder, repo_id=REPO_ID, repo_type="dataset", commit_message="Add distilled set"
    )
    assert fake_hub.files(REPO_ID) == files
    head = fake_hub.commits(REPO_ID)[0]
    assert commit.oid == head.oid
    assert head.title == "Add distilled set"

    snapshot = snapshot_download(
        REPO_ID,
        repo_type="dataset",
        revision=None,
        endpoint=fake_hub.url,
        cache_dir=tmp_path / "cache",
        token=FAKE_TOKEN,
    )
    assert _read_tree(snapshot) == files
    assert Path(snapshot).name == head.oid  # cached under the commit the fake reported

    assert api.list_repo_files(REPO_ID, repo_type="dataset") == sorted(files)
    assert fake_hub.seen_tokens == {FAKE_TOKEN}
    assert all(r.token == FAKE_TOKEN for r in fake_hub.requests)


def test_hf_hub_download_single_files(fake_hub: FakeHub, api: HfApi, tmp_path: Path) -> None:
    files = _sample_dataset_files()
    api.create_repo(REPO_ID, repo_type="dataset")
    api.upload_folder(
        folder_path=_write_tree(tmp_path / "upload", files), repo_id=REPO_ID, repo_type="dataset"
    )

    for filename in ("data/train-00000-of-00001.parquet", "data/meta.json"):
        local = hf_hub_download(
            REPO_ID,
            filename,
            repo_type="dataset",
            endpoint=fake_hub.url,
            cache_dir=tmp_path / "cache",
            token=FAKE_TOKEN,
        )
        assert Path(local).read_bytes() == files[filename]

    # The download requests themselves (not just the API calls) carried the token.
    downloads = [r for r in fake_hub.requests if "/resolve/" in r.path]
    assert {r.method for r in downloads} == {"HEAD", "GET"}
    assert all(r.token == FAKE_TOKEN for r in downloads)


def test_second_upload_overwrites_and_deletes_and_old_revision_stays_readable(
    fake_hub: FakeHub, api: HfApi, upload_path: str, tmp_path: Path
) -> None:
    first = _sample_dataset_files() | {"stale.txt": b"to be removed\n"}
    folder = _write_tree(tmp_path / "upload", first)
    api.create_repo(REPO_ID, repo_type="dataset", exist_ok=True)
    first_commit = api.upload_folder(folder_path=folder, repo_id=REPO_ID, repo_type="dataset")

    second = dict(first)
    del second["stale.txt"]
    (folder / "stale.txt").unlink()
    second["data/meta.json"] = json.dumps({"ipc": 50}).encode()
    (folder / "data/meta.json").write_bytes(second["data/meta.json"])
    # delete_patterns="*": remote files missing locally are deleted, making the repo mirror the folder.
    second_commit = api.upload_folder(
        folder_path=folder, repo_id=REPO_ID, repo_type="dataset", commit_message="v2", delete_patterns="*"
    )
    assert second_commit.oid != first_commit.oid
    assert fake_hub.files(REPO_ID) == second
    assert fake_hub.files(REPO_ID, revision=first_commit.oid) == first

    cache = tmp_path / "cache"
    latest = snapshot_download(
        REPO_ID, repo_type="dataset", endpoint=fake_hub.url, cache_dir=cache, token=FAKE_TOKEN
    )
    assert _read_tree(latest) == second
    pinned = snapshot_download(
        REPO_ID,
        repo_type="dataset",
        revision=first_commit.oid,
        endpoint=fake_hub.url,
        cache_dir=cache,
        token=FAKE_TOKEN,
    )
    assert _read_tree(pinned) == first


def test_unchanged_upload_makes_no_commit(
    fake_hub: FakeHub, api: HfApi, upload_path: str, tmp_path: Path
) -> None:
    folder = _write_tree(tmp_path / "upload", _sample_dataset_files())
    api.create_repo(REPO_ID, repo_type="dataset")
    api.upload_folder(folder_path=folder, repo_id=REPO_ID, repo_type="dataset")
    nb_commits = len(fake_hub.commits(REPO_ID))

    # huggingface_hub compares the git oids from the preupload answer with the local files.
    again = api.upload_folder(folder_path=folder, repo_id=REPO_ID, repo_type="dataset")
    assert len(fake_hub.commits(REPO_ID)) == nb_commits
    assert again.oid == fake_hub.commits(REPO_ID)[0].oid


def test_model_repo_upload_file_and_download(fake_hub: FakeHub, api: HfApi, tmp_path: Path) -> None:
    weights = _binary(100_000, seed=3)
    api.create_repo("pdd-tests/convnet", repo_type="model")
    api.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id="pdd-tests/convnet")

    assert fake_hub.files("pdd-tests/convnet", repo_type="model") == {"model.safetensors": weights}
    local = hf_hub_download(
        "pdd-tests/convnet", "model.safetensors", endpoint=fake_hub.url, cache_dir=tmp_path, token=FAKE_TOKEN
    )
    assert Path(local).read_bytes() == weights


def test_other_read_and_admin_calls(fake_hub: FakeHub, api: HfApi, tmp_path: Path) -> None:
    assert api.whoami()["name"] == fake_hub.username
    api.create_repo(REPO_ID, repo_type="dataset")
    files = {"data/sub/x.bin": b"\x00\xff", "data/étiquettes.json": b"[]", "README.md": b"# card\n"}
    commit = api.upload_folder(
        folder_path=_write_tree(tmp_path / "upload", files), repo_id=REPO_ID, repo_type="dataset"
    )

    top = {entry.path for entry in api.list_repo_tree(REPO_ID, repo_type="dataset")}
    assert top == {"README.md", "data"}
    inside = {entry.path for entry in api.list_repo_tree(REPO_ID, path_in_repo="data", repo_type="dataset")}
    assert inside == {"data/sub", "data/étiquettes.json"}
    assert api.repo_info(REPO_ID, repo_type="dataset", revision=commit.oid).sha == commit.oid
    assert [c.commit_id for c in api.list_repo_commits(REPO_ID, repo_type="dataset")] == [
        c.oid for c in fake_hub.commits(REPO_ID)
    ]
    assert api.file_exists(REPO_ID, "data/étiquettes.json", repo_type="dataset")
    assert not api.file_exists(REPO_ID, "missing.txt", repo_type="dataset")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(
            REPO_ID,
            "missing.txt",
            repo_type="dataset",
            endpoint=fake_hub.url,
            cache_dir=tmp_path,
            token=FAKE_TOKEN,
        )
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(REPO_ID, repo_type="dataset", revision="no-such-branch")

    api.delete_repo(REPO_ID, repo_type="dataset")
    assert not fake_hub.repo_exists(REPO_ID)
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(REPO_ID, repo_type="dataset")


def test_invalid_token_is_rejected(fake_hub: FakeHub) -> None:
    fake_hub.valid_tokens = {"hf_good"}
    with pytest.raises(HfHubHTTPError) as excinfo:
        HfApi(endpoint=fake_hub.url, token="hf_wrong").create_repo(REPO_ID, repo_type="dataset")
    assert excinfo.value.response.status_code == 401
    assert not fake_hub.repo_exists(REPO_ID)
    assert fake_hub.seen_tokens == {"hf_wrong"}

    HfApi(endpoint=fake_hub.url, token="hf_good").create_repo(REPO_ID, repo_type="dataset")
    assert fake_hub.repo_exists(REPO_ID)


def test_missing_token_is_rejected_for_writes_and_private_reads(fake_hub: FakeHub, tmp_path: Path) -> None:
    # token=False: never fall back to a token from the environment or the local HF login.
    anonymous = HfApi(endpoint=fake_hub.url, token=False)
    with pytest.raises(HfHubHTTPError) as excinfo:
        anonymous.create_repo(REPO_ID, repo_type="dataset")
    assert excinfo.value.response.status_code == 401

    fake_hub.create_repo(REPO_ID, private=True)
    fake_hub.commit(REPO_ID, {"data/meta.json": b"{}"})
    # Like the Hub, a private repo looks missing without credentials.
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(
            REPO_ID, repo_type="dataset", endpoint=fake_hub.url, cache_dir=tmp_path, token=False
        )


def test_require_auth_rejects_anonymous_downloads(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.create_repo(REPO_ID)
    fake_hub.commit(REPO_ID, {"data/meta.json": b"{}"})
    fake_hub.require_auth = True
    with pytest.raises(HfHubHTTPError) as excinfo:
        hf_hub_download(
            REPO_ID,
            "data/meta.json",
            repo_type="dataset",
            endpoint=fake_hub.url,
            cache_dir=tmp_path,
            token=False,
        )
    assert excinfo.value.response.status_code == 401
    local = hf_hub_download(
        REPO_ID,
        "data/meta.json",
        repo_type="dataset",
        endpoint=fake_hub.url,
        cache_dir=tmp_path,
        token=FAKE_TOKEN,
    )
    assert Path(local).read_bytes() == b"{}"


@pytest.fixture
def offline_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """What other tests (and CI) do: HF_HUB_OFFLINE=1, as if set before huggingface_hub was imported."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_fake_hub_fixture_overrides_offline_mode(
    offline_mode: None, fake_hub: FakeHub, tmp_path: Path
) -> None:
    # `offline_mode` runs first (argument order), then `fake_hub` switches huggingface_hub back online.
    assert not constants.is_offline_mode()
    assert os.environ["HF_HUB_OFFLINE"] == "0"
    fake_hub.create_repo(REPO_ID)
    fake_hub.commit(REPO_ID, {"README.md": b"# hi\n"})
    snapshot = snapshot_download(
        REPO_ID, repo_type="dataset", endpoint=fake_hub.url, cache_dir=tmp_path, token=FAKE_TOKEN
    )
    assert _read_tree(snapshot) == {"README.md": b"# hi\n"}


def test_fake_hub_without_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The class works on its own, e.g. for a module- or session-scoped fixture.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FakeHub() as hub:
        api = HfApi(endpoint=hub.url, token=FAKE_TOKEN)
        api.create_repo(REPO_ID, repo_type="dataset")
        api.upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id=REPO_ID, repo_type="dataset")
        assert hub.files(REPO_ID) == {"a.txt": b"x"}
        url = hub.url
    with pytest.raises(RuntimeError):
        _ = hub.url
    assert url.startswith("http://127.0.0.1:")
