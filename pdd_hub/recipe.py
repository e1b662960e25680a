"""What the thin scripts in recipes/ share: config parsing, the Accelerator, clean error reporting."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from accelerate import Accelerator, PartialState

from pdd_hub.config import PDDConfig, parse_recipe_args
from pdd_hub.errors import PDDError


def build_accelerator(config: PDDConfig) -> Accelerator:
    """An ``Accelerator`` with the run's tracker (TensorBoard under ``output_dir/logs``) if any."""
    if config.tracker == "none":
        return Accelerator()
    return Accelerator(log_with=config.tracker, project_dir=f"{config.output_dir}/logs")


def recipe_main(argv: list[str], job: Callable[[PDDConfig], None]) -> int:
    """Parse ``--config FILE key=value ...`` and run ``job``; user errors print one paragraph."""
    main_process = PartialState().is_main_process  # other processes log warnings only
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("datasets", "huggingface_hub", "accelerate", "fsspec", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = parse_recipe_args(argv)
        job(config)
    except PDDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
