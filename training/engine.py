"""The training loop: one epoch of training or evaluation, and ``fit``, which runs a whole
experiment from parsed flags to ``results.json``. The CLI, the notebook and the tests all use it."""
import contextlib
import json
import math
import os
import socket
import sys
import time
import warnings

import torch
from tqdm.auto import tqdm

from utils import cross_entropy_loss, seed_experiment

from . import class_accuracy, first_layer, hidden_units, persistence
from .cifar10 import load_cifar10, split_train_valid
from .code_version import code_version
from .devices import describe_device, device_identity, precision_hint, resolve_device, resolve_fast_path
from .errors import UserError, counted
from .models import build_model, count_parameters, load_model_config
from .optim import LRSchedule, build_optimizer, load_optimizer_state
from .pipelines import TensorBatches, torchvision_batches
from .steps import (GraphedTrainStep, TrainStep, autocast_context, correct_count, epoch_items, memory_format_for,
                    prepare_batch)

# settings that must match for --resume to continue a run rather than start a different one
RESUME_KEYS = ("model", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "seed", "pipeline",
               "valid_size", "lr_schedule", "warmup_fraction", "label_smoothing", "augment", "tta", "mix")


def _progress(dataloader, args, desc):
    return tqdm(dataloader, desc=desc, leave=False, dynamic_ncols=True,
                disable=getattr(args, "no_progress", False))


def _step_for(model, optimizer, args):
    """The eager step that ``train`` uses when the caller gives none (the template's notebook)."""
    return TrainStep(model, optimizer, args.device, precision=getattr(args, "precision", "fp32"),
                     channels_last=getattr(args, "channels_last", False),
                     label_smoothing=getattr(args, "label_smoothing", 0.0), mix=getattr(args, "mix", "none"))


def train(epoch, model, dataloader, optimizer, args, step=None):
    """Train ``model`` for one pass over ``dataloader``.

    Args:
        epoch: epoch number, for the progress bar.
        dataloader: a ``TensorBatches`` pipeline or any iterable of ``[images, labels]`` batches.
        optimizer: the model's optimizer.
        args: needs ``device`` and ``print_every``; ``precision``, ``channels_last`` and
            ``label_smoothing`` are read when present.
        step: the ``TrainStep`` to run (``fit`` passes a graphed one on CUDA); eager by default.

    Returns:
        ``(mean loss, accuracy, seconds)`` over the images of the epoch.
    """
    model.train()
    step = step or _step_for(model, optimizer, args)
    step.reset()
    start = time.perf_counter()
    bar = _progress(epoch_items(dataloader), args, f"epoch {epoch} train")
    for idx, item in enumerate(bar):
        step(dataloader, item)
        if idx % args.print_every == 0:
            bar.set_postfix(loss=f"{step.last_loss.item():.4f}")
    mean_loss, accuracy = step.means()  # waits for the device, so the time below is honest
    return mean_loss, accuracy, time.perf_counter() - start


@torch.no_grad()
def evaluate(epoch, model, dataloader, args, mode="val", confusion=None):
    """Mean loss and accuracy of ``model`` over ``dataloader``, without gradients. With ``args.tta``
    ``flip``, the logits of each image and of its mirror image are averaged. A ``confusion`` count
    (``class_accuracy.new_confusion``) gets each image added at its label and its prediction.

    Returns:
        ``(mean loss, accuracy, seconds)``.
    """
    model.eval()
    memory_format = memory_format_for(getattr(args, "channels_last", False))
    loss_sum = torch.zeros((), device=args.device)
    correct = torch.zeros((), device=args.device)
    seen = 0
    start = time.perf_counter()
    for item in _progress(epoch_items(dataloader), args, f"epoch {epoch} {mode}"):
        images, labels = prepare_batch(dataloader, item, args.device, memory_format)
        with autocast_context(args.device, getattr(args, "precision", "fp32")):
            logits = model(images)
            if getattr(args, "tta", "none") == "flip":
                logits = 0.5 * (logits.float() + model(images.flip(3)).float())
        loss_sum += cross_entropy_loss(logits, labels) * len(labels)
        correct += correct_count(logits, labels)
        if confusion is not None:
            class_accuracy.count_batch(confusion, logits, labels)
        seen += len(labels)
    return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1), time.perf_counter() - start


