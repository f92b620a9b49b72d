"""Wall-clock time of the required runs of studies 1-3 (3 + 5 + 4 runs of 15 epochs), then the report:
the check of issue 4's "under 4 minutes on one GPU" target.

    python -m tools.time_studies --data_dir .devdata/data --out /tmp/studies     # on a GPU machine
    python -m tools.time_studies --data_dir .devdata/data --workers 2            # two workers share the GPU
    python -m tools.time_studies --dry_run                                        # the same code, CPU, fake data

Each study's time is measured around its whole command (data loading, every run with its
validation and test passes, graph captures), from a fresh output folder, after a CUDA synchronize;
beside it, the training and validation seconds that its runs logged, so that a missed target shows
whether the epochs or the work around them took the time.
Each study's time is printed as soon as it ends, so a run cut short by a time limit still reports
the studies it finished.
"""
import json
import os
import sys
import tempfile
import time

import torch

from config import DATA_DIR, DATA_DIR_HELP, HelpFormatter
from studies.__main__ import main as studies_main
from studies.report import load_runs
from tools import run_cli
from training.errors import CommandLineParser, UserError, path_flag

GRID_STUDIES = ("mlp_activation", "resnet18_lr", "mlpmixer_patch")


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _dry_run_flags(folder):
    """Fake data and tiny models, so the script's code can be checked on a CPU in seconds."""
    from training.fake_data import write_fake_cifar10

    write_fake_cifar10(folder, train_per_batch=24, test=30)
    tiny = {"mlp": {"input_size": 3072, "hidden_sizes": [32, 16], "num_classes": 10},
            "mlpmixer": {"num_classes": 10, "img_size": 32, "patch_size": 8, "embed_dim": 16, "num_blocks": 1}}
    for name, config in tiny.items():
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            json.dump(config, f)
    return {"mlp_activation": ["--model_config", os.path.join(folder, "mlp.json")],
            "resnet18_lr": ["--values", "0.001"],
            "mlpmixer_patch": ["--model_config", os.path.join(folder, "mlpmixer.json"), "--values", "8", "16"]}, [
        "--data_dir", folder, "--device", "cpu", "--epochs", "1", "--valid_size", "100", "--batch_size", "16"]


def parse_args(argv=None):
    parser = CommandLineParser(prog="python -m tools.time_studies", description=__doc__,
                               formatter_class=HelpFormatter)
    parser.add_argument("--data_dir", type=path_flag, default=DATA_DIR, help=DATA_DIR_HELP)
    parser.add_argument("--out", type=path_flag, help="output folder (default: a new temporary folder); must not exist")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per study (they share the GPU)")
    parser.add_argument("--dry_run", action="store_true", help="CPU, fake data, tiny models, 1 epoch")
    cli = parser.parse_args(argv)
    if cli.workers < 1:
        raise UserError(f"--workers must be at least 1, got {cli.workers}")
    return cli


def main(argv=None):
    cli = parse_args(argv)
    if cli.out and os.path.exists(cli.out):
        raise UserError(f"--out {cli.out} exists; give a new --out so that every run trains from scratch")
    if cli.dry_run:
        with tempfile.TemporaryDirectory(prefix="time-studies-") as scratch:
            per_study, common = _dry_run_flags(os.path.join(scratch, "data"))
            return time_studies(cli, os.path.join(scratch, "out"), per_study, common)
    if not torch.cuda.is_available():
        raise UserError("tools.time_studies measures the GPU target and needs CUDA (or --dry_run)")
    return time_studies(cli, cli.out or tempfile.mkdtemp(prefix="time-studies-"),
                        {name: [] for name in GRID_STUDIES}, ["--data_dir", cli.data_dir, "--device", "cuda"])


def logged_seconds(study_dir):
    """Training and validation seconds summed over the runs' results.json files in ``study_dir``."""
    logged = [run["results"] for run in load_runs(study_dir)]
    return (sum(sum(results.get("train_seconds", [])) for results in logged),
            sum(sum(results.get("valid_seconds", [])) for results in logged))


def time_studies(cli, out, per_study, common):
    """Run studies 1-3 one after another into ``out``, timing each; then the report.

    Beside each study's wall time, the training and validation seconds that its runs logged; with one
    worker, the rest is what a run spends outside its epochs (loading the data, building the model,
    cuDNN autotuning and graph capture in the first steps, the test pass) and the study's own work."""
    rows = {}
    for name in GRID_STUDIES:
        _synchronize()
        start = time.perf_counter()
        code = studies_main(["run", name, "--out", out, "--workers", str(cli.workers), *common, *per_study[name]])
        _synchronize()
        wall = time.perf_counter() - start
        if code == 130:  # the study saved its runs and said so; the time of a study cut short is no timing
            raise KeyboardInterrupt
        if code == 2:  # the study refused an input in one line and trained nothing: there is nothing to time
            return code
        rows[name] = (wall, *logged_seconds(os.path.join(out, name)))
        print(f"time_studies: {name} took {wall:.1f} s (its runs logged {rows[name][1]:.1f} s of training and "
              f"{rows[name][2]:.1f} s of validation), {sum(row[0] for row in rows.values()):.1f} s so far", flush=True)
        if code != 0:
            sys.exit(f"error: study {name} exited with {code}")
    studies_main(["report", "--out", out])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not cli.dry_run else "cpu"
    print(f"\nstudies 1-3 on {device}, {cli.workers} worker(s) per study:")
    print(f"  {'study':<16} {'wall s':>8} {'train s':>8} {'valid s':>8} {'rest s':>8}")
    rows["total"] = tuple(map(sum, zip(*rows.values())))
    for name, (wall, train, valid) in rows.items():
        rest = f"{wall - train - valid:8.1f}" if cli.workers == 1 else f"{'-':>8}"  # workers overlap their runs
        print(f"  {name:<16} {wall:8.1f} {train:8.1f} {valid:8.1f} {rest}")
    print("  target: a total wall time under 240 s")
    return 0


if __name__ == "__main__":
    run_cli(main)
