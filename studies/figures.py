"""The report's figures, drawn with matplotlib's object API (no global pyplot state)."""
import textwrap
import warnings

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

CURVES = (("train_losses", "train loss"), ("valid_losses", "validation loss"),
          ("train_accs", "train accuracy"), ("valid_accs", "validation accuracy"))
# a loss this many times the median of its figure's losses (a validation loss that spikes under a large learning
# rate) puts the figure on a log scale, where the spike no longer squashes every other line flat
SPIKE_FACTOR = 10


def stack_curves(runs, key):
    """``[runs, epochs]`` array of one per-epoch metric; shorter runs (diverged, pruned) padded with NaN."""
    curves = [[np.nan if v is None else v for v in run["results"].get(key, [])] for run in runs]
    length = max((len(curve) for curve in curves), default=0)
    return np.array([curve + [np.nan] * (length - len(curve)) for curve in curves], dtype=float).reshape(
        len(curves), length)


def draw_curves(ax, groups, key, label, legend_title=None):
    """One line per group (its mean over seeds) and, with several seeds, a band from min to max, which the
    legend's title names (a figure pasted into a report without its caption still says what the band is)."""
    banded = False
    drawn = []
    for name, runs in groups.items():
        values = stack_curves(runs, key)
        if values.size == 0:
            continue
        drawn.append(values[np.isfinite(values)])
        epochs = np.arange(1, values.shape[1] + 1)
        with np.errstate(all="ignore"):
            counts = np.sum(~np.isnan(values), axis=0)
            mean = np.where(counts > 0, np.nansum(values, axis=0) / np.maximum(counts, 1), np.nan)
        suffix = f" (mean of {len(runs)})" if len(runs) > 1 else ""
        line, = ax.plot(epochs, mean, marker="o", markersize=3, label=f"{name}{suffix}")
        if len(runs) > 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an epoch that every run logged as null
                ax.fill_between(epochs, np.nanmin(values, axis=0), np.nanmax(values, axis=0),
                                color=line.get_color(), alpha=0.2, linewidth=0)
            banded = True
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")
    if key.endswith("losses") and _has_a_spike(np.concatenate(drawn or [np.empty(0)])):
        ax.set_yscale("log")
        label = f"{label} (log scale)"
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # runs that have not ended an epoch draw no line
        if banded:
            legend_title = f"{legend_title} (band: min to max)" if legend_title else "band: min to max"
        ax.legend(fontsize=8, title=legend_title, title_fontsize=8)


def _has_a_spike(losses):
    """Whether some of these (finite) losses reach ``SPIKE_FACTOR`` times their median; never where one is 0 or
    less, which a log scale cannot show."""
    return bool(losses.size) and losses.min() > 0 and losses.max() >= SPIKE_FACTOR * np.median(losses)


