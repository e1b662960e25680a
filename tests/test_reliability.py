"""Hostile and broken inputs (issue 20): each test reproduces one failure of a plain implementation
and checks the promise docs/RELIABILITY.md makes instead. Numbers in schedules and configs are in
test_validate.py."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from pdd_hub.cli import main
from pdd_hub.errors import (
    ConfigError,
    CorruptStateError,
    DatasetFormatError,
    ExportFormatError,
    ExportNotFoundError,
    HubPushError,
    OutputError,
)
from pdd_hub.hub import (
    SCHEDULE_FILE,
    export_files,
    export_pdd,
    load_pdd,
    push_to_hub,
    recover_interrupted_export,
)
from pdd_hub.outputs import acquire_output_lock, release_output_lock
from tests.fake_hub import ENDPOINT, TOKEN, FakeApi
from tests.fake_hub import fake_hub as fake_hub_fixture
from tests.helpers import SUBPROCESS_ENV, child_cpu_seconds, write_image_folder
from tests.test_hub import MIT, make_export

fake_hub = fake_hub_fixture
EXPORT_FILES = [
    "README.md",
    "data/stage_1-00000-of-00001.parquet",
    "data/stage_2-00000-of-00001.parquet",
    "images/stage_1.png",
    "images/stage_2.png",
    "pdd_schedule.json",
    "preprocess.safetensors",
]


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pdd_hub.cli", *args],
        capture_output=True,
        text=True,
        env=env or SUBPROCESS_ENV,
        timeout=timeout,
    )


def assert_one_clear_line(out: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, no traceback, the last line of stderr is the message and names ``fragments``."""
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "error: " in last and all(f in last for f in fragments), last


@pytest.fixture
def hostile(tmp_path):
    """An export with junk beside its files: a .env, notes, a link to a secret outside, a linked folder."""
    folder = tmp_path / "export"
    make_export(folder, num_stages=2)
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text("PRIVATE KEY")
    (folder / ".env").write_text("HF_TOKEN=hf_leaked")
    (folder / "notes.txt").write_text("todo")
    (folder / "id_rsa").symlink_to(secret)
    (folder / "ssh").symlink_to(secret.parent)
    return folder, secret


# --- 1. push and download allowlists ----------------------------------------------------------------
def test_push_uploads_exactly_the_export_files(hostile, fake_hub):
    folder, _ = hostile
    assert export_files(folder) == (EXPORT_FILES, [".env", "id_rsa (link)", "notes.txt", "ssh (link)"])
    push_to_hub(folder, "org/clean", endpoint=ENDPOINT, token=TOKEN, options=MIT)
    files = fake_hub.files("org/clean")
    assert sorted(files) == EXPORT_FILES
    assert all(b"PRIVATE KEY" not in c and b"hf_leaked" not in c for c in files.values())


def test_push_dry_run_lists_the_upload_and_what_stays_local(hostile, capsys):
    folder, _ = hostile
    assert (
        main(["push", str(folder), "org/x", "--dry-run", "--license", "mit"]) == 0
    )  # offline: no network, no token
    out = capsys.readouterr().out
    assert all(f"  {name}\n" in out for name in EXPORT_FILES) and "would upload 7 files" in out
    assert "not uploaded (not part of the export format): .env, id_rsa (link), notes.txt, ssh (link)" in out


def test_push_refuses_an_export_file_that_is_a_link(hostile, fake_hub):
    folder, secret = hostile
    (folder / "images" / "stage_1.png").unlink()
    (folder / "images" / "stage_1.png").symlink_to(secret)
    with pytest.raises(ExportFormatError, match=r"images/stage_1.png is a link"):
        push_to_hub(folder, "org/x", endpoint=ENDPOINT, token=TOKEN, options=MIT)
    assert not fake_hub.calls


def test_download_fetches_only_the_export_files(tmp_path, fake_hub):
    make_export(tmp_path / "e", num_stages=2)
    push_to_hub(tmp_path / "e", "org/junk", endpoint=ENDPOINT, token=TOKEN, options=MIT)
    junk = {name: b"junk" for name in ("setup.py", "notes/big.bin", ".env", "data/readme.txt")}
    fake_hub.commit("org/junk", "main", "junk", {**fake_hub.files("org/junk"), **junk})
    pdd = load_pdd("org/junk", endpoint=ENDPOINT, token=TOKEN)
    downloaded = sorted(p.relative_to(pdd.path).as_posix() for p in pdd.path.rglob("*") if p.is_file())
    assert downloaded == EXPORT_FILES


