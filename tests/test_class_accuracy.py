"""Test accuracy by class: the confusion matrix that a run's test evaluation counts (training.class_accuracy), and
the report's table, sentences and figure from it (studies.class_sections)."""
import numpy as np
import pytest
import torch

from report_logs import logged_confusion, markdown_of, write_activation_runs, write_fixture_logs, write_run
from studies import figures
from training.cifar10 import CLASS_NAMES
from training.class_accuracy import (class_accuracies, confusion_record, count_batch, new_confusion, summary_line,
                                     summed, top_confusion)
from utils import compute_accuracy


def test_a_batch_is_counted_at_each_images_label_and_prediction():
    labels = torch.tensor([0, 1, 1, 2, 9])
    logits = torch.full((5, 10), -1.0)
    for row, predicted in enumerate([0, 2, 1, 2, 0]):
        logits[row, predicted] = 1.0
    confusion = new_confusion("cpu")
    count_batch(confusion, logits, labels)
    count_batch(confusion, logits[:1], labels[:1])  # a second batch adds to the first
    expected = torch.zeros(10, 10, dtype=torch.long)
    for label, predicted in [(0, 0), (1, 2), (1, 1), (2, 2), (9, 0), (0, 0)]:
        expected[label, predicted] += 1
    assert torch.equal(confusion, expected)
    record = confusion_record(confusion)
    assert record["classes"] == list(CLASS_NAMES) and record["counts"] == expected.tolist()
    single = new_confusion("cpu")
    count_batch(single, logits, labels)
    assert single.trace() / len(labels) == compute_accuracy(logits, labels)  # the diagonal is what accuracy counts


def test_class_accuracies_sums_and_the_most_frequent_mistake():
    record = logged_confusion([900, 800] + [1000] * 8, taken_for=[(1, 9)], per_class=1000)
    record["counts"][9] = [0] * 10  # a class without test images has no accuracy
    accuracies = class_accuracies(record)
    assert accuracies["airplane"] == 0.9 and accuracies["automobile"] == 0.8 and accuracies["truck"] is None
    assert top_confusion(record) == ("automobile", "truck", pytest.approx(0.2))
    twice = summed([record, record])
    assert twice["counts"][0][0] == 1800 and class_accuracies(twice) == accuracies
    tie = logged_confusion([900, 900] + [1000] * 8)  # airplane as automobile, automobile as bird: 100 each
    assert top_confusion(tie) == ("airplane", "automobile", pytest.approx(0.1))  # the first in label order
    assert top_confusion(logged_confusion([1000] * 10)) is None
    assert summary_line(record) == ("test accuracy by class: airplane 0.900, automobile 0.800, bird 1.000, cat 1.000, "
                                    "deer 1.000, dog 1.000, frog 1.000, horse 1.000, ship 1.000, truck -")


def test_a_grid_tabulates_each_settings_class_accuracies_summed_over_its_runs(tmp_path):
    out = str(tmp_path / "runs")
    cat = CLASS_NAMES.index("cat")
    for seed, cats in ((42, 300), (43, 500)):  # 0.4 over both runs; every other class right
        correct = [1000] * 10
        correct[cat] = cats
        write_run(out, "mlp_activation", f"activation-relu_seed-{seed}", {"activation": "relu"}, [0.2, 0.5],
                  seed=seed, logged={"test_confusion": logged_confusion(correct, taken_for=[(cat, 5)])})
    write_run(out, "mlp_activation", "activation-tanh_seed-42", {"activation": "tanh"}, [0.2, 0.4],
              logged={"test_confusion": logged_confusion([800] * 10)})
    write_run(out, "mlp_activation", "activation-tanh_seed-43", {"activation": "tanh"}, [0.2], outcome="pruned",
              seed=43, logged={"test_confusion": logged_confusion([0] * 10)})  # not completed: not counted
    text = markdown_of(out)
    assert ("Test accuracy by class: the share of each class's test images (1,000 per class in each run) that the "
            "model predicted as that class; counts summed over completed runs.\n") in text
    assert ("| activation | airplane | automobile | bird | cat | deer | dog | frog | horse | ship | truck |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n"
            "| relu | 1.000 | 1.000 | 1.000 | 0.400 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |\n"
            "| tanh | 0.800 | 0.800 | 0.800 | 0.800 | 0.800 | 0.800 | 0.800 | 0.800 | 0.800 | 0.800 |\n") in text
    assert "Lowest test accuracy of a class, by activation: relu cat 0.400, tanh airplane 0.800.\n" in text
    assert ("Most frequent mistake, by activation: relu: cat predicted as dog (0.600 of cat images); tanh: airplane "
            "predicted as automobile (0.200 of airplane images).\n") in text


def test_runs_without_a_logged_confusion_have_no_class_table(tmp_path):
    text = markdown_of(write_activation_runs(tmp_path, [("relu", [0.6]), ("tanh", [0.5])]))  # an older version's logs
    assert "Test accuracy by class" not in text and "| airplane |" not in text


def test_a_search_tabulates_each_completed_final_run_and_no_trial(tmp_path):
    out = write_fixture_logs(str(tmp_path / "runs"))
    write_run(out, "resnet18_best", "final_seed-44", {}, [0.8, 0.9], role="final", seed=44, trial=3, source_trial=0,
              test_acc=0.9, logged={"test_confusion": logged_confusion([900] * 10)})
    section = markdown_of(out).split("## resnet18_best", 1)[1].split("\n## ", 1)[0]
    assert ("| final run | airplane | automobile | bird | cat | deer | dog | frog | horse | ship | truck |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n"
            "| final_seed-43 | 0.930 | 0.930 | 0.930 | 0.930 | 0.930 | 0.930 | 0.930 | 0.930 | 0.930 | 0.930 |\n"
            "| final_seed-44 | 0.900 | 0.900 |") in section
    assert "| trial-0000 | 0." not in section.split("| final run | airplane", 1)[1].split("\n\n", 1)[0]
    assert "counts summed" not in section  # one run a row
    assert ("![test images of each true class (rows) by predicted class (columns), as shares of the row, from the "
            "final runs (2 runs, summed)](resnet18_best_confusion.png)") in section
    assert "(mlpmixer_best_confusion.png)" in markdown_of(out)  # its one final run


def test_the_confusion_figure_shows_each_rows_shares_and_leaves_a_class_without_images_blank():
    record = logged_confusion([900, 500] + [1000] * 8)
    record["counts"][9] = [0] * 10
    fig = figures.confusion_figure(record, "title")
    ax = fig.axes[0]
    shares = ax.images[0].get_array()
    assert shares[0, 0] == 0.9 and shares[1, 2] == 0.5 and np.ma.getmaskarray(shares)[9].all()  # NaN: not drawn
    written = {text.get_text() for text in ax.texts}
    assert {"0.90", "0.10", "0.50", "1.00"} <= written and len(ax.texts) == 9 * 10  # none on the blank row
    assert [label.get_text() for label in ax.get_yticklabels()] == list(CLASS_NAMES)
