"""Wall-clock time of the required runs of studies 1-3 (3 + 5 + 4 runs of 15 epochs), then the report:
the check of issue 4's "under 4 minutes on one GPU" target.

    python -m tools.time_studies --data_dir .devdata/data --out /tmp/studies     # on a GPU machine
    python -m tools.time_studies --data_dir .devdata/data --workers 2            # two workers share the GPU
    python -m tools.time_studies --dry_run                                        # the same code, CPU, fake data

Each study's time is measured around its whole command (data loading, every run with its
validation and test passes, graph captures), from a fresh output folder, after a CUDA synchronize.
Each study's time is printed as soon as it ends, so a run cut short by a time limit still reports
the studies it finished.
"""
import argparse
import os
import sys
import tempfile
import time

import torch

from studies.__main__ import main as studies_main

GRID_STUDIES = ("mlp_activation", "resnet18_lr", "mlpmixer_patch")


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _dry_run_flags(folder):
    """Fake data and tiny models, so the script's code can be checked on a CPU in seconds."""
    import json

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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="./data")
    parser.add_argument("--out", help="output folder (default: a new temporary folder); must not exist")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per study (they share the GPU)")
    parser.add_argument("--dry_run", action="store_true", help="CPU, fake data, tiny models, 1 epoch")
    return parser.parse_args(argv)


def main(argv=None):
    cli = parse_args(argv)
    if cli.out and os.path.exists(cli.out):
        sys.exit(f"error: {cli.out} exists; give a new --out so that every run trains from scratch")
    if cli.dry_run:
        with tempfile.TemporaryDirectory(prefix="time-studies-") as scratch:
            per_study, common = _dry_run_flags(os.path.join(scratch, "data"))
            return time_studies(cli, os.path.join(scratch, "out"), per_study, common)
    if not torch.cuda.is_available():
        sys.exit("error: tools.time_studies measures the GPU target and needs CUDA (or --dry_run)")
    return time_studies(cli, cli.out or tempfile.mkdtemp(prefix="time-studies-"),
                        {name: [] for name in GRID_STUDIES}, ["--data_dir", cli.data_dir, "--device", "cuda"])


def time_studies(cli, out, per_study, common):
    """Run studies 1-3 one after another into ``out``, timing each; then the report."""
    seconds = {}
    for name in GRID_STUDIES:
        _synchronize()
        start = time.perf_counter()
        code = studies_main(["run", name, "--out", out, "--workers", str(cli.workers), *common, *per_study[name]])
        _synchronize()
        seconds[name] = time.perf_counter() - start
        print(f"time_studies: {name} took {seconds[name]:.1f} s, {sum(seconds.values()):.1f} s so far", flush=True)
        if code != 0:
            sys.exit(f"error: study {name} exited with {code}")
    studies_main(["report", "--out", out])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not cli.dry_run else "cpu"
    print(f"\nstudies 1-3 on {device}, {cli.workers} worker(s) per study:")
    for name, value in seconds.items():
        print(f"  {name:<16} {value:8.1f} s")
    print(f"  {'total':<16} {sum(seconds.values()):8.1f} s  (target: under 240 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
