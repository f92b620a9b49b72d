"""The report's sections, one per study: a grid's rankings, fit, coverage and cost, a search's space,
trials and final runs; figures, tables and sentences computed from each run's ``results.json`` and
``trial.json``, so that every sentence states what the logs show."""
import os
import statistics

from matplotlib.image import imread

from . import figures
from .overlap import shared_processor_sentence
from .render import Section
from .worker import PRUNE_AFTER_TRIALS, PRUNE_FROM_EPOCH, PRUNE_PEERS, RUNS_FOLDER

PROBLEM4_MIN_EPOCHS = 10  # "Train each experiment for at least 10 epochs"
VISUALISATIONS = {"resnet18": (("resnet18_kernels_rgb.png", "first-layer kernels (RGB)"),
                               ("resnet18_kernels_gray.png", "first-layer kernels (channel average)")),
                  "mlpmixer": (("mlpmixer_token_mixing.png", "first block's token-mixing weights"),)}


def _fmt(value, digits=4):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _exact(value):
    """A setting as the run was given it, to be copied into a command: every digit of a float."""
    return repr(value) if isinstance(value, float) else _fmt(value)


def _mean_std(values, digits=4):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return _fmt(values[0], digits)
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def epoch_seconds(results):
    """Median training seconds per epoch, leaving out the first epoch (autotuning, graph capture)
    when there are others."""
    seconds = results.get("train_seconds") or []
    kept = seconds[1:] if len(seconds) > 1 else seconds
    return statistics.median(kept) if kept else None


def run_row(run):
    results, trial = run["results"], run["trial"] or {}
    seconds = epoch_seconds(results)
    images = results.get("split", {}).get("train")
    outcome = trial.get("outcome") or ("running or stopped" if results else "no epoch logged")
    return [run["name"], outcome, _fmt(results.get("epochs_completed")),
            _fmt(_final_valid_acc(run)), _fmt(results.get("best_valid_acc")),
            _fmt(results.get("test_acc")), _fmt(results.get("num_params")), _fmt(seconds, 2),
            _fmt(images / seconds if images and seconds else None, 0)]


RUN_HEADER = ["run", "outcome", "epochs", "final valid acc", "best valid acc", "test acc", "parameters",
              "s/epoch (train)", "train img/s"]


def counted(number, noun):
    """``1 run``, ``2 runs``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _and_list(names):
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _completed(runs):
    return [run for run in runs if (run["trial"] or {}).get("outcome") == "completed"]


def _ranking_sentences(groups, setting):
    """Which value of the grid's setting won on final validation accuracy, and by how much."""
    finals = {name: [value for value in map(_final_valid_acc, _completed(runs)) if value is not None]
              for name, runs in groups.items()}
    scores = {name: _mean(values) for name, values in finals.items()}
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
            lines.append(f"{setting} {_and_list(leaders)} tie for the highest, {best:.4f}.")
        else:
            lowest = f" and {best - ranked[-1][0]:.4f} above the lowest ({ranked[-1][1]})" if len(ranked) > 2 else ""
            lines.append(f"{setting} {leaders[0]} is highest, {best - ranked[1][0]:.4f} above the next "
                         f"({ranked[1][1]}){lowest}.")
            runner_up = ranked[1][1]
            lines.append(_separation_sentence(setting, leaders[0], finals[leaders[0]], runner_up, finals[runner_up]))
    tests = {name: _mean([run["results"].get("test_acc") for run in groups[name]]) for _, name in ranked}
    if any(value is not None for value in tests.values()):
        lines.append("Test accuracy (mean): " + ", ".join(f"{name}: {_fmt(value)}" for name, value in tests.items())
                     + ".")
    return lines


def _final_valid_acc(run):
    return (run["results"].get("valid_accs") or [None])[-1]


def _fit_sentences(groups, setting):
    """How far each setting's training accuracy ended above its validation accuracy, and at which epoch its
    validation accuracy peaked: the logs' evidence of over- or underfitting."""
    gaps, peaks = [], []
    for name, runs in groups.items():
        done = _completed(runs)
        train = _mean([(run["results"].get("train_accs") or [None])[-1] for run in done])
        valid = _mean([_final_valid_acc(run) for run in done])
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
                         for run in _completed(runs)} - {None})
        lines.append(f"Epoch of the highest validation accuracy (of {' or '.join(map(str, epochs))}), by {setting}: "
                     f"{', '.join(peaks)}.")
    return lines


