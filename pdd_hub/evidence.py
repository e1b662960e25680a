"""What was measured of PDD against each base method alone (docs/RESULTS.md), negative results
included: `pdd-hub configs`, the README and every export's dataset card state it, so that nobody
picks PDD + X for a gain that was not seen.

Each entry is one measured comparison at equal storage: PDD + X (P stages) against X alone (one stage
of all the images), mean ± std over seeds after the last stage, with where and how it was measured.
``benchmarks/ablation.py --report`` prints the rows it measured in this form.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Comparison:
    """PDD + X against X alone after the last stage, test accuracy in %."""

    method: str
    pdd: tuple[float, float]  # mean, std
    alone: tuple[float, float]  # the better of X alone's evaluations where both were run
    protocol: str  # where: data, scale, budgets, evaluation
    section: str  # the section of docs/RESULTS.md

    @property
    def gain(self) -> float:
        return self.pdd[0] - self.alone[0]

    @property
    def verdict(self) -> str:
        """helps / within one std / does not help."""
        if self.gain > 0 and self.gain >= self.alone[1]:
            return "helps"
        return "within one std" if self.gain >= -self.alone[1] else "does not help"

    def sentence(self) -> str:
        name = self.method.upper()
        return (
            f"PDD + {name} {self.pdd[0]:.2f} ± {self.pdd[1]:.2f} vs {name} alone {self.alone[0]:.2f} ± "
            f"{self.alone[1]:.2f} ({self.gain:+.2f} points, {self.verdict}; {self.protocol}; "
            f"docs/RESULTS.md, {self.section})"
        )


def _cpu16(updates: int) -> str:
    """The issue-19 ablation protocol (benchmarks/ablation.py --protocol cpu) at ``updates`` per image."""
    return (
        f"CIFAR-10 16 px from 500 images per class, 5 x 2 vs 1 x 10 IPC, ConvNet-D3, 3 seeds, {updates} "
        "updates per image on both sides, X alone at the better of 300 and 1500 epochs"
    )


MEASURED: dict[str, Comparison] = {
    "mtt": Comparison("mtt", (48.13, 0.28), (45.79, 0.27), _cpu16(300), "issue 19"),
    # the bands start stage 1 from easy examples: the better IDC alone is the one started from those
    "idc": Comparison(
        "idc",
        (47.02, 0.25),
        (46.24, 0.23),
        _cpu16(100) + ", PDD with forgetting bands, IDC alone started from its least-forgotten examples "
        "(plain IDC alone: 44.75 ± 0.22; at 300 updates per image on both sides PDD only equals "
        "that control, 47.25 ± 0.21 vs 47.25 ± 0.20)",
        "issue 19",
    ),
    "dm": Comparison("dm", (38.71, 0.57), (41.39, 0.42), _cpu16(300), "issue 19"),
    "dsa": Comparison("dsa", (41.25, 0.16), (42.93, 0.64), _cpu16(300), "issue 19"),
    "dc": Comparison(
        "dc",
        (37.31, 0.39),
        (38.91, 0.12),
        _cpu16(300) + ", PDD with sensitivity-sampled initial images (without them 36.18 ± 0.13; at 100 "
        "updates 35.96 ± 0.44 vs 37.74 ± 0.40)",
        "issue 19",
    ),
}


def measured_gain(method: str) -> str:
    """One sentence: what PDD + ``method`` measured against ``method`` alone, or that nothing was."""
    found = MEASURED.get(method)
    if found is None:
        return f"PDD + {method.upper()} has not been measured against {method.upper()} alone."
    return found.sentence()