# --- 9. a failed push names its cause and leaves no empty repo ------------------------------------------
def test_failed_first_upload_leaves_no_repo_and_names_the_cause(tmp_path, fake_hub, monkeypatch):
    make_export(tmp_path / "e", num_stages=2)

    def dropped(*args, **kwargs):
        raise ConnectionError("connection reset by peer")

    upload = FakeApi.on_upload_folder
    monkeypatch.setattr(FakeApi, "on_upload_folder", dropped)
    with pytest.raises(HubPushError, match="could not be reached .*connection reset.*deleted again"):
        push_to_hub(tmp_path / "e", "org/new", endpoint=ENDPOINT, token=TOKEN, options=MIT)
    assert "org/new" not in fake_hub.refs and fake_hub.last("delete_repo")["repo_id"] == "org/new"
    # a repo that was there before the push is never deleted
    monkeypatch.setattr(FakeApi, "on_upload_folder", upload)
    push_to_hub(tmp_path / "e", "org/new", endpoint=ENDPOINT, token=TOKEN, options=MIT)
    monkeypatch.setattr(FakeApi, "on_upload_folder", dropped)
    with pytest.raises(HubPushError, match="connection reset by peer") as info:
        push_to_hub(tmp_path / "e", "org/new", endpoint=ENDPOINT, token=TOKEN, options=MIT)
    assert "deleted" not in str(info.value) and "org/new" in fake_hub.refs
    assert fake_hub.names().count("delete_repo") == 1


def test_a_refused_token_is_named_before_any_repo_is_created(tmp_path, fake_hub):
    make_export(tmp_path / "e", num_stages=2)
    fake_hub.valid_tokens = {"hf_good"}
    with pytest.raises(HubPushError, match="refused the token") as info:
        push_to_hub(tmp_path / "e", "org/new", endpoint=ENDPOINT, token="hf_bad", options=MIT)
    assert "write access" not in str(info.value) and "hf_bad" not in str(info.value)
    assert not fake_hub.refs and fake_hub.names() == ["whoami"]  # no create_repo, nor any other write


# --- 2. every path read from an export stays inside it ---------------------------------------------
def _outside_export(tmp_path: Path) -> Path:
    make_export(tmp_path / "other", num_stages=2, seed=5)
    return tmp_path / "other"


def _set_zca_file(folder: Path, value: str) -> None:
    data = json.loads((folder / SCHEDULE_FILE).read_text())
    data["preprocess"]["zca"]["file"] = value
    (folder / SCHEDULE_FILE).write_text(json.dumps(data))


