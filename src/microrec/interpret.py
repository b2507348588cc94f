"""What a trained RIB attends to: one sequence's weights, and summaries over a whole split.

Frames here carry a `run` column (the run's label) so that several runs stack into one.
"""

from __future__ import annotations

import polars as pl
import torch
from rich.progress import track

from microrec import schema as S
from microrec.data import Examples
from microrec.metrics import target_rank
from microrec.models.rib import RIB
from microrec.protocol import Prepared

# Columns of the result frames (and of the CSV files).
RUN = "run"
EXAMPLE = "example"
POSITION = "position"  # 1 = the oldest micro-behavior the model sees
PRODUCT = "product"
ACTIVITY = "activity"
DWELL_BUCKET = "dwell_bucket"
WEIGHT = "weight"
LENGTH = "length"  # micro-behaviors the model sees (at most max_len)
HISTORY = "input_length"  # micro-behaviors before the target in the session
RANK = "rank"
IS_NEXT = "is_next_product"
TOKENS = "tokens"
MEAN_WEIGHT = "mean_weight"
RELATIVE = "relative_weight"  # mean of weight x length: 1 = what uniform attention gives
LENGTH_BIN = "input_length_bin"
EXAMPLES = "examples"
K = 20  # the headline cut-off
LENGTH_EDGES = (1, 5, 10, 20, 50)  # lower edges of the input-length bins


def item_name(prepared: Prepared, item: int) -> str:
    return "unknown" if item < S.NUM_SPECIAL else str(prepared.items[item - S.NUM_SPECIAL])


def activity_names(prepared: Prepared, groups: dict[str, tuple[str, ...]] = S.PAPER_GROUPS
                   ) -> dict[int, str]:
    """Activity id -> name, in the order of the activity groups; others, then unknown, last."""
    listed = [a for acts in groups.values() for a in acts]
    ids = sorted(range(len(prepared.activities)), key=lambda i: (
        listed.index(prepared.activities[i]) if prepared.activities[i] in listed
        else len(listed), prepared.activities[i]))
    return {**{i + S.NUM_SPECIAL: prepared.activities[i] for i in ids}, S.UNK: "unknown"}


def attention(model: RIB, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T) attention weight of every input micro-behavior; zero on padding."""
    with torch.no_grad():
        return model.attention_weights(batch)


def scan(model: RIB, data: Examples, run: str, batch_size: int = 512
         ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Score every example of a split once.

    Returns the attention weight of every real input token (run, example, activity id,
    dwell bucket id, weight, length; empty without attention) and the rank each example's
    target got (run, example, input_length, rank).
    """
    history = (data.end - data.first).numpy()  # (N,) before truncation to max_len
    tokens, ranks = [], []
    for idx in track(torch.arange(len(data)).split(batch_size), description=f"{run}: scoring",
                     transient=True):
        batch = data[idx]
        with torch.no_grad():
            ranks.append(target_rank(model.ranked(batch), batch["target"]))  # (B,)
        if model.attention is None:
            continue
        weights = attention(model, batch)  # (B, T)
        real = batch["item"] != S.PAD  # (B, T)
        tokens.append(pl.DataFrame({
            EXAMPLE: idx[:, None].expand_as(real)[real].numpy(),
            ACTIVITY: batch["activity"][real].numpy(),
            DWELL_BUCKET: batch["dwell"][real].numpy(),
            WEIGHT: weights[real].numpy(),
            LENGTH: batch["length"][:, None].expand_as(real)[real].numpy(),
        }))
    examples = pl.DataFrame({EXAMPLE: torch.arange(len(data)).numpy(), HISTORY: history,
                             RANK: torch.cat(ranks).numpy()})
    tokens = pl.concat(tokens) if tokens else pl.DataFrame(
        schema={EXAMPLE: pl.Int64, ACTIVITY: pl.Int64, DWELL_BUCKET: pl.Int64,
                WEIGHT: pl.Float32, LENGTH: pl.Int64})
    return (tokens.select(pl.lit(run).alias(RUN), pl.all()),
            examples.select(pl.lit(run).alias(RUN), pl.all()))


def example_table(models: dict[str, RIB], data: Examples, index: int,
                  prepared: Prepared) -> pl.DataFrame:
    """One example's input micro-behaviors, labelled, with every run's weight on each and the
    rank each run gave the true next product. models: run label -> model with attention."""
    batch = data[[index]]
    n = int(batch["length"][0])
    target = int(batch["target"][0])
    items = batch["item"][0, :n].tolist()
    buckets = S.bucket_labels(prepared.bucket_edges)
    acts = activity_names(prepared)
    inputs = pl.DataFrame({
        POSITION: list(range(1, n + 1)),
        PRODUCT: [item_name(prepared, i) for i in items],
        ACTIVITY: [acts[a] for a in batch["activity"][0, :n].tolist()],
        DWELL_BUCKET: [buckets[d] for d in batch["dwell"][0, :n].tolist()],
        IS_NEXT: [i == target and target >= S.NUM_SPECIAL for i in items],
    })
    rows = []
    for run, model in models.items():
        with torch.no_grad():
            rank = int(target_rank(model.ranked(batch), batch["target"])[0])
        rows.append(inputs.with_columns(pl.lit(run).alias(RUN),
                                        pl.Series(WEIGHT, attention(model, batch)[0, :n]),
                                        pl.lit(rank).alias(RANK)))
    return pl.concat(rows).select(RUN, RANK, pl.exclude(RUN, RANK))


def by_channel(tokens: pl.DataFrame, column: str, names: dict[int, str]) -> pl.DataFrame:
    """Mean attention weight per value of `column` (activity or dwell bucket id) and run.

    names: id -> label, in the order the rows should take. relative_weight is the mean of
    weight x input length: 1.0 is what uniform attention gives whatever the length, so values
    compare across activities found in short and long inputs.
    """
    rank = {i: r for r, i in enumerate(names)}
    return (
        tokens.group_by(RUN, column)
        .agg(pl.len().alias(TOKENS), pl.col(WEIGHT).mean().alias(MEAN_WEIGHT),
             (pl.col(WEIGHT) * pl.col(LENGTH)).mean().alias(RELATIVE))
        .sort(RUN, pl.col(column).replace_strict(rank, default=len(rank)), column)
        .with_columns(pl.col(column).replace_strict(names, return_dtype=pl.String))
    )


def ranking_metrics(examples: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """Examples, Recall@20 and MRR@20 per group of `by` columns."""
    hit = pl.col(RANK) <= K
    return (
        examples.group_by(by)
        .agg(pl.len().alias(EXAMPLES), hit.mean().alias(f"recall@{K}"),
             pl.when(hit).then(1.0 / pl.col(RANK)).otherwise(0.0).mean().alias(f"mrr@{K}"))
        .sort(by)
    )


def length_bins() -> dict[int, str]:
    """Bin id -> label of the input-length bins (micro-behaviors before the target)."""
    lows = LENGTH_EDGES
    return {i: f"{low}-{lows[i + 1] - 1}" if i + 1 < len(lows) else f"{low}+"
            for i, low in enumerate(lows)}


def by_length(examples: pl.DataFrame) -> pl.DataFrame:
    """Recall@20 and MRR@20 per run and input-length bin."""
    bin_id = pl.sum_horizontal([pl.col(HISTORY) >= e for e in LENGTH_EDGES[1:]])
    return (
        ranking_metrics(examples.with_columns(bin_id.alias(LENGTH_BIN)), [RUN, LENGTH_BIN])
        .with_columns(pl.col(LENGTH_BIN).replace_strict(length_bins(), return_dtype=pl.String))
    )
