"""Patch a copy of the reference implementation (VITA-Group/ProgressiveDD) so the benchmarks can run it
offline, on a CPU or a GPU, and read its per-iteration time. The copy is fetched outside this
repository and never committed; this script only edits it in place.

    python benchmarks/reference_patch.py PATH/TO/ProgressiveDD

Checked against commit 844fa9adcdcac78020b51d7b0c340403aaaceee9. Each patch is applied once: running
the script again leaves a patched copy as it is, and a copy whose code differs from the expected lines
is refused with the file and line named. What changes:

* ``utils.py``: torchvision checks only that CIFAR-10's files exist, not their md5 sums (those of
  the original archive), so the copy ``benchmarks/gpu.py`` writes from the local CIFAR-10 is read and
  nothing is downloaded; ``rotate`` comes from ``scipy.ndimage`` (its ``interpolation`` namespace is
  deprecated);
* ``distill_mtt.py``: the undefined ``args.use_more_at_first_interval`` reads as False; one
  ``.cuda()`` becomes ``.to(args.device)``; every iteration prints one ``PDD_HUB_ITERATION {json}``
  line with its seconds (from the student's creation to the updates, CUDA-synchronised) and its peak
  CUDA memory (``peak_memory_gib``, with ``resident_gib`` allocated when it began);
* ``wandb.py``: a stand-in for Weights & Biases beside the scripts (``init`` keeps the config, every
  logging call does nothing), so no wandb package or account is needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

MARK = "# pdd-hub benchmark patch"

TIMING_HELPERS = f"""
{MARK}: per-iteration seconds and CUDA memory for benchmarks/gpu.py
import json as _pdd_hub_json
import time as _pdd_hub_time


def _pdd_hub_tick(device):
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return _pdd_hub_time.perf_counter(), torch.cuda.memory_allocated()
    return _pdd_hub_time.perf_counter(), 0


def _pdd_hub_report(it, tick, device):
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = _pdd_hub_time.perf_counter() - tick[0]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    row = {{"iteration": it, "seconds": seconds, "peak_memory_gib": peak, "resident_gib": tick[1] / 2**30}}
    print("PDD_HUB_ITERATION " + _pdd_hub_json.dumps(row), flush=True)

"""

WANDB_STAND_IN = f'''"""{MARK}: a stand-in for wandb (the benchmarks log nothing)."""


class _Config:
    _items = {{}}


config = _Config()


def init(config=None, **kwargs):
    _Config._items = dict(vars(config)) if config is not None else {{}}


def log(*args, **kwargs):
    pass


def finish(*args, **kwargs):
    pass


def Image(*args, **kwargs):
    return None


def Histogram(*args, **kwargs):
    return None
'''

# (file, expected text, replacement)
PATCHES = [
    (
        "utils.py",
        "from torchvision import datasets, transforms\n",
        "from torchvision import datasets, transforms\n"
        f"{MARK}: a local copy of CIFAR-10 whose files exist but have other md5 sums; nothing is downloaded\n"
        "datasets.CIFAR10.train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]\n"
        "datasets.CIFAR10.test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]\n"
        'datasets.CIFAR10.meta = {**datasets.CIFAR10.meta, "md5": None}\n',
    ),
    (
        "utils.py",
        "from scipy.ndimage.interpolation import rotate as scipyrotate\n",
        f"from scipy.ndimage import rotate as scipyrotate  {MARK}\n",
    ),
    (
        "distill_mtt.py",
        "        if args.use_more_at_first_interval and",
        "        if getattr(args, 'use_more_at_first_interval', False) and",
    ),
    ("distill_mtt.py", "image_save = image_syn.cuda()", "image_save = image_syn.to(args.device)"),
    (
        "distill_mtt.py",
        "def main(args, images_best, labels_best):\n",
        TIMING_HELPERS + "\ndef main(args, images_best, labels_best):\n",
    ),
    (
        "distill_mtt.py",
        '        wandb.log({"Synthetic_LR": syn_lr.detach().cpu()}, step=it)\n',
        "        _pdd_hub_started = _pdd_hub_tick(args.device)\n"
        '        wandb.log({"Synthetic_LR": syn_lr.detach().cpu()}, step=it)\n',
    ),
    (
        "distill_mtt.py",
        "        optimizer_lr.step()\n",
        "        optimizer_lr.step()\n        _pdd_hub_report(it, _pdd_hub_started, args.device)\n",
    ),
]


class PatchError(Exception):
    pass


def apply_patch(path: Path, expected: str, replacement: str) -> bool:
    """Replace the one occurrence of ``expected`` in ``path``; False if already patched."""
    text = path.read_text()
    if replacement in text:
        return False
    count = text.count(expected)
    if count != 1:
        raise PatchError(
            f"{path}: expected exactly one occurrence of {expected.strip()!r}, found {count}; "
            "is this VITA-Group/ProgressiveDD at commit 844fa9a?"
        )
    path.write_text(text.replace(expected, replacement))
    return True


def patch_reference(root: Path) -> list[str]:
    """Apply every patch to the copy at ``root``; returns what changed (empty when already patched)."""
    missing = [name for name in ("utils.py", "distill_mtt.py") if not (root / name).is_file()]
    if missing:
        raise PatchError(f"{root} is not a copy of VITA-Group/ProgressiveDD: {', '.join(missing)} missing")
    changed = [
        f"{name}: {expected.strip()[:60]}"
        for name, expected, replacement in PATCHES
        if apply_patch(root / name, expected, replacement)
    ]
    stand_in = root / "wandb.py"
    if not stand_in.exists():
        stand_in.write_text(WANDB_STAND_IN)
        changed.append("wandb.py: stand-in written")
    return changed


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        changed = patch_reference(Path(sys.argv[1]))
    except PatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(changed) or "already patched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