def make_batches(args, images, labels, train_mode, device):
    batch_size = args.batch_size if train_mode else args.eval_batch_size
    if args.pipeline == "torchvision":
        return torchvision_batches(images, labels, batch_size, train_mode, args.num_workers,
                                   pin_memory=device.type == "cuda", augment=args.augment)
    return TensorBatches(images, labels, batch_size, device, train_mode, augment=args.augment)


class EpochTable:
    """One fixed-width line per epoch."""
    COLUMNS = (("epoch", 5, "d"), ("train loss", 10, ".4f"), ("train acc", 9, ".4f"), ("valid loss", 10, ".4f"),
               ("valid acc", 9, ".4f"), ("seconds", 8, ".1f"), ("img/s", 8, ".0f"))

    def header(self):
        return " | ".join(f"{name:>{width}}" for name, width, _ in self.COLUMNS)

    def row(self, *values):
        return " | ".join(f"{value:>{width}{fmt}}" for value, (_, width, fmt) in zip(values, self.COLUMNS))


def _note_replaced_run(logdir, held):
    """Say so when a new run is about to overwrite the results of an earlier one in the same folder; ``held``:
    whether this run holds the folder, so that an earlier run that still says ``running`` is no longer running."""
    path = os.path.join(logdir, persistence.RESULTS_FILE)
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            earlier = json.load(f)
        epochs = counted(earlier["epochs_completed"], "epoch")
        how = f"{earlier['status']} after {epochs}"
        if earlier["status"] == "running" and held:  # stopped where it could not record it: SIGKILL, a full disk
            how = f"stopped after {epochs} without recording why: killed, its machine down or its disk full"
        what = f"an earlier {earlier['model']} run ({how})"
    except (OSError, ValueError, KeyError, TypeError):
        what = "an earlier run's results"
    print(f"note: {path} holds {what}; this run replaces it (--resume would continue it instead)", file=sys.stderr)


