"""What a run leaves on disk, piece by piece: atomic writes from any thread, errors that must not be swallowed, and
the hold on a --logdir (a stale lock file, a filesystem or platform without flock, a lock file that cannot be made).
Whole runs that write, fill a disk or are refused are in test_interruptions.py and test_bad_input.py."""
import errno
import os
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from helpers import ROOT, with_file_size_limit
from training import persistence
from training.errors import UserError


def test_an_atomic_write_works_from_a_thread_other_than_the_main_one(tmp_path):
    path = tmp_path / "results.json"
    failures = []

    def write():
        try:
            persistence.write_json(str(path), {"epochs_completed": 1})
        except Exception as exc:  # a thread's exception would not fail the test
            failures.append(exc)
    worker = threading.Thread(target=write)
    worker.start()
    worker.join()
    assert failures == [] and path.read_text() == '{\n  "epochs_completed": 1\n}\n'


def test_an_error_while_writing_propagates_and_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("previous\n")

    def failing(f):
        f.write(b"half")
        raise ValueError("the serializer failed")
    with pytest.raises(ValueError, match="the serializer failed"):
        persistence.atomic_write(str(path), failing)
    assert path.read_text() == "previous\n" and os.listdir(tmp_path) == ["results.json"]


@pytest.mark.skipif(os.name != "posix", reason="runs hold their --logdir with flock, which Windows lacks")
def test_a_lock_file_that_a_killed_run_left_is_taken_over_and_names_its_new_holder(tmp_path):
    lock = tmp_path / persistence.LOCK_FILE
    lock.write_text("pid 7 on elsewhere, a longer line than the next holder's\n")  # no process holds it any more
    with persistence.logdir_held(str(tmp_path)):
        assert lock.read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
    assert not lock.exists()


def test_without_flock_a_logdir_is_written_unheld_and_no_lock_file_is_made(tmp_path, monkeypatch):
    monkeypatch.setattr(persistence, "fcntl", None)  # Windows
    with persistence.logdir_held(str(tmp_path)):
        assert os.listdir(tmp_path) == []
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="runs hold their --logdir with flock, which Windows lacks")
def test_a_lock_file_that_cannot_be_made_gets_one_line(tmp_path, monkeypatch):
    def opening(path, mode):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    monkeypatch.setattr(persistence, "open", opening, raising=False)
    with pytest.raises(UserError, match=rf"^cannot write {tmp_path / persistence.LOCK_FILE} \(Disk quota exceeded\); "
                                        "make room"):
        with persistence.logdir_held(str(tmp_path)):
            pytest.fail("the run went on without its hold")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="runs hold their --logdir with flock, which Windows lacks")
def test_a_lock_file_that_the_kernel_refuses_to_write_gets_one_line(tmp_path):
    script = textwrap.dedent(f"""
        from training import persistence
        from training.errors import UserError
        try:
            with persistence.logdir_held({str(tmp_path)!r}):
                print("the run went on without its hold")
        except UserError as exc:
            print(exc)
    """)
    run = subprocess.run([sys.executable, "-c", with_file_size_limit(script, 0)], cwd=ROOT, capture_output=True,
                         text=True)
    assert (run.returncode, run.stderr) == (0, "")
    assert run.stdout.startswith(f"cannot write {tmp_path / persistence.LOCK_FILE} (File too large); make room")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="runs hold their --logdir with flock, which Windows lacks")
def test_a_lock_file_removed_by_its_holder_while_this_run_opened_it_is_made_anew(tmp_path, monkeypatch):
    real_open, opened = open, []

    def open_as_the_holder_leaves(path, mode):
        f = real_open(path, mode)
        if not opened:  # the run that held it ends and removes it between this run's open and its flock
            os.unlink(path)
        opened.append(f)
        return f
    monkeypatch.setattr(persistence, "open", open_as_the_holder_leaves, raising=False)
    with persistence.logdir_held(str(tmp_path)):
        assert len(opened) == 2 and opened[0].closed  # the removed file was let go, and a new one is held
        assert (tmp_path / persistence.LOCK_FILE).read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="runs hold their --logdir with flock, which Windows lacks")
@pytest.mark.parametrize("case", ["held by another run", "no flock on this filesystem"])
def test_a_lock_file_that_this_run_cannot_hold_is_closed(case, tmp_path, monkeypatch):
    import fcntl
    import types
    import warnings

    real_open, opened = open, []
    monkeypatch.setattr(persistence, "open", lambda path, mode: opened.append(real_open(path, mode)) or opened[-1],
                        raising=False)
    with real_open(tmp_path / persistence.LOCK_FILE, "a+") as holder:
        if case == "held by another run":
            holder.write("pid 7 on elsewhere\n")
            holder.flush()
            fcntl.flock(holder, fcntl.LOCK_EX)  # another open file: its lock excludes this process's too
            with pytest.raises(persistence.LogdirBusy, match=r"another run \(pid 7 on elsewhere\)"):
                with persistence.logdir_held(str(tmp_path)):
                    pass
        else:
            def flock(f, operation):
                raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
            monkeypatch.setattr(persistence, "fcntl", types.SimpleNamespace(flock=flock, LOCK_EX=2, LOCK_NB=4))
            with warnings.catch_warnings(record=True), persistence.logdir_held(str(tmp_path)):
                pass
    assert len(opened) == 1 and opened[0].closed


