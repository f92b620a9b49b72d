"""Which runs trained while another run used the same processor (the same host and GPU, or the same CPU),
from the end time of each epoch that ``results.json`` logs: their seconds per epoch include that sharing,
so the report says so beside them (``--workers`` above the number of GPUs, two studies launched at once)."""


def _epochs(results):
    """``[(start, end)]`` wall-clock seconds of each logged epoch (training and validation)."""
    ends, train, valid = (results.get(key) or [] for key in ("epoch_end_times", "train_seconds", "valid_seconds"))
    return [(end - train[i] - (valid[i] if i < len(valid) and valid[i] else 0.0), end)
            for i, end in enumerate(ends) if end is not None and i < len(train) and train[i] is not None]


def shared_processors(runs):
    """``{path: [the other runs that trained on its processor at the same time]}`` for every run of ``runs``
    (dicts with ``study``, ``name``, ``path`` and ``results``) that shared it; runs that log no epoch times are
    left out."""
    timed = []
    for run in runs:
        results, epochs = run["results"], _epochs(run["results"])
        if epochs and results.get("host") and results.get("device_id"):
            timed.append((run, (results["host"], results["device_id"]), epochs,
                          min(start for start, _ in epochs), max(end for _, end in epochs)))
    shared = {}
    for i, (run, processor, epochs, first, last) in enumerate(timed):
        for other, other_processor, other_epochs, other_first, other_last in timed[i + 1:]:
            if processor != other_processor or other_first >= last or first >= other_last:
                continue
            if any(start < other_end and other_start < end
                   for start, end in epochs for other_start, other_end in other_epochs):
                shared.setdefault(run["path"], []).append(other)
                shared.setdefault(other["path"], []).append(run)
    return shared


def shared_processor_sentence(runs, shared):
    """One sentence naming the runs of ``runs`` that shared their processor while they trained (a run of
    another study named with its study), or None."""
    def label(other, beside):
        return other["name"] if other["study"] == beside["study"] else f"{other['study']}/{other['name']}"

    named = [f"{run['name']} (with {', '.join(sorted(label(other, run) for other in shared[run['path']]))})"
             for run in runs if run["path"] in shared]
    if not named:
        return None
    return ("Trained while another run used the same processor (host and GPU, or CPU), so their seconds per "
            f"epoch include that sharing: {'; '.join(named)}.")
