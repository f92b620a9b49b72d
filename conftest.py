"""Shared test fixtures: small fake CIFAR-10 in the real on-disk format, tiny model configs, and
the real CIFAR-10 copy when ``../shared/data`` is beside the checkout (tests that need it skip otherwise)."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from training.fake_data import write_fake_cifar10

ROOT = os.path.dirname(os.path.abspath(__file__))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")

TINY_CONFIGS = {
    "mlp": {"input_size": 3072, "hidden_sizes": [32, 16], "num_classes": 10, "activation": "relu"},
    "resnet18": {"num_classes": 10},
    "mlpmixer": {"num_classes": 10, "img_size": 32, "patch_size": 8, "embed_dim": 16, "num_blocks": 1,
                 "drop_rate": 0.1, "activation": "gelu"},
}


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_delivered():
    """Ctrl-C raises KeyboardInterrupt in the tests and in the runs they start, which the interruption tests rely
    on, even when pytest itself was started in the background without job control (`nohup pytest &`), which
    ignores SIGINT: a process that starts with SIGINT ignored, and its children, never see Ctrl-C."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(scope="session")
def fake_data_dir(tmp_path_factory):
    """A ``data_dir`` holding a fake cifar-10-batches-py: 5 x 24 training and 30 test images."""
    root = tmp_path_factory.mktemp("fake_cifar")
    write_fake_cifar10(str(root), train_per_batch=24, test=30, seed=0)
    return str(root)


@pytest.fixture(scope="session")
def tiny_configs(tmp_path_factory):
    """Paths of small model configs, keyed by model name, so runner tests take seconds."""
    folder = tmp_path_factory.mktemp("configs")
    paths = {}
    for name, config in TINY_CONFIGS.items():
        paths[name] = str(folder / f"{name}.json")
        with open(paths[name], "w") as f:
            json.dump(config, f)
    return paths


@pytest.fixture
def run_args(fake_data_dir, tiny_configs):
    """Builds a ``main.py`` argument list for a quick CPU run on the fake data."""
    def build(model="mlp", *extra, epochs=2):
        return ["--model", model, "--model_config", tiny_configs[model], "--data_dir", fake_data_dir,
                "--valid_size", "20", "--epochs", str(epochs), "--device", "cpu", "--batch_size", "16",
                "--eval_batch_size", "25", "--no_progress", *extra]
    return build


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory):
    """The real CIFAR-10 (JPEG copy) in the standard layout: ./data if written already, else decoded
    from ../shared/data; skips the test when neither is there."""
    local = os.path.join(ROOT, "data")
    if os.path.isdir(os.path.join(local, "cifar-10-batches-py")):
        return local
    script = os.path.join(SHARED_DATA, "make_cifar10.py")
    if not os.path.isfile(script):
        pytest.skip("real-data test: no CIFAR-10 copy (../shared/data/make_cifar10.py or ./data/cifar-10-batches-py)")
    root = tmp_path_factory.mktemp("real_cifar")
    subprocess.run([sys.executable, script, str(root)], check=True, capture_output=True)
    return str(root)


@pytest.fixture
def study_args(fake_data_dir, tiny_configs, tmp_path):
    """Builds ``python -m studies run`` arguments for quick CPU runs; the output goes to ``tmp_path/out``."""
    def build(name, *extra, epochs=1):
        from studies.definitions import STUDIES

        model = STUDIES[name].model
        return ["run", name, "--out", str(tmp_path / "out"), "--model_config", tiny_configs[model],
                "--data_dir", fake_data_dir, "--device", "cpu", "--epochs", str(epochs), "--valid_size", "20",
                "--batch_size", "16", "--eval_batch_size", "25", *extra]
    return build
