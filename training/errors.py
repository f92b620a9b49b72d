"""What a user causes and the runner answers in one line: a bad input, a warning, or a stop."""
import argparse
import errno
import os
import signal
import sys
import warnings


DISK_REFUSED = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file size limit


def counted(number, noun):
    """``1 run``, ``2 runs``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def setting_changes(before, after, absent, label=""):
    """``{LABEL KEY: "LABEL KEY BEFORE, now AFTER"}`` for each key whose value differs between the dicts ``before`` and
    ``after``, the settings a run or a study was made with and those it is given now; ``absent(key)`` says what
    stands where one of them lacks the key."""
    def shown(values, key):
        return repr(values[key]) if key in values else absent(key)
    return {label + key: f"{label}{key} {shown(before, key)}, now {shown(after, key)}"
            for key in {*before, *after} if (key in before, before.get(key)) != (key in after, after.get(key))}


class UserError(Exception):
    """A problem the user can fix (a bad config, flag or data folder; a full disk): the message says how."""


class LogdirBusy(UserError):
    """Another run is writing into the ``--logdir`` that this run was given."""


class OutputRefused(UserError):
    """The standard output's disk refused a write: it is full, over quota, or the file is past its size limit."""

    def __init__(self, reason):
        """
        Args:
            reason: what refused it, in a few words (the error's ``strerror``).
        """
        super().__init__(f"cannot write the standard output ({reason}); make room on its disk (or under your quota) "
                         "or send it elsewhere; what a run saved is intact, and --resume or a rerun of the study "
                         "continues from it")


class CommandLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that answers a bad flag in one line, as the runner answers any bad input, naming the
    command that explains the flags, instead of printing its whole usage first (19 lines for ``main.py``)."""

    def __init__(self, *args, help_command=None, **kwargs):
        """
        Args:
            *args, **kwargs: ``argparse.ArgumentParser``'s.
            help_command: the command that explains these flags; default: ``PROG --help``.
        """
        super().__init__(*args, **kwargs)
        self.help_command = help_command

    def error(self, message):
        self.exit(2, f"error: {message}; see {self.help_command or self.prog + ' --help'}\n")


def path_flag(text):
    """A path flag's value, refused when empty: ``--logdir "$RUN"`` with ``RUN`` unset would train without saving
    anything, and ``--out "$OUT"`` would write into the current folder. A leading ``~`` is the home folder, as a
    shell would make it where none does (a notebook's argument list, a quoted path), not a folder named ``~``."""
    if not text:
        raise argparse.ArgumentTypeError("empty (is the shell variable meant to give it unset?); give a path")
    return os.path.expanduser(text)


def _raise_interrupt(signum, frame):
    # a second SIGTERM (a batch system signals every process of a job, a study's launcher passes its own on
    # to its workers) must not cut short the saving that the first one started
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


class _GuardedStandardStream:
    """A standard stream whose reader may go away (``| head`` has its lines, ``less`` was quit), or whose file's
    disk may fill up, without a traceback. The first write that finds the pipe closed stops the process as Ctrl-C
    does: a run keeps its finished epochs and says, on the standard error, how to resume it. The standard output's
    first write that its disk refuses stops the process with a ``UserError``, said in one line on the standard error,
    as a checkpoint that the disk refuses is; the standard error's is dropped (there is nowhere left to say it, and
    Python's warnings ignore it too). What is written to a stream after that is dropped, not raised again."""

    reader_left = False  # shared by both streams, which ``2>&1 | head`` sends into the same pipe

    def __init__(self, stream, is_output):
        """
        Args:
            stream: ``sys.stdout`` or ``sys.stderr``.
            is_output: whether it is the standard output, whose refused write stops the process.
        """
        self._stream = stream
        self._is_output = is_output
        self._disk_refused = False

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def write(self, text):
        return self._guarded(self._stream.write, text)

    def flush(self):
        return self._guarded(self._stream.flush)

    def _guarded(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            self._drop_what_follows()
            if _GuardedStandardStream.reader_left:
                return None
            _GuardedStandardStream.reader_left = True
            raise KeyboardInterrupt from None
        except OSError as exc:
            if exc.errno not in DISK_REFUSED:
                raise
            self._drop_what_follows()
            if self._disk_refused or not self._is_output:
                return None
            self._disk_refused = True
            raise OutputRefused(exc.strerror) from None

    def _drop_what_follows(self):
        """Point the stream at the null device, so that later writes, and the exit's flush, succeed."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)


def reader_left():
    """Whether the standard output's reader went away (``| head`` had its lines), which stopped the process as Ctrl-C
    does (``set_up_command_line``)."""
    return _GuardedStandardStream.reader_left


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


def set_up_command_line():
    """What the command-line entry points (``main.py``, ``python -m studies``) change in their process; a
    notebook that imports them keeps its kernel's own settings.

    - A batch system's stop (SLURM's time limit, a cancelled job) sends SIGTERM: the run then keeps its
      finished epochs and says so, as after Ctrl-C, instead of dying mid-epoch with results.json saying
      ``running``.
    - A warning prints as one line, ``warning: ...``, without the file, line and source that Python adds.
    - A character that the standard output's encoding cannot write (a path's byte that is not UTF-8, under a UTF-8
      locale; a name outside Windows' code page, when the output goes to a file) prints as an escape, as it would
      on the standard error, instead of failing the run at its next line.
    - Output piped to a reader that leaves (``| head``, ``| less`` quit) stops the process as Ctrl-C does, instead
      of a traceback that leaves results.json saying ``running``; output to a file on a full disk stops it with one
      line (``exit_after_output`` says it for what was still buffered at the end).
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    warnings.formatwarning = _one_line_warning
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    sys.stdout, sys.stderr = (stream if stream is None else _GuardedStandardStream(stream, is_output)
                              for stream, is_output in ((sys.stdout, True), (sys.stderr, False)))


def exit_after_output(code):
    """``sys.exit(code)`` once what was printed is written. A standard output on a full disk then gets its one line
    and exit status 2 (``code`` where that already says that something went wrong), and one piped to a reader that
    left is let go, instead of Python's traceback as it exits and status 120 or 130."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OutputRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = code or 2
    except KeyboardInterrupt:  # a reader that left before the last output reached it: the process's work is done
        pass
    sys.exit(code)
