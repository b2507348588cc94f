"""Figure 8 and beyond: what trained RIB runs attend to, side by side.

    python src/train.py -m features=sku,sku_act,sku_dwell,full
    python src/explain.py outputs/multirun/<date>/<time>              # every job of the sweep
    python src/explain.py RUN_DIR_OR_CHECKPOINT ... --example 7 --logger none

Writes to --out (default outputs/explain/<date>/<time>): attention_example (one test
sequence, every run's weights side by side, Figure 8), attention_by_activity,
attention_by_dwell, metrics_by_length (a PNG and its CSV each) and summary.json.
Paths are plain arguments, not Hydra overrides: job folders are named like 0_features=sku
and Hydra's override grammar does not take an unquoted '='.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")  # no account or network needed; override freely

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from microrec import interpret as I
from microrec.analysis import bucket_labels
from microrec.config import build
from microrec.data import Examples, MicroDataModule
from microrec.errors import ConfigError, MicrorecError
from microrec.models.rib import RIB
from microrec.plots import grouped_bars, heatmap, log_to_wandb, save_csv, save_json, save_png
from microrec.schema import NUM_SPECIAL, PAPER_GROUPS, UNK

log = logging.getLogger("microrec.explain")
CHECKPOINT = Path("checkpoints") / "best.ckpt"
CONFIG = Path(".hydra") / "config.yaml"
RIB_TARGET = f"{RIB.__module__}.{RIB.__qualname__}"
FEATURE_NAMES = {"sku": "SKU", "sku_act": "SKU+Activity", "sku_dwell": "SKU+Dwell",
                 "full": "SKU+Activity+Dwell"}
READABLE = (5, 20)  # default example: the first with this many input micro-behaviors


@dataclass
class Run:
    dir: Path
    label: str
    model: RIB
    dm: MicroDataModule


def job_order(path: Path) -> tuple:
    """Multirun job folders in job order (2_ before 10_)."""
    head = path.parent.parent.name.split("_")[0]
    return (int(head) if head.isdigit() else float("inf"), str(path))


def find_checkpoints(paths: list[str]) -> list[Path]:
    """The checkpoint of every run a path names: a checkpoint, a run or a multirun folder."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"{path} does not exist.")
        if path.is_file():
            found.append(path)
        elif (path / CHECKPOINT).is_file():
            found.append(path / CHECKPOINT)
        else:
            jobs = sorted(path.glob(f"*/{CHECKPOINT}"), key=job_order)
            if not jobs:
                raise ConfigError(f"{path} holds no {CHECKPOINT}: give a checkpoint, a run "
                                  "folder or a multirun folder.")
            found.extend(jobs)
    return found


def run_label(run_dir: Path, features: str) -> str:
    """e.g. 'SKU+Dwell · features=sku_dwell' for multirun job folder 2_features=sku_dwell."""
    head, _, rest = run_dir.name.partition("_")
    job = rest if head.isdigit() and rest else run_dir.name
    return f"{FEATURE_NAMES.get(features, features)} · {job}"


def load_runs(checkpoints: list[Path], notes: list[str]) -> list[Run]:
    """Each RIB run's model and its data module, rebuilt from the run's saved config."""
    runs, data = [], {}
    for ckpt in checkpoints:
        run_dir = ckpt.parent.parent if ckpt.parent.name == CHECKPOINT.parent.name \
            else ckpt.parent
        if not (run_dir / CONFIG).is_file():
            raise ConfigError(f"{ckpt}: its run folder {run_dir} has no {CONFIG}, so its data "
                              "cannot be rebuilt.")
        cfg = OmegaConf.load(run_dir / CONFIG)
        target = OmegaConf.select(cfg, "model._target_")
        if target != RIB_TARGET:
            notes.append(f"{run_dir.name}: not a RIB run (model {target}); skipped.")
            continue
        dm = build(cfg.data)
        dm = data.setdefault((dm.cache_key(), dm.max_len), dm)
        dm.setup()
        model = RIB.load_from_checkpoint(ckpt, map_location="cpu").eval()
        runs.append(Run(run_dir, run_label(run_dir, model.hparams.features), model, dm))
    if not runs:
        raise ConfigError(f"no RIB checkpoint among {', '.join(map(str, checkpoints))}.")
    if len(data) > 1:
        raise ConfigError("the runs were trained on different data or data settings: explain "
                          "compares runs on one data set, so give it one data set's runs.")
    labels = [r.label for r in runs]
    for i, run in enumerate(runs):  # unique labels even for repeated settings
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({i})"
    return runs


