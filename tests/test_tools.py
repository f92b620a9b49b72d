"""The device-run scripts on the CPU: the GPU check's dry run (fake data, a stand-in for graph capture),
the benchmark, with ``torch.compile`` on a backend that needs no C++ build, the layout benchmark, the dry runs
of the study timer and the target check, the refusals of the GPU-only tools on a machine without CUDA, and the
device call's choice of steps."""
import importlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import types
import warnings

import pytest
import torch

from test_fast_path import TEST_BACKEND
import tools
from tools import benchmark, gpu_check
from training import errors
from training.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Pipe(io.StringIO):
    """Standard output as `tee` in the device call reads it: only what was flushed, the rest lost if a time limit
    kills the tool."""
    flushed = ""

    def flush(self):
        self.flushed = self.getvalue()


@pytest.fixture(autouse=True)
def command_line_state():
    """``run_cli`` sets up its process as a command (one-line warnings, SIGTERM as Ctrl-C); pytest's is put back."""
    sigterm, formatwarning = signal.getsignal(signal.SIGTERM), warnings.formatwarning
    yield
    signal.signal(signal.SIGTERM, sigterm)
    warnings.formatwarning = formatwarning


@pytest.fixture
def scratch_checked(tmp_path_factory, monkeypatch):
    """Temporary files go to a folder of their own, which must be empty again when the test ends: a dry run
    removes the fake data and logs it made (torch's own compile cache may stay)."""
    scratch = tmp_path_factory.mktemp("scratch")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield
    assert [name for name in os.listdir(scratch) if not name.startswith("torchinductor_")] == []


@pytest.fixture
def quick_compile(monkeypatch):
    """``torch.compile`` on the tests' backend (``test_fast_path.TEST_BACKEND``: no C++ build)."""
    real_compile, calls = torch.compile, []

    def compile_without_cpp_build(model, **options):
        calls.append(type(model).__name__)
        return real_compile(model, backend=TEST_BACKEND, **options)
    monkeypatch.setattr(torch, "compile", compile_without_cpp_build)
    monkeypatch.chdir(ROOT)
    return calls


def test_gpu_check_dry_run_prints_every_section(capsys, monkeypatch, tmp_path, scratch_checked):
    monkeypatch.chdir(ROOT)
    gpu_check.main(["--dry_run", "--models", "mlp", "--num_workers", "0", "--json_out", str(tmp_path / "parity.json")])
    out = capsys.readouterr().out
    assert re.search(r"mlp \|  captured bf16 \(default fast path\) \| +none \|", out)
    assert re.search(r"^ +adamw \| non-finite none \|", out, re.MULTILINE)
    tracks_to_4_decimals = r" \| non-finite none \| last eager [\d.]+ captured [\d.]+ \| max \|d\| 0\.0000$"
    assert re.search(r"^ +cutmix" + tracks_to_4_decimals, out, re.MULTILINE)
    assert re.search(r"^ +mlp" + tracks_to_4_decimals, out, re.MULTILINE)  # fp16 with its loss scaler
    assert re.search(r"^ +fast \| +[\d.]+ \| .*x$", out, re.MULTILINE)
    assert re.search(r"^ +mlp \| +difference \| +[+-]\d\.\d{4}$", out, re.MULTILINE)
    assert "resnet18" not in out
    with open(tmp_path / "parity.json") as f:
        parity = json.load(f)
    assert set(parity) == {"mlp/fast", "mlp/eager fp32"} and parity["mlp/fast"]["status"] == "completed"


def test_gpu_check_parity_tables_a_diverged_run_and_still_writes_every_result(monkeypatch, tmp_path):
    runs, pipe, flushed_at_each_run = [], Pipe(), []

    def fit_or_stop(args):
        flushed_at_each_run.append(len(pipe.flushed.splitlines()))
        runs.append((args.model, args.precision, args.cuda_graph, args.epochs))
        diverged = args.model == "mlpmixer" and args.precision != "fp32"  # the captured bf16 step gave a NaN loss
        return {"status": "diverged" if diverged else "completed", "test_acc": None if diverged else 0.8125,
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
        "      mlp |   eager fp32 |   0.8125 |     0.7500 |           3.5",
        "      mlp |   difference |  +0.0000",
        " mlpmixer |         fast |        - |     0.2500 |           3.5 | diverged",
        " mlpmixer |   eager fp32 |   0.8125 |     0.7500 |           3.5",
        " mlpmixer |   difference |        - (a path was not tested)"]
    with open(tmp_path / "parity.json") as f:
        assert json.load(f)["mlpmixer/fast"]["status"] == "diverged"


