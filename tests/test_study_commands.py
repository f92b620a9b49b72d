"""What the studies' commands show: `status` while runs train and after, `run all` running every study then the
report, and the console lines of workers. The studies' grids and searches are in test_studies.py."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from helpers import ROOT
from studies import worker as study_worker
from studies.__main__ import main as studies_main


def test_status_shows_outcomes_and_where_and_how_far_each_running_run_is(study_args, tmp_path, monkeypatch):
    import contextlib
    import io

    from studies.status import print_status

    out, seen = str(tmp_path / "out"), []
    real_fit = study_worker.fit

    def fit_looking_at_the_status(args, **kwargs):
        if "sigmoid" in args.logdir:  # the second run, one epoch in
            with open(os.path.join(args.logdir, "results.json"), "w") as f:
                json.dump({"epochs_completed": 1, "args": {"epochs": 3}}, f)
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            print_status(out, None)
        seen.append(printed.getvalue())
        return real_fit(args, **kwargs)
    monkeypatch.setattr(study_worker, "fit", fit_looking_at_the_status)
    assert studies_main(study_args("mlp_activation")) == 0
    assert [printed.splitlines()[0] for printed in seen] == ["mlp_activation: 1 running, 2 waiting",
                                                             "mlp_activation: 1 completed, 1 running, 1 waiting",
                                                             "mlp_activation: 2 completed, 1 running"]
    running = (rf"  activation-sigmoid_seed-42: running on {re.escape(socket.gethostname())} \(pid {os.getpid()}\), "
               rf"1 of 3 epochs done; last heard \d s ago\n")  # heard from when its run began, seconds ago
    assert re.fullmatch(rf"mlp_activation: 1 completed, 1 running, 1 waiting\n{running}", seen[1]), seen[1]
    assert re.search(r"activation-relu_seed-42: running .*, first epoch; last heard \d s ago\n$", seen[0]), seen[0]
    assert studies_main(["status", "--out", out]) == 0


def test_status_counts_a_running_runs_silence_from_its_last_heartbeat(tmp_path, capsys):
    import time

    import optuna

    from studies.storage import close_storage, open_storage

    out = tmp_path / "out"
    storage, _ = open_storage(None, str(out / "mlp_activation"))
    study = optuna.create_study(study_name="mlp_activation", storage=storage, direction="maximize")
    study.enqueue_trial({"activation": "relu", "seed": 42}, user_attrs={"run_dir": "activation-relu_seed-42",
                                                                        "role": "grid"})
    running = study.ask()  # started now, last heard from 100 s ago on another host (not yet taken for dead)
    for key, value in {"host": "node7", "pid": 4321, "heartbeat": time.time() - 100}.items():
        running.set_user_attr(key, value)
    close_storage(storage)
    assert studies_main(["status", "--out", str(out)]) == 0
    assert re.fullmatch(r"mlp_activation: 1 running\n  activation-relu_seed-42: running on node7 \(pid 4321\), first "
                        r"epoch; last heard 10[01] s ago\n", capsys.readouterr().out)


@pytest.mark.parametrize("logged, progress", [
    ({"train_seconds": [30.0, 5.0, 6.0], "valid_seconds": [1.0, 1.0, 1.0]}, "3 of 15 epochs done, about 78 s to go"),
    ({"train_seconds": [50.0], "valid_seconds": [10.0]}, "1 of 15 epochs done, about 14 min to go"),  # its only epoch
    ({"train_seconds": [30.0, 5.0], "valid_seconds": [1.0, 1.0]},  # the second
     "2 of 15 epochs done, about 78 s to go"),
    ({"train_seconds": [900.0, 899.0], "valid_seconds": [100.0, 101.0]}, "2 of 15 epochs done, about 3.6 h to go"),
    ({"train_seconds": [5.0, 5.0, "six"], "valid_seconds": [1.0, 1.0, 1.0]}, "3 of 15 epochs done"),  # edited by hand
    ({"train_seconds": [5.0, None], "valid_seconds": [1.0, 1.0]}, "2 of 15 epochs done"),
    ({}, "3 of 15 epochs done"),  # no timings
    ({"train_seconds": [5.0, float("inf")], "valid_seconds": [1.0, 1.0]}, "2 of 15 epochs done"),
    ({"epochs_completed": 14, "train_seconds": [88.0], "valid_seconds": [1.0]},
     "14 of 15 epochs done, about 89 s to go"),
    ({"epochs_completed": 14, "train_seconds": [89.0], "valid_seconds": [1.0]},
     "14 of 15 epochs done, about 2 min to go"),
    ({"epochs_completed": 14, "train_seconds": [5360.0], "valid_seconds": [10.0]},
     "14 of 15 epochs done, about 90 min to go"),
    ({"epochs_completed": 14, "train_seconds": [5390.0], "valid_seconds": [10.0]},
     "14 of 15 epochs done, about 1.5 h to go"),
    ({"epochs_completed": 15, "train_seconds": [5.0] * 15, "valid_seconds": [1.0] * 15},  # testing
     "15 of 15 epochs done"),
], ids=["seconds", "minutes", "first left out", "hours", "a string", "a null", "none", "infinite", "89 s", "90 s",
        "5370 s", "5400 s", "all epochs done"])
def test_status_says_how_long_a_running_runs_remaining_epochs_take_at_its_typical_epoch(tmp_path, capsys, logged,
                                                                                        progress):
    import optuna

    from studies.storage import close_storage, open_storage

    out = tmp_path / "out"
    storage, _ = open_storage(None, str(out / "mlp_activation"))
    study = optuna.create_study(study_name="mlp_activation", storage=storage, direction="maximize")
    study.enqueue_trial({"activation": "relu", "seed": 42}, user_attrs={"run_dir": "activation-relu_seed-42",
                                                                        "role": "grid"})
    study.ask().set_user_attr("host", "node7")
    close_storage(storage)
    run_dir = out / "mlp_activation" / "runs" / "activation-relu_seed-42"
    os.makedirs(run_dir)
    results = {"epochs_completed": len(logged.get("train_seconds", [0, 0, 0])), "args": {"epochs": 15}, **logged}
    (run_dir / "results.json").write_text(json.dumps(results))
    assert studies_main(["status", "--out", str(out)]) == 0
    assert f"running on node7 (pid ?), {progress}; last heard" in capsys.readouterr().out


def test_status_names_a_run_whose_worker_is_gone_one_claimed_this_instant_and_one_left_to_resume(tmp_path, capsys):
    import time

    import optuna
    from optuna.trial import TrialState

    from studies.storage import close_storage, open_storage

    out = tmp_path / "out"
    storage, _ = open_storage(None, str(out / "mlp_activation"))
    study = optuna.create_study(study_name="mlp_activation", storage=storage, direction="maximize")
    run_dirs = ["activation-relu_seed-42", "activation-tanh_seed-42", "activation-sigmoid_seed-42"]
    for run_dir in run_dirs:
        study.enqueue_trial({"seed": 42}, user_attrs={"run_dir": run_dir, "role": "grid"})
    silent, claimed_now, left = (study.ask() for _ in run_dirs)
    for key, value in {"host": "node8", "pid": 99, "heartbeat": time.time() - 1000}.items():
        silent.set_user_attr(key, value)  # on another host, silent for longer than a worker may be
    # claimed_now: asked for, its host, pid and heartbeat not yet written
    study.tell(left.number, state=TrialState.FAIL)  # as a claim tells the run of a gone worker: no outcome
    close_storage(storage)
    run_dir = out / "mlp_activation" / "runs" / "activation-relu_seed-42"
    os.makedirs(run_dir)
    (run_dir / "results.json").write_text(json.dumps({"epochs_completed": 3, "args": {"epochs": 15},
                                                      "train_seconds": [5.0] * 3, "valid_seconds": [1.0] * 3}))
    assert studies_main(["status", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.fullmatch(  # heard from when it was claimed, a moment ago; the gone worker's run has no time to go
        r"mlp_activation: 2 running, 1 to resume\n"
        r"  activation-relu_seed-42: running on node8 \(pid 99\), 3 of 15 epochs done; its worker is gone: the next "
        r"worker to claim a run resumes it\n"
        r"  activation-tanh_seed-42: running on an unknown host \(pid \?\), first epoch; last heard [01] s ago\n",
        printed), printed


def test_status_counts_a_run_that_retry_failed_trains_again_as_running_and_its_error_again_if_that_stops(tmp_path,
                                                                                                        capsys):
    import optuna
    from optuna.trial import TrialState

    from studies.storage import close_storage, open_storage

    out = tmp_path / "out"
    storage, _ = open_storage(None, str(out / "mlp_activation"))
    study = optuna.create_study(study_name="mlp_activation", storage=storage, direction="maximize")
    for outcome in ("error", None):  # the run raised an error; --retry_failed enqueued it again, and it trains
        study.enqueue_trial({"seed": 42}, user_attrs={"run_dir": "activation-relu_seed-42", "role": "grid"})
        retry = study.ask()
        retry.set_user_attr("host", "node7")
        if outcome:
            retry.set_user_attr("outcome", outcome)
            study.tell(retry.number, state=TrialState.FAIL)
    assert studies_main(["status", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("mlp_activation: 1 running\n  activation-relu_seed-42: running on node7 "), printed
    study.tell(retry.number, state=TrialState.FAIL)  # the retry was killed: without --retry_failed it stays an error
    close_storage(storage)
    assert studies_main(["status", "--out", str(out)]) == 0
    assert capsys.readouterr().out == "mlp_activation: 1 error\n"


@pytest.mark.parametrize("budget, line", [(24, "mlpmixer_best: search trials: 1 completed, 1 running (of 24)\n"),
                                          (None, "mlpmixer_best: search trials: 1 completed, 1 running\n")])
def test_status_gives_a_searchs_budget_where_its_launch_recorded_it(tmp_path, capsys, budget, line):
    import optuna

    from studies.storage import close_storage, open_storage

    out = tmp_path / "out"
    storage, _ = open_storage(None, str(out / "mlpmixer_best"))
    study = optuna.create_study(study_name="mlpmixer_best", storage=storage, direction="maximize")
    if budget is not None:  # a search launched by an older version has none
        study.set_user_attr("trials", budget)
    for number in range(2):
        trial = study.ask()
        trial.set_user_attr("role", "search")
        trial.set_user_attr("run_dir", f"trial-{number:04d}")
        if number == 0:
            trial.set_user_attr("outcome", "completed")
            study.tell(trial, 0.5)
    close_storage(storage)
    assert studies_main(["status", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(line)


def test_status_of_a_folder_without_studies_writes_nothing(tmp_path, capsys):
    none = tmp_path / "none"
    assert studies_main(["status", "--out", str(none)]) == 2
    assert capsys.readouterr().err == (f"error: no study has started in {none}; `python -m studies run NAME --out "
                                       f"{none}` starts one\n")
    assert not (tmp_path / "none").exists()


def test_status_of_runs_without_a_journal_names_every_study_they_belong_to(tmp_path, capsys):
    from studies.worker import RUNS_FOLDER

    for name in ("mlp_activation", "resnet18_lr"):
        os.makedirs(tmp_path / name / RUNS_FOLDER)
    assert studies_main(["status", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path} holds runs of mlp_activation, resnet18_lr but no "
                                              "study journal;")


def test_status_without_the_storage_that_a_study_ran_with_says_to_give_it(study_args, tmp_path, capsys):
    journal = str(tmp_path / "elsewhere.log")
    assert studies_main(study_args("mlp_activation", "--values", "relu", "--storage", journal)) == 0
    capsys.readouterr()
    out = str(tmp_path / "out")
    assert studies_main(["status", "--out", out]) == 2
    assert capsys.readouterr().err == (f"error: {out} holds runs of mlp_activation but no study journal; if they "
                                       "ran with --storage, give the same --storage to see them\n")
    assert studies_main(["status", "--out", out, "--storage", journal]) == 0
    assert capsys.readouterr().out == "mlp_activation: 1 completed\n"


def test_run_all_runs_every_study_then_writes_the_report(study_args, tmp_path, monkeypatch):
    from dataclasses import replace

    import studies.__main__ as cli
    import studies.report as report
    from studies.definitions import STUDIES, Dimension

    few = {"mlp_activation": STUDIES["mlp_activation"],
           "mlp_search": replace(STUDIES["resnet18_best"], name="mlp_search", model="mlp", trials=2, visualize=False,
                                 space=(Dimension("lr", "float", (1e-4, 1e-2), log=True),))}
    monkeypatch.setattr(cli, "STUDIES", few)
    monkeypatch.setattr(report, "STUDIES", few)
    argv = study_args("mlp_activation")
    argv[1] = "all"
    assert studies_main(argv) == 0
    with open(tmp_path / "out" / "report" / "report.md") as f:
        text = f.read()
    assert "## mlp_activation:" in text and "## mlp_search:" in text and "2 search trials finished" in text
    assert "Unreadable" not in text


def test_run_all_stops_at_a_study_whose_workers_failed(study_args, tmp_path, monkeypatch, capsys):
    import studies.__main__ as cli

    started = []

    def workers_interrupted_in_the_first_study(study, options, train_argv, argv):
        started.append((study.name, argv[argv.index("run") + 1], options.workers))
        return 130
    monkeypatch.setattr(cli, "run_study", workers_interrupted_in_the_first_study)
    argv = study_args("mlp_activation", "--workers", "2")
    argv[1] = "all"
    position = argv.index("--model_config")  # the studies of all train three models: none is given one config
    del argv[position:position + 2]
    assert studies_main(argv) == 130
    assert started == [("mlp_activation", "mlp_activation", 2)]
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


def test_a_study_prints_its_own_lines_and_none_of_optunas_log(study_args):
    result = subprocess.run([sys.executable, "-m", "studies", *study_args("mlp_activation", "--values", "relu")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("study mlp_activation: Which activation") and "trial 0: completed" in result.stdout
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
    assert len(terminal.writes) == 6 and all(text.endswith("\n") and text.count("\n") == 1 for text in terminal.writes)
    starts = ("study mlp_activation: Which", "trial 0 (grid) -> ", "  activation-relu_seed-42: epoch 1/2,",
              "  activation-relu_seed-42: epoch 2/2,", "trial 0: completed", "study mlp_activation: 1 completed")
    assert all(text.startswith(start) for text, start in zip(terminal.writes, starts)), terminal.writes
    assert terminal.flushed_after == [1, 2, 3, 4, 5, 6]


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

