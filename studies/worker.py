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
from dataclasses import dataclass, field

import optuna
import torch
from optuna.trial import TrialState

from config import MAX_SEED, get_config_parser
from training import persistence
from training.engine import fit
from training.errors import DISK_REFUSED, LogdirBusy, UserError, counted, setting_changes
from training.models import validate_model_config

from .console import say
from .definitions import is_model_setting
from .search import SameBudgetMedianPruner, search_sampler
from .liveness import Heartbeat, live_runs, seconds_silent, seconds_until_lost, when_taken_over, worker_place
from .scheduler import FLAGS_FROM_TRIAL, Claimer, has_trained, summary
from .storage import JOURNAL_FILE, shown_storage

RUNS_FOLDER = "runs"
POLL_SECONDS = 2  # how often a worker with nothing to claim looks again while others train
LOGDIR_POLL_SECONDS = 10  # how often a worker looks again whether a run's folder is free (each look reads the data)
NOT_IN_FINGERPRINT = ("model", "model_config", "logdir", "resume", "visualize", "seed", "print_every", "no_progress",
                      "eval_batch_size", "num_workers", "data_dir")
TRIAL_FILE = "trial.json"
LOG_FILE = "train.log"


@dataclass
class Plan:
    """Everything a worker needs to know about the study it serves.

    Args:
        study: the ``definitions.Study``.
        study_dir: the study's output folder (``--out/<name>``).
        train_argv: the ``main.py`` flags every run gets (validated).
        given: settings held fixed: the study's own and those set by the user's flags.
        model_config: the base model config (validated), before a run's settings change it.
        seed: the launch's ``--seed``: a search's trials all train with it, and its sampler draws from it.
        seeds: one run per seed for every grid point (``--seed``, ``--seed + 1``...), and one final run per
            seed for a search (``--seed + 1``...: the best trial retrained with its own seed would repeat it).
        values: the grid's values.
        trials: the search's budget.
        search_minutes: the search's time budget, from when this worker starts: no new trial is drawn after it.
        storage: None (journal file in ``study_dir``) or a storage URL or path.
        retry_failed: run again the jobs whose run raised an error in an earlier launch.
        data_fingerprint: ``CIFAR10.fingerprint()`` of the data set at ``--data_dir``.
    """
    study: object
    study_dir: str
    train_argv: list
    given: dict
    model_config: dict
    seed: int
    seeds: list
    values: list = field(default_factory=list)
    trials: int = 0
    search_minutes: float = None
    storage: str = None
    retry_failed: bool = False
    data_fingerprint: str = None

    def grid_jobs(self):
        setting = self.study.grid.setting
        return {f"{setting}-{value}_seed-{seed}": {setting: value, "seed": seed}
                for value in self.values for seed in self.seeds}

    def fingerprint(self):
        """What must be the same for every worker and every rerun of the study: the settings that
        change what a run computes (not its seed, which names the run, nor its logging or batching of
        evaluation), as JSON values. The data set counts by its contents, not by its folder, so workers
        may read their own copies (a node's local disk) and a moved copy still resumes."""
        args = vars(get_config_parser().parse_args(self.train_argv))
        settings = {key: value for key, value in args.items() if key not in NOT_IN_FINGERPRINT}
        return json.loads(json.dumps({"model": self.study.model, "model_config": self.model_config,
                                      "held": self.given, "data": self.data_fingerprint, **settings}))


def open_study(plan, storage, lock):
    """Create or load the study in ``storage`` (from ``open_storage``); refuse one made with other flags,
    whose runs could not be mixed. On return the study records ``plan.fingerprint()``, which its claims check."""
    with lock.hold(plan.study.name):  # the sampler is replaced before each search trial draws (run_settings)
        _refuse_runs_without_records(plan, storage)
        study = optuna.create_study(study_name=plan.study.name, storage=storage, direction="maximize",
                                    sampler=search_sampler(plan.study.name, plan.seed, 0),
                                    pruner=SameBudgetMedianPruner(), load_if_exists=True)
        recorded, now = study.user_attrs.get("fingerprint"), plan.fingerprint()
        made_with = now if recorded is None else recorded
        # a flag that main.py gained after the study began ran at its default until now
        defaults = json.loads(json.dumps(vars(get_config_parser().parse_args([]))))
        made_with = {**{key: defaults[key] for key in now.keys() - made_with.keys() if key in defaults}, **made_with}
        if "data" not in made_with:  # recorded by a version that knew the data by its folder only
            made_with.pop("data_dir", None)
            made_with["data"] = now["data"]
        if made_with != now:
            _take_the_new_flags_or_refuse(plan, study, lock, made_with, now)
        if recorded != now:  # a new study, new flags, or one recorded by an older version in an older form
            study.set_user_attr("fingerprint", now)
        if plan.study.is_search:  # for status: the largest budget a launch asked for (--trials can only add)
            study.set_user_attr("trials", max(plan.trials, study.user_attrs.get("trials", 0)))
    return study


