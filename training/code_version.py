"""Which version of this package's code a run trained with: the git commit of the checkout it runs from, and
whether tracked files of the package differ from it (a graded file edited since), so that a result can be traced to
its code. The package may be a folder inside a larger repository (a course's own): then the commit is that
repository's, and only the package's folder counts as modified."""
import os
import subprocess

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIT_SECONDS = 10  # a git that hangs (a network filesystem) costs a run this much at most


def _git(*args):
    """git's standard output for ``args`` in the package's folder, or None where git is missing, fails or hangs."""
    try:
        done = subprocess.run(["git", "-C", PACKAGE_ROOT, *args], capture_output=True, text=True, timeout=GIT_SECONDS,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version():
    """``{"commit", "modified"}``: the commit checked out, and whether a tracked file in the package's folder differs
    from it (None where git could not say; files git does not track, such as runs and data, do not count); None where
    the package is not in a git checkout (a downloaded archive) or git is not installed."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return {"commit": commit, "modified": None if status is None else bool(status)}
