"""A study's worker: claims jobs one after another and trains each with ``training.engine.fit``,
in this process, so the imports, CUDA and cuDNN's tuned kernels stay loaded between runs (each run reads
the data set again, from the page cache: under a second)."""
import contextlib
import gc
import json
import os
import sys
import time
import traceback
import warnings

import torch
from optuna.trial import TrialState

from config import MAX_SEED, get_config_parser
from training import persistence
from training.engine import fit
from training.errors import DISK_REFUSED, LogdirBusy, UserError
from training.models import validate_model_config

from .console import say
from .definitions import is_model_setting
from .liveness import Heartbeat, when_taken_over
from .plan import RUNS_FOLDER
from .scheduler import Claimer, summary
from .search import search_sampler

POLL_SECONDS = 2  # how often a worker with nothing to claim looks again while others train
LOGDIR_POLL_SECONDS = 10  # how often a worker looks again whether a run's folder is free (each look reads the data)
TRIAL_FILE = "trial.json"
LOG_FILE = "train.log"


def run_settings(plan, trial):
    """``(settings, seed)`` of the claimed trial: a grid point, a draw from the search space, or the
    best configuration for a final run."""
    role = trial.user_attrs["role"]
    if role == "grid":
        axis = plan.study.grid
        value = trial.suggest_categorical(axis.setting, list(axis.choices))
        return {**plan.given, axis.setting: value}, trial.suggest_int("seed", 0, MAX_SEED)
    if role == "final":
        return trial.user_attrs["settings"], trial.suggest_int("seed", 0, MAX_SEED)
    # a search begun by a version that did not record search_index: its Optuna trial number stands in
    trial.study.sampler = search_sampler(plan.study.name, plan.seed,
                                         trial.user_attrs.get("search_index", trial.number))
    settings = plan.study.sample(trial, plan.given)
    trial.set_user_attr("settings", settings)
    return settings, plan.seed


def build_args(plan, settings, seed, run_dir, visualize):
    """The parsed ``main.py`` flags of one run; its model config is written into ``run_dir``."""
    args = get_config_parser().parse_args(plan.train_argv)
    model_config = dict(plan.model_config)
    for setting, value in settings.items():
        if is_model_setting(plan.study.model, setting):
            model_config[setting] = value
        else:
            setattr(args, setting, value)
    os.makedirs(run_dir, exist_ok=True)
    config_path = os.path.join(run_dir, "model_config.json")
    persistence.write_json(config_path, validate_model_config(plan.study.model, model_config))
    args.model, args.model_config, args.seed, args.logdir = plan.study.model, config_path, seed, run_dir
    args.resume = os.path.isfile(os.path.join(run_dir, persistence.CHECKPOINT_FILE))
    args.visualize = visualize
    args.no_progress = True
    return args


class RunTakenOver(Exception):
    """Another worker's claim declared this run's trial lost while it trained: the run is that worker's now."""


def _declared_lost(study, trial):
    """Whether a claim has declared ``trial`` lost; False while the storage is out of reach from here."""
    try:
        return study.get_trials(deepcopy=False)[trial.number].state.is_finished()
    except Exception:  # the next epoch asks again
        return False


def _epoch_callback(study, trial, run_name, epochs, prune, console):
    """After each epoch: one progress line on ``console`` (the run's own output goes to its train.log);
    ``RunTakenOver`` if the trial was declared lost meanwhile; and for a search trial, the validation
    accuracy to the pruner, whose verdict stops the run before its last epoch (after it, stopping would save
    nothing and would only throw away a finished run)."""
    def on_epoch(epoch, history):
        seconds = history["train_seconds"][-1] + history["valid_seconds"][-1]
        say(f"  {run_name}: epoch {epoch}/{epochs}, train loss {history['train_losses'][-1]:.4f}, "
            f"valid acc {history['valid_accs'][-1]:.4f}, {seconds:.1f} s", file=console)
        if _declared_lost(study, trial):
            raise RunTakenOver
        if not prune:
            return False
        trial.report(history["valid_accs"][-1], epoch)
        return epoch < epochs and trial.should_prune()
    return on_epoch


