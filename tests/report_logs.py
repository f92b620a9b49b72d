"""Logs of study runs written with known numbers (``results.json`` and ``trial.json`` as the workers write them),
for the report's tests."""
import json
import os
from unittest import mock

import numpy as np
from matplotlib.image import imsave

from studies import report
from studies.report import build_report
from training.cifar10 import CLASS_NAMES

DEVICE = "NVIDIA H100 80GB HBM3"


def write_run(out, study, name, settings, valid_accs, outcome="completed", role="grid", seed=42, test_acc=None,
              num_params=1000, seconds=2.0, model_config=None, args=None, trial=0, source_trial=None, logged=None):
    folder = os.path.join(out, study, "runs", name)
    os.makedirs(folder)
    epochs = len(valid_accs)
    results = {
        "train_losses": [2.0 - 0.1 * i for i in range(epochs)], "valid_losses": [2.1 - 0.1 * i for i in range(epochs)],
        "train_accs": [a + 0.05 for a in valid_accs], "valid_accs": valid_accs,
        "train_seconds": [seconds * 3] + [seconds] * (epochs - 1), "epochs_completed": epochs,
        "best_valid_acc": max(valid_accs) if valid_accs else None, "test_acc": test_acc, "test_loss": None,
        "best_epoch": valid_accs.index(max(valid_accs)) + 1 if valid_accs else None,
        "status": "diverged" if outcome == "diverged" else "completed", "num_params": num_params,
        "device_name": DEVICE, "torch_version": "2.11.0", "model_config": model_config or {},
        "data": {"dir": "/data", "test_images_sha1": "a7e2580c5033"}, "args": {"precision": "bf16", **(args or {})},
        "split": {"train": 45000, "valid": 5000, "test": 10000, "disjoint": True}, **(logged or {}),
    }
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(folder, "trial.json"), "w") as f:
        json.dump({"study": study, "trial": trial, "role": role, "settings": settings, "seed": seed,
                   "source_trial": source_trial, "outcome": outcome,
                   "value": valid_accs[-1] if outcome == "completed" else None,
                   "error": None}, f)
    return folder


FIRST_LAYERS = {  # each model's first_layer as a run logs it
    "resnet18": {"weight": "conv1.weight", "units": 64, "measure": "colour_share", "moved": 1.25, "initial": 0.6667,
                 "trained": 0.41, "change": 0.35},
    "mlpmixer": {"weight": "blocks.0.mlp_tokens.fc1.weight", "units": 128, "measure": "local_share", "moved": 0.33,
                 "initial": 0.148, "trained": 0.171, "change": 0.254},
}


def logged_confusion(correct, taken_for=(), per_class=1000):
    """``test_confusion`` as a run logs it: of each class's ``per_class`` test images, ``correct[k]`` predicted as
    class k and the rest as the class that ``taken_for`` (pairs of class numbers) names for it, else the next one."""
    counts = [[0] * len(CLASS_NAMES) for _ in CLASS_NAMES]
    instead = dict(taken_for)
    for k, right in enumerate(correct):
        counts[k][k] = right
        counts[k][instead.get(k, (k + 1) % len(CLASS_NAMES))] += per_class - right
    return {"classes": list(CLASS_NAMES), "counts": counts}


def write_fixture_logs(out):
    """Logs of every study: grids with two seeds, a diverged run, searches with a pruned trial and final runs."""
    for activation, base in (("relu", 0.50), ("tanh", 0.45), ("sigmoid", 0.40)):
        for seed, shift in ((42, 0.0), (43, 0.02)):
            write_run(out, "mlp_activation", f"activation-{activation}_seed-{seed}", {"activation": activation},
                      [base - 0.1, base + shift], seed=seed, test_acc=base, args={"epochs": 15},
                      logged={"test_confusion": logged_confusion([int(base * 1000)] * 10)})
    for lr, acc in ((0.1, None), (0.001, 0.80), (0.0001, 0.70)):
        write_run(out, "resnet18_lr", f"lr-{lr}_seed-42", {"optimizer": "adam", "lr": lr},
                  [0.1] if acc is None else [acc - 0.2, acc], outcome="diverged" if acc is None else "completed",
                  test_acc=acc, args={"epochs": 2})
    for patch, params, seconds in ((2, 3_000_000, 4.0), (4, 2_000_000, 1.0), (8, 1_000_000, 0.5)):
        write_run(out, "mlpmixer_patch", f"patch_size-{patch}_seed-42", {"patch_size": patch}, [0.6, 0.7],
                  test_acc=0.7, num_params=params, seconds=seconds)
    best = {"optimizer": "momentum", "lr": 0.1, "weight_decay": 5e-4, "epochs": 2, "batch_size": 512,
            "lr_schedule": "onecycle", "warmup_fraction": 0.2, "label_smoothing": 0.1}
    for study, model, picture in (("resnet18_best", "resnet18", "resnet18_kernels_rgb.png"),
                                  ("mlpmixer_best", "mlpmixer", "mlpmixer_token_mixing.png")):
        write_run(out, study, "trial-0000", best, [0.8, 0.9], role="search", trial=0)
        write_run(out, study, "trial-0001", {**best, "lr": 0.3}, [0.2], role="search", outcome="pruned", trial=1)
        final = write_run(out, study, "final_seed-43", best, [0.8, 0.88], role="final", seed=43, trial=2,
                          source_trial=0, test_acc=0.93, args={**best, "momentum": 0.9, "seed": 43},
                          model_config={"num_classes": 10},
                          logged={"first_layer": FIRST_LAYERS[model], "test_confusion": logged_confusion([930] * 10)})
        imsave(os.path.join(final, picture), np.random.default_rng(0).random((40, 40, 3)))
    return out


def write_activation_runs(tmp_path, finals_by_activation):
    """mlp_activation runs, one per final validation accuracy of each ``(activation, finals)``, seeds 42, 43...;
    returns their --out."""
    out = str(tmp_path / "runs")
    for activation, finals in finals_by_activation:
        for seed, final in enumerate(finals, start=42):
            write_run(out, "mlp_activation", f"activation-{activation}_seed-{seed}", {"activation": activation},
                      [0.2, final], seed=seed, test_acc=final)
    return out


HIDDEN_UNITS = {"activation": "relu", "derivative_peak": 1.0, "flat_below": 0.1, "images": 5000, "layers": []}


def hidden_units(activation, peak, *layers):
    """``hidden_units`` as a run logs it, one ``(units, mean derivative, flat share, units always flat)`` a layer."""
    keys = ("units", "mean_derivative", "flat_share", "units_always_flat")
    return {**HIDDEN_UNITS, "activation": activation, "derivative_peak": peak,
            "layers": [dict(zip(keys, layer)) for layer in layers]}


def markdown_of(out):
    """The text of the report of the logs in ``out``, built without its PDF (seconds saved for the tests that
    read the Markdown; the PDF's own tests build it)."""
    with mock.patch.object(report, "write_pdf", lambda *args, **kwargs: None):
        with open(build_report(out)[0]) as f:
            return f.read()
