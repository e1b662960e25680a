"""Train the stage-1 expert trajectories of a run on their own (e.g. on more processes first).

    accelerate launch recipes/experts.py --config recipes/configs/cifar10_ipc10.yaml [key=value ...]

They land in <output_dir>/experts/stage_1, where recipes/pdd_mtt.py finds and reuses them.
"""

import sys

from pdd_hub.progressive import train_stage1_experts
from pdd_hub.recipe import build_accelerator, recipe_main


def main(argv: list[str]) -> int:
    def job(config) -> None:
        accelerator = build_accelerator(config)
        experts = train_stage1_experts(config, accelerator)
        if accelerator.is_main_process:
            print(f"{len(experts)} experts of {experts.epochs} epochs in {experts.directory}")

    return recipe_main(argv, job)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
