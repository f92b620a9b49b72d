"""A run that diverges (a loss that is not finite in training or validation) stops as diverged, with strict JSON;
a test loss past the precision's range is logged as null in a completed run."""
import os
import re

import main
from training import engine
from helpers import read_results


def test_a_test_loss_that_overflowed_is_logged_as_null_and_the_run_completes(run_args, tmp_path, monkeypatch):
    """The test set is evaluated with the weights that the last validation found sound; a validation loss that is
    not finite stops the run as diverged instead (test_a_last_step_that_breaks_the_weights_is_a_divergence...)."""
    evaluate = engine.evaluate

    def overflowing(*args, **kwargs):  # as a logit past the precision's range would give
        loss, acc, seconds = evaluate(*args, **kwargs)
        return float("inf") if kwargs.get("mode") == "test" else loss, acc, seconds
    monkeypatch.setattr(engine, "evaluate", overflowing)
    logdir = str(tmp_path / "run")
    assert main.main(run_args("mlp", "--logdir", logdir, epochs=2)) == 0
    results = read_results(logdir)  # strict JSON: no NaN, no Infinity
    assert results["status"] == "completed" and None not in results["valid_losses"]
    assert results["test_loss"] is None and 0 <= results["test_acc"] <= 1


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
    assert results["error"] == "the training loss was nan in epoch 2"


def test_huge_learning_rate_diverges_for_real(run_args, tmp_path):
    logdir = str(tmp_path / "run")
    code = main.main(run_args("mlp", "--logdir", logdir, "--optimizer", "sgd", "--lr", "1e30", epochs=2))
    assert code == 3 and read_results(logdir)["status"] == "diverged"


def test_a_last_step_that_breaks_the_weights_is_a_divergence_not_a_completed_run(run_args, tmp_path, capsys):
    # one batch an epoch: the step takes a finite loss, then leaves the weights that the validation finds broken
    logdir = str(tmp_path / "run")
    code = main.main(run_args("mlp", "--logdir", logdir, "--optimizer", "sgd", "--lr", "1e300", "--batch_size", "128",
                              epochs=1))
    results = read_results(logdir)
    assert code == 3 and results["status"] == "diverged" and results["epochs_completed"] == 0
    assert re.fullmatch(r"the validation loss was (nan|inf) after epoch 1", results["error"])
    assert results["test_acc"] is None and results["test_loss"] is None
    assert f"{results['error']}: the run diverged and stops (try a smaller --lr)" in capsys.readouterr().err
