"""The paper's Table 3 from multirun jobs: Markdown, CSV and a W&B Table.

A job's saved config places it in the table: its `table` node (conf/model/*.yaml, changed
by conf/row/*.yaml) gives its row's label, data type (`section`) and `order`, its Hydra
`data` choice the column; its `metrics.json` gives test Recall@K and MRR@K (`metrics.K`,
20). Jobs of the same data set and row are repetitions of one cell, over seeds (`seed`) and
data splits (`data.seed`): the cell shows their mean and, with several, their sample
standard deviation; a row that is not a baseline (`table.baseline`) also shows the relative
improvement of its mean over the best baseline's mean on that data set. Where the jobs left
`predictions.parquet`, every row is also compared with the best baseline (or a chosen row)
on the same test examples (reports/significance.py), optionally broken down into repeat
and new targets, and optionally compared slice by slice of the test examples
(reports/slices.py: where one row beats another).
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from microrec.data.schema import FEATURE_LABELS
from microrec.errors import ConfigError
from microrec.files import atomic_write
from microrec.metrics import MRR, RECALL, K
from microrec.reports import significance, slices
from microrec.runs import predictions
from microrec.runs.folders import (
    CONFIG,
    HYDRA,
    METRICS_FILE,
    check_same_run,
    job_folders,
    read_metrics,
)
from microrec.runs.tracking import log_run, wandb_group

HEADLINE = f"Recall@{K} and MRR@{K}"
METRICS = {f"test/{RECALL}": f"Recall@{K}", f"test/{MRR}": f"MRR@{K}"}
# a run with the hyperparameters of an Optuna study (its `tuned` node: conf/tuned/)
TUNED = " (tuned)"


@dataclass
class Job:
    folder: Path
    data: str  # the data set: Hydra's `data` choice
    data_type: str  # the row's section: a feature variant (schema.FEATURE_LABELS)
    model: str  # the row's label
    order: float  # where the row goes among its data type's rows
    baseline: bool  # the other rows are compared with the best baseline
    seed: int
    data_seed: int  # `data.seed`: which random split of the data set
    data_config: dict  # the composed `data` node but its seed: one setting per data set
    metrics: dict | None  # None: no metrics.json, the job failed or is unfinished


def row_of(config) -> tuple[str, str]:
    """(data type, label) of a job's row from its composed config's `table` node.

    The label is `table.label`, then in parentheses the `table.options` that are set (a
    text as it is, a true or nonzero value by its key), then " (tuned)" for a run with
    a study's hyperparameters: e.g. "RIB w/o attention (LSTM, tied) (tuned)".
    """
    table = config.table
    shown = [value if isinstance(value, str) else key
             for key, value in (table.get("options") or {}).items() if value]
    label = table.label + (f" ({', '.join(shown)})" if shown else "")
    return table.section, label + (TUNED if config.get("tuned") else "")


def read_row(job: Path, config) -> tuple[str, str, float, bool]:
    """A job's row from its saved config: data type, label, order and whether it is a
    baseline; one sentence for a job saved without a `table` node or with a wrong one."""
    if config.get("table") is None:
        raise ConfigError(f"{job} was made before rows carried their table labels (its "
                          f"{CONFIG} has no `table` node); run it again.")
    try:
        data_type, label = row_of(config)
        order, baseline = config.table.order, config.table.get("baseline", False)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{job / CONFIG}: its `table` node cannot be read "
                          f"({' '.join(str(e).split())}).") from None
    if isinstance(order, bool) or not isinstance(order, int | float):
        raise ConfigError(f"{job / CONFIG}: table.order={order} is not a number.")
    return data_type, label, order, bool(baseline)


def read_jobs(folders: list[Path]) -> list[Job]:
    """Every job folder of the given multirun folders, in job order."""
    jobs = []
    for job in (job for folder in folders for job in job_folders(folder)):
        choices = OmegaConf.load(job / HYDRA).hydra.runtime.choices
        config = OmegaConf.load(job / CONFIG)
        row = read_row(job, config)
        data = OmegaConf.to_container(config.data)
        data_seed = int(data.pop("seed", 0))  # splits of one data set are repetitions
        metrics = read_metrics(job)
        if metrics is not None and (untested := [m for m in METRICS if m not in metrics]):
            raise ConfigError(f"{job / METRICS_FILE} has no {untested[0]}: that job never ran "
                              "on test (test=false, as in a tuning sweep); pass multiruns of "
                              "tested runs.")
        jobs.append(Job(job, choices.data, *row, int(config.seed), data_seed, data, metrics))
    return jobs


def check_consistent(jobs: list[Job]) -> None:
    """One data setting per data set (its split seed aside), and each run of a cell once."""
    setting, seen = {}, {}
    for job in jobs:
        first = setting.setdefault(job.data, job)
        if job.data_config != first.data_config:
            raise ConfigError(f"{first.folder} and {job.folder} both use data={job.data} but "
                              "with different data settings; tabulate them separately.")
        key = (job.data, job.data_type, job.model, job.seed, job.data_seed)
        if key in seen:
            split = f" (data.seed={job.data_seed})" if job.data_seed else ""
            raise ConfigError(f"{seen[key].folder} and {job.folder} are both seed {job.seed} "
                              f"of {job.model} on {job.data}{split}; pass each seed once.")
        seen[key] = job


@dataclass
class Cell:
    mean: float
    std: float | None  # sample standard deviation over runs; None with one run
    gain: float | None  # % of the mean over the best baseline's; None for a baseline
    seeds: int  # distinct `seed`s among the runs
    splits: int = 1  # distinct `data.seed`s among the runs
    runs: int = 1

    def spread(self) -> str:
        """What the cell's runs repeat, e.g. '3 seeds' or '3 seeds × 2 splits'."""
        seeds = f"{self.seeds} seed{'s' if self.seeds > 1 else ''}"
        if self.splits == 1:
            return seeds
        if self.runs == self.seeds * self.splits:
            return f"{seeds} × {self.splits} splits"
        return f"{self.runs} runs over {seeds} and {self.splits} splits"


