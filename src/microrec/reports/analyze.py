"""Section 3 of the paper from the canonical event table: what micro-behaviors say about purchase.

Every number is about macro interactions (consecutive events of a session on one product).
Conversion: the session holds an event of the `order` activity group on the same product at
a later position: strictly after the activity in question (Figure 2), or at or after the macro
interaction's first event (Figure 4, so an order inside the interaction counts).
A macro interaction counts once for every distinct activity it contains.

Each figure is a table function and a drawing function, listed together in FIGURES: a new
figure is two new functions and one entry there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from hydra.core.hydra_config import HydraConfig
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from microrec.config import build
from microrec.data import schema as S
from microrec.data.protocol import (
    BUCKET_EDGES,
    BUCKET_SCHEMES,
    bucketize,
    fit_quantile_edges,
    macro_interactions,
    macro_table,
)
from microrec.errors import ConfigError
from microrec.reports.plots import bars, heatmap, log_to_wandb, save_csv, save_json, save_png
from microrec.runs.tracking import uses_wandb

log = logging.getLogger("microrec.analyze")

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


@dataclass
class Interactions:
    """What every figure reads: a data set's macro interactions with their outcomes.

    acts: one row per (macro interaction, activity): session, macro, item, activity, `at`
        (its first position), converted (the product is ordered strictly after it).
    macros: one row per macro interaction with its dwell, bucket id and `converted` (the
        product is ordered at or after the interaction's first event).
    have: activity group -> the group's activities present in the data (present groups only).
    labels: dwell bucket id -> readable name; bucket_order: the names present, unknown last.
    dwell: (session, macro, dwell_bucket name) of every macro interaction.
    edges: the dwell bucket edges used (fitted here for the `quantile` scheme).
    """

    acts: pl.DataFrame
    macros: pl.DataFrame
    have: dict[str, list[str]]
    labels: dict[int, str]
    bucket_order: list[str]
    dwell: pl.DataFrame
    edges: tuple[float, ...]

    @property
    def has_dwell(self) -> bool:
        return self.macros[S.DWELL].null_count() < self.macros.height

    def rows(self, group: str) -> pl.DataFrame:
        """(session, macro, group): macro interactions with each activity of `group`."""
        return (self.acts.filter(pl.col(S.ACTIVITY).is_in(self.have[group]))
                .select(S.SESSION, S.MACRO, pl.col(S.ACTIVITY).alias(group)))


def interactions(events: pl.DataFrame, groups: dict[str, tuple[str, ...]],
                 buckets: str) -> Interactions:
    """Macro interactions of `events` (with the macro index) and their conversion outcomes."""
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
    labels = S.bucket_labels(edges)
    macros = macros.with_columns(bucketize(pl.col(S.DWELL), edges).alias(S.BUCKET))
    dwell = macros.select(S.SESSION, S.MACRO, pl.col(S.BUCKET).replace_strict(
        labels, return_dtype=pl.String).alias(DWELL_BUCKET))
    bucket_order = [labels[b] for b in sorted(macros[S.BUCKET].unique(),
                                              key=lambda b: (b == S.UNK, b))]
    return Interactions(acts, macros, have, labels, bucket_order, dwell, tuple(edges))


# One table function and one drawing function per figure; FIGURES (below) lists them.

def rate_notes(table: pl.DataFrame, sep: str = " ") -> list[str]:
    """ "12.3% (45/366)": each conversion rate with its counts."""
    return [f"{r:.1%}{sep}({c:,}/{n:,})" for r, c, n in
            table.select(RATE, CONVERTED, INTERACTIONS).iter_rows()]


def grid(table: pl.DataFrame, row: str, col: str, row_title: str, col_title: str,
         title: str) -> Figure:
    """Heatmap of a crosstab table: each row's share of macro interactions per column."""
    rows = table.select(row, INTERACTIONS).unique(maintain_order=True)
    cols = table[col].unique(maintain_order=True).to_list()
    values = table[SHARE].to_numpy().reshape(rows.height, len(cols))
    labels = [f"{name} (n={n:,})" for name, n in rows.iter_rows()]
    return heatmap(values, labels, cols, title, col_title, row_title,
                   colorbar="share of the row's macro interactions")


def conversion_by_activity(x: Interactions) -> pl.DataFrame:
    """Figure 2. Per activity (the order group excluded): macro interactions with it, and the
    share of them whose product is ordered later in the session (strictly after the activity).

    Rows follow the groups' order; activities in no group come last as group `other`.
    """
    order = [(g, a) for g, names in x.have.items() if g != ORDER for a in names]
    ranks = pl.DataFrame({S.ACTIVITY: [a for _, a in order], GROUP: [g for g, _ in order],
                          "rank": list(range(len(order)))},
                         schema={S.ACTIVITY: pl.String, GROUP: pl.String, "rank": pl.Int64})
    return (
        x.acts.filter(~pl.col(S.ACTIVITY).is_in(x.have.get(ORDER, [])))
        .group_by(S.ACTIVITY).agg(pl.len().alias(INTERACTIONS), pl.col(CONVERTED).sum())
        .join(ranks.unique(S.ACTIVITY, keep="first"), on=S.ACTIVITY, how="left")
        .with_columns(pl.col(GROUP).fill_null("other"))
        .sort(pl.col("rank"), S.ACTIVITY, nulls_last=True)
        .select(S.ACTIVITY, GROUP, INTERACTIONS, CONVERTED,
                (pl.col(CONVERTED) / pl.col(INTERACTIONS)).alias(RATE))
    )


def draw_conversion_by_activity(table: pl.DataFrame, data: str) -> Figure:
    return bars(table[S.ACTIVITY].to_list(), table[RATE].to_list(), rate_notes(table),
                f"Figure 2. Conversion rate per activity ({data})",
                "conversion rate: share whose product is ordered later in the session",
                "activity", groups=table[GROUP].to_list())


def click_source_vs_module(x: Interactions) -> pl.DataFrame:
    """Figure 3. Per click source, the share of its macro interactions that view each browsing
    module (and any module)."""
    modules = x.rows(MODULE)
    any_module = modules.unique([S.SESSION, S.MACRO]).with_columns(
        pl.lit(ANY_MODULE).alias(MODULE))
    return crosstab(x.rows(CLICK), pl.concat([modules, any_module]), x.have[CLICK],
                    [*x.have[MODULE], ANY_MODULE])


def draw_click_source_vs_module(table: pl.DataFrame, data: str) -> Figure:
    return grid(table, CLICK, MODULE, "click source", "browsing module viewed",
                f"Figure 3. Browsing modules viewed after each click source ({data})")


def conversion_by_dwell(x: Interactions) -> pl.DataFrame:
    """Figure 4. Per dwell bucket (unknown last), macro interactions and the share whose
    product is ordered in or after the interaction."""
    return (
        x.macros.group_by(S.BUCKET).agg(pl.len().alias(INTERACTIONS), pl.col(CONVERTED).sum())
        .sort(pl.col(S.BUCKET) == S.UNK, S.BUCKET)  # unknown last
        .select(pl.col(S.BUCKET).replace_strict(x.labels, return_dtype=pl.String)
                .alias(DWELL_BUCKET), INTERACTIONS, CONVERTED,
                (pl.col(CONVERTED) / pl.col(INTERACTIONS)).alias(RATE))
    )


def draw_conversion_by_dwell(table: pl.DataFrame, data: str) -> Figure:
    return bars(table[DWELL_BUCKET].to_list(), table[RATE].to_list(),
                rate_notes(table, sep="\n"),
                f"Figure 4. Conversion rate per dwell bucket ({data})",
                "conversion rate: product ordered in or after the interaction",
                "dwell time on the product", vertical=True)


def dwell_by_click_source(x: Interactions) -> pl.DataFrame:
    """Figure 5. Per click source, the share of its macro interactions in each dwell bucket."""
    return crosstab(x.rows(CLICK), x.dwell, x.have[CLICK], x.bucket_order)


def draw_dwell_by_click_source(table: pl.DataFrame, data: str) -> Figure:
    return grid(table, CLICK, DWELL_BUCKET, "click source", "dwell time on the product",
                f"Figure 5. Dwell time per click source ({data})")


def dwell_by_module(x: Interactions) -> pl.DataFrame:
    """Figure 6. Per browsing module (and none), the share of its macro interactions in each
    dwell bucket."""
    modules = x.rows(MODULE)
    none = (x.macros.select(S.SESSION, S.MACRO)
            .join(modules, on=[S.SESSION, S.MACRO], how="anti")
            .with_columns(pl.lit(NO_MODULE).alias(MODULE)))
    return crosstab(pl.concat([modules, none]), x.dwell, [*x.have[MODULE], NO_MODULE],
                    x.bucket_order)


def draw_dwell_by_module(table: pl.DataFrame, data: str) -> Figure:
    return grid(table, MODULE, DWELL_BUCKET, "browsing module viewed",
                "dwell time on the product",
                f"Figure 6. Dwell time per browsing module ({data})")


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
    cells = (pl.DataFrame({row: row_order}).with_row_index("r")
            .join(pl.DataFrame({col: col_order}).with_row_index("c"), how="cross"))
    return (
        cells.join(totals, on=row, how="left").join(pairs, on=[row, col], how="left")
        .with_columns(pl.col(INTERACTIONS, WITH).fill_null(0))
        .sort("r", "c")
        .select(row, col, INTERACTIONS, WITH,
                (pl.col(WITH) / pl.col(INTERACTIONS)).fill_nan(None).alias(SHARE))
    )


@dataclass(frozen=True)
class Section3Figure:
    """One figure: what it shows, what data it needs, how its table is computed and drawn."""

    about: str
    groups: tuple[str, ...]  # activity groups the data must have
    needs_dwell: bool
    table: Callable[[Interactions], pl.DataFrame]
    draw: Callable[[pl.DataFrame, str], Figure]  # (its table, data set name)

    def missing(self, x: Interactions) -> str | None:
        """Why the data cannot give this figure, or None when it can."""
        lacking = [g for g in self.groups if g not in x.have]
        if lacking:
            return (f"the data set has no activity of group(s) {', '.join(lacking)} "
                    "(see its activity_groups)")
        if self.needs_dwell and not x.has_dwell:
            return "the data set has neither dwell times nor timestamps"
        return None


FIGURES = {
    "fig2_conversion_by_activity": Section3Figure(
        "conversion rate per activity", (ORDER,), False,
        conversion_by_activity, draw_conversion_by_activity),
    "fig3_click_source_vs_module": Section3Figure(
        "browsing modules viewed per click source", (CLICK, MODULE), False,
        click_source_vs_module, draw_click_source_vs_module),
    "fig4_conversion_by_dwell": Section3Figure(
        "conversion rate per dwell bucket", (ORDER,), True,
        conversion_by_dwell, draw_conversion_by_dwell),
    "fig5_dwell_by_click_source": Section3Figure(
        "dwell buckets per click source", (CLICK,), True,
        dwell_by_click_source, draw_dwell_by_click_source),
    "fig6_dwell_by_module": Section3Figure(
        "dwell buckets per browsing module", (MODULE,), True,
        dwell_by_module, draw_dwell_by_module),
}


@dataclass
class Section3:
    """The result tables by figure name, what was skipped and why, and the bucket edges used."""

    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    edges: tuple[float, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)


def section3(events: pl.DataFrame, groups: dict[str, tuple[str, ...]],
             buckets: str = "paper") -> Section3:
    """Every figure of the paper's Section 3 that the data supports.

    Args:
        events: a validated canonical event table (all sessions, before any protocol filter).
        groups: activity group -> activity names (the source's `activity_groups`).
        buckets: dwell bucket scheme; `quantile` is fitted on all macro interactions here.
    """
    if buckets not in BUCKET_SCHEMES:
        raise ConfigError(f"unknown dwell buckets '{buckets}': choose one of "
                          f"{', '.join(BUCKET_SCHEMES)}.")
    events = macro_interactions(events)
    x = interactions(events, groups, buckets)
    out = Section3(edges=x.edges, counts={
        "events": events.height, "sessions": events[S.SESSION].n_unique(),
        "macro_interactions": x.macros.height})
    for name, figure in FIGURES.items():
        reason = figure.missing(x)
        if reason:
            out.skipped[name] = reason
        else:
            out.tables[name] = figure.table(x)
    return out


def analyze(cfg: DictConfig) -> Section3:
    """Load the configured data set's events, compute every figure the data supports and write
    a PNG and its CSV each, and summary.json, to cfg.run_dir (and to W&B with that logger)."""
    run_dir = Path(cfg.run_dir)
    dm = build(cfg.data)  # the data set exactly as training builds it; no tensors made
    source, buckets = dm.source, dm.protocol["buckets"]
    groups = getattr(source, "activity_groups", S.PAPER_GROUPS)
    events = S.validate_events(source.load(), source.name)
    result = section3(events, groups, buckets)
    log.info("%s: %s", source.name, result.counts)
    for name, reason in result.skipped.items():
        log.warning("skipped %s (%s): %s", name, FIGURES[name].about, reason)

    images = {}
    for name, table in result.tables.items():
        save_csv(table, run_dir / f"{name}.csv")
        images[name] = save_png(FIGURES[name].draw(table, source.name), run_dir / f"{name}.png")
        log.info("%s -> %s", FIGURES[name].about, images[name])
    save_json({"data": source.name, "buckets": buckets,
               "bucket_edges": list(result.edges), "activity_groups": groups,
               **result.counts, "figures": sorted(images), "skipped": result.skipped},
              run_dir / "summary.json")

    if uses_wandb(cfg.get("logger")):
        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
        log_to_wandb(images, project=cfg.logger.project, dir=str(run_dir),
                     name=f"analysis-{source.name}", job_type="analysis",
                     tags=[f"data={choices.get('data', source.name)}"],
                     config=OmegaConf.to_container(cfg.data, resolve=True))
    return result
