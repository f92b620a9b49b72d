"""The command lines' standard output and error when they cannot be written: piped to a reader that leaves (``| head``)
or sent to a file whose disk refuses it (full, over quota, over the file size limit: the kernel's ``RLIMIT_FSIZE``
stands in for them)."""
import errno
import os
import subprocess
import sys

import pytest
import torch

import main
from helpers import ROOT, load_study, read_results, with_file_size_limit
from studies.__main__ import main as studies_main
from studies.scheduler import summary
from training.errors import _GuardedStandardStream

DISK_REFUSED_LINE = ("error: cannot write the standard output (File too large); make room on its disk (or under your "
                     "quota) or send it elsewhere; what a run saved is intact, and --resume or a rerun of the study "
                     "continues from it\n")


@pytest.mark.parametrize("together", [False, True], ids=["stdout", "stdout-and-stderr"])
def test_output_piped_to_a_reader_that_leaves_stops_the_run_as_ctrl_c_does(together, run_args, tmp_path):
    """``python main.py ... | head`` (or ``2>&1 | head``): the first row that finds the pipe closed stops the run,
    which keeps its saved epochs in step with its checkpoint, instead of a traceback that left it ``running``."""
    logdir = tmp_path / "run"
    flags = run_args("mlp", "--logdir", str(logdir), epochs=20)
    process = subprocess.Popen([sys.executable, "main.py", *flags], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               stderr=subprocess.STDOUT if together else subprocess.PIPE)
    while not process.stdout.readline().startswith("epoch |"):  # the table's header: the rows come next
        pass
    process.stdout.close()
    assert process.wait(timeout=120) == 130
    if not together:
        with process.stderr:
            err = process.stderr.read()
        assert "Traceback" not in err and err.endswith("rerun with the same flags and --resume to continue\n"), err
    results = read_results(logdir)
    assert results["status"] == "interrupted" and 1 <= results["epochs_completed"] < 20
    assert torch.load(logdir / "checkpoint.pt", weights_only=True)["epoch"] == results["epochs_completed"]
    assert main.main(flags + ["--resume"]) == 0 and read_results(logdir)["epochs_completed"] == 20


def test_a_reader_that_left_before_the_last_buffered_output_lets_the_completed_run_exit_quietly(run_args, tmp_path):
    """``python main.py ... | true``: a short run's rows wait in the output's buffer until the process exits, and the
    pipe's reader is gone by then; the run has done its work, and its exit says so, without a traceback."""
    logdir = tmp_path / "run"
    reader, writer = os.pipe()
    os.close(reader)
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    run = subprocess.run([sys.executable, "main.py", *run_args("mlp", "--logdir", str(logdir), epochs=2)], cwd=ROOT,
                         stdout=writer, stderr=subprocess.PIPE, text=True, env=environment, timeout=120)
    os.close(writer)
    assert (run.returncode, run.stderr) == (0, "")
    assert read_results(logdir)["status"] == "completed"


def test_a_listing_whose_reader_left_exits_quietly_with_nothing_to_resume():
    """``python -m studies list | head -2`` with unbuffered output (``PYTHONUNBUFFERED``, as on some notebooks): the
    first line that finds the pipe closed ends a listing that was read as far as wanted, not a run to resume."""
    reader, writer = os.pipe()
    os.close(reader)
    run = subprocess.run([sys.executable, "-m", "studies", "list"], cwd=ROOT, stdout=writer, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=120)
    os.close(writer)
    assert (run.returncode, run.stderr) == (0, "")


def _run_with_output_limited(command, tmp_path, limit, buffered, stream="stdout"):
    """Run ``command`` (``main.py`` or ``studies`` and its flags) as from the shell, its ``stream`` sent to a file
    that the kernel lets grow to ``limit`` bytes; ``(exit status, what the other stream got, the file's size)``."""
    script = (f"import runpy, sys\nsys.argv = {command!r}\n"
              f"runpy.run_{'path' if command[0].endswith('.py') else 'module'}({command[0]!r}, run_name='__main__')")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    if not buffered:
        environment["PYTHONUNBUFFERED"] = "1"
    limited = tmp_path / "limited.txt"
    with open(limited, "w") as f:
        run = subprocess.run([sys.executable, "-c", with_file_size_limit(script, limit)], cwd=ROOT, env=environment,
                             text=True, timeout=300, **{stream: f},
                             **{"stderr" if stream == "stdout" else "stdout": subprocess.PIPE})
    return run.returncode, run.stderr if stream == "stdout" else run.stdout, limited.stat().st_size


