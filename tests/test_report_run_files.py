"""How the report reads the files a run writes: a file it cannot parse, and values of the wrong shape, are named
as unreadable while the rest of the report still builds; the values a run may write as null are read."""
import json
import os
import warnings

import pytest

from report_logs import HIDDEN_UNITS, markdown_of, write_fixture_logs, write_run
from studies import report


def test_a_report_names_the_run_files_it_cannot_read_and_goes_on(tmp_path):
    out = str(tmp_path / "runs")
    runs = os.path.join(out, "mlp_activation", "runs")
    for activation, accs in (("relu", [0.5, 0.6]), ("tanh", [0.3, 0.4]), ("sigmoid", [0.2, 0.25])):
        write_run(out, "mlp_activation", f"activation-{activation}_seed-42", {"activation": activation}, accs)
    with open(os.path.join(runs, "activation-tanh_seed-42", "results.json"), "w") as f:
        f.write('{"valid_accs": [0.3,')  # cut off
    with open(os.path.join(runs, "activation-sigmoid_seed-42", "trial.json"), "w") as f:
        f.write('{"trial": 2, "role": "grid"}')  # no settings, no outcome
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = markdown_of(out)
    tanh, sigmoid = (os.path.join(runs, f"activation-{name}_seed-42") for name in ("tanh", "sigmoid"))
    assert (f"\n- Unreadable files, whose values are missing below: {sigmoid}/trial.json (no 'settings' key); "
            f"{tanh}/results.json (invalid JSON at line 1 column 21).\n") in text
    assert "| activation-tanh_seed-42 | completed (results.json unreadable) | - | - |" in text
    assert "| activation-sigmoid_seed-42 | unknown (trial.json unreadable) | 2 | 0.2500 |" in text
    assert "activation-sigmoid_seed-42: its outcome is unknown, since its trial.json is unreadable." in text
    assert "activation-sigmoid_seed-42 has not finished" not in text
    assert "highest first: relu: 0.6000." in text  # the run that could be read still ranks


def _set_value(path, key, value):
    with open(path) as f:
        data = json.load(f)
    with open(path, "w") as f:
        json.dump({**data, key: value}, f)


@pytest.mark.parametrize("file, key, value, why", [
    ("results.json", "valid_accs", "0.5", "'valid_accs' is not a list of numbers or nulls: \"0.5\""),
    ("results.json", "train_seconds", [1.0, "x"], "'train_seconds' is not a list of numbers: [1.0, \"x\"]"),
    ("results.json", "train_seconds", [1.0, None], "'train_seconds' is not a list of numbers: [1.0, null]"),
    ("results.json", "train_losses", {"epoch": 1},
     "'train_losses' is not a list of numbers or nulls: {\"epoch\": 1}"),
    ("results.json", "test_acc", "0.9", "'test_acc' is not a number: \"0.9\""),
    ("results.json", "num_params", 1.5, "'num_params' is not a whole number: 1.5"),
    ("results.json", "epochs_completed", True, "'epochs_completed' is not a whole number: true"),
    ("results.json", "args", {"epochs": "15"}, "'args' is not an object whose epochs is a whole number: "
                                               "{\"epochs\": \"15\"}"),
    ("results.json", "split", {"train": "all"},
     "'split' is not an object of whole-number counts: {\"train\": \"all\"}"),
    ("results.json", "data", 3, "'data' is not an object: 3"),
    ("results.json", "hidden_units", {"layers": []},
     "'hidden_units' is not an object of hidden-layer measures: {\"layers\": []}"),
    ("results.json", "hidden_units", {**HIDDEN_UNITS, "layers": [{"units": 2}]},
     "'hidden_units' is not an object of hidden-layer measures: {\"activation\": \"relu\", \"derivative_peak\""),
    ("results.json", "first_layer", {"weight": "conv1.weight", "units": 64, "measure": None, "moved": "0.5"},
     "'first_layer' is not an object of first-layer measures: {\"weight\": \"conv1.weight\", \"units\": 64, "),
    ("results.json", "test_confusion", {"classes": ["cat", "dog"], "counts": [[3, 1], [2]]},
     "'test_confusion' is not an object of class names and a square count of test images per class pair: "
     "{\"classes\": [\"cat\", \"dog\"], \"counts\": [["),
    ("results.json", "test_confusion", {"classes": ["cat"], "counts": [[-1]]},
     "'test_confusion' is not an object of class names and a square count of test images per class pair: "
     "{\"classes\": [\"cat\"], \"counts\": [[-1]]}"),
    ("results.json", "code_version", {"commit": "abc", "modified": "no"},
     "'code_version' is not an object of a commit and whether it was modified: "
     "{\"commit\": \"abc\", \"modified\": \"no\"}"),
    ("trial.json", "settings", "relu", "'settings' is not an object: \"relu\""),
    ("trial.json", "trial", "2", "'trial' is not a whole number: \"2\""),
    ("trial.json", "outcome", 1, "'outcome' is not a string: 1"),
    ("trial.json", "value", "high", "'value' is not a number: \"high\""),
    ("trial.json", "held", "epochs", "'held' is not a list of setting names: \"epochs\""),
])
def test_a_run_file_with_a_value_the_report_cannot_compute_with_is_named_as_unreadable(file, key, value, why,
                                                                                       tmp_path):
    folder = write_run(str(tmp_path), "mlp_activation", "activation-relu_seed-42", {"activation": "relu"}, [0.5, 0.6])
    _set_value(os.path.join(folder, file), key, value)
    [run] = report.load_runs(str(tmp_path / "mlp_activation"))
    assert run["unreadable"] == [(os.path.join(folder, file), why)]
    if file == "results.json":  # the run's values are missing; its other file is still read
        assert run["results"] == {} and run["trial"]["settings"] == {"activation": "relu"}
    else:
        assert run["trial"] is None and run["results"]["valid_accs"] == [0.5, 0.6]


