"""The report's section of a search study: its space, its trials and their outcomes, the best configuration's
final runs with their test accuracy and full hyperparameters, and the best model's first-layer pictures with how far
training moved them from their initialisation (for the MLP-Mixer, set beside the ResNet18's kernels)."""
import os

from matplotlib.image import imread

from . import figures
from .class_sections import class_accuracy_block, confusion_block
from .render import Section
from .run_values import completed_runs, final_valid_acc, fmt, mean_std
from .search import PRUNE_AFTER_TRIALS, PRUNE_FROM_EPOCH, PRUNE_PEERS, RANDOM_TRIALS
from .sections import (RUN_HEADER, and_list, counted, epochs_sentences, hyperparameter_rows, outcome_sentences, run_row,
                       shared_processor_text)
from .weight_sections import first_layer_block

# the pictures that each model's visualize() saves, with their captions: each picture carries its own title, small on
# the ResNet's two grids, which a short caption tells apart
VISUALISATIONS = {"resnet18": (("resnet18_kernels_rgb.png", "RGB"), ("resnet18_kernels_gray.png", "channel average")),
                  "mlpmixer": (("mlpmixer_token_mixing.png", None),)}


def _settings_text(settings):
    return ", ".join(f"{key}={fmt(value)}" for key, value in sorted(settings.items()))


def _search_trials(runs):
    return [dict(run["trial"], last_valid_acc=final_valid_acc(run), epochs=run["results"].get("epochs_completed"))
            for run in runs if run["trial"] and run["trial"]["role"] == "search"]


def _best_trial(trials):
    """The trial the search retrains: the highest final validation accuracy, the earliest of those tied."""
    completed = [t for t in trials if t["outcome"] == "completed"]
    return max(completed, key=lambda t: (t["value"], -t["trial"])) if completed else None


def search_section(study, runs_of, shared):
    """The section of search ``study`` from ``runs_of``, every study's runs (the MLP-Mixer's section sets its
    pictures beside the ResNet18's)."""
    runs = runs_of[study.name]
    section = Section(f"{study.name}: {study.question}")
    trials = _search_trials(runs)
    fixed = ", ".join(f"{key}={value}" for key, value in study.fixed.items())
    section.text(f"Search space (Optuna TPE sampler, the first {RANDOM_TRIALS} trials drawn at random, trials still "
                 "running on other workers counted as poor; median pruner: from epoch "
                 f"{PRUNE_FROM_EPOCH} to a trial's last but one, once {PRUNE_AFTER_TRIALS} trials have completed, a "
                 "trial stops if its best validation accuracy so far is below the median at that epoch of the "
                 f"completed trials with as many epochs, when there are at least {PRUNE_PEERS})"
                 + (f"; fixed {fixed}" if fixed else "") + ":")
    held = {key: trial["settings"][key] for trial in trials for key in trial.get("held", ())}
    section.table(["setting", "Optuna parameter", "distribution"],
                  [[d.setting, "-", f"held at {fmt(held[d.setting])} by the launch's flags"] if d.setting in held
                   else [d.setting, d.name, d.describe()] for d in study.space])
    counts = {}
    for trial in trials:
        counts[trial["outcome"]] = counts.get(trial["outcome"], 0) + 1
    tally = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "none"
    section.text(f"{counted(len(trials), 'search trial')} finished: {tally}.")
    completed = [t for t in trials if t["outcome"] == "completed"]
    best = _best_trial(trials)
    if best:
        section.text(f"Best trial: {best['trial']}, final validation accuracy {best['value']:.4f} after "
                     f"{counted(best['epochs'], 'epoch')}; its settings: {_settings_text(best['settings'])}.")
        tied = sorted(t["trial"] for t in completed if t["value"] == best["value"] and t is not best)
        if tied:
            section.text(f"{'Trial' if len(tied) == 1 else 'Trials'} {and_list([str(n) for n in tied])} reached the "
                         "same validation accuracy; the earliest trial is the one retrained.")
    section.table(["trial", "outcome", "epochs", "last valid acc", "settings"],
                  [[t["trial"], t["outcome"], fmt(t["epochs"]), fmt(t["last_valid_acc"]),
                    _settings_text(t["settings"])] for t in sorted(trials, key=lambda t: t["trial"])])
    if any(t["last_valid_acc"] is not None for t in trials):
        section.figure(f"{study.name}_search.png", figures.search_figure(trials, f"{study.name}: search"),
                       "validation accuracy of each trial, and the best completed so far")
    elif trials:
        section.text("No finished search trial ended an epoch, so there is no figure of their validation accuracy.")
    finals, earlier = _finals_of(best, runs)
    if finals:
        _finals_block(section, study, trials, finals, runs_of, shared)
    else:
        section.text("The best configuration has not been retrained yet." if completed else
                     "No search trial has completed, so there is no configuration to retrain yet.")
    for source, names in sorted(earlier.items()):
        section.text(f"Not counted: the final {'run' if len(names) == 1 else 'runs'} {and_list(names)}, which "
                     f"retrained trial {source}, the best trial before later trials beat it.")
    return section


