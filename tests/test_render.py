"""The report's building blocks on their own: the PDF's text pages and tables, and the figures' axes and captions.
The report built from logs is in test_report.py."""
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from studies import figures
from studies.render import _text_table


def test_a_full_text_page_fits_inside_the_pdf_page():
    lines = ["W" * figures.TEXT_PAGE_COLUMNS] * figures.TEXT_PAGE_LINES
    fig = figures.text_page("a section", lines)
    renderer = FigureCanvasAgg(fig).get_renderer()
    page = fig.bbox
    for text in fig.texts:
        box = text.get_window_extent(renderer)
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, box
    with pytest.raises(ValueError):
        figures.text_page("a section", lines + ["one line too many"])


def _visible_ticks(ax):
    low, high = ax.get_xlim()
    return [float(tick) for tick in ax.get_xticks() if low <= tick <= high]


@pytest.mark.parametrize("count", [1, 4])
def test_the_search_figure_marks_whole_trial_numbers_only(count):
    trials = [{"trial": n, "outcome": "completed", "last_valid_acc": 0.5 + 0.1 * n} for n in range(count)]
    ticks = _visible_ticks(figures.search_figure(trials, "search").axes[0])
    assert ticks and all(tick.is_integer() for tick in ticks), ticks


@pytest.mark.parametrize("epochs", [1, 3, 40])
def test_the_curves_mark_whole_epochs_only_under_their_axis_labels(epochs):
    run = {"results": {key: [0.5] * epochs for key, _ in figures.CURVES}}
    page = figures.curves_page({"final": [run]}, "final runs")
    single = figures.curve_figure({"relu": [run]}, "valid_accs", "validation accuracy", "mlp_activation: validation "
                                  "accuracy", legend_title="activation")
    assert single.axes[0].get_title() == "mlp_activation: validation accuracy"
    assert single.axes[0].get_legend().get_title().get_text() == "activation"
    for ax, label in [*zip(page.axes, [label for _, label in figures.CURVES]), (single.axes[0], "validation accuracy")]:
        ticks = _visible_ticks(ax)
        assert ticks and all(tick.is_integer() for tick in ticks), ticks
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", label)


def test_the_search_figure_shows_every_trial_that_logged_an_accuracy_by_its_outcome():
    outcomes = ("completed", "pruned", "diverged", "error")
    trials = [{"trial": n, "outcome": outcome, "last_valid_acc": 0.125 * (n + 1)} for n, outcome in enumerate(outcomes)]
    trials.append({"trial": 4, "outcome": "error", "last_valid_acc": None})  # raised before its first epoch
    ax = figures.search_figure(trials, "search").axes[0]
    drawn = {collection.get_label(): collection.get_offsets().tolist() for collection in ax.collections}
    assert drawn == {"completed": [[0, 0.125]], "pruned": [[1, 0.25]], "diverged": [[2, 0.375]],
                     "raised an error": [[3, 0.5]]}


def test_a_caption_wider_than_its_picture_stays_on_the_figure():
    square, strip = np.ones((70, 70, 3)), np.ones((40, 400, 3))  # the kernels beside a long token-mixing strip
    fig = figures.images_figure([("ResNet18: first-layer 3x3 kernels (RGB)", square),
                                 ("MLP-Mixer: first block's token-mixing weights", strip)], "first layers")
    renderer = FigureCanvasAgg(fig).get_renderer()
    for ax in fig.axes:
        box = ax.title.get_window_extent(renderer)
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, (ax.title.get_text(), box)


def test_a_pdf_table_wraps_its_last_column_under_that_column_within_the_page():
    note = " ".join(f"word{i}" for i in range(40))
    lines = _text_table(("setting", "value", "note"), [("lr", "0.1", note), ("epochs", "15", "short")], page_width=60)
    column = lines[0].index("note")
    assert lines[0].split() == ["setting", "value", "note"] and lines[-1].split() == ["epochs", "15", "short"]
    assert all(len(line) <= 60 for line in lines)
    wrapped = lines[1:-1]
    assert len(wrapped) > 1 and wrapped[0][:column].split() == ["lr", "0.1"]
    assert all(not line[:column].strip() for line in wrapped[1:])  # continuation lines: the last column only
    assert all(line[column] != " " for line in wrapped)
    assert " ".join(line[column:] for line in wrapped).split() == note.split()  # every word, in order