def test_the_gpu_check_defaults_are_those_its_docs_state():
    cli = gpu_check.parse_args([])  # 50 tracked losses, 15-epoch parity, the template's 4 workers (README, issue 3)
    assert (cli.data_dir, cli.sections, cli.steps, cli.models, cli.bench_epochs, cli.parity_epochs, cli.num_workers,
            cli.valid_size, cli.json_out, cli.rows, cli.profile_compiled, cli.dry_run) == (
        "./data", "tracking,benchmark,parity", 50, "mlp,resnet18,mlpmixer", 2, 15, 4, 5000, None, 15, False, False)


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


def test_first_nonfinite_names_the_first_bad_step():
    assert gpu_check.first_nonfinite(torch.tensor([2.3, 2.1, 1.9])) == "none"
    assert gpu_check.first_nonfinite(torch.tensor([2.3, 2.1, float("inf"), float("nan")])) == "step 3"


@pytest.mark.parametrize("flags, message", [
    (["--models", "mlp,vit"], "--models: unknown vit; choose from mlp, resnet18, mlpmixer"),
    (["--sections", "tracking,compiled"], "--sections: unknown compiled; choose from tracking, benchmark, parity, "
                                          "compile, profile"),
    (["--json_out", "no/such/folder/parity.json"], "--json_out no/such/folder/parity.json: its folder does not exist"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--bench_epochs", "0"], "--bench_epochs must be at least 1, got 0"),
    (["--parity_epochs", "-1"], "--parity_epochs must be at least 1, got -1"),
    (["--rows", "0"], "--rows must be at least 1, got 0"),
    (["--valid_size", "0"], "--valid_size must be at least 1, got 0"),
    (["--num_workers", "-1"], "--num_workers must not be negative, got -1"),
])
def test_gpu_check_refuses_bad_flags_before_it_runs(capsys, flags, message):
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry_run", *flags])
    assert message in capsys.readouterr().err


def test_gpu_check_refuses_a_json_out_that_is_a_folder_before_it_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry_run", "--json_out", str(tmp_path)])
    assert capsys.readouterr().err.endswith(f"error: --json_out {tmp_path} is a folder; give a file path, such as "
                                            f"{tmp_path / 'parity.json'}\n")


def test_benchmark_prints_each_path_with_its_ratio(fake_data_dir, capsys, quick_compile):
    benchmark.main(["--device", "cpu", "--data_dir", fake_data_dir, "--repeats", "1", "--num_workers", "0",
                    "--valid_size", "20", "--compile"])
    out = capsys.readouterr().out
    for row in ("template", "fast", "compiled"):
        assert re.search(rf"^ +{row} \| +[\d.]+ \| +[\d.]+ \| +[\d.]+ \| +\d+ \| +[\d.]+x$", out, re.MULTILINE)
    assert "eager" not in out  # the eager GPU path is a CUDA row


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
                "epochs_completed": 2}
    monkeypatch.setattr(tools, "fit", fit)
    benchmark.main(["--device", "cpu", "--repeats", "2", "--precisions", "fp32", "bf16", "--epochs", "2",
                    "--batch_size", "64", "--valid_size", "100", "--num_workers", "3"])
    template = ("torchvision", "fp32", "off", "off", 2, 64, 100, 3)
    fast = ("tensor", "fp32", "auto", "auto", 2, 64, 100, 3)
    assert seen == [template, fast, ("tensor", "bf16", *fast[2:])] * 2  # the repeats interleaved
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "mlp, batch 64, a stand-in, last of 2 epoch(s), fastest of 2, template pipeline with 3 workers"
    rows = [[cell.strip() for cell in line.split("|")] for line in out[2:]]
    assert rows == [["template", "7.00", "1.00", "8.00", "143", "1.00x"],
                    ["fast fp32", "1.50", "0.50", "2.00", "667", "4.00x"],
                    ["fast bf16", "0.75", "0.25", "1.00", "1333", "8.00x"]]


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


def test_a_tool_given_bad_input_prints_one_line_and_exits_2(tmp_path, capsys):
    from tools import run_cli

    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: benchmark.main(["--device", "cpu", "--data_dir", str(tmp_path / "a_file")]))
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: --data_dir {tmp_path / 'a_file'} is a file, not a folder")