def _finals_of(best, runs):
    """The final runs that retrain the ``best`` trial (or whose trial is not known yet: still training), and
    ``source trial -> names`` of those that retrain another, the best before the search was extended."""
    finals = [run for run in runs if run["name"].startswith("final_")]
    earlier = {}
    for run in finals:
        source = (run["trial"] or {}).get("source_trial")
        if best is not None and source is not None and source != best["trial"]:
            earlier.setdefault(source, []).append(run["name"])
    return [run for run in finals if not any(run["name"] in names for names in earlier.values())], earlier


def _finals_block(section, study, trials, finals, runs_of, shared):
    """What a search's final runs show: the best configuration's test accuracy from those that completed, the
    others' outcomes, its full hyperparameters, the runs' table and curves, and the best model's pictures."""
    done = completed_runs(finals)  # a final run still training, or one that diverged, has no test accuracy
    if done:
        tests = [run["results"].get("test_acc") for run in done]
        seconds = [sum(run["results"].get("train_seconds") or []) for run in done]
        seeds = [str(run["trial"]["seed"]) for run in done]
        retrained = "once" if len(done) == 1 else f"{len(done)} times"
        retrained += f" ({'seed' if len(seeds) == 1 else 'seeds'} {and_list(seeds)})"
        section.text(f"The best configuration, retrained {retrained} on the training split and tested once"
                     f"{'' if len(done) == 1 else ' each'}: test accuracy {mean_std(tests)}; training time "
                     f"{mean_std(seconds, 1)} s per run (training epochs only) on "
                     f"{done[0]['results'].get('device_name', 'an unknown device')}.")
        if len(done) > 1:
            section.text(f"Here and below, a ± b is the mean and the sample standard deviation over the "
                         f"{len(done)} retrained runs.")
        source = next((t for t in trials if t["trial"] == done[0]["trial"].get("source_trial")), None)
        retrained_accs = [acc for acc in map(final_valid_acc, done) if acc is not None]
        if source and source["value"] is not None and retrained_accs:
            section.text(f"Final validation accuracy of the retrained runs: {mean_std(retrained_accs)}, against "
                         f"{source['value']:.4f} for trial {source['trial']} (seed {source['seed']}), which the "
                         "search ranked best.")
    else:
        section.text(f"No final run has completed yet, so the best configuration has no test accuracy "
                     f"({counted(len(finals), 'final run')} started).")
    for line in outcome_sentences(finals) + epochs_sentences(finals, "The final runs"):
        section.text(line)
    best_rows = hyperparameter_rows(finals)
    if best_rows:
        section.text("Full hyperparameters of the final runs:")
        section.table(["hyperparameter", "value"], best_rows)
    section.table(RUN_HEADER, [run_row(run) for run in finals])
    shared_processor_text(section, finals, shared)  # the trials' times are not reported
    section.figure(f"{study.name}_final_curves.png", figures.curves_page({"final": finals}, f"{study.name}: final runs"),
                   "training curves of the final runs")
    class_accuracy_block(section, {run["name"]: [run] for run in done}, "final run")
    confusion_block(section, study.name, done, "the final runs")
    pictured, pictures = next(((run, found) for run in done if (found := _visualisations(run, study.model))),
                              (None, []))
    if pictures:
        section.figure(f"{study.name}_visualisation.png",
                       figures.images_figure(pictures, f"{study.name}: final run {pictured['name']}"),
                       f"first-layer weights of {pictured['name']}, a final run of the best configuration")
    first_layer_block(section, {run["name"]: [run] for run in done}, "final run")
    if study.model == "mlpmixer":
        _comparison_block(section, pictured, pictures, runs_of.get("resnet18_best", []))


def _visualisations(run, model):
    """``(caption, image)`` of each first-layer picture that ``run`` saved."""
    return [(caption, imread(os.path.join(run["path"], filename)))
            for filename, caption in VISUALISATIONS.get(model, ())
            if os.path.isfile(os.path.join(run["path"], filename))]


def _comparison_block(section, mixer_run, mixer_pictures, resnet_runs):
    finals, _ = _finals_of(_best_trial(_search_trials(resnet_runs)), resnet_runs)
    resnet_run, kernels = next(((run, path) for run in completed_runs(finals)
                                if os.path.isfile(path := os.path.join(run["path"], "resnet18_kernels_rgb.png"))),
                               (None, None))
    if not mixer_pictures or not kernels:
        section.text("The comparison with the ResNet18 kernels needs the final runs of both searches.")
        return
    resnet, mixer = (f"{run['study']} {run['name']}" for run in (resnet_run, mixer_run))
    section.figure("comparison_mixer_resnet.png", figures.images_figure(
        [(f"ResNet18: {resnet}", imread(kernels)), (f"MLP-Mixer: {mixer}", mixer_pictures[0][1])],
        "first layers of the two best configurations"),
        f"ResNet18 kernels ({resnet}) beside the MLP-Mixer's token-mixing weights ({mixer})")
    moved = [run["results"].get("first_layer") for run in (resnet_run, mixer_run)]
    if all(moved):
        section.text(f"Training moved the ResNet18's kernels by {fmt(moved[0]['moved'], 3)} of their initial norm "
                     f"and the MLP-Mixer's token-mixing weights by {fmt(moved[1]['moved'], 3)}.")
