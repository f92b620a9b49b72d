"""Which run a worker trains next, decided through the Optuna study that all workers share.

Every run is an Optuna trial, and every run has a *job*: its folder under the study's output,
stored in the trial's ``run_dir`` user attribute. A grid's jobs are known in advance; a search's
jobs are created one trial at a time by the TPE sampler until the budget is spent; a search ends
with *final* jobs that retrain the best configuration (one per seed) and test it.

A worker claims a job under the study's lock, so two workers never enqueue or start the same job:
it marks trials of dead workers as failed (their job is then enqueued again and resumes from its
checkpoint; a worker is dead when its process is gone, on its own host, or when it has been silent for
too long, elsewhere: ``liveness``), enqueues the jobs that have no trial yet, and pops a waiting trial. The
storage and its lock are in ``storage``.
"""
import json
import os
import re
import socket
import time

from optuna.trial import TrialState

from training import persistence
from training.errors import UserError

from .console import say
from .liveness import process_started, worker_gone

# a failed trial with one of these outcomes finished its job (--retry_failed runs the errors again); one without an
# outcome was stopped (a kill, Ctrl-C, a lost worker), and its job resumes
FINISHING_FAILURES = ("diverged", "error")
# the study attribute that holds how many trials it had when its flags last changed (see has_trained)
FLAGS_FROM_TRIAL = "flags_from_trial"


def has_trained(trials, runs_dir):
    """Whether a study's flags are fixed by what its runs trained: one finished, reported an epoch, diverged or saved
    one in its folder under ``runs_dir``. A study stopped before any epoch (a GPU without kernels, out of memory at the
    first batch, Ctrl-C on a mistyped flag) has not, and takes the flags of the command that fixes it."""
    for trial in trials:
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or trial.intermediate_values \
                or trial.user_attrs.get("outcome") == "diverged":
            return True
    try:
        folders = [entry.path for entry in os.scandir(runs_dir) if entry.is_dir()]
    except FileNotFoundError:
        return False
    return any(run_has_trained(folder) for folder in folders)


def run_has_trained(run_dir):
    """Whether the run in ``run_dir`` saved an epoch: a run stopped before its first one (Ctrl-C) leaves a results.json
    with none; one that raised later keeps its epochs there, though its checkpoint goes."""
    if os.path.exists(os.path.join(run_dir, persistence.CHECKPOINT_FILE)):
        return True
    try:
        with open(os.path.join(run_dir, persistence.RESULTS_FILE)) as f:
            results = json.load(f)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):  # unreadable: it may hold epochs
        return True
    return not isinstance(results, dict) or results.get("epochs_completed") != 0 or results.get("status") == "diverged"


def is_run_name(study, name):
    """Whether a folder called ``name`` is one that the ``definitions.Study`` trains runs in: a grid point's with any
    seed (``Plan.grid_jobs``), a search trial's or a final run's (``Claimer.claim``, ``final_run_dir``). Another, such
    as a backup copy of a run, is never trained in."""
    if study.is_search:
        return re.fullmatch(r"trial-\d{4,}|final_seed-\d+(_trial-\d{4,})?", name) is not None
    point = re.fullmatch(rf"{re.escape(study.grid.setting)}-(.+)_seed-\d+", name)
    return point is not None and point.group(1) in {str(choice) for choice in study.grid.choices}


def run_folders(study, runs_dir):
    """The names of the folders under ``runs_dir`` that ``study`` trains runs in (``is_run_name``)."""
    try:
        return [entry.name for entry in os.scandir(runs_dir) if entry.is_dir() and is_run_name(study, entry.name)]
    except FileNotFoundError:
        return []


def unrecorded_runs(runs_dir, trials, names):
    """Those of the run folders ``names`` under ``runs_dir`` that trained, of which none of the study's ``trials`` is
    the record: a run copied in from the same study run on another machine, or recorded in another --storage."""
    known = {trial.user_attrs.get("run_dir") for trial in trials}
    return sorted(name for name in names if name not in known and run_has_trained(os.path.join(runs_dir, name)))


def job_states(trials):
    """``run_dir -> (finished trial or None, live trial or None, latest trial)``."""
    jobs = {}
    for trial in trials:
        run_dir = trial.user_attrs.get("run_dir")
        if run_dir is None:
            continue
        finished, live, _ = jobs.get(run_dir, (None, None, None))
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                trial.state == TrialState.FAIL and trial.user_attrs.get("outcome") in FINISHING_FAILURES):
            finished = trial
        elif trial.state in (TrialState.WAITING, TrialState.RUNNING):
            live = trial
        elif trial.state == TrialState.FAIL:  # stopped unfinished: a run trained again (its folder removed, a
            finished = None  # --retry_failed) and stopped is to resume, whatever its earlier outcome
        jobs[run_dir] = (finished, live, trial)
    return jobs


