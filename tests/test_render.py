"""The report's building blocks on their own: the PDF's text pages and tables, and the figures' axes and captions.
The report built from logs is in test_report.py."""
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb

from studies import figures, render
from studies.render import Section, _paged, _text_table


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
    with pytest.raises(ValueError):
        figures.text_page("a section", ["W" * (figures.TEXT_PAGE_COLUMNS + 1)])
    empty = figures.text_page("a section with no text", [])
    assert [text.get_text() for text in empty.texts] == ["a section with no text", ""]


def test_a_block_that_would_cross_the_end_of_a_page_starts_the_next_one_whole():
    per_page = figures.TEXT_PAGE_LINES
    table = _text_table(["run", "acc"], [[f"run-{k}", "0.5"] for k in range(5)])
    pages = _paged([(["a paragraph line"] * (per_page - 3), None), (table, 0), (["after"], None)])
    assert pages == [["a paragraph line"] * (per_page - 3), table + ["", "after"]]
    assert _paged([]) == [[]] and _paged([([], None)]) == [[]]  # an empty section still has its page


def test_a_table_longer_than_a_page_goes_on_under_its_header_repeated():
    per_page = figures.TEXT_PAGE_LINES
    table = _text_table(["trial", "outcome"], [[str(k), "completed"] for k in range(2 * per_page)])
    pages = _paged([(["an opening line"], None), (["its paragraph"] + [""] + table, 2)])
    assert pages[0][:5] == ["an opening line", "", "its paragraph", "", table[0]]
    assert all(page[0] == table[0] and len(page) <= per_page for page in pages[1:]) and len(pages) == 3
    rows = [line for page in pages for line in page if line not in ("an opening line", "its paragraph", "", table[0])]
    assert rows == table[1:]  # every row once, in order
    paragraph = [f"paragraph line {k}" for k in range(5)]
    cut = _paged([(["filler"] * (per_page - 3), None), (paragraph + [""] + table, 6)])  # cut inside the paragraph
    assert cut[0][-2:] == paragraph[:2] and cut[1][:3] == paragraph[2:]  # no header before the table's own
    assert all(page[0] == table[0] for page in cut[2:])


