"""main.py end to end on tiny fake data: every model, results.json, accuracies, flip TTA, the optimizers, the device.
Divergence is in test_divergence.py, interruptions and resume in test_interruptions.py, bad input in test_bad_input.py
and test_bad_flags.py, train and evaluate called directly in test_engine.py."""
import json
import math
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch

import main
from utils import compute_accuracy
from training import class_accuracy, engine
from training.augmentation import AUGMENTATIONS, MIXES
from training.cifar10 import CLASS_NAMES
from training.code_version import code_version
from training.first_layer import colour_share, local_share
from training.optim import SCHEDULES
from helpers import ROOT, read_results, script_validation_accuracies

# each model's measure of its pictured first layer; the tiny MLP-Mixer's 8x8 patches make a 4x4 grid of 32x32 pixels
FIRST_LAYER_MEASURES = {"resnet18": colour_share, "mlpmixer": lambda units: local_share(units, grid_size=4)}


def test_the_runner_keeps_the_templates_flags_defaults_and_model_configs():
    """The template's runner contract (../shared/TEMPLATE_API.md, "The runner"), which students' commands rely on."""
    from config import get_config_parser

    parser = get_config_parser()
    defaults = vars(parser.parse_args([]))
    assert {key: defaults[key] for key in ("batch_size", "model", "model_config", "epochs", "optimizer", "lr",
                                           "momentum", "weight_decay", "logdir", "seed", "device", "print_every",
                                           "visualize")} == {
        "batch_size": 128, "model": "mlp", "model_config": "./model_configs/mlp.json", "epochs": 15,
        "optimizer": "adamw", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4, "logdir": None, "seed": 42,
        "device": "cuda", "print_every": 80, "visualize": False}
    choices = {action.dest: action.choices for action in parser._actions if action.choices}
    assert choices["model"] == ["mlp", "resnet18", "mlpmixer"]
    assert choices["optimizer"] == ["sgd", "momentum", "adam", "adamw"] and choices["device"] == ["cpu", "cuda"]
    # and the runner's own: a mistyped value is refused in one line, never looked up later
    assert {dest: set(values) for dest, values in choices.items() if dest not in ("model", "optimizer", "device")} == {
        "pipeline": {"tensor", "torchvision"}, "lr_schedule": set(SCHEDULES), "augment": set(AUGMENTATIONS),
        "mix": set(MIXES), "tta": {"none", "flip"}, "precision": {"auto", "bf16", "fp16", "fp32"},
        "channels_last": {"auto", "on", "off"}, "cuda_graph": {"auto", "on", "off"}}
    configs = {}
    for name in ("mlp", "resnet18", "mlpmixer"):
        with open(os.path.join(ROOT, "model_configs", f"{name}.json")) as f:
            configs[name] = json.load(f)
    assert configs == {
        "mlp": {"input_size": 3072, "hidden_sizes": [1024, 512, 64, 64], "num_classes": 10, "activation": "relu"},
        "resnet18": {"num_classes": 10},
        "mlpmixer": {"num_classes": 10, "img_size": 32, "patch_size": 4, "embed_dim": 256, "num_blocks": 4,
                     "drop_rate": 0.0, "activation": "gelu"}}


