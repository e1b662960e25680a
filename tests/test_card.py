"""The dataset card and the push: every Hub metadata field, parsed back by huggingface_hub's own card
classes; branches, pull requests, tags, commit messages, dry runs and results, as the huggingface_hub
calls pdd-hub makes (tests/fake_hub.py) receive them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, DatasetCardData

from pdd_hub.cli import main
from pdd_hub.errors import HubPushError, ResultsFormatError
from pdd_hub.evaluate import EvalReport
from pdd_hub.evidence import measured_gain
from pdd_hub.hub import export_pdd, load_pdd, push_to_hub, read_schedule
from pdd_hub.publish import PushOptions
from tests.fake_hub import ENDPOINT, TOKEN, WRITES
from tests.fake_hub import fake_hub as fake_hub_fixture
from tests.helpers import write_image_folder
from tests.test_hub import make_export

fake_hub = fake_hub_fixture
REPO = "org/toy-pdd"
PLACEHOLDERS = ("REPO_ID", "{{", "}}", "TODO", "More Information Needed", "github.com/pdd-hub")


def push(folder: Path, hub, **options) -> str:
    options.setdefault("license", "cc-by-4.0")
    return push_to_hub(folder, REPO, endpoint=ENDPOINT, token=TOKEN, options=PushOptions(**options))


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
    pdd = load_pdd(REPO, endpoint=ENDPOINT, token=TOKEN)
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
    # a Hub source dataset: its card is asked of the Hub
    schedule.source = {"dataset": "org/source"}
    export_pdd(tmp_path / "c", schedule, stages, pre)
    fake_hub.commit("org/source", "main", "card", {"README.md": b"---\nlicense: apache-2.0\n---\n"})
    push(tmp_path / "c", fake_hub, license=None)
    assert pushed_card(fake_hub).data.license == "apache-2.0"
    assert fake_hub.last("hf_hub_download")["repo_id"] == "org/source"
    sent = len(fake_hub.calls)
    with pytest.raises(HubPushError, match="license of .* is not known: its source dataset 'toy'.*--license"):
        push(tmp_path / "a", fake_hub, license=None)
    assert not WRITES & set(fake_hub.names()[sent:])  # the refused push sent nothing


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
    refs = fake_hub.refs[REPO]
    head = refs["distilled-v1"]
    assert fake_hub.private[REPO] is True and head.message == "first stages"
    assert head.oid in url and refs["v1.0"] is head
    assert fake_hub.last("create_tag")["tag_message"] == "first stages"
    assert fake_hub.last("upload_folder")["revision"] == "distilled-v1"
    assert "pdd_schedule.json" not in fake_hub.files(REPO)  # main untouched
    assert load_pdd(REPO, revision="v1.0", endpoint=ENDPOINT, token=TOKEN).num_stages == 3
    make_export(tmp_path / "e2", seed=1)
    push(tmp_path / "e2", fake_hub, revision="distilled-v1", commit_message="again")  # the branch exists
    assert refs["distilled-v1"].message == "again" and refs["v1.0"] is head


def test_create_pr_opens_a_pull_request_and_leaves_main_alone(tmp_path, fake_hub):
    make_export(tmp_path / "e")
    push(tmp_path / "e", fake_hub)
    before = fake_hub.files(REPO)
    make_export(tmp_path / "e2", num_stages=2, seed=1)
    url = push(tmp_path / "e2", fake_hub, create_pr=True, commit_message="two stages instead")
    assert url == f"{ENDPOINT}/datasets/{REPO}/discussions/1"
    assert fake_hub.last("upload_folder")["create_pr"] and fake_hub.last("upload_folder")["revision"] is None
    assert fake_hub.files(REPO) == before
    proposed = fake_hub.files(REPO, revision="refs/pr/1")
    assert "data/stage_3-00000-of-00001.parquet" not in proposed
    assert fake_hub.refs[REPO]["refs/pr/1"].message == "two stages instead"


def test_options_the_hub_cannot_combine_fail_before_any_request(tmp_path, fake_hub):
    make_export(tmp_path / "e")
    with pytest.raises(HubPushError, match="--create-pr .* cannot go with --revision dev"):
        push(tmp_path / "e", fake_hub, create_pr=True, revision="dev")
    with pytest.raises(HubPushError, match="--tag .* cannot go with --create-pr"):
        push(tmp_path / "e", fake_hub, create_pr=True, tag="v1")
    assert not fake_hub.calls


def test_dry_run_lists_what_would_be_uploaded_and_sends_nothing(tmp_path, fake_hub):
    make_export(tmp_path / "e")
    listing = push(tmp_path / "e", fake_hub, dry_run=True)
    for name in ("README.md", "pdd_schedule.json", "preprocess.safetensors", "images/stage_2.png"):
        assert name in listing
    assert "data/stage_3-00000-of-00001.parquet" in listing and "license cc-by-4.0" in listing
    assert not fake_hub.refs and not (WRITES | {"whoami"}) & set(fake_hub.names())  # no token needed


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
    push(tmp_path / "e", fake_hub, revision="dev")  # a new branch starts from main's results
    assert "| resnet10_cifar_bn |" in pushed_card(fake_hub, revision="dev").text


def test_results_of_another_export_or_broken_files_are_refused(tmp_path, fake_hub):
    make_export(tmp_path / "e")
    make_export(tmp_path / "other", seed=5)
    report_for(tmp_path / "other", {"convnet_d3": 0.5}).save_json(tmp_path / "other.json")
    with pytest.raises(ResultsFormatError, match="other.json evaluated another export"):
        push(tmp_path / "e", fake_hub, results=[tmp_path / "other.json"])
    (tmp_path / "bad.json").write_text('{"real": "x"}')
    with pytest.raises(ResultsFormatError, match="bad.json lacks .*'mode'"):
        push(tmp_path / "e", fake_hub, results=[tmp_path / "bad.json"])
    assert not WRITES & set(fake_hub.names())


def test_cli_push_options_and_errors(tmp_path, fake_hub, monkeypatch, capsys):
    make_export(tmp_path / "e")
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    def cli(*args: str) -> tuple[int, pytest.CaptureResult]:
        return main(["push", str(tmp_path / "e"), REPO, *args]), capsys.readouterr()

    code, out = cli()
    assert code == 2 and "--license" in out.err
    code, out = cli("--license", "mit", "--dry-run")
    assert code == 0 and "data/stage_1-00000-of-00001.parquet" in out.out
    assert not WRITES & set(fake_hub.names())
    code, out = cli(
        "--license", "mit", "--revision", "dev", "--tag", "v0.1", "--commit-message", "hi", "--private"
    )
    assert code == 0 and "tagged v0.1" in out.out
    refs = fake_hub.refs[REPO]
    assert refs["v0.1"] is refs["dev"] and refs["dev"].message == "hi" and fake_hub.private[REPO] is True
    code, out = cli("--license", "mit", "--create-pr")
    assert code == 0 and f"pull request {ENDPOINT}/datasets/{REPO}/discussions/1" in out.out


def test_eval_logs_to_tensorboard_and_pushes_its_results_to_the_card(tmp_path, fake_hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    export = tmp_path / "digits-random"
    select = ["select", "--real", "sklearn:digits", "--num-stages", "2", "--ipc", "1", "--output"]
    assert main([*select, str(export)]) == 0
    evaluation = [*("eval", str(export), "--real", "sklearn:digits", "--model", "convnet_d1", "--seeds", "1")]
    evaluation += ["--epochs-per-stage", "2"]
    done = [*evaluation, "--output", str(tmp_path / "eval.json"), "--tracker", "tensorboard"]
    assert main([*done, "--push-to-hub", "org/digits", "--tag", "v1"]) == 0
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
    assert fake_hub.refs["org/digits"]["v1"] is fake_hub.refs["org/digits"]["main"]
    # a bad push setting stops the evaluation before it trains anything (and writes no results)
    capsys.readouterr()
    refused = [*evaluation, "--output", str(tmp_path / "refused.json")]
    assert main([*refused, "--push-to-hub", "org/digits", "--create-pr", "--tag", "v2"]) == 2
    assert "--tag" in capsys.readouterr().err and not (tmp_path / "refused.json").exists()