def search_jobs(jobs):
    """The search trials among ``job_states``' jobs, one per run folder (a retried trial counts once)."""
    return {run_dir: state for run_dir, state in jobs.items() if state[2].user_attrs.get("role") == "search"}


def best_search_trial(trials):
    """The completed search trial with the highest value (final validation accuracy), or None."""
    done = [t for t in trials if t.user_attrs.get("role") == "search" and t.state == TrialState.COMPLETE]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def final_run_dir(seed, source_trial, jobs):
    """The folder of the final run with ``seed`` that retrains trial ``source_trial``: ``final_seed-SEED``, unless
    that one retrained another trial, the best before the search was extended (``final_seed-SEED_trial-NNNN``)."""
    run_dir = f"final_seed-{seed}"
    if run_dir in jobs and jobs[run_dir][2].user_attrs.get("source_trial") != source_trial:
        run_dir += f"_trial-{source_trial:04d}"
    return run_dir


def retrains_another(trial, best):
    """Whether ``trial`` is a final run of a trial other than ``best``."""
    return trial.user_attrs.get("role") == "final" and best is not None and \
        trial.user_attrs.get("source_trial") != best.number


def removed_runs(trials, runs_dir):
    """``(run_dir, latest trial)`` of each grid run or final run that finished but whose folder under ``runs_dir`` is
    gone (removed by hand, to train it again) and that no worker trains now. Not a search trial, whose result stays in
    the study's records (trained again, it could change which trial is best, and so the final runs), nor a final run of
    a trial that is no longer the best."""
    best = best_search_trial(trials)
    return [(run_dir, latest) for run_dir, (finished, live, latest) in sorted(job_states(trials).items())
            if finished is not None and live is None and latest.user_attrs.get("role") != "search"
            and not retrains_another(latest, best) and not os.path.isdir(os.path.join(runs_dir, run_dir))]


def enqueue_job(study, run_dir, params, attrs):
    """Enqueue the job of ``run_dir`` with its ``params`` (a grid point, a seed) and the attributes that say what it
    trains (``attrs``: its role, and a search trial's or final run's settings)."""
    kept = {key: attrs[key] for key in ("role", "settings", "source_trial", "search_index") if key in attrs}
    # job_params: a trial that fails before its run draws them (suggest) records no params of its own
    study.enqueue_trial(params, user_attrs={**kept, "run_dir": run_dir, "job_params": params})


def job_params(trial):
    """The params that the job of ``trial`` trains with, whether or not its run drew them."""
    return trial.params or trial.user_attrs.get("job_params", {})


