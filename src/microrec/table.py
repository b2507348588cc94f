"""The paper's Table 3 from multirun jobs: Markdown, CSV and a W&B Table.

A job's Hydra choices (data, model, features, attention, encoder) place it in the table and
its `metrics.json` gives test Recall@20 and MRR@20. Jobs of the same data set and row are
seeds of one cell: the cell shows their mean and, with several, their sample standard
deviation; a non-baseline row also shows the relative improvement of its mean over the best
baseline's mean on that data set.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from microrec.errors import ConfigError
from microrec.files import atomic_write
from microrec.runs import CONFIG, HYDRA, METRICS_FILE, job_folders, wandb_group
from microrec.schema import FEATURE_LABELS

METRICS = {"test/recall@20": "Recall@20", "test/mrr@20": "MRR@20"}
BASELINES = {"pop": "POP", "bpr_mf": "BPR-MF", "item_knn": "Item-KNN", "word2vec": "Word2vec",
             "word2vec_avg": "Word2vec Avg"}
# neural peers read any feature variant: a row under each data type they were run with
NEURAL_PEERS = {"narm": "NARM", "sasrec": "SASRec", "repeatnet": "RepeatNet", "gru4rec": "GRU4Rec"}
MODEL_ORDER = [*BASELINES.values(), *NEURAL_PEERS.values(), "RIB w/o attention", "RIB"]


@dataclass
class Job:
    folder: Path
    data: str  # the data set: Hydra's `data` choice
    data_type: str  # a feature variant (schema.FEATURE_LABELS)
    model: str  # the row's model, as the table names it
    seed: int
    data_config: dict  # the composed `data` node, to check that a data set is one setting
    metrics: dict | None  # None: no metrics.json, the job failed or is unfinished


def row_of(choices) -> tuple[str, str]:
    """(data type, model name) of a job from its Hydra choices."""
    if choices.model in BASELINES:
        return "sku", BASELINES[choices.model]  # baselines read products only
    if choices.model in NEURAL_PEERS:
        return choices.features, NEURAL_PEERS[choices.model]
    if choices.model != "rib":
        return choices.features, choices.model
    name = "RIB" if choices.get("attention") == "on" else "RIB w/o attention"
    if choices.get("encoder") not in (None, "gru"):
        name += f" ({choices.encoder.upper()})"
    return choices.features, name


def read_jobs(folders: list[Path]) -> list[Job]:
    """Every job folder of the given multirun folders, in job order."""
    jobs = []
    for job in (job for folder in folders for job in job_folders(folder)):
        choices = OmegaConf.load(job / HYDRA).hydra.runtime.choices
        config = OmegaConf.load(job / CONFIG)
        metrics = job / METRICS_FILE
        data_type, model = row_of(choices)
        jobs.append(Job(job, choices.data, data_type, model, int(config.seed),
                        OmegaConf.to_container(config.data),
                        json.loads(metrics.read_text()) if metrics.is_file() else None))
    return jobs


def check_consistent(jobs: list[Job]) -> None:
    """One data setting per data set, and each seed of a cell once."""
    setting, seen = {}, {}
    for job in jobs:
        first = setting.setdefault(job.data, job)
        if job.data_config != first.data_config:
            raise ConfigError(f"{first.folder} and {job.folder} both use data={job.data} but "
                              "with different data settings; tabulate them separately.")
        key = (job.data, job.data_type, job.model, job.seed)
        if key in seen:
            raise ConfigError(f"{seen[key].folder} and {job.folder} are both seed {job.seed} "
                              f"of {job.model} on {job.data}; pass each seed once.")
        seen[key] = job


@dataclass
class Cell:
    mean: float
    std: float | None  # sample standard deviation over seeds; None with one seed
    gain: float | None  # % of the mean over the best baseline's; None for a baseline
    seeds: int


def summarise(jobs: list[Job]) -> tuple[list[str], list[tuple[str, str]], dict]:
    """Data sets (columns), rows (data type, model) in the paper's order, and the cells by
    (row, data set, metric)."""
    datasets = list(dict.fromkeys(j.data for j in jobs))
    variants = list(FEATURE_LABELS)
    rows = sorted({(j.data_type, j.model) for j in jobs}, key=lambda r: (
        variants.index(r[0]) if r[0] in variants else len(variants), r[0],
        MODEL_ORDER.index(r[1]) if r[1] in MODEL_ORDER else len(MODEL_ORDER), r[1]))
    values = {}  # (row, data set, metric) -> one value per seed
    for j in jobs:
        for metric in METRICS:
            values.setdefault(((j.data_type, j.model), j.data, metric), []).append(
                j.metrics[metric])
    best = {}  # (data set, metric) -> the best baseline's mean
    for (row, ds, metric), v in values.items():
        if row[1] in BASELINES.values():
            best[ds, metric] = max(best.get((ds, metric), 0.0), statistics.mean(v))
    cells = {}
    for (row, ds, metric), v in values.items():
        mean = statistics.mean(v)
        top = None if row[1] in BASELINES.values() else best.get((ds, metric))
        cells[row, ds, metric] = Cell(mean, statistics.stdev(v) if len(v) > 1 else None,
                                      100 * (mean / top - 1) if top else None, len(v))
    return datasets, rows, cells


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def csv_table(datasets: list[str], rows: list[tuple[str, str]], cells: dict) -> list[list]:
    """Header and one row per table row, numbers unformatted (empty where there is none)."""
    header = ["data type", "model"]
    for ds in datasets:
        for label in METRICS.values():
            header += [f"{ds} {label}", f"{ds} {label} std", f"{ds} {label} vs best baseline %"]
        header.append(f"{ds} seeds")
    table = [header]
    for row in rows:
        line = [FEATURE_LABELS.get(row[0], row[0]), row[1]]
        for ds in datasets:
            found = [cells.get((row, ds, metric)) for metric in METRICS]
            for c in found:
                line += [None] * 3 if c is None else [_round(c.mean), _round(c.std),
                                                      _round(c.gain)]
            line.append(next((c.seeds for c in found if c), None))
        table.append(line)
    return table


def markdown(datasets: list[str], rows: list[tuple[str, str]], cells: dict,
             failed: list[Job], folders: list[Path]) -> str:
    """The paper's layout: rows by data type and model, Recall@20 and MRR@20 per data set."""
    seeds = sorted({c.seeds for c in cells.values()})
    if seeds == [1]:
        spread = "one seed per cell"
    elif len(seeds) == 1:
        spread = f"mean ± sample standard deviation over {seeds[0]} seeds"
    else:
        spread = (f"mean ± sample standard deviation over {seeds[0]} to {seeds[-1]} seeds "
                  "(the seeds columns of table3.csv give each cell's count)")
    columns = ["Data type", "Model"] + [f"{ds} {m}" for ds in datasets for m in METRICS.values()]
    lines = [
        "# Table 3", "",
        f"Test Recall@20 and MRR@20, {spread}; in parentheses, the relative improvement over "
        "the best baseline on the same data set.", "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for i, row in enumerate(rows):
        shown = ["" if i and rows[i - 1][0] == row[0] else FEATURE_LABELS.get(row[0], row[0]),
                 row[1]]  # the data type once per group, as in the paper
        for ds in datasets:
            for metric in METRICS:
                c = cells.get((row, ds, metric))
                shown.append("" if c is None else f"{c.mean:.4f}"
                             + ("" if c.std is None else f" ± {c.std:.4f}")
                             + ("" if c.gain is None else f" ({c.gain:+.1f}%)"))
        lines.append("| " + " | ".join(shown) + " |")
    if failed:
        lines += ["", "Jobs without metrics.json (failed or unfinished), not in the table:"]
        lines += [f"- {j.folder}" for j in failed]
    lines += ["", "From: " + ", ".join(str(f) for f in folders)]
    return "\n".join(lines) + "\n"


def log_to_wandb(table: list[list], folder: Path) -> None:
    """The table as a W&B Table in its own run, in the multirun's W&B group (offline unless
    WANDB_MODE says otherwise)."""
    import wandb

    run = wandb.init(project="microrec", dir=str(folder), name="table3", job_type="results",
                     group=wandb_group(folder.resolve()))
    run.log({"table3": wandb.Table(columns=table[0], data=table[1:])})
    run.finish()


def table3(folders: list[Path], use_wandb: bool = False) -> str:
    """Write table3.md and table3.csv into the first multirun folder (and, with `use_wandb`,
    log a W&B Table); return the Markdown. Jobs without metrics.json are listed under it."""
    jobs = read_jobs(folders)
    done = [j for j in jobs if j.metrics is not None]
    failed = [j for j in jobs if j.metrics is None]
    if not done:
        raise ConfigError(f"none of the {len(jobs)} jobs in {', '.join(map(str, folders))} "
                          "has finished (no metrics.json).")
    check_consistent(done)
    datasets, rows, cells = summarise(done)
    table = csv_table(datasets, rows, cells)
    text = markdown(datasets, rows, cells, failed, folders)

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(table)

    atomic_write(folders[0] / "table3.csv", write_csv)
    atomic_write(folders[0] / "table3.md", lambda tmp: Path(tmp).write_text(text))
    if use_wandb:
        log_to_wandb(table, folders[0])
    return text


