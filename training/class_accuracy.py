"""Test accuracy by class: the confusion matrix that the test evaluation counts, and what the console and the report
read from it (which classes a model gets wrong, and what it takes them for).

The matrix has one row per true class and one column per predicted class, in CIFAR-10's label order; a prediction is
``argmax`` of the logits, as ``utils.compute_accuracy`` takes it, so the diagonal's sum over the matrix's sum is the
run's test accuracy.
"""
import torch

from .cifar10 import CLASS_NAMES, NUM_CLASSES


def new_confusion(device):
    """An empty ``[NUM_CLASSES, NUM_CLASSES]`` count on ``device``, which ``count_batch`` fills."""
    return torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long, device=device)


def count_batch(confusion, logits, labels):
    """Adds each image of the batch to ``confusion`` at (its label, its predicted class), on the device, without
    waiting for it."""
    pairs = labels.long() * NUM_CLASSES + logits.argmax(1)
    confusion += torch.bincount(pairs, minlength=NUM_CLASSES * NUM_CLASSES).view(NUM_CLASSES, NUM_CLASSES)


def confusion_record(confusion):
    """``{"classes", "counts"}``, as ``results.json`` logs it: the class names, and the counts as nested lists (rows:
    true class; columns: predicted class)."""
    return {"classes": list(CLASS_NAMES), "counts": confusion.tolist()}


def class_accuracies(record):
    """Each class's share of its images that were predicted as it, by class name (None for a class without images)."""
    return {name: (row[index] / sum(row) if sum(row) else None)
            for index, (name, row) in enumerate(zip(record["classes"], record["counts"]))}


def summed(records):
    """One record whose counts are the sum of ``records``' (several seeds' test evaluations)."""
    counts = [[sum(cells) for cells in zip(*rows)] for rows in zip(*(record["counts"] for record in records))]
    return {"classes": records[0]["classes"], "counts": counts}


def top_confusion(record):
    """``(true class, predicted class, share of the true class's images)`` of the most frequent mistake, or None
    where there is none."""
    counts = record["counts"]
    mistakes = [(counts[true][predicted], true, predicted) for true in range(len(counts))
                for predicted in range(len(counts[true])) if predicted != true and counts[true][predicted]]
    if not mistakes:
        return None
    count, true, predicted = max(mistakes, key=lambda mistake: mistake[0])  # the first in label order on a tie
    return record["classes"][true], record["classes"][predicted], count / sum(counts[true])


def summary_line(record):
    """The test accuracy of each class in one line for the console."""
    shown = ", ".join(f"{name} {'-' if accuracy is None else f'{accuracy:.3f}'}"
                      for name, accuracy in class_accuracies(record).items())
    return f"test accuracy by class: {shown}"
