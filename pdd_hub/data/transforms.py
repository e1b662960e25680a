"""Explicit, serialisable preprocessing: uint8 -> [0, 1] -> per-channel normalisation -> optional ZCA.

A synthetic set lives in the preprocessed space, so evaluating it on real data needs exactly the
same transform; :class:`Preprocess` is therefore written into every export (JSON for the small
numbers, safetensors for the ZCA matrices) and rebuilt from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from einops import rearrange

from pdd_hub.errors import ConfigError, ExportFormatError

ZCA_EPS_DEFAULT = 0.1  # the MTT family's choice (kornia ZCAWhitening(eps=0.1))
# The fixed (mean, std) of the dataset-condensation reference code (DC/DSA/DM, MTT, ProgressiveDD
# utils.get_dataset), to preprocess exactly as it does; its CIFAR-100 reuses the CIFAR-10 numbers.
NORMALIZATION_PRESETS: dict[str, tuple[list[float], list[float]]] = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "cifar100": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "tinyimagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "mnist": ([0.1307], [0.3081]),
}


def normalization_constants(
    preset: str | None, mean: list[float] | None, std: list[float] | None
) -> tuple[list[float] | None, list[float] | None]:
    """``(mean, std)`` from a preset name or given values (``None``: measure them); a clear error
    for an unknown preset, both at once, or only one of mean and std."""
    if preset is not None:
        if mean is not None or std is not None:
            raise ConfigError("give either a normalisation preset or --mean/--std, not both")
        if preset not in NORMALIZATION_PRESETS:
            raise ConfigError(
                f"unknown normalisation preset {preset!r}; use one of {sorted(NORMALIZATION_PRESETS)}"
            )
        return NORMALIZATION_PRESETS[preset]
    if (mean is None) != (std is None):
        raise ConfigError("give both --mean and --std (one value per channel each), or neither")
    return mean, std


@dataclass
class ZCAWhitening:
    """ZCA whitening ``(x - mean) @ W`` with ``W = U diag(1/sqrt(s + eps)) U^T`` of the covariance.

    ``unwhiten`` is the exact inverse matrix, used to turn synthetic images back into pictures.
    """

    mean: torch.Tensor  # [D]
    whiten: torch.Tensor  # [D, D]
    unwhiten: torch.Tensor  # [D, D]
    eps: float = ZCA_EPS_DEFAULT

    @classmethod
    def fit(
        cls,
        images: torch.Tensor,
        eps: float = ZCA_EPS_DEFAULT,
        chunk: int = 4096,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> ZCAWhitening:
        """Fit on images ``[N, C, H, W]`` (already normalised, or made so by ``transform``, which is
        applied one chunk at a time so that no float copy of the whole set is made); unbiased
        covariance as kornia."""
        n, dim = len(images), images[0].numel()
        if n < 2:
            raise ValueError("ZCA needs at least two images to estimate a covariance")
        blocks = [(start, start + chunk) for start in range(0, n, chunk)]

        def flat_block(start: int, stop: int) -> torch.Tensor:
            block = images[start:stop] if transform is None else transform(images[start:stop])
            return rearrange(block, "n c h w -> n (c h w)").double()  # float64 accumulation

        mean = sum(flat_block(*b).sum(dim=0) for b in blocks) / n
        cov = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
        for b in blocks:
            centred = flat_block(*b) - mean
            cov += centred.T @ centred
        cov /= n - 1
        eigvals, eigvecs = torch.linalg.eigh(cov)
        eigvals = eigvals.clamp_min(0)
        whiten = (eigvecs * (eigvals + eps).rsqrt()) @ eigvecs.T
        unwhiten = (eigvecs * (eigvals + eps).sqrt()) @ eigvecs.T
        return cls(mean.float(), whiten.float(), unwhiten.float(), eps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        flat = rearrange(x, "n c h w -> n (c h w)") - self.mean.to(x.device)
        return rearrange(flat @ self.whiten.to(x.device), "n (c h w) -> n c h w", c=c, h=h, w=w)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        flat = rearrange(x, "n c h w -> n (c h w)") @ self.unwhiten.to(x.device) + self.mean.to(x.device)
        return rearrange(flat, "n (c h w) -> n c h w", c=c, h=h, w=w)


@dataclass
class Preprocess:
    """``uint8 -> float in [0, 1] -> (x - mean) / std -> ZCA`` and its inverse for viewing."""

    mean: torch.Tensor  # [C]
    std: torch.Tensor  # [C]
    zca: ZCAWhitening | None = None

    @classmethod
    def fit(
        cls,
        train_images: torch.Tensor,
        *,
        normalize: bool = True,
        zca: bool = False,
        zca_eps: float = ZCA_EPS_DEFAULT,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> Preprocess:
        """Fit on the uint8 training images; ``mean``/``std`` override the measured statistics.

        The MTT family whitens raw [0, 1] pixels (``normalize=False, zca=True``); DC/DM/IDC
        normalise without ZCA.
        """
        channels = train_images.shape[1]
        if not normalize:
            mean_t, std_t = torch.zeros(channels), torch.ones(channels)
        else:
            measured = _channel_stats(train_images) if mean is None or std is None else None
            mean_t = torch.tensor(mean, dtype=torch.float32) if mean is not None else measured[0]
            std_t = torch.tensor(std, dtype=torch.float32) if std is not None else measured[1]
        if mean_t.numel() != channels or std_t.numel() != channels:
            raise ConfigError(
                f"normalisation mean/std have {mean_t.numel()}/{std_t.numel()} entries but the images have "
                f"{channels} channels"
            )
        pre = cls(mean_t, std_t)
        if zca:
            pre.zca = ZCAWhitening.fit(
                train_images, eps=zca_eps, transform=lambda block: pre.normalize(_to_unit(block))
            )
        return pre

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.device).view(1, -1, 1, 1)
        std = self.std.to(x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocess uint8 (or [0, 1] float) images ``[N, C, H, W]`` into the model's input space."""
        x = self.normalize(_to_unit(images))
        return self.zca(x) if self.zca is not None else x

    def batched(self, images: torch.Tensor, batch_size: int = 4096) -> Iterator[torch.Tensor]:
        for start in range(0, len(images), batch_size):
            yield self(images[start : start + batch_size])

    def apply_all(self, images: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Preprocess a whole set in chunks (bounded peak memory)."""
        return torch.cat(list(self.batched(images, batch_size)))

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] pixel space (not clamped: synthetic images may leave it)."""
        if self.zca is not None:
            x = self.zca.inverse(x)
        mean = self.mean.to(x.device).view(1, -1, 1, 1)
        std = self.std.to(x.device).view(1, -1, 1, 1)
        return x * std + mean

    def to(self, device: torch.device | str) -> Preprocess:
        """A copy whose tensors live on ``device`` (so batches there need no transfer of them)."""
        zca = self.zca
        if zca is not None:
            zca = ZCAWhitening(zca.mean.to(device), zca.whiten.to(device), zca.unwhiten.to(device), zca.eps)
        return Preprocess(self.mean.to(device), self.std.to(device), zca)

    # --- serialisation: JSON-able description + tensors for a safetensors file -------------------
    def to_config(self, tensor_file: str = "preprocess.safetensors") -> dict:
        config: dict = {
            "scale": "uint8/255",
            "normalize": {"mean": self.mean.tolist(), "std": self.std.tolist()},
            "zca": None,
        }
        if self.zca is not None:
            config["zca"] = {"eps": self.zca.eps, "file": tensor_file}
        return config

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.zca is None:
            return {}
        return {
            "zca.mean": self.zca.mean.contiguous(),
            "zca.whiten": self.zca.whiten.contiguous(),
            "zca.unwhiten": self.zca.unwhiten.contiguous(),
        }

    @classmethod
    def from_config(cls, config: dict, tensors: dict[str, torch.Tensor] | None = None) -> Preprocess:
        try:
            mean = torch.tensor(config["normalize"]["mean"], dtype=torch.float32)
            std = torch.tensor(config["normalize"]["std"], dtype=torch.float32)
        except (KeyError, TypeError) as exc:
            raise ExportFormatError(f"preprocess config lacks normalize.mean/std: {config!r}") from exc
        zca = None
        if config.get("zca"):
            tensors = tensors or {}
            missing = [k for k in ("zca.mean", "zca.whiten", "zca.unwhiten") if k not in tensors]
            if missing:
                raise ExportFormatError(f"preprocess tensors lack {missing} needed for ZCA")
            zca = ZCAWhitening(
                tensors["zca.mean"],
                tensors["zca.whiten"],
                tensors["zca.unwhiten"],
                float(config["zca"]["eps"]),
            )
        return cls(mean, std, zca)


# the statistics stream over the set in chunks: a float copy of a whole dataset (four times its uint8
# size, eight in float64) would set the peak memory of a run
STATS_CHUNK = 4096


def _unit_chunks(images: torch.Tensor) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), STATS_CHUNK):
        yield _to_unit(images[start : start + STATS_CHUNK]).double()