@pytest.mark.parametrize("model", ["mlp", "resnet18", "mlpmixer"])
def test_each_model_trains_and_writes_results(model, run_args, tmp_path, capsys, monkeypatch):
    from training import devices

    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: False)  # its hint in the first line is tested apart
    logdir = str(tmp_path / "run")
    extra = ["--visualize"] if model != "mlp" else []
    epochs = 1 if model == "resnet18" else 2
    started = time.perf_counter()
    assert main.main(run_args(model, "--logdir", logdir, *extra, epochs=epochs)) == 0
    wall = time.perf_counter() - started
    results = read_results(logdir)
    for key in ("train_losses", "valid_losses", "train_accs", "valid_accs"):
        assert len(results[key]) == epochs and all(isinstance(v, float) for v in results[key])
    assert 0 <= results["test_acc"] <= 1 and results["test_loss"] > 0
    assert results["status"] == "completed" and results["epochs_completed"] == epochs
    assert results["split"] == {"train": 100, "valid": 20, "test": 30, "disjoint": True}
    assert results["args"]["model"] == model and results["seed"] == 42 and results["device"] == "cpu"
    assert results["code_version"] == code_version()  # this checkout's commit (None in a folder that is none)
    confusion = results["test_confusion"]  # its diagonal is what the test accuracy counts
    assert confusion["classes"] == list(CLASS_NAMES) and sum(map(sum, confusion["counts"])) == 30
    assert sum(confusion["counts"][k][k] for k in range(10)) / 30 == pytest.approx(results["test_acc"])
    assert results["num_params"] > 0 and len(results["train_seconds"]) == epochs
    assert sum(results["train_seconds"]) + sum(results["valid_seconds"]) < wall
    assert results["train_images_per_second"] == [pytest.approx(100 / s) for s in results["train_seconds"]]
    assert results["args"]["channels_last"] == (model == "resnet18")  # the auto layout on a CPU
    if model == "mlp":  # over the validation images, one entry per hidden layer of the config
        units = results["hidden_units"]
        assert units["activation"] == "relu" and units["images"] == 20
        assert [layer["units"] for layer in units["layers"]] == results["model_config"]["hidden_sizes"]
        assert results["first_layer"] is None
    else:  # the pictured first layer against its initial weights, from the checkpoint's trained ones
        assert results["hidden_units"] is None
        layer = results["first_layer"]
        trained = torch.load(os.path.join(logdir, "checkpoint.pt"), weights_only=True)["model"][layer["weight"]]
        assert layer["units"] == len(trained) and 0 < layer["moved"] < 1
        assert layer["trained"] == pytest.approx(FIRST_LAYER_MEASURES[model](trained.float()))
    out = capsys.readouterr().out
    assert "train loss" in out and "img/s" in out and "test accuracy" in out
    assert ("\nhidden layers (relu) on 20 validation images: mean derivative " in out) == (model == "mlp")
    assert ("\nfirst layer (" in out) == (model != "mlp")
    assert "\ntest accuracy by class: airplane " in out
    rows = [line.split(" | ") for line in out.splitlines() if line.count(" | ") == 6][1:]  # under the header
    assert [int(row[0]) for row in rows] == list(range(1, epochs + 1))
    assert [float(row[4]) for row in rows] == [round(accuracy, 4) for accuracy in results["valid_accs"]]
    assert [float(row[5]) for row in rows] == [round(train + valid, 1) for train, valid in
                                               zip(results["train_seconds"], results["valid_seconds"])]
    assert [float(row[6]) for row in rows] == [round(speed) for speed in results["train_images_per_second"]]
    assert ("fp32, channels-last, CUDA graph off" in out) == (model == "resnet18")
    files = set(os.listdir(logdir))
    assert {"results.json", "checkpoint.pt"} <= files
    if model == "resnet18":
        assert {"resnet18_kernels_rgb.png", "resnet18_kernels_gray.png"} <= files
        weights = torch.load(os.path.join(logdir, "checkpoint.pt"), weights_only=True)["model"].values()
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights if w.dim() == 4)  # as inputs
    if model == "mlpmixer":
        assert "mlpmixer_token_mixing.png" in files
    drawn = sorted(name for name in files if name.endswith(".png"))
    assert sorted(line for line in out.splitlines() if line.startswith("wrote ")) == [
        f"wrote {os.path.join(logdir, name)}" for name in drawn]


