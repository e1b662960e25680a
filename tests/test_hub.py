"""The export format: bit-exact round trips, split order, atomicity, validation, push and pull."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pdd_hub.cli import main
from pdd_hub.data import Preprocess
from pdd_hub.errors import ExportFormatError, ExportNotFoundError, HubPushError
from pdd_hub.hub import (
    EXPORT_PATTERNS,
    SCHEDULE_FILE,
    Schedule,
    StageSpec,
    export_pdd,
    load_pdd,
    push_to_hub,
    recover_interrupted_export,
    stage_split_name,
)
from pdd_hub.publish import PushOptions
from pdd_hub.schedule import SGDRecipe
from tests.fake_hub import ENDPOINT, TOKEN
from tests.fake_hub import fake_hub as fake_hub_fixture
from tests.helpers import random_stages

fake_hub = fake_hub_fixture
MIT = PushOptions(license="mit")  # the toy exports' source names no license
SHAPE = (3, 8, 8)
CLASSES = ["cat", "dog", "eel"]


def make_export(folder: Path, num_stages: int = 3, ipc: int = 2, seed: int = 0, zca: bool = True):
    g = torch.Generator().manual_seed(seed)
    real = (torch.rand(60, *SHAPE, generator=g) * 255).to(torch.uint8)
    pre = Preprocess.fit(real, zca=zca, normalize=not zca)
    stages = random_stages(num_stages, ipc, len(CLASSES), SHAPE, seed=seed)
    specs = [
        StageSpec(split=stage_split_name(k), ipc=ipc, recipe=SGDRecipe(lr=0.01 * k + seed, epochs=7 + k))
        for k in range(1, num_stages + 1)
    ]
    schedule = Schedule(
        stages=specs,
        class_names=CLASSES,
        image_shape=SHAPE,
        preprocess=pre.to_config(),
        method="mtt",
        distill_model="convnet_d3",
        source={"dataset": "toy", "fingerprint": "abc"},
        training={"augment": "dsa:color_crop_cutout_flip_scale_rotate", "mode": "progressive"},
        config={"seed": seed, "nested": {"lr_img": 1000}},
    )
    export_pdd(folder, schedule, stages, pre)
    return schedule, stages, pre


def test_round_trip_is_bit_exact(tmp_path):
    schedule, stages, pre = make_export(tmp_path / "export")
    pdd = load_pdd(tmp_path / "export")
    assert pdd.schedule.split_names == ["stage_1", "stage_2", "stage_3"]
    for loaded, (images, labels) in zip(pdd.stages, stages):
        assert loaded.images.dtype == torch.float32
        assert torch.equal(loaded.images, images) and torch.equal(loaded.labels, labels)
    assert [s.recipe for s in pdd.schedule.stages] == [s.recipe for s in schedule.stages]
    assert pdd.schedule.config == schedule.config and pdd.schedule.class_names == CLASSES
    x = (torch.rand(4, *SHAPE) * 255).to(torch.uint8)
    assert torch.equal(pdd.preprocess(x), pre(x))


def test_plain_datasets_reads_the_export_without_pdd_hub(tmp_path):
    _, stages, _ = make_export(tmp_path / "export", num_stages=11, ipc=1)
    script = f"""
import sys, datasets, numpy as np
ds = datasets.load_dataset({str(tmp_path / "export")!r})
assert "pdd_hub" not in sys.modules
print(list(ds.keys()))
print(ds["stage_1"].features["image"], ds["stage_1"].features["label"].names)
np.save({str(tmp_path / "s10.npy")!r}, np.asarray(ds["stage_10"].with_format("numpy")["image"]))
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    lines = out.stdout.strip().splitlines()
    assert lines[0] == str([f"stage_{k}" for k in range(1, 12)])  # stage order, not string order
    assert "Array3D(shape=(3, 8, 8), dtype='float32')" in lines[1] and "['cat', 'dog', 'eel']" in lines[1]
    import numpy as np

    assert np.array_equal(np.load(tmp_path / "s10.npy"), stages[9][0].numpy())


