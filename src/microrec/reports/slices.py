"""Where one row beats another: paired differences on slices of the test examples, and the
same pooled over the test sessions of several data sets.

A slice is the test examples that share something about their input or target. What each
example's input holds is read from the data set's own test split: the runs' saved data config
builds the data module (from its cache, as training and `explain.py` do), whose test split
holds the very examples the runs were scored on (checked example by example against the
runs' predictions.parquet). The input is what the models saw: the most recent `max_len`
micro-behaviors before the target.

The slices, by dimension:
- target: repeat (the target is in the input) and new, as the repeat / new breakdown;
- input length: the short, middle and long third of the compared examples' input lengths,
  cut at their 1/3 and 2/3 quantiles; a length at a cut goes below it, so ties can make a
  third small or empty (an empty slice is left out);
- last activity: the activity of the input's last micro-behavior (unknown: none, or one
  unseen in training);
- cart or order: whether the input holds a micro-behavior of the data set's `cart` or
  `order` activity group (`schema.PAPER_GROUPS`, or the source's `activity_groups`);
- last dwell: the dwell bucket of the input's last product, by number (1: the shortest) with
  its range (`schema.bucket_labels`; unknown: no dwell).
Data without activities has no activity slices, data without dwell no dwell slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from microrec.config import build
from microrec.data import schema as S
from microrec.data.protocol import Prepared
from microrec.errors import ConfigError, MicrorecError
from microrec.files import atomic_write
from microrec.metrics import MRR, RECALL, K
from microrec.reports import significance
from microrec.runs.folders import saved_config

ALL = "all"
TARGET, LENGTH, ACTIVITY, CART_ORDER, DWELL = (
    "target", "input length", "last activity", "cart or order", "last dwell")
THIRDS = ("short third", "middle third", "long third")
HOLDS = ("holds one", "holds none")
UNKNOWN = "unknown"
CART_GROUPS = ("cart", "order")  # the activity groups the `cart or order` slices look for
SHOWN = {MRR: f"MRR@{K}", RECALL: f"Recall@{K}"}  # the metrics in the order the tables show
CSV_FILE = "slices.csv"


@dataclass
class Slice:
    dimension: str  # what it slices by, e.g. "input length"; "all" for every example
    name: str  # the slice, named alike on every data set, e.g. "short third"
    detail: str  # what it is on this data set, e.g. "1-7" (input lengths); "" if nothing
    rows: np.ndarray  # (n,) bool: its examples among the compared ones


@dataclass
class Result:
    """One slice of one comparison on one data set, A minus B."""

    slice: Slice
    means: dict  # metric -> (A's mean, B's mean) over the slice's examples
    tests: dict  # metric -> significance.Paired


@dataclass
class DataSet:
    """One comparison on one data set: the paired examples with their inputs, A − B per
    example, and the result of every slice."""

    examples: pl.DataFrame
    diff: np.ndarray  # (n, 2) per-example differences, significance.COLUMNS order
    results: list[Result]


@dataclass
class Pooled:
    """One slice pooled over data sets (significance.pooled_bootstrap)."""

    dimension: str
    name: str
    detail: str  # the data sets' details, e.g. "1-18 / 1-14" where they differ
    datasets: int  # how many data sets have examples in it
    tests: dict  # metric -> significance.Paired


# -- what each test example's input holds ------------------------------------------------
def activity_order(groups: dict, names: list[str]) -> dict[str, int]:
    """Where each activity name goes among the slices: by its place in the activity groups,
    the others after them (then by name), unknown last."""
    listed = [a for group in groups.values() for a in group]
    return {**{a: listed.index(a) if a in listed else len(listed) for a in names},
            UNKNOWN: len(listed) + 1}


def split_inputs(prepared: Prepared, groups: dict, max_len: int) -> pl.DataFrame:
    """One row per test example: example, session, position, and what the slices read of
    its input: input length; last activity, cart or order and last dwell where the data has
    that channel (and, for cart or order, names those groups), each with an `<name> order`
    column that places its values and, for dwell, the bucket's range (`dwell range`)."""
    split = prepared.splits["test"]
    start = np.maximum(split.first, split.end - max_len)  # (N,) most recent max_len kept
    last = split.tokens[split.end - 1]  # (N, 3) the input's last micro-behavior
    columns = {"example": np.arange(split.target.size, dtype=np.int64),
               "session": split.session, "position": split.position,
               LENGTH: (split.end - start).astype(np.int64)}
    if prepared.has_activity:
        names = {S.UNK: UNKNOWN, **{i + S.NUM_SPECIAL: a
                                    for i, a in enumerate(prepared.activities)}}
        columns[ACTIVITY] = [names[i] for i in last[:, 1].tolist()]
        order = activity_order(groups, prepared.activities)
        columns[f"{ACTIVITY} order"] = [order[a] for a in columns[ACTIVITY]]
        wanted = {a for g in CART_GROUPS for a in groups.get(g, ())}
        if wanted:
            ids = [i + S.NUM_SPECIAL for i, a in enumerate(prepared.activities) if a in wanted]
            seen = np.concatenate([[0], np.cumsum(np.isin(split.tokens[:, 1], ids))])  # (E+1,)
            holds = seen[split.end] > seen[start]  # (N,) a cart or order token in the input
            columns[CART_ORDER] = np.where(holds, *HOLDS)
            columns[f"{CART_ORDER} order"] = (~holds).astype(np.int64)
    if prepared.has_dwell:
        labels = S.bucket_labels(prepared.bucket_edges)
        bucket = np.where(last[:, 2] == S.UNK, 0, last[:, 2] - S.NUM_SPECIAL + 1)  # (N,) 1..
        columns[DWELL] = [f"bucket {k}" if k else UNKNOWN for k in bucket.tolist()]
        columns[f"{DWELL} order"] = np.where(bucket == 0, len(labels), bucket)  # unknown last
        columns["dwell range"] = [labels[i] for i in last[:, 2].tolist()]
    return pl.DataFrame(columns)


