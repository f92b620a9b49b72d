"""GPU check of the fast path, sized for one device call (a few minutes, decoding CIFAR-10 included).

    python ../shared/data/make_cifar10.py data && python -m tools.gpu_check --data_dir data
    python -m tools.gpu_check --dry_run            # the same code on the CPU, fake data, graph stand-in

Sections (``--sections``, comma-separated):
- ``tracking``: for each model, the first ``--steps`` training losses of the captured bf16 step against the
  eager fp32 step and the eager bf16 step, on identical batches (same permutation, same augmentation noise,
  same initial weights). For the MLP-Mixer, also the captured step under three settings a prototype might
  have used: a caching autocast region, capture with no eager warm-up step, and capture with the warm-up's
  gradients still attached. Then the MLP's captured step against its eager step for each optimizer (under
  a schedule) and each batch mixing, and each model's captured fp16 step (loss scaling in the graph)
  against its eager fp16 step. Each trace names its first non-finite loss, if any; ``--steps 351``
  covers every full batch of an epoch.
- ``benchmark``: for each model, seconds per epoch of the template pipeline, the eager fast path and the
  captured fast path (``tools.benchmark``), last of ``--bench_epochs`` epochs.
- ``parity``: for each model, ``--parity_epochs`` epochs of the default recipe on the captured fast path and
  on the eager fp32 path, and their test accuracies; with ``--parity_compiled``, also the fast path with
  ``--compile``, each against eager fp32.
- ``compile`` (not run by default: each compilation takes tens of seconds): for each model of ``--models``,
  the captured step's losses with and without ``torch.compile``, then the benchmark with a ``compiled`` row.
- ``profile`` (not run by default): for each model, wall time per step of the eager and the captured step
  (and of the compiled ones with ``--profile_compiled``), and the top kernels of each eager step.
"""
import contextlib
import os
import sys
import tempfile
import time

import torch

from config import DATA_DIR, DATA_DIR_HELP, HelpFormatter, get_config_parser
from tools import fit_or_stop, run_cli
from tools.benchmark import measure, print_table
from training import steps as steps_module
from training.cifar10 import load_cifar10, split_train_valid
from training.errors import CommandLineParser, UserError, path_flag
from training.fake_data import write_fake_cifar10
from training.models import build_model, load_model_config
from training.optim import LRSchedule, build_optimizer
from training.persistence import write_json
from training.pipelines import TensorBatches
from training.steps import GraphedTrainStep, TrainStep

MODELS = ("mlp", "resnet18", "mlpmixer")
SECTIONS = ("tracking", "benchmark", "parity", "compile", "profile")


def _caching_autocast(device, precision):
    """bf16 autocast with the weight cache on: the setting the graphed step avoids."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, cache_enabled=True)
    return contextlib.nullcontext()


class KeepWarmupGradients(GraphedTrainStep):
    """The capture without resetting gradients: the graph's backward then adds into the warm-up's gradient
    buffers on every replay (what happens when ``zero_grad`` runs outside the graph)."""

    def _record(self, dataloader, index, noise):
        zero_grad = self.optimizer.zero_grad
        self.optimizer.zero_grad = lambda set_to_none=True: None
        try:
            super()._record(dataloader, index, noise)
        finally:
            self.optimizer.zero_grad = zero_grad


def default_channels_last(model_name):
    """The layout the fast path gives ``model_name`` on the GPUs this check is for (native bf16) and on a CPU."""
    return model_name == "resnet18"


def make_step(model_name, device, precision, channels_last, graphed, seed, graph_options, optimizer_name="adamw",
              lr=1e-3, schedule=None, compiled=False, mix="none"):
    """A model with the initial weights of ``seed`` and its training step (eager, or captured if ``graphed``)."""
    torch.manual_seed(seed)
    model = build_model(model_name, load_model_config(f"model_configs/{model_name}.json", model_name)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(optimizer_name, model.parameters(), lr, 0.9, 5e-4, capturable=graphed)
    options = dict(graph_options) if graphed else {}
    if compiled:
        options["compiled_model"] = torch.compile(model)
    step_class = options.pop("step_class", GraphedTrainStep) if graphed else TrainStep
    model.train()
    return step_class(model, optimizer, device, precision=precision, channels_last=channels_last,
                      schedule=schedule, mix=mix, **options)


def loss_trace(model_name, batches, plan, device, precision, channels_last, graphed, seed, graph_options, **options):
    """Training losses of ``len(plan)`` steps from the same initial weights; returns a CPU tensor."""
    step = make_step(model_name, device, precision, channels_last, graphed, seed, graph_options, **options)
    losses = torch.zeros(len(plan), device=device)
    for i, item in enumerate(plan):
        step(batches, item)
        losses[i] = step.last_loss
    return losses.cpu()


def tracking_batches(cli, device):
    """The training batches and the first ``--steps`` items of one epoch's plan, the same for every trace."""
    data = load_cifar10(cli.data_dir)
    train_index, _ = split_train_valid(len(data.train_labels), cli.valid_size, 42)
    batches = TensorBatches(data.train_images[train_index], data.train_labels[train_index], 128, device, train=True)
    torch.manual_seed(0)
    return batches, batches.plan()[:cli.steps]


