"""Which run a worker trains next, decided through the Optuna study that all workers share.

Every run is an Optuna trial, and every run has a *job*: its folder under the study's output,
stored in the trial's ``run_dir`` user attribute. A grid's jobs are known in advance; a search's
jobs are created one trial at a time by the TPE sampler until the budget is spent; a search ends
with *final* jobs that retrain the best configuration (one per seed) and test it.

A worker claims a job under the study's lock, so two workers never enqueue or start the same job:
it marks trials of dead workers as failed (their job is then enqueued again and resumes from its
checkpoint; a worker is dead when its process is gone, on its own host, or when it has been silent for
too long, elsewhere), enqueues the jobs that have no trial yet, and pops a waiting trial. The storage and
its lock are in ``storage``.
"""
import calendar
import json
import os
import socket
import subprocess
import sys
import threading

from optuna.trial import TrialState

from training import persistence
from training.errors import UserError

from .console import say

HEARTBEAT_SECONDS = 30
LOST_AFTER_SECONDS = 180  # a running trial whose worker has not been heard of for this long is lost
PROCESSES_LOOKED_UP = os.name == "posix"  # a worker is asked after on its own host; on Windows os.kill would kill it
# a failed trial with one of these outcomes finished its job (--retry_failed runs the errors again); one without an
# outcome was stopped (a kill, Ctrl-C, a lost worker), and its job resumes
FINISHING_FAILURES = ("diverged", "error")
# the study attribute that holds how many trials it had when its flags last changed (see has_trained)
FLAGS_FROM_TRIAL = "flags_from_trial"


PROC_SELF_STAT = "/proc/self/stat"  # there on Linux; macOS and the BSDs have no /proc, and ps says instead
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # as ps prints them


def _proc_stat(pid):
    """The fields of ``/proc/PID/stat`` after the command's name, as bytes, or None where /proc does not say.

    Read as bytes: the name is the executable's, cut to 15 bytes, which need not be text in any encoding (a
    UTF-8 character cut in two), and a dead worker's pid may name any process now."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def _ps_stat(pid):
    """``(state, started)`` of process ``pid`` as ``ps`` gives them where there is no /proc (macOS): its state letters
    and its start time in whole seconds since the epoch, read in UTC and the C locale so that neither the user's time
    zone nor language changes it; None where ps does not say (no such process, no ps)."""
    try:
        printed = subprocess.run(["ps", "-o", "stat=", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True,
                                 env={**os.environ, "LC_ALL": "C", "TZ": "UTC"}, timeout=30).stdout.split()
        state, _, month, day, clock, year = printed  # S Wed Dec  2 09:12:41 2026; not strptime, whose %b is localised
        hours, minutes, seconds = (int(part) for part in clock.split(":"))
        started = (int(year), MONTHS.index(month) + 1, int(day), hours, minutes, seconds)
        return state, calendar.timegm(started)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _state_and_start(pid):
    """``(zombie, started)`` of process ``pid``, from /proc or else from ps; None where neither says."""
    if os.path.isfile(PROC_SELF_STAT):
        fields = _proc_stat(pid)
        return (fields[0] == b"Z", int(fields[19])) if fields else None
    stat = _ps_stat(pid)
    return (stat[0].startswith("Z"), stat[1]) if stat else None


def process_started(pid):
    """When process ``pid`` started (clock ticks after boot from /proc, seconds since the epoch from ps: compared
    only on one host); None where neither says. With the pid, it names one process: a pid is reused after its
    process exits, its start time is not."""
    known = _state_and_start(pid)
    return known[1] if known else None


def _process_state(pid):
    """``(alive, started)``: whether process ``pid`` runs (a zombie, killed but not yet waited for, does not),
    and its ``process_started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:
        pass
    known = _state_and_start(pid)
    if known is None:
        return True, None
    zombie, started = known
    return not zombie, started


def is_lost(trial, now):
    """A running trial whose worker died. On the worker's own host its process decides: gone, or its pid now
    another process's, is lost; alive is not, however long it has been silent (a laptop that slept). Elsewhere
    (or where a process cannot be told from a reused pid), a worker silent for ``LOST_AFTER_SECONDS`` by ``now``, the
    study's lock's time, is lost."""
    attrs = trial.user_attrs
    if _asked_after_here(attrs):
        alive, started = _process_state(attrs["pid"])
        if not alive:
            return True
        if started is not None and attrs.get("pid_started") is not None:
            return started != attrs["pid_started"]
    return seconds_silent(trial, now) > LOST_AFTER_SECONDS


def _asked_after_here(attrs):
    """Whether the worker a trial's ``attrs`` name is judged by its process (on this host), not by its silence."""
    return attrs.get("host") == socket.gethostname() and "pid" in attrs and PROCESSES_LOOKED_UP


def when_taken_over():
    """When a study takes over a run whose worker died, in words, for a worker that waits for such runs."""
    silent = f"after {LOST_AFTER_SECONDS // 60} minutes without word from it"
    return f"{silent} if it ran on another host" if PROCESSES_LOOKED_UP else silent


