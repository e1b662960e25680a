"""The dataset card of an export (``README.md``): the metadata the Hub reads (license, size and task
categories, source datasets, tags, ``configs`` and ``dataset_info`` naming the stage splits) and a
body, from ``model_cards/pdd_dataset_card.md``, that says how the data was made, how to load one
stage, a union of stages and the whole schedule, what it scores, and what to cite.

The card is rendered when an export is written (its loading examples name the local folder) and
again by ``pdd-hub push``, with the repo id, the license and the evaluation results.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from huggingface_hub import DatasetCard, DatasetCardData

    from pdd_hub.hub import Schedule
    from pdd_hub.results import ResultTable

logger = logging.getLogger(__name__)

CARD_TEMPLATE = "pdd_dataset_card.md"
PDD_ARXIV = "2310.06982"
# licenses that say nothing about what users may do: a push asks for a real one instead
NO_LICENSE = (None, "", "unknown")
# licenses of the sources pdd-hub knows without asking the Hub: scikit-learn's digits are the test
# part of the UCI "Optical Recognition of Handwritten Digits" data set, licensed CC BY 4.0 by UCI
KNOWN_SOURCE_LICENSES = {"sklearn:digits": "cc-by-4.0"}
# the Hub's size categories, by their upper bound
SIZE_CATEGORIES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
]
# the run-config keys the card shows (the whole config is in pdd_schedule.json)
SHOWN_SETTINGS = (
    "num_stages",
    "ipc_per_stage",
    "model",
    "iterations",
    "init",
    "conditioning",
    "real_sampling",
    "zca",
    "seed",
)

CITATIONS = {
    "pdd": """@inproceedings{chen2024vodka,
  title         = {Data Distillation Can Be Like Vodka: Distilling More Times For Better Quality},
  author        = {Chen, Xuxi and Yang, Yu and Wang, Zhangyang and Mirzasoleiman, Baharan},
  booktitle     = {International Conference on Learning Representations (ICLR)},
  year          = {2024},
  eprint        = {2310.06982},
  archivePrefix = {arXiv}
}""",
    "mtt": """@inproceedings{cazenavette2022distillation,
  title         = {Dataset Distillation by Matching Training Trajectories},
  author        = {Cazenavette, George and Wang, Tongzhou and Torralba, Antonio and Efros, Alexei A. and
                   Zhu, Jun-Yan},
  booktitle     = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year          = {2022},
  eprint        = {2203.11932},
  archivePrefix = {arXiv}
}""",
    "idc": """@inproceedings{kim2022dataset,
  title         = {Dataset Condensation via Efficient Synthetic-Data Parameterization},
  author        = {Kim, Jang-Hyun and Kim, Jinuk and Oh, Seong Joon and Yun, Sangdoo and Song, Hwanjun and
                   Jeong, Joonhyun and Ha, Jung-Woo and Song, Hyun Oh},
  booktitle     = {International Conference on Machine Learning (ICML)},
  year          = {2022},
  eprint        = {2205.14959},
  archivePrefix = {arXiv}
}""",
    "dc": """@inproceedings{zhao2021dataset,
  title         = {Dataset Condensation with Gradient Matching},
  author        = {Zhao, Bo and Mopuri, Konda Reddy and Bilen, Hakan},
  booktitle     = {International Conference on Learning Representations (ICLR)},
  year          = {2021},
  eprint        = {2006.05929},
  archivePrefix = {arXiv}
}""",
    "dsa": """@inproceedings{zhao2021dsa,
  title         = {Dataset Condensation with Differentiable Siamese Augmentation},
  author        = {Zhao, Bo and Bilen, Hakan},
  booktitle     = {International Conference on Machine Learning (ICML)},
  year          = {2021},
  eprint        = {2102.08259},
  archivePrefix = {arXiv}
}""",
    "dm": """@inproceedings{zhao2023distribution,
  title         = {Dataset Condensation with Distribution Matching},
  author        = {Zhao, Bo and Bilen, Hakan},
  booktitle     = {IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  year          = {2023},
  eprint        = {2110.04181},
  archivePrefix = {arXiv}
}""",
    "herding": """@inproceedings{welling2009herding,
  title         = {Herding Dynamical Weights to Learn},
  author        = {Welling, Max},
  booktitle     = {International Conference on Machine Learning (ICML)},
  year          = {2009}
}""",
    "kcenter": """@inproceedings{sener2018active,
  title         = {Active Learning for Convolutional Neural Networks: A Core-Set Approach},
  author        = {Sener, Ozan and Savarese, Silvio},
  booktitle     = {International Conference on Learning Representations (ICLR)},
  year          = {2018},
  eprint        = {1708.00489},
  archivePrefix = {arXiv}
}""",
    "forgetting": """@inproceedings{toneva2019empirical,
  title         = {An Empirical Study of Example Forgetting during Deep Neural Network Learning},
  author        = {Toneva, Mariya and Sordoni, Alessandro and des Combes, Remi Tachet and Trischler, Adam and
                   Bengio, Yoshua and Gordon, Geoffrey J.},
  booktitle     = {International Conference on Learning Representations (ICLR)},
  year          = {2019},
  eprint        = {1812.05159},
  archivePrefix = {arXiv}
}""",
}
CITATIONS["unforgettable"] = CITATIONS["forgetting"]  # the other end of the same ranking


@dataclass
class CardContext:
    """What a card says beyond the schedule: where users load it from, its license, its results."""

    location: str  # what load_dataset / load_pdd take: the Hub repo id, or the local folder
    title: str | None = None
    license: str | None = None  # a Hub license id; None: not known (the card then names none)
    results: Sequence[ResultTable] = field(default_factory=list)


def is_distilled(schedule: Schedule) -> bool:
    """Whether the export was distilled by a registered base method (not selected real images)."""
    from pdd_hub.registry import METHODS

    return schedule.method in METHODS


def source_name(schedule: Schedule) -> str:
    """The source dataset as users know it: a Hub id as is, a local folder by its name."""
    source = str(schedule.source.get("dataset", "unknown"))
    path = Path(source).expanduser()
    return path.name if path.exists() or source.startswith((".", "/", "~")) else source


def default_title(schedule: Schedule) -> str:
    name = source_name(schedule).split("/")[-1]
    if is_distilled(schedule):
        return f"{name} distilled by PDD + {schedule.method.upper()}"
    return f"{name}: {schedule.method} real images"


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` value for ``rows`` examples."""
    return next((name for bound, name in SIZE_CATEGORIES if rows < bound), "n>10M")


def source_license(schedule: Schedule) -> str | None:
    """The license of the source dataset when it can be known without the network: a dataset pdd-hub
    knows, a local folder's card, or a Hub dataset's card in the local Hub cache; else ``None``."""
    source = str(schedule.source.get("dataset", ""))
    if source in KNOWN_SOURCE_LICENSES:
        return KNOWN_SOURCE_LICENSES[source]
    local = Path(source).expanduser()
    if local.is_dir():
        return card_license(local / "README.md")
    if source.count("/") == 1:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "README.md", repo_type="dataset")
        if isinstance(cached, str):
            return card_license(Path(cached))
    return None