def tracking(cli, device, graph_options):
    batches, plan = tracking_batches(cli, device)
    print(f"\n== tracking: first {len(plan)} training losses, batch 128, AdamW 1e-3, identical batches")
    print(f"{'model':>9} | {'path':>34} | {'non-finite':>10} | {'first':>7} | {'last':>7} | {'max |d| vs eager fp32':>21} | "
          f"{'max |d| vs eager bf16':>21}")
    for name in cli.models.split(","):
        channels_last = default_channels_last(name)
        start = time.perf_counter()
        fp32 = loss_trace(name, batches, plan, device, "fp32", False, False, 0, graph_options)
        bf16 = loss_trace(name, batches, plan, device, "bf16", channels_last, False, 0, graph_options)
        variants = [("captured bf16 (default fast path)", {}, steps_module.autocast_context)]
        if name == "mlpmixer":
            variants += [("captured, caching autocast", {}, _caching_autocast),
                         ("captured, no eager warm-up", {"warmup_steps": 0}, steps_module.autocast_context),
                         ("captured, gradients not reset", {"step_class": KeepWarmupGradients},
                          steps_module.autocast_context)]
        rows = [("eager fp32", fp32), ("eager bf16", bf16)]
        for label, extra, autocast in variants:
            original = steps_module.autocast_context
            steps_module.autocast_context = autocast
            try:
                rows.append((label, loss_trace(name, batches, plan, device, "bf16", channels_last, True, 0,
                                               {**graph_options, **extra})))
            finally:
                steps_module.autocast_context = original
        for label, losses in rows:
            print(f"{name:>9} | {label:>34} | {first_nonfinite(losses):>10} | {losses[0].item():7.4f} | "
                  f"{losses[-1].item():7.4f} | "
                  f"{(losses - fp32).abs().max().item():21.4f} | {(losses - bf16).abs().max().item():21.4f}")
        print(f"{'':>9}   ({time.perf_counter() - start:.1f} s)", flush=True)

    print(f"\n== tracking the optimizers: MLP, captured bf16 against eager bf16, cosine schedule from "
          f"the first step (the learning rate is a tensor the graph reads), {len(plan)} steps")
    schedule = LRSchedule("cosine", 1.0, len(plan), warmup_fraction=0.2)
    for optimizer_name, lr in (("sgd", 0.05), ("momentum", 0.02), ("adam", 1e-3), ("adamw", 1e-3)):
        def scaled(step, lr=lr):
            return lr * schedule(step)
        traces = [loss_trace("mlp", batches, plan, device, "bf16", False, graphed, 0, graph_options,
                             optimizer_name=optimizer_name, lr=lr, schedule=scaled) for graphed in (False, True)]
        print_pair(optimizer_name, traces)

    print(f"\n== tracking batch mixing: MLP, captured bf16 against eager bf16, {len(plan)} steps")
    for mix in ("mixup", "cutmix"):
        print_pair(mix, [loss_trace("mlp", batches, plan, device, "bf16", False, graphed, 0, graph_options, mix=mix)
                         for graphed in (False, True)])

    print(f"\n== tracking fp16 with loss scaling (--precision fp16): captured against eager, {len(plan)} steps")
    for name in cli.models.split(","):
        channels_last = default_channels_last(name)
        print_pair(name, [loss_trace(name, batches, plan, device, "fp16", channels_last, graphed, 0, graph_options)
                          for graphed in (False, True)])


