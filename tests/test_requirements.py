"""requirements.txt against the packages Colab already has. The notebook's first cell runs
``pip install -r requirements.txt`` inside a running Colab runtime; a lower bound above Colab's own version
makes pip upgrade that package under the running kernel, and for ipykernel that drags in jupyter_client and
tornado, which Colab warns can make its runtime crash."""
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


def test_every_requirement_is_known_to_be_on_colab_or_not():
    names = {canonicalize_name(requirement.name) for requirement in requirements()}
    assert names == set(COLAB_GPU_RUNTIME) | NOT_ON_COLAB
