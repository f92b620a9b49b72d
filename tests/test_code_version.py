"""The version of the code a run records (training.code_version): the commit of a git checkout, whether tracked
files were modified, and nothing where git cannot say."""
import os
import shutil
import stat
import subprocess

import pytest

from training import code_version as version_module
from training.code_version import code_version

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A git checkout with one committed file, which the package is taken to run from."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no git folder above it is found
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "mlp.py").write_text("x = 1\n")
    for command in (["init", "-q"], ["add", "mlp.py"], ["commit", "-q", "-m", "first"]):
        subprocess.run(GIT + ["-C", str(repo)] + command, check=True)
    monkeypatch.setattr(version_module, "PACKAGE_ROOT", str(repo))
    return repo


def test_a_checkout_gives_its_commit_and_whether_a_tracked_file_was_modified(checkout):
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert code_version() == {"commit": head, "modified": False}
    (checkout / "results.json").write_text("{}")  # a file git does not track: runs and data do not count
    assert code_version() == {"commit": head, "modified": False}
    (checkout / "mlp.py").write_text("x = 2\n")  # a graded file edited since the commit
    assert code_version() == {"commit": head, "modified": True}


def test_a_package_inside_a_larger_repository_counts_only_its_own_files_as_modified(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    course = tmp_path / "course"  # a course repository that holds the package in a folder of its own
    package = course / "assignment2"
    package.mkdir(parents=True)
    (course / "notes.md").write_text("notes\n")
    (package / "mlp.py").write_text("x = 1\n")
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "first"]):
        subprocess.run(GIT + ["-C", str(course)] + command, check=True)
    monkeypatch.setattr(version_module, "PACKAGE_ROOT", str(package))
    head = subprocess.run(["git", "-C", str(course), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (course / "notes.md").write_text("notes edited\n")  # outside the package: its code is still the commit's
    assert code_version() == {"commit": head, "modified": False}
    (package / "mlp.py").write_text("x = 2\n")
    assert code_version() == {"commit": head, "modified": True}


def test_a_folder_that_is_no_checkout_has_no_version(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setattr(version_module, "PACKAGE_ROOT", str(tmp_path))
    assert code_version() is None


def fake_git(folder, body):
    """A ``git`` that runs the shell ``body``, found first on PATH."""
    script = folder / "git"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(folder)


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for git")
def test_a_missing_or_hanging_git_leaves_the_version_unknown_without_stopping_the_run(checkout, tmp_path, monkeypatch):
    sleep = shutil.which("sleep")  # found before PATH loses it
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert code_version() is None
    monkeypatch.setattr(version_module, "GIT_SECONDS", 0.2)
    hanging = tmp_path / "hanging"
    hanging.mkdir()
    monkeypatch.setenv("PATH", fake_git(hanging, f"exec {sleep} 5"))
    assert code_version() is None
    answering = tmp_path / "answering"  # rev-parse answers, status fails: the commit is known, its state not
    answering.mkdir()
    monkeypatch.setenv("PATH", fake_git(answering, '[ "$3" = rev-parse ] && echo abc123 && exit 0; exit 1'))
    assert code_version() == {"commit": "abc123", "modified": None}
