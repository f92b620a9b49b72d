"""Helpers of the tests: the backend on which they compile, reading a run's results.json strictly, scripting the
validation accuracies that runs log, the clock of a search's time budget, reading a study back, workers that claim
jobs without training, a standard output that keeps only what was flushed, and a process whose writes the kernel
refuses."""
import io
import json
import multiprocessing
import os
import time
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from studies import scheduler
from studies.scheduler import Claimer
from studies.storage import close_storage, open_storage
from training import engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# torch.compile as inductor traces it (Dynamo, AOTAutograd, inductor's decompositions and partitioner), with
# eager kernels instead of the C++ that inductor would build on a CPU (half a minute per model here). Plain
# aot_eager is not used: it fails on dropout behind a transpose (pytorch/pytorch#120035), inductor does not.
TEST_BACKEND = "aot_eager_decomp_partition"


def read_results(logdir):
    """A run's results.json, failing on the non-strict constants (NaN, Infinity) that JSON does not allow."""
    with open(os.path.join(logdir, "results.json")) as f:
        return json.loads(f.read(), parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))


def script_validation_accuracies(monkeypatch, accuracies):
    """Each validation that runs evaluate from now on reports the next of ``accuracies`` (in the order the epochs
    end), its loss computed as ever; the test evaluation is left as it is."""
    evaluate, scripted = engine.evaluate, iter(accuracies)

    def evaluate_with_scripted_accuracy(*args, mode="val", **kwargs):
        loss, accuracy, seconds = evaluate(*args, mode=mode, **kwargs)
        return loss, next(scripted) if mode == "val" else accuracy, seconds
    monkeypatch.setattr(engine, "evaluate", evaluate_with_scripted_accuracy)


def with_file_size_limit(script, limit):
    """The Python ``script``, run after telling the kernel to refuse any write that would make a regular file
    larger than ``limit`` bytes (``EFBIG``): a write that fails in the kernel, as on a full disk, whoever makes it
    (a buffered file's flush, torch's zip writer); meant for a child process, whose limit ends with it. torch's
    compiler, which a fused optimizer imports, is imported first: some torch releases (2.8; not 2.4, nor 2.14) write a
    generated module into a temporary folder the first time it is imported, a file that is not the script's."""
    return ("import resource, signal, torch._dynamo\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # a failed write, not a killed process
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
            + script)


def minutes_pass_per_validation(monkeypatch, clock_at_claims=None):
    """The clock of a search's time budget (``--search_minutes``), moved a minute on at each validation (a run's
    epoch), or reading ``clock_at_claims`` at each look after the first (the budget's start)."""
    clock = [0.0]

    def evaluate_a_minute_later(*args, mode="val", **kwargs):
        clock[0] += 60 if mode == "val" else 0
        return evaluate(*args, mode=mode, **kwargs)
    evaluate = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", evaluate_a_minute_later)
    looks = iter([0.0])
    monkeypatch.setattr(scheduler, "time", SimpleNamespace(
        monotonic=lambda: next(looks, clock[0] if clock_at_claims is None else clock_at_claims)))


def load_study(out, name):
    storage, _ = open_storage(None, os.path.join(out, name))
    return optuna.load_study(study_name=name, storage=storage)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def jobs_of(study):
    """``run_dir -> [trial states]`` over every trial of the study."""
    jobs = {}
    for trial in study.get_trials():
        jobs.setdefault(trial.user_attrs["run_dir"], []).append(trial.state)
    return jobs


def _claim_and_finish(storage_url, folder, name, jobs, seconds):
    """A worker that claims grid jobs and finishes each after ``seconds``, without training."""
    storage, lock = open_storage(storage_url, folder)
    study = optuna.load_study(study_name=name, storage=storage)
    claimer = Claimer(study, lock, grid_jobs=jobs)
    while (trial := claimer.claim()) is not None:
        time.sleep(seconds)
        trial.set_user_attr("outcome", "completed")
        study.tell(trial, 1.0)


def run_claimers(storage_url, name, folder, workers=4, jobs=24):
    """Four processes claim a grid of ``jobs`` jobs at once; every job must run exactly once."""
    storage, _ = open_storage(storage_url, folder)
    optuna.create_study(study_name=name, storage=storage, direction="maximize")
    grid = {f"job-{i:02d}": {"seed": i} for i in range(jobs)}
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_claim_and_finish, args=(storage_url, folder, name, grid, 0.02))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    study = optuna.load_study(study_name=name, storage=storage)
    assert jobs_of(study) == {job: [TrialState.COMPLETE] for job in grid}
    assert len({trial.user_attrs["pid"] for trial in study.get_trials()}) > 1  # the claims really interleaved
    close_storage(storage)


class Pipe(io.StringIO):
    """Standard output as `tee` in the device call reads it: only what was flushed, the rest lost if a time limit
    kills the tool."""
    flushed = ""

    def flush(self):
        self.flushed = self.getvalue()
