"""The dataset card and the push: every Hub metadata field, parsed back by huggingface_hub's own card
classes; branches, pull requests, tags, commit messages, dry runs and results, through the real
huggingface_hub client against the local fake Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, DatasetCardData, constants

from pdd_hub.errors import HubPushError, ResultsFormatError
from pdd_hub.evaluate import EvalReport
from pdd_hub.evidence import measured_gain
from pdd_hub.hub import export_pdd, load_pdd, push_to_hub, read_schedule
from pdd_hub.publish import PushOptions
from tests.fake_hub import FAKE_TOKEN
from tests.fake_hub import fake_hub as fake_hub_fixture
from tests.helpers import write_image_folder
from tests.test_hub import make_export

fake_hub = fake_hub_fixture
REPO = "org/toy-pdd"
PLACEHOLDERS = ("REPO_ID", "{{", "}}", "TODO", "More Information Needed", "github.com/pdd-hub")


def push(folder: Path, hub, **options) -> str:
    options.setdefault("license", "cc-by-4.0")
    return push_to_hub(folder, REPO, endpoint=hub.url, token=FAKE_TOKEN, options=PushOptions(**options))


def pushed_card(hub, revision: str = "main") -> DatasetCard:
    return DatasetCard(hub.files(REPO, revision=revision)["README.md"].decode())


def report_for(folder: Path, models: dict[str, float], real: str = "toy-real") -> EvalReport:
    schedule = read_schedule(folder)
    phases = ["stage_1", "stage_1..2", "stage_1..3"]
    return EvalReport(
        export=str(folder),
        real=real,
        mode="progressive",
        phases=phases,
        epochs=[8, 9, 10],
        accuracies={m: {0: [a, a + 0.1, a + 0.2], 1: [a, a + 0.1, a + 0.3]} for m, a in models.items()},
        dataset="toy",
        method="mtt",
        stages=[s.sha256 for s in schedule.stages],
    )


def test_pushed_card_has_every_hub_field_and_no_placeholder(tmp_path, fake_hub):
    make_export(tmp_path / "e")
    local = (tmp_path / "e" / "README.md").read_text()
    assert 'load_dataset("e", split="stage_1+stage_2")' in local  # the folder by name, locally
    assert measured_gain("mtt") in " ".join(local.split())  # what PDD measured, negative or not
    push(tmp_path / "e", fake_hub)
    card = pushed_card(fake_hub)
    data: DatasetCardData = card.data
    assert isinstance(data, DatasetCardData)
    assert data.license == "cc-by-4.0"
    assert data.size_categories == ["n<1K"]
    assert data.source_datasets == ["extended|toy"]
    assert data.task_categories == ["image-classification"]
    assert data.task_ids == ["multi-class-image-classification"]
    assert data.pretty_name == "toy distilled by PDD + MTT"
    assert {"dataset-distillation", "mtt", "arxiv:2310.06982"} <= set(data.tags)
    assert [f["split"] for f in data.configs[0]["data_files"]] == ["stage_1", "stage_2", "stage_3"]
    splits = {s["name"]: s["num_examples"] for s in data.dataset_info["splits"]}
    assert splits == {"stage_1": 6, "stage_2": 6, "stage_3": 6}
    assert data.pdd["class_names"] == ["cat", "dog", "eel"] and data.pdd["zca"] is True
    # the body: how to load one stage, a union and the schedule, with the repo id; grids; BibTeX
    assert f'load_dataset("{REPO}", split="stage_1")' in card.text
    assert f'load_dataset("{REPO}", split="stage_1+stage_2")' in card.text
    assert f'pdd_hub.load_pdd("{REPO}")' in card.text and "iterate_schedule(pdd)" in card.text
    assert "![stage_3](images/stage_3.png)" in card.text
    assert "`0` cat, `1` dog, `2` eel" in card.text
    assert "eprint        = {2310.06982}" in card.text and "eprint        = {2203.11932}" in card.text
    assert not [p for p in PLACEHOLDERS if p in str(card)]
    assert str(tmp_path) not in str(card)
    # and datasets reads the pushed repo, dataset_info included, union split and all
    pdd = load_pdd(REPO, endpoint=fake_hub.url, token=FAKE_TOKEN)
    assert pdd.num_stages == 3


def test_license_is_inherited_from_the_source_else_required(tmp_path, fake_hub):
    source = write_image_folder(tmp_path / "src", size=8, num_classes=3)
    (source / "README.md").write_text("---\nlicense: mit\n---\n# toy source\n")
    schedule, stages, pre = make_export(tmp_path / "a")
    schedule.source = {"dataset": str(source)}
    export_pdd(tmp_path / "b", schedule, stages, pre)
    assert DatasetCard.load(tmp_path / "b" / "README.md").data.license == "mit"
    push(tmp_path / "b", fake_hub, license=None)
    assert pushed_card(fake_hub).data.license == "mit"
    with pytest.raises(HubPushError, match="license of .* is not known: its source dataset 'toy'.*--license"):
        push(tmp_path / "a", fake_hub, license=None)
    assert fake_hub.commits(REPO)[0].title.startswith("pdd-hub export")  # the refused push sent nothing


def test_revision_creates_the_branch_and_tag_and_message_are_kept(tmp_path, fake_hub):
    make_export(tmp_path / "e")
    url = push(
        tmp_path / "e",
        fake_hub,
        revision="distilled-v1",
        commit_message="first stages",
        tag="v1.0",
        private=True,
    )
    assert fake_hub.is_private(REPO)
    head = fake_hub.branches(REPO)["distilled-v1"]
    assert head in url and fake_hub.tags(REPO) == {"v1.0": head}
    assert fake_hub.commits(REPO, revision="distilled-v1")[0].title == "first stages"
    assert "pdd_schedule.json" not in fake_hub.files(REPO)  # main untouched
    assert load_pdd(REPO, revision="v1.0", endpoint=fake_hub.url, token=FAKE_TOKEN).num_stages == 3
    make_export(tmp_path / "e2", seed=1)
    push(tmp_path / "e2", fake_hub, revision="distilled-v1", commit_message="again")  # the branch exists
    assert fake_hub.commits(REPO, revision="distilled-v1")[0].title == "again"


@pytest.mark.parametrize("xet", [True, False], ids=["pipeline", "legacy-commit"])
def test_create_pr_opens_a_pull_request_and_leaves_main_alone(tmp_path, fake_hub, monkeypatch, xet):
    # both of huggingface_hub's upload_folder implementations open the PR their own way
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not xet)
    make_export(tmp_path / "e")
    push(tmp_path / "e", fake_hub)
    before = fake_hub.files(REPO)
    make_export(tmp_path / "e2", num_stages=2, seed=1)
    url = push(tmp_path / "e2", fake_hub, create_pr=True, commit_message="two stages instead")
    assert url.endswith("/discussions/1")
    assert fake_hub.files(REPO) == before
    proposed = fake_hub.files(REPO, revision="refs/pr/1")
    assert "data/stage_3-00000-of-00001.parquet" not in proposed
    assert fake_hub.commits(REPO, revision="refs/pr/1")[0].title == "two stages instead"


def test_options_the_hub_cannot_combine_fail_before_any_request(tmp_path, fake_hub):
    make_export(tmp_path / "e")
    with pytest.raises(HubPushError, match="--create-pr .* cannot go with --revision dev"):
        push(tmp_path / "e", fake_hub, create_pr=True, revision="dev")
    with pytest.raises(HubPushError, match="--tag .* cannot go with --create-pr"):
        push(tmp_path / "e", fake_hub, create_pr=True, tag="v1")
    assert not fake_hub.requests


def test_dry_run_lists_what_would_be_uploaded_and_sends_nothing(tmp_path, fake_hub):
    make_export(tmp_path / "e")
    listing = push(tmp_path / "e", fake_hub, dry_run=True)
    for name in ("README.md", "pdd_schedule.json", "preprocess.safetensors", "images/stage_2.png"):
        assert name in listing
    assert "data/stage_3-00000-of-00001.parquet" in listing and "license cc-by-4.0" in listing
    assert not fake_hub.repo_exists(REPO)


def test_results_add_rows_to_the_card_and_files_to_the_repo(tmp_path, fake_hub):
    make_export(tmp_path / "e")
    first = report_for(tmp_path / "e", {"convnet_d3": 0.5, "convnet_d3 [random real]": 0.3})
    first.save_json(tmp_path / "first.json")
    push(tmp_path / "e", fake_hub, results=[tmp_path / "first.json"])
    card = pushed_card(fake_hub)
    assert "| convnet_d3 | 2 | 50.00 ± 0.00 | 60.00 ± 0.00 | 75.00 ± 7.07 |" in card.text
    assert "| convnet_d3 [random real] | 2 | 30.00 ± 0.00 |" in card.text
    second = report_for(tmp_path / "e", {"resnet10_cifar_bn": 0.4})
    second.save_json(tmp_path / "second.json")
    push(tmp_path / "e", fake_hub, results=[tmp_path / "second.json"])  # the folder has no results/
    card = pushed_card(fake_hub)
    rows = [line.split(" | ")[0] for line in card.text.splitlines() if line.startswith("| ") and "±" in line]
    assert rows == ["| convnet_d3", "| resnet10_cifar_bn", "| convnet_d3 [random real]"]
    stored = sorted(p for p in fake_hub.files(REPO) if p.startswith("results/"))
    assert len(stored) == 2
    assert json.loads(fake_hub.files(REPO)[stored[0]]) in (first.to_dict(), second.to_dict())


def test_results_of_another_export_or_broken_files_are_refused(tmp_path, fake_hub):
    make_export(tmp_path / "e")
    make_export(tmp_path / "other", seed=5)
    report_for(tmp_path / "other", {"convnet_d3": 0.5}).save_json(tmp_path / "other.json")
    with pytest.raises(ResultsFormatError, match="other.json evaluated another export"):
        push(tmp_path / "e", fake_hub, results=[tmp_path / "other.json"])
    (tmp_path / "bad.json").write_text('{"real": "x"}')
    with pytest.raises(ResultsFormatError, match="bad.json lacks .*'mode'"):
        push(tmp_path / "e", fake_hub, results=[tmp_path / "bad.json"])
    assert not fake_hub.repo_exists(REPO)


def test_cli_push_options_and_errors(tmp_path, fake_hub):
    make_export(tmp_path / "e")
    env = {**os.environ, "HF_ENDPOINT": fake_hub.url, "HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "0"}
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "pdd_hub.cli", "push", str(tmp_path / "e"), REPO, *args]
        return subprocess.run(command, capture_output=True, text=True, env=env)

    refused = cli()
    assert refused.returncode == 2 and "--license" in refused.stderr and "Traceback" not in refused.stderr
    dry = cli("--license", "mit", "--dry-run")
    assert dry.returncode == 0 and "data/stage_1-00000-of-00001.parquet" in dry.stdout
    assert not fake_hub.repo_exists(REPO)
    done = cli("--license", "mit", "--revision", "dev", "--tag", "v0.1", "--commit-message", "hello")
    assert done.returncode == 0, done.stderr
    assert "tagged v0.1" in done.stdout and fake_hub.tags(REPO)["v0.1"] == fake_hub.branches(REPO)["dev"]


def test_eval_logs_to_tensorboard_and_pushes_its_results_to_the_card(tmp_path, fake_hub):
    env = {**os.environ, "HF_ENDPOINT": fake_hub.url, "HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "0"}
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "pdd_hub.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)

    export = tmp_path / "digits-random"
    made = cli(
        "select", "--real", "sklearn:digits", "--num-stages", "2", "--ipc", "1", "--output", f"{export}"
    )
    assert made.returncode == 0, made.stderr
    evaluation = [*("eval", str(export), "--real", "sklearn:digits", "--model", "convnet_d1", "--seeds", "1")]
    evaluation += ["--epochs-per-stage", "2", "--output", str(tmp_path / "eval.json")]
    done = cli(*evaluation, "--tracker", "tensorboard", "--push-to-hub", "org/digits", "--tag", "v1")
    assert done.returncode == 0, done.stderr
    # the tracker: the accuracy after each phase, and the plot
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images = {}, set()
    for events in (tmp_path / "eval.logs").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        scalars |= {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
        images |= set(acc.Tags()["images"])
    report = json.loads((tmp_path / "eval.json").read_text())
    expected = [100 * p["mean"] for p in report["summary"]["convnet_d1"]]
    assert scalars["eval/convnet_d1/accuracy"] == pytest.approx(expected)
    assert "eval/accuracy_per_stage" in images
    # the Hub: the card's results table (the license inherited from sklearn's digits), the raw JSON
    card = DatasetCard(fake_hub.files("org/digits")["README.md"].decode())
    assert card.data.license == "cc-by-4.0" and "## Results" in card.text
    mean = 100 * report["summary"]["convnet_d1"][0]["mean"]
    assert f"| convnet_d1 | 1 | {mean:.2f} ± 0.00 |" in card.text
    (stored,) = [p for p in fake_hub.files("org/digits") if p.startswith("results/")]
    assert json.loads(fake_hub.files("org/digits")[stored]) == report
    assert "v1" in fake_hub.tags("org/digits")
    # a bad push setting stops the evaluation before it trains anything
    refused = cli(*evaluation, "--push-to-hub", "org/digits", "--create-pr", "--tag", "v2")
    assert refused.returncode == 2 and "--tag" in refused.stderr and "test accuracy" not in refused.stderr
