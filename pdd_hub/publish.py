"""Publishing an export on the Hub, through ``huggingface_hub``'s own API, the way its tools do.

A push stages the export in a temporary folder with the card rendered again for the repo (its repo
id in every loading example, its license, the results of every evaluation the repo holds plus the
new ones), then ``create_repo`` (``private`` applies to a repo it creates), ``create_branch`` (for a
``revision`` that does not exist yet), ``upload_folder`` (one commit, or a pull request with
``create_pr``; stale ``data/`` and ``images/`` files of the repo are deleted in the same commit) and
``create_tag`` on the commit it made. ``dry_run`` stops after staging and lists what would be sent.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdd_hub.card import (
    CardContext,
    build_card,
    card_license,
    default_title,
    load_card,
    source_license,
)
from pdd_hub.errors import HubPushError
from pdd_hub.results import (
    RESULTS_DIR,
    check_results,
    check_results_belong,
    merge_results,
    read_results,
    results_file_name,
)

if TYPE_CHECKING:
    from huggingface_hub import HfApi

    from pdd_hub.hub import PDDDataset

logger = logging.getLogger(__name__)


@dataclass
class PushOptions:
    """How ``pdd-hub push`` publishes: the options of the Hub's own upload tools, plus the license
    and the evaluation results to put on the card."""

    private: bool | None = None  # for a repo the push creates (as huggingface_hub's create_repo)
    revision: str | None = None  # the branch to commit to; created from main when it does not exist
    commit_message: str | None = None
    create_pr: bool = False  # open a pull request against main instead of committing to it
    tag: str | None = None  # tag the pushed commit (a release)
    license: str | None = None  # default: the export's card's, else the source dataset's
    results: Sequence[str | Path] = ()  # pdd-hub eval JSON files to add to the card and the repo
    dry_run: bool = False  # list what would be uploaded, upload nothing

    def check(self) -> None:
        """Refuse combinations the Hub cannot do, before any work."""
        if self.create_pr and self.revision not in (None, "main"):
            raise HubPushError(
                f"--create-pr opens a pull request against main; it cannot go with --revision {self.revision}"
            )
        if self.create_pr and self.tag:
            raise HubPushError("--tag names a commit of a branch; it cannot go with --create-pr")
        for name, value in (("--revision", self.revision), ("--tag", self.tag), ("--license", self.license)):
            if value is not None and not str(value).strip():
                raise HubPushError(f"{name} must not be empty")


@dataclass
class PushPlan:
    """What a push sends: every file (repo path and size), the repo files it deletes, and the folder's
    entries that stay local (not part of the export format)."""

    repo_id: str
    files: dict[str, int]
    delete_patterns: list[str]
    license: str
    local: list[str]

    def describe(self) -> str:
        total = sum(self.files.values())
        lines = [
            f"would upload {len(self.files)} files ({total / 2**20:.2f} MiB) to the dataset repo "
            f"{self.repo_id}, license {self.license}:",
            *(f"  {path}" for path in sorted(self.files)),
            "the repo's other files matching " + ", ".join(self.delete_patterns) + " are deleted",
        ]
        if self.local:
            lines.append("not uploaded (not part of the export format): " + ", ".join(self.local))
        return "\n".join(lines)


@dataclass
class PushResult:
    """Where a push went (``None``s for a dry run)."""

    plan: PushPlan
    commit_url: str | None = None
    pr_url: str | None = None
    commit: str | None = None
    tag: str | None = None


def push_export(pdd: PDDDataset, repo_id: str, options: PushOptions, api: HfApi) -> PushResult:
    """Stage ``pdd`` (a validated, loaded export) for ``repo_id`` and upload it (see the module)."""
    from pdd_hub.hub import check_push

    options.check()
    files, local = check_push(pdd, repo_id, api, token=not options.dry_run)  # before anything is sent
    new = []
    for path in options.results:
        report = read_results(path)
        check_results_belong(report, str(path), [s.sha256 for s in pdd.schedule.stages])
        new.append((results_file_name(report), report))
    license = push_license(pdd, options.license, api)
    with tempfile.TemporaryDirectory(prefix="pdd_hub_push_") as tmp:
        staging = Path(tmp)
        existing = existing_results(pdd.path, repo_id, options, api)
        stage_files(pdd.path, staging, files, [*existing, *new])
        title = _card_title(pdd)
        context = CardContext(repo_id, title, license, merge_results([*existing, *new]))
        (staging / "README.md").write_text(str(build_card(pdd.schedule, pdd.path, context)))
        plan = PushPlan(repo_id, planned_files(staging), delete_patterns(), license, local)
        if options.dry_run:
            return PushResult(plan)
        return upload(pdd, repo_id, staging, plan, options, api)


def delete_patterns() -> list[str]:
    """Repo files a push replaces: a re-push with fewer stages must not leave stale splits behind."""
    from pdd_hub.hub import DATA_DIR, GRID_DIR

    return [f"{DATA_DIR}/*", f"{GRID_DIR}/*"]


def upload(
    pdd: PDDDataset, repo_id: str, staging: Path, plan: PushPlan, options: PushOptions, api: HfApi
) -> PushResult:
    """``create_repo``, ``create_branch``, ``upload_folder`` and ``create_tag`` (see the module). A
    repo this push created is deleted again if a later step fails, so no empty repo is left behind."""
    from pdd_hub.hub import push_failure_cause

    message = options.commit_message or f"pdd-hub export: {pdd.num_stages} stages ({pdd.schedule.method})"
    created = False
    try:
        created = not api.repo_exists(repo_id, repo_type="dataset")
        api.create_repo(repo_id, repo_type="dataset", private=options.private, exist_ok=True)
        if options.revision not in (None, "main"):
            api.create_branch(repo_id, branch=options.revision, repo_type="dataset", exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            repo_type="dataset",
            revision=None if options.create_pr else options.revision,
            commit_message=message,
            create_pr=options.create_pr,
            delete_patterns=plan.delete_patterns,
        )
        if options.tag:
            api.create_tag(
                repo_id, tag=options.tag, revision=info.oid, repo_type="dataset", tag_message=message
            )
    except Exception as exc:  # HTTP errors, refused connections, offline mode: all the user's to fix
        cleanup = _delete_new_repo(api, repo_id) if created else ""
        cause = push_failure_cause(exc, repo_id, options.revision)
        raise HubPushError(
            f"pushing {pdd.path} to the dataset repo {repo_id!r} failed: {cause}{cleanup}"
        ) from exc
    return PushResult(plan, str(info.commit_url), info.pr_url, info.oid, options.tag)


def _delete_new_repo(api: HfApi, repo_id: str) -> str:
    try:
        api.delete_repo(repo_id, repo_type="dataset")
    except Exception as exc:  # the push already failed; say what is left behind
        return f" (the repo this push created could not be deleted: {type(exc).__name__}; delete it by hand)"
    return " (the repo this push created was deleted again)"


def push_license(pdd: PDDDataset, override: str | None, api: HfApi) -> str:
    """The license a pushed card names: ``override``, else the export's card's (inherited from the
    source when it was written), else the source dataset's (asking the Hub for a Hub dataset's)."""
    from pdd_hub.hub import CARD_FILE

    license = override or card_license(pdd.path / CARD_FILE) or source_license(pdd.schedule)
    source = str(pdd.schedule.source.get("dataset", "unknown"))
    if license is None and source.count("/") == 1 and not Path(source).expanduser().exists():
        try:
            license = card_license(Path(api.hf_hub_download(source, CARD_FILE, repo_type="dataset")))
        except Exception as exc:  # no card, no network: the user names the license below
            logger.info("could not read the card of the source dataset %s: %s", source, exc)
    if license is None:
        raise HubPushError(
            f"the license of {pdd.path} is not known: its source dataset {source!r} names none (or "
            "'unknown'); give the one that applies with --license (a Hub license id, e.g. cc-by-4.0, mit, "
            "or other)"
        )
    return license


def existing_results(
    folder: Path, repo_id: str, options: PushOptions, api: HfApi
) -> list[tuple[str, dict[str, Any]]]:
    """The results files the export folder and the repo (at the revision pushed to, else main)
    already hold, as ``(repo path, report)``; unreadable ones are skipped with a warning."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob(f"{RESULTS_DIR}/*.json")):
        found[f"{RESULTS_DIR}/{path.name}"] = _readable(path)
    try:
        for name, path in _repo_results(repo_id, options.revision, api):
            found.setdefault(name, _readable(path))
    except Exception as exc:
        if not options.dry_run:
            raise HubPushError(f"could not read the results already in {repo_id!r}: {exc}") from exc
        logger.warning(
            "dry run: could not read the results already in %s (%s); showing the local ones", repo_id, exc
        )
    return [(name, report) for name, report in found.items() if report is not None]


def _repo_results(repo_id: str, revision: str | None, api: HfApi) -> list[tuple[str, Path]]:
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        files = api.list_repo_files(repo_id, repo_type="dataset", revision=revision)
    except RepositoryNotFoundError:
        return []  # a new repo holds no results
    except RevisionNotFoundError:
        revision = None  # a new branch starts from main
        files = api.list_repo_files(repo_id, repo_type="dataset")
    names = sorted(f for f in files if f.startswith(f"{RESULTS_DIR}/") and f.endswith(".json"))
    return [
        (name, Path(api.hf_hub_download(repo_id, name, repo_type="dataset", revision=revision)))
        for name in names
    ]


def _readable(path: Path) -> dict[str, Any] | None:
    import json

    try:
        return check_results(json.loads(path.read_text()), str(path))
    except Exception as exc:  # a broken file already published must not block the next push
        logger.warning("ignoring the results file %s: %s", path, exc)
        return None


def stage_files(
    folder: Path, staging: Path, files: list[str], results: list[tuple[str, dict[str, Any]]]
) -> None:
    """The export's ``files`` (:func:`pdd_hub.hub.export_files`; its card is rendered anew) and the
    results files, in ``staging``."""
    import json

    from pdd_hub.hub import CARD_FILE

    for relative in files:
        path = folder / relative
        if relative == CARD_FILE:
            continue
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)  # the data files can be large: no copy where a link will do
        except OSError:
            shutil.copyfile(path, target)
    for name, report in results:
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_text(json.dumps(report, indent=2))


def planned_files(staging: Path) -> dict[str, int]:
    """Every file ``upload_folder`` sends from ``staging``, by repo path, with its size."""
    return {
        p.relative_to(staging).as_posix(): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()
    }


def _card_title(pdd: PDDDataset) -> str:
    from pdd_hub.hub import CARD_FILE

    card = load_card(pdd.path / CARD_FILE)
    title = card.data.pretty_name if card is not None else None
    return str(title) if title else default_title(pdd.schedule)
