"""Image-classification datasets through ``datasets``: a Hub id, a local Hub-layout folder, or the
embedded offline default, decoded once into uint8 tensors and cached on disk as safetensors."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from safetensors import safe_open

from pdd_hub.data.images import ImageSet, stratified_split
from pdd_hub.errors import DatasetFormatError
from pdd_hub.io import save_tensors
from pdd_hub.rng import stream
from pdd_hub.validate import check_literal_path

logger = logging.getLogger(__name__)

EMBEDDED_DIGITS = "sklearn:digits"
IMAGE_COLUMN_CANDIDATES = ("img", "image", "images", "pixel_values")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label", "coarse_label")
TRAIN_SPLIT = "train"  # the split distilled from; its validation part is carved out of it
TEST_SPLIT_CANDIDATES = ("test", "validation", "valid", "val")
# Bump when decoding changes, so stale caches are never read.
_DECODER_VERSION = 2


@dataclass(frozen=True)
class SourceInfo:
    """Where a real dataset came from; recorded in every export so results can be traced."""

    dataset: str
    fingerprint: str
    image_column: str
    label_column: str
    test_split: str

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


@dataclass
class RealData:
    """Train (minus validation), validation (carved from train) and test splits as uint8 tensors."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    source: SourceInfo

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    def keep_train_per_class(self, per_class: int, seed: int) -> None:
        """Cut ``train`` to ``per_class`` images of each class, the same seeded subset for every command
        that asks (``train_per_class`` of a run, ``pdd-hub select --train-per-class``)."""
        keep = self.train.sample_per_class(per_class, stream(seed, "subset"))
        self.train = self.train.subset(keep.sort().values)


