"""Issue 19's ablation command at its tiny settings: its rows run through the real CLI (distil, then
eval), the report holds the tables, the verdict and the validation curves, a second call reuses every
cached run, the report is rebuilt from the kept records alone once the run folders are gone, and
every command it would run parses as the CLI takes it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import SUBPROCESS_ENV

REPO = Path(__file__).resolve().parents[1]
ROWS = "alone,source=random,source=random+importance"


def ablation(out: Path, report: Path, *extra: str) -> subprocess.CompletedProcess:
    records = report.parent.parent / "records"
    command = [sys.executable, str(REPO / "benchmarks" / "ablation.py"), "--protocol", "tiny"]
    command += ["--out", str(out), "--records", str(records)]
    command += ["--only", "dm", "--rows", ROWS, "--report", str(report), *extra]
    return subprocess.run(command, capture_output=True, text=True, env=SUBPROCESS_ENV, cwd=REPO, timeout=1200)


def import_ablation():
    """The benchmark script as a module (it lives outside the package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import ablation
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return ablation


@pytest.mark.slow
def test_the_tiny_ablation_runs_every_kind_of_row_and_reports_them(tmp_path):
    out, report = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    report.parent.mkdir()
    report.write_text(
        "# Results\n\nkept\n\n<!-- ablation:tiny:begin -->\nstale\n<!-- ablation:tiny:end -->\n"
    )
    result = ablation(out, report)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout and result.stdout.count("done ") == 3, result.stdout
    text = report.read_text()
    assert text.startswith("# Results\n\nkept\n") and "stale" not in text
    for row in ("`alone` (3 epochs)", "`alone` (6 epochs)", "`source=random`"):
        assert row in text
    assert "`source=random+importance`" in text and "random real" in text
    assert "PDD + DM with the shipped settings (`source=random`)" in text and "PDD + X >= X - 1 std" in text
    assert (report.parent / "ablation" / "tiny_dm_source_random.png").stat().st_size > 1000
    folder = out / "tiny" / "dm" / "source=random+importance"
    schedule = json.loads((folder / "dataset" / "pdd_schedule.json").read_text())
    assert schedule["config"]["real_sampling"] == "importance"
    assert [s["distillation"]["iterations"] for s in schedule["stages"]] == [4, 4]
    evaluated = (folder / "eval_E.json").stat().st_mtime_ns

    again = ablation(out, report, "--no-run")
    assert again.returncode == 0 and report.read_text() == text
    rerun = ablation(out, report)
    assert rerun.returncode == 0 and (folder / "eval_E.json").stat().st_mtime_ns == evaluated

    record = json.loads((tmp_path / "records" / "tiny" / "dm" / "source=random+importance.json").read_text())
    summary = json.loads((folder / "eval_E.json").read_text())["summary"]
    assert record["evals"]["E"] == summary and list(record["validation_curves"]) == ["stage 1", "stage 2"]
    shutil.rmtree(out)  # the machine that ran the rows is gone: the records still make the report
    (report.parent / "ablation" / "tiny_dm_source_random.png").unlink()
    assert ablation(out, report, "--no-run").returncode == 0 and report.read_text() == text
    assert (report.parent / "ablation" / "tiny_dm_source_random.png").stat().st_size > 1000


@pytest.mark.parametrize("protocol", ["tiny", "cpu"])
def test_every_row_of_every_method_is_a_command_the_cli_takes(protocol, tmp_path):
    ablation = import_ablation()
    from pdd_hub.cli import build_parser
    from pdd_hub.config import parse_recipe_args

    setup = ablation.PROTOCOLS[protocol]()
    for method in [*setup.methods, "select"]:
        for row in ablation.rows_of(method, setup):
            folder = tmp_path / row.key
            make = ablation.select_command if row.selection else ablation.distill_command
            command = make(row, setup, folder)[3:]
            if row.selection:
                build_parser().parse_args(command)
            else:  # the config with every override, validated (dataset paths are not opened)
                assert parse_recipe_args(command[1:]).output_dir == str(folder)
            for name, epochs in row.evals.items():
                build_parser().parse_args(ablation.eval_command(row, setup, folder, name, epochs)[3:])


def test_the_report_of_methods_and_selection_rows_without_runs_keeps_the_file(tmp_path):
    ablation = import_ablation()
    report = tmp_path / "RESULTS.md"
    report.write_text("# Results\n")
    argv = ["--protocol", "cpu", "--only", "mtt,dm,select", "--out", str(tmp_path / "runs")]
    argv += ["--records", str(tmp_path / "records")]
    assert ablation.main([*argv, "--report", str(report), "--no-run"]) == 0
    assert report.read_text() == "# Results\n\n<!-- ablation:cpu:begin -->\n\n<!-- ablation:cpu:end -->\n"


def test_a_damaged_record_stops_the_report_with_exit_2_naming_it_and_keeps_the_file(tmp_path, capsys):
    ablation = import_ablation()
    record = tmp_path / "records" / "cpu" / "dm" / "alone.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"row": "alone", "evals": {"E": {"convnet')  # truncated by a full disk
    report = tmp_path / "RESULTS.md"
    report.write_text("# Results\n")
    argv = ["--protocol", "cpu", "--only", "dm", "--out", str(tmp_path / "runs")]
    argv += ["--records", str(tmp_path / "records"), "--report", str(report), "--no-run"]
    assert ablation.main(argv) == 2
    message = capsys.readouterr().err
    assert str(record) in message and "not valid JSON" in message and "Traceback" not in message
    assert report.read_text() == "# Results\n"


def test_an_unknown_row_key_is_refused_before_any_work(tmp_path, capsys):
    ablation = import_ablation()
    argv = ["--protocol", "cpu", "--only", "dc", "--rows", "source=mixd", "--out", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as exit_info:
        ablation.main(argv)
    assert exit_info.value.code == 2
    assert "source=mixd" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_killed_distillation_keeps_its_time_up_to_its_last_log_line_when_the_row_resumes(
    tmp_path, monkeypatch
):
    ablation = import_ablation()
    setup = ablation.PROTOCOLS["tiny"]()
    row = next(r for r in ablation.rows_of("dm", setup) if r.key == "source=random")
    folder = tmp_path / "tiny" / "dm" / row.key

    def killed(command, log, threads):
        log.write_text("stage 1 it 0\n")
        raise KeyboardInterrupt  # stands in for a kill: nothing after this line runs

    monkeypatch.setattr(ablation, "run_logged", killed)
    with pytest.raises(KeyboardInterrupt):
        ablation.run_row(row, setup, tmp_path, threads=1)
    started = json.loads((folder / "timing.json").read_text())["distill_started"]
    log = folder / "log.txt"
    os.utime(log, (started + 100, started + 100))  # its last log line came 100 s after the start

    monkeypatch.setattr(ablation, "run_logged", lambda command, log, threads: 5.0)
    ablation.run_row(row, setup, tmp_path, threads=1)
    seconds = json.loads((folder / "timing.json").read_text())
    assert seconds == {"distill": pytest.approx(105.0), **{f"eval_{name}": 5.0 for name in row.evals}}
    assert (folder / "distilled").exists()


def test_a_row_turns_on_only_the_features_its_key_names_whatever_its_config_ships(tmp_path):
    ablation = import_ablation()
    from pdd_hub.config import load_config, parse_recipe_args, resolve_config

    setup = ablation.PROTOCOLS["cpu"]()
    assert load_config(resolve_config("cifar10_idc_cpu")).forgetting.mode == "band"  # what IDC ships
    rows = {row.key: row for row in ablation.rows_of("idc", setup)}

    def config_of(key: str):
        return parse_recipe_args(ablation.distill_command(rows[key], setup, tmp_path)[4:])

    plain = config_of("source=start_states")
    assert (plain.forgetting.mode, plain.init, plain.real_sampling) == ("off", "real", "uniform")
    assert config_of("alone").forgetting.mode == "off"
    assert config_of("source=start_states+forgetting=band").forgetting.mode == "band"
    assert ablation.shipped_feature("idc", setup) == "+forgetting=band"
    assert ablation.shipped_feature("dm", setup) == ""


def test_the_verdict_names_the_shipped_feature_and_keeps_the_plain_row_beside_it():
    ablation = import_ablation()
    setup = ablation.PROTOCOLS["cpu"]()
    rows = ablation.rows_of("idc", setup)

    def record(*means: float) -> dict:
        points = [{"mean": m / 100, "std": 0.002} for m in means]
        return {"evals": {"E": {setup.model: points}}}

    found = {
        "alone": {"evals": {**record(44.0)["evals"], "PxE": record(45.0)["evals"]["E"]}},
        "source=start_states": record(40.0, 42.0),
        "source=start_states+forgetting=band": record(41.0, 47.0),
    }
    shipped = ablation.shipped_row(rows)
    banded = ablation.verdict("idc", shipped, found, setup, feature="+forgetting=band")
    plain = ablation.verdict("idc", shipped, found, setup)
    assert "with the shipped settings (`source=start_states+forgetting=band`) 47.00 ± 0.20" in banded
    assert "IDC alone (`alone`) 45.00 ± 0.20" in banded and "+2.00 points" in banded
    assert "holds." in banded and "does not hold" not in banded
    assert "without `forgetting=band` (`source=start_states`) 42.00 ± 0.20" in plain
    assert "-3.00 points" in plain and "does not hold" in plain
    assert ablation.verdict("idc", shipped, found, setup, longer=True) is None  # no 300-iteration rows

    def control() -> str | None:
        banded = "+forgetting=band"
        return ablation.verdict("idc", shipped, found, setup, feature=banded, control=ablation.CONTROL)

    assert control() is None  # the control row has no record yet
    easy = {"evals": {**record(47.5)["evals"], "PxE": record(46.0)["evals"]["E"]}}
    found["alone+init=unforgettable"] = easy
    line = control()
    assert "IDC alone from its least-forgotten examples (`alone+init=unforgettable`) 47.50 ± 0.20" in line
    assert "-0.50 points" in line and "does not hold" in line


def test_the_control_row_starts_x_alone_from_its_least_forgotten_examples(tmp_path):
    ablation = import_ablation()
    from pdd_hub.config import parse_recipe_args

    setup = ablation.PROTOCOLS["cpu"]()
    rows = {row.key: row for row in ablation.rows_of("idc", setup)}

    def config_of(key: str):
        return parse_recipe_args(ablation.distill_command(rows[key], setup, tmp_path)[4:])

    config, alone = config_of("alone+init=unforgettable"), config_of("alone")
    assert (config.init, config.num_stages, config.ipc_per_stage) == ("unforgettable", 1, 10)
    assert (config.scoring.runs, config.scoring.epochs) == (2, 30)  # the bands' scoring networks
    assert config.iterations == alone.iterations and config.forgetting.mode == "off"
    assert rows["alone+init=unforgettable"].evals == rows["alone"].evals
    longer = config_of("alone+iterations=300+init=unforgettable")  # the control of the 300-iteration rows
    assert (longer.init, longer.num_stages, longer.iterations) == ("unforgettable", 1, 300)
    assert (longer.scoring.runs, longer.scoring.epochs) == (2, 30)


@pytest.mark.parametrize("flag", ["--jobs", "--threads"])
def test_a_non_positive_job_or_thread_count_is_refused_before_any_work(tmp_path, capsys, flag):
    ablation = import_ablation()
    argv = ["--protocol", "tiny", "--only", "dm", flag, "0", "--out", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as exit_info:
        ablation.main(argv)
    assert exit_info.value.code == 2
    assert f"{flag} must be positive (an integer, at most" in (err := capsys.readouterr().err)
    assert err.rstrip().endswith("got 0")
    assert not (tmp_path / "runs").exists()


def test_each_row_runs_with_the_threads_asked_for_or_the_usable_cores_split_between_the_jobs(
    tmp_path, monkeypatch
):
    ablation = import_ablation()
    setup = ablation.PROTOCOLS["tiny"]()
    rows = ablation.rows_of("dm", setup)[:2]
    seen: list[int] = []
    monkeypatch.setattr(ablation, "run_row", lambda row, protocol, out, threads: seen.append(threads))
    monkeypatch.setattr(ablation, "keep_record", lambda *args: None)
    monkeypatch.setattr(ablation, "physical_cores_available", lambda: 8)
    assert ablation.run_all(setup, rows, tmp_path, tmp_path, jobs=2) == 0
    assert ablation.run_all(setup, rows, tmp_path, tmp_path, jobs=2, threads=1) == 0
    assert seen == [4, 4, 1, 1]