def first_nonfinite(losses):
    """``"none"``, or the 1-based number of the first step whose loss is NaN or infinite."""
    bad = (~torch.isfinite(losses)).nonzero()
    return f"step {bad[0, 0].item() + 1}" if len(bad) else "none"


def print_pair(label, traces):
    """One line comparing an eager trace with a captured one."""
    print(f"{label:>9} | non-finite {first_nonfinite(traces[1])} | last eager "
          f"{traces[0][-1].item():.4f} captured {traces[1][-1].item():.4f} | max |d| "
          f"{(traces[1] - traces[0]).abs().max().item():.4f}", flush=True)


def benchmark(cli, device, labels=None):
    extra = ["--valid_size", str(cli.valid_size)]
    labels = labels or (["template", "eager", "fast"] if device.type == "cuda" else ["template", "fast"])
    for name in cli.models.split(","):
        rows = [measure(label, name, device.type, cli.bench_epochs, 128, cli.data_dir, cli.num_workers, extra)
                for label in labels]
        print()
        print_table(f"== benchmark: {name}, batch 128, {rows[0]['device']}, last of {cli.bench_epochs} epochs, "
                    f"template pipeline with {cli.num_workers} workers", rows)
        sys.stdout.flush()


def compiled(cli, device, graph_options):
    """The captured step with and without ``torch.compile``: the same losses, and how much faster."""
    batches, plan = tracking_batches(cli, device)
    print(f"\n== compile: first {len(plan)} training losses of the captured bf16 step, without and with torch.compile")
    for name in cli.models.split(","):
        channels_last = default_channels_last(name)
        start = time.perf_counter()
        plain, fused = (loss_trace(name, batches, plan, device, "bf16", channels_last, True, 0,
                                   graph_options, compiled=flag)
                        for flag in (False, True))
        print(f"{name:>9} | non-finite {first_nonfinite(fused)} | last {plain[-1].item():.4f} vs compiled "
              f"{fused[-1].item():.4f} | max |d| {(fused - plain).abs().max().item():.4f} | "
              f"{time.perf_counter() - start:.0f} s with compilation", flush=True)
    benchmark(cli, device, ["template", "fast", "compiled"])


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def kernel_summary(step, batches, items, device, rows):
    """Run ``items`` under the profiler; return (device time per step in ms, the table of the top ``rows`` ops).

    On CUDA only kernels are recorded; on a CPU (dry run) the operators' own CPU time stands in for them."""
    cuda = device.type == "cuda"
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA if cuda
                                            else torch.profiler.ProfilerActivity.CPU]) as prof:
        for item in items:
            step(batches, item)
        synchronize(device)
    events = prof.key_averages()
    column = "self_device_time_total" if cuda else "self_cpu_time_total"
    total_us = sum(getattr(event, column) for event in events)
    return total_us / len(items) / 1000, events.table(sort_by=column, row_limit=rows, max_name_column_width=70)


