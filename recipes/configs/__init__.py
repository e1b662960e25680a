# The shipped configs, installed as the package data `pdd_hub.recipe_configs` (see pyproject.toml),
# so that `pdd-hub configs` lists them and `pdd-hub distill --config NAME` finds them after a pip install.