def default_cache_dir() -> Path:
    """``$PDD_HUB_CACHE``, else ``$HF_HOME/pdd_hub``, else ``~/.cache/pdd_hub``."""
    if "PDD_HUB_CACHE" in os.environ:
        return Path(os.environ["PDD_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME")
    return Path(hf_home) / "pdd_hub" if hf_home else Path.home() / ".cache" / "pdd_hub"


def load_real_data(
    source: str,
    *,
    val_per_class: int = 50,
    seed: int = 0,
    image_column: str | None = None,
    label_column: str | None = None,
    test_split: str | None = None,
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
) -> RealData:
    """Load ``source`` (Hub id, local folder or ``sklearn:digits``) with a seeded stratified
    validation split carved out of train. Model or image selection uses ``val``, never ``test``."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    splits = _load_dataset_dict(source, cache)
    if TRAIN_SPLIT not in splits:
        raise DatasetFormatError(f"dataset {source!r} has no {TRAIN_SPLIT!r} split; it has {sorted(splits)}")
    if test_split is None:
        test_split = next((s for s in TEST_SPLIT_CANDIDATES if s in splits and s != TRAIN_SPLIT), None)
        if test_split is None:
            raise DatasetFormatError(
                f"dataset {source!r} has no test split (looked for {list(TEST_SPLIT_CANDIDATES)}; "
                f"it has {sorted(splits)}); name one with test_split"
            )
    elif test_split not in splits:
        raise DatasetFormatError(f"dataset {source!r} has no {test_split!r} split; it has {sorted(splits)}")

    train_ds = splits[TRAIN_SPLIT]
    image_column, label_column = detect_columns(train_ds, image_column, label_column, source)
    train = decode_split(train_ds, image_column, label_column, cache, image_size=image_size)
    check_no_empty_class(train, f"split {TRAIN_SPLIT!r} of dataset {source!r}")
    test = decode_split(
        splits[test_split],
        image_column,
        label_column,
        cache,
        image_size=image_size,
        class_names=train.class_names,
    )
    if test.image_shape != train.image_shape:
        raise DatasetFormatError(
            f"split {test_split!r} has images of shape {test.image_shape}, but {TRAIN_SPLIT!r} has "
            f"{train.image_shape}; set image_size to resize both"
        )
    train, val = stratified_split(train, val_per_class, seed)
    info = SourceInfo(
        dataset=str(source),
        fingerprint=f"{_fingerprint(train_ds)}/{_fingerprint(splits[test_split])}",
        image_column=image_column,
        label_column=label_column,
        test_split=test_split,
    )
    return RealData(train=train, val=val, test=test, source=info)


def load_split(
    source: str,
    split: str,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
) -> ImageSet:
    """One split of ``source`` as a uint8 :class:`ImageSet` (e.g. the test set for evaluation)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    splits = _load_dataset_dict(source, cache)
    if split not in splits:
        raise DatasetFormatError(f"dataset {source!r} has no {split!r} split; it has {sorted(splits)}")
    ds = splits[split]
    image_column, label_column = detect_columns(ds, image_column, label_column, source)
    return decode_split(ds, image_column, label_column, cache, image_size=image_size)


def _load_dataset_dict(source: str, cache: Path):
    import datasets

    if source == EMBEDDED_DIGITS:
        from pdd_hub.data.embedded import digits_dataset_dict

        return digits_dataset_dict()
    check_literal_path(source, "dataset path", DatasetFormatError)
    path = Path(source).expanduser()
    if path.exists() and not path.is_dir():
        raise DatasetFormatError(
            f"dataset path {source!r} is a file; give a folder in Hub layout or a Hub id"
        )
    try:
        if path.exists():
            # datasets keys its cache of a local folder whose README lists `configs:` by the folder's
            # name and file patterns only, so two folders of the same name, or a folder rewritten in
            # place, would read each other's stale cache. A cache keyed by path and file stats can't.
            fingerprint = local_folder_fingerprint(path)
            cache_dir = cache / "datasets" / fingerprint
            loaded = datasets.load_dataset(str(path), cache_dir=str(cache_dir))
            for name, split in loaded.items():
                split._fingerprint = f"{fingerprint}-{name}"
        else:
            loaded = datasets.load_dataset(source)
    except Exception as exc:  # datasets raises many types; the user needs the source and the reason
        hint = (
            "" if path.exists() else " (not a local folder either; offline? set HF_HUB_OFFLINE=0 to download)"
        )
        raise DatasetFormatError(f"could not load dataset {source!r}{hint}: {exc}") from exc
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def local_folder_fingerprint(path: Path) -> str:
    """A hash of a folder's absolute path and the names, sizes and mtimes of its files."""
    digest = hashlib.sha256(str(path.resolve()).encode())
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            continue
        stat = file.stat()
        digest.update(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def detect_columns(ds, image_column: str | None, label_column: str | None, source: str) -> tuple[str, str]:
    """Image and label column names: the overrides, else well-known names, else by feature type."""
    import datasets

    columns = list(ds.column_names)

    def pick(override, candidates, feature_type, what, flag):
        if override is not None:
            if override not in columns:
                raise DatasetFormatError(
                    f"dataset {source!r} has no {what} column {override!r}; its columns are {columns}"
                )
            return override
        for name in candidates:
            if name in columns:
                return name
        typed = [c for c in columns if isinstance(ds.features[c], feature_type)]
        if typed:
            return typed[0]
        raise DatasetFormatError(
            f"dataset {source!r} has no {what} column: looked for {list(candidates)} and for a "
            f"{feature_type.__name__} feature among its columns {columns}; name it with {flag}"
        )

    image = pick(image_column, IMAGE_COLUMN_CANDIDATES, datasets.Image, "image", "image_column")
    label = pick(label_column, LABEL_COLUMN_CANDIDATES, datasets.ClassLabel, "label", "label_column")
    return image, label


def _fingerprint(ds) -> str:
    return getattr(ds, "_fingerprint", None) or "unknown"


def decode_split(
    ds,
    image_column: str,
    label_column: str,
    cache_dir: Path,
    *,
    image_size: int | None = None,
    class_names: list[str] | None = None,
) -> ImageSet:
    """Decode one split to uint8 ``[N, C, H, W]`` (cached on disk by dataset fingerprint)."""
    key_src = json.dumps(
        [_fingerprint(ds), image_column, label_column, image_size, class_names, _DECODER_VERSION]
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    cache_file = cache_dir / "decoded" / f"{key}.safetensors"
    if _fingerprint(ds) != "unknown" and cache_file.exists():
        try:
            with safe_open(str(cache_file), framework="pt") as f:
                names = json.loads(f.metadata()["class_names"])
                return ImageSet(f.get_tensor("images"), f.get_tensor("labels"), names)
        except Exception as exc:  # a corrupt cache is rebuilt, never trusted
            logger.warning("ignoring unreadable decode cache %s (%s)", cache_file, exc)

    values = _label_values(ds, label_column)
    names = class_names or _class_names(ds, label_column, values)
    labels = _labels(values, label_column, names)
    images = _decode_images(ds, image_column, image_size)
    result = ImageSet(images, labels, names)

    if _fingerprint(ds) != "unknown":
        save_tensors(
            {"images": images, "labels": labels}, cache_file, metadata={"class_names": json.dumps(names)}
        )
    return result


def check_no_empty_class(data: ImageSet, what: str) -> None:
    """Every class the labels name has at least one example in ``data`` (``what`` names the split)."""
    empty = [c for c, count in enumerate(data.class_counts()) if count == 0]
    if empty:
        c = empty[0]
        raise DatasetFormatError(
            f"{what}: class {c} ({data.class_names[c]!r}) has no examples ({len(empty)} empty class(es) of "
            f"{data.num_classes}); every class the labels name needs training examples: fix the labels "
            "or the class names of the label column"
        )


def _label_values(ds, label_column: str) -> list:
    """The label column's values: class indices (integers, or floats with an integer value) or class
    names; a missing, fractional or other value is refused, naming its row."""
    values = list(ds[label_column])
    kind = str if values and isinstance(values[0], str) else int
    for row, value in enumerate(values):
        if value is None:
            problem = "is missing (null)"
        elif kind is str:
            problem = None if isinstance(value, str) else f"{value!r} is not a class name (as row 0's is)"
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            problem = f"{value!r} is not a class index"
        elif isinstance(value, float) and not value.is_integer():
            problem = f"{value!r} is not an integer class index"
        else:
            problem = None
        if problem is not None:
            raise DatasetFormatError(f"row {row}: the label in column {label_column!r} {problem}")
    return values if kind is str else [int(v) for v in values]


def _class_names(ds, label_column: str, values: list) -> list[str]:
    import datasets

    feature = ds.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if values and isinstance(values[0], str):
        return sorted(set(values))
    top = max(int(v) for v in values)
    return [str(i) for i in range(top + 1)]


def _labels(values: list, label_column: str, names: list[str]) -> torch.Tensor:
    if values and isinstance(values[0], str):
        lookup = {n: i for i, n in enumerate(names)}
        missing = next((i for i, v in enumerate(values) if v not in lookup), None)
        if missing is not None:
            raise DatasetFormatError(
                f"row {missing}: label {values[missing]!r} in column {label_column!r} is not one of {names}"
            )
        values = [lookup[v] for v in values]
    labels = torch.as_tensor(np.asarray(values, dtype=np.int64))
    bad = torch.nonzero((labels < 0) | (labels >= len(names))).flatten()
    if len(bad):
        row = int(bad[0])
        raise DatasetFormatError(
            f"row {row}: label {int(labels[row])} in column {label_column!r} is outside the class range "
            f"0..{len(names) - 1} ({len(bad)} such rows)"
        )
    return labels


def _decode_images(ds, image_column: str, image_size: int | None) -> torch.Tensor:
    import datasets

    feature = ds.features[image_column]
    if isinstance(feature, datasets.Image):
        raw = ds.cast_column(image_column, datasets.Image(decode=False))
    else:
        raw = ds
    out: np.ndarray | None = None
    mode: str | None = None
    size: tuple[int, int] | None = None
    row = 0
    for batch in raw.with_format(None).iter(batch_size=2048):
        for value in batch[image_column]:
            try:
                img = _to_pil(value)
                img.load()
            except Exception as exc:
                raise DatasetFormatError(
                    f"row {row}: cannot decode the image in column {image_column!r} ({exc})"
                ) from exc
            if mode is None:
                mode = _dataset_mode(raw, image_column)
                size = (image_size, image_size) if image_size else img.size
                channels = 1 if mode == "L" else 3
                out = np.empty((len(ds), size[1], size[0], channels), dtype=np.uint8)
            if img.mode != mode:
                img = img.convert(mode)
            if img.size != size:
                if image_size is None:
                    raise DatasetFormatError(
                        f"row {row}: image in column {image_column!r} is {img.size[0]}x{img.size[1]}, "
                        f"but the first image is {size[0]}x{size[1]}; set image_size to resize all images"
                    )
                img = img.resize(size, PILImage.BILINEAR)
            out[row] = np.asarray(img).reshape(size[1], size[0], -1)
            row += 1
    if out is None:
        raise DatasetFormatError(f"column {image_column!r} is empty")
    # Canonical NCHW strides: for one channel, .contiguous() would keep channels-last strides, which
    # send convolutions down other kernels and make results depend on whether the cache was hit.
    return torch.from_numpy(out).permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _dataset_mode(raw, image_column: str, probe: int = 256) -> str:
    """'RGB' if any of the first ``probe`` images has colour, else 'L': datasets such as
    Tiny-ImageNet mix a few grey images into colour ones, and one grey first image must not decide."""
    head = raw.select(range(min(probe, len(raw))))
    for value in head.with_format(None)[image_column]:
        try:
            if _to_pil(value).mode not in GREY_MODES:
                return "RGB"
        except Exception:
            continue  # undecodable rows are reported, with their row number, by the main loop
    return "L"


def _to_pil(value) -> PILImage.Image:
    if isinstance(value, PILImage.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return PILImage.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return PILImage.open(value["path"])
        raise ValueError("image entry has neither bytes nor path")
    array = np.asarray(value)
    if array.dtype != np.uint8:
        raise ValueError(f"array images must be uint8, got {array.dtype}")
    return PILImage.fromarray(array)
