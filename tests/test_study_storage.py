"""Where a study's state lives when ``--storage`` names a database (SQLite here; PostgreSQL in
test_studies_postgres.py), and the ``--storage`` values refused. The journal file and the claims lock are in
test_study_journal.py; how workers share a storage is in test_study_workers.py."""
import os
import sys

import optuna
import pytest
from optuna.trial import TrialState

from helpers import jobs_of
import studies.__main__ as studies_cli
from studies.__main__ import main as studies_main
from studies.definitions import STUDIES
from studies.storage import close_storage


def test_a_sqlite_storage_serves_a_study_and_its_rerun(study_args, tmp_path, capsys):
    database = tmp_path / "studies.db"
    argv = study_args("mlp_activation", "--values", "relu", "tanh", "--storage", f"sqlite:///{database}")
    assert studies_main(argv) == 0
    storage = optuna.storages.RDBStorage(f"sqlite:///{database}")
    study = optuna.load_study(study_name="mlp_activation", storage=storage)
    assert jobs_of(study) == {"activation-relu_seed-42": [TrialState.COMPLETE],
                              "activation-tanh_seed-42": [TrialState.COMPLETE]}
    close_storage(storage)
    assert not os.path.exists(tmp_path / "out" / "mlp_activation" / "journal.log")
    capsys.readouterr()
    assert studies_main(argv) == 0
    assert "-> " not in capsys.readouterr().out


def test_a_database_study_launched_with_another_out_is_refused_not_trained_again_there(study_args, tmp_path, capsys):
    """The study lives in the database whatever the --out: one forgotten on a relaunch would find every finished run's
    folder gone. Once that --out's runs folder is made, as the refusal says, the runs train again there."""
    database = tmp_path / "studies.db"
    argv = study_args("mlp_activation", "--values", "relu", "--storage", f"sqlite:///{database}")
    assert studies_main(argv) == 0
    other = tmp_path / "other"
    capsys.readouterr()
    assert studies_main([*argv, "--out", str(other)]) == 2
    runs = other / "mlp_activation" / "runs"
    assert capsys.readouterr().err == (f"error: --storage sqlite:///{database} holds 1 finished run of mlp_activation, "
                                       f"but {runs} does not exist: give the --out they were trained with; to train "
                                       f"them again under this one, create {runs} and rerun\n")
    assert not runs.exists()
    assert studies_main(["status", "--storage", f"sqlite:///{database}", "--out", str(other)]) == 0
    assert capsys.readouterr().out == f"mlp_activation: 1 completed\n  no folder {runs}: its runs were trained with " \
                                      "another --out\n"
    os.makedirs(runs)
    assert studies_main(["status", "--storage", f"sqlite:///{database}", "--out", str(other)]) == 0
    assert capsys.readouterr().out == ("mlp_activation: 1 completed\n  activation-relu_seed-42: completed, but its "
                                       "folder is gone; the study's next launch trains it again\n")
    assert studies_main([*argv, "--out", str(other)]) == 0
    assert "1 finished run whose folder is gone (activation-relu_seed-42) trains again" in capsys.readouterr().out
    assert os.path.isfile(runs / "activation-relu_seed-42" / "results.json")