@pytest.mark.skipif(os.name != "posix", reason="the kernel's file size limit is POSIX")
@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_output_to_a_file_that_the_disk_refuses_stops_the_run_in_one_line(buffered, run_args, tmp_path):
    """``python main.py ... > out.txt`` on a full disk: a buffered output is refused when its buffer is written, here
    as the short run exits; an unbuffered one (``PYTHONUNBUFFERED``, ``python -u``) at its first row past the limit.
    Without --logdir, the output is the only file that the run writes."""
    code, err, size = _run_with_output_limited(["main.py", *run_args("mlp", epochs=3)], tmp_path, 400, buffered)
    assert (code, err) == (2, DISK_REFUSED_LINE) and size <= 400


class _DiskFullPast:
    """A text file whose disk takes ``room`` more characters, then refuses every write."""

    def __init__(self, file, room):
        self._file, self._room = file, room

    def write(self, text):
        if len(text) > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(text)
        return self._file.write(text)

    def flush(self):
        self._file.flush()

    def fileno(self):
        return self._file.fileno()


def test_a_run_whose_output_the_disk_refuses_keeps_its_saved_epochs_and_resumes(run_args, tmp_path, monkeypatch,
                                                                               capsys):
    logdir = tmp_path / "run"
    flags = run_args("mlp", "--logdir", str(logdir), epochs=5)
    with open(tmp_path / "out.txt", "w") as out:
        monkeypatch.setattr(sys, "stdout", _GuardedStandardStream(_DiskFullPast(out, 400), is_output=True))
        assert main.main(flags) == 2
        monkeypatch.undo()
    assert capsys.readouterr().err.endswith(DISK_REFUSED_LINE.replace("File too large", "No space left on device"))
    results = read_results(logdir)
    assert results["status"] == "running" and 1 <= results["epochs_completed"] < 5
    assert torch.load(logdir / "checkpoint.pt", weights_only=True)["epoch"] == results["epochs_completed"]
    assert main.main(flags + ["--resume"]) == 0 and read_results(logdir)["epochs_completed"] == 5


@pytest.mark.skipif(os.name != "posix", reason="the kernel's file size limit is POSIX")
@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_the_studies_command_whose_output_the_disk_refuses_stops_in_one_line(buffered, tmp_path):
    """``list``, which writes no file but its output (a study's run writes its journal too)."""
    code, err, size = _run_with_output_limited(["studies", "list"], tmp_path, 100, buffered)
    assert (code, err) == (2, DISK_REFUSED_LINE) and size <= 100


@pytest.mark.skipif(os.name != "posix", reason="the kernel's file size limit is POSIX")
def test_an_error_stream_that_the_disk_refuses_is_dropped_and_the_run_goes_on(run_args, tmp_path):
    """The progress bars and warnings go there, and there is nowhere left to say that it is full."""
    flags = run_args("mlp", epochs=3)
    flags.remove("--no_progress")
    code, out, size = _run_with_output_limited(["main.py", *flags], tmp_path, 100, buffered=False, stream="stderr")
    assert code == 0 and size == 100 and out.splitlines()[-1].startswith("best validation accuracy"), out


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, which refuses every write as a full disk")
def test_workers_whose_output_the_disk_refuses_leave_their_launch_to_say_it_once(study_args, tmp_path):
    """``python -m studies run ... --workers 2 > out.txt`` on a disk that fills while the workers train: each worker
    would say it, and so would the launch; the workers stop without a word and the launch says it once. Here the
    workers alone write to ``/dev/full``; the launch's own lines, before and after them, still find room."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('STUDIES_LAUNCHED_WORKER') == '1':\n"
        "    full = os.open('/dev/full', os.O_WRONLY)\n"
        "    os.dup2(full, 1)\n"
        "    os.close(full)\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    argv = study_args("mlp_activation", "--workers", "2")
    run = subprocess.run([sys.executable, "-m", "studies", *argv], cwd=ROOT, env=environment, capture_output=True,
                         text=True, timeout=300)
    refused = DISK_REFUSED_LINE.replace("File too large", "a worker's write to it was refused")
    assert (run.returncode, run.stderr.count("error: ")) == (2, 1) and run.stderr.endswith(refused), run.stderr
    header, outcome = run.stdout.splitlines()  # the workers' lines went to /dev/full
    assert header.startswith("study mlp_activation: ") and outcome.startswith("study mlp_activation: ")
    assert "completed" not in outcome and "to resume" in outcome, outcome
    assert studies_main(argv) == 0 and "3 completed" in summary(load_study(tmp_path / "out", "mlp_activation"))
