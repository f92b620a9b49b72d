"""main.py end to end on tiny fake data: every model, results.json, checkpoints, resume, Ctrl-C and
divergence. Bad input is in test_bad_input.py."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

import main
from utils import compute_accuracy
from training import engine
from training.optim import build_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("train_losses", "valid_losses", "train_accs", "valid_accs", "test_loss", "test_acc", "status",
           "epochs_completed", "best_valid_acc", "best_epoch", "num_params", "model_config")


def read_results(logdir):
    with open(os.path.join(logdir, "results.json")) as f:
        return json.loads(f.read(), parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))


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
    choices = {action.dest: action.choices for action in parser._actions}
    assert choices["model"] == ["mlp", "resnet18", "mlpmixer"]
    assert choices["optimizer"] == ["sgd", "momentum", "adam", "adamw"] and choices["device"] == ["cpu", "cuda"]
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
def test_each_model_trains_and_writes_results(model, run_args, tmp_path, capsys):
    logdir = str(tmp_path / "run")
    extra = ["--visualize"] if model != "mlp" else []
    epochs = 1 if model == "resnet18" else 2
    assert main.main(run_args(model, "--logdir", logdir, *extra, epochs=epochs)) == 0
    results = read_results(logdir)
    for key in ("train_losses", "valid_losses", "train_accs", "valid_accs"):
        assert len(results[key]) == epochs and all(isinstance(v, float) for v in results[key])
    assert 0 <= results["test_acc"] <= 1 and results["test_loss"] > 0
    assert results["status"] == "completed" and results["epochs_completed"] == epochs
    assert results["split"] == {"train": 100, "valid": 20, "test": 30, "disjoint": True}
    assert results["args"]["model"] == model and results["seed"] == 42 and results["device"] == "cpu"
    assert results["num_params"] > 0 and len(results["train_seconds"]) == epochs
    assert results["args"]["channels_last"] == (model == "resnet18")  # the auto layout on a CPU
    out = capsys.readouterr().out
    assert "train loss" in out and "img/s" in out and "test accuracy" in out
    assert ("fp32, channels-last, CUDA graph off" in out) == (model == "resnet18")
    files = set(os.listdir(logdir))
    assert {"results.json", "checkpoint.pt"} <= files
    if model == "resnet18":
        assert {"resnet18_kernels_rgb.png", "resnet18_kernels_gray.png"} <= files
    if model == "mlpmixer":
        assert "mlpmixer_token_mixing.png" in files


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
    assert "made with augment='padcrop_cutout', not 'padcrop'" in capsys.readouterr().err


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
    plain = argparse.Namespace(device=torch.device("cpu"), no_progress=True)
    plain_loss, _, _ = engine.evaluate(1, model, loader, plain)
    assert plain_loss != pytest.approx(loss, rel=1e-5)


def test_checkpoint_loads_with_weights_only(run_args, tmp_path):
    logdir = str(tmp_path / "run")
    main.main(run_args("mlpmixer", "--logdir", logdir, epochs=1))
    state = torch.load(os.path.join(logdir, "checkpoint.pt"), weights_only=True)
    assert state["epoch"] == 1 and set(state) >= {"model", "optimizer", "rng", "history"}
    assert state["scaler"] is None  # fp32: no loss scaler
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}


def _interrupt_at(monkeypatch, epoch_to_stop):
    real_train = engine.train

    def train(epoch, *args, **kwargs):
        if epoch == epoch_to_stop:
            raise KeyboardInterrupt
        return real_train(epoch, *args, **kwargs)
    monkeypatch.setattr(engine, "train", train)


@pytest.mark.parametrize("model,pipeline,schedule", [("mlpmixer", "tensor", "cosine"),
                                                     ("mlp", "torchvision", "constant"),
                                                     ("resnet18", "tensor", "constant")])  # channels-last
def test_resume_gives_the_same_results_as_an_uninterrupted_run(model, pipeline, schedule, run_args, tmp_path,
                                                               monkeypatch):
    flags = ["--pipeline", pipeline, "--num_workers", "0", "--lr_schedule", schedule]
    straight = str(tmp_path / "straight")
    assert main.main(run_args(model, "--logdir", straight, *flags, epochs=3)) == 0

    resumed = str(tmp_path / "resumed")
    _interrupt_at(monkeypatch, 2)
    assert main.main(run_args(model, "--logdir", resumed, *flags, epochs=3)) == 130
    partial = read_results(resumed)
    assert partial["status"] == "interrupted" and partial["epochs_completed"] == 1
    assert partial["test_acc"] is None
    monkeypatch.undo()
    assert main.main(run_args(model, "--logdir", resumed, *flags, "--resume", epochs=3)) == 0

    expected, actual = read_results(straight), read_results(resumed)
    for key in METRICS:
        assert actual[key] == expected[key], key


def test_fp16_resume_restores_the_loss_scaler(run_args, tmp_path):
    logdir = str(tmp_path / "run")
    with pytest.warns(UserWarning, match="--precision fp16 is for CUDA GPUs"):
        assert main.main(run_args("mlp", "--logdir", logdir, "--precision", "fp16", epochs=1)) == 0
    path = os.path.join(logdir, "checkpoint.pt")
    state = torch.load(path, weights_only=True)
    steps_per_epoch = state["scaler"]["_growth_tracker"]  # one per step: no step overflowed
    assert state["scaler"]["scale"] == 65536.0 and steps_per_epoch > 0
    state["scaler"].update(scale=1024.0, _growth_tracker=7)  # as if the run had backed off
    torch.save(state, path)
    with pytest.warns(UserWarning, match="--precision fp16 is for CUDA GPUs"):
        assert main.main(run_args("mlp", "--logdir", logdir, "--precision", "fp16", "--resume", epochs=2)) == 0
    resumed = torch.load(path, weights_only=True)["scaler"]
    assert (resumed["scale"], resumed["_growth_tracker"]) == (1024.0, 7 + steps_per_epoch)
    assert read_results(logdir)["args"]["precision"] == "fp16"


def test_on_epoch_can_stop_a_run_and_test_can_be_left_out(run_args, tmp_path):
    from config import get_config_parser

    seen = []
    args = get_config_parser().parse_args(run_args("mlp", "--logdir", str(tmp_path / "pruned"), epochs=3))
    results = engine.fit(args, on_epoch=lambda epoch, history: seen.append(list(history["valid_accs"])) or epoch == 2)
    assert results["status"] == "pruned" and results["epochs_completed"] == 2 and results["test_acc"] is None
    assert [len(accs) for accs in seen] == [1, 2] and read_results(tmp_path / "pruned")["status"] == "pruned"
    args = get_config_parser().parse_args(run_args("mlp", "--logdir", str(tmp_path / "untested"), epochs=1))
    results = engine.fit(args, test=False)
    assert results["status"] == "completed" and results["test_acc"] is None and results["test_loss"] is None


def test_interrupt_keeps_finished_epochs(run_args, tmp_path, monkeypatch):
    logdir = str(tmp_path / "run")
    _interrupt_at(monkeypatch, 3)
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=5)) == 130
    results = read_results(logdir)
    assert results["status"] == "interrupted" and len(results["train_losses"]) == 2
    assert not [name for name in os.listdir(logdir) if name.startswith(".tmp")]


def test_an_interrupt_during_the_test_evaluation_marks_the_run_interrupted_and_resume_tests_it(run_args, tmp_path,
                                                                                               monkeypatch, capsys):
    logdir = str(tmp_path / "run")
    real_evaluate = engine.evaluate

    def evaluate(epoch, model, dataloader, args, mode="val"):
        if mode == "test":
            raise KeyboardInterrupt
        return real_evaluate(epoch, model, dataloader, args, mode)
    monkeypatch.setattr(engine, "evaluate", evaluate)
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=2)) == 130
    results = read_results(logdir)
    assert results["status"] == "interrupted" and results["epochs_completed"] == 2 and results["test_acc"] is None
    assert capsys.readouterr().err.strip().endswith(
        "interrupted during the test evaluation: results.json keeps the 2 finished epochs; --resume evaluates the "
        "test set")
    monkeypatch.setattr(engine, "evaluate", real_evaluate)
    assert main.main(run_args("mlp", "--logdir", logdir, "--resume", epochs=2)) == 0
    results = read_results(logdir)
    assert results["status"] == "completed" and results["epochs_completed"] == 2 and results["test_acc"] is not None


def test_an_interrupt_without_logdir_says_that_nothing_was_saved(run_args, monkeypatch, capsys):
    _interrupt_at(monkeypatch, 2)
    assert main.main(run_args("mlp", epochs=3)) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted: 1 finished epoch, not saved (no --logdir)")


def test_interrupt_before_the_first_epoch_exits_130_and_writes_nothing(run_args, tmp_path, monkeypatch, capsys):
    def load_cifar10(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(engine, "load_cifar10", load_cifar10)
    logdir = tmp_path / "run"
    assert main.main(run_args("mlp", "--logdir", str(logdir))) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert not logdir.exists()


def test_ctrl_c_during_a_write_is_delivered_after_it(tmp_path):
    import signal

    from training import persistence

    def write(f):
        f.write(b"first half, ")
        signal.raise_signal(signal.SIGINT)
        f.write(b"second half")
    path = tmp_path / "file"
    with pytest.raises(KeyboardInterrupt):
        persistence.atomic_write(str(path), write)
    assert path.read_text() == "first half, second half"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.skipif(os.name != "posix", reason="file modes beyond read-only are POSIX")
def test_results_and_checkpoint_get_the_mode_a_plain_open_gives(fake_data_dir, tiny_configs, tmp_path):
    """An atomic write goes through mkstemp, which makes files readable by their owner only; on a shared disk
    the course's staff and a study's other machines must read them as they read a plain file."""
    logdir = tmp_path / "run"
    script = (f"import sys, main; open({str(tmp_path / 'plain')!r}, 'w').close(); sys.exit(main.main(["
              f"'--model_config', {tiny_configs['mlp']!r}, '--data_dir', {fake_data_dir!r}, '--valid_size', '20', "
              f"'--epochs', '1', '--device', 'cpu', '--logdir', {str(logdir)!r}, '--no_progress']))")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         preexec_fn=lambda: os.umask(0o027))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "plain").stat().st_mode & 0o777 == 0o640
    for name in ("results.json", "checkpoint.pt"):
        assert (logdir / name).stat().st_mode & 0o777 == 0o640, name


def test_a_disk_that_fills_up_mid_run_gets_one_line_and_keeps_the_last_epoch(run_args, tmp_path, monkeypatch,
                                                                             capsys):
    import errno

    from training import persistence

    logdir = tmp_path / "run"
    assert main.main(run_args("mlp", "--logdir", str(logdir), epochs=1)) == 0
    real_fsync, writes = persistence.os.fsync, []

    def fsync_until_full(fd):
        writes.append(fd)
        if len(writes) > 2:  # epoch 1's checkpoint and results.json fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)
    monkeypatch.setattr(persistence.os, "fsync", fsync_until_full)
    assert main.main(run_args("mlp", "--logdir", str(logdir), epochs=3)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: cannot write {logdir / 'checkpoint.pt'} (No space left on device); make room")
    assert read_results(logdir)["epochs_completed"] == 1
    assert not [name for name in os.listdir(logdir) if name.startswith(".tmp")]


def test_the_command_prints_a_warning_as_one_line(fake_data_dir, tiny_configs):
    run = subprocess.run([sys.executable, "main.py", "--model_config", tiny_configs["mlp"], "--data_dir",
                          fake_data_dir, "--valid_size", "20", "--epochs", "1", "--device", "cpu", "--precision",
                          "fp16", "--no_progress"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    warning = [line for line in run.stderr.splitlines() if "fp16" in line]
    assert warning == ["warning: --precision fp16 is for CUDA GPUs: a CPU usually emulates fp16, much slower than "
                       "fp32"], run.stderr


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])  # Ctrl-C; a batch system's or a notebook host's stop
def test_a_real_stop_signal_leaves_valid_results(stop, fake_data_dir, tiny_configs, tmp_path):
    import signal
    import time
    logdir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "main.py", "--model_config", tiny_configs["mlp"], "--data_dir",
                                fake_data_dir, "--valid_size", "20", "--epochs", "100000", "--device", "cpu",
                                "--logdir", str(logdir), "--no_progress"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (logdir / "results.json").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(getattr(signal, stop))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    results = read_results(str(logdir))
    assert results["status"] == "interrupted" and results["epochs_completed"] >= 1
    assert len(results["train_losses"]) == results["epochs_completed"]


def test_divergence_stops_cleanly_with_strict_json(run_args, tmp_path, monkeypatch):
    real_train = engine.train

    def diverging(epoch, *args, **kwargs):
        loss, acc, seconds = real_train(epoch, *args, **kwargs)
        return (float("nan") if epoch == 2 else loss), acc, seconds
    monkeypatch.setattr(engine, "train", diverging)
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=4)) == 3
    with open(os.path.join(logdir, "results.json")) as f:
        text = f.read()
    assert "NaN" not in text and "Infinity" not in text
    results = read_results(logdir)
    assert results["status"] == "diverged" and results["epochs_completed"] == 1 and results["test_acc"] is None


def test_huge_learning_rate_diverges_for_real(run_args, tmp_path):
    logdir = str(tmp_path / "run")
    code = main.main(run_args("mlp", "--logdir", logdir, "--optimizer", "sgd", "--lr", "1e30", epochs=2))
    assert code == 3 and read_results(logdir)["status"] == "diverged"


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw"])
def test_optimizers_follow_the_template(optimizer):
    built = build_optimizer(optimizer, [torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.8, weight_decay=0.01)
    template = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01),
                "momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, weight_decay=0.01),
                "adam": lambda p: torch.optim.Adam(p, lr=0.1),  # no weight decay
                "adamw": lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.01)}[optimizer](
        [torch.nn.Parameter(torch.ones(2))])
    # every hyperparameter (nesterov, dampening, betas, eps...) as the template's call gives it; only how the
    # update is computed (one fused kernel, capturable) may differ
    implementation = {"params", "fused", "foreach", "capturable", "differentiable"}

    def hyperparameters(built_optimizer):
        return {key: value for key, value in built_optimizer.param_groups[0].items() if key not in implementation}
    assert type(built) is type(template) and hyperparameters(built) == hyperparameters(template)
    assert built.param_groups[0]["weight_decay"] == (0 if optimizer == "adam" else 0.01)


def test_resume_extends_a_constant_rate_run_not_a_scheduled_one_and_says_when_nothing_is_left(run_args, tmp_path, capsys):
    constant, cosine = str(tmp_path / "constant"), str(tmp_path / "cosine")
    assert main.main(run_args("mlp", "--logdir", constant, epochs=1)) == 0
    assert main.main(run_args("mlp", "--logdir", constant, "--resume", epochs=2)) == 0
    assert read_results(constant)["epochs_completed"] == 2
    capsys.readouterr()
    assert main.main(run_args("mlp", "--logdir", constant, "--resume", epochs=2)) == 0
    assert (f"note: the checkpoint in {constant} has 2 epochs, and --epochs 2 asks for no more: nothing left to "
            "train (a larger --epochs trains on); the test set is evaluated") in capsys.readouterr().err
    assert read_results(constant)["epochs_completed"] == 2
    assert main.main(run_args("mlp", "--logdir", cosine, "--lr_schedule", "cosine", epochs=1)) == 0
    assert main.main(run_args("mlp", "--logdir", cosine, "--lr_schedule", "cosine", "--resume", epochs=2)) == 2
    assert "was made with epochs=1, not 2" in capsys.readouterr().err
    assert main.main(run_args("mlp", "--logdir", cosine, "--lr_schedule", "cosine", "--resume", epochs=1)) == 0
    assert "nothing left to train; the test set is evaluated" in capsys.readouterr().err


def test_a_run_that_replaces_an_earlier_one_says_so(run_args, tmp_path, capsys):
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 0
    assert "note:" not in capsys.readouterr().err
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 0
    assert (f"note: {os.path.join(logdir, 'results.json')} holds an earlier mlp run (completed after 1 epoch); "
            "this run replaces it (--resume would continue it instead)") in capsys.readouterr().err
    assert main.main(run_args("mlp", "--logdir", logdir, "--resume", epochs=2)) == 0
    assert "note:" not in capsys.readouterr().err


def test_a_checkpoint_from_an_older_version_is_checked_on_the_keys_it_recorded(run_args, tmp_path, capsys):
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, "--lr_schedule", "cosine", epochs=1)) == 0
    path = os.path.join(logdir, "checkpoint.pt")
    state = torch.load(path, weights_only=True)
    del state["signature"]["epochs"]  # as versions before the schedule's length was recorded wrote it
    torch.save(state, path)
    assert main.main(run_args("mlp", "--logdir", logdir, "--lr_schedule", "cosine", "--resume", epochs=1)) == 0
    assert main.main(run_args("mlp", "--logdir", logdir, "--lr_schedule", "onecycle", "--resume", epochs=1)) == 2
    assert "was made with lr_schedule='cosine', not 'onecycle'" in capsys.readouterr().err


def test_each_epoch_logs_when_it_ended_and_a_checkpoint_without_those_times_resumes(run_args, tmp_path):
    logdir = str(tmp_path / "run")
    before = time.time()
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=1)) == 0
    results = read_results(logdir)
    assert before < results["epoch_end_times"][0] < time.time()
    assert results["host"] == socket.gethostname() and results["device_id"] == "cpu"
    path = os.path.join(logdir, "checkpoint.pt")
    state = torch.load(path, weights_only=True)
    del state["history"]["epoch_end_times"]  # as versions before the epochs' times were logged wrote it
    torch.save(state, path)
    assert main.main(run_args("mlp", "--logdir", logdir, "--resume", epochs=2)) == 0
    [older, newer] = read_results(logdir)["epoch_end_times"]
    assert older is None and results["epoch_end_times"][0] < newer < time.time()


def test_a_gpu_is_identified_by_its_uuid_and_not_by_an_index_a_batch_system_may_renumber(monkeypatch):
    from types import SimpleNamespace

    properties = SimpleNamespace(uuid="58d1")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert engine.device_identity(torch.device("cuda")) == "GPU-58d1"
    properties = SimpleNamespace()  # a torch that does not give the UUID
    assert engine.device_identity(torch.device("cuda", 0)) is None


def test_a_cpu_is_described_with_its_number_of_threads(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # a study worker's share of the cores
    assert engine.describe_device(torch.device("cpu")).endswith(", 1 thread)")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert engine.describe_device(torch.device("cpu")).endswith(", 8 threads)")


def test_cuda_request_falls_back_to_cpu_with_a_warning():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.warns(UserWarning, match="CUDA is not available"):
        assert engine.resolve_device("cuda").type == "cpu"


def test_train_and_evaluate_importable_with_template_signatures(fake_data_dir):
    import argparse
    from training.cifar10 import load_cifar10
    from training.pipelines import TensorBatches
    from mlp import MLP
    data = load_cifar10(fake_data_dir)
    loader = TensorBatches(data.train_images, data.train_labels, 32, "cpu", train=True)
    model = MLP(3072, [16, 16], 10)
    args = argparse.Namespace(device="cpu", print_every=80)
    optimizer = torch.optim.AdamW(model.parameters())
    loss, acc, seconds = main.train(1, model, loader, optimizer, args)
    assert loss > 0 and 0 <= acc <= 1 and seconds > 0
    loss, acc, seconds = main.evaluate(1, model, loader, args, mode="val")
    assert loss > 0 and 0 <= acc <= 1