def row_order(jobs: list[Job]) -> list[tuple[str, str]]:
    """The jobs' rows (data type, model) in the paper's order: by data type, then by each
    row's `table.order` (the smallest its jobs give), then by label."""
    variants = list(FEATURE_LABELS)
    order = {}
    for j in jobs:
        row = (j.data_type, j.model)
        order[row] = min(order.get(row, j.order), j.order)
    return sorted(order, key=lambda r: (
        variants.index(r[0]) if r[0] in variants else len(variants), r[0], order[r], r[1]))


def row_name(row: tuple[str, str]) -> str:
    """A row as the text names it, e.g. 'SKU+Micro-behaviors RIB'."""
    return f"{FEATURE_LABELS.get(row[0], row[0])} {row[1]}"


def summarise(jobs: list[Job]) -> tuple[list[str], list[tuple[str, str]], dict]:
    """Data sets (columns), rows (data type, model) in the paper's order, and the cells by
    (row, data set, metric)."""
    datasets = list(dict.fromkeys(j.data for j in jobs))
    rows = row_order(jobs)
    runs = group_runs(jobs)
    best = best_baselines(runs)
    cells = {}
    for (row, ds), cell_jobs in runs.items():
        for metric in METRICS:
            v = [j.metrics[metric] for j in cell_jobs]
            mean = statistics.mean(v)
            top = None if is_baseline(cell_jobs) else best.get((ds, metric), (0, None))[0]
            cells[row, ds, metric] = Cell(
                mean, statistics.stdev(v) if len(v) > 1 else None,
                100 * (mean / top - 1) if top else None, len({j.seed for j in cell_jobs}),
                len({j.data_seed for j in cell_jobs}), len(v))
    return datasets, rows, cells


def group_runs(jobs: list[Job]) -> dict[tuple, list[Job]]:
    """(row, data set) -> the jobs of that cell."""
    runs = {}
    for j in jobs:
        runs.setdefault(((j.data_type, j.model), j.data), []).append(j)
    return runs


def is_baseline(cell_jobs: list[Job]) -> bool:
    """Whether a cell's row is a baseline (`table.baseline`)."""
    return any(j.baseline for j in cell_jobs)


def best_baselines(runs: dict) -> dict:
    """(data set, metric) -> (mean, row) of the baseline with the best mean there."""
    best = {}
    for (row, ds), cell_jobs in sorted(runs.items()):
        if not is_baseline(cell_jobs):
            continue
        for metric in METRICS:
            mean = statistics.mean(j.metrics[metric] for j in cell_jobs)
            if mean > best.get((ds, metric), (0.0, None))[0]:
                best[ds, metric] = (mean, row)
    return best