def _span(values):
    """``0.5000 to 0.5200``, or ``all 0.5000`` when every value is the same."""
    low, high = f"{min(values):.4f}", f"{max(values):.4f}"
    return f"all {low}" if low == high else f"{low} to {high}"


def _separation_sentence(setting, leader, leader_finals, runner_up, runner_up_finals):
    """Whether the seeds separate the two highest settings: every run of one above every run of the other."""
    single = [name for name, finals in ((leader, leader_finals), (runner_up, runner_up_finals)) if len(finals) < 2]
    if single:
        who = (f"{single[0]} has one completed run" if len(single) == 1
               else f"{leader} and {runner_up}, the two highest, have one completed run each")
        return (f"{setting} {who}: whether other seeds keep {leader} above {runner_up} is unknown "
                "(`--seeds N` repeats every setting).")
    spans = f"{leader} {_span(leader_finals)}, {runner_up} {_span(runner_up_finals)}"
    if min(leader_finals) > max(runner_up_finals):
        return f"Every {leader} run ended above every {runner_up} run ({spans})."
    return f"Their runs overlap ({spans}): these seeds do not separate {leader} from {runner_up}."


def _epochs_sentences(runs, which):
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
        return [f"Problem 4 asks for {axis.setting} {_and_list([str(value) for value in axis.values])}; "
                f"{_and_list(missing)} did not run here (`--values {' '.join(missing)}` adds "
                f"{'it' if len(missing) == 1 else 'them'} to this study)."]
    if len(groups) >= axis.at_least:
        return []
    return [f"Problem 4 asks for at least {axis.at_least} {axis.setting} values; "
            f"{'only ' + _and_list(list(groups)) if groups else 'none'} ran here (`--values` adds more to this study)."]


def _outcome_sentences(runs):
    lines = []
    for run in runs:
        outcome = (run["trial"] or {}).get("outcome")
        epochs = run["results"].get("epochs_completed", 0)
        if outcome == "diverged":
            lines.append(f"{run['name']} diverged: its training loss was not finite in epoch {epochs + 1}.")
        elif outcome == "error":
            lines.append(f"{run['name']} failed: {run['trial'].get('error') or 'see its train.log'}.")
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
    for line in (_epochs_sentences(runs, "These runs") + _coverage_sentences(study.grid, groups)
                 + _ranking_sentences(groups, setting) + _fit_sentences(groups, setting) + _outcome_sentences(runs)):
        section.text(line)
    several_seeds = any(len(members) > 1 for members in groups.values())
    if several_seeds:
        # over completed runs, as the ranking above: an unfinished run's last epoch is not its final accuracy
        rows = []
        for name, members in groups.items():
            done = _completed(members)
            rows.append([name, f"{len(done)}" if len(done) == len(members) else f"{len(done)} of {len(members)}",
                         _mean_std([_final_valid_acc(run) for run in done]),
                         _mean_std([run["results"].get("best_valid_acc") for run in done]),
                         _mean_std([run["results"].get("test_acc") for run in done])])
        section.table([setting, "completed runs", "final valid acc", "best valid acc", "test acc"], rows)
    section.table(RUN_HEADER, [run_row(run) for members in groups.values() for run in members])
    _shared_processor_text(section, runs, shared)
    lines_are = f"one line per {setting} " + ("(mean over seeds; band: min to max)" if several_seeds
                                              else "(one run each)")
    for key, label in figures.CURVES:
        section.figure(f"{study.name}_{key}.png", figures.curve_figure(groups, key, label, f"{study.name}: {label}",
                                                                       legend_title=setting),
                       f"{label} against epoch, {lines_are}", in_pdf=False)
    section.pdf_page(figures.curves_page(groups, f"{study.name}: {lines_are}", legend_title=setting))
    if study.name == "mlpmixer_patch":
        _cost_block(section, groups, setting)
    return section