def test_results_are_strict_json_in_lines_a_person_can_read(tmp_path):
    path = tmp_path / "results.json"
    with pytest.raises(ValueError):  # a NaN that skipped finite_or_none stops the write instead of breaking JSON
        persistence.write_json(str(path), {"valid_losses": [float("nan")]})
    assert os.listdir(tmp_path) == []
    persistence.write_json(str(path), {"valid_losses": [persistence.finite_or_none(float("inf")),
                                                         persistence.finite_or_none(0.5)]})
    assert path.read_text() == '{\n  "valid_losses": [\n    null,\n    0.5\n  ]\n}\n'
    assert [persistence.finite_or_none(value) for value in (float("-inf"), float("nan"), 3, None)] == [
        None, None, 3, None]


def test_the_saved_random_states_restore_every_generator_that_training_may_draw_from():
    import random

    import numpy as np
    import torch

    state = persistence.rng_state()
    drawn = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1)  # what ran between the checkpoint and the resume
    np.random.seed(1)
    torch.manual_seed(1)
    persistence.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == drawn


@pytest.mark.parametrize("saved_on_gpu, gpu_here, restored", [(True, True, True), (True, False, False),
                                                              (False, True, False), (False, False, False)])
def test_the_gpus_random_states_are_restored_where_both_runs_had_a_gpu(saved_on_gpu, gpu_here, restored,
                                                                        monkeypatch):
    import torch

    state = persistence.rng_state()
    state["cuda"] = [torch.zeros(8, dtype=torch.uint8)] if saved_on_gpu else []
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu_here)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", calls.append)
    persistence.set_rng_state(state)
    assert calls == ([state["cuda"]] if restored else [])


@pytest.mark.parametrize("gpu_here", [True, False])
def test_the_gpus_random_states_are_saved_where_there_is_a_gpu(gpu_here, monkeypatch):
    import torch

    gpu_states = [torch.arange(8, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu_here)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: gpu_states)
    assert persistence.rng_state()["cuda"] == (gpu_states if gpu_here else [])


class _MakesAFolderWhenUnpickled:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.skipif(os.name != "posix", reason="runs hold their --logdir with flock, which Windows lacks")
def test_a_logdir_held_by_a_run_that_has_not_yet_named_itself_is_refused_saying_so(tmp_path):
    import fcntl

    with open(tmp_path / persistence.LOCK_FILE, "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # locked, its "pid ... on ..." line not yet written
        with pytest.raises(persistence.LogdirBusy, match=r"another run \(a process that is starting\)"):
            with persistence.logdir_held(str(tmp_path)):
                pass


def test_an_atomic_write_fills_a_hidden_file_beside_its_target_and_then_replaces_the_target(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("earlier")
    seen = []

    def write(f):
        seen.append((sorted(os.listdir(tmp_path)), target.read_text()))
        f.write(b"later")

    persistence.atomic_write(str(target), write)
    (names, before), = seen
    assert before == "earlier" and len(names) == 2 and names[0].startswith(".tmp-") and names[1] == "results.json"
    assert target.read_text() == "later" and os.listdir(tmp_path) == ["results.json"]


def test_a_checkpoint_made_with_other_settings_names_each_that_differs(tmp_path):
    import torch

    state = {key: None for key in persistence.CHECKPOINT_KEYS}
    state["signature"] = {"model": "mlp", "lr": 0.1, "seed": 1, "model_config": {"embed_dim": 256, "drop_rate": 0.0}}
    torch.save(state, tmp_path / persistence.CHECKPOINT_FILE)
    now = {"model": "mlp", "lr": 0.01, "seed": 2, "mix": "none", "model_config": {"embed_dim": 256, "num_blocks": 4}}
    with pytest.raises(UserError) as error:
        persistence.load_checkpoint(str(tmp_path), now)
    assert str(error.value) == (  # mix: not recorded by the version that wrote the checkpoint, so not compared
        f"--resume: the checkpoint in {tmp_path} was made with other settings: lr 0.1, now 0.01; seed 1, now 2; the "
        "model config's drop_rate 0.0, now not given; the model config's num_blocks not given, now 4; resume with "
        "the same settings or use a new --logdir")


def test_a_checkpoint_that_would_run_code_when_loaded_is_refused_unrun(tmp_path):
    import torch

    marker = tmp_path / "code_ran"
    torch.save({"model": _MakesAFolderWhenUnpickled(str(marker))}, tmp_path / persistence.CHECKPOINT_FILE)
    with pytest.raises(UserError, match=r"^--resume: cannot read .*checkpoint\.pt \(UnpicklingError\)"):
        persistence.load_checkpoint(str(tmp_path), {})
    assert not marker.exists()