def test_a_write_that_the_database_refuses_mid_study_gets_one_line_and_a_rerun_completes_the_study(study_args,
                                                                                                     tmp_path, capsys):
    """SQLite refuses each new trial value (as it would on a full disk, in other words): the study's first finished
    run cannot be recorded, which Optuna raises as a StorageInternalError from SQLAlchemy's error."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def refuse_trial_values(action, table, *args):
        return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_INSERT and table == "trial_values" else sqlite3.SQLITE_OK

    def on_connect(connection, record):
        connection.set_authorizer(refuse_trial_values)
    argv = study_args("mlp_activation", "--storage", f"sqlite:///{tmp_path / 'studies.db'}", "--values")
    assert studies_main(argv + ["relu"]) == 0
    event.listen(Engine, "connect", on_connect)
    try:
        assert studies_main(argv + ["relu", "tanh"]) == 2
    finally:
        event.remove(Engine, "connect", on_connect)
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: the study's database refused a write (not authorized); make room on its disk, or check that it can be "
        "reached, then rerun the same command: the study resumes from what it recorded")
    assert studies_main(argv + ["relu", "tanh"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "study mlp_activation: 2 completed"


def test_run_and_status_leave_no_database_connection_open(study_args, tmp_path, monkeypatch, capsys):
    from studies import storage

    opened = []

    def recording(url, given):
        opened.append(database(url, given))
        return opened[-1]
    database = storage._database
    monkeypatch.setattr(storage, "_database", recording)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert studies_main(study_args("mlp_activation", "--values", "relu", "--storage", url)) == 0
    assert studies_main(["status", "--storage", url, "--out", str(tmp_path / "out")]) == 0
    assert "mlp_activation: 1 completed" in capsys.readouterr().out
    assert len(opened) == 1 + len(STUDIES)  # the run's, then one per study that status looked for
    assert [rdb.engine.pool.checkedin() for rdb in opened] == [0] * len(opened)


def test_status_of_a_database_names_a_missing_file_and_a_study_with_nothing_run(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    assert studies_main(["status", "--storage", missing, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: --storage {missing}: no such database file\n"
    assert os.listdir(tmp_path) == []  # looking created no database
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    storage = optuna.storages.RDBStorage(url)  # a database that holds no study yet
    os.makedirs(tmp_path / "out" / "mlp_activation" / "runs")  # runs of another storage: not what was asked about
    assert studies_main(["status", "--storage", url, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"error: no study has started in {url}; `python -m studies run NAME --storage "
                                       f"{url} --out {tmp_path / 'out'}` starts one\n")
    optuna.create_study(study_name="resnet18_lr", storage=storage)  # a launch stopped before its first claim
    close_storage(storage)
    assert studies_main(["status", "--storage", url, "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out == "resnet18_lr: nothing run yet\n"


def test_status_of_a_database_without_studies_names_it_without_its_password(tmp_path, capsys, monkeypatch):
    from studies import status
    from studies.storage import FileLock

    empty = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'empty.db'}")  # stands in for the PostgreSQL server
    monkeypatch.setattr(status, "open_storage", lambda *args: (empty, FileLock(str(tmp_path / "claims.lock"))))
    monkeypatch.chdir(tmp_path)
    assert studies_main(["status", "--storage", "postgresql://someone:secret@dbhost/studies", "--out", "runs"]) == 2
    assert capsys.readouterr().err == ("error: no study has started in postgresql://someone:***@dbhost/studies; "
                                       "`python -m studies run NAME --storage postgresql://someone:***@dbhost/studies "
                                       "--out runs` starts one\n")


@pytest.mark.parametrize("url, said", [
    ("mysql://user@host/db", "--storage mysql://user@host/db: unsupported; give a journal file path"),
    ("mysql://user:secret@host/db", "--storage mysql://user:***@host/db: unsupported"),  # no password in a message
    ("sqlite:///:memory:", "--storage sqlite:///:memory: keeps the study's records in this process alone: other "
                           "workers could not share them, nor a rerun resume them; give a file"),
    ("sqlite:///", "--storage sqlite:/// keeps the study's records in this process alone"),  # SQLite's memory, too
    ("sqlite:///:memory:?cache=shared", "--storage sqlite:///:memory:?cache=shared keeps the study's records in this"),
])
def test_an_unsupported_storage_is_refused_before_anything_is_written(url, said, study_args, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setattr(studies_cli, "load_cifar10", lambda *args: pytest.fail("the data was read (or downloaded)"))
    monkeypatch.chdir(tmp_path)  # where a claims lock beside a database given by a relative path would go
    assert studies_main(study_args("mlp_activation", "--storage", url)) == 2
    assert said in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_folder_given_as_the_journal_is_refused_naming_a_file_in_it(study_args, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(studies_cli, "load_cifar10", lambda *args: pytest.fail("the data was read (or downloaded)"))
    folder = tmp_path / "shared"
    folder.mkdir()
    expected = f"error: --storage {folder} is a folder; give the journal file's path, such as --storage " \
               f"{folder / 'journal.log'}\n"
    assert studies_main(study_args("mlp_activation", "--storage", str(folder))) == 2
    assert capsys.readouterr().err == expected
    assert studies_main(["status", "--storage", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == expected
    assert not os.path.exists(tmp_path / "out") and os.listdir(folder) == []


@pytest.mark.parametrize("storage, message", [
    ("postgresql://someone:secret@127.0.0.1:1/studies",
     "--storage postgresql://someone:***@127.0.0.1:1/studies: cannot open the database (connection failed"),
    ("postgresql://someone:secret@dbhost:port/studies", "--storage (a malformed URL): cannot open the database"),
    ("sqlite:////no/such/folder/studies.db", "--storage sqlite:////no/such/folder/studies.db: there is no folder "
                                             "/no/such/folder for the database file; create it or correct the URL"),
])
def test_a_database_that_cannot_be_opened_gets_one_line_without_its_password(study_args, tmp_path, capsys,
                                                                             storage, message):
    pytest.importorskip("psycopg")
    assert studies_main(study_args("mlp_activation", "--storage", storage)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and len(err.splitlines()) == 1 and "secret" not in err
    assert not os.path.exists(tmp_path / "out")


def test_a_sqlite_url_whose_relative_folder_is_missing_says_how_an_absolute_path_is_written(study_args, tmp_path,
                                                                                           capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # sqlite:///tmp/studies.db was meant as /tmp/studies.db: it reads tmp/studies.db
    data_reads = []  # refused as the URL is read, before the data is
    monkeypatch.setattr(studies_cli, "load_cifar10", lambda *args: data_reads.append(args))
    assert studies_main(study_args("mlp_activation", "--storage", "sqlite:///tmp/studies.db")) == 2
    assert capsys.readouterr().err == (
        f"error: --storage sqlite:///tmp/studies.db: there is no folder tmp for the database file (a path after "
        f"sqlite:/// is relative to the current folder, {tmp_path}; one after sqlite://// is absolute); create it or "
        "correct the URL\n")
    assert os.listdir(tmp_path) == [] and data_reads == []


@pytest.mark.parametrize("storage, driver", [("postgresql://someone:secret@127.0.0.1:1/studies", "psycopg"),
                                             ("postgresql+psycopg2://someone:secret@127.0.0.1:1/studies", "psycopg2")])
def test_a_database_whose_driver_is_not_installed_gets_one_line_naming_it(study_args, tmp_path, capsys, monkeypatch,
                                                                          storage, driver):
    """An environment set up without requirements.txt (a cluster's own Python) lacks psycopg."""
    monkeypatch.setitem(sys.modules, driver, None)  # ``import psycopg`` then fails as where it is not installed
    assert studies_main(study_args("mlp_activation", "--storage", storage)) == 2
    shown = storage.replace("secret", "***")
    assert capsys.readouterr().err == (f"error: --storage {shown}: the database driver {driver} is not installed; pip "
                                       "install -r requirements.txt installs psycopg, the driver of postgresql:// "
                                       "URLs\n")
    assert not os.path.exists(tmp_path / "out")


def test_a_postgresql_url_opens_with_the_psycopg_driver_that_requirements_installs(tmp_path, monkeypatch):
    from studies import storage

    opened = []
    monkeypatch.setattr(storage, "_database", lambda url, given: opened.append((url, given)))
    for given, used in (("postgresql://u:pw@db.example/studies", "postgresql+psycopg://u:pw@db.example/studies"),
                        ("postgresql+psycopg://u@db.example/studies", "postgresql+psycopg://u@db.example/studies")):
        _, lock = storage.open_storage(given, str(tmp_path))  # connects to nothing yet
        assert opened.pop() == (used, given)
        assert lock.engine.url.render_as_string(hide_password=False) == used
