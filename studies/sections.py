"""The report's section of a grid study (its rankings, fit, runs at chance, coverage, cost, test accuracy by class
from ``class_sections``, and an MLP's hidden units and the pictured first layer from ``weight_sections``), and the
pieces that a search's section (``search_sections``) shares: the runs' table and the sentences about outcomes and
epochs. Figures, tables and sentences are computed from each run's ``results.json`` and ``trial.json``, so that every
sentence states what the logs show."""
import os

from training.errors import counted
from training.optim import unread_flags

from . import figures
from .class_sections import class_accuracy_block
from .overlap import shared_processor_sentence
from .render import Section
from .run_values import (completed_runs, epoch_seconds, final_valid_acc, fmt, mean_or_none, mean_std,
                         train_images_per_second)
from .weight_sections import first_layer_block, hidden_unit_block
from .worker import TRIAL_FILE

PROBLEM4_MIN_EPOCHS = 10  # "Train each experiment for at least 10 epochs"
CHANCE = 0.1  # CIFAR-10's accuracy from guessing: ten classes of equal size
CHANCE_MARGIN = 0.01  # a final validation accuracy at most this far above chance counts as no learning


def exact(value):
    """A setting as the run was given it, to be copied into a command: every digit of a float, no thousands
    separator."""
    return repr(value) if isinstance(value, float) else str(value)


def _unreadable(run):
    """The names of the run's files that are there but could not be read (``report.load_runs`` says why)."""
    return [os.path.basename(path) for path, _ in run.get("unreadable", ())]


def run_outcome(run):
    """The run's outcome as its trial.json says, or what its files show where that says none; naming its files
    that could not be read."""
    unreadable = _unreadable(run)
    outcome = (run["trial"] or {}).get("outcome") or (
        "unknown" if TRIAL_FILE in unreadable else "running or stopped" if run["results"] else "no epoch logged")
    return outcome + (f" ({', '.join(unreadable)} unreadable)" if unreadable else "")


def run_row(run):
    results = run["results"]
    return [run["name"], run_outcome(run), fmt(results.get("epochs_completed")),
            fmt(final_valid_acc(run)), fmt(results.get("best_valid_acc")),
            fmt(results.get("test_acc")), fmt(results.get("num_params")), fmt(epoch_seconds(results), 2),
            fmt(train_images_per_second(results), 0)]


RUN_HEADER = ["run", "outcome", "epochs", "final valid acc", "best valid acc", "test acc", "parameters",
              "s/epoch (train)", "train img/s"]


HYPERPARAMETERS = ("optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs", "lr_schedule",
                   "warmup_fraction", "label_smoothing", "augment", "mix", "tta", "seed", "precision", "pipeline")


def read_by(args):
    """The hyperparameters among a run's flags ``args`` that its training reads (not ``--weight_decay`` with adam:
    ``training.optim.unread_flags``)."""
    unread = unread_flags(args)
    return [key for key in HYPERPARAMETERS if key in args and key not in unread]


def hyperparameter_rows(runs):
    """``[hyperparameter, value]`` rows of the flags and model-config keys that trained ``runs``, as their
    results.json logged them: the value where the runs agree, and each value in the runs' order where they differ
    (a grid's setting, the seeds)."""
    values = {}
    for run in runs:
        args = run["results"].get("args", {})
        for key in read_by(args):
            values.setdefault(key, []).append(args[key])
        for key, value in run["results"].get("model_config", {}).items():
            values.setdefault(f"model: {key}", []).append(value)
    order = [key for key in HYPERPARAMETERS if key in values] + [key for key in values if key.startswith("model: ")]
    return [[key, ", ".join(dict.fromkeys(map(exact, values[key])))] for key in order]


