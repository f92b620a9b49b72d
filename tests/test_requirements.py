"""requirements.txt against the packages Colab and Kaggle already have. The notebook's first cell runs
``pip install -r requirements.txt`` inside a running Colab or Kaggle kernel; a lower bound above the runtime's own
version makes pip upgrade that package under the running kernel, and for ipykernel that drags in jupyter_client and
tornado, which Colab warns can make its runtime crash. Kaggle builds its image on Colab's and then pins some
packages lower, and pip reports an upgrade that breaks one of those pins as an error."""
import os

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Colab's GPU runtime (Python 3.12), from googlecolab/backend-info's pip-freeze.gpu.txt as read on 2026-12-02
COLAB_GPU_RUNTIME = {
    "torch": "2.11.0+cu128", "torchvision": "0.26.0+cu128", "numpy": "2.0.2", "matplotlib": "3.10.0",
    "tqdm": "4.67.3", "pytest": "8.4.2", "nbclient": "0.10.4", "nbformat": "5.10.4", "ipykernel": "6.17.1",
    "sqlalchemy": "2.0.50",
}
# what Kaggle/docker-python's kaggle_requirements.txt (as read on 2026-12-02) makes of them: nbconvert==6.4.5, which
# needs nbclient below 0.6 (the newest is 0.5.13), and matplotlib<3.8 (the newest is 3.7.5)
KAGGLE_PINNED_LOWER = {"nbclient": "0.5.13", "matplotlib": "3.7.5"}
NOT_ON_COLAB = {"optuna", "psycopg"}  # installed by the notebook's first cell (Colab has psycopg2, not psycopg 3)


def requirements():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        lines = [line.split("#")[0].strip() for line in f]
    return [Requirement(line) for line in lines if line]


def test_every_requirement_that_colab_ships_accepts_colabs_own_version():
    too_high = [f"{requirement} (Colab has {COLAB_GPU_RUNTIME[canonicalize_name(requirement.name)]})"
                for requirement in requirements() if canonicalize_name(requirement.name) in COLAB_GPU_RUNTIME
                and not requirement.specifier.contains(COLAB_GPU_RUNTIME[canonicalize_name(requirement.name)])]
    assert not too_high, f"pip would upgrade these under Colab's running kernel: {', '.join(too_high)}"


def test_every_requirement_that_kaggle_pins_lower_accepts_kaggles_version():
    named = {canonicalize_name(requirement.name): requirement for requirement in requirements()}
    too_high = [f"{named[name]} (Kaggle has {version})" for name, version in KAGGLE_PINNED_LOWER.items()
                if not named[name].specifier.contains(version)]
    assert not too_high, f"pip would upgrade these past Kaggle's pins: {', '.join(too_high)}"


def test_every_requirement_is_known_to_be_on_colab_or_not():
    names = {canonicalize_name(requirement.name) for requirement in requirements()}
    assert names == set(COLAB_GPU_RUNTIME) | NOT_ON_COLAB