def test_the_paragraph_before_a_table_stays_on_its_page(monkeypatch):
    pages = []
    monkeypatch.setattr(figures, "text_page", lambda title, lines: pages.append((title, lines)))
    section = Section("a section")
    section.text("filler " * 20)
    for _ in range(figures.TEXT_PAGE_LINES // 2 - 3):
        section.text("a short paragraph")
    section.text("Hyperparameters of these runs.")
    section.table(["hyperparameter", "value"], [["lr", "0.001"], ["epochs", "15"], ["seed", "42"]])
    render._section_pages(section)
    assert [title for title, _ in pages] == ["a section", "a section (continued)"]
    assert pages[1][1][:3] == ["Hyperparameters of these runs.", "", "hyperparameter  value"]


def _visible_ticks(ax):
    low, high = ax.get_xlim()
    return [float(tick) for tick in ax.get_xticks() if low <= tick <= high]


def test_a_section_title_too_long_for_the_page_is_set_smaller_to_fit_and_a_short_one_is_not():
    short, long = "resnet18_lr: a question", "mlpmixer_best: " + "Which hyperparameters train it best? " * 3
    fig = figures.text_page(long + "(continued)", [])
    renderer = FigureCanvasAgg(fig).get_renderer()
    title = fig.texts[0].get_window_extent(renderer)
    assert fig.bbox.x0 <= title.x0 and title.x1 <= fig.bbox.x1, title
    assert fig.texts[0].get_fontsize() < 15 == figures.text_page(short, []).texts[0].get_fontsize()


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
    assert [text.get_text() for text in page.texts] == ["final runs"]  # the PDF page's title
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
    assert sorted(text.get_text() for text in ax.get_legend().get_texts()) == [
        "best so far", "completed", "diverged", "pruned", "raised an error"]


def test_a_caption_wider_than_its_picture_is_wrapped_clear_of_its_neighbour_and_on_the_figure():
    square, strip = np.ones((70, 70, 3)), np.ones((40, 400, 3))  # the kernels beside a long token-mixing strip
    fig = figures.images_figure([("ResNet18: first-layer 3x3 kernels (RGB)", square),
                                 ("MLP-Mixer: first block's token-mixing weights", strip)], "first layers")
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    for ax, box in zip(fig.axes, boxes):
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, (ax.title.get_text(), box)
    assert "\n" in fig.axes[0].get_title() and boxes[0].x1 < boxes[1].x0


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


def test_a_curve_is_the_mean_of_its_seeds_per_epoch_with_their_range_shaded():
    def run(valid_accs):
        return {"results": {"valid_accs": valid_accs}}
    groups = {"relu": [run([0.1, 0.5, 0.9]), run([0.3, 0.7])],  # the second seed stopped after two epochs
              "tanh": [run([0.4, None, 0.6])]}  # an epoch logged as null
    ax = figures.curve_figure(groups, "valid_accs", "validation accuracy", "title", legend_title="activation").axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert sorted(lines) == ["relu (mean of 2)", "tanh"]
    assert ax.get_legend().get_title().get_text() == "activation (band: min to max)"  # said on the figure itself
    untitled = figures.curve_figure({"final": groups["relu"]}, "valid_accs", "validation accuracy", "title").axes[0]
    assert untitled.get_legend().get_title().get_text() == "band: min to max"
    assert lines["relu (mean of 2)"].get_xdata().tolist() == [1, 2, 3]
    np.testing.assert_allclose(lines["relu (mean of 2)"].get_ydata(), [0.2, 0.6, 0.9])
    np.testing.assert_allclose(lines["tanh"].get_ydata(), [0.4, np.nan, 0.6])
    spread, = ax.collections  # one shaded band, for the setting with several seeds
    corners = spread.get_paths()[0].vertices
    for epoch, low, high in [(1, 0.1, 0.3), (2, 0.5, 0.7), (3, 0.9, 0.9)]:
        at_epoch = corners[np.isclose(corners[:, 0], epoch), 1]
        assert (at_epoch.min(), at_epoch.max()) == pytest.approx((low, high)), epoch


@pytest.mark.parametrize("key, lr_01_losses, log_scale", [
    ("valid_losses", [2.3, 2.1, 480.0, 2.2], True),  # one epoch's validation loss spiking under a large lr
    ("valid_losses", [2.3, 2.1, 2.5, 2.2], False),  # no spike: the usual linear axis
    ("train_losses", [2.3, 2.1, 480.0, 2.2], True),
    ("valid_accs", [0.1, 0.1, 90.0, 0.1], False),  # accuracies never: only a loss can spike so
    ("valid_losses", [2.3, 0.0, 480.0, 2.2], False),  # a loss of 0, which a log scale could not show
])
def test_a_loss_spike_puts_the_figure_on_a_log_scale_that_its_axis_label_names(key, lr_01_losses, log_scale):
    groups = {"0.1": [{"results": {key: lr_01_losses}}],
              "0.001": [{"results": {key: [1.9, 1.2, 0.9, 0.8]}}, {"results": {key: [1.8, 1.1, 0.8, 0.7]}}]}
    ax = figures.curve_figure(groups, key, "the label", "title").axes[0]
    assert ax.get_yscale() == ("log" if log_scale else "linear")
    assert ax.get_ylabel() == ("the label (log scale)" if log_scale else "the label")


@pytest.mark.parametrize("losses, spike", [
    ([0.05, 0.04, 0.6, 0.05], True),  # late in training: a spike 12 times the median, small as it is
    ([20.0, 25.0, 30.0, 60.0], False),  # large losses (a diverging start) within a few times their median
])
def test_a_spike_is_judged_against_the_losses_median_whatever_their_scale(losses, spike):
    assert figures._has_a_spike(np.array(losses)) == spike


def test_a_settings_shaded_range_has_its_lines_colour_and_leaves_the_line_in_view():
    runs = {"relu": [[0.1, 0.2]], "tanh": [[0.3, 0.4], [0.5, 0.6]]}  # the band is not the first setting's
    groups = {name: [{"results": {"valid_accs": accs}} for accs in seeds] for name, seeds in runs.items()}
    ax = figures.curve_figure(groups, "valid_accs", "validation accuracy", "title").axes[0]
    relu, tanh = ax.get_lines()
    (red, green, blue, alpha), = ax.collections[0].get_facecolor()
    assert to_rgb(tanh.get_color()) == pytest.approx((red, green, blue)) != to_rgb(relu.get_color())
    assert 0 < alpha <= 0.5


@pytest.mark.filterwarnings("error")
def test_an_epoch_that_every_seed_logged_as_null_leaves_a_gap_without_a_warning():
    runs = [{"results": {"valid_losses": [1.0, None, 0.5]}}, {"results": {"valid_losses": [1.2, None, 0.7]}}]
    ax = figures.curve_figure({"sigmoid": runs}, "valid_losses", "validation loss", "title").axes[0]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [1.1, np.nan, 0.6])


