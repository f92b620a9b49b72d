"""Where a training step spends its GPU time: the top kernels of a few eager bf16 steps (torch.profiler).

    python -m tools.profile_step --data_dir data --models resnet18,mlpmixer

A captured step replays these same kernels without the launch gaps, so the kernel total per step is
the floor that CUDA graphs alone can reach; lowering it needs fewer or faster kernels.
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from training.cifar10 import load_cifar10
from training.models import build_model, load_model_config
from training.optim import build_optimizer
from training.pipelines import TensorBatches
from training.steps import GraphedTrainStep, TrainStep


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="./data")
    parser.add_argument("--models", default="resnet18,mlpmixer")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=15)
    cli = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    data = load_cifar10(cli.data_dir)
    batches = TensorBatches(data.train_images[:45000], data.train_labels[:45000], 128, device, train=True)
    plan = [item for item in batches.plan() if len(item[0]) == 128]
    for name in cli.models.split(","):
        channels_last = name == "resnet18"
        for graphed in (False, True):
            torch.manual_seed(0)
            model = build_model(name, load_model_config(f"model_configs/{name}.json", name)).to(device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            optimizer = build_optimizer("adamw", model.parameters(), 1e-3, 0.9, 5e-4, capturable=graphed)
            step = (GraphedTrainStep if graphed else TrainStep)(model, optimizer, device, precision="bf16",
                                                                channels_last=channels_last)
            model.train()
            for item in plan[:10]:
                step(batches, item)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for item in plan[10:10 + cli.steps]:
                step(batches, item)
            torch.cuda.synchronize()
            wall = (time.perf_counter() - start) / cli.steps * 1000
            print(f"\n== {name}, {'captured' if graphed else 'eager'} bf16 step: {wall:.3f} ms wall per step")
            if graphed:
                continue
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for item in plan[10:10 + cli.steps]:
                    step(batches, item)
                torch.cuda.synchronize()
            events = prof.key_averages()
            total = sum(event.device_time_total for event in events if event.device_time_total > 0
                        and event.key != "" and not event.key.startswith("ProfilerStep"))
            print(f"kernel time per step (sum over kernels, may double-count nested ops): "
                  f"{total / cli.steps / 1000:.3f} ms")
            try:
                print(events.table(sort_by="device_time_total", row_limit=cli.rows, max_name_column_width=70))
            except (KeyError, AttributeError, ValueError):  # older torch names the column cuda_time_total
                print(events.table(sort_by="cuda_time_total", row_limit=cli.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
