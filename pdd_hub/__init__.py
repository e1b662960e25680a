"""pdd-hub: Progressive Dataset Distillation for the Hugging Face / timm ecosystem.

``import pdd_hub`` registers the distillation networks (``convnet_d3``, ``resnet18_cifar``, ...) in
timm, so ``timm.create_model("convnet_d3")`` works afterwards.
"""

from pdd_hub import models  # registers the models in timm
from pdd_hub.augment import DSA, DSAParams
from pdd_hub.config import PDDConfig, load_config
from pdd_hub.data import ImageSet, Preprocess, RealData, load_real_data, load_split
from pdd_hub.evaluate import EvalReport, evaluate_export
from pdd_hub.forgetting import load_forgetting_scores
from pdd_hub.hub import (
    PDDDataset,
    Schedule,
    StageSpec,
    export_pdd,
    load_pdd,
    push_to_hub,
)
from pdd_hub.loop import TrainingPhase, iterate_schedule
from pdd_hub.progressive import run_pdd
from pdd_hub.publish import PushOptions
from pdd_hub.schedule import SGDRecipe
from pdd_hub.train import plan_stages, train_stages

__version__ = "0.1.0"

__all__ = [
    "DSA",
    "DSAParams",
    "EvalReport",
    "ImageSet",
    "PDDConfig",
    "PDDDataset",
    "Preprocess",
    "PushOptions",
    "RealData",
    "SGDRecipe",
    "Schedule",
    "StageSpec",
    "TrainingPhase",
    "evaluate_export",
    "export_pdd",
    "iterate_schedule",
    "load_config",
    "load_forgetting_scores",
    "load_pdd",
    "load_real_data",
    "load_split",
    "models",
    "plan_stages",
    "push_to_hub",
    "run_pdd",
    "train_stages",
]
