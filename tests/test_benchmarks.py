"""The pipeline benchmark and the layout benchmark: real rows on fake data, then their tables, ratios, repeats and
alternation from stand-in runs and clocks, their defaults, and the counts and choices they refuse."""
import re
import types

import pytest
import torch

from helpers import ROOT
import tools
from tools import benchmark
from training.errors import UserError

def test_benchmark_prints_each_path_with_its_ratio(fake_data_dir, capsys, quick_compile):
    benchmark.main(["--device", "cpu", "--data_dir", fake_data_dir, "--repeats", "1", "--num_workers", "0",
                    "--valid_size", "20", "--compile"])
    out = capsys.readouterr().out
    for row in ("template", "fast", "compiled"):
        assert re.search(rf"^ +{row} \| +[\d.]+ \| +[\d.]+ \| +[\d.]+ \| +\d+ \| +[\d.]+x$", out, re.MULTILINE)
    assert "eager" not in out  # the eager GPU path is a CUDA row
    # 100 training images in one batch of 128
    assert out.endswith("note: the timed epoch is 1 training step, too few for these ratios to measure training rather "
                        "than start-up (the DataLoader's workers, the first batches); time more images or a smaller "
                        "--batch_size\n")


@pytest.mark.filterwarnings("ignore:--precision bf16")  # this CPU may emulate bf16: the row is timed all the same
def test_benchmark_runs_the_fast_rows_at_each_precision(fake_data_dir, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    benchmark.main(["--device", "cpu", "--data_dir", fake_data_dir, "--repeats", "1", "--num_workers", "0",
                    "--valid_size", "20", "--precisions", "fp32", "bf16"])
    rows = re.findall(r"^ +(\w[\w ]*?) \| +[\d.]+ \| +[\d.]+ \| +[\d.]+ \| +\d+ \| +[\d.]+x$",
                      capsys.readouterr().out, re.MULTILINE)
    assert rows == ["template", "fast fp32", "fast bf16"]


def test_benchmark_keeps_each_rows_fastest_repeat_and_divides_the_templates_epoch_by_it(capsys, monkeypatch):
    # (train s, valid s) of each row's last epoch in the first and the second repeat
    timings = {("torchvision", "fp32"): [(9.0, 1.0), (7.0, 1.0)], ("tensor", "fp32"): [(1.5, 0.5), (2.0, 0.5)],
               ("tensor", "bf16"): [(3.0, 1.0), (0.75, 0.25)]}
    seen = []

    def fit(args):
        key = (args.pipeline, args.precision)
        seen.append((*key, args.channels_last, args.cuda_graph, args.epochs, args.batch_size, args.valid_size,
                     args.num_workers))
        train_s, valid_s = timings[key][sum(1 for run in seen if run[:2] == key) - 1]
        return {"status": "completed", "train_seconds": [99.0, train_s], "valid_seconds": [99.0, valid_s],
                "train_images_per_second": [1.0, 1000 / train_s], "device_name": "a stand-in", "test_acc": 0.5,
                "epochs_completed": 2, "split": {"train": 3200}}  # 50 steps of 64: enough to time, so no note
    monkeypatch.setattr(tools, "fit", fit)
    benchmark.main(["--device", "cpu", "--repeats", "2", "--precisions", "fp32", "bf16", "--epochs", "2",
                    "--batch_size", "64", "--valid_size", "100", "--num_workers", "3"])
    template = ("torchvision", "fp32", "off", "off", 2, 64, 100, 3)
    fast = ("tensor", "fp32", "auto", "auto", 2, 64, 100, 3)
    assert seen == [template, fast, ("tensor", "bf16", *fast[2:])] * 2  # the repeats interleaved
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "mlp, batch 64, a stand-in, last of 2 epoch(s), fastest of 2, template pipeline with 3 workers"
    assert [cell.strip() for cell in out[1].split("|")] == ["path", "train s", "valid s", "epoch s", "train img/s",
                                                         "vs template"]
    rows = [[cell.strip() for cell in line.split("|")] for line in out[2:]]
    assert rows == [["template", "7.00", "1.00", "8.00", "143", "1.00x"],
                    ["fast fp32", "1.50", "0.50", "2.00", "667", "4.00x"],
                    ["fast bf16", "0.75", "0.25", "1.00", "1333", "8.00x"]]


def test_benchmark_on_a_gpu_times_the_eager_row_between_the_templates_and_the_graphed_one(capsys, monkeypatch):
    seen = []

    def fit(args):
        seen.append((args.model, args.device, args.pipeline, args.precision, args.channels_last, args.cuda_graph,
                     args.compile))
        return {"status": "completed", "train_seconds": [1.0], "valid_seconds": [1.0], "train_images_per_second": [1.0],
                "device_name": "a stand-in GPU", "test_acc": 0.5, "epochs_completed": 1}
    monkeypatch.setattr(tools, "fit", fit)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    benchmark.main(["--model", "resnet18", "--repeats", "1", "--compile"])
    assert seen == [("resnet18", "cuda", "torchvision", "fp32", "off", "off", False),
                    ("resnet18", "cuda", "tensor", "auto", "auto", "off", False),
                    ("resnet18", "cuda", "tensor", "auto", "auto", "auto", False),
                    ("resnet18", "cuda", "tensor", "auto", "auto", "auto", True)]
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split("|")[0].strip() for row in rows] == ["template", "eager", "fast", "compiled"]


