"""Fixtures of the measurement tools' tests (the data and model fixtures are in the root ``conftest.py``)."""
import os
import signal
import tempfile
import warnings

import pytest
import torch

from helpers import ROOT, TEST_BACKEND


@pytest.fixture(autouse=True)
def command_line_state():
    """A tool's ``run_cli`` sets up its process as a command (one-line warnings, SIGTERM as Ctrl-C); pytest's
    are put back after each test."""
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
    """``torch.compile`` on the tests' backend (``helpers.TEST_BACKEND``: no C++ build)."""
    real_compile, calls = torch.compile, []

    def compile_without_cpp_build(model, **options):
        calls.append(type(model).__name__)
        return real_compile(model, backend=TEST_BACKEND, **options)
    monkeypatch.setattr(torch, "compile", compile_without_cpp_build)
    monkeypatch.chdir(ROOT)
    return calls