def _report_earlier_epochs(study, trial, run_dir):
    """A resumed search trial tells the pruner the validation accuracies of the epochs already run that it has
    not told yet (those an earlier worker ran, and those it finished while this one waited for the folder)."""
    path = os.path.join(run_dir, persistence.RESULTS_FILE)
    if os.path.isfile(path):
        told = study.get_trials(deepcopy=False)[trial.number].intermediate_values
        with open(path) as f:
            for epoch, accuracy in enumerate(json.load(f).get("valid_accs", []), start=1):
                if accuracy is not None and epoch not in told:
                    trial.report(accuracy, epoch)


def _fit_when_the_folder_is_free(args, prepare, on_epoch, test, console):
    """``fit(args)``; while another worker still writes the run's folder (its trial was declared lost while it
    trained: it stops at the end of its epoch), wait, then resume from the checkpoint it left, with ``prepare()``'s
    fresh flags."""
    said = False
    while True:
        try:
            return fit(args, on_epoch=on_epoch, test=test)
        except LogdirBusy as busy:
            if not said:
                say(f"{busy}: waiting for it to stop at the end of its epoch", file=console)
                said = True
            time.sleep(LOGDIR_POLL_SECONDS)
            args = prepare()


def run_trial(plan, study, lock, trial):
    """Train the claimed trial's run and record its outcome, unless a claim declared the trial lost meanwhile:
    the run is then left to the worker that claims it.

    Completed runs are COMPLETE with their final validation accuracy as value; pruned runs are
    PRUNED; diverged runs and runs that raised are FAIL with ``outcome`` saying which.
    """
    role = trial.user_attrs["role"]
    run_dir = os.path.join(plan.study_dir, RUNS_FOLDER, trial.user_attrs["run_dir"])
    settings, seed = run_settings(plan, trial)
    # a run that --retry_failed trains again: its earlier outcome does not hold while it trains (the error stays in
    # the study's storage and its traceback in train.log), so the report shows it unfinished, as `status` does
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(run_dir, TRIAL_FILE))

    def prepare():
        """The run's flags, built afresh each time: a worker this one waited for may have left epochs, which a
        search trial tells the pruner."""
        if role == "search":
            _report_earlier_epochs(study, trial, run_dir)
        return build_args(plan, settings, seed, run_dir, visualize=plan.study.visualize and role == "final")
    args = prepare()
    say(f"trial {trial.number} ({role}) -> {run_dir}{' (resumed)' if args.resume else ''}")
    record = {"study": plan.study.name, "trial": trial.number, "role": role, "settings": settings, "seed": seed,
              "params": trial.params, "source_trial": trial.user_attrs.get("source_trial"),
              "held": sorted(key for key in plan.given if key not in plan.study.fixed)}
    value, error = None, None
    console = sys.stdout  # the worker's; the run's own output goes to its train.log
    on_epoch = _epoch_callback(study, trial, trial.user_attrs["run_dir"], args.epochs, prune=role == "search",
                               console=console)
    try:
        # line-buffered: `tail -f train.log` follows the run, and a killed worker's log keeps its last epoch;
        # entering catch_warnings makes Python forget which warnings it has shown, so each run's log gets its
        # own, as main.py would print them
        with Heartbeat(trial, lock.now), _open_log(run_dir, buffering=1) as log, \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), warnings.catch_warnings():
            results = _fit_when_the_folder_is_free(args, prepare, on_epoch, role != "search", console=console)
        outcome = results["status"]
        if outcome == "completed" and results["valid_accs"]:
            value = results["valid_accs"][-1]
        if outcome == "diverged":
            error = results["error"]  # which loss was not finite (training, validation), and when
    except (UserError, KeyboardInterrupt):
        raise
    except RunTakenOver:
        say(f"trial {trial.number} was declared lost while it trained: it stops here, and the worker that claims "
            "its run resumes it from the last checkpoint")
        return
    except Exception as exc:  # a failed run is recorded and the study goes on
        if isinstance(exc, OSError) and exc.errno in DISK_REFUSED:  # its log's disk, full for all
            raise persistence.cannot_write(os.path.join(run_dir, LOG_FILE), exc) from None
        outcome, error = "error", f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError), _open_log(run_dir) as log:  # the record below keeps the error anyway
            traceback.print_exc(file=log)
    if outcome == "interrupted":
        raise KeyboardInterrupt
    state = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(outcome, TrialState.FAIL)
    if value is None and state == TrialState.COMPLETE:
        outcome, state = "error", TrialState.FAIL
        error = "no validation accuracy was recorded"
    record.update(outcome=outcome, value=value, error=error)
    with lock.hold(study.study_name):  # where claims declare trials lost: the trial cannot finish meanwhile
        if study.get_trials(deepcopy=False)[trial.number].state.is_finished():  # the folder is left as it is
            say(f"trial {trial.number} was declared lost while it trained: the worker that claims its run resumes "
                f"it from the checkpoint it left in {run_dir}")
            return
        persistence.write_json(os.path.join(run_dir, TRIAL_FILE), record)
        if role != "final":  # a finished run needs no checkpoint; the final runs keep the best model's weights
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(run_dir, persistence.CHECKPOINT_FILE))
        trial.set_user_attr("outcome", outcome)
        if error:
            trial.set_user_attr("error", error)
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    say(f"trial {trial.number}: {outcome}" + (f", final validation accuracy {value:.4f}" if value is not None
                                               else f" ({error})" if error else ""))


