"""Whether the worker of a running trial still trains it: on the worker's own host its process decides (gone, or its
pid now another process's, is dead); elsewhere its heartbeats, which it records in the study while its run trains."""
import calendar
import os
import socket
import subprocess
import sys
import threading

from optuna.trial import TrialState

from .console import say

HEARTBEAT_SECONDS = 30
LOST_AFTER_SECONDS = 180  # a running trial whose worker has not been heard of for this long is lost
PROCESSES_LOOKED_UP = os.name == "posix"  # a worker is asked after on its own host; on Windows os.kill would kill it
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
