"""``report.md`` and ``report.pdf`` from the studies' logs: the runs' folders are read, ``sections`` builds
one section per study, and ``render`` turns them into Markdown and PDF; the header says which devices,
software and data produced the logs. ``run_table`` writes the runs' values beside them as CSV."""
import collections
import datetime
import json
import os

from training.errors import UserError

from .definitions import STUDIES
from .overlap import shared_processors
from .plan import RUNS_FOLDER
from .render import write_figures, write_markdown, write_pdf
from .run_table import write_run_tables
from .search_sections import search_section
from .sections import counted, grid_section
from .worker import TRIAL_FILE


TRIAL_KEYS = ("trial", "role", "settings", "seed", "outcome", "value")  # what the sections read from every trial.json


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _string(value):
    return isinstance(value, str)


def _boolean(value):
    return isinstance(value, bool)


def _or_null(fits):
    return lambda value: value is None or fits(value)


def _object_of(**fits):
    """An object whose listed keys, where present, each fit."""
    return lambda value: isinstance(value, dict) and all(check(value[key]) for key, check in fits.items()
                                                         if key in value)


def _object_with(**fits):
    """An object that has every listed key, each fitting."""
    return lambda value: isinstance(value, dict) and all(key in value and check(value[key])
                                                         for key, check in fits.items())


def _list_of(fits):
    return lambda value: isinstance(value, list) and all(map(fits, value))


def _count(value):
    return _whole(value) and value >= 0


def _confusion(value):
    """Class names and a count of test images for each pair of true and predicted class: one row and one column per
    class."""
    return (_object_with(classes=_list_of(_string), counts=_list_of(_list_of(_count)))(value)
            and len(value["counts"]) == len(value["classes"])
            and all(len(row) == len(value["classes"]) for row in value["counts"]))


# the values that the report computes with, as the runs write them (null: a value that was not finite, or none yet)
RESULTS_SHAPES = {
    **{key: ("a list of numbers or nulls", _list_of(_or_null(_number)))
       for key in ("train_losses", "valid_losses", "train_accs", "valid_accs")},
    **{key: ("a list of numbers", _list_of(_number))  # clocks, which are always finite
       for key in ("train_seconds", "valid_seconds", "train_images_per_second", "epoch_end_times")},
    **{key: ("a number", _or_null(_number)) for key in ("test_acc", "test_loss", "best_valid_acc")},
    **{key: ("a whole number", _or_null(_whole)) for key in ("epochs_completed", "best_epoch", "num_params")},
    "args": ("an object whose epochs is a whole number", _object_of(epochs=_whole)),
    "split": ("an object of whole-number counts", _object_of(train=_whole, valid=_whole, test=_whole)),
    **{key: ("an object", _object_of()) for key in ("model_config", "data")},
    "error": ("a string", _or_null(_string)),
    "hidden_units": ("an object of hidden-layer measures", _or_null(_object_with(
        derivative_peak=_number, flat_below=_number, images=_whole,
        layers=_list_of(_object_with(units=_whole, mean_derivative=_or_null(_number), flat_share=_number,
                                     units_always_flat=_number))))),
    "code_version": ("an object of a commit and whether it was modified", _or_null(_object_with(
        commit=_string, modified=_or_null(_boolean)))),
    "test_confusion": ("an object of class names and a square count of test images per class pair",
                       _or_null(_confusion)),
    "first_layer": ("an object of first-layer measures", _or_null(_object_with(
        weight=_string, units=_whole, measure=_or_null(_string),
        **{key: _or_null(_number) for key in ("moved", "initial", "trained", "change")}))),
}
TRIAL_SHAPES = {
    "trial": ("a whole number", _whole), "role": ("a string", _string),
    "settings": ("an object", _object_of()), "seed": ("a whole number", _or_null(_whole)),
    "outcome": ("a string", _string), "value": ("a number", _or_null(_number)),
    "source_trial": ("a whole number", _or_null(_whole)),
    "held": ("a list of setting names", _list_of(_string)), "error": ("a string", _or_null(_string)),
}


def _read_json(path, unreadable, required=(), shapes=None):
    """The JSON object in ``path``, or None if there is none yet; a file that is there but cannot be read as one
    with the ``required`` keys and each value of ``shapes``' keys of its shape is named, with why, in
    ``unreadable`` (a run writes both files atomically: only a hand or a damaged disk does that)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:  # JSON's encoding, whatever the locale's
            data = json.load(f)
    except json.JSONDecodeError as exc:
        unreadable.append((path, f"invalid JSON at line {exc.lineno} column {exc.colno}"))
        return None
    except UnicodeDecodeError as exc:
        unreadable.append((path, f"not UTF-8 text (byte {exc.start + 1})"))
        return None
    except OSError as exc:
        unreadable.append((path, exc.strerror or str(exc)))
        return None
    if not isinstance(data, dict):
        unreadable.append((path, "not a JSON object"))
        return None
    missing = [key for key in required if key not in data]
    if missing:
        unreadable.append((path, f"no {missing[0]!r} key"))
        return None
    misshapen = [(key, shape) for key, (shape, fits) in (shapes or {}).items() if key in data and not fits(data[key])]
    if misshapen:
        key, shape = misshapen[0]
        unreadable.append((path, f"{key!r} is not {shape}: {json.dumps(data[key])[:40]}"))
        return None
    return data


def load_runs(study_dir):
    """Every run folder of a study: ``{study, name, path, trial, results, unreadable, written_in}`` (``trial`` None
    while unfinished; ``unreadable``: ``(path, why)`` of each of the run's files that is there but could not be read;
    ``written_in``: the folder that a copied run's results.json was written in, else None)."""
    folder = os.path.join(study_dir, RUNS_FOLDER)
    runs = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path, unreadable = os.path.join(folder, name), []
        results = _read_json(os.path.join(path, "results.json"), unreadable, shapes=RESULTS_SHAPES) or {}
        logdir = results.get("args", {}).get("logdir")
        # the last part of the path, whichever system wrote it (a study run on Windows, reported on Linux)
        copied = isinstance(logdir, str) and logdir.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] != name
        runs.append({"study": os.path.basename(study_dir), "name": name, "path": path,
                     "trial": _read_json(os.path.join(path, TRIAL_FILE), unreadable, TRIAL_KEYS, TRIAL_SHAPES),
                     "results": results, "unreadable": unreadable, "written_in": logdir if copied else None})
    return runs


