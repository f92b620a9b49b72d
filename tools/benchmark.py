"""Seconds per epoch of the template's pipeline and of the fast path, measured side by side in one process.

    python -m tools.benchmark --device cpu                          # MLP, 1 epoch each, on this CPU
    python -m tools.benchmark --model resnet18 --device cuda --epochs 2
    python -m tools.benchmark --model resnet18 --device cuda --epochs 2 --precisions fp32 fp16   # a T4: which is faster

Every row trains the same model with the same batch size on the same split through ``fit``:
- ``template``: ``--pipeline torchvision`` (DataLoader, PIL transforms), fp32, eager: the course template's way;
- ``eager``  (CUDA only): data on the GPU, batched augmentation, the auto precision and layout (bf16 and
  channels-last on GPUs with native bf16), eager steps;
- ``fast``: the default path (on CUDA: the above with the training step in a CUDA graph);
- ``compiled`` (with ``--compile``): the default path with the model ``torch.compile``d.
With ``--precisions``, every row but the template's runs at each precision given (``fast fp32``, ``fast fp16``...).
The last epoch is reported (a GPU run's first epoch includes cuDNN autotuning and graph capture), and with
``--repeats N`` the rows are measured N times, interleaved, and each row's fastest run is kept: a shared
machine's noise then slows both paths alike instead of deciding the ratio.
"""
import contextlib
import io
import math

import torch

from config import DATA_DIR, DATA_DIR_HELP, HelpFormatter, get_config_parser
from tools import fit_or_stop, run_cli
from training.devices import no_cuda_said
from training.errors import CommandLineParser, UserError, path_flag

ROWS = {
    "template": ["--pipeline", "torchvision", "--precision", "fp32", "--channels_last", "off", "--cuda_graph", "off"],
    "eager": ["--pipeline", "tensor", "--cuda_graph", "off"],
    "fast": ["--pipeline", "tensor"],
    "compiled": ["--pipeline", "tensor", "--compile"],
}
# below this many training steps in the timed epoch, start-up (a DataLoader's workers, the first batches) decides the
# ratio rather than the steps
FEW_STEPS = 50


def measure(label, model, device, epochs, batch_size, data_dir, num_workers, extra=(), precision="auto"):
    """Train once through ``fit`` with ``ROWS[label]`` flags; return the last epoch's timings.

    ``precision`` applies to every row but the template's, which stays fp32; a precision other than
    ``auto`` is named in the row's label."""
    flags = ROWS[label] if label == "template" else [*ROWS[label], "--precision", precision]
    argv = ["--model", model, "--model_config", f"model_configs/{model}.json", "--epochs", str(epochs),
            "--device", device, "--data_dir", data_dir, "--batch_size", str(batch_size),
            "--num_workers", str(num_workers), "--no_progress", *flags, *extra]
    args = get_config_parser().parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()):
        results = fit_or_stop(args)
    if label != "template" and precision != "auto":
        label = f"{label} {precision}"
    row = {"row": label, "device": results["device_name"], "test_acc": results["test_acc"],
           "status": results["status"], "epochs": results["epochs_completed"],
           "steps": math.ceil(results["split"]["train"] / batch_size) if "split" in results else None}
    if results["status"] != "completed":  # a diverged run logged no last epoch, or an earlier one than asked for
        return {**row, "train_s": None, "valid_s": None, "img_s": None, "epoch_s": None}
    return {**row, "train_s": results["train_seconds"][-1], "valid_s": results["valid_seconds"][-1],
            "img_s": results["train_images_per_second"][-1],
            "epoch_s": results["train_seconds"][-1] + results["valid_seconds"][-1]}


def fastest(rows):
    """The row of the quickest run among ``rows`` (repeats of one row), a run that completed before one that did not."""
    return min(rows, key=lambda row: (row["epoch_s"] is None, row["epoch_s"] or 0.0))


def print_table(title, rows):
    print(title)
    print(f"{'path':>14} | {'train s':>8} | {'valid s':>8} | {'epoch s':>8} | {'train img/s':>11} | "
          f"{'vs template':>11}")
    base = rows[0]["epoch_s"]
    for row in rows:
        if row["epoch_s"] is None:
            print(f"{row['row']:>14} | not timed: the run {row['status']} after {row['epochs']} completed epoch(s)")
            continue
        ratio = f"{'-':>11}" if base is None else f"{base / row['epoch_s']:10.2f}x"
        print(f"{row['row']:>14} | {row['train_s']:8.2f} | {row['valid_s']:8.2f} | {row['epoch_s']:8.2f} | "
              f"{row['img_s']:11.0f} | {ratio}")


def parse_args(argv=None):
    runner = get_config_parser()  # the defaults of main.py, which every row trains with
    parser = CommandLineParser(prog="python -m tools.benchmark", description=__doc__,
                               formatter_class=HelpFormatter)
    parser.add_argument("--model", default="mlp", choices=["mlp", "resnet18", "mlpmixer"],
                        help="the model every row trains, with its shipped config")
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"],
                        help="cuda: rows template, eager, fast; cpu: template and fast")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs per row; the last one is timed (more leave the first's warm-up out)")
    parser.add_argument("--batch_size", type=int, default=128, help="training batch size of every row")
    parser.add_argument("--num_workers", type=int, default=runner.get_default("num_workers"),
                        help="DataLoader workers of the template pipeline")
    parser.add_argument("--data_dir", type=path_flag, default=DATA_DIR, help=DATA_DIR_HELP)
    parser.add_argument("--valid_size", type=int, default=runner.get_default("valid_size"),
                        help="training images held out for validation")
    parser.add_argument("--repeats", type=int, default=2, help="measure every row this many times, keep the fastest")
    parser.add_argument("--compile", action="store_true", help="add the compiled row (compiles once per repeat)")
    parser.add_argument("--precisions", nargs="+", default=["auto"], choices=["auto", "bf16", "fp16", "fp32"],
                        help="run every row but the template's at each of these (e.g. fp32 fp16 on a T4)")
    return parser.parse_args(argv)


def main(argv=None):
    cli = parse_args(argv)
    if cli.device == "cuda" and not torch.cuda.is_available():  # its rows on the CPU would be another benchmark
        raise UserError(f"--device cuda: {no_cuda_said()}; use --device cpu")
    if cli.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {cli.repeats}")
    labels = ["template", "eager", "fast"] if cli.device == "cuda" else ["template", "fast"]
    labels += ["compiled"] if cli.compile else []
    plan = [("template", "auto")] + [(label, precision) for label in labels[1:] for precision in cli.precisions]
    extra = ["--valid_size", str(cli.valid_size)]
    runs = [[measure(label, cli.model, cli.device, cli.epochs, cli.batch_size, cli.data_dir, cli.num_workers, extra,
                     precision) for label, precision in plan] for _ in range(cli.repeats)]
    rows = [fastest([run[i] for run in runs]) for i in range(len(plan))]
    print_table(f"{cli.model}, batch {cli.batch_size}, {rows[0]['device']}, last of {cli.epochs} epoch(s), "
                f"fastest of {cli.repeats}, template pipeline with {cli.num_workers} workers", rows)
    steps = rows[0]["steps"]
    if steps is not None and steps < FEW_STEPS:
        print(f"note: the timed epoch is {steps} training step{'s' if steps > 1 else ''}, too few for these ratios to "
              "measure training rather than start-up (the DataLoader's workers, the first batches); time more images "
              "or a smaller --batch_size")


if __name__ == "__main__":
    run_cli(main)
