"""Progressive Dataset Distillation with MTT as the base method.

    accelerate launch recipes/pdd_mtt.py --config recipes/configs/quickstart.yaml [key=value ...]

Writes <output_dir>/dataset (Hub layout; `datasets.load_dataset` / `pdd_hub.load_pdd`), re-exported
after every stage. Re-running the same command resumes an interrupted run.
"""

import sys

from pdd_hub.progressive import run_pdd
from pdd_hub.recipe import build_accelerator, recipe_main


def main(argv: list[str]) -> int:
    def job(config) -> None:
        if config.method != "mtt":
            raise SystemExit(f"recipes/pdd_mtt.py runs method=mtt, the config says {config.method!r}")
        accelerator = build_accelerator(config)
        dataset = run_pdd(config, accelerator)
        if accelerator.is_main_process:
            print(
                f"\nexport: {dataset}\nevaluate it with:\n  pdd-hub eval {dataset} --real {config.dataset} "
                f"--model {config.model} --seeds 3"
            )

    return recipe_main(argv, job)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