def test_export_layout_and_card(tmp_path):
    make_export(tmp_path / "export")
    folder = tmp_path / "export"
    assert (folder / "preprocess.safetensors").exists()
    assert sorted(p.name for p in (folder / "images").iterdir()) == [
        "stage_1.png",
        "stage_2.png",
        "stage_3.png",
    ]
    schedule = json.loads((folder / SCHEDULE_FILE).read_text())
    assert schedule["format_version"] == 1 and schedule["stages"][1]["split"] == "stage_2"
    assert schedule["stages"][0]["momentum"] == 0.9 and schedule["stages"][0]["weight_decay"] == 5e-4
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(folder / "README.md")
    splits = [f["split"] for f in card.data.configs[0]["data_files"]]
    assert splits == ["stage_1", "stage_2", "stage_3"]
    assert card.data.pdd["num_stages"] == 3 and card.data.pdd["zca"] is True
    assert "images/stage_2.png" in card.text
    import datasets

    preview = datasets.load_dataset(str(folder))["stage_1"][0]["preview"]
    assert preview.size == (8, 8)


def test_interrupted_export_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    folder = tmp_path / "export"
    _, first_stages, _ = make_export(folder, seed=0)
    import pdd_hub.hub as hub

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the card")

    monkeypatch.setattr(hub, "render_card", crash)
    with pytest.raises(KeyboardInterrupt):
        make_export(folder, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary debris
    pdd = load_pdd(folder)
    assert torch.equal(pdd.stages[0].images, first_stages[0][0])


def test_crash_between_the_renames_is_recovered(tmp_path):
    folder = tmp_path / "export"
    _, stages, _ = make_export(folder)
    os.rename(folder, tmp_path / ".export.old-deadbeef")  # as if killed right after the first rename
    # a reader must not touch it (a writer may be between its renames): it says what it sees
    with pytest.raises(ExportNotFoundError, match=r"\.export\.old-deadbeef .* holds the previous export"):
        load_pdd(folder)
    assert recover_interrupted_export(folder)
    assert torch.equal(load_pdd(folder).stages[2].images, stages[2][0])
    os.rename(folder, tmp_path / ".export.old-deadbeef")
    _, new_stages, _ = make_export(folder, seed=3)  # the next export recovers, then replaces
    assert torch.equal(load_pdd(folder).stages[1].images, new_stages[1][0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_export_rejects_inconsistent_input(tmp_path):
    schedule, stages, pre = make_export(tmp_path / "ok")
    with pytest.raises(ExportFormatError, match="3 stages but 2 image sets"):
        export_pdd(tmp_path / "bad", schedule, stages[:2], pre)
    broken = [(stages[0][0][:5], stages[0][1][:5]), *stages[1:]]
    with pytest.raises(ExportFormatError, match="stage_1.*ipc 2 x 3 classes = 6"):
        export_pdd(tmp_path / "bad", schedule, broken, pre)
    nan = [(stages[0][0].clone().fill_(float("nan")), stages[0][1]), *stages[1:]]
    with pytest.raises(ExportFormatError, match="NaN"):
        export_pdd(tmp_path / "bad", schedule, nan, pre)
    assert not (tmp_path / "bad").exists()


# --- validation on load -----------------------------------------------------------------------
def _edit_schedule(folder: Path, edit) -> None:
    path = folder / SCHEDULE_FILE
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_missing_split_file(tmp_path):
    make_export(tmp_path / "e")
    (tmp_path / "e" / "data" / "stage_2-00000-of-00001.parquet").unlink()
    with pytest.raises(ExportFormatError, match="incomplete: split 'stage_2'"):
        load_pdd(tmp_path / "e")


def test_schedule_that_does_not_match_the_splits(tmp_path):
    make_export(tmp_path / "e")
    _edit_schedule(tmp_path / "e", lambda d: d["stages"].pop())
    with pytest.raises(ExportFormatError, match=r"splits \['stage_1', 'stage_2', 'stage_3'\] do not match"):
        load_pdd(tmp_path / "e")


def test_unknown_format_version(tmp_path):
    make_export(tmp_path / "e")
    _edit_schedule(tmp_path / "e", lambda d: d.update(format_version=2))
    with pytest.raises(ExportFormatError, match="format_version 2.*reads format_version 1"):
        load_pdd(tmp_path / "e")


def test_wrong_shapes(tmp_path):
    make_export(tmp_path / "e")
    _edit_schedule(tmp_path / "e", lambda d: d.update(image_shape=[3, 16, 16]))
    with pytest.raises(ExportFormatError, match=r"stage_1.*shape \(3, 8, 8\).*\[3, 16, 16\]"):
        load_pdd(tmp_path / "e")


def test_wrong_ipc(tmp_path):
    make_export(tmp_path / "e")
    _edit_schedule(tmp_path / "e", lambda d: d["stages"][0].update(ipc=3))
    with pytest.raises(ExportFormatError, match="stage_1' has 6 rows, but ipc 3"):
        load_pdd(tmp_path / "e")


def test_incomplete_folder_and_missing_files(tmp_path):
    make_export(tmp_path / "e")
    (tmp_path / "e" / "preprocess.safetensors").unlink()
    with pytest.raises(ExportFormatError, match="preprocess.safetensors is missing"):
        load_pdd(tmp_path / "e")
    (tmp_path / "e" / SCHEDULE_FILE).unlink()
    with pytest.raises(ExportFormatError, match="no pdd_schedule.json"):
        load_pdd(tmp_path / "e")
    with pytest.raises(ExportNotFoundError, match="no export folder"):
        load_pdd(tmp_path / "nothing-here")


# --- Hub: push and pull through the huggingface_hub calls pdd-hub makes (tests/fake_hub.py) ----------
PUSHED = [
    "README.md",
    *(f"data/stage_{k}-00000-of-00001.parquet" for k in (1, 2, 3)),
    *(f"images/stage_{k}.png" for k in (1, 2, 3)),
    SCHEDULE_FILE,
    "preprocess.safetensors",
]


def test_push_then_load_from_repo_id(tmp_path, fake_hub):
    _, stages, _ = make_export(tmp_path / "e")
    url = push_to_hub(tmp_path / "e", "org/toy-pdd", endpoint=ENDPOINT, token=TOKEN, options=MIT)
    first = fake_hub.refs["org/toy-pdd"]["main"].oid
    assert url == f"{ENDPOINT}/datasets/org/toy-pdd/commit/{first}"
    assert sorted(fake_hub.files("org/toy-pdd")) == PUSHED
    # the token is checked before anything is created; one commit, on main, old splits replaced
    order = ["whoami", "repo_exists", "create_repo", "upload_folder"]
    assert [n for n in fake_hub.names() if n in order] == order
    assert (fake_hub.last("create_repo")["private"], fake_hub.last("create_repo")["exist_ok"]) == (None, True)
    upload = fake_hub.last("upload_folder")
    assert upload["commit_message"] == "pdd-hub export: 3 stages (mtt)" and upload["revision"] is None
    assert upload["delete_patterns"] == ["data/*", "images/*"] and not upload["create_pr"]
    assert fake_hub.apis == [{"endpoint": ENDPOINT, "token": TOKEN}]
    assert {c.token for c in fake_hub.calls} == {TOKEN}
    pdd = load_pdd("org/toy-pdd", endpoint=ENDPOINT, token=TOKEN)
    assert fake_hub.last("snapshot_download")["allow_patterns"] == list(EXPORT_PATTERNS)
    assert fake_hub.last("snapshot_download")["endpoint"] == ENDPOINT
    for loaded, (images, labels) in zip(pdd.stages, stages):
        assert torch.equal(loaded.images, images) and torch.equal(loaded.labels, labels)
    # a second push with fewer stages removes the stale split
    make_export(tmp_path / "e2", num_stages=2, seed=1)
    push_to_hub(tmp_path / "e2", "org/toy-pdd", endpoint=ENDPOINT, token=TOKEN, options=MIT)
    assert "data/stage_3-00000-of-00001.parquet" not in fake_hub.files("org/toy-pdd")
    assert load_pdd("org/toy-pdd", endpoint=ENDPOINT, token=TOKEN).num_stages == 2
    # the first push is still reachable by revision
    assert load_pdd("org/toy-pdd", revision=first, endpoint=ENDPOINT, token=TOKEN).num_stages == 3


def test_push_refuses_a_broken_export_and_reports_auth_errors(tmp_path, fake_hub):
    make_export(tmp_path / "e")
    (tmp_path / "e" / SCHEDULE_FILE).unlink()
    with pytest.raises(ExportFormatError):
        push_to_hub(tmp_path / "e", "org/x", endpoint=ENDPOINT, token=TOKEN)
    assert not fake_hub.apis and not fake_hub.calls
    make_export(tmp_path / "ok")
    fake_hub.valid_tokens = {"hf_good"}
    with pytest.raises(HubPushError, match="org/x") as info:
        push_to_hub(tmp_path / "ok", "org/x", endpoint=ENDPOINT, token="hf_bad", options=MIT)
    assert "hf_bad" not in str(info.value)
    with pytest.raises(HubPushError, match="no Hub token: log in"):  # no token given, no HF_TOKEN
        push_to_hub(tmp_path / "ok", "org/x", endpoint=ENDPOINT, options=MIT)
    assert fake_hub.names() == ["whoami", "whoami"]


def test_cli_push_takes_the_token_from_the_environment(tmp_path, fake_hub, monkeypatch, capsys, caplog):
    make_export(tmp_path / "e")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    assert main(["push", str(tmp_path / "e"), "org/cli-pdd", "--license", "mit"]) == 0
    # pdd-hub passes no token: huggingface_hub's own lookup finds HF_TOKEN for every call
    assert fake_hub.apis == [{}]
    assert {c.token for c in fake_hub.calls} == {"hf_secret_token"}
    out = capsys.readouterr()
    assert "pushed" in out.out and "hf_secret_token" not in out.out + out.err + caplog.text
    assert all(b"hf_secret_token" not in content for content in fake_hub.files("org/cli-pdd").values())


def test_unknown_repo_is_a_clear_error(tmp_path, fake_hub):
    with pytest.raises(ExportNotFoundError, match="org/missing"):
        load_pdd("org/missing", endpoint=ENDPOINT, token=TOKEN)


def test_re_export_and_same_named_folders_are_never_read_stale(tmp_path):
    # datasets caches a local folder with README `configs:` under its name alone; load_pdd must not
    _, first, _ = make_export(tmp_path / "a" / "dataset", seed=0)
    _, other, _ = make_export(tmp_path / "b" / "dataset", seed=1)
    assert torch.equal(load_pdd(tmp_path / "a" / "dataset").stages[0].images, first[0][0])
    assert torch.equal(load_pdd(tmp_path / "b" / "dataset").stages[0].images, other[0][0])
    _, rewritten, _ = make_export(tmp_path / "a" / "dataset", seed=2)
    assert torch.equal(load_pdd(tmp_path / "a" / "dataset").stages[0].images, rewritten[0][0])


def test_tampered_split_fails_its_checksum(tmp_path):
    import datasets

    make_export(tmp_path / "e")
    path = tmp_path / "e" / "data" / "stage_2-00000-of-00001.parquet"
    ds = datasets.Dataset.from_parquet(str(path))
    ds = ds.map(lambda row: {"image": [[[v + 1.0 for v in r] for r in c] for c in row["image"]]})
    ds.to_parquet(str(path))
    with pytest.raises(ExportFormatError, match="stage_2' does not match its sha256"):
        load_pdd(tmp_path / "e")


@pytest.mark.parametrize(
    "content,message",
    [
        ("[1, 2]", "must hold a JSON object"),
        (
            '{"format_version": 1, "stages": [3], "class_names": [], "image_shape": [1], "preprocess": {}}',
            "malformed",
        ),
        ("{not json", "not valid JSON"),
    ],
)
def test_malformed_schedule_is_a_clear_error(tmp_path, content, message):
    make_export(tmp_path / "e")
    (tmp_path / "e" / SCHEDULE_FILE).write_text(content)
    with pytest.raises(ExportFormatError, match=message):
        load_pdd(tmp_path / "e")
