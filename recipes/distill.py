"""Progressive Dataset Distillation with the base method the config names (mtt, idc, dc, dsa, dm, ...).

    accelerate launch recipes/distill.py --config recipes/configs/quickstart_idc.yaml [key=value ...]

The same as `pdd-hub distill --config quickstart_idc`, which needs no checkout. Writes
<output_dir>/dataset, re-exported after every stage; re-running the same command resumes.
"""

import sys

from pdd_hub.recipe import distill, recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main(sys.argv[1:], distill))
