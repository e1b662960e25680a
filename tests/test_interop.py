"""import-pt / export-pt: exports to the reference implementations' .pt files and back, bit for bit,
and files written the way MTT, ProgressiveDD and DD-Ranking write them read into exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdd_hub.cli import main
from pdd_hub.data import Preprocess, load_real_data
from pdd_hub.errors import ConfigError, ExportFormatError
from pdd_hub.evaluate import EvalOptions, evaluate_export
from pdd_hub.hub import load_pdd
from pdd_hub.interop import ImportSettings, ReferenceNormalization, export_pt, import_pt
from pdd_hub.runtime import PLAIN
from tests.test_hub import make_export


@pytest.mark.parametrize("layout,names", [("progressivedd", ("images_best", "labels_best", "syn_lr_best"))])
def test_export_pt_writes_the_union_of_stages_1_to_k(tmp_path, layout, names):
    make_export(tmp_path / "e")
    pdd = load_pdd(tmp_path / "e")
    export_pt(tmp_path / "e", tmp_path / "pt", layout=layout)
    for k in (1, 2, 3):
        images, labels = pdd.union(k)
        folder = tmp_path / "pt" / f"stage_{k}"
        assert torch.equal(torch.load(folder / f"{names[0]}.pt", weights_only=True), images)
        assert torch.equal(torch.load(folder / f"{names[1]}.pt", weights_only=True), labels)
        lr = torch.load(folder / f"{names[2]}.pt", weights_only=True).item()
        assert lr == pdd.schedule.stages[k - 1].recipe.lr


@pytest.mark.parametrize("layout", ["progressivedd", "ddranking"])
def test_export_pt_then_import_pt_round_trips_bit_exactly(tmp_path, layout):
    make_export(tmp_path / "e")  # ZCA, three stages, LRs 0.01 / 0.02 / 0.03
    export_pt(tmp_path / "e", tmp_path / "pt", layout=layout)
    import_pt(tmp_path / "pt", tmp_path / "back")
    before, after = load_pdd(tmp_path / "e"), load_pdd(tmp_path / "back")
    for a, b in zip(before.stages, after.stages, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert a.spec == b.spec  # LR, epochs, recipe and checksum included
    assert after.schedule.to_dict() == before.schedule.to_dict()
    assert torch.equal(after.preprocess.zca.whiten, before.preprocess.zca.whiten)


def reference_stage(ipc: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """New images (still requiring grad, as saved from image_syn) and class-major labels, built the
    way MTT's distill.py builds label_syn."""
    labels = torch.tensor(np.array([np.ones(ipc) * i for i in range(10)]), dtype=torch.long).view(-1)
    images = torch.randn(10 * ipc, 1, 8, 8, generator=generator).requires_grad_(True)
    return images, labels


def test_files_written_as_progressivedd_writes_them_import_and_evaluate(tmp_path):
    g = torch.Generator().manual_seed(0)
    src = tmp_path / "logged_files" / "digits" / "experiment"
    union, union_labels, news, lrs = torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.long), [], []
    for k, (ipc, lr) in enumerate([(1, 0.011), (2, 0.007)], start=1):
        new, labels = reference_stage(ipc, g)
        union, union_labels = torch.cat([union, new]), torch.cat([union_labels, labels])  # frozen first
        folder = src / f"interval{k}_epoch{20 * (k - 1) + 1}-{20 * k}"
        folder.mkdir(parents=True)
        torch.save(union * 1, folder / "images_best.pt")  # still attached to the graph, as saved there
        torch.save(union_labels.clone(), folder / "labels_best.pt")
        torch.save(torch.tensor(lr).clone().detach(), folder / "syn_lr_best.pt")  # float32, 0-dim
        news.append((new.detach(), labels))
        lrs.append(float(torch.tensor(lr)))
    import_pt(src, tmp_path / "export", real="sklearn:digits", normalization=ReferenceNormalization(zca=True))
    pdd = load_pdd(tmp_path / "export")
    assert [s.ipc for s in pdd.schedule.stages] == [1, 2]
    assert [s.recipe.lr for s in pdd.schedule.stages] == lrs
    for stage, (images, labels) in zip(pdd.stages, news, strict=True):
        assert torch.equal(stage.images, images) and torch.equal(stage.labels, labels)
    real = load_real_data("sklearn:digits", val_per_class=1)
    reference = Preprocess.fit(torch.cat([real.train.images, real.val.images]), normalize=False, zca=True)
    assert torch.equal(pdd.preprocess.zca.whiten, reference.zca.whiten)
    assert pdd.schedule.method == "mtt" and pdd.schedule.config["imported_from"]["stages"][1].startswith(
        "interval2"
    )
    report = evaluate_export(
        pdd, real.test, ["convnet_d1"], [0], EvalOptions(epochs_per_stage=1), runtime=PLAIN
    )
    assert len(report.accuracies["convnet_d1"][0]) == 2  # pdd-hub eval trains on it, stage by stage


