"""What a new user notices: fixed normalisation constants for select, the dataset in plot titles,
class names on the stage grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pdd_hub.cli import main
from pdd_hub.evaluate import EvalReport
from pdd_hub.hub import load_pdd
from pdd_hub.viz import image_grid, to_uint8_pictures
from tests.test_hub import make_export

SELECT = ["select", "--real", "sklearn:digits", "--num-stages", "1", "--ipc", "1", "--val-per-class", "5"]


def test_select_takes_fixed_normalisation_constants(tmp_path, capsys):
    assert main([*SELECT, "--output", str(tmp_path / "a"), "--mean", "0.5", "--std", "0.25"]) == 0
    assert load_pdd(tmp_path / "a").schedule.preprocess["normalize"] == {"mean": [0.5], "std": [0.25]}
    assert main([*SELECT, "--output", str(tmp_path / "b"), "--normalization", "mnist"]) == 0
    normalize = load_pdd(tmp_path / "b").schedule.preprocess["normalize"]
    assert normalize["mean"] == pytest.approx([0.1307]) and normalize["std"] == pytest.approx([0.3081])
    capsys.readouterr()
    assert main([*SELECT, "--output", str(tmp_path / "c"), "--mean", "0.5"]) == 2
    assert "give both --mean and --std" in capsys.readouterr().err
    assert main([*SELECT, "--output", str(tmp_path / "c"), "--normalization", "cifar10"]) == 2
    assert "3/3 entries but the images have 1 channels" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_plot_titles_name_the_dataset_and_method():
    report = EvalReport(
        export="runs/x/dataset", real="sklearn:digits", mode="progressive", phases=[], epochs=[]
    )
    assert report.title() == "dataset (progressive)"  # a report of an older export names its folder
    report.dataset, report.method = "../shared/datasets/cifar10", "mtt"
    assert report.title() == "cifar10: PDD + MTT (progressive)"
    report.dataset, report.method = "uoft-cs/cifar10", "herding"
    assert report.title() == "cifar10: herding (progressive)"


def test_stage_grids_name_each_row_with_its_class(tmp_path):
    pictures = to_uint8_pictures(torch.rand(6, 3, 8, 8))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    plain = image_grid(pictures, labels, 3)
    named = np.asarray(image_grid(pictures, labels, 3, class_names=["airplane", "automobile", "cat"]))
    margin = named.shape[1] - plain.width
    assert margin > 30 and named.shape[0] == plain.height
    assert np.array_equal(named[:, margin:], np.asarray(plain))  # the images, unchanged, right of the names
    rows = np.array_split(named[:, :margin].min(axis=2), 3)
    assert all((row < 128).any() for row in rows)  # dark text in every row's margin
    make_export(tmp_path / "e")  # exports draw their grids with the class names
    with Image.open(tmp_path / "e" / "images" / "stage_1.png") as grid:
        assert grid.width > plain.width


def test_tracker_takes_every_tracker_accelerate_supports():
    import accelerate.utils

    from pdd_hub.config import config_from_dict
    from pdd_hub.errors import ConfigError
    from pdd_hub.tracking import TRACKERS

    assert {"tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "aim"} <= set(TRACKERS)
    for name in TRACKERS:
        if getattr(accelerate.utils, f"is_{name}_available")():
            assert config_from_dict({"tracker": name}).tracker == name
        else:
            with pytest.raises(ConfigError, match=f"'tracker' is '{name}' but {name} is not installed"):
                config_from_dict({"tracker": name})
    with pytest.raises(ConfigError, match="'tracker' must be one of .*'trackio'"):
        config_from_dict({"tracker": "tensorbored"})
