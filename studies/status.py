"""What ``python -m studies status`` prints: each study's runs by outcome, and where and how far each running run
is, read from the study's storage while workers run anywhere."""
import json
import math
import os
import statistics

import optuna
from optuna.trial import TrialState

from training.errors import UserError

from .definitions import STUDIES
from .liveness import is_lost, seconds_silent, worker_place
from .plan import RUNS_FOLDER
from .scheduler import job_states, removed_runs, run_folders, summary, unrecorded_runs
from .storage import JOURNAL_FILE, close_storage, open_storage, shown_storage


def _duration(seconds):
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _typical_epoch_seconds(results):
    """The median of a run's epochs' seconds (training and validation), the first one left out when there are
    others (a GPU's autotuning and graph capture); None where results.json does not say."""
    try:
        epochs = [float(train) + float(valid) for train, valid in zip(results["train_seconds"],
                                                                      results["valid_seconds"])]
    except (KeyError, TypeError, ValueError):  # written by an older version, or edited by hand
        return None
    return statistics.median(epochs[1:] if len(epochs) > 1 else epochs) if epochs else None


def _progress(study_dir, run_dir, estimate=True):
    """``N of M epochs done`` from a run's results.json, and with ``estimate`` how long its remaining epochs take at its
    typical epoch so far; None before its first epoch ends."""
    try:
        with open(os.path.join(study_dir, RUNS_FOLDER, run_dir, "results.json")) as f:
            results = json.load(f)
        done, total = int(results["epochs_completed"]), int(results["args"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or edited by hand
        return None
    seconds = _typical_epoch_seconds(results)
    if not estimate or seconds is None or not 0 < done < total or not math.isfinite(seconds):
        return f"{done} of {total} epochs done"
    return f"{done} of {total} epochs done, about {_duration(seconds * (total - done))} to go"


def _print_status(name, study_dir, storage, lock, own_storage):
    """Print study ``name``'s runs by outcome and each running run's worker and progress; False if
    ``storage`` does not hold it. ``lock``, the storage's, gives the time that the heartbeats are judged by;
    ``own_storage``: the study is kept in a --storage, not in a journal in ``study_dir``."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # not in this database
        return False
    print(f"{name}: {summary(study) or 'nothing run yet'}")
    now = lock.now()
    for run_dir, (_, live, _) in sorted(job_states(study.get_trials(deepcopy=False)).items()):
        if live is None or live.state != TrialState.RUNNING:
            continue
        lost = is_lost(live, now)  # nothing trains it until a worker claims it: no time to go
        state = ("its worker is gone: the next worker to claim a run resumes it" if lost
                 else f"last heard {seconds_silent(live, now):.0f} s ago")
        progress = _progress(study_dir, run_dir, estimate=not lost) or "first epoch"
        print(f"  {run_dir}: running {worker_place(live)}, {progress}; {state}")
    trials, runs_dir = study.get_trials(deepcopy=False), os.path.join(study_dir, RUNS_FOLDER)
    removed = removed_runs(trials, runs_dir)
    if removed and own_storage and not os.path.isdir(runs_dir):  # as plan.open_study refuses to train them again
        print(f"  no folder {runs_dir}: its runs were trained with another --out")
        removed = []
    for run_dir, latest in removed:
        outcome = latest.user_attrs.get("outcome") or "finished"
        print(f"  {run_dir}: {outcome}, but its folder is gone; the study's next launch trains it again")
    for run_dir in unrecorded_runs(runs_dir, trials, run_folders(STUDIES[name], runs_dir)):
        print(f"  {run_dir}: trained, but the study has no record of it (copied in from another run of the study, or "
              "recorded in another --storage); a launch that would train it refuses to")
    return True


def print_status(out, storage_url):
    """Print every study that has started: its runs by outcome, then each running run's worker and progress."""
    if storage_url and storage_url.startswith("sqlite:///") and not os.path.isfile(storage_url[len("sqlite:///"):]):
        raise UserError(f"--storage {storage_url}: no such database file")
    shown, ran_elsewhere = 0, []
    for name in STUDIES:
        study_dir = os.path.join(out, name)
        if storage_url is not None or os.path.isfile(os.path.join(study_dir, JOURNAL_FILE)):  # never create a journal
            storage, lock = open_storage(storage_url, study_dir)
            try:
                if _print_status(name, study_dir, storage, lock, own_storage=storage_url is not None):
                    shown += 1
                    continue
            finally:
                close_storage(storage)
        if os.path.isdir(os.path.join(study_dir, RUNS_FOLDER)):
            ran_elsewhere.append(name)
    if shown:
        for name in ran_elsewhere if storage_url is None else ():  # runs of another storage: not what was asked about
            print(f"{name}: runs in {os.path.join(out, name, RUNS_FOLDER)}, but no record of the study in "
                  f"{os.path.join(out, name, JOURNAL_FILE)}; if it ran with --storage, give the same --storage to see "
                  "it")
    else:
        if storage_url is None and ran_elsewhere:
            raise UserError(f"{out} holds runs of {', '.join(ran_elsewhere)} but no study journal; if they ran with "
                            "--storage, give the same --storage to see them")
        shown = shown_storage(storage_url)
        where = f"--storage {shown} --out {out}" if storage_url else f"--out {out}"
        raise UserError(f"no study has started in {shown or out}; `python -m studies run NAME {where}` starts one")
