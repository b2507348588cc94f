"""What trained RIB runs attend to, side by side: Figure 8 and summaries over the test split.

`explain` writes attention_example (one test sequence, every run's weights side by side, the
paper's Figure 8), attention_by_activity, attention_by_dwell and metrics_by_length (a PNG
and its CSV each) and summary.json. Runs with head=repeat_explore add the same for the head's
repeat attention (repeat_example, repeat_by_activity, repeat_by_dwell), what it gives the
products by their last activity (repeat_by_last_activity) and how its gate and repeat
attention treat the targets (repeat_gate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from microrec.config import build
from microrec.data import schema as S
from microrec.data.batches import Examples
from microrec.data.module import MicroDataModule
from microrec.errors import ConfigError
from microrec.metrics import MRR, RECALL, K
from microrec.models.heads import RepeatExploreHead
from microrec.models.rib import RIB
from microrec.reports import interpret as I
from microrec.reports.plots import (
    COLORS,
    grouped_bars,
    heatmap,
    log_to_wandb,
    save_csv,
    save_json,
    save_png,
)
from microrec.runs.folders import (
    check_same_run,
    checkpoint_run_id,
    find_checkpoints,
    job_id,
    read_metrics,
    run_folder,
    saved_config,
)

log = logging.getLogger("microrec.explain")
RIB_TARGET = f"{RIB.__module__}.{RIB.__qualname__}"
READABLE = (5, 20)  # default example: the first with this many input micro-behaviors


@dataclass
class Run:
    dir: Path
    label: str
    model: RIB
    dm: MicroDataModule


def run_label(run_dir: Path, features: str) -> str:
    """e.g. 'SKU+Dwell · features=sku_dwell' for multirun job folder 2_features=sku_dwell."""
    _, job = job_id(run_dir)
    return f"{S.FEATURE_LABELS.get(features, features)} · {job}"


def load_runs(checkpoints: list[Path], notes: list[str]) -> list[Run]:
    """Each RIB run's model and its data module, rebuilt from the run's saved config."""
    runs, data = [], {}
    for ckpt in checkpoints:
        run_dir = run_folder(ckpt)
        cfg = saved_config(ckpt)
        if (metrics := read_metrics(run_dir)) is not None:  # finished: the checkpoint is its
            check_same_run(metrics, ckpt, checkpoint_run_id(ckpt))
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
        known = (data.target >= S.NUM_SPECIAL).numpy()
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


def draw_channel(table: pl.DataFrame, column: str, title: str, xlabel: str, colorbar: str
                 ) -> Figure:
    """Runs x values of an input channel, coloured by relative weight."""
    runs = table[I.RUN].unique(maintain_order=True).to_list()
    cols = table[column].unique(maintain_order=True).to_list()
    # every run saw the same test tokens, so each has every value: the grid is full
    values = table[I.RELATIVE].to_numpy().reshape(len(runs), len(cols))
    return heatmap(values, runs, cols, title, xlabel, "run", colorbar, fmt="{:.2f}", rotate=30,
                   percent=False)


# One function per figure: its table (one row group per run) and its picture.

def attention_example(runs: list[Run], dm: MicroDataModule, index: int
                      ) -> tuple[pl.DataFrame, Figure]:
    """Figure 8: every run's attention over test example `index` (runs with attention)."""
    data, prepared = dm.dataset("test"), dm.prepared
    table = I.example_table({r.label: r.model for r in runs}, data, index, prepared)
    target = I.item_name(prepared, int(data.target[index]))
    return table, draw_example(table, index, target, dm.source.name)


# kind of weight -> its name in titles, the column that makes 1 = uniform, colour bar label
WEIGHTS = {
    "attention": ("Attention", I.LENGTH, "mean weight x input length (1 = uniform attention)"),
    "repeat": ("Repeat attention", I.CANDIDATES,
               "mean weight x positions it can return to (1 = uniform)"),
}


def by_activity(tokens: pl.DataFrame, dm: MicroDataModule, kind: str = "attention"
                ) -> tuple[pl.DataFrame, Figure]:
    """Per run and input activity: `kind` of weight (attention or repeat) over the test split."""
    name, size, colorbar = WEIGHTS[kind]
    table = I.by_channel(tokens, I.ACTIVITY, activity_names(dm), size)
    return table, draw_channel(table, I.ACTIVITY, f"{name} by activity over the test split "
                               f"({dm.source.name})", "activity of the input", colorbar)


def by_dwell(tokens: pl.DataFrame, dm: MicroDataModule, kind: str = "attention"
             ) -> tuple[pl.DataFrame, Figure]:
    """Per run and dwell bucket: `kind` of weight (attention or repeat) over the test split."""
    name, size, colorbar = WEIGHTS[kind]
    buckets = S.bucket_labels(dm.prepared.bucket_edges)
    buckets[S.UNK] = buckets.pop(S.UNK)  # unknown last
    table = I.by_channel(tokens, I.DWELL_BUCKET, buckets, size)
    return table, draw_channel(table, I.DWELL_BUCKET, f"{name} by dwell time over the test "
                               f"split ({dm.source.name})", "dwell bucket of the input", colorbar)


