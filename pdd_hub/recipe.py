"""What the thin scripts in recipes/ and ``pdd-hub distill`` share: config parsing, CPU threads, the
Accelerator, clean error reporting, and the distillation job itself."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator

from pdd_hub.config import PDDConfig, parse_recipe_args
from pdd_hub.errors import ConfigError
from pdd_hub.runtime import configure_threads, make_accelerator, process_state


def build_accelerator(config: PDDConfig) -> Accelerator:
    """An ``Accelerator`` with the run's tracker (TensorBoard under ``output_dir/logs``) if any."""
    if config.tracker == "none":
        return make_accelerator()
    return make_accelerator(log_with=config.tracker, project_dir=f"{config.output_dir}/logs")


def distill(config: PDDConfig) -> Path:
    """Run PDD with the config's base method; the main process prints where the export is."""
    from pdd_hub.progressive import run_pdd

    accelerator = build_accelerator(config)
    dataset = run_pdd(config, accelerator)
    if accelerator.is_main_process:
        print(
            f"\nexport: {dataset}\nevaluate it with:\n  pdd-hub eval {dataset} --real {config.dataset} "
            f"--model {config.model} --seeds 3 --baseline random"
        )
    return dataset


def only_method(name: str, job: Callable[[PDDConfig], object]) -> Callable[[PDDConfig], object]:
    """``job``, refusing configs of another method (for recipes named after one, e.g. pdd_mtt.py)."""

    def checked(config: PDDConfig) -> object:
        if config.method != name:
            raise ConfigError(
                f"this recipe runs method {name!r} but the config says method {config.method!r}; "
                "run it with recipes/distill.py or `pdd-hub distill`, which take any method"
            )
        return job(config)

    return checked


def recipe_main(argv: list[str], job: Callable[[PDDConfig], object]) -> int:
    """Parse ``--config NAME_OR_FILE key=value ...``, set the CPU threads and run ``job``; user errors
    print one paragraph and exit with status 2."""
    main_process = process_state().is_main_process  # other processes log warnings only
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for noisy in ("datasets", "huggingface_hub", "accelerate", "fsspec", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = parse_recipe_args(argv)
        configure_threads(config.num_threads)
        job(config)
    except Exception as exc:  # bad input and a full disk: one paragraph, status 2; the rest re-raised
        from pdd_hub.cli import user_error

        return user_error(exc, "error: ")
    return 0
