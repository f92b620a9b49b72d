"""What a user causes and the runner answers in one line: a bad input, or a stop."""
import signal


class UserError(Exception):
    """A bad input (config, flag, data folder) that the user can fix; the message says how."""


def _raise_interrupt(signum, frame):
    # a second SIGTERM (a batch system signals every process of a job, a study's launcher passes its own on
    # to its workers) must not cut short the saving that the first one started
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def stop_on_sigterm_as_on_ctrl_c():
    """A batch system's stop (SLURM's time limit, a cancelled job) sends SIGTERM: the run then keeps its
    finished epochs and says so, as after Ctrl-C, instead of dying mid-epoch with results.json saying
    ``running``. For the command-line entry points only: a notebook's kernel keeps its own handlers."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
