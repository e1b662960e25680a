"""The one runtime a run builds: device, threads, batching and the seed of every named stream."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from pdd_hub.config import config_from_dict
from pdd_hub.rng import stream, stream_seed
from pdd_hub.run import RunFolder


def runtime_of(tmp_path, **settings):
    config = config_from_dict({"method": "dm", "output_dir": str(tmp_path), **settings})
    return RunFolder(config, Accelerator(cpu=True)).runtime


def test_a_run_builds_its_runtime_once_from_config_and_accelerator(tmp_path):
    config = config_from_dict({"method": "dm", "output_dir": str(tmp_path), "seed": 7, "precision": "bf16"})
    folder = RunFolder(config, Accelerator(cpu=True))
    runtime = folder.runtime
    assert runtime is folder.runtime  # one object for the whole run
    assert runtime.device == torch.device("cpu") and runtime.threads == torch.get_num_threads()
    assert (runtime.seed, runtime.precision, runtime.compile) == (7, "bf16", False)
    assert not runtime.batched  # the CPU default: one network at a time
    assert runtime_of(tmp_path / "b", batch_networks=True).batched


def test_the_runtime_streams_are_the_run_seeds_named_streams(tmp_path):
    runtime, other = runtime_of(tmp_path, seed=7), runtime_of(tmp_path / "b", seed=8)
    drawn = torch.rand(4, generator=runtime.stream("init", 2))
    assert torch.equal(drawn, torch.rand(4, generator=stream(7, "init", 2)))
    assert runtime.stream_seed("transition", 2, 0) == stream_seed(7, "transition", 2, 0)
    assert runtime.stream_seed("transition", 2, 0) != other.stream_seed("transition", 2, 0)
