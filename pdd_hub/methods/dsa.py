"""DSA: DC with differentiable siamese augmentation (Zhao & Bilen, ICML 2021).

The same algorithm as DC (:mod:`pdd_hub.methods.dc`); only its settings differ: every comparison
augments the real and the synthetic batch of a class with one shared DSA draw, the network trains on
per-example augmented synthetic images, and the images start from real ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pdd_hub.config import augmentation
from pdd_hub.loss_networks import LossNetworksConfig, with_source
from pdd_hub.methods.dc import DC, DCConfig
from pdd_hub.registry import register_method


@dataclass
class DSAConfig(DCConfig):
    """DC's settings with siamese DSA (color, crop, cutout, flip, scale, rotate; one per draw)."""

    augment: str = augmentation("dsa")
    # stage >= 2: a fresh random network per draw, as DSA itself draws (start states 35.63 vs random
    # 38.71 after stage 5 at the CPU protocol; docs/RESULTS.md, issue 19)
    networks: LossNetworksConfig = field(default_factory=with_source("random"))


@register_method("dsa", DSAConfig)
class DCWithDSA(DC):
    """Gradient matching with differentiable siamese augmentation (Zhao & Bilen 2021)."""

    default_augment = "dsa"
