"""Every run of every study as a row of ``runs.csv``, and every epoch of every run as a row of ``epochs.csv``,
written beside the report: the values that its tables round, at full precision, for a student's own tables and
plots (a spreadsheet, pandas, pgfplots)."""
import csv
import io
import json
import os

from training.persistence import atomic_write

from .run_values import epoch_seconds, final_valid_acc, train_images_per_second
from .sections import HYPERPARAMETERS, read_by, run_outcome

RUN_COLUMNS = ("study", "run", "role", "trial", "seed", "outcome", "epochs_completed", "final_valid_acc",
               "best_valid_acc", "best_epoch", "test_acc", "test_loss", "num_params", "train_seconds_per_epoch",
               "train_images_per_second", "device_name", "torch_version", "code_commit", "code_modified")
EPOCH_COLUMNS = ("study", "run", "epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "train_seconds",
                 "valid_seconds")
# results.json's per-epoch lists, by the column that each fills
EPOCH_LISTS = {"train_loss": "train_losses", "train_acc": "train_accs", "valid_loss": "valid_losses",
               "valid_acc": "valid_accs", "train_seconds": "train_seconds", "valid_seconds": "valid_seconds"}
MODEL_PREFIX = "model."  # the model config's keys, as columns beside the flags


def run_rows(all_runs):
    """``(columns, rows)``: one row per run; after ``RUN_COLUMNS``, the hyperparameters that some run's training
    read (``sections.read_by``: a cell stays empty where a run's did not, as ``--momentum`` with adamw) and the
    model config's keys."""
    rows = []
    for run in all_runs:
        results, trial = run["results"], run["trial"] or {}
        args, code = results.get("args", {}), results.get("code_version") or {}
        row = {"study": run["study"], "run": run["name"], "role": trial.get("role"), "trial": trial.get("trial"),
               "seed": args.get("seed", trial.get("seed")), "outcome": run_outcome(run),
               "final_valid_acc": final_valid_acc(run), "train_seconds_per_epoch": epoch_seconds(results),
               "train_images_per_second": train_images_per_second(results),
               **{key: results.get(key) for key in ("epochs_completed", "best_valid_acc", "best_epoch", "test_acc",
                                                    "test_loss", "num_params", "device_name", "torch_version")},
               "code_commit": code.get("commit"), "code_modified": code.get("modified"),
               **{key: args[key] for key in read_by(args) if key != "seed"},
               **{MODEL_PREFIX + key: value for key, value in results.get("model_config", {}).items()}}
        rows.append(row)
    named = set().union(*rows) if rows else set()
    columns = list(RUN_COLUMNS) + [key for key in HYPERPARAMETERS if key in named and key not in RUN_COLUMNS]
    columns += sorted(key for key in named if key.startswith(MODEL_PREFIX))
    return columns, rows


def epoch_rows(all_runs):
    """One row per logged epoch of each run (a value a run logged as not finite stays empty)."""
    rows = []
    for run in all_runs:
        results = run["results"]
        for index in range(len(results.get("train_losses", []))):
            row = {"study": run["study"], "run": run["name"], "epoch": index + 1}
            for column, key in EPOCH_LISTS.items():
                values = results.get(key, [])
                row[column] = values[index] if index < len(values) else None
            rows.append(row)
    return list(EPOCH_COLUMNS), rows


def _cell(value):
    """A value as text that reads back as it was logged: every digit of a number, lists as JSON, None empty."""
    if value is None:
        return ""
    if isinstance(value, (bool, list, dict)):
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def write_csv(path, columns, rows):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_cell(row.get(column)) for column in columns] for row in rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")))


def write_run_tables(report_dir, all_runs):
    """``runs.csv`` and ``epochs.csv`` in ``report_dir``; returns their paths."""
    paths = [os.path.join(report_dir, "runs.csv"), os.path.join(report_dir, "epochs.csv")]
    for path, (columns, rows) in zip(paths, (run_rows(all_runs), epoch_rows(all_runs))):
        write_csv(path, columns, rows)
    return paths