def provenance(all_runs):
    """Which devices, software and data produced the logs."""
    def listed(get, separator=", "):
        """The distinct values that ``get`` reads from the runs' results, where they differ each with the number of
        runs it holds for; none before a run ends its first epoch."""
        values = collections.Counter(str(get(run["results"])) for run in all_runs if run["results"])
        if len(values) > 1:
            return separator.join(f"{value} in {counted(number, 'run')}" for value, number in sorted(values.items()))
        return separator.join(values) or "none logged yet"

    def code(results):
        if "code_version" not in results:
            return "not logged"
        version = results["code_version"]
        if version is None:
            return "no git commit (not in a checkout, or git missing)"
        return f"git commit {version['commit'][:12]}" + {
            True: " with modified tracked files", False: "", None: " (modifications unknown)"}[version["modified"]]

    def data(results):
        return (f"{results.get('data', {}).get('dir', 'unknown folder')} (test images SHA-1 "
                f"{results.get('data', {}).get('test_images_sha1', 'not logged')})")
    generated = datetime.datetime.now().isoformat(timespec="seconds")
    return [f"Report generated {generated} from {counted(len(all_runs), 'run')}.",
            f"Devices: {listed(lambda r: r.get('device_name'), '; ')}.",
            f"PyTorch: {listed(lambda r: r.get('torch_version'))}.",
            f"Code: {listed(code, '; ')}.",
            f"Precision: {listed(lambda r: r.get('args', {}).get('precision', 'not logged'))}.",
            f"Data: {listed(data, '; ')}.",
            f"Split: {listed(_describe_split, '; ')}."]


def _describe_split(results):
    split = {"train": "?", "valid": "?", "test": "?", **results.get("split", {})}
    disjoint = {True: "disjoint", False: "overlapping"}.get(split.get("disjoint"), "overlap not logged")
    return f"{split['train']}/{split['valid']}/{split['test']} train/validation/test, {disjoint}"


def build_report(out, report_dir=None):
    """Write ``report.md``, ``report.pdf``, every figure as a PNG, and ``runs.csv`` and ``epochs.csv``; returns the
    paths of the report and the two tables."""
    report_dir = report_dir or os.path.join(out, "report")
    loaded = {study.name: load_runs(os.path.join(out, study.name)) for study in STUDIES.values()}
    # a run folder copied into a study's runs (a backup of a run) would be counted twice, or as a run that the study
    # never finishes
    copies = [run for runs in loaded.values() for run in runs if run["written_in"]]
    runs_of = {name: [run for run in runs if not run["written_in"]] for name, runs in loaded.items()}
    all_runs = [run for runs in runs_of.values() for run in runs]
    shared = shared_processors(all_runs)
    sections = [search_section(study, runs_of, shared) if study.is_search
                else grid_section(study, runs_of[study.name], shared)
                for study in STUDIES.values() if runs_of[study.name]]
    not_run = [name for name, runs in runs_of.items() if not runs]
    if not sections:
        raise UserError(f"no study runs under {out}; run `python -m studies run NAME --out {out}` first")
    if os.path.exists(report_dir) and not os.path.isdir(report_dir):
        raise UserError(f"--report_dir {report_dir} is a file, not a folder; give the folder to write the report in")
    try:
        os.makedirs(report_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report folder {report_dir} ({exc.strerror}); give a writable "
                        "--report_dir") from None
    write_figures(report_dir, sections)
    header = provenance(all_runs)
    unreadable = [f"{path} ({why})" for run in all_runs for path, why in run["unreadable"]]
    if unreadable:
        header.append(f"Unreadable files, whose values are missing below: {'; '.join(unreadable)}.")
    if copies:
        copied = "; ".join(f"{run['path']} (written in {run['written_in']})" for run in copies)
        header.append(f"Left out, as copies of runs made elsewhere (their results.json was written in another folder): "
                      f"{copied}.")
    if not_run:
        header.append(f"Not in this report, no runs under {out} yet: {', '.join(not_run)} "
                      f"(`python -m studies run NAME --out {out}` runs one).")
    # the paths in it (--out, the data's folder) may hold a byte that is not UTF-8: shown as an escape, as on stderr
    header = [line.encode("utf-8", "backslashreplace").decode("utf-8") for line in header]
    markdown, pdf = os.path.join(report_dir, "report.md"), os.path.join(report_dir, "report.pdf")
    write_markdown(markdown, sections, header)
    write_pdf(pdf, sections, header)
    return [markdown, pdf, *write_run_tables(report_dir, all_runs)]
