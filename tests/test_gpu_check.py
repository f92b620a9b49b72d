"""The GPU check on a CPU: its dry run (fake data, a stand-in for graph capture) with every section, the compile
section with ``torch.compile`` on a backend that needs no C++ build, the profile, the parity table from stand-in
runs, its defaults, and its flags refused before the first section."""
import contextlib
import json
import os
import re
import sys

import pytest
import torch

from helpers import ROOT, Pipe
from tools import gpu_check
from training import steps as steps_module
from training.errors import UserError
from training.steps import GraphedTrainStep, TrainStep


def test_gpu_check_dry_run_prints_every_section(capsys, monkeypatch, tmp_path, scratch_checked):
    monkeypatch.chdir(ROOT)
    steps, make_step = [], gpu_check.make_step

    def recorded_make_step(model_name, device, precision, channels_last, graphed, seed, *args, **options):
        assert (channels_last, seed) == (False, 0)  # the MLP's layout; the same initial weights for every trace
        steps.append((model_name, precision, graphed, options.get("optimizer_name", "adamw"),
                      options.get("lr", 1e-3), options.get("schedule") is not None, options.get("mix", "none")))
        return make_step(model_name, device, precision, channels_last, graphed, seed, *args, **options)
    monkeypatch.setattr(gpu_check, "make_step", recorded_make_step)
    gpu_check.main(["--dry_run", "--models", "mlp", "--num_workers", "0", "--json_out", str(tmp_path / "parity.json"),
                    "--data_dir", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["parity.json"]  # the fake data went to a scratch folder, now removed
    # (precision, optimizer, lr, a schedule, mixing): the eager fp32, eager bf16 and captured bf16 traces, then
    # each optimizer under a schedule, each mixing, and fp16, every one eager and then captured
    traced = [("fp32", False, "adamw", 1e-3, False, "none"), ("bf16", False, "adamw", 1e-3, False, "none"),
              ("bf16", True, "adamw", 1e-3, False, "none")]
    pairs = [("bf16", optimizer, lr, True, "none") for optimizer, lr in (("sgd", 0.05), ("momentum", 0.02),
                                                                         ("adam", 1e-3), ("adamw", 1e-3))]
    pairs += [("bf16", "adamw", 1e-3, False, mix) for mix in ("mixup", "cutmix")]
    pairs += [("fp16", "adamw", 1e-3, False, "none")]
    traced += [(precision, graphed, *rest) for precision, *rest in pairs for graphed in (False, True)]
    assert steps == [("mlp", *trace) for trace in traced]
    assert re.search(r"mlp \|  captured bf16 \(default fast path\) \| +none \|", out)
    table = {row[1]: row[2:] for row in ([cell.strip() for cell in line.split(" | ")] for line in out.splitlines())
             if len(row) == 7 and row[0] == "mlp"}
    assert list(table) == ["eager fp32", "eager bf16", "captured bf16 (default fast path)"]
    assert table["eager fp32"][3] == table["eager bf16"][4] == "0.0000"  # each trace against itself
    assert table["eager fp32"][4] == table["eager bf16"][3] != "0.0000"  # fp32 against bf16, either way round
    captured = table["captured bf16 (default fast path)"]
    assert captured[1] == table["eager bf16"][1] and float(captured[4]) < float(table["eager bf16"][3])
    # each captured step against its eager twin (the fp16 one too: its row is mlp's), within the distance at which
    # bf16 alone puts the losses from fp32's: the graph reads a tensor learning rate that rounds unlike the eager
    # step's float, and how far that rounding carries depends on torch's version and threads (test_fast_path.py
    # holds the exact comparisons)
    bf16_alone = float(table["eager bf16"][3])
    for label in ("sgd", "momentum", "adam", "adamw", "mixup", "cutmix", "mlp"):
        row = re.search(rf"^ +{label} \| non-finite none \| last eager [\d.]+ captured [\d.]+ \| max \|d\| ([\d.]+)$",
                        out, re.MULTILINE)
        assert row and float(row.group(1)) < bf16_alone, (label, out)
    headers = [line for line in out.splitlines() if line.startswith("== ")]
    assert [header.split(":")[0] for header in headers] == [
        "== tracking", "== tracking the optimizers", "== tracking batch mixing",
        "== tracking fp16 with loss scaling (--precision fp16)", "== benchmark", "== parity"]
    steps = re.match(r"== tracking: first (\d+) training losses", headers[0]).group(1)  # as many as fake data has
    assert all(header.endswith(f", {steps} steps") for header in headers[1:4]), headers
    assert out.splitlines()[-1].startswith("gpu_check done in ")
    assert re.findall(r"^ +(\w+) \| +[\d.]+ \| .*x$", out, re.MULTILINE) == ["template", "fast"]  # eager: CUDA only
    assert re.search(r"^ +model \| +path \| test acc \| best valid \| train s total\n +mlp \| +fast \| ", out,
                     re.MULTILINE)
    assert re.search(r"^ +mlp \| +difference \| +[+-]\d\.\d{4}$", out, re.MULTILINE)
    assert "resnet18" not in out
    with open(tmp_path / "parity.json") as f:
        parity = json.load(f)
    assert set(parity) == {"mlp/fast", "mlp/eager fp32"} and parity["mlp/fast"]["status"] == "completed"


def test_gpu_check_traces_the_mixers_captured_step_under_each_setting_a_prototype_might_have_used(
        capsys, monkeypatch, tmp_path, scratch_checked):
    """The MLP-Mixer's rows of the tracking section (issue 3's NaN), on a tiny Mixer: the step as the fast path
    captures it, then inside a caching autocast region, with no eager warm-up, and with the warm-up's gradients
    kept; the autocast setting is restored after each."""
    tiny = {"mlpmixer": {"num_classes": 10, "img_size": 32, "patch_size": 8, "embed_dim": 16, "num_blocks": 1},
            "mlp": {"input_size": 3072, "hidden_sizes": [16, 16], "num_classes": 10}}  # its own sections follow
    (tmp_path / "model_configs").mkdir()
    for name, config in tiny.items():
        (tmp_path / "model_configs" / f"{name}.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    made, make_step, fast_paths_autocast = [], gpu_check.make_step, steps_module.autocast_context

    def recorded_make_step(model_name, device, precision, channels_last, graphed, seed, graph_options, **options):
        made.append((precision, graphed, graph_options.get("warmup_steps"), graph_options.get("step_class"),
                     steps_module.autocast_context))
        return make_step(model_name, device, precision, channels_last, graphed, seed, graph_options, **options)
    monkeypatch.setattr(gpu_check, "make_step", recorded_make_step)
    gpu_check.main(["--dry_run", "--models", "mlpmixer", "--num_workers", "0", "--sections", "tracking", "--steps",
                    "2"])
    assert steps_module.autocast_context is fast_paths_autocast
    assert made[:6] == [("fp32", False, 1, None, fast_paths_autocast), ("bf16", False, 1, None, fast_paths_autocast),
                        ("bf16", True, 1, None, fast_paths_autocast),
                        ("bf16", True, 1, None, gpu_check._caching_autocast),
                        ("bf16", True, 0, None, fast_paths_autocast),
                        ("bf16", True, 1, gpu_check.KeepWarmupGradients, fast_paths_autocast)]
    rows = [[cell.strip() for cell in line.split(" | ")] for line in capsys.readouterr().out.splitlines()]
    assert [row[1:3] for row in rows if len(row) == 7 and row[0] == "mlpmixer"] == [
        [path, "none"] for path in ("eager fp32", "eager bf16", "captured bf16 (default fast path)",
                                    "captured, caching autocast", "captured, no eager warm-up",
                                    "captured, gradients not reset")]
    region = gpu_check._caching_autocast("cpu", "bf16")  # torch 2.4's returns None on entering, not itself
    with region:
        assert torch.is_autocast_cache_enabled() and region.fast_dtype == torch.bfloat16


def test_gpu_check_parity_tables_a_diverged_run_and_still_writes_every_result(monkeypatch, tmp_path):
    runs, pipe, flushed_at_each_run = [], Pipe(), []

    def fit_or_stop(args):
        flushed_at_each_run.append(len(pipe.flushed.splitlines()))
        runs.append((args.model, args.precision, args.cuda_graph, args.epochs))
        diverged = args.model == "mlpmixer" and args.precision != "fp32"  # the captured bf16 step gave a NaN loss
        test_acc = None if diverged else 0.8125 if args.precision != "fp32" else 0.8
        return {"status": "diverged" if diverged else "completed", "test_acc": test_acc,
                "best_valid_acc": 0.25 if diverged else 0.75, "train_seconds": [1.5, 2.0]}
    monkeypatch.setattr(gpu_check, "fit_or_stop", fit_or_stop)
    cli = gpu_check.parse_args(["--models", "mlp,mlpmixer", "--parity_epochs", "3", "--json_out",
                                str(tmp_path / "parity.json")])
    monkeypatch.setattr(sys, "stdout", pipe)
    gpu_check.parity(cli, torch.device("cpu"))
    assert runs == [(model, precision, graph, 3) for model in ("mlp", "mlpmixer")
                    for precision, graph in (("auto", "auto"), ("fp32", "off"))]
    assert flushed_at_each_run == [0, 4, 6, 7]  # each row is out before the next run starts
    assert pipe.flushed.splitlines()[2:] == [
        "    model |         path | test acc | best valid | train s total",
        "      mlp |         fast |   0.8125 |     0.7500 |           3.5",
        "      mlp |   eager fp32 |   0.8000 |     0.7500 |           3.5",
        "      mlp |   difference |  +0.0125",
        " mlpmixer |         fast |        - |     0.2500 |           3.5 | diverged",
        " mlpmixer |   eager fp32 |   0.8000 |     0.7500 |           3.5",
        " mlpmixer |   difference |        - (a path was not tested)"]
    with open(tmp_path / "parity.json") as f:
        assert json.load(f)["mlpmixer/fast"]["status"] == "diverged"


def test_gpu_check_parity_compiled_compares_the_compiled_fast_path_with_eager_fp32(monkeypatch, tmp_path):
    runs = []

    def fit_or_stop(args):
        runs.append((args.precision, args.cuda_graph, args.channels_last, args.compile))
        test_acc = {(False, "auto"): 0.8125, (True, "auto"): 0.8250}.get((args.compile, args.precision), 0.8)
        return {"status": "completed", "test_acc": test_acc, "best_valid_acc": 0.75, "train_seconds": [1.0]}
    monkeypatch.setattr(gpu_check, "fit_or_stop", fit_or_stop)
    cli = gpu_check.parse_args(["--models", "resnet18", "--parity_compiled", "--json_out",
                                str(tmp_path / "parity.json")])
    pipe = Pipe()
    monkeypatch.setattr(sys, "stdout", pipe)
    gpu_check.parity(cli, torch.device("cpu"))
    assert runs == [("auto", "auto", "auto", False), ("fp32", "off", "off", False), ("auto", "auto", "auto", True)]
    lines = pipe.flushed.splitlines()
    assert lines[1].endswith("(AdamW 1e-3, wd 5e-4, constant lr), the fast path also with --compile")
    assert lines[3:] == [
        " resnet18 |         fast |   0.8125 |     0.7500 |           1.0",
        " resnet18 |   eager fp32 |   0.8000 |     0.7500 |           1.0",
        " resnet18 |   difference |  +0.0125",
        " resnet18 |     compiled |   0.8250 |     0.7500 |           1.0",
        " resnet18 |   difference |  +0.0250"]
    with open(tmp_path / "parity.json") as f:
        assert sorted(json.load(f)) == ["resnet18/compiled", "resnet18/eager fp32", "resnet18/fast"]


def test_gpu_check_parity_compiled_trains_the_compiled_model(capsys, quick_compile, tmp_path):
    gpu_check.main(["--dry_run", "--models", "mlp", "--num_workers", "0", "--sections", "parity",
                    "--parity_compiled", "--json_out", str(tmp_path / "parity.json")])
    assert quick_compile == ["MLP"]  # the compiled row's run alone
    assert re.findall(r"^ +mlp \| +(\w[\w ]*\w) \| ", capsys.readouterr().out, re.MULTILINE) == [
        "fast", "eager fp32", "difference", "compiled", "difference"]
    with open(tmp_path / "parity.json") as f:
        results = json.load(f)
    assert results["mlp/compiled"]["args"]["compile"] and not results["mlp/fast"]["args"]["compile"]


def test_the_gpu_check_defaults_are_those_its_docs_state():
    cli = gpu_check.parse_args([])  # 50 tracked losses, 15-epoch parity, the template's 4 workers (README, issue 3)
    assert (cli.data_dir, cli.sections, cli.steps, cli.models, cli.bench_epochs, cli.parity_epochs, cli.num_workers,
            cli.valid_size, cli.json_out, cli.rows, cli.profile_compiled, cli.parity_compiled, cli.dry_run) == (
        "./data", "tracking,benchmark,parity", 50, "mlp,resnet18,mlpmixer", 2, 15, 4, 5000, None, 15, False, False,
        False)


def test_gpu_check_compile_section_compares_the_compiled_step(capsys, quick_compile):
    gpu_check.main(["--dry_run", "--models", "mlp", "--num_workers", "0", "--sections", "compile"])
    out = capsys.readouterr().out
    match = re.search(r"^ +mlp \| non-finite none \| last [\d.]+ vs compiled [\d.]+ \| max \|d\| ([\d.]+) \|", out,
                      re.MULTILINE)
    assert match and float(match.group(1)) < 1e-3
    assert re.search(r"^ +compiled \| +[\d.]+ \| .*x$", out, re.MULTILINE)
    assert quick_compile == ["MLP", "MLP"]  # the tracking trace, then the benchmark's run


def test_gpu_check_profile_times_each_step_and_tables_the_eager_ones(capsys, quick_compile):
    gpu_check.main(["--dry_run", "--models", "mlp", "--num_workers", "0", "--sections", "profile",
                    "--profile_compiled", "--rows", "3"])
    out = capsys.readouterr().out
    for label in ("eager", "compiled eager"):
        assert re.search(rf"^ +mlp \| +{label} \| +[\d.]+ \| +[\d.]+$", out, re.MULTILINE)
        assert re.search(rf"^mlp, {label} step: top 3 by CPU time over \d+ steps$", out, re.MULTILINE)
    for label in ("captured", "compiled captured"):
        assert re.search(rf"^ +mlp \| +{label} \| +[\d.]+ \| +$", out, re.MULTILINE)
    assert "aten::mm" in out  # the MLP's matrix products are among its top operators
    assert quick_compile == ["MLP", "MLP"]
    assert re.search(r"^== profile: ms per training step \(bf16, batch 128\), mean of (\d+) steps after \d+ warm-up "
                     r"steps\n +model \| +step \| +wall ms \| kernel ms$", out, re.MULTILINE)
    steps = int(re.search(r"mean of (\d+) steps", out).group(1))
    for label in ("eager", "compiled eager"):
        wall_ms, kernel_ms = map(float, re.search(rf"^ +mlp \| +{label} \| +([\d.]+) \| +([\d.]+)$", out,
                                                  re.MULTILINE).groups())
        assert wall_ms > 0.1  # milliseconds: a step of the MLP on batches of 128 takes far longer
        table = out.split(f"\nmlp, {label} step: top 3 by CPU time over {steps} steps\n")[1].split("\n\n")[0]
        lines = table.splitlines()
        separators = [i for i, line in enumerate(lines) if line.startswith("---")]
        assert separators[2] - separators[1] - 1 == 3  # --rows 3
        total, unit = re.search(r"^Self CPU time total: ([\d.]+)(us|ms|s)$", table, re.MULTILINE).groups()
        assert kernel_ms == pytest.approx(float(total) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit] / steps, rel=1e-3)


def test_each_trace_gets_the_model_layout_optimizer_schedule_mixing_and_capture_it_names(quick_compile):
    """What a section compares is what its line says it compares: a lost option would compare two identical
    steps and show no difference."""
    def schedule(step):
        return 0.5
    eager = gpu_check.make_step("mlpmixer", "cpu", "bf16", True, False, 0, {}, optimizer_name="momentum", lr=0.02,
                                schedule=schedule, mix="cutmix")
    assert type(eager) is TrainStep and type(eager.model).__name__ == "MLPMixer" and eager.model.training
    assert (eager.precision, eager.memory_format, eager.schedule, eager.mix, eager.compiled_model) == (
        "bf16", torch.channels_last, schedule, "cutmix", None)
    kernel = next(weight for weight in eager.model.parameters() if weight.dim() == 4)  # the patch embedding's
    assert kernel.is_contiguous(memory_format=torch.channels_last) and not kernel.is_contiguous()
    group = eager.optimizer.param_groups[0]
    assert (type(eager.optimizer), group["lr"], group["momentum"]) == (torch.optim.SGD, 0.02, 0.9)
    stand_in = {"capture": lambda run: run, "eager_context": contextlib.nullcontext, "warmup_steps": 1}
    captured = gpu_check.make_step("mlpmixer", "cpu", "bf16", True, True, 0, stand_in, compiled=True)
    assert type(captured) is GraphedTrainStep and captured.compiled_model is not None
    assert quick_compile == ["MLPMixer"]
    assert type(captured.optimizer) is torch.optim.AdamW and captured.optimizer.param_groups[0]["capturable"]
    weights = [gpu_check.make_step("mlpmixer", "cpu", "bf16", False, False, seed, {}).model.state_dict()
               for seed in (0, 1)]
    for name, weight in eager.model.state_dict().items():  # every trace starts from the weights of its seed
        assert torch.equal(weights[0][name], weight), name
    assert not all(torch.equal(weights[1][name], weight) for name, weight in weights[0].items())
    assert gpu_check.make_step("mlpmixer", "cpu", "fp32", False, False, 0, {}).memory_format == torch.contiguous_format


@pytest.mark.parametrize("model", gpu_check.MODELS)
def test_the_gpu_checks_layout_for_each_model_is_the_one_the_runner_chooses(model, monkeypatch):
    """On a CPU and on a GPU with native bf16 (stood in for), the kind of GPU the check is for."""
    from config import get_config_parser
    from training import devices

    monkeypatch.setattr(devices, "has_native_bf16", lambda device: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # the runner sets it
    for device in ("cpu", "cuda"):
        args = get_config_parser().parse_args(["--model", model])
        devices.resolve_fast_path(args, torch.device(device))
        assert args.channels_last == gpu_check.default_channels_last(model), device


def test_first_nonfinite_names_the_first_bad_step():
    assert gpu_check.first_nonfinite(torch.tensor([2.3, 2.1, 1.9])) == "none"
    assert gpu_check.first_nonfinite(torch.tensor([2.3, 2.1, float("inf"), float("nan")])) == "step 3"


@pytest.mark.parametrize("flags, message", [
    (["--models", "mlp,vit"], "--models: unknown vit; choose from mlp, resnet18, mlpmixer"),
    (["--sections", "tracking,compiled"], "--sections: unknown compiled; choose from tracking, benchmark, parity, "
                                          "compile, profile"),
    (["--sections", "tracking,"], '--sections: unknown ""; choose from tracking, benchmark, parity, compile, profile'),
    (["--json_out", "no/such/folder/parity.json"], "--json_out no/such/folder/parity.json: its folder does not exist"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--bench_epochs", "0"], "--bench_epochs must be at least 1, got 0"),
    (["--parity_epochs", "-1"], "--parity_epochs must be at least 1, got -1"),
    (["--rows", "0"], "--rows must be at least 1, got 0"),
    (["--valid_size", "0"], "--valid_size must be at least 1, got 0"),
    (["--num_workers", "-1"], "--num_workers must not be negative, got -1"),
])
def test_gpu_check_refuses_bad_flags_before_it_runs(flags, message):
    with pytest.raises(UserError) as refused:
        gpu_check.main(["--dry_run", *flags])
    assert str(refused.value).startswith(message)


def test_gpu_check_accepts_the_least_counts():
    cli = gpu_check.parse_args(["--steps", "1", "--bench_epochs", "1", "--parity_epochs", "1", "--rows", "1",
                                "--valid_size", "1", "--num_workers", "0", "--models", "mlpmixer", "--sections",
                                "profile"])
    assert (cli.steps, cli.bench_epochs, cli.parity_epochs, cli.rows, cli.valid_size, cli.num_workers) == (
        1, 1, 1, 1, 1, 0)


def test_gpu_check_refuses_a_json_out_that_is_a_folder_before_it_runs(tmp_path):
    with pytest.raises(UserError) as refused:
        gpu_check.main(["--dry_run", "--json_out", str(tmp_path)])
    assert str(refused.value) == (f"--json_out {tmp_path} is a folder; give a file path, such as "
                                  f"{tmp_path / 'parity.json'}")
