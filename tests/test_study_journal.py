"""The journal file that holds a study's state by default: its repair and refusals, writes the disk refuses, its
lock, and the claims lock on filesystems with and without flock or symbolic links. Databases are in
test_study_storage.py."""
import os
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from helpers import ROOT, jobs_of, load_study, with_file_size_limit
from studies.__main__ import main as studies_main


def test_a_journal_that_cannot_be_read_gets_one_line(study_args, tmp_path, capsys, monkeypatch):
    assert studies_main(study_args("mlp_activation", "--values", "relu")) == 0
    journal = tmp_path / "out" / "mlp_activation" / "journal.log"

    def unreadable(*args, **kwargs):  # a test run as root reads any file, whatever its mode
        raise PermissionError(13, "Permission denied", str(journal))
    monkeypatch.setattr(optuna.storages.journal.JournalFileBackend, "read_logs", unreadable)
    capsys.readouterr()
    assert studies_main(["status", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"error: cannot read the study's journal {journal} (Permission denied); "
                                       "reading it needs read access, running the study write access too; or use "
                                       "a new --out (or --storage)\n")


def test_a_journal_cut_short_mid_record_is_repaired_and_one_damaged_inside_is_named(study_args, tmp_path, capsys):
    argv = study_args("mlp_activation", "--values", "relu")
    assert studies_main(argv) == 0
    journal = tmp_path / "out" / "mlp_activation" / "journal.log"
    whole = journal.read_bytes()
    partial = b'{"op_code": 5, "worker_id": "w", "trial_id": 0, "par'  # a writer stopped mid-record
    journal.write_bytes(whole + partial)
    capsys.readouterr()
    assert studies_main(argv) == 0  # resumes: nothing left to train
    assert "-> " not in capsys.readouterr().out
    repaired = journal.read_bytes()  # the rerun's own records follow the cut
    assert repaired.startswith(whole) and partial not in repaired
    assert (tmp_path / "out" / "mlp_activation" / "journal.log.partial").read_bytes() == partial + b"\n"
    whole = repaired
    lines = whole.splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:3]) + partial + b"".join(lines[3:]))  # records appended after the cut
    assert studies_main(argv) == 2
    assert (f"error: the study's journal {journal} is damaged at line 4: a record was cut short"
            in capsys.readouterr().err)


def test_a_journal_whose_last_line_is_damaged_is_named_before_a_record_is_appended_after_it(study_args, tmp_path,
                                                                                             capsys):
    """Optuna reads a last line that is not JSON as a record still being written and skips it; the next record
    appended would then make that line a damaged one inside the journal, which no reader gets past."""
    argv = study_args("mlp_activation", "--values", "relu")
    assert studies_main(argv) == 0
    journal = tmp_path / "out" / "mlp_activation" / "journal.log"
    damaged = journal.read_bytes() + b"garbage\n"
    journal.write_bytes(damaged)
    lines = damaged.count(b"\n")
    capsys.readouterr()
    for command in (argv, ["status", "--out", str(tmp_path / "out")]):
        assert studies_main(command) == 2
        assert capsys.readouterr().err == (f"error: the study's journal {journal} is damaged at line {lines}, its "
                                           "last: it is not a record that Optuna wrote (an edit, a disk fault); remove "
                                           "that line (keep a copy of the file), or move the journal aside to start "
                                           "the study's records afresh\n")
        assert journal.read_bytes() == damaged


@pytest.mark.parametrize("content", [b"notes\n", b'{"a": 1}\n', b"PK\x03\x04 binary, without a newline"],
                         ids=["text", "json lines", "binary"])
def test_a_storage_file_that_is_no_journal_is_refused_and_left_as_it_was(study_args, tmp_path, capsys, content):
    """``--storage`` given another file: not a line of it is appended, nor its end cut off as a partial record."""
    other = tmp_path / "notes.txt"
    other.write_bytes(content)
    assert studies_main(study_args("mlp_activation", "--storage", str(other))) == 2
    assert capsys.readouterr().err == (f"error: {other} is not a study journal: it holds no record that Optuna wrote; "
                                       "move it aside, or give --storage the path of a new file\n")
    assert other.read_bytes() == content
    assert not os.path.exists(f"{other}.partial") and not os.path.exists(tmp_path / "out" / "mlp_activation" / "runs")


