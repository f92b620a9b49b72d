"""How the report reads a run's values and writes them: numbers as text, means over seeds, the runs that
completed, the values they logged, a run's last validation accuracy and its seconds per epoch."""
import statistics


def fmt(value, digits=4):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def mean_std(values, digits=4):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(values[0], digits)
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def mean_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def epoch_seconds(results):
    """Median training seconds per epoch, leaving out the first epoch (autotuning, graph capture)
    when there are others."""
    seconds = results.get("train_seconds") or []
    kept = seconds[1:] if len(seconds) > 1 else seconds
    return statistics.median(kept) if kept else None


def train_images_per_second(results):
    """Training images per second at ``epoch_seconds``' pace."""
    seconds, images = epoch_seconds(results), results.get("split", {}).get("train")
    return images / seconds if images and seconds else None


def completed_runs(runs):
    return [run for run in runs if (run["trial"] or {}).get("outcome") == "completed"]


def logged_values(groups, key):
    """Each group's values of ``key`` in the ``results.json`` of its completed runs that have one (an older version's
    logs have none), leaving out the groups without any."""
    logged = {name: [run["results"][key] for run in completed_runs(members) if run["results"].get(key)]
              for name, members in groups.items()}
    return {name: values for name, values in logged.items() if values}


def final_valid_acc(run):
    return (run["results"].get("valid_accs") or [None])[-1]
