"""The machine a run is on: CPU threads, the accelerate state that sees every process, and the one
:class:`TrainingRuntime` a run builds from its config and accelerator.

Threads: ``accelerate launch`` sets ``OMP_NUM_THREADS=1`` for CPU runs, so a run started the
documented way would use one core. pdd-hub sets torch's thread count itself, whatever launched it:
``num_threads`` in the config, else ``$PDD_HUB_NUM_THREADS``, else the physical cores this process may
run on divided by the processes on this machine (``$LOCAL_WORLD_SIZE``).

Processes: accelerate treats processes started by a multi-process launcher (``accelerate launch
--multi_gpu``, ``torchrun``) on a machine without GPUs as one distributed CPU run only when told to
use the CPU; otherwise each would run alone and they would overwrite each other's files.
:func:`make_accelerator` tells it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator, PartialState

from pdd_hub.rng import Name, stream, stream_seed

if TYPE_CHECKING:
    from pdd_hub.config import PDDConfig

logger = logging.getLogger(__name__)
ENV_VAR = "PDD_HUB_NUM_THREADS"


def physical_cores_available() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads not counted)."""
    import psutil

    logical_all = psutil.cpu_count(logical=True) or 1
    physical_all = psutil.cpu_count(logical=False) or logical_all
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical_all
    per_core = max(1, logical_all // physical_all)
    return max(1, allowed // per_core)


def default_num_threads() -> int:
    """The physical cores available, divided between the processes on this machine."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, physical_cores_available() // max(1, local_processes))


def configure_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads (``requested``, ``$PDD_HUB_NUM_THREADS`` or the default); returns it."""
    if requested is None and os.environ.get(ENV_VAR):
        try:
            requested = int(os.environ[ENV_VAR])
        except ValueError as exc:
            raise ValueError(f"${ENV_VAR} must be a positive integer, got {os.environ[ENV_VAR]!r}") from exc
    threads = requested if requested is not None else default_num_threads()
    if threads < 1:
        raise ValueError(f"the number of CPU threads must be positive, got {threads}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    logger.info("using %d CPU threads per process", torch.get_num_threads())
    return threads


def distributed_without_gpu() -> bool:
    """Whether a multi-process launcher started this process on a machine without a GPU (or other
    accelerator accelerate knows)."""
    from accelerate.utils import is_npu_available, is_xpu_available

    launched = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 or "LOCAL_RANK" in os.environ
    return launched and not (torch.cuda.is_available() or is_xpu_available() or is_npu_available())


def process_state(cpu: bool = False) -> PartialState:
    """accelerate's process state, distributed over the CPU where that is what the launcher meant."""
    return PartialState(cpu=cpu or distributed_without_gpu())


def make_accelerator(cpu: bool = False, **kwargs) -> Accelerator:
    """``Accelerator(**kwargs)``, distributed over the CPU where that is what the launcher meant."""
    return Accelerator(cpu=cpu or distributed_without_gpu(), **kwargs)


PRECISIONS = ("fp32", "bf16")
CPU = torch.device("cpu")


@dataclass(frozen=True)
class TrainingRuntime:
    """Where and how a run's networks train, whatever they learn, built once per run
    (:meth:`for_run`) and passed down instead of loose keywords: the ``device``, the ``precision`` of
    forward passes (:func:`autocast`), ``batched`` (many networks stacked under vmap, where their
    model allows), ``compile`` (``torch.compile`` for a network that trains alone), the CPU
    ``threads`` torch uses, ``progress`` bars, and the run ``seed`` every named random stream of the
    run derives from (:meth:`stream`)."""

    precision: str = "fp32"
    batched: bool = False
    compile: bool = False
    progress: bool = False
    device: torch.device = CPU
    seed: int = 0

    @property
    def threads(self) -> int:
        """torch's intra-op threads: set once per process (:func:`configure_threads`), read, not copied."""
        return torch.get_num_threads()

    @classmethod
    def for_run(cls, config: PDDConfig, accelerator: Accelerator) -> TrainingRuntime:
        """The runtime of a run of ``config`` on ``accelerator``'s device: the config's settings (networks
        batched by default on accelerators) and its seed."""
        device, batched = accelerator.device, config.batch_networks
        batched = batch_networks_by_default(device) if batched is None else batched
        return cls(
            precision=config.precision,
            batched=batched,
            compile=config.compile,
            progress=config.progress,
            device=device,
            seed=config.seed,
        )

    def stream(self, *name: Name) -> torch.Generator:
        """The run's random stream ``name`` (:func:`pdd_hub.rng.stream`), e.g. ``("transition", 2, 0)``."""
        return stream(self.seed, *name)

    def stream_seed(self, *name: Name) -> int:
        """The integer seed of the run's stream ``name`` (e.g. for a network's initialisation)."""
        return stream_seed(self.seed, *name)


PLAIN = TrainingRuntime()  # fp32, one network at a time, not compiled, quiet


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision="bf16"`` (forward passes in bf16, weights and
    optimiser in fp32), nothing for ``"fp32"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def batch_networks_by_default(device: torch.device) -> bool:
    """Whether many networks train stacked under vmap by default: on accelerators, where one small
    network leaves most of the device idle; not on a CPU, where one network already keeps every
    core busy and the stacked kernels measured slower (docs/RESULTS.md)."""
    return device.type != "cpu"
