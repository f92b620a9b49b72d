"""Measurement scripts: the benchmarks (pipelines, memory layouts), the GPU check, and the timing of the
issue's GPU targets."""
import sys

from config import torch_too_old
from training.engine import fit
from training.errors import UserError, exit_after_output, set_up_command_line


def run_cli(main):
    """Run a tool's ``main`` as a command, as ``main.py`` runs: warnings in one line each, a SIGTERM (the device
    call's ``timeout``) stopping it as Ctrl-C does, and the same exit statuses: 0 done, 2 after one line naming a
    bad input (a torch older than the oldest tested included), 130 interrupted, else ``main``'s own."""
    set_up_command_line()
    try:
        problem = torch_too_old()
        if problem:
            raise UserError(problem)
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    exit_after_output(code)


def fit_or_stop(args):
    """``fit``, but a run that Ctrl-C or a SIGTERM interrupted stops the tool as well: ``fit`` keeps the run's
    finished epochs and returns, and a tool that went on would time the next run with the stop ignored."""
    results = fit(args)
    if results["status"] == "interrupted":
        raise KeyboardInterrupt
    return results
