"""Pictures with their numbers on them: bar charts and annotated heatmaps, saved atomically.

Figures are built with matplotlib's object API (`Figure`, rendered by Agg), never pyplot, so
no display is needed and no figure outlives its function.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from microrec.files import atomic_write
from microrec.runs.tracking import log_run

COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3",
          "#8C8C8C")


def save_png(fig: Figure, path: Path) -> Path:
    """Write `fig` as a PNG at `path` in one step and return the path."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110,
                                               bbox_inches="tight"))
    return path


def save_csv(frame: pl.DataFrame, path: Path) -> Path:
    atomic_write(path, lambda tmp: frame.write_csv(tmp))
    return path


def save_json(data: dict, path: Path) -> Path:
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def bars(labels: list[str], values: list[float], notes: list[str], title: str,
         value_label: str, category_label: str, groups: list[str] | None = None,
         vertical: bool = False, percent: bool = True) -> Figure:
    """One bar per label with its note (e.g. "12.3% (45/366)") written beside it.

    groups: an optional group name per bar, coloured and shown in a legend.
    percent: values are shares, shown on the axis as percentages.
    """
    n = len(labels)
    fig = Figure(figsize=(max(6.0, 0.9 * n + 2), 4.8) if vertical else (9.0, 1.0 + 0.42 * n))
    ax = fig.add_subplot()
    names = list(dict.fromkeys(groups)) if groups else []
    colors = [COLORS[names.index(g) % len(COLORS)] for g in groups] if groups else COLORS[0]
    at = np.arange(n)
    top = max(values, default=0) or 1.0
    if vertical:
        drawn = ax.bar(at, values, color=colors)
        ax.set_xticks(at, labels)
        ax.set_ylim(0, top * 1.22)
        ax.set_xlabel(category_label)
        ax.set_ylabel(value_label)
    else:
        drawn = ax.barh(at, values, color=colors)
        ax.set_yticks(at, labels)
        ax.invert_yaxis()  # first label on top
        ax.set_xlim(0, top * 1.35)
        ax.set_xlabel(value_label)
        ax.set_ylabel(category_label)
    ax.bar_label(drawn, notes, padding=3, fontsize=9)
    if percent:
        axis = ax.yaxis if vertical else ax.xaxis
        axis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    if names:
        ax.legend([drawn[groups.index(g)] for g in names], names, loc="best", fontsize=9)
    ax.set_title(title)
    ax.grid(axis="y" if vertical else "x", alpha=0.3)
    ax.set_axisbelow(True)
    return fig


def heatmap(values: np.ndarray, rows: list[str], cols: list[str], title: str, xlabel: str,
            ylabel: str, colorbar: str, fmt: str = "{:.0%}", rotate: int = 0,
            red_cols: set[int] = frozenset(), percent: bool = True) -> Figure:
    """A (rows x cols) grid coloured by value, each cell annotated with `fmt`.

    NaN cells stay blank; `red_cols` are column indices whose labels are drawn in red;
    percent: the colour bar shows percentages.
    """
    n_rows, n_cols = values.shape
    width = max(6.5, 0.85 * n_cols + 0.08 * max(map(len, rows)) + 3)
    label_room = 0.075 * max(map(len, cols)) if rotate else 0.4
    fig = Figure(figsize=(width, 0.55 * n_rows + 1.8 + label_room))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="Blues", aspect="auto", vmin=0,
                      vmax=np.nanmax(values) if np.isfinite(values).any() else 1)
    ax.set_xticks(np.arange(n_cols), cols, rotation=rotate,
                  ha="right" if 0 < rotate < 90 else "center")
    ax.set_yticks(np.arange(n_rows), rows)
    for i in red_cols:
        ax.get_xticklabels()[i].set_color("#C44E52")
    light = np.nanmax(values) * 0.6 if np.isfinite(values).any() else 1
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=9,
                    color="white" if v > light else "black")
    bar = fig.colorbar(image, ax=ax, label=colorbar, fraction=0.04, pad=0.02)
    if percent:
        bar.formatter = PercentFormatter(1.0, decimals=0)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


def grouped_bars(panels: dict[str, np.ndarray], categories: list[str], series: list[str],
                 title: str, xlabel: str, fmt: str = "{:.2f}") -> Figure:
    """Side-by-side panels (e.g. Recall@20 and MRR@20), one bar group per category and one
    bar per series in each group, each bar labelled with its value.

    panels: panel title -> (len(series), len(categories)) values.
    """
    n_series = len(series)
    width = 0.8 / max(n_series, 1)
    fig = Figure(figsize=(max(7.0, 1.3 * len(categories) * len(panels) + 2), 4.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    at = np.arange(len(categories))
    for ax, (name, values) in zip(axes, panels.items(), strict=True):
        for s in range(n_series):
            drawn = ax.bar(at + (s - (n_series - 1) / 2) * width, values[s], width,
                           color=COLORS[s % len(COLORS)], label=series[s])
            ax.bar_label(drawn, [fmt.format(v) for v in values[s]], fontsize=7, rotation=90,
                         padding=2)
        ax.set_xticks(at, categories)
        ax.set_ylim(0, max(float(np.nanmax(values)), 1e-9) * 1.3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", fontsize=9,
               ncol=min(n_series, 2), bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(title)
    return fig


def log_to_wandb(images: dict[str, Path], **init) -> None:
    """Log PNG files as W&B images in one new run (`runs.tracking.log_run`'s arguments)."""
    log_run(lambda wandb: {name: wandb.Image(str(path)) for name, path in images.items()},
            **init)
