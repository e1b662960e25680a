"""Real data: sources and column detection, the uint8 decode cache, splits, preprocessing."""

from pdd_hub.data.images import ImageSet, stratified_split
from pdd_hub.data.sources import (
    EMBEDDED_DIGITS,
    RealData,
    SourceInfo,
    default_cache_dir,
    detect_columns,
    load_real_data,
    load_split,
)
from pdd_hub.data.transforms import Preprocess, PreprocessedImages, ZCAWhitening

__all__ = [
    "EMBEDDED_DIGITS",
    "ImageSet",
    "Preprocess",
    "PreprocessedImages",
    "RealData",
    "SourceInfo",
    "ZCAWhitening",
    "default_cache_dir",
    "detect_columns",
    "load_real_data",
    "load_split",
    "stratified_split",
]