def test_mtt_and_dd_ranking_folders(tmp_path):
    g = torch.Generator().manual_seed(1)
    mtt = tmp_path / "mtt_run"
    mtt.mkdir()
    images, labels = reference_stage(2, g)
    torch.save(images.detach(), mtt / "images_best.pt")
    torch.save(labels, mtt / "labels_best.pt")
    pre = ReferenceNormalization(mean=[0.1307], std=[0.3081])
    with pytest.raises(ConfigError, match="holds no learned LR .* --lr"):
        import_pt(mtt, tmp_path / "a", real="sklearn:digits", normalization=pre)
    import_pt(mtt, tmp_path / "a", real="sklearn:digits", normalization=pre, settings=ImportSettings(lr=0.02))
    one = load_pdd(tmp_path / "a")
    assert one.num_stages == 1 and one.schedule.stages[0].recipe.lr == 0.02
    assert one.schedule.preprocess["normalize"]["mean"] == pytest.approx([0.1307])
    ranking = tmp_path / "ddranking"
    for k in (1, 2):  # DD-Ranking names, one stage per folder, each stage alone
        (ranking / f"stage_{k}").mkdir(parents=True)
        images, labels = reference_stage(1, g)
        torch.save(images.detach(), ranking / f"stage_{k}" / "images.pt")
        torch.save(labels, ranking / f"stage_{k}" / "labels.pt")
        torch.save(torch.tensor(0.01 * k), ranking / f"stage_{k}" / "lr.pt")
    import_pt(ranking, tmp_path / "b", real="sklearn:digits", normalization=pre)
    two = load_pdd(tmp_path / "b")
    assert [s.ipc for s in two.schedule.stages] == [1, 1]
    assert torch.equal(two.stages[1].images, torch.load(ranking / "stage_2" / "images.pt", weights_only=True))


def test_what_import_pt_refuses(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    torch.save(torch.randn(10, 1, 8, 8), src / "images.pt")
    torch.save(torch.softmax(torch.randn(10, 10), 1), src / "labels.pt")  # soft labels
    pre = ReferenceNormalization(zca=True)
    with pytest.raises(ExportFormatError, match="hard labels .* not soft labels"):
        import_pt(src, tmp_path / "x", real="sklearn:digits", normalization=pre)
    torch.save({"not": "a tensor"}, src / "labels.pt")
    with pytest.raises(ExportFormatError, match="labels.pt holds a dict, not a tensor"):
        import_pt(src, tmp_path / "x", real="sklearn:digits", normalization=pre)
    torch.save(torch.arange(10), src / "labels.pt")
    with pytest.raises(ConfigError, match="say how the reference code preprocessed"):
        import_pt(src, tmp_path / "x", real="sklearn:digits", settings=ImportSettings(lr=0.01))
    (src / "labels.pt").unlink()
    with pytest.raises(ExportFormatError, match="holds none of the layouts"):
        import_pt(src, tmp_path / "x", real="sklearn:digits", normalization=pre)
    assert not (tmp_path / "x").exists()


def test_cli_export_pt_and_import_pt(tmp_path, capsys):
    make_export(tmp_path / "e", zca=False)
    assert main(["export-pt", str(tmp_path / "e"), str(tmp_path / "pt"), "--layout", "ddranking"]) == 0
    assert (tmp_path / "pt" / "stage_3" / "lr.pt").exists()
    assert main(["import-pt", str(tmp_path / "pt"), str(tmp_path / "back")]) == 0
    assert torch.equal(
        load_pdd(tmp_path / "back").stages[2].images, load_pdd(tmp_path / "e").stages[2].images
    )
    assert main(["import-pt", str(tmp_path / "e"), str(tmp_path / "y"), "--real", "sklearn:digits"]) == 2
    assert "holds none of the layouts" in capsys.readouterr().err