# -- paired comparisons and the repeat / new breakdown, from predictions.parquet ----------
@dataclass
class Comparisons:
    """What the jobs' per-example results add to the table."""

    reference: str  # what every row is compared with: "the best baseline" or a row's name
    tests: dict  # (row, data set, metric) -> (reference row, Paired; None for the reference)
    breakdown: dict  # (row, data set) -> predictions.breakdown of its seed-averaged examples
    missing: list[str]  # cells some of whose runs left no predictions.parquet
    resamples: int
    examples: dict  # (row, data set) -> its seed-averaged test examples (per_example)


def per_example(runs: dict) -> tuple[dict, list[str]]:
    """(row, data set) -> seed-averaged test examples (significance.seed_average) of every
    cell whose runs all left predictions.parquet; and the names of the other cells."""
    found, missing = {}, []
    for (row, ds), cell_jobs in runs.items():
        paths = [j.folder / predictions.PREDICTIONS_FILE for j in cell_jobs]
        if not all(path.is_file() for path in paths):
            missing.append(f"{row_name(row)} on {ds}")
            continue
        tables = []
        for job, path in zip(cell_jobs, paths, strict=True):
            tables.append((job.data_seed, predictions.read(path)))  # readable: then its id
            check_same_run(job.metrics, path, predictions.run_of(path))
        try:
            found[row, ds] = significance.seed_average(tables)
        except ValueError as e:
            raise ConfigError(f"the runs of {row_name(row)} on {ds} (e.g. "
                              f"{cell_jobs[0].folder}) do not fit together: {e}.") from None
    return found, missing


def find_row(spec: str, rows: list[tuple[str, str]], option: str = "--against"
             ) -> tuple[str, str]:
    """The row `--against` (or `option`) names: a model ('RIB') where that is one row, else
    a data type and model ('full/RIB' or 'SKU+Micro-behaviors/RIB')."""
    found = [r for r in rows if spec in (r[1], f"{r[0]}/{r[1]}",
                                         f"{FEATURE_LABELS.get(r[0], r[0])}/{r[1]}")]
    if len(found) == 1:
        return found[0]
    names = ", ".join(f"{r[0]}/{r[1]}" for r in (found or rows))
    what = "names several rows" if found else "names no row of the table"
    raise ConfigError(f"{option} {spec!r} {what}; give one of: {names}.")


def compare_rows(jobs: list[Job], rows: list[tuple[str, str]], against: str | None,
                 resamples: int) -> Comparisons | None:
    """Every row against the best baseline (per data set and metric) or the row `against`
    names, on the same test examples; None when no job left predictions.parquet."""
    runs = group_runs(jobs)
    reference = None if against is None else find_row(against, rows)
    examples, missing = per_example(runs)
    if reference is not None and not any(r == reference for r, _ in examples):
        raise ConfigError(f"--against {against!r}: no data set has predictions.parquet from "
                          "every run of that row, so nothing can be paired with it.")
    if not examples:
        return None
    best = best_baselines(runs)
    tests, breakdown, done = {}, {}, {}
    for (row, ds), mine in examples.items():
        breakdown[row, ds] = predictions.breakdown(mine["hit"].to_numpy(), mine["rr"].to_numpy(),
                                                   mine["repeat"].to_numpy())
        for metric in METRICS:
            ref = reference or best.get((ds, metric), (0.0, None))[1]
            if (ref, ds) not in examples:
                continue
            if ref == row:
                tests[row, ds, metric] = (ref, None)
                continue
            if (row, ref, ds) not in done:
                try:
                    done[row, ref, ds] = significance.compare(mine, examples[ref, ds],
                                                              resamples)
                except ValueError as e:
                    raise ConfigError(f"{row_name(row)} and {row_name(ref)} on {ds} cannot be "
                                      f"paired: {e}.") from None
            if done[row, ref, ds] is not None:  # None: no split in common
                tests[row, ds, metric] = (ref, done[row, ref, ds][metric.split("/")[1]])
    name = "the best baseline" if reference is None else row_name(reference)
    return Comparisons(name, tests, breakdown, missing, resamples, examples)


