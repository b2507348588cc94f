"""What a trained RIB attends to: one sequence's weights, and summaries over a whole split.

Frames here carry a `run` column (the run's label) so that several runs stack into one. With
head=repeat_explore the same is done for the head's repeat attention, and its gate is scored.
"""

from __future__ import annotations

from typing import NamedTuple

import polars as pl
import torch
from rich.console import Console
from rich.progress import track

from microrec.data import schema as S
from microrec.data.batches import Examples
from microrec.data.protocol import Prepared
from microrec.metrics import MRR, RECALL, hits_and_rr
from microrec.models.heads import RepeatExploreHead, repeat_candidates
from microrec.models.ranking import target_rank
from microrec.models.rib import RIB

# Progress goes to stderr and only to a terminal: stdout carries a script's result (explain's
# JSON), and a transient bar still leaves a blank line behind where there is no terminal.
PROGRESS = Console(stderr=True)

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
# head=repeat_explore
CANDIDATES = "candidates"  # positions of the example the repeat head can return to
GATE = "gate"  # g = P(return to an input product); null for head=softmax
CAN_REPEAT = "can_repeat"  # the input holds a product the repeat head can return to
IS_REPEAT = "is_repeat"  # the target's product is one of them (a repeat target)
REPEAT_PROB = "repeat_probability"  # p_repeat of a product: its positions' weights summed
RECENCY = "recency"  # 1 = the most recent product the head can return to
REPEAT_WEIGHT = "repeat_weight"
ATTENTION_WEIGHT = "attention_weight"
PRODUCTS = "products"
NEXT = "next_products"
NEXT_SHARE = "next_share"
MEAN_PROB = "mean_repeat_probability"
NEXT_PROB = "next_repeat_probability"
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