def activity_names(dm: MicroDataModule) -> dict[int, str]:
    return I.activity_names(dm.prepared, getattr(dm.source, "activity_groups", S.PAPER_GROUPS))


def repeat_example(runs: list[Run], dm: MicroDataModule, index: int
                   ) -> tuple[pl.DataFrame, Figure]:
    """Figure 8 for head=repeat_explore: per run its repeat weights over test example `index`,
    under its pooling attention where it has attention, with its gate and rank."""
    data, prepared = dm.dataset("test"), dm.prepared
    table = I.repeat_example_table({r.label: r.model for r in runs}, data, index, prepared)
    names, values = [], []
    for (run, rank, gate), rows in table.group_by(I.RUN, I.RANK, I.GATE, maintain_order=True):
        if rows[I.ATTENTION_WEIGHT].is_not_null().any():
            names.append(f"{run}\npooling attention")
            values.append(rows[I.ATTENTION_WEIGHT].to_numpy())
        names.append(f"{run}\nrepeat weight · gate g = {gate:.2f} · rank of next product: "
                     f"{rank}")
        values.append(rows[I.REPEAT_WEIGHT].to_numpy())  # NaN: the head cannot return there
    inputs = table.filter(pl.col(I.RUN) == runs[0].label)
    cols = [f"{p} · {a} · {d}" for p, a, d in
            inputs.select(I.PRODUCT, I.ACTIVITY, I.DWELL_BUCKET).iter_rows()]
    target = I.item_name(prepared, int(data.target[index]))
    return table, heatmap(
        np.vstack(values), names, cols,
        f"Figure 8, head=repeat_explore: test example {index} ({dm.source.name}); true next "
        f"product {target} (red labels)\nblank: the last product and unknown products, which "
        "the head cannot return to", "input micro-behavior: product · activity · dwell", "run",
        "weight", fmt="{:.2f}", rotate=90, percent=False,
        red_cols=set(np.flatnonzero(inputs[I.IS_NEXT].to_numpy())))


def repeat_by_last_activity(products: pl.DataFrame, dm: MicroDataModule
                            ) -> tuple[pl.DataFrame, Figure]:
    """What makes a product come back: per activity of a product's last micro-behavior, the
    share that is the next product (data) against the repeat probability each run gives."""
    table = I.by_last_activity(products, activity_names(dm))
    runs = table[I.RUN].unique(maintain_order=True).to_list()
    first = table.filter(pl.col(I.RUN) == runs[0])
    values = np.vstack([first[I.NEXT_SHARE].to_numpy()]
                       + [table.filter(pl.col(I.RUN) == run)[I.MEAN_PROB].to_numpy()
                          for run in runs])
    cols = [f"{a}\n(n={n:,})" for a, n in first.select(I.ACTIVITY, I.PRODUCTS).iter_rows()]
    return table, heatmap(
        values, ["share that is the next product (data)",
                 *(f"{run}\nmean repeat probability" for run in runs)], cols,
        f"Products the head can return to, by the activity of their last micro-behavior "
        f"(test examples with a repeat target, {dm.source.name})",
        "activity of the product's last micro-behavior in the input", "", "share / probability",
        fmt="{:.2f}", rotate=30, percent=False)


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def repeat_gate(examples: pl.DataFrame, products: pl.DataFrame, data: str
                ) -> tuple[pl.DataFrame, Figure]:
    """The gate's distribution for repeat and new targets, one panel per run with a gate."""
    table = I.gate_summary(examples, products)
    fig = Figure(figsize=(4.5 * table.height + 1, 4.4), layout="constrained")
    axes = fig.subplots(1, table.height, squeeze=False)[0]
    bins = np.linspace(0, 1, 21)
    for ax, row in zip(axes, table.iter_rows(named=True), strict=True):
        gates = examples.filter((pl.col(I.RUN) == row[I.RUN]) & pl.col(I.CAN_REPEAT))
        for (label, repeated), color in zip((("repeat targets", True), ("new targets", False)),
                                            COLORS, strict=False):
            g = gates.filter(pl.col(I.IS_REPEAT) == repeated)[I.GATE].to_numpy()
            ax.hist(g, bins, weights=np.full(len(g), 1 / max(len(g), 1)), histtype="step",
                    linewidth=2, color=color, label=f"{label} (n={len(g):,})")
        ax.set_title(f"{row[I.RUN]}\nmean g: {number(row['mean_gate_repeat'])} repeat, "
                     f"{number(row['mean_gate_new'])} new; AUC {number(row['gate_auc'])}",
                     fontsize=9)
        ax.set_xlabel("gate g = P(return to an input product)")
        ax.set_ylabel("share of the examples")
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    fig.suptitle(f"The gate for repeat and new targets (test examples with a product to "
                 f"return to, {data})")
    return table, fig


