"""The worker processes that ``python -m studies run NAME --workers N`` starts on this host: each one GPU (round
robin) or a share of the cores, with a stop passed on to all."""
import os
import signal
import subprocess
import sys

from training.devices import usable_cpus

from .console import say

LAUNCHED_WORKER = "STUDIES_LAUNCHED_WORKER"  # in the environment of the workers that --workers N starts
# a launched worker's exit status when the disk refused its standard output, which the launch then says once for
# all: the workers share the launch's output, and each would say it (sysexits' EX_IOERR)
OUTPUT_REFUSED_STATUS = 74


def is_launched_worker():
    """Whether this process is one of the workers that ``--workers N`` started."""
    return os.environ.get(LAUNCHED_WORKER) == "1"


def worker_env(index, count, device):
    """Worker ``index``'s environment: on CUDA, one GPU of this host's, round robin, when there are several;
    on a CPU (or a host without a GPU), an equal share of the cores this process may use (workers with all
    cores each would fight over them)."""
    env = dict(os.environ)
    gpus = []
    if device == "cuda":
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            gpus = [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
        else:
            import torch
            gpus = [str(i) for i in range(torch.cuda.device_count())]
    if len(gpus) > 1:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    if not gpus and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (usable_cpus() or 1) // count))
    env[LAUNCHED_WORKER] = "1"
    return env


def launch_workers(count, argv, device):
    """Start ``count`` worker processes of this same command (each with ``--workers 1``); wait for all, and return
    their exit status: the highest, or ``OUTPUT_REFUSED_STATUS`` when one of them could not write the output.

    Ctrl-C reaches every worker from the terminal; a SIGTERM sent to this process alone (``kill``,
    ``timeout``) is passed on to the workers, which then save their runs and stop as after Ctrl-C."""
    command = [sys.executable, "-m", "studies", *argv, "--workers", "1"]
    workers = []

    def pass_on(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop suffices while the workers save their runs
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, pass_on)
    try:
        workers.extend(subprocess.Popen(command, env=worker_env(i, count, device)) for i in range(count))
        codes = [worker.wait() for worker in workers]
    except KeyboardInterrupt:  # let the workers save their runs
        codes = [worker.wait() for worker in workers]
    finally:
        signal.signal(signal.SIGTERM, previous)
    for worker, code in zip(workers, codes):
        if code < 0:  # a worker killed by a signal (the OOM killer's SIGKILL) says nothing itself
            say(f"a worker (pid {worker.pid}) was killed by {signal_name(-code)}; rerun the same command to "
                "complete what it left", file=sys.stderr)
    if OUTPUT_REFUSED_STATUS in codes:
        return OUTPUT_REFUSED_STATUS
    # as a shell reports a process killed by signal N: 128 + N, not the negative code Popen gives
    return max(128 - code if code < 0 else code for code in codes)


def signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
