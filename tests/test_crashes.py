"""main.py when training raises (a CUDA error, a GPU out of memory, a bug): results.json marks the run failed with
the error once the run has written it, main.py says how to go on, and --resume continues from the kept epochs. A
batch too large from the first step is in test_bad_input.py; a failed run in a study is in test_studies.py."""
import pytest
import torch

import main
from config import get_config_parser
from helpers import read_results
from training import engine

ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"
OUT_OF_MEMORY = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 3.81 GiB of which "
                 "1.10 GiB is free. Process 7 has 2.70 GiB memory in use. If reserved but unallocated memory is large "
                 "try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")


def _raise_in(monkeypatch, function, exception, when):
    """Make ``engine.<function>`` raise ``exception`` on the calls for which ``when(epoch, mode)`` is true."""
    real = getattr(engine, function)

    def failing(epoch, *args, **kwargs):
        if when(epoch, kwargs.get("mode", "val")):
            raise exception
        return real(epoch, *args, **kwargs)
    monkeypatch.setattr(engine, function, failing)


def test_a_crash_after_an_epoch_marks_the_run_failed_and_resume_continues_it(run_args, tmp_path, monkeypatch, capsys):
    logdir = str(tmp_path / "run")
    _raise_in(monkeypatch, "train", RuntimeError(ILLEGAL_ACCESS), lambda epoch, mode: epoch == 2)
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=3)) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and f"RuntimeError: {ILLEGAL_ACCESS}\n" in err
    assert err.endswith("the run failed after 1 finished epoch, which results.json keeps (status failed, with the "
                        "error); rerun with the same flags and --resume to continue from them\n")
    results = read_results(logdir)
    assert (results["status"], results["epochs_completed"], results["error"]) == (
        "failed", 1, f"RuntimeError: {ILLEGAL_ACCESS}")
    monkeypatch.undo()
    assert main.main(run_args("mlp", "--logdir", logdir, "--resume", epochs=3)) == 0
    results = read_results(logdir)
    assert (results["status"], results["epochs_completed"], results["error"]) == ("completed", 3, None)


def test_a_crash_in_the_first_epoch_is_raised_and_leaves_no_folder(run_args, tmp_path, monkeypatch):
    logdir = tmp_path / "run"
    _raise_in(monkeypatch, "train", RuntimeError(ILLEGAL_ACCESS), lambda epoch, mode: True)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        main.main(run_args("mlp", "--logdir", str(logdir), epochs=2))
    assert not logdir.exists()


def test_a_crash_in_the_first_epoch_of_a_replacing_run_leaves_the_earlier_results(run_args, tmp_path, monkeypatch):
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 0
    _raise_in(monkeypatch, "train", RuntimeError(ILLEGAL_ACCESS), lambda epoch, mode: True)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        main.main(run_args("mlp", "--logdir", logdir, epochs=2))
    assert read_results(logdir)["status"] == "completed"  # no failure of this run's is mixed into them


def test_a_replacing_run_that_crashes_in_its_first_epoch_does_not_claim_the_earlier_runs_epochs(run_args, tmp_path,
                                                                                                 monkeypatch, capsys):
    """The same bug, hit sooner by a new run in the folder of one it had failed: results.json still holds the earlier
    run's failure, with the same error, but none of its epochs is this run's."""
    logdir = str(tmp_path / "run")
    _raise_in(monkeypatch, "train", RuntimeError(ILLEGAL_ACCESS), lambda epoch, mode: epoch == 2)
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=3)) == 1
    monkeypatch.undo()
    _raise_in(monkeypatch, "train", RuntimeError(ILLEGAL_ACCESS), lambda epoch, mode: True)
    capsys.readouterr()
    with pytest.raises(RuntimeError, match="illegal memory access"):
        main.main(run_args("mlp", "--logdir", logdir, epochs=3))
    assert "finished epoch" not in capsys.readouterr().err
    assert read_results(logdir)["epochs_completed"] == 1  # the earlier run's, as it left them