def metrics_by_length(examples: pl.DataFrame, labels: list[str], data: str
                      ) -> tuple[pl.DataFrame, Figure]:
    """Recall@K and MRR@K per input-length bin, one bar per run (`labels`, in order)."""
    table = I.by_length(examples)
    bins = table[I.LENGTH_BIN].unique(maintain_order=True).to_list()
    counts = table.filter(pl.col(I.RUN) == labels[0])[I.EXAMPLES].to_list()
    return table, grouped_bars(
        {title: table[m].to_numpy().reshape(len(labels), len(bins))
         for m, title in ((RECALL, f"Recall@{K}"), (MRR, f"MRR@{K}"))},
        [f"{b}\n(n={c:,})" for b, c in zip(bins, counts, strict=True)], labels,
        f"Test metrics by input length ({data})", "micro-behaviors before the target")


def explain(paths: list[str], out: Path, example: int | None = None,
            logger: str = "wandb", project: str | None = None) -> dict:
    """Write the attention case study and the test-split summaries of the runs in `paths`."""
    notes: list[str] = []
    runs = load_runs(find_checkpoints(paths), notes)
    dm = runs[0].dm
    data, name = dm.dataset("test"), dm.source.name
    index = pick_example(data, example)
    notes += left_out(runs)
    for note in notes:
        log.warning("%s", note)
    order = pl.Enum([r.label for r in runs])
    scans = [I.scan(r.model, data, r.label, dm.eval_batch_size) for r in runs]
    tokens, examples, repeats, products = (  # each stacked over the runs
        pl.concat(frames).with_columns(pl.col(I.RUN).cast(order))
        for frames in zip(*scans, strict=True))
    figures = draw(runs, dm, index, tokens, examples, repeats, products, notes)

    images = {}
    for key, (table, picture) in figures.items():
        save_csv(table.with_columns(pl.col(I.RUN).cast(pl.String)), out / f"{key}.csv")
        images[key] = save_png(picture, out / f"{key}.png")
        log.info("%s -> %s", key, images[key])
    overall = I.ranking_metrics(examples, [I.RUN])
    heads = {row.pop(I.RUN): row for row in figures["repeat_gate"][0].iter_rows(named=True)
             } if "repeat_gate" in figures else {}
    summary = {
        "data": name, "example": index, "notes": notes, "figures": sorted(images),
        "runs": [{"label": r.label, "dir": str(r.dir), "features": r.model.hparams.features,
                  "attention": r.model.attention is not None,
                  "head": r.model.hparams.get("head", "softmax"), "test": row,
                  "repeat": heads.get(r.label)}
                 for r, row in zip(runs, overall.drop(I.RUN).iter_rows(named=True),
                                   strict=True)],
    }
    save_json(summary, out / "summary.json")
    if logger == "wandb":
        log_to_wandb(images, project=project, dir=str(out), name=f"explain-{name}",
                     job_type="explain", tags=[f"data={name}"],
                     config={"runs": [str(r.dir) for r in runs], "example": index})
    return summary


def has_repeat_head(run: Run) -> bool:
    return isinstance(run.model.head, RepeatExploreHead)


def left_out(runs: list[Run]) -> list[str]:
    """A note for each run that some figures leave out, and why."""
    notes = []
    repeat = any(has_repeat_head(r) for r in runs)
    for r in runs:
        if r.model.attention is None:
            notes.append(f"{r.label}: trained with attention=off, so it has no attention "
                         "weights; it is left out of the attention_* files.")
        if repeat and not has_repeat_head(r):
            notes.append(f"{r.label}: trained with head=softmax, so it has no repeat attention "
                         "or gate; it is left out of the repeat_* files.")
    return notes


def draw(runs: list[Run], dm, index: int, tokens: pl.DataFrame, examples: pl.DataFrame,
         repeats: pl.DataFrame, products: pl.DataFrame, notes: list[str]) -> dict:
    """Every figure the runs allow: file name -> (table, picture); a figure no run allows
    adds a note."""
    name = dm.source.name
    with_attention = [r for r in runs if r.model.attention is not None]
    with_repeat = [r for r in runs if has_repeat_head(r)]
    figures = {}
    if with_attention:
        figures["attention_example"] = attention_example(with_attention, dm, index)
        figures["attention_by_activity"] = by_activity(tokens, dm)
        figures["attention_by_dwell"] = by_dwell(tokens, dm)
    else:
        log.warning("no run has attention: no attention_* file is written")
    if with_repeat:
        figures["repeat_example"] = repeat_example(with_repeat, dm, index)
        figures["repeat_by_activity"] = by_activity(repeats, dm, "repeat")
        figures["repeat_by_dwell"] = by_dwell(repeats, dm, "repeat")
    if with_repeat and examples[I.IS_REPEAT].any():
        figures["repeat_by_last_activity"] = repeat_by_last_activity(products, dm)
        figures["repeat_gate"] = repeat_gate(examples, products, name)
    elif with_repeat:
        notes.append("no test example's next product is in its input, so "
                     "repeat_by_last_activity and repeat_gate are not written.")
        log.warning("%s", notes[-1])
    figures["metrics_by_length"] = metrics_by_length(examples, [r.label for r in runs], name)
    return figures
