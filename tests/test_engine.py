"""``training.engine``'s ``train`` and ``evaluate`` called directly, as the template's main.py calls them (their
signatures, the step ``train`` makes from the flags it is given, evaluation mode), and the training step that a
run builds from its flags."""
import argparse

import pytest
import torch

import main
from mlp import MLP
from training import engine
from training.cifar10 import load_cifar10
from training.pipelines import TensorBatches
from training.steps import TrainStep
from utils import cross_entropy_loss


def test_train_and_evaluate_importable_with_template_signatures(fake_data_dir):
    data = load_cifar10(fake_data_dir)
    loader = TensorBatches(data.train_images, data.train_labels, 32, "cpu", train=True)
    model = MLP(3072, [16, 16], 10)
    args = argparse.Namespace(device="cpu", print_every=80)
    optimizer = torch.optim.AdamW(model.parameters())
    loss, acc, seconds = main.train(1, model, loader, optimizer, args)
    assert loss > 0 and 0 <= acc <= 1 and seconds > 0
    loss, acc, seconds = main.evaluate(1, model, loader, args, mode="val")
    assert loss > 0 and 0 <= acc <= 1


@pytest.fixture
def made_steps(monkeypatch):
    """The settings of every eager ``TrainStep`` the engine makes, in order."""
    made = []

    class RecordedStep(TrainStep):
        def __init__(self, model, optimizer, device, **settings):
            made.append(settings)
            super().__init__(model, optimizer, device, **settings)
    monkeypatch.setattr(engine, "TrainStep", RecordedStep)
    return made


@pytest.mark.parametrize("given, expected", [
    ({}, {"precision": "fp32", "channels_last": False, "label_smoothing": 0.0, "mix": "none"}),
    ({"precision": "bf16", "channels_last": True, "label_smoothing": 0.1, "mix": "cutmix"},
     {"precision": "bf16", "channels_last": True, "label_smoothing": 0.1, "mix": "cutmix"}),
])
def test_train_without_a_step_reads_the_fast_path_settings_that_args_has(fake_data_dir, made_steps, given, expected):
    data = load_cifar10(fake_data_dir)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10))
    args = argparse.Namespace(device="cpu", print_every=80, **given)
    engine.train(1, model, TensorBatches(data.test_images, data.test_labels, 25, "cpu", train=True),
                 torch.optim.SGD(model.parameters(), lr=0.0), args)
    assert made_steps == [expected]


def test_evaluate_runs_the_model_in_eval_mode_and_leaves_its_batch_norm_statistics(fake_data_dir):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 32), torch.nn.BatchNorm1d(32),
                                torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(32, 10))
    data = load_cifar10(fake_data_dir)
    loader = TensorBatches(data.test_images, data.test_labels, 25, "cpu", train=False)
    statistics = model[2].running_mean.clone()
    args = argparse.Namespace(device="cpu", print_every=80)
    loss, _, _ = engine.evaluate(1, model.train(), loader, args)
    assert not model.training and torch.equal(model[2].running_mean, statistics)
    with torch.no_grad():
        expected = sum(cross_entropy_loss(model(images), labels).item() * len(labels)
                       for images, labels in (batch[:2] for batch in loader)) / len(data.test_labels)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_a_run_builds_its_training_step_from_its_flags(run_args, tmp_path, made_steps):
    logdir = str(tmp_path / "run")
    flags = ["--logdir", logdir, "--channels_last", "on", "--label_smoothing", "0.1", "--mix", "cutmix",
             "--lr_schedule", "cosine"]
    assert main.main(run_args("mlp", *flags, epochs=1)) == 0
    assert main.main(run_args("mlp", *flags, "--resume", epochs=1)) == 0  # nothing left to train: a step all the same
    assert len(made_steps) == 2
    for settings, first_step in zip(made_steps, (0, 7)):  # 7 batches of at most 16 of the 100 training images per epoch
        schedule = settings.pop("schedule")
        assert (schedule.kind, schedule.total_steps, schedule.peak_lr) == ("cosine", 7, 0.001)
        assert settings == {"precision": "fp32", "channels_last": True, "label_smoothing": 0.1, "mix": "cutmix",
                            "first_step": first_step, "compiled_model": None}
