"""The report's blocks on test accuracy by class, from the confusion matrix that each completed run's test evaluation
logged (``training.class_accuracy``): which classes a setting gets wrong, and what it takes them for, as a table and
sentences, and as a figure of the matrix."""
from training.class_accuracy import class_accuracies, summed, top_confusion

from . import figures
from .run_values import fmt, logged_values


def class_accuracy_block(section, groups, label):
    """A table of each group's test accuracy by class (``groups``: a name, in the column ``label``, and its runs, of
    which those that completed count; several runs' counts are summed), then each group's lowest class and most
    frequent mistake."""
    logged = logged_values(groups, "test_confusion")  # none where the test set was not used (a search's trials)
    if not logged:
        return
    records = {name: summed(listed) for name, listed in logged.items()}
    classes = next(iter(records.values()))["classes"]
    sizes = {sum(row) for listed in logged.values() for record in listed for row in record["counts"]}
    several = any(len(listed) > 1 for listed in logged.values())
    section.text("Test accuracy by class: the share of each class's test images"
                 + (f" ({sizes.pop():,} per class in each run)" if len(sizes) == 1 else "")
                 + " that the model predicted as that class"
                 + ("; counts summed over completed runs." if several else "."))
    accuracies = {name: class_accuracies(record) for name, record in records.items()}
    section.table([label] + classes, [[name] + [fmt(by_class.get(class_name), 3) for class_name in classes]
                                      for name, by_class in accuracies.items()])
    lowest, mistakes = [], []
    for name, by_class in accuracies.items():
        measured = {class_name: value for class_name, value in by_class.items() if value is not None}
        if measured:
            hardest = min(measured, key=measured.get)  # the first in label order on a tie
            lowest.append(f"{name} {hardest} {measured[hardest]:.3f}")
        found = top_confusion(records[name])
        if found:
            true, predicted, share = found
            mistakes.append(f"{name}: {true} predicted as {predicted} ({share:.3f} of {true} images)")
    if lowest:
        section.text(f"Lowest test accuracy of a class, by {label}: {', '.join(lowest)}.")
    if mistakes:
        section.text(f"Most frequent mistake, by {label}: {'; '.join(mistakes)}.")


def confusion_block(section, study_name, runs, which):
    """The confusion matrix of ``runs``' test evaluations (those that completed and logged one), summed, as a figure;
    ``which`` names the runs in its caption."""
    logged = logged_values({"runs": runs}, "test_confusion")
    if not logged:
        return
    records = logged["runs"]
    counted = f"{len(records)} runs, summed" if len(records) > 1 else "one run"
    section.figure(f"{study_name}_confusion.png",
                   figures.confusion_figure(summed(records), f"{study_name}: test predictions of {which} ({counted})"),
                   f"test images of each true class (rows) by predicted class (columns), as shares of the row, from "
                   f"{which} ({counted})")
