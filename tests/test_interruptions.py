"""main.py interrupted and resumed, on tiny fake data: checkpoints, resume equivalence, Ctrl-C and SIGTERM at each
stage, a disk that fills up, and the files' modes. Training and results.json are in test_runner.py, output to a reader
that leaves or to a full disk in test_output_streams.py."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import main
from helpers import ROOT, read_results, with_file_size_limit
from training import engine, persistence

METRICS = ("train_losses", "valid_losses", "train_accs", "valid_accs", "test_loss", "test_acc", "status",
           "epochs_completed", "best_valid_acc", "best_epoch", "num_params", "model_config", "test_confusion",
           "hidden_units", "first_layer")  # a resumed run rebuilds the initial first layer from its seed


def _interrupt_at(monkeypatch, epoch_to_stop):
    real_train = engine.train

    def train(epoch, *args, **kwargs):
        if epoch == epoch_to_stop:
            raise KeyboardInterrupt
        return real_train(epoch, *args, **kwargs)
    monkeypatch.setattr(engine, "train", train)


def test_checkpoint_loads_with_weights_only(run_args, tmp_path):
    logdir = str(tmp_path / "run")
    main.main(run_args("mlpmixer", "--logdir", logdir, epochs=1))
    state = torch.load(os.path.join(logdir, "checkpoint.pt"), weights_only=True)
    assert state["epoch"] == 1 and set(state) >= {"model", "optimizer", "rng", "history"}
    assert state["scaler"] is None  # fp32: no loss scaler
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}


@pytest.mark.parametrize("model,pipeline,schedule", [("mlpmixer", "tensor", "cosine"),
                                                     ("mlp", "torchvision", "constant"),
                                                     ("resnet18", "tensor", "constant")])  # channels-last
def test_resume_gives_the_same_results_as_an_uninterrupted_run(model, pipeline, schedule, run_args, tmp_path,
                                                               monkeypatch):
    flags = ["--pipeline", pipeline, "--num_workers", "0", "--lr_schedule", schedule]
    straight = str(tmp_path / "straight")
    assert main.main(run_args(model, "--logdir", straight, *flags, epochs=3)) == 0

    resumed = str(tmp_path / "resumed")
    _interrupt_at(monkeypatch, 2)
    assert main.main(run_args(model, "--logdir", resumed, *flags, epochs=3)) == 130
    partial = read_results(resumed)
    assert partial["status"] == "interrupted" and partial["epochs_completed"] == 1
    assert partial["test_acc"] is None
    monkeypatch.undo()
    assert main.main(run_args(model, "--logdir", resumed, *flags, "--resume", epochs=3)) == 0

    expected, actual = read_results(straight), read_results(resumed)
    for key in METRICS:
        assert actual[key] == expected[key], key


def test_fp16_resume_restores_the_loss_scaler(run_args, tmp_path):
    logdir = str(tmp_path / "run")
    with pytest.warns(UserWarning, match="--precision fp16 is for CUDA GPUs"):
        assert main.main(run_args("mlp", "--logdir", logdir, "--precision", "fp16", epochs=1)) == 0
    path = os.path.join(logdir, "checkpoint.pt")
    state = torch.load(path, weights_only=True)
    steps_per_epoch = state["scaler"]["_growth_tracker"]  # one per step: no step overflowed
    assert state["scaler"]["scale"] == 65536.0 and steps_per_epoch > 0
    state["scaler"].update(scale=1024.0, _growth_tracker=7)  # as if the run had backed off
    torch.save(state, path)
    with pytest.warns(UserWarning, match="--precision fp16 is for CUDA GPUs"):
        assert main.main(run_args("mlp", "--logdir", logdir, "--precision", "fp16", "--resume", epochs=2)) == 0
    resumed = torch.load(path, weights_only=True)["scaler"]
    assert (resumed["scale"], resumed["_growth_tracker"]) == (1024.0, 7 + steps_per_epoch)
    assert read_results(logdir)["args"]["precision"] == "fp16"


def test_interrupt_keeps_finished_epochs(run_args, tmp_path, monkeypatch, capsys):
    logdir = str(tmp_path / "run")
    _interrupt_at(monkeypatch, 3)
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=5)) == 130
    assert capsys.readouterr().err.strip().endswith(
        "interrupted: results.json keeps the 2 finished epochs\nrerun with the same flags and --resume to continue")
    results = read_results(logdir)
    assert results["status"] == "interrupted" and len(results["train_losses"]) == 2
    assert not [name for name in os.listdir(logdir) if name.startswith(".tmp")]


def test_an_interrupt_in_the_first_epoch_says_there_is_nothing_to_resume(run_args, tmp_path, monkeypatch, capsys):
    logdir = str(tmp_path / "run")
    _interrupt_at(monkeypatch, 1)
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=2)) == 130
    assert capsys.readouterr().err.strip().endswith(
        "interrupted: results.json keeps the 0 finished epochs\n"
        "nothing to resume: rerun with the same flags, without --resume, to start again")
    assert read_results(logdir)["status"] == "interrupted"
    assert main.main(run_args("mlp", "--logdir", logdir, "--resume", epochs=2)) == 2  # what it would have said
    monkeypatch.undo()
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=2)) == 0
    assert read_results(logdir)["status"] == "completed"


def test_an_interrupt_during_the_test_evaluation_marks_the_run_interrupted_and_resume_tests_it(run_args, tmp_path,
                                                                                               monkeypatch, capsys):
    logdir = str(tmp_path / "run")
    real_evaluate = engine.evaluate

    def evaluate(epoch, model, dataloader, args, mode="val", **kwargs):
        if mode == "test":
            raise KeyboardInterrupt
        return real_evaluate(epoch, model, dataloader, args, mode, **kwargs)
    monkeypatch.setattr(engine, "evaluate", evaluate)
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=2)) == 130
    results = read_results(logdir)
    assert results["status"] == "interrupted" and results["epochs_completed"] == 2 and results["test_acc"] is None
    assert capsys.readouterr().err.strip().endswith(
        "interrupted during the test evaluation: results.json keeps the 2 finished epochs\n"
        "rerun with the same flags and --resume to evaluate the test set")
    monkeypatch.setattr(engine, "evaluate", real_evaluate)
    assert main.main(run_args("mlp", "--logdir", logdir, "--resume", epochs=2)) == 0
    results = read_results(logdir)
    assert results["status"] == "completed" and results["epochs_completed"] == 2 and results["test_acc"] is not None


def test_an_interrupt_after_the_test_evaluation_logs_nothing_of_it(run_args, tmp_path, monkeypatch):
    def interrupted(*args):  # the MLP's hidden units are measured after the test set
        raise KeyboardInterrupt
    monkeypatch.setattr(engine.hidden_units, "hidden_unit_statistics", interrupted)
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 130
    results = read_results(logdir)
    assert results["status"] == "interrupted" and results["epochs_completed"] == 1
    assert results["test_acc"] is None and results["test_confusion"] is None  # the test is evaluated again on resume


def test_an_interrupt_without_logdir_says_that_nothing_was_saved(run_args, monkeypatch, capsys):
    _interrupt_at(monkeypatch, 2)
    assert main.main(run_args("mlp", epochs=3)) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted: 1 finished epoch, not saved (no --logdir)")


def test_interrupt_before_the_first_epoch_exits_130_and_writes_nothing(run_args, tmp_path, monkeypatch, capsys):
    def load_cifar10(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(engine, "load_cifar10", load_cifar10)
    logdir = tmp_path / "run"
    assert main.main(run_args("mlp", "--logdir", str(logdir))) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert not logdir.exists()


def test_ctrl_c_during_a_write_is_delivered_after_it(tmp_path):
    from training import persistence

    def write(f):
        f.write(b"first half, ")
        signal.raise_signal(signal.SIGINT)
        f.write(b"second half")
    path = tmp_path / "file"
    with pytest.raises(KeyboardInterrupt):
        persistence.atomic_write(str(path), write)
    assert path.read_text() == "first half, second half"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.skipif(os.name != "posix", reason="file modes beyond read-only are POSIX")
@pytest.mark.parametrize("umask, mode", [(0o027, 0o640), (0o002, 0o664)])
def test_results_and_checkpoint_get_the_mode_a_plain_open_gives(umask, mode, fake_data_dir, tiny_configs, tmp_path):
    """An atomic write goes through mkstemp, which makes files readable by their owner only; on a shared disk
    the course's staff and a study's other machines must read them as they read a plain file. Reading the
    umask to know that mode must leave it as it was, for the files the process makes afterwards."""
    logdir = tmp_path / "run"
    script = (f"import sys, main; code = main.main(["
              f"'--model_config', {tiny_configs['mlp']!r}, '--data_dir', {fake_data_dir!r}, '--valid_size', '20', "
              f"'--epochs', '1', '--device', 'cpu', '--logdir', {str(logdir)!r}, '--no_progress']); "
              f"open({str(tmp_path / 'plain')!r}, 'w').close(); sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         preexec_fn=lambda: os.umask(umask))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "plain").stat().st_mode & 0o777 == mode
    for name in ("results.json", "checkpoint.pt"):
        assert (logdir / name).stat().st_mode & 0o777 == mode, name


@pytest.mark.parametrize("failing, error", [
    ("fsync", "No space left on device"),  # the data does not fit, found when it is flushed
    ("mkstemp", "Disk quota exceeded"),  # not even a new file does
])
def test_a_disk_that_fills_up_mid_run_gets_one_line_and_keeps_the_last_epoch(failing, error, run_args, tmp_path,
                                                                             monkeypatch, capsys):
    from training import persistence

    logdir = tmp_path / "run"
    assert main.main(run_args("mlp", "--logdir", str(logdir), epochs=1)) == 0
    module = persistence.os if failing == "fsync" else persistence.tempfile
    real, calls = getattr(module, failing), []

    def until_full(*args, **kwargs):
        calls.append(args)
        if len(calls) > 2:  # epoch 1's checkpoint and results.json fit, then the disk is full
            raise OSError(errno.ENOSPC if failing == "fsync" else errno.EDQUOT, error)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, failing, until_full)
    assert main.main(run_args("mlp", "--logdir", str(logdir), epochs=3)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: cannot write {logdir / 'checkpoint.pt'} ({error}); make room")
    assert read_results(logdir)["epochs_completed"] == 1
    assert not [name for name in os.listdir(logdir) if name.startswith(".tmp")]


@pytest.mark.skipif(os.name != "posix", reason="the kernel's file size limit is POSIX")
def test_a_checkpoint_that_the_kernel_refuses_to_write_gets_one_line_and_leaves_nothing(run_args, tmp_path):
    """torch.save reports a write that its zip writer could not make as a RuntimeError raised while handling it."""
    logdir = tmp_path / "run"
    script = f"import sys, main; sys.exit(main.main({run_args('mlp', '--logdir', str(logdir), epochs=2)!r}))"
    run = subprocess.run([sys.executable, "-c", with_file_size_limit(script, 65536)], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(
        f"error: cannot write {logdir / 'checkpoint.pt'} (File too large); make room")
    assert not logdir.exists()  # the run made it, and nothing could be kept in it


def test_a_disk_full_when_the_visualisation_is_drawn_gets_one_line_and_resume_draws_it(run_args, tmp_path, monkeypatch,
                                                                                       capsys):
    from matplotlib.figure import Figure

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Figure, "savefig", full)
    logdir = tmp_path / "run"
    flags = run_args("mlpmixer", "--logdir", str(logdir), "--visualize", epochs=1)
    assert main.main(flags) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --visualize: cannot write into {logdir} (No space left on device); make room on that disk (or under "
        "your quota), then rerun with the same flags and --resume: it tests the completed run again and writes the "
        "visualisation")
    assert read_results(logdir)["status"] == "completed"
    monkeypatch.undo()
    assert main.main(flags + ["--resume"]) == 0
    assert "mlpmixer_token_mixing.png" in os.listdir(logdir) and read_results(logdir)["status"] == "completed"


def test_a_filesystem_that_refuses_to_change_modes_still_gets_every_file(run_args, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):  # as FUSE mounts of S3 or of Google Drive may
        raise PermissionError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "chmod", refuse)
    logdir = tmp_path / "run"
    assert main.main(run_args("mlp", "--logdir", str(logdir), epochs=1)) == 0
    assert read_results(logdir)["status"] == "completed" and (logdir / "checkpoint.pt").is_file()
    assert not [name for name in os.listdir(logdir) if name.startswith(".tmp")]


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])  # Ctrl-C; a batch system's or a notebook host's stop
def test_a_real_stop_signal_leaves_valid_results(stop, fake_data_dir, tiny_configs, tmp_path):
    logdir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "main.py", "--model_config", tiny_configs["mlp"], "--data_dir",
                                fake_data_dir, "--valid_size", "20", "--epochs", "100000", "--device", "cpu",
                                "--logdir", str(logdir), "--no_progress"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (logdir / "results.json").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(getattr(signal, stop))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    results = read_results(str(logdir))
    assert results["status"] == "interrupted" and results["epochs_completed"] >= 1
    assert len(results["train_losses"]) == results["epochs_completed"]


def test_resume_extends_a_constant_rate_run_not_a_scheduled_one_and_says_when_nothing_is_left(run_args, tmp_path, capsys):
    constant, cosine = str(tmp_path / "constant"), str(tmp_path / "cosine")
    assert main.main(run_args("mlp", "--logdir", constant, epochs=1)) == 0
    assert main.main(run_args("mlp", "--logdir", constant, "--resume", epochs=2)) == 0
    assert read_results(constant)["epochs_completed"] == 2
    capsys.readouterr()
    assert main.main(run_args("mlp", "--logdir", constant, "--resume", epochs=2)) == 0
    assert (f"note: the checkpoint in {constant} has 2 epochs, and --epochs 2 asks for no more: nothing left to "
            "train (a larger --epochs trains on); the test set is evaluated") in capsys.readouterr().err
    assert read_results(constant)["epochs_completed"] == 2
    assert main.main(run_args("mlp", "--logdir", constant, "--resume", epochs=1)) == 0
    assert "has 2 epochs, and --epochs 1 asks for no more" in capsys.readouterr().err
    results = read_results(constant)
    assert results["epochs_completed"] == 2 and results["args"]["epochs"] == 2  # the run's epochs, not the flag's
    assert main.main(run_args("mlp", "--logdir", cosine, "--lr_schedule", "cosine", epochs=1)) == 0
    assert main.main(run_args("mlp", "--logdir", cosine, "--lr_schedule", "cosine", "--resume", epochs=2)) == 2
    assert "was made with other settings: epochs 1, now 2;" in capsys.readouterr().err
    assert main.main(run_args("mlp", "--logdir", cosine, "--lr_schedule", "cosine", "--resume", epochs=1)) == 0
    assert "nothing left to train; the test set is evaluated" in capsys.readouterr().err


def test_a_run_that_replaces_an_earlier_one_says_so(run_args, tmp_path, capsys, monkeypatch):
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 0
    assert "note:" not in capsys.readouterr().err
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 0
    assert (f"note: {os.path.join(logdir, 'results.json')} holds an earlier mlp run (completed after 1 epoch); "
            "this run replaces it (--resume would continue it instead)") in capsys.readouterr().err
    assert main.main(run_args("mlp", "--logdir", logdir, "--resume", epochs=2)) == 0
    assert "note:" not in capsys.readouterr().err
    results = read_results(logdir)
    with open(os.path.join(logdir, "results.json"), "w") as f:
        json.dump({**results, "status": "running"}, f)  # as a run killed outright (SIGKILL) leaves it
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 0
    assert (f"note: {os.path.join(logdir, 'results.json')} holds an earlier mlp run (stopped after 2 epochs without "
            "recording why: killed, its machine down or its disk full); this run replaces it (--resume would continue "
            "it instead)") in capsys.readouterr().err

    def refuse(*args):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    with monkeypatch.context() as patched, pytest.warns(UserWarning, match="cannot lock --logdir"):
        patched.setattr(persistence.fcntl, "flock", refuse)  # a filesystem without flock: not held either
        with open(os.path.join(logdir, "results.json"), "w") as f:
            json.dump({**results, "status": "running"}, f)
        assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 0
    assert "holds an earlier mlp run (running after 2 epochs); this run replaces it" in capsys.readouterr().err
    monkeypatch.setattr(persistence, "fcntl", None)  # Windows: no hold, so the earlier run may still be running
    with open(os.path.join(logdir, "results.json"), "w") as f:
        json.dump({**results, "status": "running"}, f)
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 0
    assert "holds an earlier mlp run (running after 2 epochs); this run replaces it" in capsys.readouterr().err
    with open(os.path.join(logdir, "results.json"), "w") as f:
        f.write('{"model": "mlp", "status": "runn')  # cut short by another program, or a full disk
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 0
    assert (f"note: {os.path.join(logdir, 'results.json')} holds an earlier run's results; this run replaces it "
            "(--resume would continue it instead)") in capsys.readouterr().err


def test_a_checkpoint_from_an_older_version_is_checked_on_the_keys_it_recorded(run_args, tmp_path, capsys):
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, "--lr_schedule", "cosine", epochs=1)) == 0
    path = os.path.join(logdir, "checkpoint.pt")
    state = torch.load(path, weights_only=True)
    del state["signature"]["epochs"]  # as versions before the schedule's length was recorded wrote it
    torch.save(state, path)
    assert main.main(run_args("mlp", "--logdir", logdir, "--lr_schedule", "cosine", "--resume", epochs=1)) == 0
    assert main.main(run_args("mlp", "--logdir", logdir, "--lr_schedule", "onecycle", "--resume", epochs=1)) == 2
    assert "was made with other settings: lr_schedule 'cosine', now 'onecycle';" in capsys.readouterr().err


def test_each_epoch_logs_when_it_ended_and_a_checkpoint_without_those_times_resumes(run_args, tmp_path):
    logdir = str(tmp_path / "run")
    before = time.time()
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 0
    results = read_results(logdir)
    assert before < results["epoch_end_times"][0] < time.time()
    assert results["host"] == socket.gethostname() and results["device_id"] == "cpu"
    path = os.path.join(logdir, "checkpoint.pt")
    state = torch.load(path, weights_only=True)
    del state["history"]["epoch_end_times"]  # as versions before the epochs' times were logged wrote it
    torch.save(state, path)
    assert main.main(run_args("mlp", "--logdir", logdir, "--resume", epochs=2)) == 0
    [older, newer] = read_results(logdir)["epoch_end_times"]
    assert older is None and results["epoch_end_times"][0] < newer < time.time()


@pytest.mark.skipif(os.name != "posix", reason="runs hold their --logdir with flock, which Windows lacks")
def test_a_resume_reads_the_checkpoint_only_once_it_holds_the_folder(run_args, tmp_path, monkeypatch):
    import fcntl

    from training import persistence

    logdir = tmp_path / "run"
    assert main.main(run_args("mlp", "--logdir", str(logdir), epochs=1)) == 0
    load, held_while_read = persistence.load_checkpoint, []

    def load_checkpoint(*args):  # a run still writing the folder could replace the checkpoint until it is held
        lock_path = logdir / persistence.LOCK_FILE
        with open(lock_path if lock_path.exists() else os.devnull) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held_while_read.append(False)
            except BlockingIOError:
                held_while_read.append(True)
        return load(*args)
    monkeypatch.setattr(persistence, "load_checkpoint", load_checkpoint)
    assert main.main(run_args("mlp", "--logdir", str(logdir), "--resume", epochs=2)) == 0
    assert held_while_read == [True]
