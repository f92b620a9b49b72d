"""The tools that time issue 4's GPU targets, on a CPU: the study timer and the target check, each through its dry
run (fake data, tiny models) and with stand-in studies and runs whose verdicts, tables and order are known."""
import json
import os
import re
import sys
import tempfile
import types

import pytest
import torch

from helpers import Pipe
import tools
from training.errors import UserError

@pytest.mark.parametrize("code", [130, 2])  # interrupted; an input refused in one line, nothing trained
def test_the_study_timer_stops_at_a_study_that_was_interrupted_or_refused(code, capsys, monkeypatch,
                                                                          scratch_checked):
    from tools import time_studies

    studies = []
    monkeypatch.setattr(time_studies, "studies_main", lambda argv: studies.append(argv[1]) or code)
    with pytest.raises(SystemExit) as stop:
        tools.run_cli(lambda: time_studies.main(["--dry_run"]))
    assert stop.value.code == code and studies == ["mlp_activation"]
    assert "took" not in capsys.readouterr().out  # no time is given for a study cut short or never run


@pytest.fixture
def stand_in_studies(monkeypatch):
    """The study timer with stand-ins: studies that log known seconds, a clock and a CUDA that record each call
    in ``events``, and a study exit code that a test may set (``codes``)."""
    from tools import time_studies

    events, codes = [], {}
    logged = {"mlp_activation": [{"train_seconds": [1.0, 2.0], "valid_seconds": [0.5]}, {"train_seconds": [3.0]}, {}],
              "resnet18_lr": [{"train_seconds": [4.0], "valid_seconds": [1.0, 1.5]}],
              "mlpmixer_patch": [{"train_seconds": [2.25], "valid_seconds": [0.25]}]}
    ticks = iter([0.0, 10.0, 10.0, 30.5, 30.5, 70.0])

    def studies_main(argv):
        events.append(argv)
        return codes.get(argv[1], 0)
    monkeypatch.setattr(time_studies, "studies_main", studies_main)
    monkeypatch.setattr(time_studies, "load_runs", lambda study_dir: [{"results": results} for results in
                                                                      logged[os.path.basename(study_dir)]])
    monkeypatch.setattr(time_studies, "time", types.SimpleNamespace(perf_counter=lambda: events.append("clock")
                                                                    or next(ticks)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: events.append("synchronize"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Stand-in GPU")
    return time_studies, events, codes


@pytest.mark.parametrize("workers, dry_run, device", [(1, False, "Stand-in GPU"), (2, False, "Stand-in GPU"),
                                                      (1, True, "cpu")])  # a dry run trains on the CPU
def test_the_study_timer_times_each_study_after_a_synchronize_and_sums_what_its_runs_logged(workers, dry_run, device,
                                                                                         capsys, stand_in_studies):
    time_studies, events, _ = stand_in_studies
    flags = {"mlp_activation": ["--a"], "resnet18_lr": [], "mlpmixer_patch": ["--b", "c"]}
    cli = time_studies.parse_args(["--workers", str(workers), *(["--dry_run"] if dry_run else [])])
    assert time_studies.time_studies(cli, "OUT", flags, ["--common"]) == 0
    runs = [["run", name, "--out", "OUT", "--workers", str(workers), "--common", *flags[name]] for name in flags]
    assert events == [step for run in runs for step in ("synchronize", "clock", run, "synchronize", "clock")] + [
        ["report", "--out", "OUT"]]
    out = capsys.readouterr().out
    assert ("time_studies: mlp_activation took 10.0 s (its runs logged 6.0 s of training and 0.5 s of validation), "
            "10.0 s so far\n") in out
    assert "time_studies: mlpmixer_patch took 39.5 s (its runs logged 2.2 s of training and 0.2 s of validation), " \
           "70.0 s so far\n" in out
    rest = {1: ["3.5", "14.0", "37.0", "54.5"], 2: ["-"] * 4}[workers]  # overlapping workers leave no rest
    assert out.endswith(f"\nstudies 1-3 on {device}, {workers} worker(s) per study:\n"
                        f"  study              wall s  train s  valid s   rest s\n"
                        f"  mlp_activation       10.0      6.0      0.5 {rest[0]:>8}\n"
                        f"  resnet18_lr          20.5      4.0      2.5 {rest[1]:>8}\n"
                        f"  mlpmixer_patch       39.5      2.2      0.2 {rest[2]:>8}\n"
                        f"  total                70.0     12.2      3.2 {rest[3]:>8}\n"
                        "  target: a total wall time under 240 s\n")


@pytest.mark.parametrize("given_out", [True, False])
def test_the_study_timer_on_a_gpu_runs_each_study_on_cuda_with_the_data_and_into_the_folder_given(
        given_out, stand_in_studies, capsys, monkeypatch, tmp_path):
    time_studies, events, _ = stand_in_studies
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = str(tmp_path / "new") if given_out else None
    assert time_studies.main(["--data_dir", "my/data", *(["--out", out] if out else [])]) == 0
    runs = [event for event in events if isinstance(event, list)]
    out = out or runs[0][3]  # else a new folder of its own, kept with the runs' logs
    assert os.path.dirname(out) == str(tmp_path)
    assert runs == [["run", name, "--out", out, "--workers", "1", "--data_dir", "my/data", "--device", "cuda"]
                    for name in time_studies.GRID_STUDIES] + [["report", "--out", out]]
    assert "\nstudies 1-3 on Stand-in GPU, 1 worker(s) per study:\n" in capsys.readouterr().out


def test_the_study_timer_flushes_each_studys_time_before_the_next_study_starts(stand_in_studies, monkeypatch):
    time_studies, _, _ = stand_in_studies
    pipe, flushed_at_each_start = Pipe(), []
    studies_main = time_studies.studies_main
    monkeypatch.setattr(sys, "stdout", pipe)
    monkeypatch.setattr(time_studies, "studies_main",
                        lambda argv: flushed_at_each_start.append(pipe.flushed.count(" took ")) or studies_main(argv))
    time_studies.time_studies(time_studies.parse_args([]), "OUT", {name: [] for name in time_studies.GRID_STUDIES}, [])
    assert flushed_at_each_start == [0, 1, 2, 3]  # three studies, then the report


def test_the_study_timer_gives_the_time_of_a_study_whose_worker_failed_then_stops(capsys, stand_in_studies):
    time_studies, events, codes = stand_in_studies
    codes["resnet18_lr"] = 1  # a worker process that crashed
    with pytest.raises(SystemExit, match="^error: study resnet18_lr exited with 1$"):
        time_studies.time_studies(time_studies.parse_args([]), "OUT", {name: [] for name in time_studies.GRID_STUDIES},
                                  [])
    assert [event[1] for event in events if isinstance(event, list)] == ["mlp_activation", "resnet18_lr"]
    assert capsys.readouterr().out.splitlines()[-1].startswith("time_studies: resnet18_lr took 20.5 s")


def test_the_study_timer_defaults_are_those_its_usage_states():
    from tools import time_studies

    cli = time_studies.parse_args([])
    assert (cli.data_dir, cli.out, cli.workers, cli.dry_run) == ("./data", None, 1, False)


def test_time_studies_dry_run_times_studies_one_to_three(capsys, scratch_checked):
    from tools import time_studies

    assert time_studies.main(["--dry_run"]) == 0
    out = capsys.readouterr().out
    rows = {name: [float(value) for value in values.split()] for name, values in
            re.findall(r"^  (mlp_activation|resnet18_lr|mlpmixer_patch|total) +([\d. -]+)$", out, re.MULTILINE)}
    assert set(rows) == {"mlp_activation", "resnet18_lr", "mlpmixer_patch", "total"}
    for wall, train, valid, rest in rows.values():
        assert wall > 0 and abs(wall - train - valid - rest) < 0.15  # each rounded to 0.1 s
    assert rows["total"][1] > 0 and rows["total"][2] > 0  # the runs' logged seconds were found
    assert [sum(column) for column in zip(*(rows[name] for name in rows if name != "total"))] == pytest.approx(
        rows["total"], abs=0.2)
    assert re.search(r"^time_studies: resnet18_lr took \d+\.\d s \(its runs logged \d+\.\d s of training and "
                     r"\d+\.\d s of validation\), \d+\.\d s so far$", out, re.MULTILINE)


def test_check_targets_dry_run_prints_a_verdict_per_model(capsys, scratch_checked):
    from tools import check_targets

    assert check_targets.main(["--dry_run", "--epochs", "2"]) == 0  # a main.py flag overrides the recipe's
    out = capsys.readouterr().out
    assert re.search(r"^resnet18 +42 +2 +[\d.]+ +[\d.]+ +[\d.]+  >= 93% in <= 60 s +(met|missed)$", out,
                     re.MULTILINE)
    assert re.search(r"^mlpmixer +42 +2 .*>= 87% in <= 300 s +(met|missed)$", out, re.MULTILINE)
    # by default one run per model, the quicker ResNet18 first, and no mean over seeds
    assert re.findall(r"^(\w+) +\d+ +2 ", out, re.MULTILINE) == ["resnet18", "mlpmixer"] and " over " not in out
    with pytest.raises(SystemExit):
        check_targets.main(["--dry_run", "--no_such_flag"])
    assert "unrecognized arguments: --no_such_flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check_targets.main(["--dry_run", "--models", "vit"])
    assert "argument --models: invalid choice: 'vit'" in capsys.readouterr().err


@pytest.mark.parametrize("flags, compiled", [([], {"resnet18": False, "mlpmixer": False}),
                                              (["--compile"], {"resnet18": True, "mlpmixer": True})])
def test_check_targets_dry_run_leaves_out_the_recipes_compile_but_not_a_users(flags, compiled, monkeypatch,
                                                                               scratch_checked):
    from tools import check_targets

    assert "--compile" in check_targets.RECIPES["mlpmixer"]["flags"]  # else this test checks nothing
    runs = {}
    monkeypatch.setattr(tools, "fit", lambda args: runs.update({args.model: args.compile}) or {
        "status": "completed", "test_acc": 0.5, "train_seconds": [1.0], "epochs_completed": 1, "device_name": "cpu"})
    assert check_targets.main(["--dry_run", *flags]) == 0
    assert runs == compiled


def test_check_targets_on_a_gpu_trains_each_published_recipe_on_the_data_given(capsys, monkeypatch, tmp_path):
    from config import get_config_parser
    from tools import check_targets

    runs = []

    def fit(args):
        with open(args.model_config) as f:
            runs.append((args, json.load(f)))
        return {"status": "completed", "test_acc": 0.95, "train_seconds": [1.0], "epochs_completed": 1,
                "device_name": "a stand-in"}
    monkeypatch.setattr(tools, "fit", fit)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=re.escape("needs CUDA (or --dry_run)")):
        check_targets.main(["--data_dir", "my/data"])
    assert runs == [] and os.listdir(tmp_path) == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert check_targets.main(["--data_dir", "my/data", "--epochs", "3"]) == 0
    folder, = re.findall(r"^each run's results.json and checkpoint go to (.+)$", capsys.readouterr().out, re.MULTILINE)
    assert os.path.dirname(folder) == str(tmp_path)  # kept after the script ends, with every run's logs
    assert [args.model for args, _ in runs] == ["resnet18", "mlpmixer"]
    for args, model_config in runs:
        recipe = check_targets.RECIPES[args.model]
        assert model_config == recipe["model_config"]  # the recipe's model, not the dry run's tiny one
        assert (model_config["num_classes"], model_config.get("img_size", 32)) == (10, 32)  # CIFAR-10's
        logdir = os.path.join(folder, f"{args.model}_seed-42")
        assert (args.data_dir, args.logdir, args.epochs) == ("my/data", logdir, 3)
        published = vars(get_config_parser().parse_args(recipe["flags"]))
        assert {name for name, value in published.items() if vars(args)[name] != value} == {
            "model", "model_config", "data_dir", "logdir", "no_progress", "epochs"}


def test_check_targets_judges_several_seeds_on_their_mean(capsys, scratch_checked):
    from tools import check_targets

    assert check_targets.main(["--dry_run", "--models", "mlpmixer", "--seeds", "2", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    runs = re.findall(r"^mlpmixer +(\d+) +1 +[\d.]+ +[\d.]+ +([\d.]+)  ", out, re.MULTILINE)
    assert [seed for seed, _ in runs] == ["7", "8"]
    accs = [float(acc) for _, acc in runs]
    mean = re.search(r"^mlpmixer over 2 seeds: test accuracy ([\d.]+) ± ([\d.]+) \(2 of 2 runs completed\), longest "
                     r"training [\d.]+ s; target >= 87% in <= 300 s: (met|missed)$", out, re.MULTILINE)
    assert mean and float(mean.group(1)) == pytest.approx(sum(accs) / 2, abs=1e-4)
    assert mean.group(3) == ("met" if sum(accs) / 2 >= 0.87 else "missed")
    with pytest.raises(UserError, match="--seeds must be at least 1, got 0"):
        check_targets.main(["--dry_run", "--seeds", "0"])


def test_check_targets_meets_a_target_only_with_the_accuracy_in_the_time_and_a_completed_run(capsys, monkeypatch,
                                                                                              scratch_checked):
    from tools import check_targets

    outcomes = {42: ("completed", 0.93, [30.0, 30.0]),  # both bounds reached exactly: met
                43: ("completed", 0.95, [30.0, 30.5]),  # half a second over the budget
                44: ("completed", 0.9299, [20.0]),
                45: ("diverged", None, [10.0]),
                46: ("completed", 0.97, [15.0])}

    def fit(args):
        status, test_acc, seconds = outcomes[args.seed]
        return {"status": status, "test_acc": test_acc, "train_seconds": seconds, "epochs_completed": len(seconds),
                "device_name": "a stand-in"}
    monkeypatch.setattr(tools, "fit", fit)
    clock = iter(range(0, 1000, 4))  # each run's wall time, taken around its fit, is 4 s
    monkeypatch.setattr(check_targets, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))

    def verdicts(seed, seeds):
        argv = ["--dry_run", "--models", "resnet18", "--seed", str(seed), "--seeds", str(seeds)]
        assert check_targets.main(argv) == 0
        out = capsys.readouterr().out
        rows = re.findall(r"^resnet18 +(\d+) +\d+ +([\d.]+) +4\.0 +([\d.na]+)  >= 93% in <= 60 s +(.+)$", out,
                          re.MULTILINE)
        return [(int(seed), float(train_s), test_acc, verdict) for seed, train_s, test_acc, verdict in rows], out
    rows, out = verdicts(42, 5)
    assert rows == [(42, 60.0, "0.9300", "met"), (43, 60.5, "0.9500", "missed"), (44, 20.0, "0.9299", "missed"),
                    (45, 10.0, "nan", "missed (diverged)"), (46, 15.0, "0.9700", "met")]
    assert re.search(r"^resnet18 over 5 seeds: test accuracy 0\.9450 ± 0\.0192 \(4 of 5 runs completed\), longest "
                     r"training 60\.5 s; target >= 93% in <= 60 s: missed$", out, re.MULTILINE)
    _, out = verdicts(43, 2)  # a mean above the target, but one run over the budget
    assert out.rstrip().endswith("longest training 60.5 s; target >= 93% in <= 60 s: missed")
    _, out = verdicts(45, 2)  # a mean above the target, but one run did not complete
    assert out.rstrip().endswith("(1 of 2 runs completed), longest training 15.0 s; target >= 93% in <= 60 s: missed")
    outcomes[47] = ("completed", 0.9201, [40.0])
    _, out = verdicts(46, 2)  # every run completed in time, the mean 0.94505
    assert out.rstrip().endswith("test accuracy 0.9450 ± 0.0353 (2 of 2 runs completed), longest training 40.0 s; "
                                 "target >= 93% in <= 60 s: met")
    outcomes[47] = ("completed", 0.8899, [40.0])
    _, out = verdicts(46, 2)  # the mean 0.92995, which 4 decimals would show as 0.9300
    assert out.rstrip().endswith("test accuracy 0.92995 ± 0.0566 (2 of 2 runs completed), longest training 40.0 s; "
                                 "target >= 93% in <= 60 s: missed")
    outcomes[43] = ("completed", 0.93, [59.0, 1.0])
    _, out = verdicts(42, 2)  # the mean and the longest run exactly at their bounds
    assert out.rstrip().endswith("test accuracy 0.9300 ± 0.0000 (2 of 2 runs completed), longest training 60.0 s; "
                                 "target >= 93% in <= 60 s: met")


@pytest.mark.parametrize("flags, message", [
    (["--logdir", "runs/mine"], "--logdir: each run gets a new folder, so that no seed's run writes over another's"),
    (["--model", "mlp"], "--model: the script trains each recipe's own model (choose them with --models)"),
    (["--model_config", "model_configs/mlpmixer.json"], "--model_config: each recipe has its own model config"),
    (["--resume"], "--resume: each run starts afresh in a new folder"),
])
def test_check_targets_refuses_the_flags_it_sets_for_each_run(flags, message, monkeypatch):
    from tools import check_targets

    monkeypatch.setattr(tools, "fit", lambda args: pytest.fail("a run was started"))
    with pytest.raises(UserError, match=re.escape(message) + ".*; remove it$"):
        check_targets.main(["--dry_run", "--seeds", "2", *flags])


def test_check_targets_refuses_seeds_past_numpys_largest(monkeypatch, capsys, scratch_checked):
    from tools import check_targets

    seeds = []
    monkeypatch.setattr(tools, "fit", lambda args: seeds.append(args.seed) or {
        "status": "completed", "test_acc": 0.5, "train_seconds": [1.0], "epochs_completed": 1, "device_name": "cpu"})
    with pytest.raises(UserError, match=re.escape("--seeds 2 from --seed 4294967295 passes numpy's largest seed "
                                                  "(4294967295); lower --seed")):
        check_targets.main(["--dry_run", "--models", "resnet18", "--seed", "4294967295", "--seeds", "2"])
    assert seeds == []
    assert check_targets.main(["--dry_run", "--models", "resnet18", "--seed", "4294967294", "--seeds", "2"]) == 0
    assert seeds == [4294967294, 4294967295]
