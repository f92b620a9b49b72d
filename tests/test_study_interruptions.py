"""Problem 4's studies interrupted, on tiny fake data: a killed or stopped study resuming, an interrupted search
trial keeping its settings, and a run whose worker was declared lost taken over by another worker."""
import errno
import json
import os
import signal
import socket
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

TAKEN_OVER = "a run whose worker dies is taken over, after 3 minutes without word from it if it ran on another host"


def stand_in_for_the_workers_wait(monkeypatch, seconds, wait):
    """``time.sleep`` calls ``wait`` for the worker's waits of ``seconds``; other sleeps, such as subprocess's short
    polls while a run asks git for its code version, sleep as before."""
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda slept: wait(slept) if slept == seconds else real_sleep(slept))


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


def test_a_run_declared_lost_after_its_last_epoch_is_resumed_from_its_checkpoint_not_retrained(study_args, tmp_path,
                                                                                                monkeypatch, capsys):
    out = str(tmp_path / "out")
    relu_dir = os.path.join(out, "mlp_activation", "runs", "activation-relu_seed-42")
    real_fit = study_worker.fit
    declared = []

    def fit_then_declared_lost(args, **kwargs):
        results = real_fit(args, **kwargs)
        if not declared:  # what another worker's claim does to a run whose worker it takes for dead
            study = load_study(out, "mlp_activation")
            [running] = study.get_trials(states=(TrialState.RUNNING,))
            study.tell(running.number, state=TrialState.FAIL)
            declared.append(running.number)
        return results
    monkeypatch.setattr(study_worker, "fit", fit_then_declared_lost)
    assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh")) == 0
    printed = capsys.readouterr().out
    assert (f"trial {declared[0]} was declared lost while it trained: the worker that claims its run resumes it "
            f"from the checkpoint it left in {relu_dir}") in printed
    assert f"-> {relu_dir} (resumed)" in printed
    with open(os.path.join(relu_dir, "train.log")) as f:
        assert "nothing left to train" in f.read()
    assert jobs_of(load_study(out, "mlp_activation")) == {
        "activation-relu_seed-42": [TrialState.FAIL, TrialState.COMPLETE],
        "activation-tanh_seed-42": [TrialState.COMPLETE]}
    assert read_json(os.path.join(relu_dir, "results.json"))["status"] == "completed"


def test_a_run_declared_lost_while_it_trains_stops_and_the_next_claim_resumes_it(study_args, tmp_path, monkeypatch,
                                                                                capsys):
    out = str(tmp_path / "out")
    real_fit = study_worker.fit
    declared = []

    def fit_declared_lost_after_its_first_epoch(args, on_epoch=None, **kwargs):
        def declared_lost_then_on_epoch(epoch, history):
            if not declared:
                study = load_study(out, "mlp_activation")
                [running] = study.get_trials(states=(TrialState.RUNNING,))
                study.tell(running.number, state=TrialState.FAIL)
                declared.append(running.number)
            return on_epoch(epoch, history)
        return real_fit(args, on_epoch=declared_lost_then_on_epoch, **kwargs)
    monkeypatch.setattr(study_worker, "fit", fit_declared_lost_after_its_first_epoch)
    assert studies_main(study_args("mlp_activation", "--values", "relu", epochs=3)) == 0
    printed = capsys.readouterr().out
    assert "trial 0 was declared lost while it trained: it stops here" in printed
    assert "activation-relu_seed-42: epoch 2/3" in printed.split("it stops here")[1]  # trained on only once resumed
    results = read_json(os.path.join(out, "mlp_activation", "runs", "activation-relu_seed-42", "results.json"))
    assert results["epochs_completed"] == 3 and results["args"]["resume"] is True
    assert jobs_of(load_study(out, "mlp_activation")) == {"activation-relu_seed-42": [TrialState.FAIL,
                                                                                      TrialState.COMPLETE]}


def test_a_worker_waits_while_a_run_declared_lost_still_writes_its_folder_then_resumes_it(study_args, tmp_path,
                                                                                         monkeypatch, capsys):
    from training.errors import LogdirBusy

    fit, calls = study_worker.fit, []

    def busy_at_first(args, **kwargs):
        calls.append(args)
        if len(calls) <= 2:  # the worker that ran this trial before it was declared lost is finishing its epoch
            raise LogdirBusy(f"--logdir {args.logdir} is being written by another run (pid 1 on elsewhere)")
        return fit(args, **kwargs)
    monkeypatch.setattr(study_worker, "fit", busy_at_first)
    waits = []
    stand_in_for_the_workers_wait(monkeypatch, study_worker.LOGDIR_POLL_SECONDS, waits.append)
    assert studies_main(study_args("mlp_activation", "--values", "relu")) == 0
    out = capsys.readouterr().out
    assert out.count("is being written by another run (pid 1 on elsewhere): waiting for it to stop at the end of its "
                     "epoch") == 1  # said once, however long the wait
    assert waits == [study_worker.LOGDIR_POLL_SECONDS] * 2
    assert len(calls) == 3 and calls[0] is not calls[1]  # flags built afresh: the other run may have left a checkpoint
    [trial] = load_study(str(tmp_path / "out"), "mlp_activation").get_trials()
    assert trial.state == TrialState.COMPLETE