def read_inputs(job_file: Path, dataset: str) -> pl.DataFrame:
    """`split_inputs` of the test split a job ran on, through its saved data config (a file
    in the job folder names the job, as for `saved_config`)."""
    try:
        config = saved_config(job_file)
        dm = build(config.data)
        dm.setup()
    except MicrorecError as e:
        raise type(e)(f"--slices reads the test split of {dataset} through the data config "
                      f"of {job_file.parent}, and could not: {e}") from None
    groups = getattr(dm.source, "activity_groups", S.PAPER_GROUPS)
    return split_inputs(dm.prepared, groups, dm.max_len)


# -- the slices and their paired tests -----------------------------------------------------
def length_thirds(length: np.ndarray) -> list[Slice]:
    """The short, middle and long third of input lengths, cut at the lengths of the examples
    ranked (n - 1) // 3 and 2 (n - 1) // 3 by length, from 0 (the 1/3 and 2/3 quantiles,
    rounded down to a length that occurs); a length at a cut goes below it."""
    ordered = np.sort(length)  # (n,)
    low, high = ordered[(length.size - 1) // 3], ordered[2 * (length.size - 1) // 3]
    masks = (length <= low, (length > low) & (length <= high), length > high)
    return [Slice(LENGTH, name, _span(length[rows]), rows)
            for name, rows in zip(THIRDS, masks, strict=True)]


def _span(values: np.ndarray) -> str:
    if values.size == 0:
        return ""
    low, high = int(values.min()), int(values.max())
    return f"{low}-{high}" if low < high else str(low)


def define_slices(examples: pl.DataFrame) -> list[Slice]:
    """Every non-empty slice of the examples (which carry `repeat` and `split_inputs`'
    columns), `all` first."""
    repeat = examples["repeat"].to_numpy()
    found = [Slice(ALL, ALL, "", np.ones(examples.height, dtype=bool)),
             Slice(TARGET, "repeat", "", repeat), Slice(TARGET, "new", "", ~repeat),
             *length_thirds(examples[LENGTH].to_numpy())]
    for dimension in (ACTIVITY, CART_ORDER, DWELL):
        if dimension not in examples.columns:
            continue
        values = examples.select(dimension, f"{dimension} order").unique().sort(
            f"{dimension} order", dimension)[dimension]
        for value in values:
            rows = (examples[dimension] == value).to_numpy()
            detail = (" / ".join(examples["dwell range"].filter(rows).unique().sort())
                      if dimension == DWELL and value != UNKNOWN else "")
            found.append(Slice(dimension, value, detail, rows))
    return [s for s in found if s.rows.any()]


def compare(a: pl.DataFrame, b: pl.DataFrame, inputs: pl.DataFrame, resamples: int,
            dataset: str = "the data set") -> DataSet:
    """A minus B (`significance.seed_average` tables) on every slice of their paired
    examples; inputs: `split_inputs` with a data_seed column, for every split they share."""
    both = significance.pair(a, b).join(inputs, on=["data_seed", "example"], how="left",
                                        suffix="_data")
    if not (both["session_data"].is_not_null().all()
            and (both["session"] == both["session_data"]).all()
            and (both["position"] == both["position_data"]).all()):
        raise ConfigError(f"the test split of {dataset} rebuilt from the runs' data config "
                          "holds other examples than their predictions.parquet: the data file "
                          "or the protocol changed since they ran.")
    columns = list(significance.COLUMNS.values())  # hit, rr
    diff = np.column_stack([both[c] - both[f"{c}_b"] for c in columns])  # (n, 2)
    session, split = both["session"].to_numpy(), both["data_seed"].to_numpy()
    results = []
    for s in define_slices(both):
        tests = significance.paired_bootstrap(diff[s.rows], session[s.rows], split[s.rows],
                                              resamples)
        means = {m: (float(both[c].filter(s.rows).mean()),
                     float(both[f"{c}_b"].filter(s.rows).mean()))
                 for m, c in significance.COLUMNS.items()}
        results.append(Result(s, means, dict(zip(significance.COLUMNS, tests, strict=True))))
    return DataSet(both, diff, results)


def pool(datasets: dict[str, DataSet], weights: str, resamples: int) -> list[Pooled]:
    """Every slice (by dimension and name) pooled over the data sets that have it: the
    sessions of each are resampled, the data sets weighted by `weights`
    (significance.pooled_bootstrap)."""
    keys = dict.fromkeys((r.slice.dimension, r.slice.name)
                         for d in datasets.values() for r in d.results)
    pooled = []
    for key in keys:
        found = [(i, d, r.slice) for i, d in enumerate(datasets.values())
                 for r in d.results if (r.slice.dimension, r.slice.name) == key]
        parts = [(i, d, s.rows) for i, d, s in found]
        detail = " / ".join(dict.fromkeys(s.detail for _, _, s in found if s.detail))
        diff = np.concatenate([d.diff[rows] for _, d, rows in parts])  # (n, 2)
        session, split = (np.concatenate([d.examples[c].to_numpy()[rows]
                                          for _, d, rows in parts])
                          for c in ("session", "data_seed"))
        group = np.concatenate([np.full(int(rows.sum()), i) for i, _, rows in parts])
        tests = significance.pooled_bootstrap(diff, session, group, split, weights, resamples)
        pooled.append(Pooled(*key, detail, len(parts),
                             dict(zip(significance.COLUMNS, tests, strict=True))))
    return pooled


# -- tables, CSV and figure --------------------------------------------------------------
def label(dimension: str, name: str, detail: str = "") -> str:
    """A slice as the tables name it, e.g. 'input length: short third (1-7)'."""
    shown = name if dimension == ALL else f"{dimension}: {name}"
    return f"{shown} ({detail})" if detail else shown


def weighting(weights: str) -> str:
    return ("each data set weighted equally, however many sessions it has"
            if weights == "equal" else "each data set weighted by its test sessions")


def dataset_lines(name: str, data: DataSet) -> list[str]:
    """One data set's table: per slice, its size, both rows' means and A − B."""
    columns = ["Slice", "Examples", "Sessions"]
    for metric in SHOWN.values():
        columns += [f"A {metric}", f"B {metric}", f"A − B {metric}"]
    lines = ["", f"### {name}", "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    for r in data.results:
        first = next(iter(r.tests.values()))
        cells = [label(r.slice.dimension, r.slice.name, r.slice.detail),
                 f"{first.examples:,}", f"{first.sessions:,}"]
        for metric in SHOWN:
            cells += [f"{r.means[metric][0]:.4f}", f"{r.means[metric][1]:.4f}",
                      r.tests[metric].shown()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pooled_lines(names: list[str], pooled: list[Pooled], weights: str) -> list[str]:
    """The pooled table: per slice, A − B with its interval, p-value and half-width."""
    columns = ["Slice", "Data sets", "Examples", "Sessions"]
    for metric in SHOWN.values():
        columns += [f"A − B {metric}", f"± {metric}"]
    lines = ["", f"### Pooled over {', '.join(names)} ({weighting(weights)})", "",
             "Each slice's A − B pooled over the test sessions of every data set that has "
             "it: the weighted mean of the data sets' own differences, with a bootstrap "
             "that resamples each data set's test sessions (never the data sets). ± is half "
             "the 95% interval: about the smallest difference these test sessions could "
             "tell from zero (a true difference that large would reach p < 0.05 about half "
             "the time; about 1.4 times it, 80% of the time).", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for p in pooled:
        first = next(iter(p.tests.values()))
        cells = [label(p.dimension, p.name, p.detail), str(p.datasets), f"{first.examples:,}",
                 f"{first.sessions:,}"]
        for metric in SHOWN:
            t = p.tests[metric]
            cells += [t.shown(), f"{(t.high - t.low) / 2:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def intro(name_a: str, name_b: str, resamples: int, figure: str) -> list[str]:
    return ["", f"## Slices: {name_a} minus {name_b}", "",
            f"A = {name_a}, B = {name_b}, on the same test examples. Per slice: its "
            f"examples and test sessions, both rows' {SHOWN[MRR]} and {SHOWN[RECALL]} (each "
            "example's hit and reciprocal rank averaged over seeds first) and A − B with "
            "its 95% interval and p-value from the paired bootstrap over the slice's test "
            f"sessions ({resamples} resamples). Slices: the target is a repeat (in the "
            "input) or new; the input's length, in thirds of the compared examples' lengths "
            "(micro-behaviors after max_len; each third's range in parentheses); the "
            "activity of the input's last micro-behavior; whether the input holds a cart or "
            "order micro-behavior; the dwell bucket of the input's last product. With some "
            "twenty slices, about one p < 0.05 is expected by chance alone, and a slice of "
            "few sessions (under about 20) gets a rough interval. Figure: "
            f"{figure}."]


def csv_rows(name_a: str, name_b: str, datasets: dict[str, DataSet], pooled: list[Pooled],
             weights: str) -> list[dict]:
    """One CSV row per data set (or `pooled`) and slice."""
    rows = []
    found = [(ds, r.slice, r.means, r.tests) for ds, d in datasets.items() for r in d.results]
    found += [(f"pooled ({weights})", Slice(p.dimension, p.name, p.detail, np.empty(0)), None,
               p.tests) for p in pooled]
    for ds, s, means, tests in found:
        first = next(iter(tests.values()))
        row = {"A": name_a, "B": name_b, "data set": ds, "dimension": s.dimension,
               "slice": s.name, "detail": s.detail, "examples": first.examples,
               "sessions": first.sessions}
        for metric, t in ((m, tests[m]) for m in SHOWN):
            row |= {f"A {metric}": means[metric][0] if means else None,
                    f"B {metric}": means[metric][1] if means else None,
                    f"{metric} diff": t.diff, f"{metric} ci_low": t.low,
                    f"{metric} ci_high": t.high, f"{metric} p": t.p,
                    f"{metric} half_width": (t.high - t.low) / 2}
        rows.append(row)
    return rows


def draw(name_a: str, name_b: str, datasets: dict[str, DataSet], pooled: list[Pooled]):
    """A − B with its 95% interval per slice: one panel per metric, one colour per data
    set, the pooled difference in black."""
    from matplotlib.figure import Figure  # drawing only: results.py without --slices skips it

    from microrec.reports.plots import COLORS

    keys = list(dict.fromkeys((r.slice.dimension, r.slice.name)
                              for d in datasets.values() for r in d.results))
    series = {ds: {(r.slice.dimension, r.slice.name): r.tests for r in d.results}
              for ds, d in datasets.items()}
    if pooled:
        series["pooled"] = {(p.dimension, p.name): p.tests for p in pooled}
    fig = Figure(figsize=(12.0, 1.6 + 0.32 * len(keys) * max(1, len(series) / 2)),
                 layout="constrained")
    axes = fig.subplots(1, len(SHOWN), sharey=True, squeeze=False)[0]
    step = 0.7 / max(len(series), 1)
    for ax, (metric, title) in zip(axes, SHOWN.items(), strict=True):
        for j, (name, found) in enumerate(series.items()):
            at = [(i + (j - (len(series) - 1) / 2) * step, found[k][metric])
                  for i, k in enumerate(keys) if k in found]
            y, tests = [a for a, _ in at], [t for _, t in at]
            x = np.array([t.diff for t in tests])
            err = np.array([[t.diff - t.low for t in tests], [t.high - t.diff for t in tests]])
            ax.errorbar(x, y, xerr=err, fmt="D" if name == "pooled" else "o", capsize=2,
                        color="black" if name == "pooled" else COLORS[j % len(COLORS)],
                        label=name, markersize=4)
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_yticks(range(len(keys)), [label(*k) for k in keys])
        ax.set_xlabel(f"A − B, {title} (95% interval)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # `all` on top (the panels share the axis: once)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"A = {name_a}\nminus B = {name_b}", fontsize=10)
    return fig


@dataclass
class Report:
    """What `report` made: the Markdown lines, the table it wrote as slices.csv, and the
    figures it wrote (one per pair)."""

    lines: list[str]
    table: pl.DataFrame
    figures: list[Path]


def report(pairs: list[tuple[str, str, dict]], sources: dict[tuple[str, int], Path],
           resamples: int, weights: str, folder: Path) -> Report:
    """Every pair's slices: writes slices.csv and one figure per pair (slices_<n>.png) into
    `folder`.

    Args:
        pairs: (A's name, B's name, data set -> (A's, B's seed_average table)).
        sources: (data set, data.seed) -> a file in a job folder that ran on it (whose
            saved data config rebuilds the test split).
    """
    from microrec.reports.plots import save_png  # matplotlib: only with --slices

    inputs: dict[tuple[str, int], pl.DataFrame] = {}
    lines, rows, figures = [], [], []
    for n, (name_a, name_b, found) in enumerate(pairs, start=1):
        datasets = {}
        for ds, (a, b) in found.items():
            for split in sorted(set(a["data_seed"]) & set(b["data_seed"])):
                if (ds, split) not in inputs:
                    inputs[ds, split] = read_inputs(sources[ds, split], ds).with_columns(
                        pl.lit(split, pl.Int64).alias("data_seed"))
            shared = pl.concat([v for (d, _), v in inputs.items() if d == ds])
            datasets[ds] = compare(a, b, shared, resamples, ds)
        pooled = pool(datasets, weights, resamples) if len(datasets) > 1 else []
        figure = save_png(draw(name_a, name_b, datasets, pooled), folder / f"slices_{n}.png")
        figures.append(figure)
        lines += intro(name_a, name_b, resamples, figure.name)
        for ds, data in datasets.items():
            lines += dataset_lines(ds, data)
        if pooled:
            lines += pooled_lines(list(datasets), pooled, weights)
        rows += csv_rows(name_a, name_b, datasets, pooled, weights)
    table = pl.DataFrame(rows)
    atomic_write(folder / CSV_FILE, lambda tmp: table.write_csv(tmp))
    return Report(lines, table, figures)