def _relink(path: Path, target: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(target)


HOSTILE_EDITS = {
    "absolute ZCA path": (
        lambda f, o: _set_zca_file(f, str(o / "preprocess.safetensors")),
        "preprocess.zca.file' must stay inside",
    ),
    "ZCA path with ..": (
        lambda f, o: _set_zca_file(f, "../other/preprocess.safetensors"),
        "preprocess.zca.file' must stay inside",
    ),
    "ZCA file linked outside": (
        lambda f, o: _relink(f / "preprocess.safetensors", o / "preprocess.safetensors"),
        "preprocess.zca.file' 'preprocess.safetensors' leads outside",
    ),
    "data file linked outside": (
        lambda f, o: _relink(
            f / "data" / "stage_1-00000-of-00001.parquet", o / "data" / "stage_1-00000-of-00001.parquet"
        ),
        "data file of split 'stage_1'",
    ),
    "data folder linked outside": (
        lambda f, o: _relink(f / "data", o / "data"),
        "leads outside",
    ),
    "schedule linked outside": (
        lambda f, o: _relink(f / SCHEDULE_FILE, o / SCHEDULE_FILE),
        "the schedule pdd_schedule.json 'pdd_schedule.json' leads outside",
    ),
    "card pointing outside": (
        lambda f, o: (f / "README.md").write_text(
            (f / "README.md").read_text().replace("path: data/stage_1-*", "path: ../other/data/stage_1-*")
        ),
        "field 'configs[0].data_files[0].path' must be 'data/stage_1-*'",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE_EDITS))
def test_hostile_export_paths_are_refused_naming_the_field(tmp_path, name):
    edit, message = HOSTILE_EDITS[name]
    make_export(tmp_path / "e", num_stages=2)
    edit(tmp_path / "e", _outside_export(tmp_path))
    with pytest.raises(ExportFormatError, match=None) as info:
        load_pdd(tmp_path / "e")
    assert message in str(info.value), str(info.value)


def test_nan_pixels_in_an_export_are_refused_naming_the_row(tmp_path):
    import datasets

    make_export(tmp_path / "e", num_stages=2)
    path = tmp_path / "e" / "data" / "stage_2-00000-of-00001.parquet"
    ds = datasets.Dataset.from_parquet(str(path))
    ds = ds.map(lambda row, i: {"image": [[[float("nan")] * 8] * 8] * 3} if i == 4 else {}, with_indices=True)
    ds.to_parquet(str(path))
    with pytest.raises(ExportFormatError, match="split 'stage_2': row 4 holds NaN or infinite pixel values"):
        load_pdd(tmp_path / "e")


def test_a_damaged_preprocess_file_of_an_export_is_named(tmp_path):
    make_export(tmp_path / "e", num_stages=2)
    path = tmp_path / "e" / "preprocess.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptStateError, match=f"{path} is damaged .*export it again"):
        load_pdd(tmp_path / "e")


# --- 11. exact backup names; 13. nothing local is published --------------------------------------
def test_backups_are_found_by_exact_name(tmp_path):
    make_export(tmp_path / "export.old-ab", num_stages=2, seed=1)
    os.rename(tmp_path / "export.old-ab", tmp_path / ".export.old-ab.old-1234abcd")  # another export's
    assert not recover_interrupted_export(tmp_path / "export")
    with pytest.raises(ExportNotFoundError, match="no export folder"):
        load_pdd(tmp_path / "export")
    make_export(tmp_path / "ex[p]ort", num_stages=2, seed=2)  # glob characters in the name
    os.rename(tmp_path / "ex[p]ort", tmp_path / ".ex[p]ort.old-0123abcd")
    assert recover_interrupted_export(tmp_path / "ex[p]ort")
    assert (tmp_path / ".export.old-ab.old-1234abcd").exists()


def test_no_local_path_is_published(tmp_path):
    import dataclasses

    schedule, stages, pre = make_export(tmp_path / "a", num_stages=2)
    local = dataclasses.replace(
        schedule,
        source={"dataset": str(tmp_path / "datasets" / "cifar10"), "fingerprint": "x"},
        config={
            "output_dir": str(tmp_path / "runs" / "x"),
            "dataset": str(tmp_path / "datasets" / "cifar10"),
        },
    )
    export_pdd(tmp_path / "b", local, stages, pre)
    for name in (SCHEDULE_FILE, "README.md"):
        text = (tmp_path / "b" / name).read_text()
        assert str(tmp_path) not in text and "cifar10" in text, name
    assert load_pdd(tmp_path / "b").schedule.config["output_dir"] == "x"


# --- 6. literal dataset paths; 12. labels ------------------------------------------------------------
def test_glob_characters_in_a_dataset_path_are_refused(tmp_path):
    from pdd_hub.data import load_real_data

    for name, seed in (("ga", 0), ("gb", 1), ("g*", 2)):
        write_image_folder(tmp_path / name, per_class=2, seed=seed)
    with pytest.raises(
        DatasetFormatError, match=r"contains the glob character\(s\) \*, .* rename the folder"
    ):
        load_real_data(str(tmp_path / "g*"), val_per_class=1)


def _label_folder(root: Path, labels: list, feature) -> Path:
    import datasets
    import numpy as np

    from tests.helpers import png_bytes

    (root / "data").mkdir(parents=True)
    for split in ("train", "test"):
        images = [
            {"bytes": png_bytes(np.full((4, 4), i, np.uint8)), "path": None} for i in range(len(labels))
        ]
        features = datasets.Features({"image": datasets.Image(), "label": feature})
        ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.mark.parametrize(
    "labels,feature,message",
    [
        ([0, 1, None, 1, 0, 1], "int64", "row 2: the label in column 'label' is missing (null)"),
        (
            [0.0, 1.0, 1.5, 0.0, 1.0, 0.0],
            "float32",
            "row 2: the label in column 'label' 1.5 is not an integer",
        ),
        ([0, 1, 0, 1, 0, 1], ["a", "b", "c"], "class 2 ('c') has no examples"),
        ([0, 1, 0, 1, 7, 1], "int64", "class 2 ('2') has no examples"),
    ],
)
def test_bad_labels_are_named_with_their_row(tmp_path, labels, feature, message):
    import datasets

    from pdd_hub.data import load_real_data

    feature = datasets.ClassLabel(names=feature) if isinstance(feature, list) else datasets.Value(feature)
    root = _label_folder(tmp_path / "d", labels, feature)
    with pytest.raises(DatasetFormatError, match=None) as info:
        load_real_data(str(root), val_per_class=1)
    assert message in str(info.value), str(info.value)


def test_integer_valued_float_labels_are_read_exactly(tmp_path):
    import datasets

    from pdd_hub.data import load_split

    root = _label_folder(tmp_path / "d", [0.0, 2.0, 1.0, 2.0], datasets.Value("float64"))
    assert load_split(str(root), "train").labels.tolist() == [0, 2, 1, 2]


# --- 5. damaged state: every kind of file a run folder holds ---------------------------------------
@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A tiny MTT run with ZCA, killed in stage 2 after its first checkpoint."""
    from pdd_hub.methods.mtt import MTT
    from pdd_hub.progressive import run_pdd
    from tests.test_pdd import tiny

    root = tmp_path_factory.mktemp("killed")
    real_loss, calls = MTT.loss, {"n": 0}

    def dying_loss(self, images, labels):
        calls["n"] += 1
        if calls["n"] == 7:  # stage 2, after its checkpoint at iteration 2
            raise KeyboardInterrupt("killed")
        return real_loss(self, images, labels)

    MTT.loss = dying_loss
    try:
        with pytest.raises(KeyboardInterrupt):
            run_pdd(tiny(root, zca=True), Accelerator(cpu=True))
    finally:
        MTT.loss = real_loss
    assert (root / "run" / "checkpoints" / "current" / "random_states_0.pkl").exists()
    return root / "run"


# The files a resumption reads (experts/*/manifest.json is rewritten, never read, on resume).
RUN_FILES = [
    "preprocess.json",
    "preprocess.safetensors",
    "start_states/stage_1.safetensors",
    "start_states/stage_2.safetensors",
    "stages/stage_1.safetensors",
    "stages/stage_1.json",
    "experts/stage_2/expert_001.safetensors",
    "checkpoints/current/progress.json",
    "checkpoints/current/state.safetensors",
    "checkpoints/current/generator_0.safetensors",
    "checkpoints/current/random_states_0.pkl",
]


def _resume_copy(killed_run: Path, tmp_path: Path, damage: dict[str, bytes | None]):
    from pdd_hub.progressive import run_pdd
    from tests.test_pdd import tiny

    shutil.copytree(killed_run, tmp_path / "run")
    for name, content in damage.items():
        path = tmp_path / "run" / name
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2] if content is None else content)
    return run_pdd(tiny(tmp_path, zca=True), Accelerator(cpu=True))


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_truncated_run_file_is_named_with_what_to_do(killed_run, tmp_path, name):
    with pytest.raises(CorruptStateError) as info:
        _resume_copy(killed_run, tmp_path, {name: None})
    message = str(info.value)
    assert str(tmp_path / "run" / name) in message and "delete" in message, message


def test_a_garbled_run_config_is_named(killed_run, tmp_path):
    with pytest.raises(ConfigError, match=r"(?s)config.yaml is unreadable .* move it away"):
        _resume_copy(killed_run, tmp_path, {"config.yaml": b"method: [\x00"})


def test_after_deleting_a_damaged_checkpoint_as_told_the_run_resumes(killed_run, tmp_path):
    with pytest.raises(CorruptStateError, match="random_states_0.pkl .*delete the folder") as info:
        _resume_copy(killed_run, tmp_path, {"checkpoints/current/random_states_0.pkl": b"\x80\x02trunc"})
    shutil.rmtree(info.value.args[0].split("delete the folder ")[1].split(" ")[0])
    from pdd_hub.progressive import run_pdd
    from tests.test_pdd import tiny

    assert load_pdd(run_pdd(tiny(tmp_path, zca=True), Accelerator(cpu=True))).num_stages == 2


def test_a_damaged_export_schedule_in_a_run_is_written_again(killed_run, tmp_path):
    from pdd_hub.methods.mtt import MTT

    real_loss = MTT.loss
    try:  # stop again at once in stage 2: only the re-export matters here
        MTT.loss = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt("stop"))
        with pytest.raises(KeyboardInterrupt):
            _resume_copy(killed_run, tmp_path, {"dataset/pdd_schedule.json": b"{"})
    finally:
        MTT.loss = real_loss
    assert load_pdd(tmp_path / "run" / "dataset").num_stages == 1


def test_a_damaged_eval_run_file_is_named(tmp_path):
    from pdd_hub.evaluate import _run_file, _saved_run

    runs = tmp_path / "eval.runs"
    _run_file(runs, "convnet_d3", 0).parent.mkdir(parents=True)
    _run_file(runs, "convnet_d3", 0).write_text('{"key": {"model": "convnet_d3"}, "accur')
    with pytest.raises(CorruptStateError, match=r"convnet_d3__seed0.json is not valid JSON .*--no-resume"):
        _saved_run(runs, {"model": "convnet_d3", "seed": 0})


# --- 7. one run per output folder ------------------------------------------------------------------
def test_a_second_run_on_the_same_folder_exits_at_once_naming_the_first(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pdd_hub.cli",
            "distill",
            "--config",
            "quickstart_dm",
            f"output_dir={out}",
            "num_threads=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=SUBPROCESS_ENV,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.yaml").exists():  # written once the first run holds the folder
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        with child_cpu_seconds() as spent:
            second = cli("distill", "--config", "quickstart_dm", f"output_dir={out}")
        assert spent[0] < 10
        assert_one_clear_line(second, str(out), f"in use by another pdd-hub process (pid {first.pid}")
    finally:
        first.kill()
        first.wait()
    release_output_lock(acquire_output_lock(out))  # the kernel released the killed run's lock


def test_exports_and_evaluations_are_locked_too(tmp_path, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pdd_hub.outputs import acquire_output_lock
                for path in ({str(tmp_path / "e")!r}, {str(tmp_path / "eval.json")!r}):
                    acquire_output_lock(path)
                print("held", flush=True); time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**SUBPROCESS_ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"pid {holder.pid}"):
            make_export(tmp_path / "e")
        args = ["eval", str(tmp_path / "x"), "--real", "sklearn:digits", "--model", "convnet_d1"]
        assert main([*args, "--output", str(tmp_path / "eval.json")]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


# --- 8. full disk, read-only folder, atomic results ---------------------------------------------------
def test_eval_results_are_replaced_atomically(tmp_path, monkeypatch):
    from pdd_hub.evaluate import EvalReport

    report = EvalReport("e", "r", "progressive", ["stage_1"], [1], {"m": {0: [0.5]}})
    report.save_json(tmp_path / "eval.json")
    report.save_plot(tmp_path / "eval.png")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    report.accuracies = {"m": {0: [0.9]}}

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    for save in (report.save_json, report.save_plot):
        with pytest.raises(OSError):
            save(tmp_path / f"eval.{'json' if save == report.save_json else 'png'}")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old results, no debris


def test_disk_full_during_select_is_one_line_and_keeps_the_previous_export(tmp_path, monkeypatch, capsys):
    import datasets

    args = [
        "select",
        "--real",
        "sklearn:digits",
        "--num-stages",
        "1",
        "--ipc",
        "1",
        "--output",
        str(tmp_path / "s"),
    ]
    assert main(args) == 0
    before = load_pdd(tmp_path / "s").stages[0].images

    def full(self, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(datasets.Dataset, "to_parquet", full)
    assert main([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pdd-hub select: error: no space left on the device while writing")
    assert "Traceback" not in "\n".join(err)
    assert torch.equal(load_pdd(tmp_path / "s").stages[0].images, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _unshare_works(), reason="no unprivileged mount namespaces here")


def _in_small_filesystem(tmp_path: Path, script: str) -> None:
    """Run ``script`` (sh) in a private mount namespace where $FS is a fresh tmpfs."""
    (tmp_path / "fs").mkdir()
    env = {**SUBPROCESS_ENV, "FS": str(tmp_path / "fs"), "PY": sys.executable, "OUT": str(tmp_path)}
    env["DISTILL"] = f"{sys.executable} -m pdd_hub.cli distill"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@needs_tmpfs
@pytest.mark.slow
def test_a_full_disk_mid_run_ends_in_one_line_and_the_run_resumes(tmp_path):
    import yaml

    from tests.test_pdd import TINY

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "zca": True}))
    script = f"""
        mount -t tmpfs -o size=600k tmpfs "$FS"
        PDD_HUB_MIN_FREE_MB=0.3 $DISTILL --config {config} output_dir=$FS/run 2> $OUT/full.err
        echo $? > $OUT/full.rc
        mount -o remount,size=200m "$FS"
        $DISTILL --config {config} output_dir=$FS/run 2> $OUT/resume.err
        echo $? > $OUT/resume.rc
        $PY -c "from pdd_hub.hub import load_pdd; print(load_pdd('$FS/run/dataset').num_stages)" > $OUT/stages
    """
    _in_small_filesystem(tmp_path, script)
    full = subprocess.CompletedProcess(
        [], int((tmp_path / "full.rc").read_text()), "", (tmp_path / "full.err").read_text()
    )
    assert_one_clear_line(full, "space")
    assert (tmp_path / "resume.rc").read_text().strip() == "0", (tmp_path / "resume.err").read_text()
    assert (tmp_path / "stages").read_text().strip() == "2"


@needs_tmpfs
def test_a_read_only_or_full_output_folder_is_refused_before_any_work(tmp_path):
    script = """
        mount -t tmpfs -o ro,size=1m tmpfs "$FS"
        $DISTILL --config quickstart_dm output_dir=$FS/run 2> $OUT/ro.err; echo $? > $OUT/ro.rc
        mount -o remount,rw "$FS"
        $DISTILL --config quickstart_dm output_dir=$FS/run 2> $OUT/small.err; echo $? > $OUT/small.rc
    """
    with child_cpu_seconds() as spent:
        _in_small_filesystem(tmp_path, script)
    assert spent[0] < 20  # two commands, each stopped before any data is loaded
    for name, fragment in (("ro", "cannot write to the output folder"), ("small", "MiB free, less than")):
        out = subprocess.CompletedProcess(
            [], int((tmp_path / f"{name}.rc").read_text()), "", (tmp_path / f"{name}.err").read_text()
        )
        assert_one_clear_line(out, fragment)


# --- 10. accelerate launch --------------------------------------------------------------------------
def test_launch_refuses_bad_input_before_starting_any_process(tmp_path):
    with child_cpu_seconds() as spent:
        out = cli(
            "launch", "--cpu", "--num_processes", "1", "distill", "--config", "quickstart_dm", "num_stages=-3"
        )
    assert spent[0] < 10
    assert_one_clear_line(out, "config key 'num_stages' must be positive", "got -3")


@pytest.mark.slow
def test_bad_input_found_in_a_launched_process_exits_2_without_the_launchers_traceback(tmp_path):
    from tests.helpers import accelerate_cpu

    options = accelerate_cpu(1)[3:]  # accelerate launch's options, spelled out
    out = cli(
        "launch",
        *options,
        "distill",
        "--config",
        "quickstart_dm",
        f"dataset={tmp_path / 'none'}",
        f"output_dir={tmp_path / 'r'}",
    )
    assert_one_clear_line(out, "could not load dataset")
    assert "CalledProcessError" not in out.stderr


# --- what held before and must keep holding: no code runs from a file ------------------------------
def test_yaml_python_tags_in_a_config_are_refused(tmp_path):
    from pdd_hub.config import load_config

    path = tmp_path / "evil.yaml"
    path.write_text(f'method: !!python/object/apply:os.system ["touch {tmp_path / "pwned"}"]\n')
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(path)
    assert not (tmp_path / "pwned").exists()


def test_a_pickle_in_place_of_a_random_state_file_is_not_run(killed_run, tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    with pytest.raises(CorruptStateError, match="random_states_0.pkl is missing or damaged"):
        _resume_copy(
            killed_run, tmp_path, {"checkpoints/current/random_states_0.pkl": pickle.dumps(Payload())}
        )
    assert not (tmp_path / "pwned").exists()