SIGNIFICANT = 0.05  # p below this marks a difference (†)
BREAKDOWN = {"repeat/share": "repeat share", f"repeat/{RECALL}": f"Recall@{K} repeat",
             f"repeat/{MRR}": f"MRR@{K} repeat", "new/share": "new share",
             f"new/{RECALL}": f"Recall@{K} new", f"new/{MRR}": f"MRR@{K} new"}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def csv_table(datasets: list[str], rows: list[tuple[str, str]], cells: dict,
              compared: Comparisons | None = None, breakdown: bool = False) -> list[list]:
    """Header and one row per table row, numbers unformatted (empty where there is none).

    Per data set and metric: mean, std, % vs the best baseline, then the paired difference
    from the reference row (`vs`): diff, ci_low, ci_high and p; per data set: seeds and
    splits, and with `breakdown` the repeat / new shares and metrics.
    """
    header = ["data type", "model"]
    for ds in datasets:
        for label in METRICS.values():
            header += [f"{ds} {label}", f"{ds} {label} std", f"{ds} {label} vs best baseline %",
                       f"{ds} {label} vs", f"{ds} {label} diff", f"{ds} {label} ci_low",
                       f"{ds} {label} ci_high", f"{ds} {label} p"]
        header += [f"{ds} seeds", f"{ds} splits"]
        if breakdown:
            header += [f"{ds} {label}" for label in BREAKDOWN.values()]
    tests = compared.tests if compared else {}
    parts = compared.breakdown if compared else {}
    table = [header]
    for row in rows:
        line = [FEATURE_LABELS.get(row[0], row[0]), row[1]]
        for ds in datasets:
            found = [cells.get((row, ds, metric)) for metric in METRICS]
            for metric, c in zip(METRICS, found, strict=True):
                line += [None] * 3 if c is None else [_round(c.mean), _round(c.std),
                                                      _round(c.gain)]
                ref, t = tests.get((row, ds, metric), (None, None))
                line.append(None if ref is None else row_name(ref))
                line += [None] * 4 if t is None else [_round(t.diff), _round(t.low),
                                                      _round(t.high), _round(t.p)]
            cell = next((c for c in found if c), None)
            line += [None, None] if cell is None else [cell.seeds, cell.splits]
            if breakdown:
                part = parts.get((row, ds))
                line += [None if part is None else _round(part[k]) for k in BREAKDOWN]
        table.append(line)
    return table


def _spread(cells: dict) -> str:
    shapes = {c.spread() for c in cells.values()}
    if all(c.runs == 1 for c in cells.values()):
        return "one seed per cell"
    if len(shapes) == 1:
        return f"mean ± sample standard deviation over {shapes.pop()}"
    if all(c.splits == 1 for c in cells.values()):
        seeds = sorted({c.seeds for c in cells.values()})
        return (f"mean ± sample standard deviation over {seeds[0]} to {seeds[-1]} seeds "
                "(the seeds columns of table3.csv give each cell's count)")
    return ("mean ± sample standard deviation over each cell's runs, seeds × data splits "
            "(from " + ", ".join(sorted(shapes)) + "; the seeds and splits columns of "
            "table3.csv give each cell's)")


