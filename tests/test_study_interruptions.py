"""Problem 4's studies interrupted, on tiny fake data: a killed or stopped study resuming, an interrupted search
trial keeping its settings, a search ended early, a full disk and a broken GPU stopping a study in one line. Runs whose
worker was declared lost: ``test_study_lost_runs.py``."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from helpers import ROOT, jobs_of, load_study, read_json
from studies import worker as study_worker
from studies.__main__ import main as studies_main


def test_a_killed_study_resumes_its_run_from_the_checkpoint(study_args, tmp_path, capsys):
    out = str(tmp_path / "out")
    argv = study_args("mlp_activation", "--values", "relu", epochs=60)
    process = subprocess.Popen([sys.executable, "-m", "studies", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    results_path = os.path.join(out, "mlp_activation", "runs", "activation-relu_seed-42", "results.json")
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(results_path)
                                          and read_json(results_path)["epochs_completed"] >= 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = read_json(results_path)["epochs_completed"]
    assert 2 <= done_before < 60

    assert studies_main(argv) == 0
    assert "(resumed)" in capsys.readouterr().out
    results = read_json(results_path)
    assert results["status"] == "completed" and results["epochs_completed"] == 60
    assert results["args"]["resume"] is True
    states = jobs_of(load_study(out, "mlp_activation"))["activation-relu_seed-42"]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]  # the lost trial, then the one that finished


@pytest.mark.parametrize("whom", ["launcher", "job"])
def test_a_sigterm_stops_the_workers_and_keeps_their_runs(whom, study_args, tmp_path):
    """``kill`` or ``timeout`` signal the launcher only, which passes the stop on; a batch system signals every
    process of the job, so each worker gets it twice (its own, and the launcher's)."""
    out = str(tmp_path / "out")
    argv = study_args("mlp_activation", "--values", "relu", "tanh", "--workers", "2", "--no_progress", epochs=100000)
    process = subprocess.Popen([sys.executable, "-m", "studies", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    runs = [os.path.join(out, "mlp_activation", "runs", f"activation-{a}_seed-42") for a in ("relu", "tanh")]
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not all(os.path.exists(os.path.join(run, "results.json")) for run in runs):
            time.sleep(0.2)
        if whom == "launcher":
            process.send_signal(signal.SIGTERM)
        else:
            os.killpg(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err
    for run in runs:
        assert read_json(os.path.join(run, "results.json"))["status"] == "interrupted"


def test_a_study_whose_output_reader_leaves_stops_as_after_ctrl_c_and_a_rerun_completes_it(study_args, tmp_path,
                                                                                            capsys):
    """``python -m studies run ... | head``: the first line that finds the pipe closed stops the worker, which keeps
    its run to resume, instead of a traceback (or, inside a run, that run recorded as failed)."""
    argv = study_args("mlp_activation", "--values", "relu", "tanh", "--no_progress", epochs=20)
    process = subprocess.Popen([sys.executable, "-m", "studies", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    while " -> " not in process.stdout.readline():  # the first run has started; its epochs' lines come next
        pass
    process.stdout.close()
    assert process.wait(timeout=120) == 130
    with process.stderr:
        assert "Traceback" not in process.stderr.read()
    runs = tmp_path / "out" / "mlp_activation" / "runs"
    assert not (runs / "activation-relu_seed-42" / "trial.json").exists()  # not recorded as an outcome: resumed
    assert studies_main(argv) == 0
    assert "activation-relu_seed-42 (resumed)" in capsys.readouterr().out
    assert [read_json(runs / run / "trial.json")["outcome"] for run in sorted(os.listdir(runs))] == ["completed"] * 2


def _interrupted_after_first_epoch(real_fit, run_dir):
    """``fit`` as Ctrl-C after the first epoch of the run in ``run_dir`` leaves it."""
    def fit(args, on_epoch=None, **kwargs):
        def stop_after_first_epoch(epoch, history):
            raise KeyboardInterrupt
        return real_fit(args, on_epoch=stop_after_first_epoch if run_dir in args.logdir else on_epoch, **kwargs)
    return fit


def test_an_interrupted_search_trial_resumes_with_the_same_settings(study_args, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    argv = study_args("mlpmixer_best", "--trials", "2", "--set", "embed_dim=16", "--set", "num_blocks=1", epochs=2)
    real_fit = study_worker.fit
    monkeypatch.setattr(study_worker, "fit", _interrupted_after_first_epoch(real_fit, "trial-0001"))
    assert studies_main(argv) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    with open(os.path.join(out, "mlpmixer_best", "runs", "trial-0001", "train.log")) as f:
        log = f.read()
    assert "interrupted: results.json keeps the 1 finished epoch" in log and "--resume" not in log  # not main.py's
    first = {t.number: t for t in load_study(out, "mlpmixer_best").get_trials()}
    assert first[1].state == TrialState.FAIL and "outcome" not in first[1].user_attrs

    monkeypatch.setattr(study_worker, "fit", real_fit)
    capsys.readouterr()
    assert studies_main(argv) == 0
    assert "trial-0001 (resumed)" in capsys.readouterr().out
    trials = load_study(out, "mlpmixer_best").get_trials()
    retried = [t for t in trials if t.user_attrs["run_dir"] == "trial-0001" and t.state == TrialState.COMPLETE]
    assert len(retried) == 1 and retried[0].params == first[1].params
    results = read_json(os.path.join(out, "mlpmixer_best", "runs", "trial-0001", "results.json"))
    assert results["epochs_completed"] == 2 and results["args"]["resume"] is True
    assert retried[0].intermediate_values == {1: results["valid_accs"][0], 2: results["valid_accs"][1]}
    assert sum(t.user_attrs["role"] == "search" for t in trials) == 3 and any(
        t.user_attrs["role"] == "final" for t in trials)


def test_a_search_stopped_early_and_run_again_with_fewer_trials_retrains_its_best_so_far(study_args, tmp_path,
                                                                                           monkeypatch, capsys):
    """A student out of GPU time stops a search and runs it again with a --trials no larger than the trials it
    finished: the trial it was training is finished, no new one is drawn, and the best so far is retrained."""
    out = str(tmp_path / "out")
    tiny = ["--set", "embed_dim=16", "--set", "num_blocks=1"]
    real_fit = study_worker.fit
    monkeypatch.setattr(study_worker, "fit", _interrupted_after_first_epoch(real_fit, "trial-0002"))
    assert studies_main(study_args("mlpmixer_best", "--trials", "24", *tiny, epochs=2)) == 130
    monkeypatch.setattr(study_worker, "fit", real_fit)
    capsys.readouterr()

    assert studies_main(study_args("mlpmixer_best", "--trials", "2", *tiny, epochs=2)) == 0
    output = capsys.readouterr().out
    assert "trial-0002 (resumed)" in output
    assert output.endswith("study mlpmixer_best: search trials: 3 completed (of 24); final runs: 1 completed; this "
                           "launch's --trials 2 ended the search early (a larger --trials carries it on)\n")
    trials = load_study(out, "mlpmixer_best").get_trials()
    search = {t.user_attrs["run_dir"]: t for t in trials if t.user_attrs["role"] == "search"
              and t.state == TrialState.COMPLETE}
    assert sorted(search) == ["trial-0000", "trial-0001", "trial-0002"]
    best = max(search.values(), key=lambda t: t.value)
    final = [t for t in trials if t.user_attrs["role"] == "final"]
    assert len(final) == 1 and final[0].state == TrialState.COMPLETE
    assert final[0].user_attrs["source_trial"] == best.number
    assert read_json(os.path.join(out, "mlpmixer_best", "runs", "final_seed-43", "results.json"))["test_acc"] is not None


def test_a_disk_that_fills_up_under_a_runs_log_stops_the_study_in_one_line_and_a_rerun_completes_it(study_args,
                                                                                                   tmp_path,
                                                                                                   monkeypatch, capsys):
    """A full disk would fail every run after it: the study stops at the first instead of recording each as failed
    (which only ``--retry_failed`` runs again), as it does when a checkpoint cannot be written."""
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    def opening(path, *args, **kwargs):
        f = real_open(path, *args, **kwargs)
        return FullDisk(f) if os.path.basename(path) == "train.log" else f
    argv = study_args("mlp_activation", "--values", "relu", "tanh")
    runs = tmp_path / "out" / "mlp_activation" / "runs"
    with monkeypatch.context() as patched:
        patched.setattr(study_worker, "open", opening, raising=False)
        assert studies_main(argv) == 2
    log = runs / "activation-relu_seed-42" / "train.log"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: cannot write {log} (No space left on device); make room on that disk (or under your quota) or give a "
        "writable folder; what was written before is intact, and --resume or a rerun of the study continues from it")
    assert os.listdir(runs) == ["activation-relu_seed-42"]
    assert studies_main(argv) == 0
    assert [read_json(runs / run / "trial.json")["outcome"] for run in sorted(os.listdir(runs))] == ["completed"] * 2


def test_a_resumed_search_trial_tells_the_pruner_only_the_logged_epochs_it_has_not_told(tmp_path):
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.report(0.40, 1)  # told before its worker stopped
    with open(tmp_path / "results.json", "w") as f:  # epoch 3 logged no accuracy (not finite)
        json.dump({"valid_accs": [0.41, 0.52, None, 0.63]}, f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns of an epoch told twice
        study_worker._report_earlier_epochs(study, trial, str(tmp_path))
    assert study.trials[0].intermediate_values == {1: 0.40, 2: 0.52, 4: 0.63}


def test_a_cuda_error_that_outlives_its_run_stops_the_worker_in_one_line(study_args, tmp_path, monkeypatch, capsys):
    """An illegal memory access (or a device-side assert) fails every later CUDA call of the process: the worker
    stops after recording the run that raised it, instead of failing each run left, and a rerun goes on."""
    import torch

    illegal_access = "CUDA error: an illegal memory access was encountered"
    real_fit = study_worker.fit

    def fit_failing_for_relu(args, **kwargs):
        if "relu" in args.logdir:
            raise RuntimeError(illegal_access)
        return real_fit(args, **kwargs)

    def broken_context():
        raise RuntimeError(f"{illegal_access}\nCUDA kernel errors might be asynchronously reported")
    monkeypatch.setattr(study_worker, "fit", fit_failing_for_relu)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", broken_context)
    flags = study_args("mlp_activation", "--values", "relu", "tanh")
    capsys.readouterr()
    assert studies_main(flags) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: the GPU stopped working in this worker ({illegal_access}): CUDA keeps such an error until the process "
        "ends, so the worker stops; rerun the same command to go on in a new process (--retry_failed trains the "
        "failed run again)")
    out = str(tmp_path / "out")
    assert jobs_of(load_study(out, "mlp_activation")) == {"activation-relu_seed-42": [TrialState.FAIL],
                                                          "activation-tanh_seed-42": [TrialState.WAITING]}
    monkeypatch.undo()
    assert studies_main(flags) == 0
    assert jobs_of(load_study(out, "mlp_activation")) == {"activation-relu_seed-42": [TrialState.FAIL],
                                                          "activation-tanh_seed-42": [TrialState.COMPLETE]}


def test_a_finished_run_whose_folder_was_removed_trains_again_at_the_next_launch(study_args, tmp_path, monkeypatch,
                                                                                  capsys):
    """Removed by hand to train it again, a run is missing from the report, which says to rerun the study; trained
    again and stopped, it resumes at the launch after, as any interrupted run."""
    out, argv = str(tmp_path / "out"), study_args("mlp_activation", "--values", "relu", "tanh", epochs=2)
    assert studies_main(argv) == 0
    runs = tmp_path / "out" / "mlp_activation" / "runs"
    relu = (runs / "activation-relu_seed-42" / "results.json").read_bytes()
    shutil.rmtree(runs / "activation-tanh_seed-42")
    capsys.readouterr()
    assert studies_main(["status", "--out", out]) == 0
    assert capsys.readouterr().out == ("mlp_activation: 2 completed\n  activation-tanh_seed-42: completed, but its "
                                       "folder is gone; the study's next launch trains it again\n")
    real_fit = study_worker.fit
    monkeypatch.setattr(study_worker, "fit", _interrupted_after_first_epoch(real_fit, "activation-tanh_seed-42"))
    assert studies_main(argv) == 130
    assert capsys.readouterr().out.startswith("study mlp_activation: 1 finished run whose folder is gone "
                                              "(activation-tanh_seed-42) trains again (workers on several machines "
                                              "need an --out that all of them see)\n")
    monkeypatch.setattr(study_worker, "fit", real_fit)
    assert studies_main(argv) == 0
    assert "trial 3 (grid) -> " + str(runs / "activation-tanh_seed-42") + " (resumed)\n" in capsys.readouterr().out
    assert jobs_of(load_study(out, "mlp_activation")) == {
        "activation-relu_seed-42": [TrialState.COMPLETE],
        "activation-tanh_seed-42": [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]}
    results = read_json(runs / "activation-tanh_seed-42" / "results.json")
    assert results["status"] == "completed" and results["epochs_completed"] == 2
    assert (runs / "activation-relu_seed-42" / "results.json").read_bytes() == relu
    assert studies_main(argv) == 0  # nothing left to train
    assert len(load_study(out, "mlp_activation").get_trials()) == 4


def test_a_removed_final_run_trains_again_but_not_a_removed_search_trial(study_args, tmp_path, capsys):
    """A search trial's result stays in the study's records; trained again, it could change which trial is best."""
    out, argv = str(tmp_path / "out"), study_args("mlpmixer_best", "--trials", "2")
    assert studies_main(argv) == 0
    runs = tmp_path / "out" / "mlpmixer_best" / "runs"
    shutil.rmtree(runs / "trial-0000")
    shutil.rmtree(runs / "final_seed-43")
    capsys.readouterr()
    assert studies_main(argv) == 0
    assert "1 finished run whose folder is gone (final_seed-43) trains again" in capsys.readouterr().out
    assert (runs / "final_seed-43" / "results.json").exists() and not (runs / "trial-0000").exists()
    assert [len(states) for states in jobs_of(load_study(out, "mlpmixer_best")).values()] == [1, 1, 2]
