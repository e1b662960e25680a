"""Progressive Dataset Distillation with MTT as the base method.

    accelerate launch recipes/pdd_mtt.py --config recipes/configs/quickstart.yaml [key=value ...]

Writes <output_dir>/dataset (Hub layout; `datasets.load_dataset` / `pdd_hub.load_pdd`), re-exported
after every stage. Re-running the same command resumes an interrupted run. recipes/distill.py runs
any registered method.
"""

import sys

from pdd_hub.recipe import distill, only_method, recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main(sys.argv[1:], only_method("mtt", distill)))
