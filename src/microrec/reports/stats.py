"""What a data set holds: the paper's Table 2 per split, and its activity and dwell mix.

Counts come from the protocol's own functions (macro interactions, session filter, split,
bucket edges), so the per-split numbers are those a training run with the same data
settings sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from microrec.config import build
from microrec.data import schema as S
from microrec.data.protocol import (
    SPLITS,
    bucketize,
    check_settings,
    dwell_edges,
    macro_interactions,
    split_events,
)

TABLE2 = ("sessions", "products", "macro_interactions", "micro_behaviors", "targets")


@dataclass
class Summary:
    """Table 2 rows (all, train, val, test), the activity mix and the dwell-bucket mix.

    table: part, sessions, products, macro_interactions, micro_behaviors, targets. `all` is
        everything loaded; the splits hold the sessions kept by `min_macros`. `targets` is
        the number of next-product targets (evaluation examples with eval_targets=all;
        eval_targets=last gives one per session).
    activities: activity, group, micro_behaviors, share (of all loaded micro-behaviors).
    dwell: bucket, range, macro_interactions, share (of kept macro interactions).
    dropped_sessions: sessions with fewer than min_macros macro interactions.
    """

    table: pl.DataFrame
    activities: pl.DataFrame
    dwell: pl.DataFrame
    dropped_sessions: int


def counts(events: pl.DataFrame) -> dict[str, int]:
    """Table 2 numbers of events that carry the macro-interaction index."""
    row = events.select(
        pl.col(S.SESSION).n_unique().alias("sessions"),
        pl.col(S.ITEM).n_unique().alias("products"),
        pl.struct(S.SESSION, S.MACRO).n_unique().alias("macro_interactions"),
        pl.len().alias("micro_behaviors"),
    ).row(0, named=True)
    row["targets"] = row["macro_interactions"] - row["sessions"]
    return row


def summarize(
    events: pl.DataFrame,
    buckets: str = "paper",
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    min_macros: int = 2,
    seed: int = 0,
    activity_groups: dict[str, tuple[str, ...]] | None = None,
    source: str = "data",
) -> Summary:
    """Describe a validated canonical event table under the given protocol settings."""
    check_settings(buckets, split, "last", min_macros)
    rows = [{"part": "all", **counts(macro_interactions(events))}]
    kept, macros, stats = split_events(events, split, min_macros, seed, source)
    for code, name in enumerate(SPLITS):
        rows.append({"part": name, **counts(kept.filter(pl.col("split") == code))})
    table = pl.DataFrame(rows, schema={"part": pl.String, **dict.fromkeys(TABLE2, pl.Int64)})

    group_of = {a: g for g, names in (activity_groups or {}).items() for a in names}
    activities = (
        events.filter(pl.col(S.ACTIVITY).is_not_null())
        .group_by(S.ACTIVITY).agg(pl.len().alias("micro_behaviors"))
        .with_columns(
            pl.col(S.ACTIVITY).replace_strict(group_of, default=None, return_dtype=pl.String)
            .alias("group"),
            (pl.col("micro_behaviors") / events.height).alias("share"),
        )
        .sort(["micro_behaviors", S.ACTIVITY], descending=[True, False])
        .select(S.ACTIVITY, "group", "micro_behaviors", "share")
    )

    edges = dwell_edges(buckets, macros.filter(pl.col("split") == 0))
    names = S.bucket_labels(edges)
    ids = list(range(S.NUM_SPECIAL, S.NUM_SPECIAL + len(edges) + 1))
    labels = pl.DataFrame({
        "bucket": [str(i - S.NUM_SPECIAL + 1) for i in ids] + ["unknown"],
        "range": [names[i] for i in ids] + ["no dwell"],
        "id": [*ids, S.UNK],
    }, schema_overrides={"id": pl.Int32})
    per_bucket = macros.group_by(bucketize(pl.col(S.DWELL), edges).alias("id")).agg(
        pl.len().alias("macro_interactions"))
    dwell = (
        labels.join(per_bucket, on="id", how="left")
        .with_columns(pl.col("macro_interactions").fill_null(0).cast(pl.Int64))
        .with_columns((pl.col("macro_interactions") / macros.height).alias("share"))
        .drop("id")
    )
    dropped = stats[f"sessions_dropped_fewer_than_{min_macros}_macros"]
    return Summary(table=table, activities=activities, dwell=dwell, dropped_sessions=dropped)


def table(title: str, frame, caption: str | None = None) -> Table:
    """A rich table of a Polars frame: counts with thousands separators, shares in percent."""
    out = Table(title=title, caption=caption, title_justify="left")
    for name, dtype in frame.schema.items():
        out.add_column(name.replace("_", " "), justify="right" if dtype.is_numeric() else "left")
    for row in frame.iter_rows():
        out.add_row(*(f"{v:.1%}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int)
                      else "" if v is None else str(v) for v in row))
    return out


def print_summary(cfg: DictConfig) -> Summary:
    """Load the configured data set, summarise it and print the tables."""
    source = build(cfg.data.source)
    events = S.validate_events(source.load(), source.name)
    summary = summarize(events, buckets=cfg.data.buckets, split=tuple(cfg.data.split),
                        min_macros=cfg.data.min_macros, seed=cfg.data.seed,
                        activity_groups=getattr(source, "activity_groups", None),
                        source=source.name)
    dropped = (f"{summary.dropped_sessions:,} session(s) with fewer than "
               f"{cfg.data.min_macros} macro interactions dropped before the split; "
               if summary.dropped_sessions else "")
    console = Console()
    console.print(table(
        f"{source.name}: Table 2", summary.table,
        f"{dropped}targets = evaluation examples with eval_targets=all (last: one per "
        "session)"))
    if summary.activities.height:
        console.print(table(f"{source.name}: activities (micro-behaviors)", summary.activities))
    else:
        console.print(f"{source.name}: no activities in the data")
    console.print(table(f"{source.name}: dwell buckets ({cfg.data.buckets})", summary.dwell,
                        "macro interactions of the kept sessions"))
    return summary
