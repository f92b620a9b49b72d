"""How the workers of a study share it: each grid job claimed once, a running trial judged lost by its process or
its heartbeat, worker processes sharing one journal, and the GPUs or cores each worker gets."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from helpers import ROOT, jobs_of, load_study, run_claimers


def test_a_running_trial_is_lost_when_its_process_is_gone_or_its_heartbeat_stops():
    from studies.liveness import LOST_AFTER_SECONDS, Heartbeat, is_lost

    study = optuna.create_study()
    live = study.ask()
    with Heartbeat(live, time.time, interval=0.01):
        time.sleep(0.2)
    beat = study.trials[0].user_attrs["heartbeat"]
    assert time.time() - beat < 5

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here, elsewhere = socket.gethostname(), socket.gethostname() + "-other"
    for attrs, lost in (({"host": here, "pid": os.getpid(), "heartbeat": beat}, False),
                        ({"host": here, "pid": dead.pid, "heartbeat": beat}, True),
                        ({"host": elsewhere, "pid": dead.pid, "heartbeat": beat}, False),
                        ({"host": elsewhere, "pid": dead.pid, "heartbeat": beat - LOST_AFTER_SECONDS - 1}, True)):
        trial = study.ask()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        assert is_lost(study.trials[trial.number], now=beat) == lost, attrs


def test_where_processes_are_not_looked_up_only_silence_decides_on_its_own_host_too(monkeypatch):
    from studies import liveness

    study = optuna.create_study()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    beat = time.time()
    monkeypatch.setattr(liveness, "PROCESSES_LOOKED_UP", False)  # as on Windows, where os.kill would kill
    for attrs, lost in (({"pid": dead.pid, "heartbeat": beat}, False),
                        ({"pid": os.getpid(), "heartbeat": beat - liveness.LOST_AFTER_SECONDS - 1}, True)):
        trial = study.ask()
        for key, value in {"host": socket.gethostname(), **attrs}.items():
            trial.set_user_attr(key, value)
        assert liveness.is_lost(study.trials[trial.number], now=beat) == lost, attrs


@pytest.mark.skipif(not os.path.isfile("/proc/self/stat"), reason="process start times come from /proc")
def test_on_its_own_host_a_claimed_trial_is_lost_exactly_when_its_process_is(tmp_path):
    from studies.liveness import LOST_AFTER_SECONDS, is_lost
    from studies.scheduler import Claimer
    from studies.storage import FileLock

    study = optuna.create_study()
    claimer = Claimer(study, FileLock(str(tmp_path / "claims.lock")), grid_jobs={"job": {"seed": 0}})
    claimed = claimer.claim()
    attrs = dict(study.trials[claimed.number].user_attrs)
    silent = time.time() + LOST_AFTER_SECONDS + 60  # as after a laptop's sleep: no heartbeat, process alive
    assert not is_lost(study.trials[claimed.number], now=silent)
    reused = study.ask()  # its pid now names another process, started at another time
    for key, value in {**attrs, "pid_started": attrs["pid_started"] + 1}.items():
        reused.set_user_attr(key, value)
    assert is_lost(study.trials[reused.number], now=time.time())
    # a process that claims again holds no run: its trial still running was abandoned (a notebook's kernel
    # lives on after a run whose outcome could not be recorded), and its job is claimed again
    again = Claimer(study, FileLock(str(tmp_path / "claims.lock")), grid_jobs={"job": {"seed": 0}}).claim()
    assert study.trials[claimed.number].state == TrialState.FAIL
    assert again.user_attrs["run_dir"] == "job" and again.number not in (claimed.number, reused.number)


@pytest.mark.skipif(not os.path.isfile("/proc/self/stat"), reason="process start times come from /proc")
def test_a_dead_workers_pid_reused_by_a_process_whose_name_is_not_text_is_still_judged(tmp_path):
    from studies.liveness import is_lost, process_started

    # the kernel names a process after its executable's first 15 bytes, which need not decode in any encoding
    renamed = os.path.join(os.fsencode(tmp_path), b"sl\xffeep")
    shutil.copy(shutil.which("sleep"), renamed)
    other = subprocess.Popen([renamed, "30"])
    try:
        started = process_started(other.pid)
        assert isinstance(started, int)
        study = optuna.create_study()
        trial = study.ask()
        for key, value in {"host": socket.gethostname(), "pid": other.pid, "pid_started": started - 1,
                           "heartbeat": time.time()}.items():
            trial.set_user_attr(key, value)
        assert is_lost(study.trials[trial.number], now=time.time())
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(os.name != "posix" or not shutil.which("ps"), reason="needs ps, as macOS has it")
def test_without_proc_a_live_silent_worker_is_told_from_a_dead_one_and_from_a_reused_pid_by_ps(tmp_path, monkeypatch):
    from studies import liveness

    monkeypatch.setattr(liveness, "PROC_SELF_STAT", str(tmp_path / "no-proc"))  # as on macOS
    before = int(time.time())
    worker = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        started = liveness.process_started(worker.pid)
        assert before - 1 <= started <= time.time() + 1 and started == liveness.process_started(worker.pid)
        assert liveness.process_started(dead.pid) is None
        silent = time.time() - liveness.LOST_AFTER_SECONDS - 60  # as after a laptop's sleep
        for pid, pid_started, lost in ((worker.pid, started, False), (worker.pid, started - 1, True),
                                       (dead.pid, started, True)):
            trial = optuna.create_study().ask()
            for key, value in {"host": socket.gethostname(), "pid": pid, "pid_started": pid_started,
                               "heartbeat": silent}.items():
                trial.set_user_attr(key, value)
            assert liveness.is_lost(trial.study.trials[0], now=time.time()) == lost, (pid, pid_started)
        worker.kill()  # killed but not yet waited for: a zombie, which ps marks Z
        time.sleep(0.5)
        assert liveness._process_state(worker.pid)[0] is False
    finally:
        worker.kill()
        worker.wait()


def test_where_neither_proc_nor_ps_says_a_live_worker_is_judged_by_its_heartbeat(tmp_path, monkeypatch):
    from studies import liveness

    def no_ps(*args, **kwargs):
        raise FileNotFoundError("ps")
    monkeypatch.setattr(liveness, "PROC_SELF_STAT", str(tmp_path / "no-proc"))
    monkeypatch.setattr(liveness.subprocess, "run", no_ps)
    assert liveness.process_started(os.getpid()) is None
    trial = optuna.create_study().ask()
    for key, value in {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": None,
                       "heartbeat": time.time() - liveness.LOST_AFTER_SECONDS - 60}.items():
        trial.set_user_attr(key, value)
    assert liveness.is_lost(trial.study.trials[0], now=time.time())


def test_a_heartbeat_outlives_a_storage_that_fails_for_a_while(capsys):
    from studies.liveness import Heartbeat

    class TrialOfAFlakyStorage:
        number = 7

        def __init__(self):
            self.calls, self.beats = 0, []

        def set_user_attr(self, key, value):
            self.calls += 1
            if self.calls <= 3:
                raise OSError("connection reset (simulated)")
            self.beats.append(value)
    trial = TrialOfAFlakyStorage()
    with Heartbeat(trial, time.time, interval=0.01):
        deadline = time.time() + 10
        while not trial.beats and time.time() < deadline:
            time.sleep(0.01)
    assert trial.beats
    assert capsys.readouterr().err.splitlines() == [
        "heartbeat of trial 7 failed (OSError: connection reset (simulated)); trying again every 0.01 s",
        "heartbeat of trial 7 restored"]


def test_concurrent_workers_claim_each_grid_job_exactly_once(tmp_path):
    run_claimers(None, "grid", str(tmp_path / "study"))


def test_two_worker_processes_share_one_journal(study_args, tmp_path):
    out = str(tmp_path / "out")
    result = subprocess.run([sys.executable, "-m", "studies", *study_args("mlp_activation", "--seeds", "3"),
                             "--workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    study = load_study(out, "mlp_activation")
    assert jobs_of(study) == {f"activation-{a}_seed-{s}": [TrialState.COMPLETE]
                              for a in ("relu", "tanh", "sigmoid") for s in (42, 43, 44)}
    study_lines = [line for line in result.stdout.splitlines() if line.startswith("study mlp_activation: ")]
    header, *progress, outcome = study_lines
    assert header.startswith("study mlp_activation: Which") and outcome == "study mlp_activation: 9 completed"
    # before each of the 9 runs, where the study stands in both workers
    assert len(progress) == 9 and all(re.fullmatch(r"study mlp_activation: (\d completed, )?\d running(, \d waiting)?",
                                                   line) for line in progress), progress


@pytest.mark.parametrize("visible, device, expected", [
    ("0,1,2", "cuda", ["0", "1", "2", "0"]),  # round robin over the GPUs this host shows
    ("0, 1", "cuda", ["0", "1", "0", "1"]),  # each worker gets one GPU's id, without the list's spaces
    ("3", "cuda", ["3"] * 4),  # one GPU: every worker shares it
    ("", "cuda", [""] * 4),  # no GPU visible: the runs fall back to the CPU, which the workers share
    ("0,1,2", "cpu", ["0,1,2"] * 4),  # CPU runs on a GPU host: GPUs untouched, cores shared
])
def test_workers_get_a_gpu_each_or_a_share_of_the_cores(monkeypatch, visible, device, expected):
    from studies.launch import worker_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("studies.launch.usable_cpus", lambda: 16)
    envs = [worker_env(index, 4, device) for index in range(4)]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == expected
    shares_cores = device == "cpu" or not visible
    assert [env.get("OMP_NUM_THREADS") for env in envs] == ["4" if shares_cores else None] * 4


@pytest.mark.parametrize("gpus, expected", [(2, ["0", "1", "0"]), (1, [None] * 3), (0, [None] * 3)])
def test_without_cuda_visible_devices_workers_go_round_robin_over_the_gpus_torch_counts(monkeypatch, gpus,
                                                                                         expected):
    import torch

    from studies.launch import worker_env

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert [worker_env(index, 3, "cuda").get("CUDA_VISIBLE_DEVICES") for index in range(3)] == expected


@pytest.mark.parametrize("cores, workers, threads", [(2, 4, "1"), (None, 2, "1"), (None, 1, "1"), (8, 3, "2")])
def test_cpu_workers_share_the_cores_with_at_least_one_thread_each(monkeypatch, cores, workers, threads):
    from studies.launch import worker_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("studies.launch.usable_cpus", lambda: cores)  # None where Python cannot tell
    assert [worker_env(index, workers, "cpu")["OMP_NUM_THREADS"] for index in range(workers)] == [threads] * workers


def test_cpu_workers_share_the_cores_a_batch_system_gave_this_process_not_the_hosts(monkeypatch):
    from studies.launch import worker_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6, 7}, raising=False)
    assert worker_env(0, 2, "cpu")["OMP_NUM_THREADS"] == "2"


def test_a_thread_count_the_user_set_is_kept(monkeypatch):
    from studies.launch import worker_env

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert worker_env(0, 2, "cpu")["OMP_NUM_THREADS"] == "3"


def test_a_job_whose_trial_failed_before_drawing_its_settings_is_claimed_again_with_them(tmp_path):
    from studies.scheduler import Claimer
    from studies.storage import FileLock

    study = optuna.create_study()
    claimer = Claimer(study, FileLock(str(tmp_path / "claims.lock")),
                      grid_jobs={"a-1": {"seed": 1}, "a-2": {"seed": 2}})
    first = claimer.claim()
    study.tell(first.number, state=TrialState.FAIL)  # what a worker does when its run raises before suggest
    for run_dir, seed in (("a-2", 2), ("a-1", 1)):
        trial = claimer.claim()
        assert trial.user_attrs["run_dir"] == run_dir and trial.suggest_int("seed", 0, 2**31 - 1) == seed
        study.tell(trial, 1.0)