def _refuse_runs_without_records(plan, storage):
    """A study that ``storage`` has no record of, over a runs folder whose runs trained, would train every run again
    in its folder, over the finished ones: its journal was removed, or its runs were recorded in another --storage,
    whose workers may still be writing them."""
    try:
        storage.get_study_id_from_name(plan.study.name)
        return
    except KeyError:
        pass
    runs_dir = os.path.join(plan.study_dir, RUNS_FOLDER)
    if has_trained([], runs_dir):
        records = shown_storage(plan.storage) or os.path.join(plan.study_dir, JOURNAL_FILE)
        raise UserError(f"{runs_dir} holds runs of {plan.study.name} that trained, but {records} has no record of the "
                        "study: if they ran with --storage, give the same --storage; to train them afresh, move "
                        f"{runs_dir} aside (or use a new --out)")


def _take_the_new_flags_or_refuse(plan, study, lock, made_with, now):
    """A study whose runs trained nothing yet takes the flags ``now`` (and trains again the runs that failed with
    the others: out of memory, say); one that has trained, or that a worker may be training with its flags, is
    refused, with every flag that differs."""
    where = f"study {plan.study.name} in {shown_storage(plan.storage) or plan.study_dir}"
    changes = _flag_changes(made_with, now, {dimension.setting for dimension in plan.study.space})
    trials = study.get_trials(deepcopy=False)
    if has_trained(trials, os.path.join(plan.study_dir, RUNS_FOLDER)):
        if made_with["data"] != now["data"]:
            raise UserError(f"{where} was started on another copy of CIFAR-10 (contents {made_with['data']}, "
                            f"--data_dir here {now['data']}); point --data_dir at the copy it used, or use a new "
                            "--out (or --storage)")
        raise UserError(f"{where} was started with other flags ({changes}); rerun with the flags it was started "
                        "with, or use a new --out (or --storage)")
    time_now = lock.now()
    live = live_runs(trials, time_now)
    if live:
        raise UserError(f"{where} was started with other flags ({changes}), and a worker may be training its run "
                        f"{live[0].user_attrs.get('run_dir')} with them: {_how_to_stop(live[0], time_now)}")
    failed = len({trial.user_attrs["run_dir"] for trial in trials if trial.user_attrs.get("outcome") == "error"})
    say(f"{where}: none of its runs has trained an epoch yet, so it takes this command's flags ({changes})"
        + (f" and trains again the {counted(failed, 'run')} that failed with the others" if failed else ""))
    study.set_user_attr(FLAGS_FROM_TRIAL, len(trials))


def _flag_changes(made_with, now, searched):
    """What differs between the flags a study recorded and this command's, in words (``epochs 1, now 2``), with
    each held setting and each model config key that differs on its own; ``searched``: the settings the study's
    search draws where they are not held."""
    def flags(fingerprint):
        return {key: value for key, value in fingerprint.items() if key not in ("held", "model_config", "data")}
    changes = setting_changes(flags(made_with), flags(now), lambda _: "not given")
    changes.update(setting_changes(made_with.get("model_config", {}), now.get("model_config", {}),
                                   lambda _: "not given", "the model config's "))
    if made_with.get("data") != now.get("data"):
        changes["data"] = f"CIFAR-10 contents {made_with.get('data')}, now {now.get('data')}"
    # a held setting sets the flag of its name, so it stands in that flag's place
    changes.update(setting_changes(made_with.get("held", {}), now.get("held", {}),
                                   lambda key: "searched" if key in searched else "from the model config"))
    return "; ".join(change for _, change in sorted(changes.items()))


def _how_to_stop(trial, now):
    """What to do about a worker that holds a run with a study's old flags: stop it, or wait until it counts as lost."""
    place, lost_in = worker_place(trial), seconds_until_lost(trial, now)
    if lost_in is None:
        return f"it runs {place}; stop it and rerun, or rerun with the flags it was started with"
    return (f"it runs {place}, last heard {seconds_silent(trial, now):.0f} s ago; if it has stopped, rerun in "
            f"{lost_in:.0f} s, when the study counts it as gone, else stop it first, or rerun with the flags it was "
            "started with")


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
