"""The Optuna storage that all the workers of a study share, and the lock that serialises their claims.

A journal file in the study's folder serves workers on one host, with a file lock beside it; a PostgreSQL
database serves workers on several machines, with an advisory lock; SQLite is accepted for one host. A journal
cut short by a crash is repaired (a partial last record) or named (a damaged line), and a file that is no journal
refused, before Optuna reads it. The lock also gives the time that its workers' heartbeats are written and judged by:
one clock for them all.
"""
import contextlib
import json
import os
import sys
import time
import zlib

import optuna

from training.errors import UserError
from training.persistence import cannot_write

from .console import say

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

JOURNAL_FILE = "journal.log"


def open_storage(url, study_dir):
    """The Optuna storage and the lock that serialises claims.

    Args:
        url: None for a journal file in ``study_dir``, a path for a journal file there, or a
            database URL (``postgresql://...`` for workers on several machines, ``sqlite:///...``).
    """
    kind = storage_kind(url)
    if kind == "journal":
        path = os.path.join(study_dir, JOURNAL_FILE) if url is None else url
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the folder of {path} ({exc.strerror}); give a writable --out "
                            "(or --storage)") from None
        try:
            _refuse_a_damaged_line(path)
        except OSError as exc:
            raise _unreadable(path, exc) from None
        _cut_off_a_partial_record(path)
        backend = _JournalFile(path)
        lock = FileLock(os.path.join(os.path.dirname(os.path.abspath(path)), "claims.lock"))
        try:
            return optuna.storages.journal.JournalStorage(backend), lock
        except ValueError as exc:  # every line is JSON, and Optuna still refuses one of them: another Optuna wrote it
            raise UserError(f"Optuna {optuna.__version__} cannot read the study's journal {path} ({exc}); it may have "
                            "been written by another version of Optuna: run the study with that version, or move the "
                            "journal aside to start the study's records afresh") from None
        except OSError as exc:
            raise _unreadable(path, exc) from None
    if kind == "postgresql":
        given = url
        if url.startswith("postgresql://"):  # the driver that requirements.txt installs, whatever SQLAlchemy's default
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return _database(url, given), PostgresLock(url)
    return _database(url, url), FileLock(url[len("sqlite:///"):].split("?")[0] + ".claims.lock")


def storage_kind(url):
    """``journal``, ``postgresql`` or ``sqlite`` for a ``--storage`` value (None: the study's journal file); one
    line for any other database, whose claims no lock here could serialise, and for a folder given as a journal."""
    if url is None or "://" not in url:
        if url is not None and os.path.isdir(url):
            raise UserError(f"--storage {url} is a folder; give the journal file's path, such as --storage "
                            f"{os.path.join(url, JOURNAL_FILE)}")
        return "journal"
    if url.startswith("postgresql"):
        return "postgresql"
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?")[0]
        if path in ("", ":memory:"):
            raise UserError(f"--storage {url} keeps the study's records in this process alone: other workers could "
                            "not share them, nor a rerun resume them; give a file, such as --storage "
                            "sqlite:///studies.db, or leave --storage out for the journal in the study's folder")
        folder = os.path.dirname(path)
        if folder and not os.path.isdir(folder):  # SQLite's own words would be "unable to open database file"
            relative = "" if os.path.isabs(path) else (f" (a path after sqlite:/// is relative to the current "
                                                       f"folder, {os.getcwd()}; one after sqlite://// is absolute)")
            raise UserError(f"--storage {url}: there is no folder {folder} for the database file{relative}; create it "
                            "or correct the URL")
        return "sqlite"
    raise UserError(f"--storage {shown_storage(url)}: unsupported; give a journal file path (one host), a "
                    "postgresql:// URL (several machines) or a sqlite:/// URL")


def shown_storage(url):
    """A ``--storage`` value as messages show it: a database URL without its password, which a shared log (a batch
    job's) must not hold."""
    if url is None or "://" not in url:
        return url
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return "(a malformed URL)"