@pytest.mark.skipif(sys.platform != "linux", reason="Linux alone lets a file name hold a byte that is not UTF-8")
def test_a_logdir_whose_name_is_not_utf8_prints_as_an_escape_where_the_output_is_strict_utf8(run_args, tmp_path):
    """A UTF-8 locale such as en_US.UTF-8 (unlike C.UTF-8) makes Python's standard output strict: the path of the
    visualisation, printed once the run completed, failed it with a UnicodeEncodeError."""
    logdir = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9")  # Latin-1, as an older disk or share names it
    flags = run_args("mlpmixer", "--logdir", logdir, "--visualize", epochs=1)
    run = subprocess.run([sys.executable, "main.py", *flags], cwd=ROOT, capture_output=True,
                         env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    shown = logdir.encode("utf-8", "backslashreplace")
    assert b"wrote " + shown + b"/mlpmixer_token_mixing.png" in run.stdout.splitlines()
    assert read_results(logdir)["status"] == "completed"


def test_a_visualize_that_returns_nothing_as_the_templates_does_completes_the_run(run_args, tmp_path, monkeypatch):
    """A student's own mlpmixer.py beside the runner: the template's ``visualize`` saves its image and returns
    nothing, which must not fail a run that completed."""
    import mlpmixer

    def visualize(self, logdir):
        open(os.path.join(logdir, "token_mixing.png"), "wb").close()
    monkeypatch.setattr(mlpmixer.MLPMixer, "visualize", visualize)
    logdir = tmp_path / "run"
    assert main.main(run_args("mlpmixer", "--logdir", str(logdir), "--visualize", epochs=1)) == 0
    assert "token_mixing.png" in os.listdir(logdir) and read_results(logdir)["status"] == "completed"


def test_a_visualize_that_fails_on_its_own_is_a_crash_with_its_traceback_not_a_full_disk(run_args, tmp_path,
                                                                                          monkeypatch, capsys):
    """PIL's errors are OSErrors without an errno: the disk is not to blame, and the traceback shows where."""
    import mlpmixer

    def visualize(self, logdir):
        raise OSError("cannot write mode RGBA as JPEG")
    monkeypatch.setattr(mlpmixer.MLPMixer, "visualize", visualize)
    logdir = tmp_path / "run"
    with pytest.raises(OSError, match="cannot write mode RGBA as JPEG"):
        main.main(run_args("mlpmixer", "--logdir", str(logdir), "--visualize", epochs=1))
    assert "make room" not in capsys.readouterr().err
    assert read_results(logdir)["status"] == "completed"


def test_visualize_for_the_mlp_warns_before_training_and_draws_nothing(run_args, tmp_path):
    import warnings

    from config import get_config_parser

    logdir = str(tmp_path / "run")
    args = get_config_parser().parse_args(run_args("mlp", "--logdir", logdir, "--visualize", epochs=1))
    warned_by_the_first_epoch = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.fit(args, on_epoch=lambda epoch, history: warned_by_the_first_epoch.extend(map(str, caught)))
    assert any("--visualize: mlp has no first-layer visualisation (resnet18 and mlpmixer have one); the run trains "
               "without it" in warning for warning in warned_by_the_first_epoch), warned_by_the_first_epoch
    assert not [name for name in os.listdir(logdir) if name.endswith(".png")]


def test_mlp_learns_the_fake_data(run_args, tmp_path):
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, "--lr", "3e-3", epochs=4)) == 0
    results = read_results(logdir)
    assert results["train_losses"][-1] < results["train_losses"][0]
    assert results["test_acc"] > 0.3  # ten classes: chance is 0.1


def test_accuracies_are_exact_fractions_of_the_images_so_equal_ones_compare_equal():
    import argparse

    labels = torch.arange(50) % 10
    guesses = torch.where(torch.arange(50) < 30, labels, (labels + 1) % 10)  # 30 of 50 right
    logits = torch.nn.functional.one_hot(guesses, 10).float()
    assert compute_accuracy(logits, labels) * 50 != 30  # float32 rounding: 0.6 * 50 is 30.000002

    class Guesser(torch.nn.Module):
        def forward(self, images):
            return logits

    args = argparse.Namespace(device=torch.device("cpu"), print_every=80, no_progress=True)
    _, accuracy, _ = engine.evaluate(1, Guesser(), [[torch.zeros(50, 3, 32, 32), labels]], args)
    assert accuracy == 0.6


def test_torchvision_pipeline_runs(run_args, tmp_path):
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, "--pipeline", "torchvision", "--num_workers", "0",
                              epochs=1)) == 0
    assert read_results(logdir)["pipeline"] == "torchvision"


