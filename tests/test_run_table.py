"""``runs.csv`` and ``epochs.csv`` beside the report: every run and every epoch of the fixture logs, with the values
their files logged, at full precision."""
import csv
import json
import os

import pytest

from report_logs import markdown_of, write_fixture_logs, write_run
from studies.definitions import STUDIES
from studies.run_table import RUN_COLUMNS
from studies.run_values import epoch_seconds


def _read_csv(out, name):
    with open(os.path.join(out, "report", name), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _results(out, row):
    with open(os.path.join(out, row["study"], "runs", row["run"], "results.json")) as f:
        return json.load(f)


@pytest.fixture
def logs(tmp_path):
    out = write_fixture_logs(str(tmp_path / "runs"))
    write_run(out, "resnet18_lr", "lr-0.01_seed-42", {"optimizer": "adam", "lr": 0.01}, [0.3, 0.35],
              args={"optimizer": "adamw", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                    "lr_schedule": "constant", "warmup_fraction": 0.2},
              model_config={"num_classes": 10, "hidden_sizes": [1024, 512]},
              logged={"valid_losses": [2.0, None],  # a loss that was not finite, logged as null
                      "code_version": {"commit": "0123456789abcdef0123456789abcdef01234567", "modified": True}})
    markdown_of(out)
    return out


def test_runs_csv_has_every_run_of_every_study_with_its_logged_values(logs):
    rows = _read_csv(logs, "runs.csv")
    folders = [(study, name) for study in STUDIES for name in sorted(os.listdir(os.path.join(logs, study, "runs")))]
    assert [(row["study"], row["run"]) for row in rows] == folders
    for row in rows:
        results = _results(logs, row)
        assert float(row["final_valid_acc"]) == results["valid_accs"][-1]  # every digit: 0.42000000000000004 too
        assert row["test_acc"] == ("" if results["test_acc"] is None else repr(results["test_acc"]))
        assert int(row["epochs_completed"]) == len(results["train_losses"])
        assert float(row["train_seconds_per_epoch"]) == epoch_seconds(results)  # as the report's tables have it
    by_run = {(row["study"], row["run"]): row for row in rows}
    final = by_run["resnet18_best", "final_seed-43"]
    assert (final["role"], final["trial"], final["seed"], final["outcome"]) == ("final", "2", "43", "completed")
    assert (final["optimizer"], final["lr"], final["momentum"], final["weight_decay"]) == ("momentum", "0.1", "0.9",
                                                                                          "0.0005")
    # its first epoch (6 s: autotuning, capture) left out of its seconds per epoch, as in the report
    assert (final["train_seconds_per_epoch"], final["train_images_per_second"]) == ("2.0", "22500.0")
    assert final["model.num_classes"] == "10"
    assert by_run["resnet18_lr", "lr-0.1_seed-42"]["outcome"] == "diverged"
    assert by_run["mlpmixer_best", "trial-0001"]["outcome"] == "pruned"


def test_runs_csv_leaves_empty_what_a_run_did_not_train_with_and_writes_lists_as_json(logs):
    row = {(row["study"], row["run"]): row for row in _read_csv(logs, "runs.csv")}["resnet18_lr", "lr-0.01_seed-42"]
    assert (row["optimizer"], row["weight_decay"], row["lr_schedule"]) == ("adamw", "0.0005", "constant")
    assert row["momentum"] == "" and row["warmup_fraction"] == ""  # not read by adamw, nor by a constant rate
    assert json.loads(row["model.hidden_sizes"]) == [1024, 512]
    assert list(row)[:len(RUN_COLUMNS)] == list(RUN_COLUMNS)


def test_runs_csv_names_the_pytorch_and_the_code_that_each_run_trained_with(logs):
    rows = {(row["study"], row["run"]): row for row in _read_csv(logs, "runs.csv")}
    row = rows["resnet18_lr", "lr-0.01_seed-42"]
    assert (row["torch_version"], row["code_commit"], row["code_modified"]) == (
        "2.11.0", "0123456789abcdef0123456789abcdef01234567", "true")
    older = rows["resnet18_lr", "lr-0.001_seed-42"]  # logged before runs recorded their code
    assert (older["torch_version"], older["code_commit"], older["code_modified"]) == ("2.11.0", "", "")


def test_epochs_csv_has_every_logged_epoch_of_every_run(logs):
    rows = _read_csv(logs, "epochs.csv")
    runs = _read_csv(logs, "runs.csv")
    assert len(rows) == sum(int(run["epochs_completed"]) for run in runs)
    for row in rows:
        results = _results(logs, row)
        epoch = int(row["epoch"]) - 1
        assert float(row["train_loss"]) == results["train_losses"][epoch]
        assert float(row["valid_acc"]) == results["valid_accs"][epoch]
        assert float(row["train_seconds"]) == results["train_seconds"][epoch]
    nulled = [row for row in rows if row["run"] == "lr-0.01_seed-42"]
    assert [row["valid_loss"] for row in nulled] == ["2.0", ""]
    assert [row["valid_seconds"] for row in nulled] == ["", ""]  # not in these logs: left empty, not made up


def test_a_run_whose_results_cannot_be_read_keeps_its_row_with_the_reason_and_no_epochs(logs):
    with open(os.path.join(logs, "mlp_activation", "runs", "activation-tanh_seed-42", "results.json"), "w") as f:
        f.write("{not json")
    markdown_of(logs)
    row = {row["run"]: row for row in _read_csv(logs, "runs.csv")}["activation-tanh_seed-42"]
    assert row["outcome"] == "completed (results.json unreadable)"
    assert row["final_valid_acc"] == row["test_acc"] == row["epochs_completed"] == ""
    assert "activation-tanh_seed-42" not in {row["run"] for row in _read_csv(logs, "epochs.csv")}
