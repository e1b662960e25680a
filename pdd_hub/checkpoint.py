"""Mid-stage checkpoints that make a killed run resume exactly where it stopped.

``accelerate``'s ``save_state``/``load_state`` keeps the global RNG streams of every process (loaded
with ``weights_only=True``; the loop itself draws only from explicit generators, so this is a
safety net for code that uses the global RNG); everything else — the images, the optimiser's
momentum and LRs, the method's learned tensors, each process's generator, the best-so-far
selection — goes into safetensors and JSON beside it. A checkpoint is written to a temporary
folder and renamed into place, so a crash while saving leaves the previous checkpoint usable.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from pdd_hub.errors import ConfigError, CorruptStateError
from pdd_hub.io import load_json, load_tensors, save_json, save_tensors

# What to do about a damaged checkpoint: it only holds the progress of the unfinished stage.
CHECKPOINT_HINT = (
    "delete the folder {folder} to restart the unfinished stage from its beginning (finished stages are "
    "kept), or start clean with a new output folder"
)


class StageCheckpoint:
    """The one current checkpoint of a run, in ``root``."""

    def __init__(self, root: str | Path, accelerator: Accelerator) -> None:
        self.root = Path(root)
        self.accelerator = accelerator
        self.path = self.root / "current"

    def save(
        self,
        *,
        stage: int,
        iteration: int,
        tensors: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        meta: dict[str, Any],
    ) -> None:
        acc = self.accelerator
        tmp = self.root / ".incoming"
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        tmp.mkdir(parents=True, exist_ok=True)
        acc.save_state(str(tmp))  # global RNG of every process
        save_tensors({"state": generator.get_state()}, tmp / f"generator_{acc.process_index}.safetensors")
        if acc.is_main_process:
            optim_tensors, optim_meta = optimizer_state_to_tensors(optimizer)
            save_tensors(
                {**tensors, **{f"optimizer.{k}": v for k, v in optim_tensors.items()}},
                tmp / "state.safetensors",
            )
            progress = {"stage": stage, "iteration": iteration, "num_processes": acc.num_processes}
            save_json({**progress, "optimizer": optim_meta, **meta}, tmp / "progress.json")
        acc.wait_for_everyone()
        if acc.is_main_process:
            old = self.root / ".outgoing"
            shutil.rmtree(old, ignore_errors=True)  # a leftover of a run killed while cleaning up
            if self.path.exists():
                os.rename(self.path, old)
            os.rename(tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def load(
        self, stage: int, optimizer: torch.optim.Optimizer, generator: torch.Generator
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """Restore the checkpoint of ``stage`` into ``optimizer``, ``generator`` and the global RNG;
        returns ``(tensors, progress)``, or ``None`` if there is no checkpoint of this stage."""
        self._recover()
        progress_file = self.path / "progress.json"
        if not progress_file.exists():
            return None
        hint = CHECKPOINT_HINT.format(folder=self.path)
        progress = load_json(progress_file, hint)
        if not isinstance(progress, dict) or not {"stage", "num_processes", "optimizer"} <= set(progress):
            raise CorruptStateError(
                f"{progress_file} is damaged (it lacks the stage, processes or optimizer); {hint}"
            )
        if progress["stage"] != stage:
            return None
        if progress["num_processes"] != self.accelerator.num_processes:
            # N processes average N trajectories per step: another N would not continue the same run
            raise ConfigError(
                f"the checkpoint in {self.path} was written by {progress['num_processes']} process(es); "
                f"resume it with the same number (this launch has {self.accelerator.num_processes})"
            )
        self._check_random_states(hint)
        self.accelerator.load_state(str(self.path))
        index = self.accelerator.process_index
        generator.set_state(
            load_tensors(self.path / f"generator_{index}.safetensors", ("state",), hint)["state"]
        )
        tensors = load_tensors(self.path / "state.safetensors", (), hint)
        optim = {k[len("optimizer.") :]: v for k, v in tensors.items() if k.startswith("optimizer.")}
        optimizer_state_from_tensors(optimizer, optim, progress["optimizer"])
        return {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}, progress

    def _check_random_states(self, hint: str) -> None:
        # accelerate's load_state skips an unreadable random-state file with an info log; the resumed
        # run would then no longer draw what the uninterrupted one draws, so it must stop instead
        from accelerate.utils import load

        path = self.path / f"random_states_{self.accelerator.process_index}.pkl"
        try:
            states = load(path)  # weights_only: plain tensors and numpy arrays, nothing is unpickled
            if not isinstance(states, dict) or "torch_manual_seed" not in states:
                raise ValueError("it holds no torch random state")
        except Exception as exc:  # torch.load raises many types on a truncated file
            raise CorruptStateError(f"{path} is missing or damaged ({exc}); {hint}") from exc

    def clear(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            shutil.rmtree(self.path, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def _recover(self) -> None:
        # killed between the two renames of save(): the previous checkpoint is in .outgoing
        old = self.root / ".outgoing"
        if self.accelerator.is_main_process and old.exists():
            if self.path.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(old, self.path)
        self.accelerator.wait_for_everyone()


def optimizer_state_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's ``state_dict`` as safetensors-able tensors plus a JSON-able rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, entry in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
