"""Seconds per training step in each memory layout, contiguous and channels-last, interleaved in one process.

    python -m tools.layout_benchmark --device cpu                      # ResNet18, 30 timed steps per layout
    python -m tools.layout_benchmark --device cuda --precision fp32    # e.g. on a T4, where auto keeps contiguous

Each layout trains its own copy of the model from the same initial weights on the same batches of the tensor
pipeline (template augmentation), with eager steps (on CUDA the default path also records the step in a graph:
``tools.benchmark`` times that). Every batch runs through both layouts' steps, the order alternating from batch
to batch, so a shared machine whose speed drifts slows both alike; the first ``--warmup`` steps of each, where
oneDNN and cuDNN choose their kernels, are not timed. This is what ``--channels_last auto`` was chosen from.
"""
import statistics
import time

import torch

from config import DATA_DIR, DATA_DIR_HELP, HelpFormatter
from tools import run_cli
from tools.gpu_check import MODELS, make_step
from training.cifar10 import load_cifar10
from training.devices import describe_device, no_cuda_said
from training.errors import CommandLineParser, UserError, path_flag
from training.pipelines import TensorBatches

LAYOUTS = (("contiguous", False), ("channels_last", True))


def time_layouts(model_name, batches, plan, device, precision, warmup):
    """Seconds of each step after ``warmup``, per layout, running every batch through both layouts."""
    steps = {name: make_step(model_name, device, precision, channels_last, False, 0, {})
             for name, channels_last in LAYOUTS}
    seconds = {name: [] for name in steps}
    for i, item in enumerate(plan):
        for name in (list(steps) if i % 2 == 0 else list(reversed(steps))):
            start = time.perf_counter()
            steps[name](batches, item)
            steps[name].last_loss.item()  # waits for the device
            if i >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def parse_args(argv=None):
    parser = CommandLineParser(prog="python -m tools.layout_benchmark", description=__doc__,
                               formatter_class=HelpFormatter)
    parser.add_argument("--model", default="resnet18", choices=MODELS, help="the model timed, with its shipped config")
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"], help="where the steps run")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="autocast precision of the steps in both layouts")
    parser.add_argument("--batch_size", type=int, default=128, help="training batch size")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per layout")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per layout before them")
    parser.add_argument("--data_dir", type=path_flag, default=DATA_DIR, help=DATA_DIR_HELP)
    return parser.parse_args(argv)


def main(argv=None):
    cli = parse_args(argv)
    if cli.device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device cuda: {no_cuda_said()}; use --device cpu")
    if cli.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {cli.batch_size}")
    if cli.steps < 1 or cli.warmup < 0:
        raise UserError(f"--steps {cli.steps} --warmup {cli.warmup}: give at least 1 timed step and no negative warmup")
    device = torch.device(cli.device)
    data = load_cifar10(cli.data_dir)
    torch.manual_seed(0)
    batches = TensorBatches(data.train_images, data.train_labels, cli.batch_size, device, train=True)
    full_batches = len(data.train_labels) // cli.batch_size
    if cli.warmup + cli.steps > full_batches:
        raise UserError(f"--warmup {cli.warmup} + --steps {cli.steps} exceed the {full_batches} full batches of "
                        f"{cli.batch_size} images in an epoch; ask for fewer steps")
    plan = list(batches.plan())[:cli.warmup + cli.steps]
    seconds = time_layouts(cli.model, batches, plan, device, cli.precision, cli.warmup)
    print(f"{cli.model}, batch {cli.batch_size}, {describe_device(device)}, {cli.precision}, eager steps: "
          f"{cli.steps} timed steps per layout after {cli.warmup} untimed, interleaved")
    print(f"{'layout':>14} | {'mean s/step':>11} | {'median s/step':>13} | {'train img/s':>11} | {'vs contiguous':>13}")
    base = statistics.mean(seconds["contiguous"])
    for name, _ in LAYOUTS:
        mean = statistics.mean(seconds[name])
        print(f"{name:>14} | {mean:11.4f} | {statistics.median(seconds[name]):13.4f} | "
              f"{cli.batch_size / mean:11.1f} | {base / mean:12.2f}x")
    return 0


if __name__ == "__main__":
    run_cli(main)
