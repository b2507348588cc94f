"""Section 3 of the paper from the canonical event table: what micro-behaviors say about purchase.

Every number is about macro interactions (consecutive events of a session on one product).
Conversion: the session holds an event of the `order` activity group on the same product at
a later position: strictly after the activity in question (Figure 2), or at or after the macro
interaction's first event (Figure 4, so an order inside the interaction counts).
A macro interaction counts once for every distinct activity it contains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import polars as pl

from microrec import schema as S
from microrec.errors import ConfigError
from microrec.protocol import (
    BUCKET_EDGES,
    BUCKET_SCHEMES,
    bucketize,
    fit_quantile_edges,
    macro_interactions,
    macro_table,
)

# Activity groups (schema.PAPER_GROUPS) the analyses read.
CLICK, MODULE, ORDER = "click_source", "browsing_module", "order"
# Columns of the result tables (and of the CSV files); CLICK and MODULE name columns too.
GROUP = "group"
DWELL_BUCKET = "dwell_bucket"
INTERACTIONS = "interactions"  # macro interactions in the row
CONVERTED = "converted"
RATE = "conversion_rate"
WITH = "with_column_value"  # macro interactions in the row that also have the column's value
SHARE = "share"
AT = "at"  # position of the event an outcome is measured from
LAST_ORDER = "last_order"
ANY_MODULE = "any module"
NO_MODULE = "no module"
UNKNOWN = "unknown"

FIGURES = {
    "fig2_conversion_by_activity": "conversion rate per activity",
    "fig3_click_source_vs_module": "browsing modules viewed per click source",
    "fig4_conversion_by_dwell": "conversion rate per dwell bucket",
    "fig5_dwell_by_click_source": "dwell buckets per click source",
    "fig6_dwell_by_module": "dwell buckets per browsing module",
}


def bucket_labels(edges: tuple[float, ...]) -> dict[int, str]:
    """Readable name of every dwell bucket id: whole seconds, lower edge inclusive."""
    lows = [0, *(math.ceil(e) for e in edges)]
    labels = {S.UNK: UNKNOWN}
    for i, low in enumerate(lows):
        top = f"-{lows[i + 1] - 1} s" if i + 1 < len(lows) else "+ s"
        labels[S.NUM_SPECIAL + i] = f"{low}{top}"
    return labels


@dataclass
class Section3:
    """The result tables by figure name, what was skipped and why, and the bucket edges used."""

    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    edges: tuple[float, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)


def section3(events: pl.DataFrame, groups: dict[str, tuple[str, ...]],
             buckets: str = "paper") -> Section3:
    """Every analysis of the paper's Section 3 that the data supports.

    Args:
        events: a validated canonical event table (all sessions, before any protocol filter).
        groups: activity group -> activity names (the source's `activity_groups`).
        buckets: dwell bucket scheme; `quantile` is fitted on all macro interactions here.
    """
    if buckets not in BUCKET_SCHEMES:
        raise ConfigError(f"unknown dwell buckets '{buckets}': choose one of "
                          f"{', '.join(BUCKET_SCHEMES)}.")
    events = macro_interactions(events)
    present = set(events[S.ACTIVITY].drop_nulls().unique().to_list())
    have = {g: [a for a in acts if a in present] for g, acts in groups.items()}
    have = {g: acts for g, acts in have.items() if acts}

    last_order = (
        events.filter(pl.col(S.ACTIVITY).is_in(have.get(ORDER, [])))
        .group_by(S.SESSION, S.ITEM).agg(pl.col(S.POS).max().alias(LAST_ORDER))
    )
    acts = (
        events.filter(pl.col(S.ACTIVITY).is_not_null())
        .group_by(S.SESSION, S.MACRO, S.ITEM, S.ACTIVITY).agg(pl.col(S.POS).min().alias(AT))
        .join(last_order, on=[S.SESSION, S.ITEM], how="left")
        .with_columns((pl.col(LAST_ORDER) > pl.col(AT)).fill_null(False).alias(CONVERTED))
    )
    macros = (
        macro_table(events)
        .join(events.group_by(S.SESSION, S.MACRO).agg(pl.col(S.POS).min().alias(AT)),
              on=[S.SESSION, S.MACRO])
        .join(last_order, on=[S.SESSION, S.ITEM], how="left")
        .with_columns((pl.col(LAST_ORDER) >= pl.col(AT)).fill_null(False).alias(CONVERTED))
    )
    edges = fit_quantile_edges(macros[S.DWELL]) if buckets == "quantile" \
        else BUCKET_EDGES[buckets]
    labels = bucket_labels(edges)
    macros = macros.with_columns(bucketize(pl.col(S.DWELL), edges).alias(S.BUCKET))
    has_dwell = macros[S.DWELL].null_count() < macros.height

    out = Section3(edges=tuple(edges), counts={
        "events": events.height, "sessions": events[S.SESSION].n_unique(),
        "macro_interactions": macros.height})

    def need(name: str, *wanted: str, needs_dwell: bool = False) -> bool:
        missing = [g for g in wanted if g not in have]
        if missing:
            out.skipped[name] = (f"the data set has no activity of group(s) {', '.join(missing)}"
                                 " (see its activity_groups)")
        elif needs_dwell and not has_dwell:
            out.skipped[name] = "the data set has neither dwell times nor timestamps"
        return name not in out.skipped

    def rows(group: str) -> pl.DataFrame:
        """(session, macro, group): macro interactions with each activity of `group`."""
        return (acts.filter(pl.col(S.ACTIVITY).is_in(have[group]))
                .select(S.SESSION, S.MACRO, pl.col(S.ACTIVITY).alias(group)))

    dwell = macros.select(S.SESSION, S.MACRO, pl.col(S.BUCKET).replace_strict(
        labels, return_dtype=pl.String).alias(DWELL_BUCKET))

    bucket_order = [labels[b] for b in sorted(macros[S.BUCKET].unique(),
                                              key=lambda b: (b == S.UNK, b))]
    if need("fig2_conversion_by_activity", ORDER):
        out.tables["fig2_conversion_by_activity"] = conversion_by_activity(acts, have)
    if need("fig3_click_source_vs_module", CLICK, MODULE):
        modules = rows(MODULE)
        any_module = modules.unique([S.SESSION, S.MACRO]).with_columns(
            pl.lit(ANY_MODULE).alias(MODULE))
        out.tables["fig3_click_source_vs_module"] = crosstab(
            rows(CLICK), pl.concat([modules, any_module]),
            have[CLICK], [*have[MODULE], ANY_MODULE])
    if need("fig4_conversion_by_dwell", ORDER, needs_dwell=True):
        out.tables["fig4_conversion_by_dwell"] = (
            macros.group_by(S.BUCKET).agg(pl.len().alias(INTERACTIONS),
                                          pl.col(CONVERTED).sum())
            .sort(pl.col(S.BUCKET) == S.UNK, S.BUCKET)  # unknown last
            .select(pl.col(S.BUCKET).replace_strict(labels, return_dtype=pl.String)
                    .alias(DWELL_BUCKET), INTERACTIONS, CONVERTED,
                    (pl.col(CONVERTED) / pl.col(INTERACTIONS)).alias(RATE))
        )
    if need("fig5_dwell_by_click_source", CLICK, needs_dwell=True):
        out.tables["fig5_dwell_by_click_source"] = crosstab(
            rows(CLICK), dwell, have[CLICK], bucket_order)
    if need("fig6_dwell_by_module", MODULE, needs_dwell=True):
        modules = rows(MODULE)
        none = (macros.select(S.SESSION, S.MACRO).join(modules, on=[S.SESSION, S.MACRO],
                                                       how="anti")
                .with_columns(pl.lit(NO_MODULE).alias(MODULE)))
        out.tables["fig6_dwell_by_module"] = crosstab(
            pl.concat([modules, none]), dwell, [*have[MODULE], NO_MODULE],
            bucket_order)
    return out


def conversion_by_activity(acts: pl.DataFrame, groups: dict[str, list[str]]) -> pl.DataFrame:
    """Per activity (the order group excluded): macro interactions with it, and the share of
    them whose product is ordered later in the session (strictly after the activity).

    acts: one row per (macro interaction, activity) with its `converted` flag.
    Rows follow the groups' order; activities in no group come last as group `other`.
    """
    order = [(g, a) for g, names in groups.items() if g != ORDER for a in names]
    ranks = pl.DataFrame({S.ACTIVITY: [a for _, a in order], GROUP: [g for g, _ in order],
                          "rank": list(range(len(order)))})
    return (
        acts.filter(~pl.col(S.ACTIVITY).is_in(groups.get(ORDER, [])))
        .group_by(S.ACTIVITY).agg(pl.len().alias(INTERACTIONS), pl.col(CONVERTED).sum())
        .join(ranks.unique(S.ACTIVITY, keep="first"), on=S.ACTIVITY, how="left")
        .with_columns(pl.col(GROUP).fill_null("other"))
        .sort(pl.col("rank"), S.ACTIVITY, nulls_last=True)
        .select(S.ACTIVITY, GROUP, INTERACTIONS, CONVERTED,
                (pl.col(CONVERTED) / pl.col(INTERACTIONS)).alias(RATE))
    )


def crosstab(rows: pl.DataFrame, cols: pl.DataFrame, row_order: list[str],
             col_order: list[str]) -> pl.DataFrame:
    """For every row value, the share of its macro interactions that have each column value.

    rows, cols: (session, macro, value) with one line per macro interaction and value; the
    third column's name names the dimension. Returns the full grid in the given order with
    columns (row, column, interactions, with_column_value, share).
    """
    keys = [S.SESSION, S.MACRO]
    row, col = rows.columns[2], cols.columns[2]
    totals = rows.unique().group_by(row).agg(pl.len().alias(INTERACTIONS))
    pairs = rows.unique().join(cols.unique(), on=keys).group_by(row, col).agg(
        pl.len().alias(WITH))
    grid = (pl.DataFrame({row: row_order}).with_row_index("r")
            .join(pl.DataFrame({col: col_order}).with_row_index("c"), how="cross"))
    return (
        grid.join(totals, on=row, how="left").join(pairs, on=[row, col], how="left")
        .with_columns(pl.col(INTERACTIONS, WITH).fill_null(0))
        .sort("r", "c")
        .select(row, col, INTERACTIONS, WITH,
                (pl.col(WITH) / pl.col(INTERACTIONS)).fill_nan(None).alias(SHARE))
    )
