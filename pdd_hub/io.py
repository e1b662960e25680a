"""Atomic writes: a file is either its old or its new content, never half of the new one. Reads of
files pdd-hub wrote earlier: a damaged one stops with a message naming it and what to do."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pdd_hub.errors import CorruptStateError, PDDError

# What to do about a damaged file of a run folder: every such file is recomputed when it is missing.
RUN_FILE_HINT = (
    "delete it and run the same command again to resume from the last good stage (what it held is "
    "recomputed), or start clean with a new output folder"
)


def _tmp_path(path: Path) -> Path:
    # the suffix stays last, so that writers that pick a format by it (PNG, ...) see the right one
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block succeeds,
    removed when it fails, so ``path`` keeps its previous content until the new one is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """``safetensors`` file written to a temporary name, then renamed into place."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path)


def tensors_sha256(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' bytes, in order (dtype and values, not the memory layout)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_json(data: Any, path: str | Path, *, strict: bool = False) -> Path:
    """JSON written to a temporary name, then renamed into place; ``strict`` refuses NaN and
    infinities (not JSON: files other programs read, such as a schedule, must not hold them)."""
    text = json.dumps(data, indent=2, allow_nan=not strict)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def load_json(path: str | Path, hint: str = RUN_FILE_HINT) -> Any:
    """A JSON file pdd-hub wrote; a damaged one raises :class:`CorruptStateError` saying ``hint``."""
    return read_json(path, CorruptStateError, hint, strict=False)


def read_json(path: str | Path, error: type[PDDError], hint: str = "", *, strict: bool = True) -> Any:
    """Parse a JSON file; ``strict`` refuses NaN and Infinity. Unreadable or invalid content raises
    ``error`` naming the file (and saying ``hint``); a missing file raises FileNotFoundError."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a JSON number")

    try:
        return json.loads(Path(path).read_text(), parse_constant=refuse if strict else None)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise error(f"{path} is not valid JSON ({exc}){'; ' + hint if hint else ''}") from exc


def load_tensors(
    path: str | Path, keys: tuple[str, ...] = (), hint: str = RUN_FILE_HINT
) -> dict[str, torch.Tensor]:
    """A safetensors file pdd-hub wrote, with at least ``keys``; a truncated or otherwise damaged
    one raises :class:`CorruptStateError` naming it and saying ``hint``."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptStateError(f"{path} is damaged ({exc}); {hint}") from exc
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise CorruptStateError(f"{path} is damaged (it lacks {missing}); {hint}")
    return tensors
