"""What the studies' commands show: `run all` running every study then the report, the launch of workers and what
it says of theirs, and the console lines of workers. `status` is in test_study_status.py, the studies' grids and
searches in test_studies.py."""
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT, minutes_pass_per_validation
from studies import worker as study_worker
from studies.__main__ import main as studies_main
from training.cifar10 import load_cifar10


def test_run_all_runs_every_study_then_writes_the_report(study_args, tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    import studies.__main__ as cli
    import studies.report as report
    from studies.definitions import STUDIES, Dimension

    few = {"mlp_activation": STUDIES["mlp_activation"],
           "mlp_search": replace(STUDIES["resnet18_best"], name="mlp_search", model="mlp", trials=2, visualize=False,
                                 space=(Dimension("lr", "float", (1e-4, 1e-2), log=True),))}
    monkeypatch.setattr(cli, "STUDIES", few)
    monkeypatch.setattr(report, "STUDIES", few)
    minutes_pass_per_validation(monkeypatch, clock_at_claims=600.0)  # spent at once: the search trains one trial
    argv = study_args("mlp_activation", "--search_minutes", "5")  # for the search; the grid, refused it alone, runs
    argv[1] = "all"
    assert studies_main(argv) == 0
    assert "study mlp_activation: 3 completed\n" in capsys.readouterr().out
    with open(tmp_path / "out" / "report" / "report.md") as f:
        text = f.read()
    assert "## mlp_activation:" in text and "## mlp_search:" in text and "1 search trial finished" in text
    assert "Unreadable" not in text


def test_run_all_stops_at_a_study_whose_workers_failed(study_args, tmp_path, monkeypatch, capsys):
    import studies.__main__ as cli

    started = []

    def workers_interrupted_in_the_first_study(plan, options, argv):
        started.append((plan.study.name, argv[argv.index("run") + 1], options.workers, plan.data_fingerprint))
        return 130
    monkeypatch.setattr(cli, "run_study", workers_interrupted_in_the_first_study)
    argv = study_args("mlp_activation", "--workers", "2")
    argv[1] = "all"
    position = argv.index("--model_config")  # the studies of all train three models: none is given one config
    del argv[position:position + 2]
    assert studies_main(argv) == 130
    fingerprint = load_cifar10(argv[argv.index("--data_dir") + 1]).fingerprint()
    assert started == [("mlp_activation", "mlp_activation", 2, fingerprint)]
    assert ("study mlp_activation: a worker exited with status 130, so the studies after it did not start; "
            "rerun the same command to resume") in capsys.readouterr().err
    assert not (tmp_path / "out" / "report").exists()


def test_a_launched_worker_says_its_own_error_and_leaves_only_a_refused_output_to_its_launch(study_args, monkeypatch,
                                                                                             capsys):
    """Only a refused standard output, which the workers share with their launch, is the launch's to say once; any
    other stop (a full disk under a run's files) is the worker's own, and said by it."""
    import studies.__main__ as cli
    from studies.launch import LAUNCHED_WORKER, OUTPUT_REFUSED_STATUS
    from training.errors import OutputRefused, UserError

    def stopping_with(error):
        def run_study(*args):
            raise error
        return run_study
    monkeypatch.setenv(LAUNCHED_WORKER, "1")
    monkeypatch.setattr(cli, "run_study", stopping_with(UserError("cannot write train.log (No space left on device)")))
    assert studies_main(study_args("mlp_activation")) == 2
    assert capsys.readouterr().err == "error: cannot write train.log (No space left on device)\n"
    monkeypatch.setattr(cli, "run_study", stopping_with(OutputRefused("No space left on device")))
    assert studies_main(study_args("mlp_activation")) == OUTPUT_REFUSED_STATUS
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("workers, launched", [("1", None), ("2", 2), ("3", 3)])
def test_one_worker_trains_in_the_launching_process_and_more_are_started_as_processes(study_args, monkeypatch,
                                                                                       workers, launched):
    import studies.__main__ as cli

    launches, in_process = [], []
    monkeypatch.setattr(cli, "launch_workers", lambda count, argv, device: launches.append((count, device)) or 0)
    monkeypatch.setattr(cli, "work", lambda plan, study, lock: in_process.append(plan.study.name))
    assert studies_main(study_args("mlp_activation", "--workers", workers)) == 0
    assert launches == ([] if launched is None else [(launched, "cpu")])
    assert in_process == (["mlp_activation"] if launched is None else [])


@pytest.mark.parametrize("name", ["SIGKILL", "SIGHUP"])  # the OOM killer's; a closed terminal's, signal 1
def test_a_worker_killed_by_a_signal_is_named_and_the_launch_exits_as_a_shell_reports_it(name, monkeypatch, capsys):
    import signal

    import studies.launch as launch

    real_popen, commands = subprocess.Popen, []

    def popen(command, env):
        commands.append(command)
        kill = len(commands) == 2  # the second worker is killed; the first ends well
        # SIGHUP's default action restored first: under nohup the tests inherit SIGHUP ignored
        dies = f"import os, signal; signal.signal(signal.SIGHUP, signal.SIG_DFL); os.kill(os.getpid(), signal.{name})"
        return real_popen([sys.executable, "-c", dies if kill else "pass"], env=env)
    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    handler = signal.getsignal(signal.SIGTERM)
    assert launch.launch_workers(2, ["run", "mlp_activation"], "cpu") == 128 + signal.Signals[name]
    assert signal.getsignal(signal.SIGTERM) is handler  # its pass-on handler lasts only while the workers run
    err = capsys.readouterr().err
    assert re.fullmatch(rf"a worker \(pid \d+\) was killed by {name}; rerun the same command to complete what it "
                        r"left\n", err), err
    assert commands == [[sys.executable, "-m", "studies", "run", "mlp_activation", "--workers", "1"]] * 2
    monkeypatch.setattr(launch.subprocess, "Popen", lambda command, env: real_popen([sys.executable, "-c", "pass"]))
    assert launch.launch_workers(2, ["run", "mlp_activation"], "cpu") == 0 and capsys.readouterr().err == ""


def test_a_worker_that_could_not_write_the_output_decides_the_launchs_status_whatever_the_others_did(monkeypatch):
    """Its launch then says it once, for all of them (``test_output_streams``), even where another worker stopped
    with a higher status."""
    import studies.launch as launch

    real_popen, statuses = subprocess.Popen, iter([130, launch.OUTPUT_REFUSED_STATUS, 0])
    monkeypatch.setattr(launch.subprocess, "Popen", lambda command, env: real_popen(
        [sys.executable, "-c", f"raise SystemExit({next(statuses)})"], env=env))
    assert launch.launch_workers(3, ["run", "mlp_activation"], "cpu") == launch.OUTPUT_REFUSED_STATUS


def test_a_signal_without_a_name_is_given_by_its_number():
    from studies.launch import signal_name

    assert (signal_name(9), signal_name(200)) == ("SIGKILL", "signal 200")


def test_run_all_gives_each_studys_workers_its_name_where_all_named_the_study_not_where_a_flag_is_all():
    from studies.__main__ import _one_study_argv

    argv = ["run", "--out", "all", "all", "--data_dir", "all", "--workers", "2"]
    assert _one_study_argv(argv, "resnet18_lr") == ["run", "--out", "all", "resnet18_lr", "--data_dir", "all",
                                                    "--workers", "2"]


@pytest.mark.parametrize("given", [["--search_minutes", "30"], ["--search_minutes=30"]])
def test_run_all_gives_search_minutes_to_the_workers_of_a_search_and_not_to_those_of_a_grid(given):
    from studies.__main__ import _one_study_argv

    argv = ["run", "all", *given, "--workers", "2"]
    assert _one_study_argv(argv, "resnet18_best") == ["run", "resnet18_best", *given, "--workers", "2"]
    assert _one_study_argv(argv, "resnet18_lr") == ["run", "resnet18_lr", "--workers", "2"]


def test_a_study_prints_its_own_lines_and_none_of_optunas_log(study_args):
    result = subprocess.run([sys.executable, "-m", "studies", *study_args("mlp_activation", "--values", "relu,tanh")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("study mlp_activation: Which activation") and "trial 1: completed" in result.stdout
    # before each run, where the whole study stands
    assert re.findall(r"^study mlp_activation: (.*)\ntrial \d \(grid\)", result.stdout, re.MULTILINE) == [
        "1 running, 1 waiting", "1 completed, 1 running"]
    assert not re.search(r"^\[[A-Z] \d{4}-\d\d-\d\d ", result.stdout + result.stderr, re.MULTILINE), result.stderr


def test_workers_write_each_console_line_in_one_write_and_flush_it(study_args, monkeypatch):
    class Terminal:  # what several workers' lines land on: a line split over two writes could be cut in two, and
        def __init__(self):  # one left in a worker's buffer (stdout a pipe or a file) would show up minutes late
            self.writes, self.flushed_after = [], []

        def write(self, text):
            self.writes.append(text)
            return len(text)

        def flush(self):
            self.flushed_after.append(len(self.writes))
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert studies_main(study_args("mlp_activation", "--values", "relu", epochs=2)) == 0
    assert len(terminal.writes) == 7 and all(text.endswith("\n") and text.count("\n") == 1 for text in terminal.writes)
    starts = ("study mlp_activation: Which", "study mlp_activation: 1 running", "trial 0 (grid) -> ",
              "  activation-relu_seed-42: epoch 1/2,", "  activation-relu_seed-42: epoch 2/2,", "trial 0: completed",
              "study mlp_activation: 1 completed")
    assert all(text.startswith(start) for text, start in zip(terminal.writes, starts)), terminal.writes
    assert terminal.flushed_after == [1, 2, 3, 4, 5, 6, 7]


def test_a_runs_train_log_holds_each_epoch_as_soon_as_it_ends(study_args, tmp_path, monkeypatch):
    logged_at_epoch_end, epoch_callback = [], study_worker._epoch_callback

    def reading_the_log(study, trial, run_name, epochs, prune, console):
        on_epoch = epoch_callback(study, trial, run_name, epochs, prune, console)

        def read_then_go_on(epoch, history):
            with open(os.path.join(tmp_path, "out", "mlp_activation", "runs", run_name, "train.log")) as f:
                logged_at_epoch_end.append(f.read())
            return on_epoch(epoch, history)
        return read_then_go_on

    monkeypatch.setattr(study_worker, "_epoch_callback", reading_the_log)
    assert studies_main(study_args("mlp_activation", "--values", "relu", epochs=2)) == 0
    assert len(logged_at_epoch_end) == 2
    for epoch, text in enumerate(logged_at_epoch_end, start=1):
        assert re.search(rf"^ +{epoch} \|", text, re.MULTILINE), text


def test_each_runs_train_log_holds_the_warnings_that_run_gave(study_args, tmp_path):
    """As ``main.py`` would print them: Python shows a warning once per place in the code, and every run of a
    study reaches the same places, so a later run's log could lack them."""
    argv = study_args("mlpmixer_best", "--trials", "2", "--precision", "fp16", "--set", "embed_dim=16", "--set",
                      "num_blocks=1")  # the search's own sizes, emulated in fp16 on a CPU, take minutes
    done = subprocess.run([sys.executable, "-m", "studies", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    warning = "warning: --precision fp16 is for CUDA GPUs: a CPU usually emulates fp16, much slower than fp32\n"
    for run in ("trial-0000", "trial-0001", "final_seed-43"):
        with open(os.path.join(tmp_path, "out", "mlpmixer_best", "runs", run, "train.log")) as f:
            assert f.read().count(warning) == 1, run
    assert warning not in done.stderr  # the console gets each run's epochs, its log the rest