def and_list(names):
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _ranking_sentences(groups, setting):
    """Which value of the grid's setting won on final validation accuracy, and by how much."""
    finals = {name: [value for value in map(final_valid_acc, completed_runs(runs)) if value is not None]
              for name, runs in groups.items()}
    scores = {name: mean_or_none(values) for name, values in finals.items()}
    # stable: settings that tie keep the grid's order
    ranked = sorted(((score, name) for name, score in scores.items() if score is not None),
                    key=lambda pair: pair[0], reverse=True)
    if not ranked:
        return ["No run has completed yet."]
    order = ", ".join(f"{name}: {score:.4f}" for score, name in ranked)
    lines = [f"Final validation accuracy by {setting} (mean over completed runs), highest first: {order}."]
    if len(ranked) > 1:
        best = ranked[0][0]
        leaders = [name for score, name in ranked if score == best]
        if len(leaders) > 1:
            lines.append(f"The highest, {best:.4f}, is shared by {setting} {and_list(leaders)}.")
        else:
            lowest = f" and {best - ranked[-1][0]:.4f} above the lowest ({ranked[-1][1]})" if len(ranked) > 2 else ""
            lines.append(f"The highest is {setting} {leaders[0]}, {best - ranked[1][0]:.4f} above the next "
                         f"({ranked[1][1]}){lowest}.")
            runner_up = ranked[1][1]
            lines.append(_separation_sentence(setting, leaders[0], finals[leaders[0]], runner_up, finals[runner_up]))
    tests = {name: mean_or_none([run["results"].get("test_acc") for run in groups[name]]) for _, name in ranked}
    if any(value is not None for value in tests.values()):
        lines.append("Test accuracy (mean): " + ", ".join(f"{name}: {fmt(value)}" for name, value in tests.items())
                     + ".")
    return lines


def _fit_sentences(groups, setting):
    """How far each setting's training accuracy ended above its validation accuracy, and at which epoch its
    validation accuracy peaked: the logs' evidence of over- or underfitting."""
    gaps, peaks = [], []
    for name, runs in groups.items():
        done = completed_runs(runs)
        train = mean_or_none([(run["results"].get("train_accs") or [None])[-1] for run in done])
        valid = mean_or_none([final_valid_acc(run) for run in done])
        if train is not None and valid is not None:
            gaps.append(f"{name} {train:.4f} against {valid:.4f} (gap {train - valid:+.4f})")
        best = sorted({run["results"]["best_epoch"] for run in done if run["results"].get("best_epoch")})
        if best:
            peaks.append(f"{name} {best[0]}" if len(best) == 1 else f"{name} {best[0]} to {best[-1]}")
    lines = []
    if gaps:
        lines.append(f"Training against validation accuracy at the last epoch, by {setting} (mean over completed "
                     f"runs; training accuracy is the epoch's mean over its augmented batches): {', '.join(gaps)}.")
    if peaks:
        epochs = sorted({run["results"].get("epochs_completed") for runs in groups.values()
                         for run in completed_runs(runs)} - {None})
        lines.append(f"Epoch of the highest validation accuracy (of {' or '.join(map(str, epochs))}), by {setting}: "
                     f"{', '.join(peaks)}.")
    return lines


def _chance_sentences(groups, setting):
    """Names the completed runs whose validation accuracy ended no better than guessing (a learning rate too large
    for the optimizer can leave a run there without its loss ever turning NaN)."""
    stuck = [f"{name} ({run['name']}: {final_valid_acc(run):.4f})" for name, runs in groups.items()
             for run in completed_runs(runs)
             if final_valid_acc(run) is not None and final_valid_acc(run) <= CHANCE + CHANCE_MARGIN]
    if not stuck:
        return []
    return [f"At chance level, with a final validation accuracy of at most {CHANCE + CHANCE_MARGIN:.2f} where guessing "
            f"one of the ten classes scores about {CHANCE:.2f}: {setting} {', '.join(stuck)}."]


def _span(values):
    """``0.5000 to 0.5200``, or ``all 0.5000`` when every value is the same."""
    low, high = f"{min(values):.4f}", f"{max(values):.4f}"
    return f"all {low}" if low == high else f"{low} to {high}"