def test_a_search_trial_tells_the_pruner_the_epoch_that_a_run_declared_lost_finished_while_it_waited(
        study_args, tmp_path, monkeypatch):
    from training.errors import LogdirBusy

    fit, calls = study_worker.fit, []

    def busy_while_the_other_worker_finishes_an_epoch(args, on_epoch=None, **kwargs):
        calls.append(args)
        if len(calls) == 1:  # the worker that ran this trial before it was declared lost ends its first epoch
            def stop_after_it(epoch, history):
                raise KeyboardInterrupt
            fit(args, on_epoch=stop_after_it, **kwargs)
            raise LogdirBusy(f"--logdir {args.logdir} is being written by another run (pid 1 on elsewhere)")
        return fit(args, on_epoch=on_epoch, **kwargs)
    monkeypatch.setattr(study_worker, "fit", busy_while_the_other_worker_finishes_an_epoch)
    monkeypatch.setattr(study_worker, "LOGDIR_POLL_SECONDS", 0)
    out = str(tmp_path / "out")
    assert studies_main(study_args("mlpmixer_best", "--trials", "1", "--set", "embed_dim=16", "--set", "num_blocks=1",
                                   epochs=2)) == 0
    [trial] = [t for t in load_study(out, "mlpmixer_best").get_trials() if t.user_attrs["role"] == "search"]
    results = read_json(os.path.join(out, "mlpmixer_best", "runs", "trial-0000", "results.json"))
    assert calls[1].resume and results["epochs_completed"] == 2
    assert trial.intermediate_values == {1: results["valid_accs"][0], 2: results["valid_accs"][1]}


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


def test_a_worker_with_nothing_to_claim_waits_and_takes_over_the_run_of_a_worker_that_dies(study_args, tmp_path,
                                                                                          monkeypatch, capsys):
    from studies.scheduler import process_started
    from studies.storage import open_storage

    out = str(tmp_path / "out")
    storage, _ = open_storage(None, os.path.join(out, "mlp_activation"))
    study = optuna.create_study(study_name="mlp_activation", storage=storage, direction="maximize")
    relu = {"activation": "relu", "seed": 42}
    study.enqueue_trial(relu, user_attrs={"run_dir": "activation-relu_seed-42", "role": "grid", "job_params": relu})
    held = study.ask()  # the relu run, claimed by another worker on this host
    other_worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    for key, value in {"host": socket.gethostname(), "pid": other_worker.pid,
                       "pid_started": process_started(other_worker.pid), "heartbeat": time.time()}.items():
        held.set_user_attr(key, value)
    real_sleep, waits = time.sleep, []

    def wait_while_the_other_worker_dies(seconds):
        waits.append(seconds)
        other_worker.kill()  # its process now gone, its run is lost: the waiting worker takes it over
        real_sleep(0.1)
    stand_in_for_the_workers_wait(monkeypatch, study_worker.POLL_SECONDS, wait_while_the_other_worker_dies)
    try:
        assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh")) == 0
    finally:
        other_worker.kill()
        other_worker.wait()
    assert jobs_of(load_study(out, "mlp_activation")) == {
        "activation-relu_seed-42": [TrialState.FAIL, TrialState.COMPLETE], "activation-tanh_seed-42": [TrialState.COMPLETE]}
    printed = capsys.readouterr().out
    assert waits == [study_worker.POLL_SECONDS] and printed.count(
        f"no run to claim: waiting while 1 run trains in other workers ({TAKEN_OVER})") == 1
    assert f"trial {held.number} (activation-relu_seed-42): its worker is gone" in printed
    assert read_json(os.path.join(out, "mlp_activation", "runs", "activation-relu_seed-42", "results.json"))[
        "model_config"]["activation"] == "relu"


def test_a_worker_says_it_waits_once_per_spell_of_waiting_and_claims_what_turns_up(monkeypatch, capsys):
    from types import SimpleNamespace

    # what each claim finds: nothing while one run trains elsewhere, twice; a run; nothing again; then the end
    script = [(None, 1), (None, 1), ("trial A", 0), (None, 2), ("trial B", 0), (None, 0)]

    class ScriptedClaimer:
        def __init__(self, study, lock, **kwargs):
            self.running_elsewhere = 0

        def claim(self):
            trial, self.running_elsewhere = script.pop(0)
            return trial
    ran, waits = [], []
    monkeypatch.setattr(study_worker, "Claimer", ScriptedClaimer)
    monkeypatch.setattr(study_worker, "run_trial", lambda plan, study, lock, trial: ran.append(trial))
    monkeypatch.setattr(time, "sleep", waits.append)
    plan = SimpleNamespace(study=SimpleNamespace(is_search=False), grid_jobs=lambda: [], trials=None, seeds=[42],
                           retry_failed=False, fingerprint=dict)
    assert study_worker.work(plan, study=None, lock=None) == 2
    assert ran == ["trial A", "trial B"] and waits == [study_worker.POLL_SECONDS] * 3
    assert capsys.readouterr().out == (
        f"no run to claim: waiting while 1 run trains in other workers ({TAKEN_OVER})\n"
        f"no run to claim: waiting while 2 runs train in other workers ({TAKEN_OVER})\n")


def test_where_processes_are_not_looked_up_the_waiting_line_says_that_silence_decides_on_every_host(monkeypatch):
    from studies import scheduler

    monkeypatch.setattr(scheduler, "PROCESSES_LOOKED_UP", False)  # as on Windows
    assert study_worker.when_taken_over() == "after 3 minutes without word from it"


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