def journal_lock(path):
    """The lock that every writer of the journal at ``path`` takes: a lock file created exclusively, which every
    filesystem can make, not Optuna's default symbolic link, which Windows (without developer mode), Google Drive as
    Colab mounts it, and FAT or SMB drives refuse. Both are ``path.lock``, so a worker of an earlier version that
    holds the link still keeps this one out."""
    return optuna.storages.journal.JournalFileOpenLock(path)


class _JournalFile(optuna.storages.journal.JournalFileBackend):
    """Optuna's journal file, taking ``journal_lock``; a record that the disk refuses (full, over quota) is one line
    naming the journal, whichever of Optuna's calls appended it, and leaves no part of itself behind."""

    def __init__(self, path):
        """
        Args:
            path: the journal file (created if missing).
        """
        self.lock = journal_lock(path)
        super().__init__(path, lock_obj=self.lock)
        self.path = path

    def append_logs(self, logs):
        """Append Optuna's records as JSON lines, as Optuna does, under the writers' lock. What a refused write put
        down of a record is cut off again: another worker's record appended to it would make a line that no reader
        can parse, in the middle of the journal, where the repair at the next start does not look."""
        records = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        self.lock.acquire()
        try:
            self._append(records)
        except OSError as exc:
            raise cannot_write(self.path, exc) from None
        finally:
            self.lock.release()

    def _append(self, records):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                written = 0
                while written < len(records):  # a write may put down only part of what it was given
                    written += os.write(fd, records[written:])
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)


def _cut_off_a_partial_record(path):
    """A journal whose writer stopped mid-record (a full disk, a crash) ends without a newline; the next record
    appended would join that partial one into a line that no reader can parse. So the partial record is cut off
    and kept beside the journal, under the lock that Optuna's writers hold, so that none is writing meanwhile."""
    if not _ends_mid_record(path):  # the usual case, seen without taking the writers' lock
        return
    lock = journal_lock(path)
    lock.acquire()
    try:
        if not _ends_mid_record(path):  # a live writer was finishing its record
            return
        with open(path, "rb+") as f:
            content = f.read()
            end = content.rfind(b"\n") + 1
            with open(path + ".partial", "ab") as kept:
                kept.write(content[end:] + b"\n")
            f.truncate(end)
    finally:
        lock.release()
    say(f"note: the study's journal {path} ended in a record cut short (a full disk, a crash); it was cut off and "
        f"kept in {path}.partial", file=sys.stderr)


def _ends_mid_record(path):
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def _unreadable(path, exc):
    """No permission to read the journal (a study on a shared disk), or a failing disk."""
    return UserError(f"cannot read the study's journal {path} ({exc.strerror}); reading it needs read access, running "
                     "the study write access too; or use a new --out (or --storage)")


def _refuse_a_damaged_line(path):
    """One line naming the first of a journal's lines that is not an Optuna record, or saying that the file is no
    journal at all (``--storage`` given another file), before anything is written to it or cut off from it. Optuna
    would skip a damaged line when it is the last, as a record still being written, and append the next record after
    it, which then makes the journal unreadable. What follows the last newline is a record being written or cut
    short (``_cut_off_a_partial_record``), judged only by whether it could begin one."""
    if not os.path.isfile(path):
        return
    with open(path, "rb") as f:
        *lines, unfinished = f.read().split(b"\n")
    is_record = [_is_record(line) for line in lines]
    if not any(is_record) and (lines or unfinished and not unfinished.startswith(b"{")):
        raise UserError(f"{path} is not a study journal: it holds no record that Optuna wrote; move it aside, or give "
                        "--storage the path of a new file")
    if all(is_record):
        return
    damaged = is_record.index(False) + 1
    aside = "move the journal aside to start the study's records afresh"
    if damaged == len(lines):
        raise UserError(f"the study's journal {path} is damaged at line {damaged}, its last: it is not a record that "
                        f"Optuna wrote (an edit, a disk fault); remove that line (keep a copy of the file), or {aside}")
    raise UserError(f"the study's journal {path} is damaged at line {damaged}: a record was cut short (a full disk, "
                    f"a crash) and others were written after it; remove that line (keep a copy of the file), or "
                    f"{aside}")