@pytest.mark.parametrize("template_diverged", [False, True])
def test_benchmark_tables_a_run_that_did_not_complete_as_not_timed(template_diverged, capsys, monkeypatch):
    # a run that diverged logged no last epoch, or only an earlier one, whose time would pass for the last's
    diverged = {("torchvision", 1)} if template_diverged else {("tensor", 1), ("tensor", 2)}
    seen = []

    def fit(args):
        seen.append(args.pipeline)
        if (args.pipeline, seen.count(args.pipeline)) in diverged:
            return {"status": "diverged", "train_seconds": [3.0], "valid_seconds": [1.0],
                    "train_images_per_second": [9.0], "device_name": "a stand-in", "test_acc": None,
                    "epochs_completed": 1}
        return {"status": "completed", "train_seconds": [99.0, 6.0], "valid_seconds": [99.0, 2.0],
                "train_images_per_second": [1.0, 500.0], "device_name": "a stand-in", "test_acc": 0.5,
                "epochs_completed": 2}
    monkeypatch.setattr(tools, "fit", fit)
    benchmark.main(["--device", "cpu", "--repeats", "2", "--epochs", "2"])
    rows = capsys.readouterr().out.splitlines()[2:]
    if template_diverged:  # its second repeat completed, and is the one kept
        assert rows == ["      template |     6.00 |     2.00 |     8.00 |         500 |       1.00x",
                        "          fast |     6.00 |     2.00 |     8.00 |         500 |       1.00x"]
    else:
        assert rows == ["      template |     6.00 |     2.00 |     8.00 |         500 |       1.00x",
                        "          fast | not timed: the run diverged after 1 completed epoch(s)"]


def test_benchmark_gives_no_ratio_to_a_template_run_that_never_completed(capsys):
    completed = {"row": "fast", "train_s": 1.5, "valid_s": 0.5, "epoch_s": 2.0, "img_s": 100.0, "status": "completed"}
    benchmark.print_table("title", [{"row": "template", "epoch_s": None, "status": "diverged", "epochs": 0},
                                    completed])
    assert capsys.readouterr().out.splitlines()[2:] == [
        "      template | not timed: the run diverged after 0 completed epoch(s)",
        "          fast |     1.50 |     0.50 |     2.00 |         100 |           -"]


def test_the_benchmark_defaults_are_those_its_usage_states_and_the_templates():
    from config import get_config_parser

    defaults = vars(benchmark.parse_args([]))
    template = get_config_parser().parse_args([])
    assert defaults == {"model": "mlp", "device": "cuda", "epochs": 1, "batch_size": template.batch_size,
                        "num_workers": template.num_workers, "data_dir": template.data_dir,
                        "valid_size": template.valid_size, "repeats": 2, "compile": False, "precisions": ["auto"]}


@pytest.mark.parametrize("flags, message", [(["--model", "vit"], "argument --model: invalid choice: 'vit'"),
                                            (["--device", "mps"], "argument --device: invalid choice: 'mps'")])