@pytest.mark.parametrize("pipeline", ["tensor", "torchvision"])
def test_augmentation_mixing_and_flip_tta_run_and_are_part_of_resume(pipeline, run_args, tmp_path, capsys):
    logdir = str(tmp_path / "run")
    flags = ("--logdir", logdir, "--pipeline", pipeline, "--num_workers", "0", "--tta", "flip", "--mix", "cutmix")
    assert main.main(run_args("mlp", *flags, "--augment", "padcrop_cutout", epochs=1)) == 0
    results = read_results(logdir)
    assert results["status"] == "completed" and results["args"]["augment"] == "padcrop_cutout"
    assert results["args"]["tta"] == "flip" and results["args"]["mix"] == "cutmix"
    assert main.main(run_args("mlp", *flags, "--augment", "padcrop", "--resume", epochs=2)) == 2
    assert "made with other settings: augment 'padcrop_cutout', now 'padcrop';" in capsys.readouterr().err


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror(fake_data_dir):
    import argparse
    from mlp import MLP
    from training.cifar10 import load_cifar10
    from training.pipelines import TensorBatches
    from utils import cross_entropy_loss
    torch.manual_seed(0)
    data = load_cifar10(fake_data_dir)
    loader = TensorBatches(data.test_images, data.test_labels, 7, "cpu", train=False)
    model = MLP(3072, [16, 16], 10).eval()
    images, labels = torch.cat([x for x, _ in loader]), torch.cat([y for _, y in loader])
    with torch.no_grad():
        logits = 0.5 * (model(images) + model(images.flip(3)))
    args = argparse.Namespace(device=torch.device("cpu"), tta="flip", no_progress=True)
    loss, accuracy, _ = engine.evaluate(1, model, loader, args)
    assert loss == pytest.approx(cross_entropy_loss(logits, labels).item(), rel=1e-5)
    assert accuracy == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    confusion = class_accuracy.new_confusion("cpu")  # counts the averaged logits' predictions
    assert engine.evaluate(1, model, loader, args, confusion=confusion)[:2] == (loss, accuracy)
    assert confusion.sum() == len(labels) and confusion.trace() == (logits.argmax(1) == labels).sum()
    assert confusion[labels[0], logits[0].argmax()] > 0
    plain = argparse.Namespace(device=torch.device("cpu"), no_progress=True)
    plain_loss, _, _ = engine.evaluate(1, model, loader, plain)
    assert plain_loss != pytest.approx(loss, rel=1e-5)


def test_on_epoch_can_stop_a_run_and_test_can_be_left_out(run_args, tmp_path):
    from config import get_config_parser

    seen, on_disk = [], []

    def prune_at_epoch_2(epoch, history):
        seen.append(list(history["valid_accs"]))
        written = read_results(tmp_path / "pruned")  # what `studies status` and a resumed run read meanwhile
        on_disk.append((written["status"], written["epochs_completed"], written["valid_accs"]))
        return epoch == 2
    args = get_config_parser().parse_args(run_args("mlp", "--logdir", str(tmp_path / "pruned"), epochs=3))
    results = engine.fit(args, on_epoch=prune_at_epoch_2)
    assert results["status"] == "pruned" and results["epochs_completed"] == 2 and results["test_acc"] is None
    assert [len(accs) for accs in seen] == [1, 2] and read_results(tmp_path / "pruned")["status"] == "pruned"
    assert on_disk == [("running", 1, seen[0]), ("running", 2, seen[1])]
    args = get_config_parser().parse_args(run_args("mlp", "--logdir", str(tmp_path / "untested"), epochs=1))
    results = engine.fit(args, test=False)
    assert results["status"] == "completed" and results["test_acc"] is None and results["test_loss"] is None
    assert results["test_confusion"] is None


