"""What every measurement tool does as a command, as ``main.py`` does: one line and exit 2 for a bad input, a warning
in one line, a stop at the run that Ctrl-C or SIGTERM interrupted, the GPU-only tools refused without CUDA, usage
lines that name the command; and the device call's choice of steps and the seconds it reports."""
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings

import pytest
import torch

from config import get_config_parser
from helpers import ROOT
import tools
from tools import benchmark
from training import errors

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
                "gpu_check": (["--steps", "0"], "error: --steps must be at least 1, got 0")}
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


@pytest.mark.parametrize("tool", ["benchmark", "check_targets", "gpu_check", "layout_benchmark", "time_studies"])
def test_a_tools_counts_take_numbers_and_its_flags_named_after_main_pys_share_their_choices_and_defaults(
        tool, monkeypatch):
    """A number typed as text would reach a comparison or a range as a string; a model or precision outside
    ``main.py``'s would be refused only when the run that uses it starts, after the runs before it. (gpu_check's
    --models is one comma-separated value, checked by the script.) Defaults differ from ``main.py``'s only where a
    tool measures something else: one epoch per benchmark run, the layouts of the convolutional net in fp32."""
    parsers, parse = [], errors.CommandLineParser.parse_known_args
    monkeypatch.setattr(errors.CommandLineParser, "parse_known_args",
                        lambda self, *args, **kwargs: parsers.append(self) or parse(self, *args, **kwargs))
    importlib.import_module(f"tools.{tool}").parse_args([])
    parser, = [parser for parser in parsers if parser.prog == f"python -m tools.{tool}"]
    main_choices = {action.dest: action.choices for action in get_config_parser()._actions}
    main_defaults = {action.dest: action.default for action in get_config_parser()._actions}
    assert {action.dest for action in parser._actions if main_defaults.get(action.dest, action.default)
            != action.default} == {"benchmark": {"epochs"}, "layout_benchmark": {"model", "precision"}}.get(tool, set())
    checked = 0
    for action in parser._actions:
        if type(action.default) in (int, float):
            assert action.type is type(action.default), action.dest
        shared = main_choices.get(re.sub("s$", "", action.dest))  # --models, --precisions take several
        if shared and (tool, action.dest) != ("gpu_check", "models"):
            defaults = action.default if action.nargs == "+" else [action.default]
            assert action.choices and set(action.choices) <= set(shared) and set(defaults) <= set(action.choices)
            checked += 1
    assert checked == {"benchmark": 3, "check_targets": 1, "gpu_check": 0, "layout_benchmark": 3,
                       "time_studies": 0}[tool]


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


@pytest.mark.parametrize("tool, argv, message", [
    ("benchmark", [], "--device cuda: CUDA is not available; use --device cpu"),
    ("layout_benchmark", [], "--device cuda: CUDA is not available; use --device cpu"),
    ("gpu_check", [], "tools.gpu_check needs CUDA (or --dry_run to check the script on a CPU)"),
    ("check_targets", [], "tools.check_targets measures GPU targets and needs CUDA (or --dry_run)"),
    ("time_studies", [], "tools.time_studies measures the GPU target and needs CUDA (or --dry_run)"),
    ("cuda_error_check", [], "tools.cuda_error_check needs a CUDA GPU: it sets off a CUDA error on purpose"),
    ("time_studies", ["--out", "EXISTING"], "--out EXISTING exists; give a new --out so that every run trains from "
                                            "scratch"),
    ("time_studies", ["--dry_run", "--workers", "0"], "--workers must be at least 1, got 0"),
])
def test_a_gpu_tool_refuses_with_one_line_and_exit_2(tool, argv, message, tmp_path, capsys, monkeypatch):
    from tools import run_cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")  # a CUDA build that finds no GPU: nothing more to say
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


