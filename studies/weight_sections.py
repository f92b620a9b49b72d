"""The report's blocks on what training made of the models' weights, from what each run logged once it completed:
an MLP's hidden units (``training.hidden_units``), and the first layer that Problem 4 pictures
(``training.first_layer``)."""
from training.first_layer import MEASURES

from . import figures
from .run_values import fmt, logged_values, mean_or_none, mean_std


def hidden_unit_block(section, study_name, groups, setting):
    """What an MLP's hidden units let through their activation after training (``training.hidden_units``), by
    setting and layer: the logs' evidence of why one activation trains better than another."""
    measured = logged_values(groups, "hidden_units")
    if not measured:
        return
    first = next(iter(measured.values()))[0]
    peaks = ", ".join(f"{name} {stats[0]['derivative_peak']:g}" for name, stats in measured.items())
    section.text(f"Hidden units after the last epoch, over the {first['images']:,} validation images (mean over "
                 "completed runs). Mean derivative: the mean slope of each layer's activation at its inputs, which "
                 f"scales the gradient that passes through it (at most {peaks}). Flat share: the share of unit-image "
                 f"pairs at which that slope is under {first['flat_below']:g} times its peak (relu's negative inputs, "
                 "the saturated tails of tanh and sigmoid). Units always flat: the share of units flat on every image "
                 "(for relu: dead units).")
    rows, means = [], {}
    for name, stats in measured.items():
        for index, layer in enumerate(stats[0]["layers"]):
            column = [run["layers"][index] for run in stats if len(run["layers"]) > index]
            values = {key: [measures[key] for measures in column]
                      for key in ("mean_derivative", "flat_share", "units_always_flat")}
            rows.append([name, index + 1, fmt(layer["units"])] + [mean_std(listed, 3) for listed in values.values()])
            means.setdefault(name, []).append((mean_or_none(values["mean_derivative"]),
                                               mean_or_none(values["flat_share"])))
    section.table([setting, "hidden layer", "units", "mean derivative", "flat share", "units always flat"], rows)
    title = f"{study_name}: hidden units after the last epoch, by layer"
    section.figure(f"{study_name}_hidden_units.png",
                   figures.hidden_unit_figure(means, first["flat_below"], setting, title),
                   f"each hidden layer's mean activation derivative and flat share, one line per {setting}")


def first_layer_block(section, groups, label):
    """How far training moved the first layer that Problem 4 pictures from its random initialisation, and the
    model's measure of it before and after, for each of ``groups`` (a name, in the column ``label``: its runs, of
    which those that completed count)."""
    logged = logged_values(groups, "first_layer")  # none for an MLP
    if not logged:
        return
    every = [stats for listed in logged.values() for stats in listed]
    units = {stats["units"] for stats in every}
    several = any(len(listed) > 1 for listed in logged.values())
    text = (f"The first layer against its random initialisation ({every[0]['weight']}"
            + (f", {fmt(every[0]['units'])} units" if len(units) == 1 else "")
            + ("; mean over completed runs" if several else "") + "). Moved: the norm of what training changed over "
            "the norm of the initial weights; below 1, the initial random weights outweigh what training added to the "
            "picture.")
    header, stages = [label, "moved"], ()
    measure = next((stats["measure"] for stats in every if stats["measure"] in MEASURES), None)
    if measure:
        measure_name, definition, reference, missing_when = MEASURES[measure]
        stages = ("initial", "trained", "change")
        header += [f"{measure_name}, {stage}" for stage in stages]
        text += (f" {measure_name.capitalize()}: {definition} ({reference}), of the initial weights, of the trained "
                 "ones and of the change between them")
        text += (f"; a dash where there is none ({missing_when})." if any(stats["trained"] is None for stats in every)
                 else ".")
    section.text(text)
    section.table(header, [[name, mean_std([stats["moved"] for stats in listed], 3)]
                           + [mean_std([stats[stage] for stats in listed], 3) for stage in stages]
                           for name, listed in logged.items()])