def test_runs_whose_journal_was_removed_are_not_trained_again_over_and_status_names_them(study_args, tmp_path,
                                                                                         capsys):
    """Without its records (the journal deleted, or the study run with another --storage), a study would train every
    run again in the folder of a finished one."""
    argv = study_args("mlp_activation", "--values", "relu")
    assert studies_main(argv) == 0
    assert studies_main(study_args("mlpmixer_patch", "--values", "8")) == 0
    study_dir = tmp_path / "out" / "mlp_activation"
    results = study_dir / "runs" / "activation-relu_seed-42" / "results.json"
    finished = results.read_bytes()
    os.remove(study_dir / "journal.log")
    capsys.readouterr()
    assert studies_main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: 1 run in {study_dir / 'runs'} trained, but {study_dir / 'journal.log'} has no record of it "
        "(activation-relu_seed-42): copied in from another run of the study, or recorded elsewhere (another --storage, "
        "a journal since removed); this command would train it again over what it holds: move it aside to train it "
        "here, or leave activation relu out of --values\n")
    assert results.read_bytes() == finished
    assert studies_main(["status", "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out == (f"mlpmixer_patch: 1 completed\nmlp_activation: runs in {study_dir / 'runs'}, "
                                       f"but no record of the study in {study_dir / 'journal.log'}; if it ran with "
                                       "--storage, give the same --storage to see it\n")


@pytest.mark.skipif(os.name != "posix", reason="the kernel's file size limit is POSIX")
def test_a_journal_that_the_disk_refuses_to_grow_gets_one_line_and_a_rerun_completes_the_study(study_args, tmp_path,
                                                                                              capsys):
    """Every Optuna call that records something appends to the journal: a full disk there is one line too."""
    argv = study_args("mlp_activation", "--values", "relu", "tanh")
    script = f"import sys; from studies.__main__ import main; sys.exit(main({argv!r}))"
    run = subprocess.run([sys.executable, "-c", with_file_size_limit(script, 1000)], cwd=ROOT, capture_output=True,
                         text=True)
    journal = tmp_path / "out" / "mlp_activation" / "journal.log"
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: cannot write {journal} (File too large); make room")
    assert studies_main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "study mlp_activation: 2 completed"


@pytest.mark.skipif(os.name != "posix", reason="the kernel's file size limit is POSIX")
def test_a_record_that_the_disk_cuts_short_is_taken_back_so_the_next_writers_record_stays_readable(study_args,
                                                                                                  tmp_path, capsys):
    """A worker whose record only partly fits must not leave that part: another worker, still running, would append
    its own record to it, making one line that no reader can parse (the journal's repair at the next start only cuts
    off a partial record at the end)."""
    argv = study_args("mlp_activation", "--values", "relu")
    assert studies_main(argv) == 0
    journal = tmp_path / "out" / "mlp_activation" / "journal.log"
    whole = journal.read_bytes()
    more = study_args("mlp_activation", "--values", "relu", "tanh")
    script = f"import sys; from studies.__main__ import main; sys.exit(main({more!r}))"
    run = subprocess.run([sys.executable, "-c", with_file_size_limit(script, len(whole) + 40)], cwd=ROOT,
                         capture_output=True, text=True)  # room for part of the next record
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: cannot write {journal} (File too large)")
    kept = journal.read_bytes()
    assert kept.startswith(whole) and kept.endswith(b"\n") and len(kept) <= len(whole) + 40
    capsys.readouterr()
    assert studies_main(more) == 0
    assert "cut short" not in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc (Linux)")
def test_appending_to_the_journal_leaves_no_file_open(tmp_path):
    """A worker appends to its journal at every epoch and every heartbeat (30 s) of its runs: a file left open each
    time would reach the process's limit (1024 on Linux) within a long search."""
    from studies.storage import JOURNAL_FILE, _JournalFile

    journal = _JournalFile(str(tmp_path / JOURNAL_FILE))
    open_before = len(os.listdir("/proc/self/fd"))
    for number in range(20):
        journal.append_logs([{"op_code": 0, "number": number}, {"op_code": 1, "number": number}])
    assert len(os.listdir("/proc/self/fd")) == open_before
    assert len((tmp_path / JOURNAL_FILE).read_text().splitlines()) == 40


def test_a_journal_left_empty_or_cut_short_opens_and_its_repair_gives_the_writers_lock_back(tmp_path, capsys):
    from studies.storage import open_storage

    journal = tmp_path / "journal.log"
    journal.write_bytes(b"")  # a worker killed between creating the journal and writing its first record
    storage, _ = open_storage(None, str(tmp_path))
    optuna.create_study(study_name="s", storage=storage)
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "w", "trial_id": 0, "par')
    capsys.readouterr()
    storage, _ = open_storage(None, str(tmp_path))
    assert journal.read_bytes() == whole and not os.path.lexists(f"{journal}.lock")  # no writer waits 30 s for it
    assert capsys.readouterr().err == (f"note: the study's journal {journal} ended in a record cut short (a full disk, "
                                       f"a crash); it was cut off and kept in {journal}.partial\n")
    assert optuna.load_study(study_name="s", storage=storage).study_name == "s"


def test_a_journal_this_optuna_cannot_read_is_named_without_blaming_a_line(study_args, tmp_path, capsys):
    import json

    argv = study_args("mlp_activation", "--values", "relu")
    assert studies_main(argv) == 0
    journal = tmp_path / "out" / "mlp_activation" / "journal.log"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    param = next(record for record in records if "distribution" in record)
    param["distribution"] = json.dumps({"name": "DistributionOfALaterOptuna", "attributes": {}})
    journal.write_text("".join(json.dumps(record) + "\n" for record in records))
    capsys.readouterr()
    assert studies_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Optuna {optuna.__version__} cannot read the study's journal {journal} (")
    assert "written by another version of Optuna" in err and "damaged" not in err and len(err.splitlines()) == 1


def _refuse_flock(monkeypatch):
    """As a filesystem without flock does (Lustre mounted without it, some FUSE ones)."""
    import errno
    import types

    from studies import storage

    def flock(f, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(storage, "fcntl", types.SimpleNamespace(flock=flock, LOCK_EX=2, LOCK_NB=4, LOCK_UN=8))


def _refuse_symlinks(monkeypatch):
    """As Windows without developer mode, Google Drive mounted in Colab, and FAT or SMB drives do."""
    import errno

    def symlink(*args, **kwargs):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "symlink", symlink)


@pytest.mark.parametrize("refused", [_refuse_symlinks, _refuse_flock], ids=["no symlinks", "no flock"])
def test_a_study_runs_on_a_filesystem_that_refuses_symlinks_or_flock(refused, study_args, tmp_path, monkeypatch):
    refused(monkeypatch)
    assert studies_main(study_args("mlp_activation", "--values", "relu", "tanh")) == 0
    assert jobs_of(load_study(str(tmp_path / "out"), "mlp_activation")) == {
        "activation-relu_seed-42": [TrialState.COMPLETE], "activation-tanh_seed-42": [TrialState.COMPLETE]}


def test_the_journal_lock_waits_for_a_link_that_an_earlier_version_holds(tmp_path):
    import threading

    from studies.storage import journal_lock

    journal = str(tmp_path / "journal.log")
    open(journal, "w").close()
    os.symlink(journal, journal + ".lock")  # Optuna's default lock, which this package's earlier versions took
    lock = journal_lock(journal)
    waiter = threading.Thread(target=lock.acquire)
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()
    os.unlink(journal + ".lock")
    waiter.join(timeout=10)
    assert not waiter.is_alive() and os.path.isfile(journal + ".lock")
    lock.release()


@pytest.mark.parametrize("portable, flock_refused", [(False, False), (True, False), (False, True)],
                         ids=["flock", "lock-file", "lock-file where flock is refused"])
def test_the_claims_lock_excludes_other_holders(tmp_path, portable, flock_refused, monkeypatch):
    import threading

    from studies.storage import FileLock

    if flock_refused:
        _refuse_flock(monkeypatch)
    inside, overlaps = [], []

    def hold_repeatedly():
        lock = FileLock(str(tmp_path / "claims.lock"), portable=portable)
        for _ in range(20):
            with lock.hold("study"):
                inside.append(1)
                overlaps.append(len(inside) > 1)
                time.sleep(0.001)
                inside.pop()
    threads = [threading.Thread(target=hold_repeatedly) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(overlaps) == 80 and not any(overlaps)


@pytest.mark.skipif(sys.platform == "win32", reason="flock and SIGKILL: POSIX only")
def test_the_claims_lock_of_a_worker_killed_while_holding_it_is_free_at_once(tmp_path):
    """The OOM killer's SIGKILL mid-claim: the kernel drops the flock, where a lock file would stay behind and keep
    every other worker out until Optuna's grace period (30 s) let them force it."""
    import signal
    import threading

    from studies.storage import FileLock

    path = str(tmp_path / "claims.lock")
    with subprocess.Popen(
            [sys.executable, "-c", "import time\nfrom studies.storage import FileLock\n"
             f"with FileLock({path!r}).hold('study'):\n    print('held', flush=True)\n    time.sleep(600)"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline() == "held\n"
        finally:
            holder.send_signal(signal.SIGKILL)
    claimed = threading.Event()

    def claim():
        with FileLock(path).hold("study"):
            claimed.set()
    threading.Thread(target=claim, daemon=True).start()
    assert claimed.wait(timeout=10)  # at once; the bound only keeps a failure from hanging the suite
    assert os.listdir(tmp_path) == ["claims.lock"]  # no lock file of the dead worker's left behind