def _device_call(folder, steps, **env_vars):
    """``bash tools/device_check.sh STEPS`` in ``folder``, with a ``python`` that logs its arguments."""
    os.makedirs(folder / "tools")
    shutil.copy(os.path.join(ROOT, "tools", "device_check.sh"), folder / "tools")
    stand_in = folder / "bin" / "python"
    os.makedirs(stand_in.parent)
    stand_in.write_text(f'#!/bin/sh\necho "$* [PYTHONUNBUFFERED=$PYTHONUNBUFFERED]" >> {folder}/python.log\n')
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}"}
    for name in ("OUT", "PYTHONUNBUFFERED", "CALL_SECONDS"):
        env.pop(name, None)
    env.update(env_vars)
    return subprocess.run(["bash", "tools/device_check.sh", *steps], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.skipif(os.name != "posix", reason="the device call is a bash script")
@pytest.mark.parametrize("steps, expected", [
    ([], ["compile_parity", "resnet18_target", "resnet18_target_b128", "cuda_error"]),
    (["cuda_error", "mlpmixer_target", "nan_hunt"], ["nan_hunt", "mlpmixer_target", "cuda_error"]),  # script's order
    (["studies_1_3", "compile", "resnet18_target", "nan_hunt"], ["compile", "nan_hunt", "resnet18_target",
                                                                 "studies_1_3"]),
])
def test_the_device_call_runs_the_steps_asked_for(tmp_path, steps, expected):
    commands = {"compile": "-m tools.gpu_check --data_dir .devdata/data --sections compile",
                "nan_hunt": "-m tools.gpu_check --data_dir .devdata/data --sections tracking --models mlpmixer",
                "compile_parity": "-m tools.gpu_check --data_dir .devdata/data --sections parity --parity_compiled "
                                  "--models resnet18,mlpmixer",
                "resnet18_target": "-m tools.check_targets --data_dir .devdata/data --models resnet18 [",
                "resnet18_target_b128": "-m tools.check_targets --data_dir .devdata/data --models resnet18 --batch_size "
                                        "128 --lr 0.1 --epochs 42 [",
                "studies_1_3": "-m tools.time_studies --data_dir .devdata/data",
                "mlpmixer_target": "-m tools.check_targets --data_dir .devdata/data --models mlpmixer",
                "cuda_error": "-m tools.cuda_error_check"}
    ran = _device_call(tmp_path, steps)
    assert ran.returncode == 0, ran.stderr
    with open(tmp_path / "python.log") as f:
        training = [line for line in f.read().splitlines() if line.startswith("-m tools.")]
    assert len(training) == len(expected) and all(line.startswith(commands[name])
                                                  for line, name in zip(training, expected)), training
    # each line reaches its step's log as it is printed, not when a buffer fills: the call's limit kills buffers
    assert all(line.endswith(" [PYTHONUNBUFFERED=1]") for line in training), training
    assert sorted(os.listdir(tmp_path / "device_check_logs")) == sorted(f"{name}.txt" for name in expected)
    # the device tool brings back 8 files of $OUT: the studies' dozens of run files must not crowd out the logs
    assert all("device_check_logs" not in line.split("--out ")[1] for line in training if "--out " in line)
    # the seconds that setting up and each step took, by which the next call's limits can be set
    assert re.search(r"^== data ready after \d+ s of the call$", ran.stdout, re.MULTILINE)
    assert re.findall(r"^== (\w+): exit status 0, \d+ s into the call$", ran.stdout, re.MULTILINE) == expected


def _step_limits(ran):
    """``{step: seconds}`` of the steps that the device call started, from its console."""
    assert ran.returncode == 0, ran.stderr
    return {name: int(seconds) for name, seconds in re.findall(r"^== (\w+) \(at most (\d+) s\): ", ran.stdout,
                                                                re.MULTILINE)}


@pytest.mark.skipif(os.name != "posix", reason="the device call is a bash script")
def test_no_step_of_the_device_call_runs_past_the_calls_end(tmp_path):
    assert _step_limits(_device_call(tmp_path / "600", [])) == {"compile_parity": 330, "resnet18_target": 120,
                                                                 "resnet18_target_b128": 120, "cuda_error": 60}
    # a call of 100 s leaves 75 s, less what the set-up took, to each step: the longer ones are cut to that
    limits = _step_limits(_device_call(tmp_path / "100", [], CALL_SECONDS="100"))
    assert limits.pop("cuda_error") == 60 and set(limits) == {"compile_parity", "resnet18_target",
                                                               "resnet18_target_b128"}
    assert all(70 <= seconds <= 75 for seconds in limits.values()), limits
    ran = _device_call(tmp_path / "20", [], CALL_SECONDS="20")  # nothing left after the set-up: every step skipped
    assert _step_limits(ran) == {} and not os.listdir(tmp_path / "20" / "device_check_logs")
    assert re.findall(r"^== (\w+): skipped, \d+ s into a call of 20 s$", ran.stdout, re.MULTILINE) == [
        "compile_parity", "resnet18_target", "resnet18_target_b128", "cuda_error"], ran.stdout


@pytest.mark.skipif(os.name != "posix", reason="the device call is a bash script")
def test_the_device_call_refuses_an_unknown_step_before_anything_runs(tmp_path):
    ran = _device_call(tmp_path, ["nan_hunt", "mixer_target"])
    assert ran.returncode == 2
    assert ran.stderr.strip() == ("error: unknown step mixer_target; choose from compile nan_hunt compile_parity "
                                  "resnet18_target resnet18_target_b128 studies_1_3 mlpmixer_target cuda_error")
    assert not os.path.exists(tmp_path / "python.log") and not os.path.exists(tmp_path / "device_check_logs")
