"""Workers sharing a study through a real PostgreSQL server, started here on loopback.

The server comes from Debian's ``postgresql`` package (``.ci/run`` installs it); without it the tests
skip and say how to install it.
"""
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import optuna
import pytest
from optuna.trial import TrialState

from studies.storage import close_storage, open_storage
from helpers import ROOT, jobs_of, run_claimers


def _postgres_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1, as ``postgresql://`` URL; stopped and deleted afterwards."""
    pytest.importorskip("psycopg", reason="PostgreSQL test: psycopg is missing; pip install -r requirements.txt")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL test: no PostgreSQL server here; install it with `apt-get install postgresql` "
                    "(.ci/run does)")
    data = tempfile.mkdtemp(prefix="studies-pg-")
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the package's postgres user
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*as_user, os.path.join(bin_dir, "initdb"), "-D", data, "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True)
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, os.path.join(bin_dir, "pg_ctl"), "-D", data, "-o", options, "-w", "-l",
                    os.path.join(data, "server.log"), "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, os.path.join(bin_dir, "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_concurrent_workers_claim_each_grid_job_once_through_postgres(postgres_url, tmp_path):
    run_claimers(postgres_url, "claims", str(tmp_path))


def test_two_workers_run_a_study_in_postgres(postgres_url, study_args, tmp_path):
    result = subprocess.run([sys.executable, "-m", "studies", *study_args("mlp_activation", "--seeds", "2"),
                             "--storage", postgres_url, "--workers", "2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    storage, _ = open_storage(postgres_url, str(tmp_path))
    study = optuna.load_study(study_name="mlp_activation", storage=storage)
    assert jobs_of(study) == {f"activation-{a}_seed-{s}": [TrialState.COMPLETE]
                              for a in ("relu", "tanh", "sigmoid") for s in (42, 43)}
    close_storage(storage)
    assert not os.path.exists(tmp_path / "out" / "mlp_activation" / "journal.log")  # the study lives in the database
    status = subprocess.run([sys.executable, "-m", "studies", "status", "--storage", postgres_url,
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and status.stdout == "mlp_activation: 6 completed\n", status.stderr


def test_a_worker_whose_clock_runs_behind_is_not_taken_for_lost(postgres_url, tmp_path, monkeypatch):
    """Workers on several machines judge each other's heartbeats by the database server's clock: a worker on a host
    whose clock runs ten minutes behind (no NTP) keeps its run, where its own clock would have made it look silent
    for ten minutes, and its run taken over by another worker."""
    import time

    from studies.scheduler import Claimer

    storage, lock = open_storage(postgres_url, str(tmp_path))
    study = optuna.create_study(study_name="clocks", storage=storage)
    jobs = {"first": {"seed": 0}, "second": {"seed": 1}}
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 600)
    claimed = Claimer(study, lock, grid_jobs=jobs).claim()
    monkeypatch.setattr(time, "time", real_time)
    monkeypatch.setattr(socket, "gethostname", lambda: "another-host")  # judged by its heartbeat, not its process
    other = Claimer(study, lock, grid_jobs=jobs).claim()
    assert study.trials[claimed.number].state == TrialState.RUNNING
    assert (claimed.user_attrs["run_dir"], other.user_attrs["run_dir"]) == ("first", "second")
    close_storage(storage)


def test_messages_about_a_study_in_a_database_never_show_its_password(postgres_url, study_args, tmp_path):
    storage, _ = open_storage(postgres_url, str(tmp_path))
    with contextlib.suppress(KeyError):  # run by an earlier test of this server, with its own --out
        optuna.delete_study(study_name="mlp_activation", storage=storage)
    close_storage(storage)
    with_password = postgres_url.replace("postgres@", "postgres:s3cret@")  # the loopback server trusts any password
    shown = postgres_url.replace("postgres@", "postgres:***@")
    run = [sys.executable, "-m", "studies", *study_args("mlp_activation", "--values", "relu"), "--storage",
           with_password]
    assert subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=300).returncode == 0
    refused = subprocess.run([*run, "--weight_decay", "0.1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.endswith(f"error: study mlp_activation in {shown} was started with other flags "
                                   "(weight_decay 0.0005, now 0.1); rerun with the flags it was started with, or use "
                                   "a new --out (or --storage)\n")
    assert "s3cret" not in refused.stdout + refused.stderr