def _separation_sentence(setting, leader, leader_finals, runner_up, runner_up_finals):
    """Whether the seeds separate the two highest settings: every run of one above every run of the other."""
    single = [name for name, finals in ((leader, leader_finals), (runner_up, runner_up_finals)) if len(finals) < 2]
    if single:
        which = (f"one completed run of {setting} {single[0]}" if len(single) == 1
                 else f"one completed run each of {setting} {leader} and {runner_up}, the two highest")
        return (f"With {which}, whether other seeds keep {leader} above {runner_up} is unknown "
                "(`--seeds N` repeats every setting).")
    spans = f"{leader} {_span(leader_finals)}, {runner_up} {_span(runner_up_finals)}"
    if min(leader_finals) > max(runner_up_finals):
        return f"Every {leader} run ended above every {runner_up} run ({spans})."
    return f"Their runs overlap ({spans}): these seeds do not separate {leader} from {runner_up}."


def epochs_sentences(runs, which):
    """Says so when ``runs`` were set to train for fewer epochs than Problem 4 asks for."""
    planned = sorted({run["results"]["args"]["epochs"] for run in runs if "epochs" in run["results"].get("args", {})})
    if not planned or planned[0] >= PROBLEM4_MIN_EPOCHS:
        return []
    return [f"{which} were set to train for {' or '.join(map(str, planned))} "
            f"epoch{'' if planned == [1] else 's'}; Problem 4 asks for at least "
            f"{PROBLEM4_MIN_EPOCHS}."]


def _coverage_sentences(axis, groups):
    """Says so when the settings that ran fall short of what Problem 4 asks the grid to compare."""
    if axis.at_least is None:
        missing = [str(value) for value in axis.values if str(value) not in groups]
        if not missing:
            return []
        return [f"Problem 4 asks for {axis.setting} {and_list([str(value) for value in axis.values])}; "
                f"{and_list(missing)} did not run here (`--values {' '.join(missing)}` adds "
                f"{'it' if len(missing) == 1 else 'them'} to this study)."]
    if len(groups) >= axis.at_least:
        return []
    return [f"Problem 4 asks for at least {axis.at_least} {axis.setting} values; "
            f"{'only ' + and_list(list(groups)) if groups else 'none'} ran here (`--values` adds more to this study)."]


def outcome_sentences(runs):
    lines = []
    for run in runs:
        outcome = (run["trial"] or {}).get("outcome")
        epochs = run["results"].get("epochs_completed", 0)
        if outcome == "diverged":  # logs older than results.json's reason diverged at their training loss
            reason = run["results"].get("error") or f"its training loss was not finite in epoch {epochs + 1}"
            lines.append(f"{run['name']} diverged: {reason}.")
        elif outcome == "error":
            lines.append(f"{run['name']} failed: {run['trial'].get('error') or 'see its train.log'}.")
        elif TRIAL_FILE in _unreadable(run):
            lines.append(f"{run['name']}: its outcome is unknown, since its {TRIAL_FILE} is unreadable.")
        elif outcome is None:
            lines.append(f"{run['name']} has not finished ({counted(epochs, 'epoch')} logged); rerun the study to "
                         "complete it.")
    return lines


