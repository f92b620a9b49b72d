"""main.ipynb runs top to bottom in quick mode (tiny fake data), as a student's kernel would run it."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_notebook_runs_top_to_bottom(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(os.path.join(ROOT, "main.ipynb"), as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": ROOT}}).execute()
    outputs = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for output in cell.get("outputs", []))
    assert "test_acc" in outputs and "untrained MLP" in outputs
    # the study cell prints its report's summary: the ranking, the spread over seeds, the test accuracies
    for start in ("Final validation accuracy by activation", "The highest ", "With one completed run",
                  "Test accuracy (mean): "):
        assert f"\n{start}" in "\n" + outputs, start
    assert "| run | outcome |" not in outputs  # the summary stops at the section's first table


def _setup_cell():
    """The notebook's first code cell, which clones the repository and installs its requirements on a hosted kernel."""
    nbformat = pytest.importorskip("nbformat")
    return next(cell for cell in nbformat.read(os.path.join(ROOT, "main.ipynb"), as_version=4).cells
                if cell.cell_type == "code")


def _on_hosted_notebook(monkeypatch, host):
    """Make this process look like a kernel of ``host``, as the setup cell tells them apart."""
    import sys
    import types

    if host == "colab":
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")  # set in Kaggle's notebooks and scripts


@pytest.mark.parametrize("host", ["colab", "kaggle"])
def test_on_a_hosted_notebook_the_setup_cell_asks_for_the_repository_url_before_cloning(host, monkeypatch, tmp_path):
    import subprocess

    setup = _setup_cell()
    _on_hosted_notebook(monkeypatch, host)
    monkeypatch.chdir(tmp_path)  # a fresh /content or /kaggle/working: no main.py, no clone yet
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: commands.append(command))
    with pytest.raises(SystemExit, match="set REPO_URL above to the git URL of your copy"):
        exec(setup.source, {})
    assert commands == []


@pytest.mark.parametrize("cuda,epochs,said", [(True, 15, "device: cuda |"),
                                              (False, 2, "device: cpu (CUDA is not available, and why) |")])
def test_a_full_run_trains_the_mixer_briefly_on_a_cpu_and_the_study_for_the_template_epochs(cuda, epochs, said,
                                                                                             monkeypatch, capsys):
    import torch

    from training import devices

    nbformat = pytest.importorskip("nbformat")
    settings = next(cell for cell in nbformat.read(os.path.join(ROOT, "main.ipynb"), as_version=4).cells
                    if cell.cell_type == "code" and "EPOCHS =" in cell.source)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(devices, "no_cuda_said", lambda: "CUDA is not available, and why")  # the reason, stood in for
    namespace = {"QUICK": False, "os": os}
    exec(settings.source, namespace)
    assert capsys.readouterr().out.startswith(said)  # why a GPU machine under a CPU-only torch trains on its CPU
    assert namespace["EPOCHS"] == epochs and namespace["DEVICE"] == ("cuda" if cuda else "cpu")
    assert namespace["STUDY_EPOCHS"] == 15
    assert namespace["DATA_DIR"] == "./data" and namespace["EXTRA"] == []


@pytest.mark.parametrize("host", ["colab", "kaggle"])
def test_on_a_hosted_notebook_the_setup_cell_clones_once_installs_the_requirements_and_works_in_the_clone(
        host, monkeypatch, tmp_path):
    import subprocess
    import sys

    setup = _setup_cell()
    url = "https://example.org/student/cifar10-from-scratch.git"
    source = setup.source.replace("https://github.com/YOUR-NAME/cifar10-from-scratch.git", url)
    assert source != setup.source
    _on_hosted_notebook(monkeypatch, host)
    monkeypatch.chdir(tmp_path)  # Colab's /content, Kaggle's /kaggle/working
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        if command[:2] == ["git", "clone"]:  # what a clone leaves: the repository, main.py in it
            os.makedirs(command[3])
            open(os.path.join(command[3], "main.py"), "w").close()
        return subprocess.CompletedProcess(command, 0)
    monkeypatch.setattr(subprocess, "run", run)
    install = [sys.executable, "-m", "pip", "install", "-q", "-r", "requirements.txt"]
    exec(source, {})
    assert commands == [["git", "clone", url, "cifar10-from-scratch"], install]
    assert os.getcwd() == str(tmp_path / "cifar10-from-scratch")
    exec(source, {})  # the cell run again: already in the clone
    assert commands[2:] == [install] and os.getcwd() == str(tmp_path / "cifar10-from-scratch")
    os.chdir(tmp_path)  # a restarted kernel starts in its first folder again: no second clone
    exec(source, {})
    assert commands[3:] == [install] and os.getcwd() == str(tmp_path / "cifar10-from-scratch")


