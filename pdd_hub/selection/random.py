"""Random real images per class, disjoint across stages."""

from __future__ import annotations

import torch

from pdd_hub.data.images import ImageSet
from pdd_hub.errors import DatasetFormatError


def random_stage_indices(data: ImageSet, num_stages: int, ipc: int, seed: int) -> list[torch.Tensor]:
    """``num_stages`` disjoint sets of ``ipc`` random examples of every class (seeded), each grouped
    by class; no image appears in two stages."""
    need = num_stages * ipc
    generator = torch.Generator().manual_seed(seed)
    per_class = []
    for c, idx in enumerate(data.indices_by_class()):
        if need > len(idx):
            raise DatasetFormatError(
                f"{num_stages} stages x {ipc} images per class need {need} images of class {c} "
                f"({data.class_names[c]!r}), which has only {len(idx)}"
            )
        per_class.append(idx[torch.randperm(len(idx), generator=generator)[:need]].view(num_stages, ipc))
    return [torch.cat([chosen[k] for chosen in per_class]) for k in range(num_stages)]
