"""Every bad flag of main.py, the studies and the tools gets one clear line on stderr and exit status 2: values out
of range, a torch too old, flags argparse refuses (naming the help to read); and every flag explains itself in
--help. Bad files, data and folders are in test_bad_input.py."""
import os
import re
import subprocess
import sys

import pytest
import torch

import main
from config import check_args, get_config_parser, torch_release, torch_too_old

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


BAD_FLAGS = [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch_size", "-4"], "--batch_size must be at least 1"),
    (["--lr", "0"], "--lr must be a positive finite number, got 0.0"),
    (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
    (["--seed", "-1"], "--seed must be between 0 and 4294967295 (numpy's seed range), got -1"),
    (["--seed", "4294967296"], "--seed must be between 0 and 4294967295 (numpy's seed range), got 4294967296"),
    (["--valid_size", "500"], "--valid_size 500 must be between 1 and 119"),
    (["--resume"], "--resume needs --logdir, the folder of the run to continue"),
    (["--model", "mlpmixer", "--visualize"], "--visualize needs --logdir, the folder the images are saved into"),
    (["--weight_decay", "-0.1"], "--weight_decay must be finite and not negative, got -0.1"),
    (["--weight_decay", "inf"], "--weight_decay must be finite and not negative, got inf"),
    (["--momentum", "nan"], "--momentum must be in [0, 1), got nan"),
    (["--momentum", "1"], "--momentum must be in [0, 1), got 1.0"),
    (["--momentum", "-0.5"], "--momentum must be in [0, 1), got -0.5"),
    (["--num_workers", "-1"], "--num_workers must not be negative, got -1"),
    (["--warmup_fraction", "1"], "--warmup_fraction must be in [0, 1), got 1.0"),
    (["--label_smoothing", "-0.1"], "--label_smoothing must be in [0, 1), got -0.1"),
    (["--label_smoothing", "1"], "--label_smoothing must be in [0, 1), got 1.0"),
    (["--warmup_fraction", "-0.1"], "--warmup_fraction must be in [0, 1), got -0.1"),
    (["--logdir", os.path.abspath(__file__)], f"--logdir {os.path.abspath(__file__)} is a file, not a folder"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[f[1][:20] for f in BAD_FLAGS])
def test_bad_flags_get_one_clear_line(flags, message, fake_data_dir, tiny_configs, capsys):
    code = main.main(["--model_config", tiny_configs["mlp"], "--data_dir", fake_data_dir, "--device", "cpu", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: {message}") and len(err.splitlines()) == 1


@pytest.mark.parametrize("flags", [["--seed", "0"], ["--seed", "4294967295"], ["--warmup_fraction", "0"],
                                   ["--label_smoothing", "0"], ["--weight_decay", "0", "--momentum", "0"],
                                   ["--momentum", "0.999"],
                                   ["--num_workers", "0"], ["--visualize"],
                                   ["--epochs", "1", "--batch_size", "1", "--valid_size", "1"]])
def test_flag_values_at_the_edge_of_their_range_are_accepted(flags):
    assert check_args(get_config_parser().parse_args(flags)) == []


def test_a_torch_older_than_the_oldest_tested_gets_one_clear_line(run_args, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch, "__version__", "2.3.1+cu121")
    logdir = tmp_path / "run"
    assert main.main(run_args("mlp", "--logdir", str(logdir), epochs=1)) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: torch 2.3.1+cu121 is older than 2.4, the oldest release this runner is tested with; "
                   "upgrade it: pip install -r requirements.txt")
    assert not logdir.exists()


def test_torch_release_reads_release_builds_and_previews():
    assert torch_release("2.4.1+cu121") == (2, 4)
    assert torch_release("2.4.0a0+git3bcc3cd") == (2, 4)  # a container's preview build of 2.4 counts as 2.4
    assert torch_release("10.0.0") == (10, 0)


@pytest.mark.parametrize("version, refused", [("2.3.1", True), ("2.4.0", False), ("2.4.0a0+git3bcc3cd", False),
                                              ("10.0.0", False)])
def test_the_oldest_tested_torch_release_is_accepted_and_only_older_ones_refused(version, refused, monkeypatch):
    monkeypatch.setattr(torch, "__version__", version)
    assert (torch_too_old() is not None) == refused


def test_cli_subprocess_help_and_error_exit_codes(tmp_path):
    help_text = subprocess.run([sys.executable, "main.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert help_text.returncode == 0
    for flag in ("--batch_size", "--model", "--model_config", "--epochs", "--optimizer", "--lr", "--momentum",
                 "--weight_decay", "--logdir", "--seed", "--device", "--print_every", "--visualize", "--data_dir",
                 "--pipeline", "--resume"):
        assert flag in help_text.stdout
    bad = subprocess.run([sys.executable, "main.py", "--model_config", str(tmp_path / "nope.json")], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: model config not found")
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("command, argv, problem, help_command", [
    ("main.py", ["--epochs", "x"], "argument --epochs: invalid int value: 'x'", "python main.py --help"),
    ("main.py", ["--no_such_flag"], "unrecognized arguments: --no_such_flag", "python main.py --help"),
    ("studies", ["run", "mlp_activation", "--precision", "bf17"], "argument --precision: invalid choice: 'bf17'",
     "python -m studies run --help and python main.py --help"),
    ("studies", ["run", "mlp_activation", "--sedes", "3"], "unrecognized arguments: --sedes 3",
     "python -m studies run --help and python main.py --help"),
    ("tools.check_targets", ["--sedes", "3"], "unrecognized arguments: --sedes 3",
     "python -m tools.check_targets --help and python main.py --help"),
    ("studies", ["rn"], "argument command: invalid choice: 'rn'", "python -m studies --help"),
    ("studies", ["run", "--workers", "two", "mlp_activation"], "argument --workers: invalid int value: 'two'",
     "python -m studies run --help"),
    ("tools.benchmark", ["--epochs"], "argument --epochs: expected one argument", "python -m tools.benchmark --help"),
])
def test_a_flag_argparse_refuses_gets_one_line_naming_the_help_to_read(command, argv, problem, help_command, capsys):
    from studies.__main__ import main as studies_main
    from tools.benchmark import parse_args as benchmark_args
    from tools.check_targets import parse_args as check_targets_args

    entry = {"main.py": main.main, "studies": studies_main, "tools.benchmark": benchmark_args,
             "tools.check_targets": check_targets_args}[command]
    with pytest.raises(SystemExit) as exited:
        entry(argv)
    err = capsys.readouterr().err  # how argparse lists the choices differs between Python releases
    assert exited.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {problem}") and err.endswith(f"; see {help_command}\n")


def _parser_of(module):
    """The argument parser that ``module.parse_args`` builds."""
    import argparse
    import importlib

    class Built(Exception):
        pass

    def stop_at_parse(parser, args=None, namespace=None):
        raise Built(parser)
    original = argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_known_args = stop_at_parse
    try:
        importlib.import_module(module).parse_args([])
    except Built as built:
        return built.args[0]
    finally:
        argparse.ArgumentParser.parse_known_args = original
    pytest.fail(f"{module}.parse_args parsed nothing")


def _parsers():
    from studies.__main__ import _parser as studies_parser

    yield "main.py", get_config_parser()
    studies = studies_parser()
    commands, = (action for action in studies._actions if action.choices)
    yield "studies", studies
    yield from ((f"studies {name}", parser) for name, parser in commands.choices.items())
    for module in ("tools.benchmark", "tools.check_targets", "tools.gpu_check", "tools.layout_benchmark",
                   "tools.time_studies", "training.fake_data"):
        yield module, _parser_of(module)


@pytest.mark.parametrize("command, parser", list(_parsers()), ids=lambda value: value if isinstance(value, str) else "")
def test_every_flag_of_every_command_says_what_it_does_and_its_default(command, parser):
    import argparse

    assert [action.dest for action in parser._actions if not action.help] == []
    shown = " ".join(parser.format_help().split())
    defaults = [action for action in parser._actions if action.option_strings
                and action.default not in (None, False, [], argparse.SUPPRESS)]
    assert [action.dest for action in defaults if f"(default: {action.default})" not in shown] == []
    assert not re.search(r"\(default: (None|False|\[\])\)", shown), shown


@pytest.mark.parametrize("action", [action for action in get_config_parser()._actions if action.choices],
                         ids=lambda action: action.option_strings[0])
def test_every_flag_with_choices_refuses_a_value_outside_them_and_explains_itself(action, capsys):
    with pytest.raises(SystemExit) as exited:
        get_config_parser().parse_args([action.option_strings[0], "bogus"])
    assert exited.value.code == 2 and f"argument {action.option_strings[0]}: invalid choice: 'bogus'" in \
        capsys.readouterr().err
    assert action.help and action.default in action.choices


@pytest.mark.parametrize("action", [action for action in get_config_parser()._actions
                                    if type(action.default) in (int, float)],
                         ids=lambda action: action.option_strings[0])
def test_every_numeric_flag_of_main_py_takes_a_number_of_its_defaults_kind_and_refuses_text(action, capsys):
    assert action.type is type(action.default)
    with pytest.raises(SystemExit) as exited:
        get_config_parser().parse_args([action.option_strings[0], "ten"])
    assert exited.value.code == 2 and f"argument {action.option_strings[0]}: invalid {action.type.__name__} value: " \
        "'ten'" in capsys.readouterr().err


PATH_FLAGS = {"main.py": ["--model_config", "--logdir", "--data_dir"], "studies run": ["--out", "--storage"],
              "studies report": ["--out", "--report_dir"], "studies status": ["--out", "--storage"],
              "tools.benchmark": ["--data_dir"], "tools.check_targets": ["--data_dir"],
              "tools.gpu_check": ["--data_dir"],
              "tools.layout_benchmark": ["--data_dir"], "tools.time_studies": ["--data_dir", "--out"],
              "training.fake_data": ["root"]}


@pytest.mark.parametrize("command, parser", list(_parsers()), ids=lambda value: value if isinstance(value, str) else "")
def test_every_path_flag_refuses_an_empty_value_in_one_line_and_expands_a_home_folder(command, parser, capsys):
    """``--logdir "$RUN"`` with ``RUN`` unset would train without saving anything; ``--out ""`` would write the
    studies into the current folder; ``~/runs`` from a notebook's argument list would make a folder named ``~``."""
    from training.errors import path_flag

    paths = [action for action in parser._actions if action.type is path_flag]
    assert [action.option_strings[0] if action.option_strings else action.dest
            for action in paths] == PATH_FLAGS.get(command, [])
    positionals = {"studies run": ["mlp_activation"], "training.fake_data": ["folder"]}.get(command, [])
    for action in paths:
        if action.option_strings:
            given = [*positionals, f"{action.option_strings[0]}="]
        else:  # the positional itself
            given = [*positionals[:-1], ""]
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(given)
        err = capsys.readouterr().err
        name = action.option_strings[0] if action.option_strings else action.dest
        assert exited.value.code == 2 and len(err.splitlines()) == 1
        assert err.startswith(f"error: argument {name}: empty (is the shell variable meant to give it unset?); give a "
                              "path; see ")
        home = given[:-1] + [given[-1] + "~/runs" if action.option_strings else "~/runs"]
        assert getattr(parser.parse_args(home), action.dest) == os.path.join(os.path.expanduser("~"), "runs")
