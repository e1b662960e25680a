"""Decoded image tensors with their labels, and the class-balanced views the algorithms need."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pdd_hub.errors import DatasetFormatError


@dataclass
class ImageSet:
    """A labelled image set held as tensors: ``images`` uint8 or float ``[N, C, H, W]``, ``labels`` int64."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    source_rows: torch.Tensor | None = None  # row of each example in its source split (default 0..N-1)
    _by_class: list[torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DatasetFormatError(f"images must be [N, C, H, W], got shape {tuple(self.images.shape)}")
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise DatasetFormatError(
                f"labels must be a vector with one entry per image: {len(self.images)} images, "
                f"labels of shape {tuple(self.labels.shape)}"
            )
        self.labels = self.labels.long()
        if self.source_rows is None:
            self.source_rows = torch.arange(len(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def indices_by_class(self) -> list[torch.Tensor]:
        """Indices of the examples of each class, in dataset order (computed once)."""
        if self._by_class is None:
            labels = self.labels.cpu()
            self._by_class = [torch.nonzero(labels == c).flatten() for c in range(self.num_classes)]
        return self._by_class

    def class_counts(self) -> list[int]:
        return [len(idx) for idx in self.indices_by_class()]

    def subset(self, indices: torch.Tensor) -> ImageSet:
        """The examples at ``indices`` (on the tensors' device), as a new set."""
        rows = self.source_rows[indices.cpu()]
        indices = indices.to(self.labels.device)
        return ImageSet(self.images[indices], self.labels[indices], list(self.class_names), rows)

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(
            self.images.to(device), self.labels.to(device), list(self.class_names), self.source_rows
        )

    def sample_per_class(self, n_per_class: int, generator: torch.Generator) -> torch.Tensor:
        """``n_per_class`` distinct random indices of every class, grouped by class (class 0 first)."""
        picked = []
        for c, idx in enumerate(self.indices_by_class()):
            if n_per_class > len(idx):
                raise DatasetFormatError(
                    f"cannot take {n_per_class} images per class: class {c} ({self.class_names[c]!r}) "
                    f"has only {len(idx)} examples in this split"
                )
            picked.append(idx[torch.randperm(len(idx), generator=generator)[:n_per_class]])
        return torch.cat(picked)


def stratified_split(data: ImageSet, per_class: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split off ``per_class`` examples of every class (seeded); returns ``(rest, held_out)``."""
    generator = torch.Generator().manual_seed(seed)
    held_out, rest = [], []
    for c, idx in enumerate(data.indices_by_class()):
        if per_class >= len(idx):
            raise DatasetFormatError(
                f"cannot carve {per_class} validation examples out of class {c} ({data.class_names[c]!r}): "
                f"it has only {len(idx)} training examples; lower val_per_class"
            )
        perm = idx[torch.randperm(len(idx), generator=generator)]
        held_out.append(perm[:per_class])
        rest.append(perm[per_class:])
    rest_idx = torch.cat(rest).sort().values
    held_idx = torch.cat(held_out).sort().values
    return data.subset(rest_idx), data.subset(held_idx)
