"""Every command that the README, docs/ and the scripts' usage lines show parses with the flags of the code it
runs: a flag renamed or removed fails here, not for the user who copies the command."""
import ast
import importlib
import json
import os
import re
import shlex

import pytest

from config import check_args, get_config_parser, given_flags
from studies.__main__ import RUN_HELP, _parser as studies_parser
from training.models import load_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTED = ["README.md", "main.py", "studies/__main__.py", "training/fake_data.py",
              *(f"docs/{name}" for name in sorted(os.listdir(os.path.join(ROOT, "docs"))) if name.endswith(".md")),
              *(f"tools/{name}" for name in sorted(os.listdir(os.path.join(ROOT, "tools")))
                if name.endswith((".py", ".sh")))]
NOT_OURS = ("pip ", "pytest", "python -m venv ", "python ../shared/")  # set-up, the test runner, the course's data script


def _commands_in_markdown(text):
    blocks = re.findall(r"```\n(.*?)```", text, re.DOTALL)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL).replace("\n", " ")
    return lines + re.findall(r"`(python [^`]*)`", prose)


def _commands_in_docstring(path):
    with open(path) as f:
        docstring = ast.get_docstring(ast.parse(f.read())) or ""
    return [line for line in docstring.splitlines() if line.strip().startswith("python ")]


def _commands_in_shell_steps(path):
    """The commands of a script's ``step SECONDS NAME COMMAND...`` lines, its variables given sample values."""
    with open(path) as f:
        steps = [shlex.split(line)[3:] for line in f if line.startswith("step ")]
    return [" ".join(words).replace("$DATA", "data").replace("$OUT", "out") for words in steps]


def documented_commands():
    """``(source, command)`` for every shell command shown; synopses with ``[optional]`` parts are left out."""
    found = []
    for source in DOCUMENTED:
        path = os.path.join(ROOT, source)
        if source.endswith(".md"):
            with open(path) as f:
                lines = _commands_in_markdown(f.read())
        elif source.endswith(".sh"):
            lines = _commands_in_shell_steps(path)
        else:
            lines = _commands_in_docstring(path)
        for line in lines:
            for command in line.split("#")[0].split("&&"):
                command = " ".join(command.split())
                if command.startswith("python") and "[" not in command and not command.startswith(NOT_OURS):
                    found.append((source, command))
    return found


def parse_command(words):
    """Parse ``words`` (a ``python ...`` command) as the code it names would; argparse exits on a bad flag."""
    if words[:2] == ["python", "main.py"]:
        args = get_config_parser().parse_args(words[2:])
        assert check_args(args) == []
        load_model_config(args.model_config, args.model)
    elif words[:3] == ["python", "-m", "studies"]:
        options, train_argv = studies_parser().parse_known_args(words[3:])
        if options.command == "run":
            given_flags(train_argv, RUN_HELP)
    elif words[:2] == ["python", "-m"] and words[2].startswith(("tools.", "training.")):
        importlib.import_module(words[2]).parse_args(words[3:])
    else:
        pytest.fail(f"no parser known for {' '.join(words)}")


def test_the_documentation_shows_commands_of_every_kind():
    shown = {command.split()[1] if command.split()[1] != "-m" else command.split()[2]
             for _, command in documented_commands()}
    assert {"main.py", "studies", "tools.benchmark", "tools.gpu_check", "tools.time_studies", "tools.check_targets",
            "tools.layout_benchmark", "training.fake_data"} <= shown


@pytest.mark.parametrize("source, command", documented_commands(), ids=lambda value: value)
def test_a_documented_command_parses(source, command, monkeypatch):
    monkeypatch.chdir(ROOT)
    try:
        parse_command(shlex.split(command))
    except SystemExit as exc:
        pytest.fail(f"{source}: `{command}` does not parse (exit {exc.code})")


def test_a_wrong_flag_in_a_command_is_caught(monkeypatch):
    monkeypatch.chdir(ROOT)
    for command in ("python main.py --model mlp --epochz 2", "python -m studies run mlp_activation --seed_count 3",
                    "python -m tools.gpu_check --sectionz compile", "python -m tools.check_targets --epochz 3"):
        with pytest.raises(SystemExit):
            parse_command(shlex.split(command))


def test_the_readme_flags_table_lists_every_flag_of_main_py_with_its_default():
    with open(os.path.join(ROOT, "README.md")) as f:
        table = f.read().split("\n## Flags\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| `--")]
    documented = {flag.strip("| `"): default for flag, default, *_ in rows}
    defaults = {f"--{name}": value for name, value in vars(get_config_parser().parse_args([])).items()}
    assert sorted(documented) == sorted(defaults)
    for flag, shown in documented.items():
        default = defaults[flag]
        if default is None or default is False:
            assert shown in ("none", "off"), (flag, shown)
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            assert float(shown) == default, (flag, shown)
        else:
            assert shown == default, (flag, shown)


def test_the_readme_results_table_names_every_key_that_a_run_writes(run_args, tmp_path):
    import main

    with open(os.path.join(ROOT, "README.md")) as f:
        table = f.read().split("\n## `results.json`\n", 1)[1].split("\n## ", 1)[0]
    documented = {key for line in table.splitlines() if line.startswith("| `")
                  for key in re.findall(r"`(\w+)`", line.split(" | ")[0])}
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 0
    with open(os.path.join(logdir, "results.json")) as f:
        assert documented == set(json.load(f))


def test_the_readme_layout_names_every_module():
    with open(os.path.join(ROOT, "README.md")) as f:
        layout = f.read().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w/.]+)`", layout))
    for package in ("training", "studies", "tools"):
        for name in os.listdir(os.path.join(ROOT, package)):
            if name.endswith((".py", ".sh")) and name != "__init__.py":
                assert f"{package}/{name}" in named, f"{package}/{name} is missing from the README's layout table"
