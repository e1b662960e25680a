"""Prepare stage 1 of a run on its own (MTT: train the stage-1 expert trajectories), e.g. on more
processes first.

    accelerate launch recipes/experts.py --config recipes/configs/cifar10_ipc10.yaml [key=value ...]

What it makes lands in <output_dir> (MTT: experts/stage_1), where the distillation finds and reuses it.
"""

import sys

from pdd_hub.progressive import prepare_first_stage
from pdd_hub.recipe import recipe_main


def job(config) -> None:
    folder = prepare_first_stage(config)
    print(f"stage 1 of method {config.method} prepared in {folder}")


if __name__ == "__main__":
    sys.exit(recipe_main(sys.argv[1:], job))
