"""Problem 4's studies on tiny fake data, with a run whose worker was declared lost (its heartbeat silent, its process
gone): the run stops or finishes, the next worker to claim it resumes it from its checkpoint, a worker waits while the
lost run still writes its folder, and a worker with nothing to claim waits and takes over a dead worker's run."""
import os
import socket
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState

from helpers import jobs_of, load_study, read_json
from studies import worker as study_worker
from studies.__main__ import main as studies_main

TAKEN_OVER = "a run whose worker dies is taken over, after 3 minutes without word from it if it ran on another host"


def stand_in_for_the_workers_wait(monkeypatch, seconds, wait):
    """``time.sleep`` calls ``wait`` for the worker's waits of ``seconds``; other sleeps, such as subprocess's short
    polls while a run asks git for its code version, sleep as before."""
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda slept: wait(slept) if slept == seconds else real_sleep(slept))


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


def test_a_worker_with_nothing_to_claim_waits_and_takes_over_the_run_of_a_worker_that_dies(study_args, tmp_path,
                                                                                          monkeypatch, capsys):
    from studies.liveness import process_started
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
    assert jobs_of(load_study(out, "mlp_activation")) == {"activation-relu_seed-42": [TrialState.FAIL,
                                                                                      TrialState.COMPLETE],
                                                          "activation-tanh_seed-42": [TrialState.COMPLETE]}
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
    monkeypatch.setattr(study_worker, "summary", lambda study: "where it stands")
    plan = SimpleNamespace(study=SimpleNamespace(name="grid", is_search=False), grid_jobs=lambda: [], trials=None,
                           search_minutes=None, seeds=[42], retry_failed=False, fingerprint=dict)
    assert study_worker.work(plan, study=None, lock=None) == 2
    assert ran == ["trial A", "trial B"] and waits == [study_worker.POLL_SECONDS] * 3
    assert capsys.readouterr().out == (
        f"no run to claim: waiting while 1 run trains in other workers ({TAKEN_OVER})\n"
        "study grid: where it stands\n"
        f"no run to claim: waiting while 2 runs train in other workers ({TAKEN_OVER})\n"
        "study grid: where it stands\n")


def test_where_processes_are_not_looked_up_the_waiting_line_says_that_silence_decides_on_every_host(monkeypatch):
    from studies import liveness

    monkeypatch.setattr(liveness, "PROCESSES_LOOKED_UP", False)  # as on Windows
    assert study_worker.when_taken_over() == "after 3 minutes without word from it"
