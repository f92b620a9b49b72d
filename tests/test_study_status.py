"""`python -m studies status`: each study's runs by outcome, and where and how far each running run is, while
runs train and after; what it says where there is nothing to show."""
import json
import os
import re
import socket

import pytest

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


def test_status_counts_a_run_that_retry_failed_trains_again_as_running_and_to_resume_if_that_stops(tmp_path, capsys):
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
    study.tell(retry.number, state=TrialState.FAIL)  # the retry was killed: the next launch resumes it, as any run
    close_storage(storage)
    assert studies_main(["status", "--out", str(out)]) == 0
    assert capsys.readouterr().out == "mlp_activation: 1 to resume\n"


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
    from studies.plan import RUNS_FOLDER

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
