"""Output folders: one writer at a time, checked before any work, and a full disk said in one line.

    with output_lock(folder):        # a second process on `folder` gets OutputError naming our pid
        check_writable(folder)       # before any work: the folder can be written and has free space

The lock is an advisory ``flock`` on ``.NAME.lock`` beside ``folder`` (beside, because an export is
replaced by renaming a new folder onto it). The kernel releases it when its process dies, so a
killed run never leaves a stale lock behind (at worst an unlocked file). It is re-entrant within a
process (a run's export takes the lock of its ``dataset/`` folder while the run holds its own).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pdd_hub.errors import OutputError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected from each other there
    fcntl = None  # type: ignore[assignment]

MIN_FREE_BYTES = 64 * 2**20  # what a run needs at the least before it starts (checkpoints, export)
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "os error 28")

_held: dict[Path, list] = {}  # lock file -> [open file, holders in this process]


def lock_file_of(folder: str | Path) -> Path:
    """The lock file of an output ``folder`` (or output file): ``.NAME.lock`` beside it."""
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lock"


def acquire_output_lock(folder: str | Path) -> Path:
    """Take the lock of ``folder`` (re-entrant in this process); :class:`OutputError` naming the
    holder's pid if another process has it. Returns the lock file, for :func:`release_output_lock`."""
    path = lock_file_of(folder)
    if path in _held:
        _held[path][1] += 1
        return path
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")  # noqa: SIM115 (kept open while the lock is held)
        except OSError as exc:
            raise OutputError(f"cannot write to the output folder {folder}: {exc.strerror or exc}") from exc
        if fcntl is None:
            break
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise OutputError(
                f"{folder} is in use by another pdd-hub process (pid {holder}, lock {path}); wait for it "
                "to finish, or choose another output folder"
            ) from None
        # a holder that finished between our open and our flock removed the file: lock the one there now
        if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[path] = [handle, 1]
    return path


def release_output_lock(path: Path) -> None:
    """Give back one hold of the lock file ``path``; the last one unlocks it."""
    entry = _held.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[path]
        path.unlink(missing_ok=True)  # while still locked: a newcomer then locks a new file
        entry[0].close()  # closing the file releases the flock


@contextlib.contextmanager
def output_lock(folder: str | Path) -> Iterator[None]:
    """Hold the lock of ``folder`` for the block."""
    path = acquire_output_lock(folder)
    try:
        yield
    finally:
        release_output_lock(path)


def check_writable(folder: str | Path, min_free: int | None = None) -> None:
    """Create ``folder`` if needed and make sure a file can be written in it and that its disk has
    ``min_free`` bytes free (default :data:`MIN_FREE_BYTES`, or ``$PDD_HUB_MIN_FREE_MB``);
    :class:`OutputError` otherwise. Run before any work."""
    if min_free is None:
        min_free = int(float(os.environ.get("PDD_HUB_MIN_FREE_MB", MIN_FREE_BYTES / 2**20)) * 2**20)
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".pdd-hub-write-test.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder {folder}: {exc.strerror or exc}") from exc
    free = shutil.disk_usage(folder).free
    if free < min_free:
        raise OutputError(
            f"the output folder {folder} has {free / 2**20:.1f} MiB free, less than the "
            f"{min_free / 2**20:.1f} MiB this needs at the least: free some space first"
        )


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says that the disk is full: safetensors, pyarrow and
    matplotlib report it in their own error types, with the OS message inside."""
    return any(
        (isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS) or any(t in str(e) for t in DISK_FULL_TEXTS)
        for e in _chain(exc)
    )


def disk_full_message(exc: BaseException) -> str:
    """One line for a full disk: where, and that the same command resumes."""
    where = next(
        (e.filename for e in _chain(exc) if isinstance(e, OSError) and e.filename),
        "the output folder",
    )
    return (
        f"no space left on the device while writing {where}: free some space and run the same command "
        "again (finished work is kept and a run resumes from its last checkpoint)"
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