def _cost_block(section, groups, setting):
    rows = []
    for name, members in groups.items():
        seconds = _mean([epoch_seconds(run["results"]) for run in members])
        params = members[0]["results"].get("num_params")
        images = members[0]["results"].get("split", {}).get("train")
        if seconds and params:
            rows.append((int(name), params, seconds, images / seconds))
    if not rows:
        return
    rows.sort()
    section.table([setting, "parameters", "s/epoch (train)", "train img/s"],
                  [[value, _fmt(params), _fmt(seconds, 2), _fmt(rate, 0)] for value, params, seconds, rate in rows])
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
    section.figure("mlpmixer_patch_cost.png", figures.cost_figure(rows, setting),
                   f"parameters, seconds per training epoch and images per second against {setting}")


def _settings_text(settings):
    return ", ".join(f"{key}={_fmt(value)}" for key, value in sorted(settings.items()))


BEST_KEYS = ("optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs", "lr_schedule", "warmup_fraction",
             "label_smoothing", "augment", "mix", "tta", "seed", "precision", "pipeline")


def search_section(study, runs, out, shared):
    section = Section(f"{study.name}: {study.question}")
    trials = [dict(run["trial"], last_valid_acc=_final_valid_acc(run),
                   epochs=run["results"].get("epochs_completed"))
              for run in runs if run["trial"] and run["trial"]["role"] == "search"]
    finals = [run for run in runs if run["name"].startswith("final_")]
    fixed = ", ".join(f"{key}={value}" for key, value in study.fixed.items())
    section.text(f"Search space (Optuna TPE sampler; median pruner: from epoch {PRUNE_FROM_EPOCH} to a trial's last but "
                 f"one, once {PRUNE_AFTER_TRIALS} trials have completed, a trial stops if its best validation accuracy "
                 "so far is below the median at that epoch of the completed trials with as many epochs, when there "
                 f"are at least {PRUNE_PEERS})" + (f"; fixed {fixed}" if fixed else "") + ":")
    held = {key: trial["settings"][key] for trial in trials for key in trial.get("held", ())}
    section.table(["setting", "Optuna parameter", "distribution"],
                  [[d.setting, "-", f"held at {_fmt(held[d.setting])} by the launch's flags"] if d.setting in held
                   else [d.setting, d.name, d.describe()] for d in study.space])
    counts = {}
    for trial in trials:
        counts[trial["outcome"]] = counts.get(trial["outcome"], 0) + 1
    tally = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "none"
    section.text(f"{counted(len(trials), 'search trial')} finished: {tally}.")
    completed = [t for t in trials if t["outcome"] == "completed"]
    if completed:
        best = max(completed, key=lambda t: (t["value"], -t["trial"]))
        section.text(f"Best trial: {best['trial']}, final validation accuracy {best['value']:.4f} after "
                     f"{counted(best['epochs'], 'epoch')}; its settings: {_settings_text(best['settings'])}.")
        tied = sorted(t["trial"] for t in completed if t["value"] == best["value"] and t is not best)
        if tied:
            section.text(f"{'Trial' if len(tied) == 1 else 'Trials'} {_and_list([str(n) for n in tied])} reached the "
                         "same validation accuracy; the earliest trial is the one retrained.")
    section.table(["trial", "outcome", "epochs", "last valid acc", "settings"],
                  [[t["trial"], t["outcome"], _fmt(t["epochs"]), _fmt(t["last_valid_acc"]),
                    _settings_text(t["settings"])] for t in sorted(trials, key=lambda t: t["trial"])])
    if any(t["last_valid_acc"] is not None for t in trials):
        section.figure(f"{study.name}_search.png", figures.search_figure(trials, f"{study.name}: search"),
                       "validation accuracy of each trial, and the best completed so far")
    elif trials:
        section.text("No finished search trial ended an epoch, so there is no figure of their validation accuracy.")
    if finals:
        _finals_block(section, study, trials, finals, out, shared)
    else:
        section.text("The best configuration has not been retrained yet." if completed else
                     "No search trial has completed, so there is no configuration to retrain yet.")
    return section