class Claimer:
    """Claims jobs of one study for one worker process."""

    def __init__(self, study, lock, grid_jobs=None, search_trials=0, search_minutes=None, final_seeds=(),
                 retry_failed=False, flags=None):
        """
        Args:
            study: the Optuna study.
            lock: the storage's lock (``FileLock`` or ``PostgresLock``).
            grid_jobs: ``run_dir -> params`` of a grid study, or None for a search.
            search_trials: a search's budget of trials.
            search_minutes: a search's time budget, counted from now, or None: once it is spent, the budget of trials
                becomes the trials drawn by then (at least one), so that a claim draws no new trial and the final
                runs follow the trials under way.
            final_seeds: seeds of the final retraining of a search's best configuration.
            retry_failed: enqueue again the jobs whose run raised an error before this worker started; without it,
                those whose run raised one before the study's flags last changed (``FLAGS_FROM_TRIAL``).
            flags: the fingerprint of the flags that this worker trains with (``plan.open_study`` records it): a
                claim stops the worker if another command gave the study other flags meanwhile.
        """
        self.study, self.lock, self.flags = study, lock, flags
        self.grid_jobs, self.search_trials, self.final_seeds = grid_jobs, search_trials, final_seeds
        self.search_minutes = search_minutes
        self.search_deadline = None if search_minutes is None else time.monotonic() + 60 * search_minutes
        self.retry_before = len(study.get_trials(deepcopy=False)) if retry_failed else \
            study.user_attrs.get(FLAGS_FROM_TRIAL, -1)
        self.running_elsewhere = 0

    def _done(self, finished):
        if finished is None:
            return False
        errored_earlier = finished.user_attrs.get("outcome") == "error" and finished.number < self.retry_before
        return not errored_earlier

    def _plan_jobs(self, trials, jobs):
        """Enqueue every job that is neither finished nor waiting or running, but a final run of a trial that is
        no longer the best (a search extended with more --trials found a better one)."""
        best = best_search_trial(trials)
        open_jobs = {run_dir: (job_params(latest), latest.user_attrs)
                     for run_dir, (finished, live, latest) in jobs.items()
                     if live is None and not self._done(finished) and not retrains_another(latest, best)}
        if self.grid_jobs is not None:
            for run_dir, params in self.grid_jobs.items():
                if run_dir not in jobs:
                    open_jobs[run_dir] = (params, {"role": "grid"})
        elif best is not None and self.search_complete(trials, jobs):
            for seed in self.final_seeds:
                run_dir = final_run_dir(seed, best.number, jobs)
                if run_dir not in jobs:
                    open_jobs[run_dir] = ({"seed": seed}, {"role": "final", "settings": best.user_attrs["settings"],
                                                           "source_trial": best.number})
        for run_dir, (params, attrs) in sorted(open_jobs.items()):
            enqueue_job(self.study, run_dir, params, attrs)

    def search_complete(self, trials, jobs):
        searched = search_jobs(jobs)
        return len(searched) >= self.search_trials and all(self._done(finished) for finished, _, _ in searched.values())

    def _stop_drawing_when_out_of_time(self, searched):
        if self.search_deadline is None or time.monotonic() < self.search_deadline:
            return
        self.search_deadline = None
        drawn = max(searched, 1)  # a search that drew no trial yet has no best to retrain
        if drawn < self.search_trials:
            self.search_trials = drawn
            say(f"study {self.study.study_name}: --search_minutes {self.search_minutes:g} is spent after {drawn} "
                f"trial{'s' if drawn > 1 else ''}: no new trial is drawn; those under way train to their end, then the "
                "best one's final runs")

    def claim(self):
        """The next trial for this worker (RUNNING, with its ``run_dir`` set), or None when no job is left to
        claim now; ``running_elsewhere`` then says how many runs other workers are training."""
        with self.lock.hold(self.study.study_name):
            if self.flags is not None and self.study.user_attrs.get("fingerprint") != self.flags:
                raise UserError(f"study {self.study.study_name} took other flags meanwhile, from a command started "
                                "before any of its runs trained an epoch; rerun with that command's flags")
            trials = self.study.get_trials(deepcopy=False)
            now = self.lock.now()
            for trial in trials:
                if trial.state == TrialState.RUNNING and worker_gone(trial, now):
                    say(f"trial {trial.number} ({trial.user_attrs.get('run_dir')}): its worker is gone; "
                        "the run will resume from its checkpoint")
                    self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            trials = self.study.get_trials(deepcopy=False)
            jobs = job_states(trials)
            self._stop_drawing_when_out_of_time(len(search_jobs(jobs)))
            self._plan_jobs(trials, jobs)
            waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            searched = sum(1 for state in jobs.values() if state[2].user_attrs.get("role") == "search")
            if not waiting and (self.grid_jobs is not None or searched >= self.search_trials):
                self.running_elsewhere = sum(trial.state == TrialState.RUNNING for trial in trials)
                return None
            trial = self.study.ask()
            if "run_dir" not in trial.user_attrs:  # a new search trial, drawn by the sampler
                trial.set_user_attr("role", "search")
                trial.set_user_attr("run_dir", f"trial-{trial.number:04d}")
                trial.set_user_attr("search_index", searched)  # seeds its draws (search.search_sampler)
            trial.set_user_attr("host", socket.gethostname())
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("pid_started", process_started(os.getpid()))
            trial.set_user_attr("heartbeat", self.lock.now())
            return trial


def summary(study):
    """A study's runs by outcome: ``3 completed``; for a search, ``search trials: ... (of its budget); final runs:
    ...`` (and the final runs of an earlier best trial, which a search extended with more --trials beat)."""
    counts = {}
    trials = study.get_trials(deepcopy=False)
    best = best_search_trial(trials)
    flags_from = study.user_attrs.get(FLAGS_FROM_TRIAL, -1)
    for finished, live, latest in job_states(trials).values():
        unfinished = ("running" if live.state == TrialState.RUNNING else "waiting") if live else "to resume"
        # a live trial first: a run that --retry_failed trains again is running, not its earlier error
        shown = live or finished or latest
        outcome = shown.user_attrs.get("outcome")
        if outcome == "error" and shown.number < flags_from:  # under the study's old flags: the next claim retrains it
            outcome = None
        outcome = outcome or unfinished
        role = latest.user_attrs.get("role", "grid")
        if retrains_another(latest, best):
            role = "earlier final"
        tally = counts.setdefault(role, {})
        tally[outcome] = tally.get(outcome, 0) + 1
    tallies = {role: ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
               for role, outcomes in counts.items()}
    if "grid" in tallies:
        return tallies["grid"]
    if "search" in tallies and "trials" in study.user_attrs:
        tallies["search"] += f" (of {study.user_attrs['trials']})"
    labels = (("search", "search trials"), ("final", "final runs"), ("earlier final", "final runs of an earlier best"))
    return "; ".join(f"{label}: {tallies[role]}" for role, label in labels if role in tallies)
