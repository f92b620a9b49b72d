"""Which runs trained while another run used the same processor (the same host and GPU, or the same CPU),
from the end time of each epoch that ``results.json`` logs: their seconds per epoch include that sharing,
so the report says so beside them (``--workers`` above the number of GPUs, two studies launched at once)."""
import os


def _epochs(results):
    """``[(start, end)]`` wall-clock seconds of each logged epoch (training and validation)."""
    ends, train, valid = (results.get(key) or [] for key in ("epoch_end_times", "train_seconds", "valid_seconds"))
    return [(end - train[i] - (valid[i] if i < len(valid) and valid[i] else 0.0), end)
            for i, end in enumerate(ends) if end is not None and i < len(train) and train[i] is not None]


def shared_processors(runs):
    """``{path: [paths of the other runs that trained on its processor at the same time]}`` for every run of
    ``runs`` (dicts with ``path`` and ``results``) that shared it; runs that log no epoch times are left out."""
    timed = []
    for run in runs:
        results, epochs = run["results"], _epochs(run["results"])
        if epochs and results.get("host") and results.get("device_id"):
            timed.append((run["path"], (results["host"], results["device_id"]), epochs,
                          min(start for start, _ in epochs), max(end for _, end in epochs)))
    shared = {}
    for i, (path, processor, epochs, first, last) in enumerate(timed):
        for other_path, other_processor, other_epochs, other_first, other_last in timed[i + 1:]:
            if processor != other_processor or other_first >= last or first >= other_last:
                continue
            if any(start < other_end and other_start < end
                   for start, end in epochs for other_start, other_end in other_epochs):
                shared.setdefault(path, []).append(other_path)
                shared.setdefault(other_path, []).append(path)
    return shared


def _study_of(run_path):
    return os.path.basename(os.path.dirname(os.path.dirname(run_path)))  # <out>/<study>/runs/<run>


def _label(path, beside):
    """A run's folder name, with its study's name when it belongs to another study than ``beside``."""
    name = os.path.basename(path)
    return name if _study_of(path) == _study_of(beside) else f"{_study_of(path)}/{name}"


def shared_processor_sentence(runs, shared):
    """One sentence naming the runs of ``runs`` that shared their processor while they trained, or None."""
    named = [f"{run['name']} (with {', '.join(_label(other, run['path']) for other in sorted(shared[run['path']]))})"
             for run in runs if run["path"] in shared]
    if not named:
        return None
    return ("Trained while another run used the same processor (host and GPU, or CPU), so their seconds per "
            f"epoch include that sharing: {'; '.join(named)}.")