def test_a_gpu_out_of_memory_in_the_test_evaluation_says_resume_with_a_smaller_evaluation_batch(run_args, tmp_path,
                                                                                             monkeypatch, capsys):
    logdir = str(tmp_path / "run")
    _raise_in(monkeypatch, "evaluate", torch.cuda.OutOfMemoryError(OUT_OF_MEMORY), lambda epoch, mode: mode == "test")
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=2)) == 2
    assert capsys.readouterr().err == (
        "error: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 3.81 GiB of which 1.10 "
        "GiB is free; start again with a smaller --batch_size (training) or --eval_batch_size (validation and test), "
        "or a smaller model config; or, to keep the 2 finished epochs that results.json keeps, rerun with the same "
        "flags and --resume (and a smaller --eval_batch_size if the validation or test ran out)\n")
    results = read_results(logdir)
    assert (results["status"], results["epochs_completed"], results["test_acc"]) == ("failed", 2, None)
    assert results["error"] == f"OutOfMemoryError: {OUT_OF_MEMORY}"
    monkeypatch.undo()
    assert main.main(run_args("mlp", "--logdir", logdir, "--resume", "--eval_batch_size", "10", epochs=2)) == 0
    results = read_results(logdir)
    assert (results["status"], results["epochs_completed"]) == ("completed", 2) and results["test_acc"] is not None


def test_what_on_epoch_raises_is_the_callers_and_leaves_the_run_as_it_was(run_args, tmp_path):
    """A study's worker raises from ``on_epoch`` when another worker took the run over: the run did not fail, and
    the worker that resumes it must not find it marked so."""
    class HandedOver(Exception):
        pass

    def hand_over(epoch, history):
        raise HandedOver
    args = get_config_parser().parse_args(run_args("mlp", "--logdir", str(tmp_path / "run"), epochs=3))
    with pytest.raises(HandedOver):
        engine.fit(args, on_epoch=hand_over)
    results = read_results(tmp_path / "run")
    assert (results["status"], results["epochs_completed"], results["error"]) == ("running", 1, None)


@pytest.mark.parametrize("refusal", [
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "104857600 bytes. Error code 12 (Cannot allocate memory)",  # Linux, macOS
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate "
    "104857600 bytes.",  # Windows
], ids=["posix", "windows"])
def test_a_cpu_out_of_memory_gets_one_line_as_a_gpu_one_does(refusal, run_args, tmp_path, monkeypatch, capsys):
    """torch raises the CPU allocator's refusal (a laptop's memory, a ``ulimit -v``) as a plain RuntimeError."""
    logdir = tmp_path / "run"
    _raise_in(monkeypatch, "train", RuntimeError(refusal), lambda epoch, mode: epoch == 2)
    assert main.main(run_args("mlp", "--logdir", str(logdir), epochs=2)) == 2
    assert capsys.readouterr().err == (
        "error: CPU out of memory. Tried to allocate 100.00 MiB, which the system refused; start again with a smaller "
        "--batch_size (training) or --eval_batch_size (validation and test), or a smaller model config; or, to keep "
        "the 1 finished epoch that results.json keeps, rerun with the same flags and --resume (and a smaller "
        "--eval_batch_size if the validation or test ran out)\n")
    assert read_results(logdir)["error"] == f"RuntimeError: {refusal}"


def test_other_runtime_errors_are_not_taken_for_a_device_out_of_memory():
    from training.devices import out_of_memory

    assert out_of_memory(RuntimeError(ILLEGAL_ACCESS)) is None
    assert out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1536 bytes. "
                                      "Error code 12")) == "CPU out of memory. Tried to allocate 1.50 KiB, which the "\
                                                          "system refused"
    assert out_of_memory(ValueError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 bytes")) is None
    assert out_of_memory(torch.cuda.OutOfMemoryError(OUT_OF_MEMORY)) == (
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 3.81 GiB of which 1.10 GiB is "
        "free")