def test_the_command_prints_a_warning_as_one_line(fake_data_dir, tiny_configs):
    run = subprocess.run([sys.executable, "main.py", "--model_config", tiny_configs["mlp"], "--data_dir",
                          fake_data_dir, "--valid_size", "20", "--epochs", "1", "--device", "cpu", "--precision",
                          "fp16", "--no_progress"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    warning = [line for line in run.stderr.splitlines() if "fp16" in line]
    assert warning == ["warning: --precision fp16 is for CUDA GPUs: a CPU usually emulates fp16, much slower than "
                       "fp32"], run.stderr


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs a CPU affinity mask to limit the CPUs")
def test_more_loader_workers_than_cpus_is_one_warning_line_naming_the_flag(fake_data_dir, tiny_configs):
    one_cpu = min(os.sched_getaffinity(0))
    run = subprocess.run([sys.executable, "main.py", "--model_config", tiny_configs["mlp"], "--data_dir",
                          fake_data_dir, "--valid_size", "20", "--epochs", "2", "--device", "cpu", "--pipeline",
                          "torchvision", "--num_workers", "2", "--no_progress"], cwd=ROOT, capture_output=True,
                         text=True, preexec_fn=lambda: os.sched_setaffinity(0, {one_cpu}))
    assert run.returncode == 0, run.stderr
    assert [line for line in run.stderr.splitlines() if "worker" in line.lower()] == [
        "warning: --num_workers 2 starts more DataLoader workers than the CPUs this process may use (1), which can "
        "slow the loading or stall it; --num_workers 1 avoids that"], run.stderr


@pytest.mark.parametrize("flags, warned", [
    (["--optimizer", "adam", "--weight_decay", "0.1"],
     ["--weight_decay 0.1 is not used with --optimizer adam: the template's adam has no weight decay (adamw decays the "
      "weights)"]),
    (["--optimizer", "sgd", "--momentum", "0.5", "--warmup_fraction", "0.1"],
     ["--momentum 0.5 is not used with --optimizer sgd: only --optimizer momentum has momentum",
      "--warmup_fraction 0.1 is not used with --lr_schedule constant: only cosine and onecycle warm up"]),
    (["--optimizer", "adam"], []),  # the template's own weight decay and momentum, which it never said it applied
    (["--optimizer", "momentum", "--momentum", "0.5", "--lr_schedule", "cosine", "--warmup_fraction", "0.1"], []),
])
def test_a_flag_given_that_the_run_trains_without_is_warned_of(flags, warned, run_args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main.main(run_args("mlp", *flags, epochs=1)) == 0
    assert [str(warning.message) for warning in caught if "is not used" in str(warning.message)] == warned


def test_a_run_asked_for_cuda_without_it_trains_and_evaluates_on_the_cpu(run_args, tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(torch.version, "cuda", "13.0")  # a CUDA build that finds no GPU: nothing more to say
    logdir = str(tmp_path / "run")
    with pytest.warns(UserWarning, match="CUDA is not available: running on the CPU"):
        assert main.main(run_args("mlp", "--logdir", logdir, "--device", "cuda", epochs=1)) == 0
    results = read_results(logdir)
    assert (results["status"], results["device"], results["args"]["device"]) == ("completed", "cpu", "cpu")


def test_the_best_validation_epoch_is_the_highest_not_the_last(run_args, tmp_path, monkeypatch, capsys):
    script_validation_accuracies(monkeypatch, [0.5, 0.7, 0.6])
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=3)) == 0
    results = read_results(logdir)
    assert results["valid_accs"] == [0.5, 0.7, 0.6]
    assert (results["best_valid_acc"], results["best_epoch"]) == (0.7, 2)
    assert "best validation accuracy 0.7000 (epoch 2); test loss" in capsys.readouterr().out


def test_the_logged_validation_and_test_numbers_are_the_final_models_on_the_unaugmented_images(run_args, tmp_path,
                                                                                              fake_data_dir,
                                                                                              tiny_configs):
    from training.cifar10 import load_cifar10, split_train_valid
    from training.models import build_model, load_model_config
    from training.pipelines import Normalize
    from utils import cross_entropy_loss

    logdir = str(tmp_path / "run")
    argv = run_args("mlp", "--logdir", logdir, "--augment", "padcrop_cutout", epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn of (--visualize's warning for the MLP only when asked)
        assert main.main(argv) == 0
    results = read_results(logdir)
    model = build_model("mlp", load_model_config(tiny_configs["mlp"], "mlp"))
    model.load_state_dict(torch.load(os.path.join(logdir, "checkpoint.pt"), weights_only=True)["model"])
    model.eval()
    data = load_cifar10(fake_data_dir)
    _, valid_index = split_train_valid(len(data.train_labels), 20, seed=42)
    normalize = Normalize("cpu")
    for images, labels, loss, accuracy in (
            (data.train_images[valid_index], data.train_labels[valid_index], results["valid_losses"][0],
             results["valid_accs"][0]),
            (data.test_images, data.test_labels, results["test_loss"], results["test_acc"])):
        with torch.no_grad():
            logits = model(normalize(images.float()))
        assert loss == pytest.approx(cross_entropy_loss(logits, labels).item(), rel=1e-5)
        assert accuracy == (logits.argmax(1) == labels).sum().item() / len(labels)


@pytest.mark.parametrize("schedule, last_rate", [
    ("constant", 0.001),
    ("onecycle", 0.001 * (1 - 10 / 11)),  # 2 epochs of 7 batches: 3 warm-up steps, the last of 11 decaying ones
    ("cosine", 0.001 * 0.5 * (1 + math.cos(math.pi * 10 / 11))),
])
def test_the_learning_rate_follows_its_schedule_over_every_step_of_the_run(run_args, tmp_path, schedule, last_rate):
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, "--lr_schedule", schedule, epochs=2)) == 0  # 100 images
    group, = torch.load(os.path.join(logdir, "checkpoint.pt"), weights_only=True)["optimizer"]["param_groups"]
    assert float(group["lr"]) == pytest.approx(last_rate, rel=1e-6)  # the rate of the run's last step