def _is_record(line):
    try:
        record = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return False
    return isinstance(record, dict) and "op_code" in record


def close_storage(storage):
    """Close a database storage's pooled connections (a journal file holds none), so that a process that
    goes on after a study (``run all``, ``status``) keeps no idle connection to the database."""
    if isinstance(storage, optuna.storages.RDBStorage):
        storage.remove_session()
        storage.engine.dispose()


def _database(url, given):
    """Optuna's storage in the database at ``url`` (the user's ``given`` URL, as SQLAlchemy wants it);
    one line naming the problem, without the password, if it cannot be opened."""
    import sqlalchemy

    try:
        return optuna.storages.RDBStorage(url)
    except ImportError as exc:  # the URL's driver, which requirements.txt installs for postgresql:// URLs
        driver = getattr(exc.__cause__, "name", None) or "of this URL"
        raise UserError(f"--storage {shown_storage(given)}: the database driver {driver} is not installed; "
                        "pip install -r requirements.txt installs psycopg, the driver of postgresql:// URLs") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as exc:  # ValueError: a malformed URL
        raise UserError(f"--storage {shown_storage(given)}: cannot open the database ({_database_reason(exc)}); check "
                        "the URL and that the database can be reached from this machine") from None


def refused_write(exc):
    """One line for a write that the study's database refused (its disk full, its server gone), which Optuna raises
    as a ``StorageInternalError`` from SQLAlchemy's error."""
    return UserError(f"the study's database refused a write ({_database_reason(exc.__cause__ or exc)}); make room on "
                     "its disk, or check that it can be reached, then rerun the same command: the study resumes from "
                     "what it recorded")


def _database_reason(exc):
    """The database driver's own words, first line, from a SQLAlchemy error (or any other)."""
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


class FileLock:
    """An exclusive lock on a file, for processes on one host: ``flock`` where the system and the filesystem have it
    (the kernel releases it if its holder dies), else Optuna's lock file (Windows, Lustre without flock)."""

    def __init__(self, path, portable=None):
        """
        Args:
            path: the lock file (created if missing).
            portable: use Optuna's lock file instead of ``flock``; ``None``: only where ``flock`` is missing.
        """
        self.path = path
        self.portable = fcntl is None if portable is None else portable

    @staticmethod
    def now():
        """This host's time, which every worker holding this lock reads: they run on this host."""
        return time.time()

    @contextlib.contextmanager
    def hold(self, key):
        if not self.portable:
            with open(self.path, "a") as f:
                if self._flock(f):
                    try:
                        yield
                    finally:
                        fcntl.flock(f, fcntl.LOCK_UN)
                    return
        lock = optuna.storages.journal.JournalFileOpenLock(self.path)
        lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _flock(self, f):
        """Take ``flock`` on ``f``; on a filesystem without it (Lustre mounted without it, some FUSE ones), False,
        and the lock file from then on, as every process on that filesystem does."""
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
            return True
        except OSError:
            self.portable = True
            return False


class PostgresLock:
    """A PostgreSQL session advisory lock, keyed by the study's name: processes on any machine."""

    def __init__(self, url):
        """
        Args:
            url: the database URL of the study's storage.
        """
        import sqlalchemy

        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        self.text = sqlalchemy.text

    def now(self):
        """The database server's time, in seconds since the epoch: the workers' machines share it whatever their own
        clocks say, so a worker whose clock runs minutes behind is not judged silent for that long."""
        with self.engine.connect() as connection:
            return float(connection.execute(self.text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")).scalar())

    @contextlib.contextmanager
    def hold(self, key):
        lock_id = zlib.crc32(key.encode())
        with self.engine.connect() as connection:
            connection.execute(self.text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
            try:
                yield
            finally:
                connection.execute(self.text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
