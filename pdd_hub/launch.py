"""``pdd-hub launch``: ``accelerate launch`` for pdd-hub's commands, with pdd-hub's own error reporting.

    pdd-hub launch --multi_gpu --num_processes 4 distill --config cifar10_ipc50
    pdd-hub launch --cpu eval runs/x/dataset --real sklearn:digits --model convnet_d3

Everything before the command goes to ``accelerate launch`` as is. The command's input (the run
config, the evaluation's options) is checked here first, so bad input stops before any process
starts. A bad input that only a launched process can find (a dataset that does not exist, ...) is
printed by that process; ``accelerate launch`` would then add a ``CalledProcessError`` traceback
and exit 1, so the launcher runs quiet and this exits 2, as every pdd-hub command does for bad input.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pdd_hub.errors import ConfigError

LAUNCHED_COMMANDS = ("distill", "eval")
ERROR_FILE_ENV = "PDD_HUB_ERROR_FILE"  # where a launched process notes that it stopped on bad input
USAGE = "pdd-hub launch [accelerate launch options] {distill,eval} [command arguments]"


def report_user_error(message: str) -> None:
    """Note, for ``pdd-hub launch``, that this process stopped on bad input (a no-op otherwise)."""
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        Path(path).write_text(message)


def split_launch_args(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """``(accelerate options, command, command arguments)`` of ``pdd-hub launch`` arguments."""
    for i, arg in enumerate(argv):
        if arg in LAUNCHED_COMMANDS:
            return argv[:i], arg, argv[i + 1 :]
    raise ConfigError(f"name the command to launch: {USAGE}")


def check_command(command: str, args: list[str]) -> None:
    """Check the command's input in this process, before accelerate starts any other."""
    if command == "distill":
        from pdd_hub.config import parse_recipe_args

        parse_recipe_args(args)
    else:
        from pdd_hub.cli import build_parser, check_eval_args

        check_eval_args(build_parser().parse_args([command, *args]))


def launch(argv: list[str]) -> int:
    """Run ``accelerate launch --quiet [options] -m pdd_hub.cli COMMAND ARGS``; returns 2 when a
    launched process stopped on bad input (it printed why), else the launcher's exit status."""
    options, command, args = split_launch_args(argv)
    check_command(command, args)
    with tempfile.TemporaryDirectory(prefix="pdd_hub_launch_") as tmp:
        error_file = Path(tmp) / "error"
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", *options]
        status = subprocess.call(
            [*launcher, "-m", "pdd_hub.cli", command, *args],
            env={**os.environ, ERROR_FILE_ENV: str(error_file)},
        )
        return 2 if status != 0 and error_file.exists() else status