def pick_example(data: Examples, example: int | None) -> int:
    """The chosen test example; by default the first with a readable number of micro-behaviors
    whose next product is among its inputs (else the first readable one, else 0)."""
    n = len(data)
    if example is None:
        lengths = data.lengths().numpy()
        readable = np.flatnonzero((lengths >= READABLE[0]) & (lengths <= READABLE[1]))
        known = (data.target >= NUM_SPECIAL).numpy()
        in_input = (i for i in readable.tolist()
                    if known[i] and (data[[i]]["item"][0] == data.target[i]).any())
        return next(in_input, int(readable[0]) if readable.size else 0)
    if not 0 <= example < n:
        raise ConfigError(f"example {example} is out of range: the test split has {n} "
                          f"examples (0 to {n - 1}).")
    return example


def draw_example(table: pl.DataFrame, index: int, target: str, data: str) -> Figure:
    """Figure 8: one row per run, one column per input micro-behavior, weights annotated."""
    runs = table.select(I.RUN, I.RANK).unique(maintain_order=True)
    inputs = table.filter(pl.col(I.RUN) == runs[I.RUN][0])
    values = table[I.WEIGHT].to_numpy().reshape(runs.height, inputs.height)
    cols = [f"{p} · {a} · {d}" for p, a, d in
            inputs.select(I.PRODUCT, I.ACTIVITY, I.DWELL_BUCKET).iter_rows()]
    rows = [f"{run}\nrank of next product: {rank}" for run, rank in runs.iter_rows()]
    return heatmap(values, rows, cols,
                   f"Figure 8. Attention over test example {index} ({data}); true next product "
                   f"{target} (red labels)", "input micro-behavior: product · activity · dwell",
                   "run", "attention weight", fmt="{:.2f}", rotate=90, percent=False,
                   red_cols=set(np.flatnonzero(inputs[I.IS_NEXT].to_numpy())))


def draw_channel(table: pl.DataFrame, column: str, title: str, xlabel: str) -> Figure:
    """Runs x values of an input channel, coloured by relative attention weight."""
    runs = table[I.RUN].unique(maintain_order=True).to_list()
    cols = table[column].unique(maintain_order=True).to_list()
    # every run saw the same test tokens, so each has every value: the grid is full
    values = table[I.RELATIVE].to_numpy().reshape(len(runs), len(cols))
    return heatmap(values, runs, cols, title, xlabel, "run",
                   "mean weight x input length (1 = uniform attention)", fmt="{:.2f}",
                   rotate=30, percent=False)


