"""Measurement scripts: the benchmarks (pipelines, memory layouts), the GPU check, and the timing of the
issue's GPU targets."""
import sys

from config import torch_too_old
from training.errors import UserError


def run_cli(main):
    """Run a tool's ``main`` as a command: exit with its status, or print one line and exit 2 on a bad input
    (a torch older than the oldest tested included)."""
    try:
        problem = torch_too_old()
        if problem:
            raise UserError(problem)
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)