def test_the_search_figure_steps_through_the_best_completed_trial_so_far():
    trials = [{"trial": 0, "outcome": "completed", "last_valid_acc": 0.5},
              {"trial": 1, "outcome": "pruned", "last_valid_acc": 0.9},  # a pruned trial is no candidate
              {"trial": 3, "outcome": "completed", "last_valid_acc": 0.7},
              {"trial": 2, "outcome": "completed", "last_valid_acc": 0.4}]
    ax = figures.search_figure(trials, "resnet18_best: search").axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("trial", "validation accuracy (last epoch run)",
                                                                   "resnet18_best: search")
    best, = ax.get_lines()
    assert best.get_label() == "best so far" and best.get_drawstyle() == "steps-post"
    assert (best.get_xdata().tolist(), best.get_ydata().tolist()) == ([0, 2, 3], [0.5, 0.5, 0.7])


def test_the_cost_figure_plots_each_measure_against_the_setting_on_a_log2_axis():
    rows = [(2, 1200, 30.5, 1500.0), (4, 900, 10.25, 4400.0), (8, 800, 4.5, 10000.0)]
    fig = figures.cost_figure(rows, "patch_size", "mlpmixer_patch: parameters and speed against patch_size")
    axes = fig.axes
    assert [text.get_text() for text in fig.texts] == ["mlpmixer_patch: parameters and speed against patch_size"]
    labels = ["parameters", "seconds per training epoch", "training images per second"]
    for column, (ax, label) in enumerate(zip(axes, labels), start=1):
        line, = ax.get_lines()
        assert line.get_xdata().tolist() == [2, 4, 8]
        assert line.get_ydata().tolist() == [row[column] for row in rows]
        assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_xscale()) == ("patch_size", label, "log")
        assert [tick.get_text() for tick in ax.get_xticklabels()] == ["2", "4", "8"]
    fig.canvas.draw()
    assert "1.2 k" in [tick.get_text() for tick in axes[0].get_yticklabels()]  # counts with a unit prefix
    assert "10 k" in [tick.get_text() for tick in axes[2].get_yticklabels()]


def test_the_hidden_unit_figure_draws_each_measure_against_the_hidden_layer_a_line_per_setting():
    layers = {"relu": [(0.4, 0.6), (0.05, 0.95)], "sigmoid": [(0.01, 0.9), (None, 0.5)]}
    fig = figures.hidden_unit_figure(layers, 0.1, "activation", "mlp_activation: hidden units")
    assert [text.get_text() for text in fig.texts] == ["mlp_activation: hidden units"]
    labels = ["mean derivative of the activation", "flat share (derivative under 0.1 x its peak)"]
    for column, (ax, label) in enumerate(zip(fig.axes, labels)):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("hidden layer", label)
        assert [line.get_label() for line in ax.get_lines()] == ["relu", "sigmoid"]
        for line, measures in zip(ax.get_lines(), layers.values()):
            assert line.get_xdata().tolist() == [1, 2]
            np.testing.assert_array_equal(line.get_ydata(), [np.nan if m[column] is None else m[column]
                                                             for m in measures])
        assert ax.get_legend().get_title().get_text() == "activation"


def test_the_pictures_figure_draws_each_picture_at_its_own_width():
    square, strip = np.random.rand(70, 70, 3), np.random.rand(40, 400, 3)
    fig = figures.images_figure([("kernels", square), ("token mixing", strip)], "first layers")
    assert [ax.get_title() for ax in fig.axes] == ["kernels", "token mixing"]
    for ax, image in zip(fig.axes, (square, strip)):
        drawn, = ax.get_images()
        np.testing.assert_array_equal(drawn.get_array(), image)
    assert fig.axes[0].get_gridspec().get_width_ratios() == [1.0, 10.0]  # widths in proportion, heights alike
    assert [text.get_text() for text in fig.texts] == ["first layers"]
    untitled = figures.images_figure([(None, square), ("token mixing", strip)], "first layers")
    assert [ax.get_title() for ax in untitled.axes] == ["", "token mixing"]
