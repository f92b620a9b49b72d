"""No file uses syntax, or one of the names listed here, that the oldest Python the README names lacks: the suite runs
here on a newer one, which would accept them (Ubuntu 20.04's own python3, which older lab machines and clusters still
run, is 3.8; macOS's and RHEL 9's are 3.9). The whole suite run on 3.8 is the full check."""
import ast
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLDEST_PYTHON = (3, 8)
NEWER_NAMES = {  # what Pythons 3.9 and 3.10 added that 3.8 parses but cannot run
    "removeprefix": "str.removeprefix", "removesuffix": "str.removesuffix", "lcm": "math.lcm",
    "randbytes": "random.randbytes", "waitstatus_to_exitcode": "os.waitstatus_to_exitcode",
    "is_relative_to": "PurePath.is_relative_to", "with_stem": "PurePath.with_stem",
    "BooleanOptionalAction": "argparse.BooleanOptionalAction", "unparse": "ast.unparse",
    "to_thread": "asyncio.to_thread",
    "stdlib_module_names": "sys.stdlib_module_names", "orig_argv": "sys.orig_argv",
    "pairwise": "itertools.pairwise", "bit_count": "int.bit_count", "aiter": "aiter()", "anext": "anext()",
}
NEWER_MODULES = {"zoneinfo", "graphlib"}  # 3.9's
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}  # subscripted at run time from 3.9


def _python_files():
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    return listed.stdout.split()


def _annotations(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            yield from (argument.annotation for argument in [*arguments.posonlyargs, *arguments.args,
                                                              *arguments.kwonlyargs, arguments.vararg,
                                                              arguments.kwarg] if argument and argument.annotation)
            if node.returns:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def newer_than_oldest_python(source):
    """What in ``source`` the oldest Python cannot run: syntax that it cannot parse, and what it parses but fails
    on when the line runs."""
    try:
        tree = ast.parse(source, feature_version=OLDEST_PYTHON)
    except SyntaxError as exc:
        return [f"line {exc.lineno}: {exc.msg}"]
    found = []
    postponed = any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
                    and any(alias.name == "annotations" for alias in node.names) for node in tree.body)
    if not postponed:  # evaluated where they are defined, where 3.9 has no `X | Y` of types
        found += [f"line {annotation.lineno}: an `X | Y` annotation" for annotation in _annotations(tree)
                  if any(isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)
                         for node in ast.walk(annotation))]
    never_run = {id(node) for annotation in _annotations(tree) for node in ast.walk(annotation)} if postponed else set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in BUILTIN_GENERICS \
                and id(node) not in never_run:
            found.append(f"line {node.lineno}: {node.value.id}[...] of types")
        imported = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        found += [f"line {node.lineno}: module {module}" for module in imported
                  if module.split(".")[0] in NEWER_MODULES]
        if isinstance(node, ast.Attribute) and node.attr == "cache" and isinstance(node.value, ast.Name) \
                and node.value.id == "functools" or isinstance(node, ast.ImportFrom) and node.module == "functools" \
                and any(alias.name == "cache" for alias in node.names):
            found.append(f"line {node.lineno}: functools.cache")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "zip" and any(
                keyword.arg == "strict" for keyword in node.keywords):
            found.append(f"line {node.lineno}: zip(strict=...)")
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
        if name in NEWER_NAMES:
            found.append(f"line {node.lineno}: {NEWER_NAMES[name]}")
    return found


def test_the_readme_names_the_oldest_python_that_is_checked():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        named = re.search(r"Python (\d+)\.(\d+) or newer", f.read())
    assert named and tuple(map(int, named.groups())) == OLDEST_PYTHON


def test_every_python_file_runs_on_the_oldest_python():
    found = {}
    for path in _python_files():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            newer = newer_than_oldest_python(f.read())
        if newer:
            found[path] = newer
    assert not found, f"newer than Python {'.'.join(map(str, OLDEST_PYTHON))}: {found}"


@pytest.mark.parametrize("source, found", [
    ("match x:\n    case 1:\n        pass\n", "line "),  # in the parser's words, which differ between versions
    ("def f(x: int | None):\n    pass\n", "line 1: an `X | Y` annotation"),
    ("def f() -> str | None:\n    pass\n", "line 1: an `X | Y` annotation"),
    ("limit: int | None = None\n", "line 1: an `X | Y` annotation"),
    ("pairs = list(zip(a, b, strict=True))\n", "line 1: zip(strict=...)"),
    ("import sys\nnames = sys.stdlib_module_names\n", "line 2: sys.stdlib_module_names"),
    ("with (open(a) as f, open(b) as g):\n    pass\n", "line "),
    ("stem = name.removesuffix('.json')\n", "line 1: str.removesuffix"),
    ("def f(sizes: list[int]):\n    pass\n", "line 1: list[...] of types"),
    ("Pairs = dict[str, tuple]\n", "line 1: dict[...] of types"),
    ("from zoneinfo import ZoneInfo\n", "line 1: module zoneinfo"),
    ("import functools\n@functools.cache\ndef f():\n    pass\n", "line 2: functools.cache"),
    ("from functools import cache\n", "line 1: functools.cache"),
])
def test_what_the_oldest_python_cannot_run_is_found(source, found):
    newer = newer_than_oldest_python(source)
    assert len(newer) == 1 and found in newer[0], newer


@pytest.mark.parametrize("source", [
    "from __future__ import annotations\ndef f(x: int | None):\n    pass\n",
    "from __future__ import annotations\ndef f(sizes: list[int]) -> dict[str, int]:\n    pass\n",
    "flags = a | b\npairs = zip(a, b)\nfirst = sizes[0]\nwith open(a) as f, open(b) as g:\n    pass\n",
    "import functools\n@functools.lru_cache(maxsize=None)\ndef f():\n    pass\n",
])
def test_what_the_oldest_python_runs_is_not_found(source):
    assert newer_than_oldest_python(source) == []