def _open_log(run_dir, **kwargs):
    """The run's train.log, to append to. UTF-8 whatever the locale, and a character that it cannot encode (a path's
    byte that is not UTF-8) is written as an escape, as on the standard error, instead of failing the run."""
    return open(os.path.join(run_dir, LOG_FILE), "a", encoding="utf-8", errors="backslashreplace", **kwargs)


def release_gpu():
    """Give the finished run's GPU memory back (its model, optimizer and graphs are garbage now), so that workers
    sharing the GPU and the next run (another model, another size) find it free. A CUDA error that its run left
    (an illegal memory access, a device-side assert) stays for the rest of the process and would fail every later
    run of this worker: the worker stops instead, in one line."""
    gc.collect()
    if not torch.cuda.is_initialized():  # a CPU study on a GPU machine: no CUDA context to make now
        return
    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    except RuntimeError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"the GPU stopped working in this worker ({reason}): CUDA keeps such an error until the "
                        "process ends, so the worker stops; rerun the same command to go on in a new process "
                        "(--retry_failed trains the failed run again)") from None


def work(plan, study, lock):
    """Claim and train jobs of ``study`` (from ``open_study``) until the study is done; returns how many
    this worker ran. While other workers train the last runs, it waits for what they may leave: a search's
    final runs, which only its last trial's end creates, and the run of a worker that dies."""
    claimer = Claimer(study, lock, grid_jobs=None if plan.study.is_search else plan.grid_jobs(),
                      search_trials=plan.trials, search_minutes=plan.search_minutes, final_seeds=plan.seeds,
                      retry_failed=plan.retry_failed, flags=plan.fingerprint())
    ran, said_waiting = 0, False
    while True:
        trial = claimer.claim()
        if trial is None:
            if not claimer.running_elsewhere:
                return ran
            if not said_waiting:
                runs = claimer.running_elsewhere
                why = ("a search's final runs follow its last trial; " if plan.study.is_search else "") + \
                    f"a run whose worker dies is taken over, {when_taken_over()}"
                say(f"no run to claim: waiting while {runs} run{'s train' if runs > 1 else ' trains'} in other "
                    f"workers ({why})")
                said_waiting = True
            time.sleep(POLL_SECONDS)
            continue
        said_waiting = False
        try:
            # where the whole study stands, counted across its workers: how many runs are left besides this one
            say(f"study {plan.study.name}: {summary(study)}")
            run_trial(plan, study, lock, trial)
            release_gpu()
        except BaseException:
            # the job stays open: marked failed without an outcome, it is enqueued again and resumes
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        ran += 1