def grid_section(study, runs, shared):
    section = Section(f"{study.name}: {study.question}")
    setting = study.grid.setting
    groups = {}
    for choice in study.grid.choices:
        members = [run for run in runs if run["trial"] and run["trial"]["settings"].get(setting) == choice
                   or not run["trial"] and run["name"].startswith(f"{setting}-{choice}_seed-")]
        if members:
            groups[str(choice)] = members
    fixed = ", ".join(f"{key}={value}" for key, value in study.fixed.items())
    section.text(f"Grid over {setting}: {', '.join(groups)}"
                 + (f"; fixed {fixed}" if fixed else "") + f"; {counted(len(runs), 'run')}.")
    for line in (epochs_sentences(runs, "These runs") + _coverage_sentences(study.grid, groups)
                 + _ranking_sentences(groups, setting) + _fit_sentences(groups, setting)
                 + _chance_sentences(groups, setting) + outcome_sentences(runs)):
        section.text(line)
    several_seeds = any(len(members) > 1 for members in groups.values())
    if several_seeds:
        # over completed runs, as the ranking above: an unfinished run's last epoch is not its final accuracy
        rows = []
        for name, members in groups.items():
            done = completed_runs(members)
            rows.append([name, f"{len(done)}" if len(done) == len(members) else f"{len(done)} of {len(members)}",
                         mean_std([final_valid_acc(run) for run in done]),
                         mean_std([run["results"].get("best_valid_acc") for run in done]),
                         mean_std([run["results"].get("test_acc") for run in done])])
        section.text(f"Mean ± sample standard deviation over each {setting}'s completed runs:")
        section.table([setting, "completed runs", "final valid acc", "best valid acc", "test acc"], rows)
    section.table(RUN_HEADER, [run_row(run) for members in groups.values() for run in members])
    shared_processor_text(section, runs, shared)
    rows = hyperparameter_rows([run for members in groups.values() for run in members])
    if rows:
        section.text("Hyperparameters of these runs (where they differ, each value is listed):")
        section.table(["hyperparameter", "value"], rows)
    lines_are = f"one line per {setting} " + ("(mean over seeds; band: min to max)" if several_seeds
                                              else "(one run each)")
    for key, label in figures.CURVES:
        section.figure(f"{study.name}_{key}.png", figures.curve_figure(groups, key, label, f"{study.name}: {label}",
                                                                       legend_title=setting),
                       f"{label} against epoch, {lines_are}", in_pdf=False)
    section.pdf_page(figures.curves_page(groups, f"{study.name}: {lines_are}", legend_title=setting))
    if study.name == "mlpmixer_patch":
        _cost_block(section, groups, setting)
    class_accuracy_block(section, groups, setting)
    hidden_unit_block(section, study.name, groups, setting)
    first_layer_block(section, groups, setting)
    return section


def _cost_block(section, groups, setting):
    rows = []
    for name, members in groups.items():
        seconds = mean_or_none([epoch_seconds(run["results"]) for run in members])
        params = members[0]["results"].get("num_params")
        images = members[0]["results"].get("split", {}).get("train")
        if seconds and params:
            rows.append((int(name), params, seconds, images / seconds))
    if not rows:
        return
    rows.sort()
    section.table([setting, "parameters", "s/epoch (train)", "train img/s"],
                  [[value, fmt(params), fmt(seconds, 2), fmt(rate, 0)] for value, params, seconds, rate in rows])
    if len(rows) == 1:
        (value, params, seconds, _), = rows
        section.text(f"Only {setting} {value} has a timed epoch ({params:,} parameters, {seconds:.2f} s per training "
                     "epoch): there is nothing to compare it with yet.")
    else:
        most, least = max(rows, key=lambda r: r[1]), min(rows, key=lambda r: r[1])
        slow, fast = max(rows, key=lambda r: r[2]), min(rows, key=lambda r: r[2])
        section.text(f"Parameters range from {least[1]:,} ({setting} {least[0]}) to {most[1]:,} ({setting} "
                     f"{most[0]}); a training epoch takes from {fast[2]:.2f} s ({setting} {fast[0]}) to "
                     f"{slow[2]:.2f} s ({setting} {slow[0]}), {slow[2] / fast[2]:.1f} times as long.")
    title = f"mlpmixer_patch: parameters and speed against {setting}"
    section.figure("mlpmixer_patch_cost.png", figures.cost_figure(rows, setting, title),
                   f"parameters, seconds per training epoch and images per second against {setting}")


def shared_processor_text(section, runs, shared):
    sentence = shared_processor_sentence(runs, shared)
    if sentence:
        section.text(sentence)