@pytest.mark.parametrize("host", ["colab", "kaggle"])
def test_on_a_hosted_notebook_whose_files_were_uploaded_instead_of_cloned_the_setup_cell_installs_the_requirements(
        host, monkeypatch, tmp_path):
    """Files uploaded into Colab's /content, main.py among them, come without Optuna: the studies' cells need it."""
    import subprocess
    import sys

    setup = _setup_cell()
    _on_hosted_notebook(monkeypatch, host)
    monkeypatch.chdir(tmp_path)
    open(tmp_path / "main.py", "w").close()
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: commands.append(command)
                        or subprocess.CompletedProcess(command, 0))
    exec(setup.source, {})  # REPO_URL left as it came: nothing to clone
    assert commands == [[sys.executable, "-m", "pip", "install", "-q", "-r", "requirements.txt"]]
    assert os.getcwd() == str(tmp_path)


def test_on_kaggle_without_internet_a_failed_clone_stops_the_setup_cell_saying_what_to_check(monkeypatch, tmp_path):
    import subprocess

    setup = _setup_cell()
    _on_hosted_notebook(monkeypatch, "kaggle")
    monkeypatch.chdir(tmp_path)
    commands = []
    # git prints "fatal: unable to access ...: Could not resolve host: github.com", exits 128 and leaves no folder
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: commands.append(command)
                        or subprocess.CompletedProcess(command, 128))
    with pytest.raises(SystemExit, match=r"^git clone failed \(git says why above\): check REPO_URL; on Kaggle, turn "
                                         r"Internet on in the notebook's settings$"):
        exec(setup.source.replace("github.com/YOUR-NAME/", "github.com/student/"), {})
    assert [command[:2] for command in commands] == [["git", "clone"]] and os.getcwd() == str(tmp_path)


def test_a_local_kernel_outside_the_repository_clones_nothing(monkeypatch, tmp_path):
    import subprocess
    import sys

    setup = _setup_cell()
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.chdir(tmp_path)
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: commands.append(command))
    exec(setup.source.replace("github.com/YOUR-NAME/", "github.com/student/"), {})
    assert commands == [] and os.getcwd() == str(tmp_path)


def test_the_test_cell_shows_no_deprecation_that_matplotlib_meets_in_its_own_dependencies(tmp_path):
    """The cell prints the end of ``pytest test.py``'s output. With Colab's matplotlib 3.10.0 and pyparsing 3.3.2 it
    ended in 14 warnings of pyparsing's deprecated names, raised in matplotlib's code; a deprecation that our code
    meets is still shown."""
    (tmp_path / "test_warned.py").write_text(textwrap.dedent("""
        import warnings

        def test_in_matplotlib():
            warnings.warn_explicit("'oneOf' deprecated - use 'one_of'", DeprecationWarning, "_fontconfig_pattern.py",
                                   64, module="matplotlib._fontconfig_pattern")
            warnings.warn_explicit("'parseAll' argument is deprecated, use 'parse_all'", DeprecationWarning, "util.py",
                                   466, module="pyparsing.util")

        def test_in_ours():
            warnings.warn_explicit("ours is deprecated", DeprecationWarning, "engine.py", 1, module="training.engine")
    """))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                          os.path.join(ROOT, "pytest.ini"), "--rootdir", str(tmp_path),
                          str(tmp_path / "test_warned.py")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "oneOf" not in run.stdout and "parseAll" not in run.stdout and "ours is deprecated" in run.stdout
    assert run.stdout.strip().splitlines()[-1].startswith("2 passed, 1 warning in")
