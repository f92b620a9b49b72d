"""What a study's launch asks for (``Plan``), and opening the study in its storage with it: a rerun or another
worker must train with the flags the study was made with, so one that differs is refused, naming each flag, unless no
run has trained yet; runs on disk without the study's records are refused too, not trained over."""
import json
import os
from dataclasses import dataclass, field

import optuna

from config import get_config_parser
from training.errors import UserError, counted, setting_changes

from .console import say
from .liveness import live_runs, seconds_silent, seconds_until_lost, worker_place
from .scheduler import (FLAGS_FROM_TRIAL, enqueue_job, has_trained, job_params, removed_runs, run_folders,
                        unrecorded_runs)
from .search import SameBudgetMedianPruner, search_sampler
from .storage import JOURNAL_FILE, shown_storage

RUNS_FOLDER = "runs"
NOT_IN_FINGERPRINT = ("model", "model_config", "logdir", "resume", "visualize", "seed", "print_every", "no_progress",
                      "eval_batch_size", "num_workers", "data_dir")


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
        _train_again_the_removed_runs(plan, study)
    return study


def _train_again_the_removed_runs(plan, study):
    """Enqueue again each finished run whose folder is gone, as a run never trained: removed by hand, it is missing from
    the report, which says to rerun the study. Looked at as a launch opens the study, not at each claim: workers on
    several machines whose --out is not one folder that all of them see would each train the others' runs. A study
    kept in a --storage of its own, whose runs folder is missing altogether, was most likely trained with another
    --out: that is refused, not trained again."""
    runs_dir = os.path.join(plan.study_dir, RUNS_FOLDER)
    removed = removed_runs(study.get_trials(deepcopy=False), runs_dir)
    if not removed:
        return
    if plan.storage is not None and not os.path.isdir(runs_dir):
        raise UserError(f"--storage {shown_storage(plan.storage)} holds {counted(len(removed), 'finished run')} of "
                        f"{plan.study.name}, but {runs_dir} does not exist: give the --out they were trained with; to "
                        f"train them again under this one, create {runs_dir} and rerun")
    for run_dir, latest in removed:
        enqueue_job(study, run_dir, job_params(latest), latest.user_attrs)
    names = ", ".join(run_dir for run_dir, _ in removed)
    say(f"study {plan.study.name}: {counted(len(removed), 'finished run')} whose folder is gone ({names}) "
        f"{'trains' if len(removed) == 1 else 'train'} again (workers on several machines need an --out that all of "
        "them see)")


def _refuse_runs_without_records(plan, storage):
    """A run folder that trained, of which ``storage`` has no record (of it, or of the study), would be trained again
    over: a run was copied in from another run of the study (another machine's), the study's journal was removed, or
    its runs were recorded in another --storage (whose workers may still be writing them). A grid's folders count only
    where this launch would train (its --values and --seeds: the others' values left out, it runs); a search names its
    trials' folders by the order of its draws, so all of its run folders (one of another name, such as a backup copy,
    is never trained in)."""
    runs_dir = os.path.join(plan.study_dir, RUNS_FOLDER)
    records = shown_storage(plan.storage) or os.path.join(plan.study_dir, JOURNAL_FILE)
    try:
        trials = storage.get_all_trials(storage.get_study_id_from_name(plan.study.name), deepcopy=False)
    except KeyError:  # a study not begun here (a run copied in first), or whose records were removed
        trials = []
    jobs = {} if plan.study.is_search else plan.grid_jobs()
    unknown = unrecorded_runs(runs_dir, trials, run_folders(plan.study, runs_dir) if plan.study.is_search else jobs)
    if not unknown:
        return
    it, them = ("it", "it") if len(unknown) == 1 else ("they", "them")
    how = f"move {them} aside to train {them} here"
    if jobs:
        setting = plan.study.grid.setting
        values = sorted({str(jobs[name][setting]) for name in unknown})
        how += f", or leave {setting} {', '.join(values)} out of --values"
    raise UserError(f"{counted(len(unknown), 'run')} in {runs_dir} trained, but {records} has no record of {them} "
                    f"({', '.join(unknown)}): copied in from another run of the study, or recorded elsewhere (another "
                    f"--storage, a journal since removed); this command would train {them} again over what {it} "
                    f"{'holds' if it == 'it' else 'hold'}: {how}")


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