def card_license(path: Path) -> str | None:
    """The ``license`` of the card at ``path``; ``None`` if there is none, or it says ``unknown``."""
    card = load_card(path)
    value = card.data.license if card is not None else None
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else None
    return None if value in NO_LICENSE else str(value)


def load_card(path: Path) -> DatasetCard | None:
    """The dataset card at ``path``, or ``None`` when there is none or it cannot be parsed."""
    from huggingface_hub import DatasetCard

    if not path.is_file():
        return None
    try:
        return DatasetCard.load(path, ignore_metadata_errors=True)
    except Exception as exc:  # a malformed card must not stop an export: it is rewritten anyway
        logger.warning("could not read the card %s: %s", path, exc)
        return None


def citations(schedule: Schedule) -> list[str]:
    """BibTeX of PDD and of the method that made the stages (when there is one to cite)."""
    own = CITATIONS.get(schedule.method)
    if own is None and is_distilled(schedule):  # a method from another package may carry its own
        from pdd_hub.registry import METHODS

        own = METHODS.get(schedule.method).cls.citation
    return [CITATIONS["pdd"], *([own] if own else [])]


def split_infos(schedule: Schedule, folder: Path) -> dict[str, tuple[int, int]]:
    """``{split: (rows, bytes)}`` of the export's parquet files (bytes: uncompressed, as ``datasets``)."""
    import pyarrow.parquet as pq

    from pdd_hub.hub import DATA_DIR

    infos = {}
    for spec in schedule.stages:
        rows = size = 0
        for file in sorted((folder / DATA_DIR).glob(f"{spec.split}-*.parquet")):
            meta = pq.read_metadata(file)
            rows += meta.num_rows
            size += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        infos[spec.split] = (rows, size)
    return infos