def _abandoned_here(trial):
    """Whether ``trial`` was claimed by this very process: a worker claims only between runs, so a trial it
    still holds as running was abandoned (a notebook's kernel lives on after a run whose outcome could not be
    recorded), though its process is alive."""
    attrs = trial.user_attrs
    return (attrs.get("host") == socket.gethostname() and attrs.get("pid") == os.getpid()
            and attrs.get("pid_started") == process_started(os.getpid()))


class Heartbeat:
    """Marks a trial alive every ``HEARTBEAT_SECONDS`` while its run trains."""

    def __init__(self, trial, clock, interval=HEARTBEAT_SECONDS):
        """
        Args:
            trial: the running trial whose ``heartbeat`` attribute is set.
            clock: the study's lock's ``now``, whose time the heartbeat records.
            interval: seconds between two heartbeats.
        """
        self.trial, self.clock, self.interval = trial, clock, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        failing = False
        while not self.stopped.wait(self.interval):
            try:
                self.trial.set_user_attr("heartbeat", self.clock())
            except Exception as exc:  # a storage out of reach for a while, or a trial declared lost: say it once
                if not failing:
                    say(f"heartbeat of trial {self.trial.number} failed ({type(exc).__name__}: {exc}); trying "
                        f"again every {self.interval:g} s", file=sys.stderr)
                failing = True
                continue
            if failing:
                say(f"heartbeat of trial {self.trial.number} restored", file=sys.stderr)
            failing = False

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()


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
    return any(_has_trained(folder) for folder in folders)


def live_runs(trials, now):
    """The running trials whose worker may still be training them (with the flags the study has now)."""
    return [trial for trial in trials if trial.state == TrialState.RUNNING and not worker_gone(trial, now)]


def worker_gone(trial, now):
    """Whether a running trial's worker no longer trains it: lost, or this very process, which abandoned it."""
    return is_lost(trial, now) or _abandoned_here(trial)


def worker_place(trial):
    """Where a trial's worker runs, in words: ``on HOST (pid PID)``."""
    attrs = trial.user_attrs
    return f"on {attrs.get('host', 'an unknown host')} (pid {attrs.get('pid', '?')})"


def seconds_silent(trial, now):
    """How long by ``now`` a running trial's worker has not been heard from."""
    return now - (trial.user_attrs.get("heartbeat") or trial.datetime_start.timestamp())


def seconds_until_lost(trial, now):
    """In how many seconds a running trial whose worker stops now counts as lost; None where its worker's process
    decides (its own host), not its silence."""
    attrs = trial.user_attrs
    if _asked_after_here(attrs) and attrs.get("pid_started") is not None:
        return None
    return max(0.0, LOST_AFTER_SECONDS - seconds_silent(trial, now))


def _has_trained(run_dir):
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


class Claimer:
    """Claims jobs of one study for one worker process."""

    def __init__(self, study, lock, grid_jobs=None, search_trials=0, final_seeds=(), retry_failed=False, flags=None):
        """
        Args:
            study: the Optuna study.
            lock: the storage's lock (``FileLock`` or ``PostgresLock``).
            grid_jobs: ``run_dir -> params`` of a grid study, or None for a search.
            search_trials: a search's budget of trials.
            final_seeds: seeds of the final retraining of a search's best configuration.
            retry_failed: enqueue again the jobs whose run raised an error before this worker started; without it,
                those whose run raised one before the study's flags last changed (``FLAGS_FROM_TRIAL``).
            flags: the fingerprint of the flags that this worker trains with (``worker.open_study`` records it): a
                claim stops the worker if another command gave the study other flags meanwhile.
        """
        self.study, self.lock, self.flags = study, lock, flags
        self.grid_jobs, self.search_trials, self.final_seeds = grid_jobs, search_trials, final_seeds
        self.retry_before = len(study.get_trials(deepcopy=False)) if retry_failed else \
            study.user_attrs.get(FLAGS_FROM_TRIAL, -1)
        self.running_elsewhere = 0

    def _done(self, finished):
        if finished is None:
            return False
        errored_earlier = finished.user_attrs.get("outcome") == "error" and finished.number < self.retry_before
        return not errored_earlier

    def _enqueue(self, params, **attrs):
        # job_params: a trial that fails before its run draws them (suggest) records no params of its own
        self.study.enqueue_trial(params, user_attrs={**attrs, "job_params": params})

    def _plan_jobs(self, trials, jobs):
        """Enqueue every job that is neither finished nor waiting or running, but a final run of a trial that is
        no longer the best (a search extended with more --trials found a better one)."""
        best = best_search_trial(trials)
        open_jobs = {run_dir: (latest.params or latest.user_attrs.get("job_params", {}), latest.user_attrs)
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
            kept = {key: attrs[key] for key in ("role", "settings", "source_trial", "search_index") if key in attrs}
            self._enqueue(params, run_dir=run_dir, **kept)

    def search_complete(self, trials, jobs):
        searched = search_jobs(jobs)
        return len(searched) >= self.search_trials and all(self._done(finished) for finished, _, _ in searched.values())

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