def test_benchmark_refuses_a_model_or_device_it_has_no_rows_for(flags, message, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(flags)
    assert message in capsys.readouterr().err


def test_benchmark_refuses_fewer_than_one_repeat(monkeypatch):
    from tools import benchmark

    monkeypatch.setattr(tools, "fit", lambda args: pytest.fail("a run was started"))
    with pytest.raises(UserError, match=r"^--repeats must be at least 1, got 0$"):
        benchmark.main(["--device", "cpu", "--repeats", "0"])


def test_layout_benchmark_times_both_layouts_on_the_same_batches(fake_data_dir, capsys, monkeypatch):
    from tools import layout_benchmark

    monkeypatch.chdir(ROOT)
    assert layout_benchmark.main(["--device", "cpu", "--data_dir", fake_data_dir, "--batch_size", "16",
                                  "--steps", "3", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "resnet18, batch 16, cpu" in out and "3 timed steps per layout after 1 untimed, interleaved" in out
    rows = re.findall(r"^ +(contiguous|channels_last) \| +([\d.]+) \| +[\d.]+ \| +[\d.]+ \| +([\d.]+)x$", out,
                      re.MULTILINE)
    assert [name for name, _, _ in rows] == ["contiguous", "channels_last"]
    assert float(rows[0][2]) == 1.0
    assert float(rows[1][2]) == pytest.approx(float(rows[0][1]) / float(rows[1][1]), rel=0.02, abs=0.01)


def test_layout_benchmark_alternates_the_layouts_and_times_each_step_until_the_device_is_done(monkeypatch):
    from tools import layout_benchmark

    events = []

    class Step:
        def __init__(self, channels_last):
            self.name = "channels_last" if channels_last else "contiguous"

        def __call__(self, batches, item):
            events.append((self.name, item))
            self.last_loss = types.SimpleNamespace(item=lambda: events.append(f"{self.name} done"))

    def make_step(model_name, device, precision, channels_last, *rest):
        events.append(("made", model_name, precision, channels_last))
        return Step(channels_last)
    clock = iter([0.0, 0.5, 1.0, 1.25, 2.0, 2.5, 3.0, 3.125, 4.0, 4.75])
    monkeypatch.setattr(layout_benchmark, "make_step", make_step)
    monkeypatch.setattr(layout_benchmark, "time", types.SimpleNamespace(perf_counter=lambda: events.append("clock")
                                                                        or next(clock)))
    seconds = layout_benchmark.time_layouts("mlp", "BATCHES", ["a", "b", "c"], torch.device("cpu"), "bf16", warmup=1)
    order = ["contiguous", "channels_last", "channels_last", "contiguous", "contiguous", "channels_last"]
    assert events == [("made", "mlp", "bf16", False), ("made", "mlp", "bf16", True)] + [
        event for step, (name, item) in enumerate(zip(order, "aabbcc"))
        for event in ("clock", (name, item), f"{name} done", *(["clock"] if step >= 2 else []))]  # a: warm-up
    assert seconds == {"contiguous": [0.5, 0.125], "channels_last": [0.25, 0.75]}


def test_layout_benchmark_tables_each_layouts_mean_median_and_speed_against_contiguous(fake_data_dir, capsys,
                                                                                       monkeypatch):
    from tools import layout_benchmark

    calls = []

    def time_layouts(model_name, batches, plan, device, precision, warmup):
        calls.append((model_name, batches.batch_size, batches.train, len(plan), device.type, precision, warmup))
        return {"contiguous": [0.2, 0.4, 0.3], "channels_last": [0.1, 0.1, 0.4]}
    monkeypatch.setattr(layout_benchmark, "time_layouts", time_layouts)
    assert layout_benchmark.main(["--device", "cpu", "--data_dir", fake_data_dir, "--batch_size", "16", "--steps", "3",
                                  "--warmup", "1", "--model", "mlpmixer", "--precision", "bf16"]) == 0
    assert calls == [("mlpmixer", 16, True, 4, "cpu", "bf16", 1)]  # training batches, augmented as a run's are
    assert capsys.readouterr().out.splitlines()[1:] == [
        "        layout | mean s/step | median s/step | train img/s | vs contiguous",
        "    contiguous |      0.3000 |        0.3000 |        53.3 |         1.00x",
        " channels_last |      0.2000 |        0.1000 |        80.0 |         1.50x"]


def test_the_layout_benchmark_defaults_are_those_its_usage_states():
    from tools import layout_benchmark

    cli = layout_benchmark.parse_args([])
    assert (cli.model, cli.device, cli.precision, cli.batch_size, cli.steps, cli.warmup, cli.data_dir) == (
        "resnet18", "cuda", "fp32", 128, 30, 2, "./data")


@pytest.mark.parametrize("flags, message", [
    (["--batch_size", "0"], "--batch_size must be at least 1, got 0"),
    (["--steps", "0"], "--steps 0 --warmup 2: give at least 1 timed step and no negative warmup"),
    (["--warmup", "-1"], "--steps 30 --warmup -1: give at least 1 timed step and no negative warmup"),
    (["--batch_size", "64", "--steps", "2"],
     "--warmup 2 + --steps 2 exceed the 1 full batches of 64 images in an epoch; ask for fewer steps"),
])
def test_layout_benchmark_refuses_counts_it_cannot_time(flags, message, fake_data_dir, capsys):
    from tools import layout_benchmark

    with pytest.raises(UserError, match=re.escape(message)):
        layout_benchmark.main(["--device", "cpu", "--data_dir", fake_data_dir, *flags])


@pytest.mark.parametrize("batch_size, steps, warmup", [(1, 1, 0),  # the least of each
                                                       (64, 1, 0), (32, 2, 1)])  # every full batch of the epoch
def test_layout_benchmark_accepts_the_counts_it_can_time(batch_size, steps, warmup, fake_data_dir, monkeypatch):
    from tools import layout_benchmark

    planned = []
    monkeypatch.setattr(layout_benchmark, "time_layouts", lambda model_name, batches, plan, *rest: planned.append(
        (batches.batch_size, len(plan))) or {"contiguous": [0.5], "channels_last": [0.25]})
    assert layout_benchmark.main(["--device", "cpu", "--data_dir", fake_data_dir, "--batch_size", str(batch_size),
                                  "--steps", str(steps), "--warmup", str(warmup)]) == 0
    assert planned == [(batch_size, steps + warmup)]


@pytest.mark.parametrize("flag, value", [("--model", "vit"), ("--device", "mps"), ("--precision", "fp8")])
def test_layout_benchmark_refuses_a_model_device_or_precision_it_cannot_time(flag, value, capsys):
    from tools import layout_benchmark

    with pytest.raises(SystemExit) as stop:
        layout_benchmark.parse_args([flag, value])
    assert stop.value.code == 2 and f"argument {flag}: invalid choice: '{value}'" in capsys.readouterr().err


def test_layout_benchmark_steps_train_the_same_model_alike(fake_data_dir, monkeypatch):
    from tools import layout_benchmark
    from training.cifar10 import load_cifar10
    from training.pipelines import TensorBatches

    monkeypatch.chdir(ROOT)
    data = load_cifar10(fake_data_dir)
    batches = TensorBatches(data.train_images, data.train_labels, 16, torch.device("cpu"), train=True)
    plan = list(batches.plan())
    made = []
    real_make_step = layout_benchmark.make_step

    def make_step(*args, **kwargs):
        made.append(real_make_step(*args, **kwargs))
        return made[-1]
    monkeypatch.setattr(layout_benchmark, "make_step", make_step)
    seconds = layout_benchmark.time_layouts("resnet18", batches, plan[:3], torch.device("cpu"), "fp32", warmup=1)
    assert {name: len(values) for name, values in seconds.items()} == {"contiguous": 2, "channels_last": 2}
    contiguous, channels_last = made
    assert channels_last.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not contiguous.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # the same initial weights and batch give the same first loss (later steps drift apart: Adam's first
    # updates are about +-lr for any gradient, so rounding-sized differences between layouts grow)
    made.clear()
    layout_benchmark.time_layouts("resnet18", batches, plan[1:2], torch.device("cpu"), "fp32", warmup=0)
    torch.testing.assert_close(made[0].last_loss, made[1].last_loss, rtol=1e-5, atol=1e-5)