@pytest.mark.parametrize("file", ["results.json", "trial.json"])
@pytest.mark.parametrize("content, why", [(b"[0.5, 0.6]", "not a JSON object"),
                                          (b'{"note": "caf\xe9"}', "not UTF-8 text (byte 14)"),
                                          ('{"note": 1}'.encode("utf-16"), "not UTF-8 text (byte 1)"),
                                          (None, "Is a directory")], ids=["list", "latin-1", "utf-16", "folder"])
def test_a_run_file_that_is_no_json_object_is_named_with_why(file, content, why, tmp_path):
    """A hand's edit (a list, a file saved in another encoding) or a folder in the file's place."""
    folder = write_run(str(tmp_path), "mlp_activation", "activation-relu_seed-42", {"activation": "relu"}, [0.5, 0.6])
    path = os.path.join(folder, file)
    if content is None:
        os.remove(path)
        os.mkdir(path)
    else:
        with open(path, "wb") as f:
            f.write(content)
    [run] = report.load_runs(str(tmp_path / "mlp_activation"))
    assert run["unreadable"] == [(path, why)]


@pytest.mark.parametrize("key, value", [("epochs_completed", None), ("test_acc", None), ("best_epoch", None),
                                        ("valid_losses", [None, 1.0]), ("device_name", 7), ("args", {}),
                                        ("hidden_units", None), ("first_layer", None), ("test_confusion", None),
                                        ("code_version", None)])
def test_the_values_a_run_writes_as_null_or_the_report_only_shows_are_read(key, value, tmp_path):
    folder = write_run(str(tmp_path), "mlp_activation", "activation-relu_seed-42", {"activation": "relu"}, [0.5, 0.6])
    _set_value(os.path.join(folder, "results.json"), key, value)
    [run] = report.load_runs(str(tmp_path / "mlp_activation"))
    assert run["unreadable"] == [] and run["results"][key] == value


def test_a_report_of_every_study_with_misshapen_values_names_them_and_builds(tmp_path):
    out = str(tmp_path / "runs")
    write_fixture_logs(out)
    damaged = {("resnet18_best", "trial-0000", "trial.json"): ("held", 5),
               ("mlpmixer_best", "trial-0000", "results.json"): ("valid_accs", "high"),
               ("mlp_activation", "activation-relu_seed-42", "results.json"): ("split", {"train": "45000"})}
    for (study, run, file), (key, value) in damaged.items():
        _set_value(os.path.join(out, study, "runs", run, file), key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = markdown_of(out)
    header = next(line for line in text.splitlines() if line.startswith("- Unreadable files"))
    for (study, run, file), (key, _) in damaged.items():
        assert f"{os.path.join(out, study, 'runs', run, file)} ('{key}' is not " in header
