"""Card templates, shipped inside the package as ``pdd_hub.model_cards``."""
