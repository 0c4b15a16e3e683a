"""The report's figures, each returned as PNG bytes for an atomic write.

matplotlib is imported inside these functions only, and figures are drawn on the Agg canvas
without pyplot: `crackhpc report` then runs on a login node without a display, never touches
pyplot's global state, and importing crackhpc.report stays cheap.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .data.layout import CLASSES

LOSS_LABEL = "loss (cross-entropy)"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _epoch_axes(fig):
    from matplotlib.ticker import MaxNLocator

    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, ylabel in ((loss_ax, LOSS_LABEL), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
    loss_ax.set_title("loss per epoch")
    acc_ax.set_title("accuracy per epoch")
    return loss_ax, acc_ax


def learning_curves(metrics: pd.DataFrame, title: str) -> bytes:
    """Loss and accuracy per epoch of one run, train against validation."""
    fig = _figure(9, 3.6)
    loss_ax, acc_ax = _epoch_axes(fig)
    for ax, kind in ((loss_ax, "loss"), (acc_ax, "acc")):
        # Dashed train, solid validation: the overlay's convention, so the two figures read alike.
        ax.plot(metrics["epoch"], metrics[f"train_{kind}"], "o--", label="train")
        ax.plot(metrics["epoch"], metrics[f"val_{kind}"], "s-", label="validation")
        ax.legend()
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def curves_overlay(runs: Mapping[str, pd.DataFrame], title: str) -> bytes:
    """Every run's curves on one pair of axes: colour per run, solid validation, dashed train."""
    from matplotlib.lines import Line2D

    fig = _figure(10, 4.2 + 0.22 * math.ceil(len(runs) / 2))
    loss_ax, acc_ax = _epoch_axes(fig)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for colour, m in zip(colours, runs.values()):
        for ax, kind in ((loss_ax, "loss"), (acc_ax, "acc")):
            ax.plot(m["epoch"], m[f"val_{kind}"], "-", color=colour, marker=".")
            ax.plot(m["epoch"], m[f"train_{kind}"], "--", color=colour, alpha=0.6)
    handles = [Line2D([], [], color=c, lw=2) for c in colours]
    handles += [Line2D([], [], color="grey", ls="-"), Line2D([], [], color="grey", ls="--")]
    fig.legend(handles, [*runs, "validation", "train"], loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def accuracy_bars(
    labels: Sequence[str],
    means: Sequence[float],
    stds: Sequence[float],
    counts: Sequence[int],
    study: Sequence[float | None],
    title: str,
) -> bytes:
    """Test accuracy per model (mean ± std over seeds), with the study's figure where it has one.

    Accuracies crowd near 1.0: the values go under the bars, where they cannot collide with the
    error bars and the study's marks, and the axis starts just below the lowest value so that
    differences of a few tenths of a percent stay visible (the axis label says where it starts)."""
    fig = _figure(max(5.0, 1.9 * len(labels) + 1.5), 5.0)
    ax = fig.subplots()
    x = np.arange(len(labels))
    errors = [0.0 if math.isnan(s) else s for s in stds]
    ax.bar(
        x,
        means,
        yerr=errors,
        capsize=6,
        color="C0",
        alpha=0.85,
        width=0.6,
        error_kw={"zorder": 4},
        label="ours: mean ± std over seeds",
    )
    reported = [(i, v) for i, v in enumerate(study) if v is not None]
    if reported:
        at, values = np.array(reported).T
        ax.hlines(values, at - 0.36, at + 0.36, colors="C3", linewidth=2.5, zorder=3, label="study (reported)")
    lowest = min([m - e for m, e in zip(means, errors)] + [v for _, v in reported])
    bottom = max(0.0, math.floor((lowest - 0.02) * 20) / 20)
    ticks = [
        f"{label}\n{mean:.4f}" + (f" ± {err:.4f}" if n > 1 else "") + f" (n={n})"
        for label, mean, err, n in zip(labels, means, errors, counts)
    ]
    ax.set_xticks(x, ticks, fontsize=8)
    ax.set_ylim(bottom, 1 + (1 - bottom) * 0.05)
    ax.set_ylabel("test accuracy" + (f" (axis from {bottom:g})" if bottom else ""))
    ax.set_xlabel("framework, model and settings")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def confusion_matrix(
    matrix: Sequence[Sequence[int]], title: str, note: str | None = None, classes: Sequence[str] = CLASSES
) -> bytes:
    """N×N counts, rows the true class, columns the predicted one, with each row's share."""
    counts = np.asarray(matrix)
    n = len(classes)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    grow = max(0, n - 2) * 0.7  # inches per class beyond two: the counts stay readable
    fig = _figure(4.6 + grow, (4.3 if note else 4.0) + grow)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(counts):
        ax.text(
            j,
            i,
            f"{count}\n({shares[i, j]:.1%})",
            ha="center",
            va="center",
            color="white" if shares[i, j] > 0.6 else "black",
            fontsize=11 if n <= 4 else 8,
        )
    ax.set_xticks(range(n), classes, rotation=30 if n > 3 else 0)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    ax.set_title(title, fontsize=9)
    if note:
        fig.supxlabel(textwrap.fill(note, 60), fontsize=7)
    return _png(fig)


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str], title: str, columns: int = 4) -> bytes:
    """Images in rows of `columns`, each with its caption as title."""
    cols = min(columns, len(images))
    rows = math.ceil(len(images) / cols)
    fig = _figure(2.6 * cols, 3.3 * rows + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, image, caption in zip(axes, images, captions):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def search_figure(kind: str, study, metric: str, title: str) -> bytes:
    """One of Optuna's matplotlib figures of a search's study: `history` (each finished trial's value
    and the best so far) or `importances` (of each setting, fANOVA over the completed trials). Optuna
    draws them with pyplot (whose backend is Agg where there is no display); the figure is closed
    once saved, leaving pyplot as it was."""
    import warnings

    from matplotlib import pyplot as plt
    from optuna.visualization import matplotlib as figures

    plot: Callable = figures.plot_optimization_history if kind == "history" else figures.plot_param_importances
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib figures experimental
        ax = plot(study, target_name=metric)
    for loc in ("left", "right"):  # Optuna's own titles, in place of which ours goes
        ax.set_title("", loc=loc)
    ax.set_title(title)
    fig = ax.figure
    fig.set_size_inches(7, 4)
    fig.set_layout_engine("constrained")
    try:
        return _png(fig)
    finally:
        plt.close(fig)