def explain(paths: list[str], out: Path, example: int | None = None,
            logger: str = "wandb", project: str = "microrec") -> dict:
    """Write the attention case study and the test-split summaries of the runs in `paths`."""
    notes: list[str] = []
    runs = load_runs(find_checkpoints(paths), notes)
    dm = runs[0].dm
    prepared, data = dm.prepared, dm.dataset("test")
    name = dm.source.name
    index = pick_example(data, example)
    order = pl.Enum([r.label for r in runs])
    with_attention = [r for r in runs if r.model.attention is not None]
    for r in runs:
        if r.model.attention is None:
            notes.append(f"{r.label}: trained with attention=off, so it has no attention "
                         "weights; it appears in metrics_by_length only.")
    for note in notes:
        log.warning("%s", note)

    scans = [I.scan(r.model, data, r.label, dm.eval_batch_size) for r in runs]
    tokens = pl.concat([t for t, _ in scans]).with_columns(pl.col(I.RUN).cast(order))
    examples = pl.concat([e for _, e in scans]).with_columns(pl.col(I.RUN).cast(order))
    figures, tables = {}, {}
    if with_attention:
        target = I.item_name(prepared, int(data.target[index]))
        tables["attention_example"] = I.example_table(
            {r.label: r.model for r in with_attention}, data, index, prepared)
        figures["attention_example"] = draw_example(tables["attention_example"], index,
                                                    target, name)
        groups = getattr(dm.source, "activity_groups", PAPER_GROUPS)
        tables["attention_by_activity"] = I.by_channel(tokens, I.ACTIVITY,
                                                       I.activity_names(prepared, groups))
        figures["attention_by_activity"] = draw_channel(
            tables["attention_by_activity"], I.ACTIVITY,
            f"Attention by activity over the test split ({name})", "activity of the input")
        buckets = bucket_labels(prepared.bucket_edges)
        buckets[UNK] = buckets.pop(UNK)  # unknown last
        tables["attention_by_dwell"] = I.by_channel(tokens, I.DWELL_BUCKET, buckets)
        figures["attention_by_dwell"] = draw_channel(
            tables["attention_by_dwell"], I.DWELL_BUCKET,
            f"Attention by dwell time over the test split ({name})", "dwell bucket of the input")
    else:
        log.warning("no run has attention: only metrics_by_length is written")
    by_length = I.by_length(examples)
    tables["metrics_by_length"] = by_length
    bins = by_length[I.LENGTH_BIN].unique(maintain_order=True).to_list()
    counts = by_length.filter(pl.col(I.RUN) == runs[0].label)[I.EXAMPLES].to_list()
    figures["metrics_by_length"] = grouped_bars(
        {title: by_length[m].to_numpy().reshape(len(runs), len(bins))
         for m, title in ((f"recall@{I.K}", f"Recall@{I.K}"), (f"mrr@{I.K}", f"MRR@{I.K}"))},
        [f"{b}\n(n={c:,})" for b, c in zip(bins, counts, strict=True)], [r.label for r in runs],
        f"Test metrics by input length ({name})", "micro-behaviors before the target")

    images = {}
    for key, table in tables.items():
        save_csv(table.with_columns(pl.col(I.RUN).cast(pl.String)), out / f"{key}.csv")
        images[key] = save_png(figures[key], out / f"{key}.png")
        log.info("%s -> %s", key, images[key])
    overall = I.ranking_metrics(examples, [I.RUN])
    summary = {
        "data": name, "example": index, "notes": notes, "figures": sorted(images),
        "runs": [{"label": r.label, "dir": str(r.dir), "features": r.model.hparams.features,
                  "attention": r.model.attention is not None, "test": row}
                 for r, row in zip(runs, overall.drop(I.RUN).iter_rows(named=True),
                                   strict=True)],
    }
    save_json(summary, out / "summary.json")
    if logger == "wandb":
        log_to_wandb(images, project=project, dir=str(out), name=f"explain-{name}",
                     job_type="explain", tags=[f"data={name}"],
                     config={"runs": [str(r.dir) for r in runs], "example": index})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="checkpoints, run folders or multirun folders")
    parser.add_argument("--example", type=int, default=None,
                        help="test example to show (default: the first with "
                             f"{READABLE[0]}-{READABLE[1]} input micro-behaviors)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default outputs/explain/<date>/<time>)")
    parser.add_argument("--logger", choices=("wandb", "none"), default="wandb")
    parser.add_argument("--project", default="microrec", help="W&B project")
    args = parser.parse_args(argv)
    out = args.out or Path("outputs/explain") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - "
                        "%(message)s")
    try:
        summary = explain(args.paths, out, args.example, args.logger, args.project)
    except MicrorecError as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({r["label"]: r["test"] for r in summary["runs"]}, indent=2,
                     ensure_ascii=False))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