def card_data(schedule: Schedule, folder: Path, context: CardContext) -> DatasetCardData:
    """The card's YAML: every field the Hub reads for a dataset, plus a ``pdd:`` summary."""
    import datasets
    from huggingface_hub import DatasetCardData

    from pdd_hub.hub import DATA_DIR, stage_features

    splits = split_infos(schedule, folder)
    source = source_name(schedule)
    data = DatasetCardData(
        pretty_name=context.title or default_title(schedule),
        license=context.license,
        size_categories=[size_category(sum(s.ipc for s in schedule.stages) * schedule.num_classes)],
        source_datasets=[f"extended|{source}"],
        task_categories=["image-classification"],
        task_ids=["multi-class-image-classification"],
        annotations_creators=["machine-generated"],
        tags=tags(schedule),
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"{DATA_DIR}/{s}-*"} for s in schedule.split_names],
            }
        ],
        pdd=pdd_summary(schedule),
    )
    split_dict = datasets.SplitDict()
    for name, (rows, size) in splits.items():
        split_dict.add(datasets.SplitInfo(name=name, num_bytes=size, num_examples=rows))
    info = datasets.DatasetInfo(
        features=stage_features(schedule),
        splits=split_dict,
        dataset_size=sum(size for _, size in splits.values()),
    )
    datasets.info.DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    return data


def tags(schedule: Schedule) -> list[str]:
    made_by = ["progressive-dataset-distillation", schedule.method] if is_distilled(schedule) else []
    kind = ["synthetic"] if is_distilled(schedule) else ["data-selection", schedule.method]
    return list(dict.fromkeys(["dataset-distillation", *made_by, *kind, "pdd-hub", f"arxiv:{PDD_ARXIV}"]))


def pdd_summary(schedule: Schedule) -> dict[str, Any]:
    """The ``pdd:`` block of the card's YAML: the schedule at a glance (the source of truth is
    ``pdd_schedule.json``)."""
    return {
        "format_version": schedule.format_version,
        "method": schedule.method,
        "distill_model": schedule.distill_model,
        "num_stages": len(schedule.stages),
        "stages": [
            {"split": s.split, "ipc": s.ipc, "lr": s.recipe.lr, "epochs": s.recipe.epochs}
            for s in schedule.stages
        ],
        "source_dataset": str(schedule.source.get("dataset", "unknown")),
        "class_names": list(schedule.class_names),
        "image_shape": list(schedule.image_shape),
        "zca": bool(schedule.preprocess.get("zca")),
    }


def settings_yaml(schedule: Schedule) -> str:
    """The settings a reader of the card wants to see, as YAML (all of them: pdd_schedule.json)."""
    config = schedule.config
    shown = {k: config[k] for k in SHOWN_SETTINGS if k in config}
    for section in (schedule.method, "selection", "transition", "forgetting"):
        if isinstance(config.get(section), dict):
            shown[section] = config[section]
    return yaml.safe_dump(shown, sort_keys=False).strip() if shown else ""


def build_card(schedule: Schedule, folder: Path, context: CardContext) -> DatasetCard:
    """The card of the export in ``folder`` (its data files already written)."""
    from importlib.resources import files

    from huggingface_hub import DatasetCard

    from pdd_hub.evidence import measured_gain
    from pdd_hub.hub import GRID_DIR

    template = files("pdd_hub.model_cards").joinpath(CARD_TEMPLATE).read_text()
    return DatasetCard.from_template(
        card_data(schedule, folder, context),
        template_str=template,
        title=context.title or default_title(schedule),
        # as pdd_schedule.json holds it: the template names each stage's fields as the format does
        schedule=schedule.to_dict(),
        distilled=is_distilled(schedule),
        location=context.location,
        source=str(schedule.source.get("dataset", "unknown")),
        total_ipc=sum(s.ipc for s in schedule.stages),
        settings=settings_yaml(schedule),
        results=context.results,
        citations=citations(schedule),
        arxiv=PDD_ARXIV,
        grid_dir=GRID_DIR,
        measured_gain=measured_gain(schedule.method) if is_distilled(schedule) else None,
    )


def render_card(
    schedule: Schedule,
    path: Path,
    *,
    title: str | None = None,
    location: str | None = None,
    license: str | None = None,
) -> None:
    """Write the card of the export whose folder holds ``path`` (README.md). ``location`` is what its
    loading examples name (default: that folder); the license defaults to the source's, if known."""
    folder = Path(path).parent
    context = CardContext(
        location=location or str(folder),
        title=title,
        license=license or source_license(schedule),
    )
    Path(path).write_text(str(build_card(schedule, folder, context)))
