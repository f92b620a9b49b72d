"""What a run leaves on disk: results.json (strict JSON, written atomically) and the per-epoch
checkpoint (model, optimizer, history and every RNG state, loadable with ``weights_only=True``)."""
import contextlib
import functools
import json
import math
import os
import random
import signal
import socket
import tempfile
import threading
import warnings

import numpy as np
import torch

from .errors import LogdirBusy, UserError, setting_changes

try:
    import fcntl
except ImportError:  # Windows: no flock, and runs are not locked out of each other's --logdir there
    fcntl = None

RESULTS_FILE = "results.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".run.lock"
CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "history", "signature", "rng")  # what every version wrote


@contextlib.contextmanager
def _stop_signals_held():
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them: a stop that lands inside a
    write would otherwise surface as the serializer's error instead of an interrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    previous = {signum: handler for signum, handler in previous.items() if handler is not None}
    for signum in previous:
        signal.signal(signum, lambda number, frame: held.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)


@functools.lru_cache(maxsize=None)
def _new_file_mode():
    """The mode ``open`` gives a new file under this process's umask (0644 under the usual 022).

    ``os.umask`` can only be read by setting it: it is set to 077 for that instant, once per process, so
    that a file another thread (a study worker's heartbeat) makes meanwhile is only more private."""
    umask = os.umask(0o077)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write):
    """Write through ``write(file)`` into a temporary file beside ``path``, then rename it over ``path``.

    ``mkstemp`` makes its file readable by its owner only; the file gets the mode that ``open`` would
    have given it, so that results and reports on a shared disk stay readable by the course's staff
    and the other machines of a study, as the template's ``results.json`` is."""
    folder = os.path.dirname(os.path.abspath(path))
    mode = _new_file_mode()
    with _stop_signals_held():
        try:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        except OSError as exc:
            raise cannot_write(path, exc) from None
        try:
            with contextlib.suppress(OSError):  # a filesystem that keeps modes to itself (FUSE mounts of S3, Drive)
                os.chmod(tmp, mode)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            os.unlink(tmp)
            failed_write = _failed_write(exc)
            if failed_write is not None:  # a full disk, a quota, a folder made read-only meanwhile
                raise cannot_write(path, failed_write) from None
            raise


def _failed_write(exc):
    """The ``OSError`` that ``exc`` is, or that was being handled when it was raised: ``torch.save`` reports a
    write that its zip writer could not make (a full disk) as a ``RuntimeError`` raised while handling it."""
    while isinstance(exc, Exception):
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def logdir_held(logdir):
    """Hold ``logdir`` while a run writes into it, so that a second run into the same folder is refused with
    ``LogdirBusy`` instead of interleaving its epochs with the first one's in results.json and the checkpoint.

    It is an ``flock`` on ``LOCK_FILE`` in the folder, which says who holds it (for the refusal's message). The
    kernel drops the lock when its holder exits or dies, so no stale lock outlives a run; a run that ends
    removes the file, and a run that locked a file which its holder removed meanwhile locks the new one.

    Yields whether it holds the folder: not on Windows, nor on a filesystem without ``flock``."""
    if fcntl is None:
        yield False
        return
    path = os.path.join(logdir, LOCK_FILE)
    while True:
        created = not os.path.exists(path)
        try:
            f = open(path, "a+")
        except OSError as exc:
            raise cannot_write(path, exc) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process that is starting"
            f.close()
            raise LogdirBusy(f"--logdir {logdir} is being written by another run ({holder}); wait for it to end, "
                             "or give another --logdir") from None
        except OSError as exc:  # a filesystem without flock (Lustre mounted without it, some FUSE ones): run unheld
            f.close()
            if created:  # an empty file that holds nothing would only mislead; another's is left to it
                with contextlib.suppress(OSError):
                    os.unlink(path)
            warnings.warn(f"cannot lock --logdir {logdir} ({exc.strerror}): nothing keeps a second run out of it")
            yield False
            return
        if _same_file(f, path):
            break
        f.close()
    with f:  # closing it drops the lock, after the file is removed: one who locks the old file then retries
        try:
            try:
                f.truncate(0)
                # unbuffered: a write that fails (a full disk) leaves nothing for closing the file to fail on again
                os.write(f.fileno(), f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            except OSError as exc:
                raise cannot_write(path, exc) from None
            yield True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _same_file(f, path):
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def cannot_write(path, exc):
    """One line for a file that the disk refused (``exc``, an ``OSError``): what a run or a study writes."""
    return UserError(f"cannot write {path} ({exc.strerror or exc}); make room on that disk (or under your quota) "
                     "or give a writable folder; what was written before is intact, and --resume or a rerun of the "
                     "study continues from it")


def finite_or_none(value):
    """JSON has no NaN or infinity: such values are stored as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, data):
    text = json.dumps(data, indent=2, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode("utf-8") + b"\n"))


def rng_state():
    """Every RNG that training draws from, as tensors and plain values (``weights_only``-safe)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(logdir, model, optimizer, epoch, history, signature, scaler=None):
    """Write everything a resumed run needs; ``scaler`` is fp16's loss scaler, if the run has one."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
             "history": history, "signature": signature, "rng": rng_state(),
             "scaler": scaler.state_dict() if scaler is not None else None}
    atomic_write(os.path.join(logdir, CHECKPOINT_FILE), lambda f: torch.save(state, f))


def require_checkpoint(logdir):
    """Refuse ``--resume`` into a folder that holds no checkpoint; returns the checkpoint's path."""
    path = os.path.join(logdir, CHECKPOINT_FILE)
    if not os.path.isfile(path):
        raise UserError(f"--resume: no checkpoint at {path}; run without --resume to start this run")
    return path


def load_checkpoint(logdir, signature):
    """Load ``logdir``'s checkpoint, refusing one made by a different run configuration."""
    path = require_checkpoint(logdir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a damaged or foreign file
        raise UserError(f"--resume: cannot read {path} ({type(exc).__name__}); delete it and start again "
                        "without --resume") from None
    missing = [key for key in CHECKPOINT_KEYS if key not in state] if isinstance(state, dict) else []
    if missing or not isinstance(state, dict):  # a torch file that another program saved under this name
        found = f"it has no {missing[0]}" if missing else f"it holds a {type(state).__name__}, not a dict"
        raise UserError(f"--resume: {path} is not a checkpoint that main.py wrote ({found}); move it elsewhere and "
                        "start again without --resume, or give the --logdir of the run to continue")
    made_with = state["signature"]
    # a key the checkpoint lacks was not recorded by the version that wrote it, and is not compared
    compared = [key for key in signature if key in made_with]

    def flags(settings):
        return {key: settings[key] for key in compared if key != "model_config"}
    changes = setting_changes(flags(made_with), flags(signature), lambda _: "not given")
    if "model_config" in compared:
        changes.update(setting_changes(made_with["model_config"], signature["model_config"], lambda _: "not given",
                                       "the model config's "))
    if changes:
        raise UserError(f"--resume: the checkpoint in {logdir} was made with other settings: "
                        f"{'; '.join(change for _, change in sorted(changes.items()))}; resume with the same settings "
                        "or use a new --logdir")
    return state
