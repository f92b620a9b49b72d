"""Seconds per epoch of the two data pipelines, measured side by side in one process.

    python benchmark.py --device cpu                       # MLP, 1 epoch each, on this CPU
    python benchmark.py --model resnet18 --device cuda --epochs 2

Both runs train the same model with the same batch size on the same split through ``fit``; the
first epoch of a GPU run includes warm-up (cuDNN autotuning), so the table reports the last epoch.
"""
import argparse
import contextlib
import io

from config import get_config_parser
from training.engine import fit


def measure(pipeline, cli):
    argv = ["--model", cli.model, "--model_config", cli.model_config or f"model_configs/{cli.model}.json",
            "--epochs", str(cli.epochs), "--device", cli.device, "--data_dir", cli.data_dir, "--pipeline", pipeline,
            "--batch_size", str(cli.batch_size), "--num_workers", str(cli.num_workers), "--no_progress"]
    args = get_config_parser().parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()):
        results = fit(args)
    return {"pipeline": pipeline, "train_s": results["train_seconds"][-1], "valid_s": results["valid_seconds"][-1],
            "img_s": results["train_images_per_second"][-1], "device": results["device_name"],
            "test_acc": results["test_acc"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp", choices=["mlp", "resnet18", "mlpmixer"])
    parser.add_argument("--model_config", default=None, help="default: model_configs/<model>.json")
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_workers", type=int, default=get_config_parser().get_default("num_workers"),
                        help="DataLoader workers of the torchvision pipeline")
    parser.add_argument("--data_dir", default="./data")
    cli = parser.parse_args()

    rows = [measure("torchvision", cli), measure("tensor", cli)]
    print(f"{cli.model}, batch {cli.batch_size}, {rows[0]['device']}, last of {cli.epochs} epoch(s), "
          f"torchvision pipeline with {cli.num_workers} workers")
    print(f"{'pipeline':>12} | {'train s':>8} | {'valid s':>8} | {'epoch s':>8} | {'train img/s':>11} | {'test acc':>8}")
    for row in rows:
        print(f"{row['pipeline']:>12} | {row['train_s']:8.2f} | {row['valid_s']:8.2f} | "
              f"{row['train_s'] + row['valid_s']:8.2f} | {row['img_s']:11.0f} | {row['test_acc']:8.4f}")
    template, fast = rows
    ratio = (template["train_s"] + template["valid_s"]) / (fast["train_s"] + fast["valid_s"])
    print(f"tensor pipeline is {ratio:.2f}x faster per epoch (train + validation)")


if __name__ == "__main__":
    main()