def _finals_block(section, study, trials, finals, out, shared):
    """What a search's final runs show: the best configuration's test accuracy from those that completed, the
    others' outcomes, its full hyperparameters, the runs' table and curves, and the best model's pictures."""
    done = _completed(finals)  # a final run still training, or one that diverged, has no test accuracy
    if done:
        tests = [run["results"].get("test_acc") for run in done]
        seconds = [sum(run["results"].get("train_seconds") or []) for run in done]
        seeds = [str(run["trial"]["seed"]) for run in done]
        retrained = "once" if len(done) == 1 else f"{len(done)} times"
        retrained += f" ({'seed' if len(seeds) == 1 else 'seeds'} {_and_list(seeds)})"
        section.text(f"The best configuration, retrained {retrained} on the training split and tested once"
                     f"{'' if len(done) == 1 else ' each'}: test accuracy {_mean_std(tests)}; training time "
                     f"{_mean_std(seconds, 1)} s per run (training epochs only) on "
                     f"{done[0]['results'].get('device_name', 'an unknown device')}.")
        source = next((t for t in trials if t["trial"] == done[0]["trial"].get("source_trial")), None)
        retrained_accs = [acc for acc in map(_final_valid_acc, done) if acc is not None]
        if source and source["value"] is not None and retrained_accs:
            section.text(f"Final validation accuracy of the retrained runs: {_mean_std(retrained_accs)}, against "
                         f"{source['value']:.4f} for trial {source['trial']} (seed {source['seed']}), which the "
                         "search ranked best.")
    else:
        section.text(f"No final run has completed yet, so the best configuration has no test accuracy "
                     f"({counted(len(finals), 'final run')} started).")
    for line in _outcome_sentences(finals) + _epochs_sentences(finals, "The final runs"):
        section.text(line)
    logged = next((run for run in done + finals if run["results"].get("args")), None)
    if logged:
        args = logged["results"]["args"]
        unused = {"momentum"} if args.get("optimizer") != "momentum" else set()
        unused |= {"weight_decay"} if args.get("optimizer") == "adam" else set()
        unused |= {"warmup_fraction"} if args.get("lr_schedule") == "constant" else set()
        seeds = [str(run["trial"]["seed"]) for run in finals if run["trial"]]
        best_rows = [[key, ", ".join(seeds) if key == "seed" and seeds else _exact(args[key])]
                     for key in BEST_KEYS if key in args and key not in unused]
        best_rows += [[f"model: {key}", _exact(value)]
                      for key, value in logged["results"].get("model_config", {}).items()]
        section.text("Full hyperparameters of the final runs:")
        section.table(["hyperparameter", "value"], best_rows)
    section.table(RUN_HEADER, [run_row(run) for run in finals])
    _shared_processor_text(section, finals, shared)  # the trials' times are not reported
    section.figure(f"{study.name}_final_curves.png", figures.curves_page({"final": finals}, f"{study.name}: final runs"),
                   "training curves of the final runs")
    pictures = next(filter(None, (_visualisations(run, study.model) for run in done)), [])
    if pictures:
        section.figure(f"{study.name}_visualisation.png", figures.images_figure(pictures, study.name),
                       "first-layer weights of the best model")
    if study.model == "mlpmixer":
        _comparison_block(section, pictures, out)


def _visualisations(run, model):
    """``(caption, image)`` of each first-layer picture that ``run`` saved."""
    return [(caption, imread(os.path.join(run["path"], filename)))
            for filename, caption in VISUALISATIONS.get(model, ())
            if os.path.isfile(os.path.join(run["path"], filename))]


def _shared_processor_text(section, runs, shared):
    sentence = shared_processor_sentence(runs, shared)
    if sentence:
        section.text(sentence)


def _comparison_block(section, mixer_pictures, out):
    folder = os.path.join(out, "resnet18_best", RUNS_FOLDER)
    finals = sorted(name for name in os.listdir(folder) if name.startswith("final_")) if os.path.isdir(folder) else []
    kernels = next(filter(os.path.isfile, (os.path.join(folder, name, "resnet18_kernels_rgb.png") for name in finals)),
                   None)
    if not mixer_pictures or not kernels:
        section.text("The comparison with the ResNet18 kernels needs the final runs of both searches.")
        return
    section.figure("comparison_mixer_resnet.png", figures.images_figure(
        [("ResNet18: first-layer 3x3 kernels (RGB)", imread(kernels)),
         (f"MLP-Mixer: {mixer_pictures[0][0]}", mixer_pictures[0][1])],
        "first layers of the two best models"), "ResNet18 kernels beside the MLP-Mixer's token-mixing weights")