def profile(cli, device, graph_options):
    """Wall time per training step, eager and captured (and compiled with ``--profile_compiled``), and the
    kernel time of the eager steps: a captured step replays the same kernels without the launch gaps, so
    their total is the floor that capture alone can reach; lowering it needs fewer or faster kernels."""
    batches, plan = tracking_batches(cli, device)
    warm = min(10, len(plan) // 2)
    timed = plan[warm:]
    print(f"\n== profile: ms per training step (bf16, batch 128), mean of {len(timed)} steps after {warm} warm-up steps")
    print(f"{'model':>9} | {'step':>17} | {'wall ms':>8} | {'kernel ms':>9}")
    for name in cli.models.split(","):
        channels_last = default_channels_last(name)
        tables = []
        for compiled in (False, True) if cli.profile_compiled else (False,):
            for graphed in (False, True):
                step = make_step(name, device, "bf16", channels_last, graphed, 0, graph_options, compiled=compiled)
                for item in plan[:warm]:
                    step(batches, item)
                synchronize(device)
                start = time.perf_counter()
                for item in timed:
                    step(batches, item)
                synchronize(device)
                wall_ms = (time.perf_counter() - start) / len(timed) * 1000
                label = ("compiled " if compiled else "") + ("captured" if graphed else "eager")
                kernels = ""
                if not graphed:  # a replayed graph's kernels are the eager step's; profile them there
                    kernel_ms, table = kernel_summary(step, batches, timed, device, cli.rows)
                    kernels = f"{kernel_ms:9.3f}"
                    tables.append((label, table))
                print(f"{name:>9} | {label:>17} | {wall_ms:8.3f} | {kernels:>9}", flush=True)
        for label, table in tables:
            print(f"\n{name}, {label} step: top {cli.rows} by {'kernel' if device.type == 'cuda' else 'CPU'} time "
                  f"over {len(timed)} steps\n{table}", flush=True)


PARITY_PATHS = {  # main.py flags of each path the parity section trains; eager fp32 is the one compared against
    "fast": ["--pipeline", "tensor"],
    "eager fp32": ["--pipeline", "tensor", "--precision", "fp32", "--cuda_graph", "off", "--channels_last", "off"],
    "compiled": ["--pipeline", "tensor", "--compile"],
}


def parity(cli, device):
    paths = ["fast", "eager fp32"] + (["compiled"] if cli.parity_compiled else [])
    print(f"\n== parity: {cli.parity_epochs} epochs of the default recipe (AdamW 1e-3, wd 5e-4, constant lr)"
          + (", the fast path also with --compile" if cli.parity_compiled else ""))
    print(f"{'model':>9} | {'path':>12} | {'test acc':>8} | {'best valid':>10} | {'train s total':>13}")
    summary = {}
    for name in cli.models.split(","):
        for label in paths:
            argv = ["--model", name, "--model_config", f"model_configs/{name}.json", "--epochs",
                    str(cli.parity_epochs), "--device", device.type, "--data_dir", cli.data_dir, "--no_progress",
                    "--valid_size", str(cli.valid_size), *PARITY_PATHS[label]]
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                results = fit_or_stop(get_config_parser().parse_args(argv))
            summary[(name, label)] = results
            ended = "" if results["status"] == "completed" else f" | {results['status']}"  # e.g. diverged: no test
            print(f"{name:>9} | {label:>12} | {_accuracy(results['test_acc'], 8)} | "
                  f"{_accuracy(results['best_valid_acc'], 10)} | {sum(results['train_seconds']):13.1f}{ended}",
                  flush=True)
            compared = {"eager fp32": "fast", "compiled": "compiled"}.get(label)  # each once eager fp32 has run
            if compared:
                tested = [summary[(name, path)]["test_acc"] for path in (compared, "eager fp32")]
                gap = f"{tested[0] - tested[1]:+8.4f}" if None not in tested else f"{'-':>8} (a path was not tested)"
                print(f"{name:>9} | {'difference':>12} | {gap}", flush=True)
    if cli.json_out:
        write_json(cli.json_out, {f"{model}/{path}": results for (model, path), results in summary.items()})


def _accuracy(value, width):
    """An accuracy to 4 decimals, or a dash where the run logged none (it diverged before its test)."""
    return f"{'-':>{width}}" if value is None else f"{value:{width}.4f}"


def parse_args(argv=None):
    runner = get_config_parser()  # the defaults of main.py, which every row trains with
    parser = CommandLineParser(prog="python -m tools.gpu_check", description=__doc__,
                               formatter_class=HelpFormatter)
    parser.add_argument("--data_dir", type=path_flag, default=DATA_DIR, help=DATA_DIR_HELP)
    parser.add_argument("--sections", default="tracking,benchmark,parity",
                        help=f"comma-separated sections to run, of {', '.join(SECTIONS)}")
    parser.add_argument("--steps", type=int, default=50, help="tracking: training losses compared per trace")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models that every section runs")
    parser.add_argument("--bench_epochs", type=int, default=2, help="benchmark: epochs per row, the last one timed")
    parser.add_argument("--parity_epochs", type=int, default=15, help="parity: epochs of each run")
    parser.add_argument("--num_workers", type=int, default=runner.get_default("num_workers"),
                        help="DataLoader workers of the template pipeline")
    parser.add_argument("--valid_size", type=int, default=runner.get_default("valid_size"),
                        help="training images held out for validation")
    parser.add_argument("--parity_compiled", action="store_true",
                        help="parity: also the fast path with --compile, against eager fp32 (its difference row "
                             "follows its own)")
    parser.add_argument("--json_out", default=None, help="write the parity runs' results here")
    parser.add_argument("--rows", type=int, default=15, help="profile: rows of each kernel table")
    parser.add_argument("--profile_compiled", action="store_true",
                        help="profile: also the steps of a torch.compile'd model (tens of seconds per compilation)")
    parser.add_argument("--dry_run", action="store_true",
                        help="run on the CPU with fake data and a stand-in for graph capture (checks the script)")
    cli = parser.parse_args(argv)
    for flag, given, choices in (("--models", cli.models, MODELS), ("--sections", cli.sections, SECTIONS)):
        unknown = {name or '""' for name in given.split(",")} - set(choices)  # "" from a stray comma: a,,b
        if unknown:
            raise UserError(f"{flag}: unknown {', '.join(sorted(unknown))}; choose from {', '.join(choices)}")
    for flag, least in (("steps", 1), ("bench_epochs", 1), ("parity_epochs", 1), ("rows", 1), ("valid_size", 1),
                        ("num_workers", 0)):
        if getattr(cli, flag) < least:  # checked before the first section, not when its section comes
            raise UserError(f"--{flag} must {'be at least 1' if least else 'not be negative'}, "
                            f"got {getattr(cli, flag)}")
    if cli.json_out and os.path.isdir(cli.json_out):  # else found only once the parity runs are done
        raise UserError(f"--json_out {cli.json_out} is a folder; give a file path, such as "
                        f"{os.path.join(cli.json_out, 'parity.json')}")
    if cli.json_out and not os.path.isdir(os.path.dirname(os.path.abspath(cli.json_out))):
        raise UserError(f"--json_out {cli.json_out}: its folder does not exist; create it or give another path")
    return cli


def main(argv=None):
    cli = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        run_sections(cli, scratch)


def run_sections(cli, scratch):
    """Run the chosen sections; a dry run writes its fake data into ``scratch``."""
    graph_options = {}
    if cli.dry_run:
        device = torch.device("cpu")
        cli.data_dir = scratch
        write_fake_cifar10(cli.data_dir, train_per_batch=64, test=40)
        cli.valid_size, cli.steps, cli.bench_epochs, cli.parity_epochs = 40, min(cli.steps, 4), 1, 1
        graph_options = {"capture": lambda run: run, "eager_context": contextlib.nullcontext, "warmup_steps": 1}
    elif not torch.cuda.is_available():
        raise UserError("tools.gpu_check needs CUDA (or --dry_run to check the script on a CPU)")
    else:
        device = torch.device("cuda")
        print(torch.cuda.get_device_name(), "| torch", torch.__version__, flush=True)
    sections = cli.sections.split(",")
    start = time.perf_counter()
    if "tracking" in sections:
        tracking(cli, device, graph_options)
    if "benchmark" in sections:
        benchmark(cli, device)
    if "parity" in sections:
        parity(cli, device)
    if "compile" in sections:
        compiled(cli, device, graph_options)
    if "profile" in sections:
        profile(cli, device, graph_options)
    print(f"\ngpu_check done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    run_cli(main)