def curve_figure(groups, key, label, title, legend_title=None):
    """One of the assignment's four figures: ``key`` against epoch, a line per setting."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    draw_curves(ax, groups, key, label, legend_title)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def curves_page(groups, title, legend_title=None):
    """The four curves of a study on one 2x2 page."""
    fig = Figure(figsize=(11, 8))
    for ax, (key, label) in zip(fig.subplots(2, 2).flat, CURVES):
        draw_curves(ax, groups, key, label, legend_title)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def cost_figure(rows, setting, title):
    """Parameters, seconds per training epoch and images per second against the grid's setting.

    Args:
        rows: ``(value, parameters, seconds per epoch, images per second)`` per setting value.
        setting: the grid's setting, on the x axes.
        title: the figure's title (its PDF page has no other heading).
    """
    fig = Figure(figsize=(11, 3.6))
    values = [row[0] for row in rows]
    for ax, column, label in zip(fig.subplots(1, 3), (1, 2, 3),
                                 ("parameters", "seconds per training epoch", "training images per second")):
        ax.plot(values, [row[column] for row in rows], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xticks(values, [str(v) for v in values])
        ax.set_xlabel(setting)
        ax.set_ylabel(label)
        if column != 2:  # 2.3 M parameters, 40 k images per second, rather than an axis offset such as 1e6
            ax.yaxis.set_major_formatter(EngFormatter())
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def hidden_unit_figure(layers, flat_below, legend_title, title):
    """Each hidden layer's mean activation derivative and flat share, a line per setting (``training.hidden_units``).

    Args:
        layers: ``{setting value: [(mean derivative, flat share) per hidden layer]}``; a missing mean is None.
        flat_below: the share of its peak under which a derivative counts as flat.
        legend_title: the grid's setting.
        title: the figure's title (its PDF page has no other heading).
    """
    fig = Figure(figsize=(11, 4.2))
    for ax, column, label in zip(fig.subplots(1, 2), (0, 1), ("mean derivative of the activation",
                                                          f"flat share (derivative under {flat_below:g} x its peak)")):
        for name, measures in layers.items():
            ax.plot(range(1, len(measures) + 1), [np.nan if m[column] is None else m[column] for m in measures],
                    marker="o", label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("hidden layer")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title=legend_title, title_fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def search_figure(trials, title):
    """Each search trial's last validation accuracy by trial number, with the best so far.

    Args:
        trials: ``{trial, outcome, last_valid_acc}`` per trial; those without a validation accuracy are left out.
    """
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    styles = {"completed": ("o", "completed"), "pruned": ("x", "pruned"), "diverged": ("v", "diverged"),
              "error": ("s", "raised an error")}
    for outcome, (marker, label) in styles.items():
        points = [(t["trial"], t["last_valid_acc"]) for t in trials
                  if t["outcome"] == outcome and t["last_valid_acc"] is not None]
        if points:
            ax.scatter(*zip(*points), marker=marker, label=label)
    completed = sorted((t["trial"], t["last_valid_acc"]) for t in trials if t["outcome"] == "completed")
    if completed:
        best = np.maximum.accumulate([value for _, value in completed])
        ax.step([number for number, _ in completed], best, where="post", color="black", label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_ylabel("validation accuracy (last epoch run)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion_figure(record, title):
    """Each true class's test images by the class they were predicted as, as shares of the true class's images
    (``training.class_accuracy``): the diagonal is each class's accuracy.

    Args:
        record: ``{"classes", "counts"}``: one row of counts per true class, one column per predicted class.
        title: the figure's title (its PDF page has no other heading).
    """
    counts = np.array(record["counts"], dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)  # no images: a blank row
    fig = Figure(figsize=(8.5, 7.5))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(record["classes"]))
    ax.set_xticks(ticks, record["classes"], rotation=45, ha="right")
    ax.set_yticks(ticks, record["classes"])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for (row, column), share in np.ndenumerate(shares):
        if np.isfinite(share):
            ax.text(column, row, f"{share:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if share > 0.5 else "black")  # readable on the dark cells too
    # a colour bar as tall as the matrix
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's test images")
    ax.set_title(title)
    fig.tight_layout()
    return fig


CAPTION_POINTS = 10


def images_figure(images, title):
    """Pictures side by side (the first-layer visualisations), each with its caption.

    Args:
        images: ``(caption, RGB(A) array)`` pairs; a caption of None for a picture that carries its own title.
    """
    aspects = [image.shape[1] / image.shape[0] for _, image in images]  # width over height
    height = min(5.0, 16.0 / sum(aspects))  # a strip of wide pictures stays at most 16 inches wide
    fig = Figure(figsize=(height * sum(aspects), height + 0.9))
    axes = np.atleast_1d(fig.subplots(1, len(images), gridspec_kw={"width_ratios": aspects}))
    for ax, aspect, (caption, image) in zip(axes, aspects, images):
        ax.imshow(image)
        ax.axis("off")
        if caption is None:
            continue
        # a caption wider than its picture would run into its neighbour or off the page: wrap it (a character
        # is at most about 0.6 font sizes wide)
        ax.set_title(textwrap.fill(caption, max(12, int(height * aspect * 72 / (0.6 * CAPTION_POINTS)))),
                     fontsize=CAPTION_POINTS)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


PAGE_INCHES = (11, 8.5)
TEXT_POINTS, TEXT_TOP, TEXT_BOTTOM = 7.5, 0.90, 0.03  # font size; where the text starts and must end (page fractions)
# matplotlib sets lines 1.2 font sizes apart
TEXT_PAGE_LINES = int((TEXT_TOP - TEXT_BOTTOM) * PAGE_INCHES[1] * 72 / (1.2 * TEXT_POINTS))
TEXT_PAGE_COLUMNS = 150  # about 9 of the page's 11 inches at this font size


def text_page(title, lines):
    """A page of monospaced text for the PDF: a section's summary and tables, at most ``TEXT_PAGE_LINES`` lines
    of at most ``TEXT_PAGE_COLUMNS`` characters."""
    if len(lines) > TEXT_PAGE_LINES or max(map(len, lines), default=0) > TEXT_PAGE_COLUMNS:
        raise ValueError(f"the text exceeds a page of {TEXT_PAGE_LINES} lines of {TEXT_PAGE_COLUMNS} characters")
    fig = Figure(figsize=PAGE_INCHES)
    _fit_width(fig.text(0.04, 0.95, title, fontsize=15, weight="bold", va="top"), 0.92)
    fig.text(0.04, TEXT_TOP, "\n".join(lines), fontsize=TEXT_POINTS, family="monospace", va="top")
    return fig


def _fit_width(text, width):
    """Shrink ``text``'s font, if need be, until it spans at most ``width`` of its figure's width: a long section
    title ("... (continued)") would otherwise run off the page."""
    fig = text.get_figure()
    span = text.get_window_extent(FigureCanvasAgg(fig).get_renderer()).width / (fig.get_figwidth() * fig.dpi)
    if span > width:
        text.set_fontsize(text.get_fontsize() * width / span)
