"""Explicit, serialisable preprocessing: uint8 -> [0, 1] -> per-channel normalisation -> optional ZCA.

A synthetic set lives in the preprocessed space, so evaluating it on real data needs exactly the
same transform; :class:`Preprocess` is therefore written into every export (JSON for the small
numbers, safetensors for the ZCA matrices) and rebuilt from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from einops import rearrange

from pdd_hub.errors import ExportFormatError

ZCA_EPS_DEFAULT = 0.1  # the MTT family's choice (kornia ZCAWhitening(eps=0.1))


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
    def fit(cls, images: torch.Tensor, eps: float = ZCA_EPS_DEFAULT, chunk: int = 4096) -> ZCAWhitening:
        """Fit on float images ``[N, C, H, W]`` (already normalised), unbiased covariance as kornia."""
        flat = rearrange(images, "n c h w -> n (c h w)")
        n, dim = flat.shape
        if n < 2:
            raise ValueError("ZCA needs at least two images to estimate a covariance")
        mean = flat.mean(dim=0, dtype=torch.float64)
        cov = torch.zeros(dim, dim, dtype=torch.float64, device=flat.device)
        for start in range(0, n, chunk):  # float64 accumulation without a float64 copy of the data
            block = flat[start : start + chunk].double() - mean
            cov += block.T @ block
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
        x = _to_unit(train_images)
        channels = x.shape[1]
        if not normalize:
            mean_t, std_t = torch.zeros(channels), torch.ones(channels)
        else:
            mean_t = torch.tensor(mean, dtype=torch.float32) if mean is not None else _channel_mean(x)
            std_t = torch.tensor(std, dtype=torch.float32) if std is not None else _channel_std(x)
        if mean_t.numel() != channels or std_t.numel() != channels:
            raise ValueError(
                f"normalisation mean/std have {mean_t.numel()}/{std_t.numel()} entries but the images have "
                f"{channels} channels"
            )
        pre = cls(mean_t, std_t)
        if zca:
            pre.zca = ZCAWhitening.fit(pre.normalize(x), eps=zca_eps)
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


def _channel_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(0, 2, 3), dtype=torch.float64).float().cpu()


def _channel_std(x: torch.Tensor) -> torch.Tensor:
    # per-channel loop: a float64 copy of a whole dataset would double peak memory
    return torch.stack([x[:, c].double().std() for c in range(x.shape[1])]).float().cpu()


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
