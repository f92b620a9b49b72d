"""Whether a CUDA error that a run leaves behind stops a study's worker in one line, as ``studies.worker.release_gpu``
expects: it sets off a device-side assert (an index out of range, read by a kernel), as a run could, then calls
``release_gpu`` as the worker does after each run. Needs a CUDA GPU; exit 0 when the worker would stop, 1 when not.

    python -m tools.cuda_error_check        # device_check.sh's cuda_error step
"""
import torch

from config import HelpFormatter
from studies.worker import release_gpu
from tools import run_cli
from training.errors import CommandLineParser, UserError


def parse_args(argv=None):
    return CommandLineParser(prog="python -m tools.cuda_error_check", description=__doc__,
                             formatter_class=HelpFormatter).parse_args(argv)


def main(argv=None):
    parse_args(argv)
    if not torch.cuda.is_available():
        raise UserError("tools.cuda_error_check needs a CUDA GPU: it sets off a CUDA error on purpose")
    values = torch.zeros(4, device="cuda")
    try:
        values[torch.tensor([1 << 30], device="cuda")].sum().item()  # the kernel's assert is reported at .item()
    except RuntimeError as exc:
        print(f"the run raised {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}")
    else:
        print("no CUDA error was raised: nothing to check")
        return 1
    try:
        release_gpu()
    except UserError as exc:
        print(f"the worker stops: error: {exc}")
        return 0
    print("release_gpu() went on after the CUDA error: the worker would fail each of its later runs")
    return 1


if __name__ == "__main__":
    run_cli(main)