def _lines(columns: list[str], rows: list[tuple[str, str]], cell) -> list[str]:
    """A Markdown table: `cell(row)` gives a row's cells after its data type and model."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for i, row in enumerate(rows):
        shown = ["" if i and rows[i - 1][0] == row[0] else FEATURE_LABELS.get(row[0], row[0]),
                 row[1]]  # the data type once per group, as in the paper
        lines.append("| " + " | ".join(shown + cell(row)) + " |")
    return lines


def markdown(datasets: list[str], rows: list[tuple[str, str]], cells: dict,
             failed: list[Job], folders: list[Path], compared: Comparisons | None = None,
             breakdown: bool = False, sliced: list[str] = ()) -> str:
    """The paper's layout: rows by data type and model, Recall@K and MRR@K per data set;
    then the paired differences, with `breakdown` repeat and new targets, and the lines of
    `sliced` (the --slices report)."""
    tests = compared.tests if compared else {}
    columns = ["Data type", "Model"] + [f"{ds} {m}" for ds in datasets for m in METRICS.values()]
    mark = "" if not tests else (
        f" † marks a difference from {compared.reference} with p < {SIGNIFICANT} in a paired "
        "bootstrap over test sessions (below).")

    def means(row):
        shown = []
        for ds in datasets:
            for metric in METRICS:
                c = cells.get((row, ds, metric))
                t = tests.get((row, ds, metric), (None, None))[1]
                shown.append("" if c is None else f"{c.mean:.4f}"
                             + ("" if c.std is None else f" ± {c.std:.4f}")
                             + ("" if c.gain is None else f" ({c.gain:+.1f}%)")
                             + (" †" if t is not None and t.p < SIGNIFICANT else ""))
        return shown

    gains = ("; in parentheses, the relative improvement over the best baseline on the same "
             "data set" if any(c.gain is not None for c in cells.values()) else "")
    lines = ["# Table 3", "",
             f"Test {HEADLINE}, {_spread(cells)}{gains}.{mark}", "",
             *_lines(columns, rows, means)]
    if tests:
        lines += paired_section(datasets, rows, columns, compared)
    if breakdown and compared:
        lines += breakdown_section(datasets, rows, compared)
    elif breakdown:
        lines += ["", "No job left predictions.parquet: no repeat / new breakdown."]
    lines += sliced
    if compared and compared.missing:
        lines += ["", "Cells with a run without predictions.parquet (no paired test or "
                  "breakdown): " + ", ".join(compared.missing) + "."]
    if failed:
        lines += ["", "Jobs without metrics.json (failed or unfinished), not in the table:"]
        lines += [f"- {j.folder}" for j in failed]
    lines += ["", "From: " + ", ".join(str(f) for f in folders)]
    return "\n".join(lines) + "\n"


def paired_section(datasets: list[str], rows: list[tuple[str, str]], columns: list[str],
                   compared: Comparisons) -> list[str]:
    """The table's lines of paired differences from the reference row."""
    def paired(row):
        shown = []
        for ds in datasets:
            for metric in METRICS:
                ref, t = compared.tests.get((row, ds, metric), (None, None))
                shown.append("" if ref is None else "reference" if t is None else t.shown())
        return shown

    return ["", f"## Paired differences from {compared.reference}", "",
            f"Mean difference in test {HEADLINE} over the same test examples "
            "(each model's per-example hit and reciprocal rank averaged over its seeds "
            "first, only examples of the same data split paired), its 95% interval and "
            "two-sided p-value from a paired bootstrap over test sessions "
            f"({compared.resamples} resamples; microrec/reports/significance.py).", "",
            *_lines(columns, rows, paired)]


def breakdown_section(datasets: list[str], rows: list[tuple[str, str]],
                      compared: Comparisons) -> list[str]:
    """The table's lines of metrics on repeat and on new targets."""
    shown_parts = [k for k in BREAKDOWN if k != "new/share"]

    def parts(row):
        part = {ds: compared.breakdown.get((row, ds)) for ds in datasets}
        return ["" if part[ds] is None else f"{part[ds][k]:.4f}"
                for ds in datasets for k in shown_parts]

    return ["", "## Repeat and new targets", "",
            f"Test {HEADLINE} on targets that occur in the input (repeat) and "
            "on the others (new; unknown products count here, as misses), each "
            "example's hit and reciprocal rank averaged over seeds; repeat share = the "
            "share of test examples with a repeat target (new share = 1 − it).", "",
            *_lines(["Data type", "Model"] + [f"{ds} {BREAKDOWN[k]}" for ds in datasets
                                              for k in shown_parts], rows, parts)]


def slice_pairs(rows: list[tuple[str, str]], examples: dict, spec: str,
                against: str | None) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """The (A, B) rows `--slices` compares on some data set: A is the row `spec` names
    (every SKU+Micro-behaviors row when empty), B the `against` row, by default A's own SKU
    row (the same model on products only). Pairs without predictions on a common data set
    are passed over; none left is one sentence."""
    firsts = [find_row(spec, rows, "--slices")] if spec else [r for r in rows if r[0] == "full"]
    reference = find_row(against, rows) if against else None
    pairs = [(a, reference or ("sku", a[1])) for a in firsts]
    pairs = [(a, b) for a, b in pairs if a != b and any(
        (a, ds) in examples and (b, ds) in examples for _, ds in examples)]
    if pairs:
        return pairs
    if spec and not against:
        raise ConfigError(f"--slices {spec!r}: that row has no SKU row of its model, with "
                          "predictions.parquet on the same data set, to be compared with; "
                          "name the other row with --against.")
    raise ConfigError("--slices: no pair of rows with predictions.parquet on a common data "
                      "set to compare (by default each SKU+Micro-behaviors row with the same "
                      "model's SKU row); name them: --slices ROW --against ROW.")