def _hold_logdir(logdir, held):
    """Make ``logdir`` if need be and hold it until ``held`` closes; return whether it is held (``logdir_held``),
    or raise ``LogdirBusy`` if another run holds it. A folder made here is removed when ``held`` closes if it is still
    empty: a run stopped by a problem found before its first epoch ended (``--compile`` without a compiler) leaves
    nothing behind."""
    made = not os.path.isdir(logdir)
    try:
        os.makedirs(logdir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --logdir {logdir} ({exc.strerror}); give a writable folder") from None
    if made:
        held.callback(_remove_if_empty, logdir)
    return held.enter_context(persistence.logdir_held(logdir))


def _remove_if_empty(folder):
    with contextlib.suppress(OSError):  # not empty: the run wrote its results
        os.rmdir(folder)


def fit(args, on_epoch=None, test=True):
    """Run one experiment as ``main.py`` does; return the results dictionary.

    Bad input raises ``UserError`` before anything is written. With ``args.logdir``, results.json
    and a checkpoint are rewritten after every epoch, so an interrupted run can be resumed; the folder is
    held while the run writes it, and ``LogdirBusy`` is raised if another run holds it.

    Args:
        args: the parsed flags of ``main.py``.
        on_epoch: called as ``on_epoch(epoch, history)`` after each epoch's validation; a true
            return value stops the run with status ``pruned`` (a hyperparameter search's pruner).
        test: evaluate on the test set once training completes; a search passes False so that
            no trial's configuration is ever chosen with test data in view.
    """
    with contextlib.ExitStack() as held:
        return _fit(args, on_epoch, test, held)


def _fit(args, on_epoch, test, held):
    from config import check_args, unread_flag_warnings

    problems = check_args(args)
    if problems:
        raise UserError(problems[0])
    for line in unread_flag_warnings(vars(args)):
        warnings.warn(line)
    model_config = load_model_config(args.model_config, args.model)
    signature = {key: getattr(args, key) for key in RESUME_KEYS}
    signature["model_config"] = model_config
    if args.lr_schedule != "constant":  # the schedule spans every epoch: another --epochs would bend it mid-run
        signature["epochs"] = args.epochs
    # A folder that exists is held before the data is read (a download, a copy to the GPU), so that a run that
    # still writes it, or a checkpoint made with other settings, is refused at once; a new folder is made only
    # once the data is read, so that a bad --data_dir leaves none behind.
    held_early = bool(args.logdir) and os.path.isdir(args.logdir)
    holds_logdir = False  # whether this run holds the folder (not where it cannot be locked)
    if held_early:
        holds_logdir = _hold_logdir(args.logdir, held)
    state = persistence.load_checkpoint(args.logdir, signature) if args.resume else None
    device = resolve_device(args.device)
    args.device = device
    seed_experiment(args.seed)
    data = load_cifar10(args.data_dir)
    data_sha1 = data.test_fingerprint()
    made_on = state["signature"].get("test_images_sha1", data_sha1) if args.resume else data_sha1  # older: unknown
    if made_on != data_sha1:
        raise UserError(f"--resume: the checkpoint in {args.logdir} was trained on another copy of CIFAR-10 (its test "
                        f"images' SHA-1 is {made_on}, not {data_sha1} as in --data_dir {args.data_dir}); resume with "
                        "the copy it was trained on, or start again in a new --logdir")
    signature["test_images_sha1"] = data_sha1
    train_index, valid_index = split_train_valid(len(data.train_labels), args.valid_size, args.seed)
    loaders = {
        "train": make_batches(args, data.train_images[train_index], data.train_labels[train_index], True, device),
        "valid": make_batches(args, data.train_images[valid_index], data.train_labels[valid_index], False, device),
        "test": make_batches(args, data.test_images, data.test_labels, False, device),
    }
    resolve_fast_path(args, device)
    model = build_model(args.model, model_config).to(device)
    pictured = first_layer.pictured_layer(model)
    initial_first_layer = pictured[1].detach().clone() if pictured else None  # what training moves it from
    if args.visualize and not hasattr(model, "visualize"):  # said now, not after the whole run
        warnings.warn(f"--visualize: {args.model} has no first-layer visualisation (resnet18 and mlpmixer have "
                      "one); the run trains without it")
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(args.optimizer, model.parameters(), args.lr, args.momentum, args.weight_decay,
                                capturable=args.cuda_graph)
    if args.logdir and not held_early:
        holds_logdir = _hold_logdir(args.logdir, held)
    if args.logdir and not args.resume:
        _note_replaced_run(args.logdir, holds_logdir)

    history = {key: [] for key in ("train_losses", "valid_losses", "train_accs", "valid_accs", "train_seconds",
                                   "valid_seconds", "train_images_per_second", "epoch_end_times")}
    first_epoch = 0
    if args.resume:
        model.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"])
        history, first_epoch = state["history"], state["epoch"]
        history.setdefault("epoch_end_times", [None] * first_epoch)  # a checkpoint older than this key
        persistence.set_rng_state(state["rng"])
        if first_epoch >= args.epochs:
            more = " (a larger --epochs trains on)" if args.lr_schedule == "constant" else ""
            print(f"note: the checkpoint in {args.logdir} has {first_epoch} epochs, and --epochs {args.epochs} asks "
                  f"for no more: nothing left to train{more}; the test set is evaluated", file=sys.stderr)
            args.epochs = first_epoch  # what results.json records: the epochs this run trained, not fewer
    steps_per_epoch = len(loaders["train"])
    schedule = None if args.lr_schedule == "constant" else LRSchedule(
        args.lr_schedule, args.lr, args.epochs * steps_per_epoch, args.warmup_fraction)
    step_class = GraphedTrainStep if args.cuda_graph else TrainStep
    step = step_class(model, optimizer, device, precision=args.precision, channels_last=args.channels_last,
                      label_smoothing=args.label_smoothing, schedule=schedule,
                      first_step=first_epoch * steps_per_epoch,
                      compiled_model=torch.compile(model) if args.compile else None, mix=args.mix)
    if args.resume and step.scaler is not None and state.get("scaler"):
        step.scaler.load_state_dict(state["scaler"])

    results = {
        "model": args.model, "model_config": model_config,
        "args": {key: (str(value) if isinstance(value, torch.device) else value) for key, value in vars(args).items()},
        "seed": args.seed, "device": device.type, "device_name": describe_device(device),
        "host": socket.gethostname(), "device_id": device_identity(device),
        "torch_version": torch.__version__, "code_version": code_version(), "pipeline": args.pipeline,
        "num_params": count_parameters(model),
        "data": {"dir": os.path.abspath(args.data_dir), "test_images_sha1": data_sha1},
        "split": {"train": len(train_index), "valid": len(valid_index), "test": len(data.test_labels),
                  "disjoint": True},
        "test_confusion": None, "hidden_units": None, "first_layer": None,
    }

    def record(status, test=(None, None), error=None):
        results.update(history)
        results.update(status=status, epochs_completed=len(history["train_losses"]),
                       test_loss=persistence.finite_or_none(test[0]), test_acc=persistence.finite_or_none(test[1]),
                       error=error)
        if history["valid_accs"]:
            best = max(range(len(history["valid_accs"])), key=history["valid_accs"].__getitem__)
            results.update(best_valid_acc=history["valid_accs"][best], best_epoch=best + 1)
        if args.logdir:
            persistence.write_json(os.path.join(args.logdir, persistence.RESULTS_FILE), results)

    table = EpochTable()
    print(f"{args.model}: {results['num_params']:,} parameters on {results['device_name']}, "
          f"{args.pipeline} pipeline, {args.precision}{precision_hint(args.precision, device)}"
          f"{', channels-last' if args.channels_last else ''}, "
          f"CUDA graph {'on' if args.cuda_graph else 'off'}"
          f"{', compiled' if args.compile else ''}, "
          f"split {len(train_index)}/{len(valid_index)}/{len(data.test_labels)}")
    print(table.header())
    status = "running"
    test_loss = test_acc = test_confusion = divergence = None
    in_on_epoch = False  # what the caller's on_epoch raises (a study's handover of the run) is not the run failing
    try:
        for epoch in range(first_epoch, args.epochs):
            train_loss, train_acc, train_time = train(epoch + 1, model, loaders["train"], optimizer, args, step)
            divergence = (None if math.isfinite(train_loss)
                          else f"the training loss was {train_loss} in epoch {epoch + 1}")
            if not divergence:
                valid_loss, valid_acc, valid_time = evaluate(epoch + 1, model, loaders["valid"], args)
                if not math.isfinite(valid_loss):  # the epoch's last steps broke the weights after their loss was taken
                    divergence = f"the validation loss was {valid_loss} after epoch {epoch + 1}"
            if divergence:
                status = "diverged"
                print(f"{divergence}: the run diverged and stops (try a smaller --lr)", file=sys.stderr)
                break
            logged = {"train_losses": train_loss, "valid_losses": valid_loss, "train_accs": train_acc,
                      "valid_accs": valid_acc, "train_seconds": train_time, "valid_seconds": valid_time,
                      "train_images_per_second": len(train_index) / train_time, "epoch_end_times": time.time()}
            for key, value in logged.items():
                history[key].append(persistence.finite_or_none(value))
            if args.logdir:  # before the row is printed: a stop while it is (a closed pipe) finds the epoch saved
                persistence.save_checkpoint(args.logdir, model, optimizer, epoch + 1, history, signature, step.scaler)
                record("running")
            tqdm.write(table.row(epoch + 1, train_loss, train_acc, valid_loss, valid_acc, train_time + valid_time,
                                 len(train_index) / train_time))
            in_on_epoch = True
            if on_epoch is not None and on_epoch(epoch + 1, history):
                status = "pruned"
                print(f"pruned after epoch {epoch + 1}")
                break
            in_on_epoch = False
        if status == "running":
            status = "testing"
            if test:
                confusion = class_accuracy.new_confusion(device)
                test_loss, test_acc, _ = evaluate(args.epochs, model, loaders["test"], args, mode="test",
                                                  confusion=confusion)
                test_confusion = class_accuracy.confusion_record(confusion)  # logged with the test accuracy
            if args.model == "mlp":  # the evidence for Problem 4's question of why one activation trains best
                results["hidden_units"] = hidden_units.hidden_unit_statistics(model, loaders["valid"], device)
            if pictured:  # the numbers behind the first-layer pictures that Problem 4 asks to compare
                results["first_layer"] = first_layer.first_layer_statistics(model, initial_first_layer)
            status = "completed"
    except KeyboardInterrupt:
        testing = status == "testing"
        status = "interrupted"
        epochs = counted(len(history["train_losses"]), "finished epoch")
        kept = f"results.json keeps the {epochs}" if args.logdir else f"{epochs}, not saved (no --logdir)"
        print(f"\ninterrupted{' during the test evaluation' if testing else ''}: {kept}", file=sys.stderr)
    except Exception as exc:
        # A crash (a GPU out of memory, a CUDA error) marks results.json failed, with the error, once this run has
        # written it: a run that fails in its first epoch leaves the folder as it found it. A UserError (a full
        # disk) stops a run that --resume continues as it is, and is said in one line by whoever catches it.
        if history["train_losses"] and not in_on_epoch and not isinstance(exc, UserError):
            with contextlib.suppress(UserError):  # the disk may refuse this too; the crash is what is said
                record("failed", error=f"{type(exc).__name__}: {exc}")
                if args.logdir:
                    exc._epochs_kept = len(history["train_losses"])
        raise

    if status == "completed":
        results["test_confusion"] = test_confusion
        record(status, (test_loss, test_acc))
        if results["test_confusion"]:
            print(class_accuracy.summary_line(results["test_confusion"]))
        if results["hidden_units"]:
            print(hidden_units.summary_line(results["hidden_units"]))
        if results["first_layer"]:
            print(first_layer.summary_line(results["first_layer"]))
        tested = f"test loss {test_loss:.4f}, test accuracy {test_acc:.4f}" if test else "test set not used"
        print(f"best validation accuracy {results.get('best_valid_acc', float('nan')):.4f} "
              f"(epoch {results.get('best_epoch')}); {tested}")
        if args.visualize and hasattr(model, "visualize"):
            for path in _visualize(model, args.logdir):
                print(f"wrote {path}")
    else:
        record(status, error=divergence)
    return results


def epochs_kept(exc):
    """How many finished epochs results.json keeps, marked failed, of the run that ``exc`` stopped; None where that run
    recorded no failure (it stopped in its first epoch, had no --logdir, or the disk refused the record). Read from
    the exception, not the file: a file that says failed with the same error may be an earlier run's."""
    return getattr(exc, "_epochs_kept", None)


def _visualize(model, logdir):
    """The files that ``model``'s visualisation wrote into ``logdir`` after its run completed: none named where its
    ``visualize`` returns nothing, as the template's does."""
    try:
        return model.visualize(logdir) or []
    except OSError as exc:
        if exc.errno is None:  # the drawing's own error, not the system's (PIL: "cannot write mode RGBA as JPEG")
            raise
        # a full disk, a quota: results.json already holds the completed run
        raise UserError(f"--visualize: cannot write into {logdir} ({exc.strerror}); make room on that disk "
                        "(or under your quota), then rerun with the same flags and --resume: it tests the completed "
                        "run again and writes the visualisation") from None