def repeat(model: RIB, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """head=repeat_explore: repeat weights (B, T) and gate (B,), see `RIB.repeat_weights`."""
    with torch.no_grad():
        return model.repeat_weights(batch)


class Scan(NamedTuple):
    """One run's pass over a split (see `scan`); each frame starts with the run's label."""
    tokens: pl.DataFrame
    examples: pl.DataFrame
    repeat: pl.DataFrame
    products: pl.DataFrame


def token_schema(size: str) -> dict:
    return {EXAMPLE: pl.Int64, ACTIVITY: pl.Int64, DWELL_BUCKET: pl.Int64, WEIGHT: pl.Float32,
            size: pl.Int64}


def token_frame(idx: torch.Tensor, batch: dict[str, torch.Tensor], weights: torch.Tensor,
                keep: torch.Tensor, size: str) -> pl.DataFrame:
    """The weights (B, T) of the kept positions (B, T) with their activity and dwell ids, and
    as `size` how many positions their example keeps (1 / size is a uniform weight)."""
    per_example = keep.sum(1, keepdim=True).expand_as(keep)  # (B, T)
    return pl.DataFrame({
        EXAMPLE: idx[:, None].expand_as(keep)[keep].numpy(),
        ACTIVITY: batch["activity"][keep].numpy(),
        DWELL_BUCKET: batch["dwell"][keep].numpy(),
        WEIGHT: weights[keep].numpy(),
        size: per_example[keep].numpy(),
    }, schema=token_schema(size))


PRODUCT_SCHEMA = {EXAMPLE: pl.Int64, ACTIVITY: pl.Int64, REPEAT_PROB: pl.Float32,
                  RECENCY: pl.Int64, IS_NEXT: pl.Boolean}


def product_frame(idx: torch.Tensor, batch: dict[str, torch.Tensor], weights: torch.Tensor
                  ) -> pl.DataFrame:
    """Every product the repeat head can return to, one row per example and product: the
    activity of its last micro-behavior in the input, its repeat probability (the weights
    (B, T) of its positions summed), its recency and whether it is the next product."""
    item = batch["item"]  # (B, T)
    same = item[:, :, None] == item[:, None, :]  # (B, T, T)
    later = torch.ones(item.size(1), item.size(1), dtype=torch.bool).triu(1)  # (T, T): s > t
    last = repeat_candidates(batch) & ~(same & later).any(2)  # (B, T) a product's last position
    prob = (same * weights[:, None, :]).sum(2)  # (B, T) p_repeat of each position's product
    recency = last.flip(1).cumsum(1).flip(1)  # (B, T) at last positions: 1 = the most recent
    is_next = item == batch["target"][:, None]  # (B, T)
    return pl.DataFrame({
        EXAMPLE: idx[:, None].expand_as(last)[last].numpy(),
        ACTIVITY: batch["activity"][last].numpy(),
        REPEAT_PROB: prob[last].numpy(),
        RECENCY: recency[last].numpy(),
        IS_NEXT: is_next[last].numpy(),
    }, schema=PRODUCT_SCHEMA)


def scan(model: RIB, data: Examples, run: str, batch_size: int = 512) -> Scan:
    """Score every example of a split once.

    Returns a `Scan` of four frames, each starting with the run's label:
    tokens: the attention weight of every real input token (example, activity id, dwell
        bucket id, weight, length); empty with attention=off.
    examples: per example its input_length, the rank its target got, can_repeat (the input
        holds a product the repeat head can return to), is_repeat (the target is one) and
        the gate (null with head=softmax).
    repeat: the repeat weight of every position the head can return to, as the tokens but
        with `candidates` in place of `length`; empty with head=softmax.
    products: `product_frame`'s rows; empty with head=softmax.
    """
    history = (data.end - data.first).numpy()  # (N,) before truncation to max_len
    ranks, can, repeats, gates = [], [], [], []
    frames = {"tokens": [], "repeat": [], "products": []}
    for idx in track(torch.arange(len(data)).split(batch_size), description=f"{run}: scoring",
                     transient=True, console=PROGRESS, disable=not PROGRESS.is_terminal):
        batch = data[idx]
        with torch.no_grad():
            ranks.append(target_rank(model.ranked(batch), batch["target"]))  # (B,)
        candidate = repeat_candidates(batch)  # (B, T)
        can.append(candidate.any(1))
        repeats.append(((batch["item"] == batch["target"][:, None]) & candidate).any(1))
        if model.attention is not None:
            frames["tokens"].append(token_frame(idx, batch, attention(model, batch),
                                                batch["item"] != S.PAD, LENGTH))
        if isinstance(model.head, RepeatExploreHead):
            out = repeat(model, batch)
            gates.append(out["gate"])  # (B,)
            frames["repeat"].append(token_frame(idx, batch, out["repeat"], candidate,
                                                CANDIDATES))
            frames["products"].append(product_frame(idx, batch, out["repeat"]))
    n = len(data)
    examples = pl.DataFrame({
        EXAMPLE: torch.arange(n).numpy(), HISTORY: history, RANK: torch.cat(ranks).numpy(),
        CAN_REPEAT: torch.cat(can).numpy(), IS_REPEAT: torch.cat(repeats).numpy(),
        GATE: pl.Series(torch.cat(gates).numpy() if gates else [None] * n, dtype=pl.Float32),
    })
    schemas = {"tokens": token_schema(LENGTH), "repeat": token_schema(CANDIDATES),
               "products": PRODUCT_SCHEMA}
    stacked = {key: pl.concat(rows) if rows else pl.DataFrame(schema=schemas[key])
               for key, rows in frames.items()}
    return Scan(*(frame.select(pl.lit(run).alias(RUN), pl.all()) for frame in (
        stacked["tokens"], examples, stacked["repeat"], stacked["products"])))


def example_inputs(data: Examples, index: int, prepared: Prepared
                   ) -> tuple[dict[str, torch.Tensor], pl.DataFrame]:
    """One example's batch and its input micro-behaviors, labelled, one row each."""
    batch = data[[index]]
    n = int(batch["length"][0])
    target = int(batch["target"][0])
    items = batch["item"][0, :n].tolist()
    buckets = S.bucket_labels(prepared.bucket_edges)
    acts = activity_names(prepared)
    return batch, pl.DataFrame({
        POSITION: list(range(1, n + 1)),
        PRODUCT: [item_name(prepared, i) for i in items],
        ACTIVITY: [acts[a] for a in batch["activity"][0, :n].tolist()],
        DWELL_BUCKET: [buckets[d] for d in batch["dwell"][0, :n].tolist()],
        IS_NEXT: [i == target and target >= S.NUM_SPECIAL for i in items],
    })


def example_rank(model: RIB, batch: dict[str, torch.Tensor]) -> int:
    """The rank the model gives the true next product of a one-example batch."""
    with torch.no_grad():
        return int(target_rank(model.ranked(batch), batch["target"])[0])


def example_table(models: dict[str, RIB], data: Examples, index: int,
                  prepared: Prepared) -> pl.DataFrame:
    """One example's input micro-behaviors, labelled, with every run's weight on each and the
    rank each run gave the true next product. models: run label -> model with attention."""
    batch, inputs = example_inputs(data, index, prepared)
    rows = [inputs.with_columns(pl.lit(run).alias(RUN),
                                pl.Series(WEIGHT, attention(model, batch)[0, :inputs.height]),
                                pl.lit(example_rank(model, batch)).alias(RANK))
            for run, model in models.items()]
    return pl.concat(rows).select(RUN, RANK, pl.exclude(RUN, RANK))


def repeat_example_table(models: dict[str, RIB], data: Examples, index: int,
                         prepared: Prepared) -> pl.DataFrame:
    """`example_table` for head=repeat_explore runs: per run and input micro-behavior its
    repeat weight (null where the head cannot return: the last product, unknown products)
    and its attention weight (null with attention=off), with the run's gate and rank."""
    batch, inputs = example_inputs(data, index, prepared)
    n = inputs.height
    candidate = repeat_candidates(batch)[0, :n]  # (n,)
    rows = []
    for run, model in models.items():
        out = repeat(model, batch)
        weights = out["repeat"][0, :n].where(candidate, float("nan"))  # (n,)
        attended = (attention(model, batch)[0, :n] if model.attention is not None
                    else torch.full((n,), float("nan")))  # (n,)
        rows.append(inputs.with_columns(
            pl.lit(run).alias(RUN), pl.lit(example_rank(model, batch)).alias(RANK),
            pl.lit(float(out["gate"][0])).alias(GATE),
            pl.Series(REPEAT_WEIGHT, weights.numpy(), nan_to_null=True),
            pl.Series(ATTENTION_WEIGHT, attended.numpy(), nan_to_null=True)))
    return pl.concat(rows).select(RUN, RANK, GATE, pl.exclude(RUN, RANK, GATE))


def in_order(frame: pl.DataFrame, column: str, names: dict[int, str]) -> pl.DataFrame:
    """Sorted by run, then by `column`'s ids in the order of `names` (id -> label), which
    then replace the ids."""
    rank = {i: r for r, i in enumerate(names)}
    return (frame.sort(RUN, pl.col(column).replace_strict(rank, default=len(rank)), column)
            .with_columns(pl.col(column).replace_strict(names, return_dtype=pl.String)))


def by_channel(tokens: pl.DataFrame, column: str, names: dict[int, str], size: str = LENGTH
               ) -> pl.DataFrame:
    """Mean weight per value of `column` (activity or dwell bucket id) and run.

    names: id -> label, in the order the rows should take. relative_weight is the mean of
    weight x `size` (the example's input length, or its candidates for repeat weights): 1.0
    is what uniform weights give whatever the size, so values compare across activities
    found in short and long inputs.
    """
    return in_order(
        tokens.group_by(RUN, column)
        .agg(pl.len().alias(TOKENS), pl.col(WEIGHT).mean().alias(MEAN_WEIGHT),
             (pl.col(WEIGHT) * pl.col(size)).mean().alias(RELATIVE)),
        column, names)


def by_last_activity(products: pl.DataFrame, names: dict[int, str]) -> pl.DataFrame:
    """Over the examples whose target is a repeat: per run and activity of a product's last
    micro-behavior in the input, how often it is the next product and what the head gives it.

    Columns: products; next_products (how many of them are the next product); next_share
    (their share: what a calibrated repeat attention would give on average); the mean
    repeat probability of all of them (mean_repeat_probability) and of the next ones
    (next_repeat_probability, null where none is next).
    """
    prob = pl.col(REPEAT_PROB)
    return in_order(
        products.filter(pl.col(IS_NEXT).any().over(RUN, EXAMPLE))
        .group_by(RUN, ACTIVITY)
        .agg(pl.len().alias(PRODUCTS), pl.col(IS_NEXT).sum().alias(NEXT),
             pl.col(IS_NEXT).mean().alias(NEXT_SHARE), prob.mean().alias(MEAN_PROB),
             prob.filter(pl.col(IS_NEXT)).mean().alias(NEXT_PROB)),
        ACTIVITY, names)


def gate_summary(examples: pl.DataFrame, products: pl.DataFrame) -> pl.DataFrame:
    """One row per run with a gate (head=repeat_explore): what the gate and the repeat
    attention did with the targets.

    Over the examples that can repeat (the gate is 0 on the others by construction):
    examples, repeat_share (share of repeat targets), mean_gate, mean_gate_repeat and
    mean_gate_new (by target), gate_auc (the chance that a random repeat target's example
    gets a larger gate than a random new one's, ties half: 0.5 = no separation). Over the
    repeat targets: repeat_targets, top_weight_share (the next product got the largest
    repeat probability, ties against it), most_recent_share (it is the most recent product
    the head can return to: what a recency rule gets) and mean_next_repeat_probability.
    """
    gate, repeated = pl.col(GATE), pl.col(IS_REPEAT)
    positives = repeated.sum().cast(pl.Float64)
    negatives = pl.len().cast(pl.Float64) - positives
    gates = (
        examples.filter(gate.is_not_null() & pl.col(CAN_REPEAT))
        .group_by(RUN)
        .agg(pl.len().alias(EXAMPLES), repeated.mean().alias("repeat_share"),
             gate.mean().alias("mean_gate"), gate.filter(repeated).mean().alias("mean_gate_repeat"),
             gate.filter(~repeated).mean().alias("mean_gate_new"),
             pl.when(positives * negatives > 0)  # else undefined: null
             .then((gate.rank("average").filter(repeated).sum() - positives * (positives + 1) / 2)
                   / (positives * negatives)).alias("gate_auc"))
    )
    prob, is_next = pl.col(REPEAT_PROB), pl.col(IS_NEXT)
    next_prob = prob.filter(is_next).first()
    targets = (
        products.filter(is_next.any().over(RUN, EXAMPLE))
        .group_by(RUN, EXAMPLE)
        .agg(((prob >= next_prob).sum() == 1).alias("top"),
             (pl.col(RECENCY).filter(is_next).first() == 1).alias("recent"),
             next_prob.alias(REPEAT_PROB))
        .group_by(RUN)
        .agg(pl.len().alias("repeat_targets"), pl.col("top").mean().alias("top_weight_share"),
             pl.col("recent").mean().alias("most_recent_share"),
             pl.col(REPEAT_PROB).mean().alias("mean_next_repeat_probability"))
    )
    return gates.join(targets, on=RUN, how="left").sort(RUN)


def ranking_metrics(examples: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """Examples, Recall@K and MRR@K per group of `by` columns."""
    hit, rr = hits_and_rr(examples[RANK])
    return (
        examples.with_columns(pl.Series(RECALL, hit), pl.Series(MRR, rr))
        .group_by(by)
        .agg(pl.len().alias(EXAMPLES), pl.col(RECALL, MRR).mean())
        .sort(by)
    )


def length_bins() -> dict[int, str]:
    """Bin id -> label of the input-length bins (micro-behaviors before the target)."""
    lows = LENGTH_EDGES
    return {i: f"{low}-{lows[i + 1] - 1}" if i + 1 < len(lows) else f"{low}+"
            for i, low in enumerate(lows)}


def by_length(examples: pl.DataFrame) -> pl.DataFrame:
    """Recall@K and MRR@K per run and input-length bin."""
    bin_id = pl.sum_horizontal([pl.col(HISTORY) >= e for e in LENGTH_EDGES[1:]])
    return (
        ranking_metrics(examples.with_columns(bin_id.alias(LENGTH_BIN)), [RUN, LENGTH_BIN])
        .with_columns(pl.col(LENGTH_BIN).replace_strict(length_bins(), return_dtype=pl.String))
    )