def test_each_tool_run_as_a_command_refuses_a_bad_count_with_exit_2():
    """``python -m tools.X``: each module's ``__main__`` runs its ``main`` as a command (the benchmark's is run by
    the warning test below). Counts that are refused the same with or without CUDA."""
    commands = {"time_studies": (["--workers", "0"], "error: --workers must be at least 1, got 0"),
                "check_targets": (["--seeds", "0"], "error: --seeds must be at least 1, got 0"),
                "layout_benchmark": (["--device", "cpu", "--batch_size", "0"],
                                     "error: --batch_size must be at least 1, got 0"),
                "gpu_check": (["--steps", "0"], "python -m tools.gpu_check: error: --steps must be at least 1, got 0")}
    started = {tool: subprocess.Popen([sys.executable, "-m", f"tools.{tool}", *argv], cwd=ROOT, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for tool, (argv, _) in commands.items()}  # side by side: each spends seconds importing torch
    for tool, process in started.items():
        out, err = process.communicate(timeout=120)
        assert (process.returncode, out, err.splitlines()[-1]) == (2, "", commands[tool][1]), err


@pytest.mark.parametrize("tool", ["benchmark", "check_targets", "gpu_check", "layout_benchmark", "time_studies"])
def test_a_tools_usage_names_the_command_that_runs_it(tool, capsys):
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(f"tools.{tool}").parse_args(["--help"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith(f"usage: python -m tools.{tool} [-h]")


def test_a_tool_prints_a_warning_as_one_line(fake_data_dir):
    command = [sys.executable, "-m", "tools.benchmark", "--device", "cpu", "--data_dir", fake_data_dir, "--repeats",
               "1", "--num_workers", "0", "--valid_size", "20", "--precisions", "fp16"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ("warning: --precision fp16 is for CUDA GPUs: a CPU usually emulates fp16, much slower "
                           "than fp32\n")


@pytest.mark.parametrize("tool, argv", [
    ("benchmark", ["--device", "cpu", "--repeats", "2", "--precisions", "fp32", "bf16"]),
    ("check_targets", ["--dry_run", "--seeds", "2"]),
    ("gpu_check", ["--dry_run", "--sections", "parity", "--parity_epochs", "1"]),
])
def test_a_tool_stops_at_the_first_run_that_ctrl_c_or_sigterm_interrupted(tool, argv, capsys, monkeypatch,
                                                                          scratch_checked):
    runs = []

    def interrupted_fit(args):
        assert signal.getsignal(signal.SIGTERM) is errors._raise_interrupt  # a SIGTERM interrupts as Ctrl-C does
        assert warnings.formatwarning is errors._one_line_warning
        runs.append(args.model)
        return {"status": "interrupted"}
    monkeypatch.setattr(tools, "fit", interrupted_fit)
    with pytest.raises(SystemExit) as stop:
        tools.run_cli(lambda: importlib.import_module(f"tools.{tool}").main(argv))
    assert stop.value.code == 130 and len(runs) == 1
    assert capsys.readouterr().err.endswith("\ninterrupted\n")


@pytest.mark.parametrize("code", [130, 2])  # interrupted; an input refused in one line, nothing trained
def test_the_study_timer_stops_at_a_study_that_was_interrupted_or_refused(code, capsys, monkeypatch,
                                                                          scratch_checked):
    from tools import time_studies

    studies = []
    monkeypatch.setattr(time_studies, "studies_main", lambda argv: studies.append(argv[1]) or code)
    with pytest.raises(SystemExit) as stop:
        tools.run_cli(lambda: time_studies.main(["--dry_run"]))
    assert stop.value.code == code and studies == ["mlp_activation"]
    assert "took" not in capsys.readouterr().out  # no time is given for a study cut short or never run


@pytest.fixture
def stand_in_studies(monkeypatch):
    """The study timer with stand-ins: studies that log known seconds, a clock and a CUDA that record each call
    in ``events``, and a study exit code that a test may set (``codes``)."""
    from tools import time_studies

    events, codes = [], {}
    logged = {"mlp_activation": [{"train_seconds": [1.0, 2.0], "valid_seconds": [0.5]}, {"train_seconds": [3.0]}, {}],
              "resnet18_lr": [{"train_seconds": [4.0], "valid_seconds": [1.0, 1.5]}],
              "mlpmixer_patch": [{"train_seconds": [2.25], "valid_seconds": [0.25]}]}
    ticks = iter([0.0, 10.0, 10.0, 30.5, 30.5, 70.0])

    def studies_main(argv):
        events.append(argv)
        return codes.get(argv[1], 0)
    monkeypatch.setattr(time_studies, "studies_main", studies_main)
    monkeypatch.setattr(time_studies, "load_runs", lambda study_dir: [{"results": results} for results in
                                                                      logged[os.path.basename(study_dir)]])
    monkeypatch.setattr(time_studies, "time", types.SimpleNamespace(perf_counter=lambda: events.append("clock")
                                                                    or next(ticks)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: events.append("synchronize"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Stand-in GPU")
    return time_studies, events, codes


@pytest.mark.parametrize("workers, dry_run, device", [(1, False, "Stand-in GPU"), (2, False, "Stand-in GPU"),
                                                      (1, True, "cpu")])  # a dry run trains on the CPU
def test_the_study_timer_times_each_study_after_a_synchronize_and_sums_what_its_runs_logged(workers, dry_run, device,
                                                                                         capsys, stand_in_studies):
    time_studies, events, _ = stand_in_studies
    flags = {"mlp_activation": ["--a"], "resnet18_lr": [], "mlpmixer_patch": ["--b", "c"]}
    cli = time_studies.parse_args(["--workers", str(workers), *(["--dry_run"] if dry_run else [])])
    assert time_studies.time_studies(cli, "OUT", flags, ["--common"]) == 0
    runs = [["run", name, "--out", "OUT", "--workers", str(workers), "--common", *flags[name]] for name in flags]
    assert events == [step for run in runs for step in ("synchronize", "clock", run, "synchronize", "clock")] + [
        ["report", "--out", "OUT"]]
    out = capsys.readouterr().out
    assert ("time_studies: mlp_activation took 10.0 s (its runs logged 6.0 s of training and 0.5 s of validation), "
            "10.0 s so far\n") in out
    assert "time_studies: mlpmixer_patch took 39.5 s (its runs logged 2.2 s of training and 0.2 s of validation), " \
           "70.0 s so far\n" in out
    rest = {1: ["3.5", "14.0", "37.0", "54.5"], 2: ["-"] * 4}[workers]  # overlapping workers leave no rest
    assert out.endswith(f"\nstudies 1-3 on {device}, {workers} worker(s) per study:\n"
                        f"  study              wall s  train s  valid s   rest s\n"
                        f"  mlp_activation       10.0      6.0      0.5 {rest[0]:>8}\n"
                        f"  resnet18_lr          20.5      4.0      2.5 {rest[1]:>8}\n"
                        f"  mlpmixer_patch       39.5      2.2      0.2 {rest[2]:>8}\n"
                        f"  total                70.0     12.2      3.2 {rest[3]:>8}\n"
                        "  target: a total wall time under 240 s\n")


def test_the_study_timer_flushes_each_studys_time_before_the_next_study_starts(stand_in_studies, monkeypatch):
    time_studies, _, _ = stand_in_studies
    pipe, flushed_at_each_start = Pipe(), []
    studies_main = time_studies.studies_main
    monkeypatch.setattr(sys, "stdout", pipe)
    monkeypatch.setattr(time_studies, "studies_main",
                        lambda argv: flushed_at_each_start.append(pipe.flushed.count(" took ")) or studies_main(argv))
    time_studies.time_studies(time_studies.parse_args([]), "OUT", {name: [] for name in time_studies.GRID_STUDIES}, [])
    assert flushed_at_each_start == [0, 1, 2, 3]  # three studies, then the report


def test_the_study_timer_gives_the_time_of_a_study_whose_worker_failed_then_stops(capsys, stand_in_studies):
    time_studies, events, codes = stand_in_studies
    codes["resnet18_lr"] = 1  # a worker process that crashed
    with pytest.raises(SystemExit, match="^error: study resnet18_lr exited with 1$"):
        time_studies.time_studies(time_studies.parse_args([]), "OUT", {name: [] for name in time_studies.GRID_STUDIES},
                                  [])
    assert [event[1] for event in events if isinstance(event, list)] == ["mlp_activation", "resnet18_lr"]
    assert capsys.readouterr().out.splitlines()[-1].startswith("time_studies: resnet18_lr took 20.5 s")


def test_the_study_timer_defaults_are_those_its_usage_states():
    from tools import time_studies

    cli = time_studies.parse_args([])
    assert (cli.data_dir, cli.out, cli.workers, cli.dry_run) == ("./data", None, 1, False)


def test_time_studies_dry_run_times_studies_one_to_three(capsys, scratch_checked):
    from tools import time_studies

    assert time_studies.main(["--dry_run"]) == 0
    out = capsys.readouterr().out
    rows = {name: [float(value) for value in values.split()] for name, values in
            re.findall(r"^  (mlp_activation|resnet18_lr|mlpmixer_patch|total) +([\d. -]+)$", out, re.MULTILINE)}
    assert set(rows) == {"mlp_activation", "resnet18_lr", "mlpmixer_patch", "total"}
    for wall, train, valid, rest in rows.values():
        assert wall > 0 and abs(wall - train - valid - rest) < 0.15  # each rounded to 0.1 s
    assert rows["total"][1] > 0 and rows["total"][2] > 0  # the runs' logged seconds were found
    assert [sum(column) for column in zip(*(rows[name] for name in rows if name != "total"))] == pytest.approx(
        rows["total"], abs=0.2)
    assert re.search(r"^time_studies: resnet18_lr took \d+\.\d s \(its runs logged \d+\.\d s of training and "
                     r"\d+\.\d s of validation\), \d+\.\d s so far$", out, re.MULTILINE)


def test_check_targets_dry_run_prints_a_verdict_per_model(capsys, scratch_checked):
    from tools import check_targets

    assert check_targets.main(["--dry_run", "--epochs", "2"]) == 0  # a main.py flag overrides the recipe's
    out = capsys.readouterr().out
    assert re.search(r"^resnet18 +42 +2 +[\d.]+ +[\d.]+ +[\d.]+  >= 93% in <= 60 s +(met|missed)$", out,
                     re.MULTILINE)
    assert re.search(r"^mlpmixer +42 +2 .*>= 87% in <= 300 s +(met|missed)$", out, re.MULTILINE)
    # by default one run per model, the quicker ResNet18 first, and no mean over seeds
    assert re.findall(r"^(\w+) +\d+ +2 ", out, re.MULTILINE) == ["resnet18", "mlpmixer"] and " over " not in out
    with pytest.raises(SystemExit):
        check_targets.main(["--dry_run", "--no_such_flag"])
    assert "unrecognized arguments: --no_such_flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check_targets.main(["--dry_run", "--models", "vit"])
    assert "argument --models: invalid choice: 'vit'" in capsys.readouterr().err


def test_check_targets_judges_several_seeds_on_their_mean(capsys, scratch_checked):
    from tools import check_targets

    assert check_targets.main(["--dry_run", "--models", "mlpmixer", "--seeds", "2", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    runs = re.findall(r"^mlpmixer +(\d+) +1 +[\d.]+ +[\d.]+ +([\d.]+)  ", out, re.MULTILINE)
    assert [seed for seed, _ in runs] == ["7", "8"]
    accs = [float(acc) for _, acc in runs]
    mean = re.search(r"^mlpmixer over 2 seeds: test accuracy ([\d.]+) ± ([\d.]+) \(2 of 2 runs completed\), longest "
                     r"training [\d.]+ s; target >= 87% in <= 300 s: (met|missed)$", out, re.MULTILINE)
    assert mean and float(mean.group(1)) == pytest.approx(sum(accs) / 2, abs=1e-4)
    assert mean.group(3) == ("met" if sum(accs) / 2 >= 0.87 else "missed")
    with pytest.raises(UserError, match="--seeds must be at least 1, got 0"):
        check_targets.main(["--dry_run", "--seeds", "0"])


def test_check_targets_meets_a_target_only_with_the_accuracy_in_the_time_and_a_completed_run(capsys, monkeypatch,
                                                                                              scratch_checked):
    from tools import check_targets

    outcomes = {42: ("completed", 0.93, [30.0, 30.0]),  # both bounds reached exactly: met
                43: ("completed", 0.95, [30.0, 30.5]),  # half a second over the budget
                44: ("completed", 0.9299, [20.0]),
                45: ("diverged", None, [10.0]),
                46: ("completed", 0.97, [15.0])}

    def fit(args):
        status, test_acc, seconds = outcomes[args.seed]
        return {"status": status, "test_acc": test_acc, "train_seconds": seconds, "epochs_completed": len(seconds),
                "device_name": "a stand-in"}
    monkeypatch.setattr(tools, "fit", fit)
    clock = iter(range(0, 1000, 4))  # each run's wall time, taken around its fit, is 4 s
    monkeypatch.setattr(check_targets, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))

    def verdicts(seed, seeds):
        argv = ["--dry_run", "--models", "resnet18", "--seed", str(seed), "--seeds", str(seeds)]
        assert check_targets.main(argv) == 0
        out = capsys.readouterr().out
        rows = re.findall(r"^resnet18 +(\d+) +\d+ +([\d.]+) +4\.0 +([\d.na]+)  >= 93% in <= 60 s +(.+)$", out,
                          re.MULTILINE)
        return [(int(seed), float(train_s), test_acc, verdict) for seed, train_s, test_acc, verdict in rows], out
    rows, out = verdicts(42, 5)
    assert rows == [(42, 60.0, "0.9300", "met"), (43, 60.5, "0.9500", "missed"), (44, 20.0, "0.9299", "missed"),
                    (45, 10.0, "nan", "missed (diverged)"), (46, 15.0, "0.9700", "met")]
    assert re.search(r"^resnet18 over 5 seeds: test accuracy 0\.9450 ± 0\.0192 \(4 of 5 runs completed\), longest "
                     r"training 60\.5 s; target >= 93% in <= 60 s: missed$", out, re.MULTILINE)
    _, out = verdicts(43, 2)  # a mean above the target, but one run over the budget
    assert out.rstrip().endswith("longest training 60.5 s; target >= 93% in <= 60 s: missed")
    _, out = verdicts(45, 2)  # a mean above the target, but one run did not complete
    assert out.rstrip().endswith("(1 of 2 runs completed), longest training 15.0 s; target >= 93% in <= 60 s: missed")
    outcomes[47] = ("completed", 0.9201, [40.0])
    _, out = verdicts(46, 2)  # every run completed in time, the mean 0.94505
    assert out.rstrip().endswith("test accuracy 0.9450 ± 0.0353 (2 of 2 runs completed), longest training 40.0 s; "
                                 "target >= 93% in <= 60 s: met")
    outcomes[47] = ("completed", 0.8899, [40.0])
    _, out = verdicts(46, 2)  # the mean 0.92995, which 4 decimals would show as 0.9300
    assert out.rstrip().endswith("test accuracy 0.92995 ± 0.0566 (2 of 2 runs completed), longest training 40.0 s; "
                                 "target >= 93% in <= 60 s: missed")
    outcomes[43] = ("completed", 0.93, [59.0, 1.0])
    _, out = verdicts(42, 2)  # the mean and the longest run exactly at their bounds
    assert out.rstrip().endswith("test accuracy 0.9300 ± 0.0000 (2 of 2 runs completed), longest training 60.0 s; "
                                 "target >= 93% in <= 60 s: met")


@pytest.mark.parametrize("flags, message", [
    (["--logdir", "runs/mine"], "--logdir: each run gets a new folder, so that no seed's run writes over another's"),
    (["--model", "mlp"], "--model: the script trains each recipe's own model (choose them with --models)"),
    (["--model_config", "model_configs/mlpmixer.json"], "--model_config: each recipe has its own model config"),
    (["--resume"], "--resume: each run starts afresh in a new folder"),
])
def test_check_targets_refuses_the_flags_it_sets_for_each_run(flags, message, monkeypatch):
    from tools import check_targets

    monkeypatch.setattr(tools, "fit", lambda args: pytest.fail("a run was started"))
    with pytest.raises(UserError, match=re.escape(message) + ".*; remove it$"):
        check_targets.main(["--dry_run", "--seeds", "2", *flags])


def test_check_targets_refuses_seeds_past_numpys_largest(monkeypatch, capsys, scratch_checked):
    from tools import check_targets

    seeds = []
    monkeypatch.setattr(tools, "fit", lambda args: seeds.append(args.seed) or {
        "status": "completed", "test_acc": 0.5, "train_seconds": [1.0], "epochs_completed": 1, "device_name": "cpu"})
    with pytest.raises(UserError, match=re.escape("--seeds 2 from --seed 4294967295 passes numpy's largest seed "
                                                  "(4294967295); lower --seed")):
        check_targets.main(["--dry_run", "--models", "resnet18", "--seed", "4294967295", "--seeds", "2"])
    assert seeds == []
    assert check_targets.main(["--dry_run", "--models", "resnet18", "--seed", "4294967294", "--seeds", "2"]) == 0
    assert seeds == [4294967294, 4294967295]


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


@pytest.mark.parametrize("tool, argv, message", [
    ("benchmark", [], "--device cuda: CUDA is not available here; use --device cpu"),
    ("layout_benchmark", [], "--device cuda: CUDA is not available here; use --device cpu"),
    ("gpu_check", [], "tools.gpu_check needs CUDA (or --dry_run to check the script on a CPU)"),
    ("check_targets", [], "tools.check_targets measures GPU targets and needs CUDA (or --dry_run)"),
    ("time_studies", [], "tools.time_studies measures the GPU target and needs CUDA (or --dry_run)"),
    ("time_studies", ["--out", "EXISTING"], "--out EXISTING exists; give a new --out so that every run trains from "
                                            "scratch"),
    ("time_studies", ["--dry_run", "--workers", "0"], "--workers must be at least 1, got 0"),
])
def test_a_gpu_tool_refuses_with_one_line_and_exit_2(tool, argv, message, tmp_path, capsys, monkeypatch):
    from tools import run_cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [str(tmp_path) if flag == "EXISTING" else flag for flag in argv]
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: importlib.import_module(f"tools.{tool}").main(argv))
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: {message.replace('EXISTING', str(tmp_path))}\n"
    assert os.listdir(tmp_path) == []


def test_a_tool_refuses_a_torch_older_than_the_oldest_tested(capsys, monkeypatch):
    from tools import run_cli

    monkeypatch.setattr(torch, "__version__", "2.3.1")
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: pytest.fail("the tool ran"))
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: torch 2.3.1 is older than 2.4, the oldest release")


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


def _device_call(folder, steps):
    """``bash tools/device_check.sh STEPS`` in ``folder``, with a ``python`` that logs its arguments."""
    os.makedirs(folder / "tools")
    shutil.copy(os.path.join(ROOT, "tools", "device_check.sh"), folder / "tools")
    stand_in = folder / "bin" / "python"
    os.makedirs(stand_in.parent)
    stand_in.write_text(f'#!/bin/sh\necho "$*" >> {folder}/python.log\n')
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("OUT", None)
    return subprocess.run(["bash", "tools/device_check.sh", *steps], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.skipif(os.name != "posix", reason="the device call is a bash script")
@pytest.mark.parametrize("steps, expected", [
    ([], ["compile", "nan_hunt", "resnet18_target", "studies_1_3"]),
    (["mlpmixer_target", "nan_hunt"], ["nan_hunt", "mlpmixer_target"]),  # in the script's order
])
def test_the_device_call_runs_the_steps_asked_for(tmp_path, steps, expected):
    commands = {"compile": "-m tools.gpu_check --data_dir .devdata/data --sections compile",
                "nan_hunt": "-m tools.gpu_check --data_dir .devdata/data --sections tracking --models mlpmixer",
                "resnet18_target": "-m tools.check_targets --data_dir .devdata/data --models resnet18",
                "studies_1_3": "-m tools.time_studies --data_dir .devdata/data",
                "mlpmixer_target": "-m tools.check_targets --data_dir .devdata/data --models mlpmixer"}
    ran = _device_call(tmp_path, steps)
    assert ran.returncode == 0, ran.stderr
    with open(tmp_path / "python.log") as f:
        training = [line for line in f.read().splitlines() if line.startswith("-m tools.")]
    assert len(training) == len(expected) and all(line.startswith(commands[name])
                                                  for line, name in zip(training, expected)), training
    assert sorted(os.listdir(tmp_path / "device_check_logs")) == sorted(f"{name}.txt" for name in expected)


@pytest.mark.skipif(os.name != "posix", reason="the device call is a bash script")
def test_the_device_call_refuses_an_unknown_step_before_anything_runs(tmp_path):
    ran = _device_call(tmp_path, ["nan_hunt", "mixer_target"])
    assert ran.returncode == 2
    assert ran.stderr.strip() == ("error: unknown step mixer_target; choose from compile nan_hunt resnet18_target "
                                  "studies_1_3 mlpmixer_target")
    assert not os.path.exists(tmp_path / "python.log") and not os.path.exists(tmp_path / "device_check_logs")