def slice_report(jobs: list[Job], rows: list[tuple[str, str]], compared: Comparisons | None,
                 spec: str, against: str | None, weights: str, folder: Path) -> slices.Report:
    """The --slices report (reports/slices.py), its CSV and figures written into
    `folder`."""
    if compared is None:
        raise ConfigError("--slices compares rows example by example, but no job left "
                          "predictions.parquet.")
    if weights not in significance.POOL_WEIGHTS:
        raise ConfigError(f"--pool-weights {weights!r} is not one of "
                          f"{', '.join(significance.POOL_WEIGHTS)}.")
    pairs = []
    for a, b in slice_pairs(rows, compared.examples, spec, against):
        found = {ds: (compared.examples[a, ds], compared.examples[b, ds])
                 for (row, ds) in compared.examples
                 if row == a and (b, ds) in compared.examples}
        pairs.append((row_name(a), row_name(b), found))
    sources = {}
    for j in jobs:  # any job of a data set and split: they share its data settings
        sources.setdefault((j.data, j.data_seed), j.folder / METRICS_FILE)
    return slices.report(pairs, sources, compared.resamples, weights, folder)


def log_to_wandb(table: list[list], folder: Path, sliced: slices.Report | None) -> None:
    """The table as a W&B Table, in a run of the multirun's W&B group; with the --slices
    report, its table as a second Table and its figures as images."""
    def entries(wandb) -> dict:
        logged = {"table3": wandb.Table(columns=table[0], data=table[1:])}
        if sliced is not None:
            frame = sliced.table
            logged["slices"] = wandb.Table(columns=frame.columns, data=frame.rows())
            logged |= {path.stem: wandb.Image(str(path)) for path in sliced.figures}
        return logged

    log_run(entries, dir=str(folder), name="table3", job_type="results",
            group=wandb_group(folder.resolve()))


def table3(folders: list[Path], use_wandb: bool = False, against: str | None = None,
           breakdown: bool = False, resamples: int = significance.RESAMPLES,
           sliced: str | None = None, pool_weights: str = "equal") -> str:
    """Write table3.md and table3.csv into the first multirun folder (and, with `use_wandb`,
    log them to W&B: the table, and the --slices table and figures); return the Markdown.
    Jobs without metrics.json are listed under it.

    Args:
        against: compare every row with this row (see `find_row`) rather than with the
            best baseline.
        breakdown: add Recall@K and MRR@K on repeat and on new targets.
        resamples: bootstrap replicates of each paired test.
        sliced: add the --slices report (reports/slices.py) of this row (see `find_row`)
            minus the `against` row, or, when "", of each SKU+Micro-behaviors row minus the
            same model's SKU row (or the `against` row); None: no slices.
        pool_weights: how the slices' pooled test weighs data sets (`equal` or `sessions`).
    """
    jobs = read_jobs(folders)
    done = [j for j in jobs if j.metrics is not None]
    failed = [j for j in jobs if j.metrics is None]
    if not done:
        raise ConfigError(f"none of the {len(jobs)} jobs in {', '.join(map(str, folders))} "
                          "has finished (no metrics.json).")
    if resamples < 100:
        raise ConfigError(f"--resamples {resamples} is too few for a 95% interval; use 1000 "
                          "or more.")
    check_consistent(done)
    datasets, rows, cells = summarise(done)
    compared = compare_rows(done, rows, against, resamples)
    table = csv_table(datasets, rows, cells, compared, breakdown)
    report = (None if sliced is None else
              slice_report(done, rows, compared, sliced, against, pool_weights, folders[0]))
    text = markdown(datasets, rows, cells, failed, folders, compared, breakdown,
                    report.lines if report else [])

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(table)

    atomic_write(folders[0] / "table3.csv", write_csv)
    atomic_write(folders[0] / "table3.md", lambda tmp: Path(tmp).write_text(text))
    if use_wandb:
        log_to_wandb(table, folders[0], report)
    return text
