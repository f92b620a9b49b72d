"""Every class of the package documents how it is built: its ``__init__`` has an ``Args:`` docstring that names
each argument, as timm's layers do (the graded files' included)."""
import ast
import os

from helpers import ROOT


def _package_files():
    """The top level's Python files and its packages' (folders with an ``__init__.py``: not a venv, not the tests)."""
    found = [name for name in os.listdir(ROOT) if name.endswith(".py") and name not in ("test.py", "conftest.py")]
    for package in os.listdir(ROOT):
        if package != "tests" and os.path.isfile(os.path.join(ROOT, package, "__init__.py")):
            found += [os.path.relpath(os.path.join(folder, name), ROOT)
                      for folder, _, names in os.walk(os.path.join(ROOT, package)) for name in names
                      if name.endswith(".py")]
    return sorted(found)


def test_every_init_names_each_of_its_arguments_under_args():
    files, undocumented = _package_files(), []
    assert {"mlp.py", "studies/worker.py", "training/steps.py", "tools/gpu_check.py"} <= set(files)
    for path in files:
        with open(os.path.join(ROOT, path)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.FunctionDef) and node.name == "__init__"):
                continue
            arguments = [arg.arg for arg in node.args.args[1:] + node.args.kwonlyargs]
            docstring = ast.get_docstring(node) or ""
            _, has_args, described = docstring.partition("Args:")
            missing = [name for name in arguments if f"{name}:" not in described]
            if arguments and (not has_args or missing):
                undocumented.append(f"{path}:{node.lineno} {', '.join(missing)}")
    assert undocumented == []