def _channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased standard deviation over all pixels (as ``x[:, c].std()``)."""
    count = images.numel() // images.shape[1]
    mean = sum(x.sum(dim=(0, 2, 3)) for x in _unit_chunks(images)) / count
    centre = mean.view(1, -1, 1, 1)
    squares = sum(((x - centre) ** 2).sum(dim=(0, 2, 3)) for x in _unit_chunks(images))
    return mean.float().cpu(), (squares / (count - 1)).sqrt().float().cpu()


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    # contiguous_format: same strides whatever the input's were, so the kernels downstream (and
    # their rounding) do not depend on how the input tensor was made
    x = images.to(torch.float32, memory_format=torch.contiguous_format)
    return x.div_(255.0) if images.dtype == torch.uint8 else x


class PreprocessedImages:
    """uint8 images ``[N, C, H, W]`` kept on their device and preprocessed when indexed, one batch at
    a time: a training set costs a quarter of its float32 size, and the normalisation and ZCA of a
    minibatch run where the minibatch is. ``images[idx]`` is what ``preprocess(raw[idx])`` gives."""

    ndim = 4
    dtype = torch.float32

    def __init__(self, raw: torch.Tensor, preprocess: Preprocess) -> None:
        if raw.dtype != torch.uint8 or raw.ndim != 4:
            raise ValueError(
                f"PreprocessedImages keeps uint8 [N, C, H, W] images, got {raw.dtype} {tuple(raw.shape)}"
            )
        self.raw = raw
        self.preprocess = preprocess.to(raw.device)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        return self.preprocess(self.raw[index])

    @property
    def shape(self) -> torch.Size:
        return self.raw.shape

    @property
    def device(self) -> torch.device:
        return self.raw.device

    def to(self, device: torch.device | str) -> PreprocessedImages:
        return PreprocessedImages(self.raw.to(device), self.preprocess)
