"""benchmarks/gpu.py (the prepared GPU run), its report and the reference patcher, at CPU-tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
ITEMS = [
    "env", "reference_data", "iteration_ours", "iteration_reference", "expert_epoch_ours",
    "expert_epoch_reference", "evaluation_ours", "evaluation_reference", "compile", "pipeline",
]  # fmt: skip
REFERENCE_ITEMS = {"reference_data", "iteration_reference", "expert_epoch_reference", "evaluation_reference"}


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    """The benchmark scripts importable as modules (they import each other by name)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu
    import gpu_report
    import reference_patch

    return gpu, gpu_report, reference_patch


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(BENCHMARKS / "gpu.py"), "--tiny", "--data", "sklearn:digits",
           "--output", str(out / "gpu.json"), "--work", str(out / "work"), "--budget", "300"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "gpu.json").read_text())


@pytest.mark.slow
def test_tiny_run_writes_every_section(tiny_run: dict) -> None:
    items = tiny_run["items"]
    assert list(items) == ITEMS
    for name in REFERENCE_ITEMS:
        assert items[name] == {"status": "skipped", "reason": "no --reference given"}
    assert items["compile"]["status"] == "skipped"
    for name in ("env", "iteration_ours", "expert_epoch_ours", "evaluation_ours", "pipeline"):
        assert items[name]["status"] == "done", items[name].get("stderr_tail")
    env = items["env"]["rows"]["env"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["packages"]["datasets"]
    iteration = items["iteration_ours"]["rows"]
    assert set(iteration) == {f"{s}/{m}/{p}" for s in ("ipc10", "ipc50") for m in ("unrolled", "constant")
                              for p in ("fp32", "bf16")}  # fmt: skip
    assert iteration["ipc50/constant/bf16"]["mtt.memory"] == "constant"
    assert iteration["ipc50/constant/bf16"]["mtt.precision"] == "bf16"
    assert all(row["seconds_per_iteration"] > 0 and row["peak_memory_gib"] > 0 for row in iteration.values())
    experts = items["expert_epoch_ours"]["rows"]
    assert set(experts) == {"one/fp32", "one/bf16", "stacked2/fp32", "stacked2/bf16"}
    assert experts["stacked2/bf16"]["experts"] == 2 and experts["one/fp32"]["examples"] == 100
    evaluation = items["evaluation_ours"]["rows"]
    assert set(evaluation) == {f"{m}/ipc10/{b}/{p}" for m in ("convnet_d1", "resnet10_cifar")
                               for b in ("unbatched", "batched") for p in ("fp32", "bf16")}  # fmt: skip
    assert evaluation["resnet10_cifar/ipc10/batched/bf16"]["stacked"] is True
    assert evaluation["convnet_d1/ipc10/unbatched/fp32"]["stacked"] is False


@pytest.mark.slow
def test_tiny_pipeline_times_every_phase(tiny_run: dict) -> None:
    pipeline = tiny_run["items"]["pipeline"]
    assert [p["phase"] for p in pipeline["phases"]] == [
        "setup", "stage 1 experts", "stage 1", "transition 1->2", "stage 2 experts", "stage 2",
        "final evaluation",
    ]  # fmt: skip
    assert all(p["status"] == "done" and p["seconds"] > 0 for p in pipeline["phases"])
    # a stage's time includes its experts'
    seconds = {p["phase"]: p["seconds"] for p in pipeline["phases"]}
    assert seconds["stage 1"] > seconds["stage 1 experts"]
    assert set(pipeline["seconds_per_iteration"]) == set(pipeline["val_acc"]) == {"1", "2"}
    summary = pipeline["rows"]["final_evaluation"]["summary"]["convnet_d3"]
    assert len(summary) == 2 and 0 <= summary[-1]["mean"] <= 1


@pytest.mark.slow
def test_report_of_the_tiny_run(tiny_run: dict, bench) -> None:
    _, gpu_report, _ = bench
    text = gpu_report.render(tiny_run)
    assert "TINY RUN" in text
    for heading in ("### Distillation iteration", "### Expert epoch", "### Evaluation epoch",
                    "### The `cifar10_ipc10_fast` pipeline", "### Not finished in the time"):  # fmt: skip
        assert heading in text
    assert "| pdd-hub constant bf16 |" in text and "| transition 1->2 |" in text
    # no reference ran: its rows and ratios are blank, and the report says why
    assert "- iteration_reference: skipped (no --reference given)" in text
    assert "| reference | – |" in text


def test_report_names_what_a_cut_run_did_not_finish(bench) -> None:
    _, gpu_report, _ = bench
    ours = {"seconds_per_iteration": 0.05, "peak_memory_gib": 1.5, "resident_gib": 0.2}
    phases = [
        {"phase": "setup", "status": "done", "seconds": 10.0},
        {"phase": "stage 1 experts", "status": "unfinished", "seconds": 110.0},
        {"phase": "stage 1", "status": "unfinished", "seconds": 110.0},
        {"phase": "final evaluation", "status": "not started", "seconds": None},
    ]
    items = {
        "env": {"status": "done", "rows": {"env": {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0"}}},
        "iteration_ours": {"status": "done", "rows": {"ipc10/unrolled/bf16": ours}},
        "iteration_reference": {
            "status": "done",
            "rows": {"ipc10": {**ours, "seconds_per_iteration": 0.1, "peak_memory_gib": 3.0}},
        },
        "compile": {"status": "timeout", "wall_s": 90.1, "budget_s": 90, "rows": {}},
        "pipeline": {"status": "timeout", "wall_s": 120, "budget_s": 120, "phases": phases},
    }
    results = {"mode": "full", "budget_s": 450, "wall_s": 440, "items": items}
    text = gpu_report.render(results)
    assert "TINY" not in text and "NVIDIA H100 80GB HBM3" in text
    assert "| pdd-hub unrolled bf16 | 0.05 | 0.50 | 1.50 (0.20 resident) | 0.50 |" in text
    assert "- compile: timeout (timeout after 90.10 s of 90.00)" in text
    assert "- pipeline phase stage 1 experts: unfinished" in text
    assert "- pipeline phase final evaluation: not started" in text


def test_report_takes_each_item_from_the_run_that_got_furthest(bench) -> None:
    _, gpu_report, _ = bench
    cut = [{"phase": "setup", "status": "done"}, {"phase": "stage 1", "status": "unfinished"}]
    whole = [{"phase": "setup", "status": "done"}, {"phase": "stage 1", "status": "done"}]
    first = {"date": "first", "items": {
        "env": {"status": "done", "rows": {"env": {}}},
        "iteration_ours": {"status": "done", "rows": {"ipc10/unrolled/fp32": {}}},
        "pipeline": {"status": "timeout", "phases": cut},
    }}  # fmt: skip
    second = {"date": "second", "items": {
        "env": {"status": "done", "rows": {"env": {}}},
        "iteration_ours": {"status": "skipped", "reason": "not selected by --only"},
        "pipeline": {"status": "timeout", "phases": whole},
    }}  # fmt: skip
    merged = gpu_report.merge([first, second])
    assert merged["date"] == "first"
    assert merged["items"]["iteration_ours"] is first["items"]["iteration_ours"]
    assert merged["items"]["pipeline"] is second["items"]["pipeline"]
    assert merged["items"]["env"] is second["items"]["env"]  # a tie: the later run's


def test_a_child_past_its_budget_is_killed_and_its_rows_kept(bench) -> None:
    gpu, _, _ = bench
    script = 'import time; print(\'ROW {"key": "a", "seconds": 1.5}\', flush=True); time.sleep(60)'
    result, out = gpu.run_process([sys.executable, "-c", script], dict(os.environ), budget=3)
    assert result["status"] == "timeout" and result["wall_s"] < 30
    assert gpu.rows_of(out) == {"a": {"seconds": 1.5}}
    failed, _ = gpu.run_process([sys.executable, "-c", "raise SystemExit('broken')"], dict(os.environ), 30)
    assert failed["status"] == "error" and "broken" in failed["stderr_tail"]


def test_pipeline_phases_of_a_killed_child(bench) -> None:
    gpu, _, _ = bench
    out = "\n".join([
        'PLAN {"phases": ["setup", "stage 1 experts", "stage 1", "final evaluation"]}',
        'EVENT {"phase": "setup", "event": "begin", "t": 1.0}',
        'EVENT {"phase": "setup", "event": "end", "t": 4.5}',
        'EVENT {"phase": "stage 1", "event": "begin", "t": 4.5}',
        'EVENT {"phase": "stage 1 experts", "event": "begin", "t": 4.6}',
        'LOG {"t": 9.0, "msg": "stage 1 it 50: loss 0.9000 lr 0.01 (0.25s/it)"}',
        'LOG {"t": 9.5, "msg": "stage 1 it 100: loss 0.8000 lr 0.01 (0.35s/it)"}',
        'EVENT {"phase": "stage 1 exp',  # cut by the kill
    ])  # fmt: skip
    phases = gpu.pipeline_phases(out, wall=10.0)
    assert phases["phases"] == [
        {"phase": "setup", "status": "done", "seconds": 3.5},
        {"phase": "stage 1 experts", "status": "unfinished", "seconds": 5.4},
        {"phase": "stage 1", "status": "unfinished", "seconds": 5.5},
        {"phase": "final evaluation", "status": "not started", "seconds": None},
    ]
    assert phases["seconds_per_iteration"] == {"1": pytest.approx(0.3)}


def test_reference_copy_of_cifar10_reads_back_through_torchvision(bench, tmp_path, monkeypatch) -> None:
    gpu, _, _ = bench
    from torchvision.datasets import CIFAR10

    from pdd_hub.data import ImageSet

    g = torch.Generator().manual_seed(0)
    names = [f"class{k}" for k in range(10)]
    train = ImageSet(torch.randint(0, 256, (23, 3, 32, 32), generator=g, dtype=torch.uint8),
                     torch.randint(0, 10, (23,), generator=g), names)  # fmt: skip
    test = ImageSet(torch.randint(0, 256, (7, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.randint(0, 10, (7,), generator=g), names)  # fmt: skip
    gpu.write_torchvision_cifar10(tmp_path, train, test)
    # as the reference's patch has it: the files must exist, their md5 sums are not checked
    monkeypatch.setattr(CIFAR10, "train_list", [[name, None] for name, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[name, None] for name, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": None})
    for split, expected in ((True, train), (False, test)):
        read = CIFAR10(str(tmp_path), train=split, download=False)
        assert read.classes == names
        assert torch.equal(torch.from_numpy(read.data).permute(0, 3, 1, 2), expected.images)  # NHWC there
        assert read.targets == expected.labels.tolist()


REFERENCE_LINES = {
    "utils.py": "import torch\nfrom torchvision import datasets, transforms\n"
    "from scipy.ndimage.interpolation import rotate as scipyrotate\n",
    "distill_mtt.py": "import torch\n\ndef main(args, images_best, labels_best):\n"
    "    for it in range(3):\n"
    '        wandb.log({"Synthetic_LR": syn_lr.detach().cpu()}, step=it)\n'
    "        optimizer_lr.step()\n"
    "    image_save = image_syn.cuda()\n"
    "        if args.use_more_at_first_interval and interval > 1:\n",
}


def test_reference_patch_applies_once_and_refuses_other_code(bench, tmp_path) -> None:
    _, _, reference_patch = bench
    for name, text in REFERENCE_LINES.items():
        (tmp_path / name).write_text(text)
    changed = reference_patch.patch_reference(tmp_path)
    assert len(changed) == len(reference_patch.PATCHES) + 1  # and the wandb stand-in
    patched = (tmp_path / "distill_mtt.py").read_text()
    assert "_pdd_hub_report(it, _pdd_hub_started, args.device)" in patched
    assert "image_syn.to(args.device)" in patched and ".cuda()" not in patched
    assert reference_patch.patch_reference(tmp_path) == []  # already patched: unchanged
    assert (tmp_path / "distill_mtt.py").read_text() == patched
    (tmp_path / "utils.py").write_text("import torch\n")
    with pytest.raises(reference_patch.PatchError, match=r"utils\.py: expected exactly one occurrence"):
        reference_patch.patch_reference(tmp_path)
