"""From canonical events to examples, exactly as DESIGN.md fixes it.

events -> macro interactions -> dwell -> session filter -> split -> vocabularies (training
split only) -> dwell buckets -> flat per-split token arrays and (first, end, target) example
offsets. Whole-frame Polars throughout; the only loops run over the three splits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from microrec.data import schema as S
from microrec.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 2  # 2: tokens carry the category id
SPLITS = ("train", "val", "test")
N_BUCKETS = 5
# Lower edges of buckets 2..5 on whole seconds (bucket 1 starts at 0).
BUCKET_EDGES = {
    "paper": (10.0, 25.0, 61.0, 121.0),  # 0-9, 10-24, 25-60, 61-120, >120 s (RIB paper)
    "hup": (15.0, 40.0, 100.0, 600.0),  # 0-15, 15-40, 40-100, 100-600, 600+ s (HUP)
}
BUCKET_SCHEMES = (*BUCKET_EDGES, "quantile")
EVAL_TARGETS = ("last", "all")


@dataclass
class SplitArrays:
    """One split: flat tokens of all its sessions and one row per example.

    tokens: (E, 4) int32 item, activity, bucket and category ids (columns TOKEN_COLUMNS),
        sessions one after another.
    first:  (N,) int64 row of the example's session's first token.
    end:    (N,) int64 row after the example's last input token.
    target: (N,) int64 id of the next product (UNK when not in the training vocabulary).
    session: (N,) int64 the example's session id as in the source.
    position: (N,) int64 the target's macro interaction index in its session (from 0), so
        (session, position) names an example independently of how the data was split.
    session_end: (S,) int64 row after each session's last token (for word2vec corpora).
    session_time: (S,) float64 start time in seconds of each session's last macro
        interaction, NaN where the source has no timestamp (for session-kNN recency).
    """

    tokens: np.ndarray
    first: np.ndarray
    end: np.ndarray
    target: np.ndarray
    session: np.ndarray
    position: np.ndarray
    session_end: np.ndarray
    session_time: np.ndarray


@dataclass
class Prepared:
    """Everything the data module serves, cached as one file."""

    splits: dict[str, SplitArrays]
    items: list  # item id i + NUM_SPECIAL -> product id as in the source
    activities: list[str]  # activity id i + NUM_SPECIAL -> name
    bucket_edges: tuple[float, ...]
    has_activity: bool
    has_dwell: bool
    stats: dict = field(default_factory=dict)
    categories: list[str] = field(default_factory=list)  # category id i + NUM_SPECIAL -> name

    @property
    def n_items(self) -> int:
        return len(self.items) + S.NUM_SPECIAL

    @property
    def n_activities(self) -> int:
        return len(self.activities) + S.NUM_SPECIAL

    @property
    def n_categories(self) -> int:
        return len(self.categories) + S.NUM_SPECIAL

    @property
    def has_category(self) -> bool:
        return bool(self.categories)


# The columns of SplitArrays.tokens: the batch keys (and word2vec channels) they feed.
TOKEN_COLUMNS = ("item", "activity", "dwell", "category")
GMACRO = "gmacro"  # global index of the macro interaction over the whole sorted table


def macro_interactions(events: pl.DataFrame) -> pl.DataFrame:
    """Sort by (session, pos) and number the macro interactions.

    A macro interaction is a run of consecutive events of one session on the same item.
    Adds MACRO (index inside the session, from 0) and GMACRO (index over the whole table).
    Linear scans on the sorted table: no grouping, so it stays cheap at 40M events.
    """
    ordered = events.select(
        ((pl.col(S.SESSION).diff() > 0) | ((pl.col(S.SESSION).diff() == 0)
                                           & (pl.col(S.POS).diff() > 0))).all()
    ).item(0, 0) if events.height > 1 else True
    if not ordered:
        events = events.sort(S.SESSION, S.POS)
    new_session = (pl.col(S.SESSION) != pl.col(S.SESSION).shift(1)).fill_null(True)
    new_macro = new_session | (pl.col(S.ITEM) != pl.col(S.ITEM).shift(1)).fill_null(True)
    gmacro = new_macro.cum_sum().cast(pl.Int64) - 1
    first_of_session = pl.when(new_session).then(gmacro).forward_fill()
    return events.with_columns(gmacro.alias(GMACRO)).with_columns(
        (pl.col(GMACRO) - first_of_session).cast(pl.Int32).alias(S.MACRO)
    )


def macro_table(events: pl.DataFrame) -> pl.DataFrame:
    """One row per macro interaction (in GMACRO order) with its item, category, dwell and
    start time (the category of its first event).

    Given dwell wins; where it is missing the dwell is the time to the next macro
    interaction's first event, and the last macro interaction of a session stays null
    (the `unknown` bucket), never a guess.
    """
    first_events = events.filter(pl.col(GMACRO).diff().fill_null(1) != 0)
    macros = first_events.select(S.SESSION, S.MACRO, S.ITEM, S.DWELL, S.TS, S.CATEGORY)
    same_session = pl.col(S.SESSION).shift(-1) == pl.col(S.SESSION)
    derived = pl.when(same_session).then(pl.col(S.TS).shift(-1) - pl.col(S.TS))
    macros = macros.with_columns(pl.coalesce(S.DWELL, derived.cast(pl.Float64)).alias(S.DWELL))
    bad = macros.filter(pl.col(S.DWELL) < 0)
    if bad.height:
        raise DataError(
            f"timestamps go backwards inside session {bad[S.SESSION][0]}: events must be in "
            "time order within a session."
        )
    return macros


def bucketize(dwell: pl.Expr, edges: tuple[float, ...]) -> pl.Expr:
    """Bucket id (NUM_SPECIAL..NUM_SPECIAL+4) of whole seconds of dwell; null -> UNK."""
    seconds = dwell.floor()
    bucket = pl.sum_horizontal([(seconds >= e).cast(pl.Int32) for e in edges]) + S.NUM_SPECIAL
    return pl.when(dwell.is_null()).then(pl.lit(S.UNK)).otherwise(bucket).cast(pl.Int32)


def fit_quantile_edges(train_dwell: pl.Series) -> tuple[float, ...]:
    """Four edges that cut the training split's dwell into five equal-frequency buckets."""
    values = train_dwell.drop_nulls().floor()
    if values.is_empty():
        return BUCKET_EDGES["paper"]
    qs = [values.quantile(q, interpolation="lower") for q in (0.2, 0.4, 0.6, 0.8)]
    return tuple(float(q) + 1e-9 if i and q == qs[i - 1] else float(q) for i, q in enumerate(qs))


def split_sessions(
    macros: pl.DataFrame, fractions: tuple[float, float, float], seed: int
) -> pl.DataFrame:
    """Assign each session to train / val / test.

    Chronological by session start where every event has a timestamp, seeded random
    otherwise. Returns columns (session, split) with split in 0, 1, 2.
    """
    sessions = macros.group_by(S.SESSION).agg(pl.col(S.TS).min().alias("start"),
                                               pl.col(S.TS).null_count().alias("no_ts"))
    if sessions["no_ts"].sum() == 0:
        sessions = sessions.sort("start", S.SESSION)
    else:
        sessions = sessions.sort(S.SESSION).sample(fraction=1.0, shuffle=True, seed=seed)
    n = sessions.height
    cut_train = int(round(fractions[0] * n))
    cut_val = int(round((fractions[0] + fractions[1]) * n))
    order = pl.int_range(0, n, eager=True)
    split = (order >= cut_train).cast(pl.Int8) + (order >= cut_val).cast(pl.Int8)
    return sessions.select(S.SESSION).with_columns(split.alias("split"))


def check_settings(
    buckets: str, split: tuple[float, float, float], eval_targets: str, min_macros: int
) -> None:
    """Refuse protocol settings that cannot work, with one sentence each."""
    if buckets not in BUCKET_SCHEMES:
        raise ConfigError(f"unknown dwell buckets '{buckets}': choose one of "
                          f"{', '.join(BUCKET_SCHEMES)}.")
    if eval_targets not in EVAL_TARGETS:
        raise ConfigError(f"unknown eval_targets '{eval_targets}': choose 'last' or 'all'.")
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1) > 1e-6 or split[0] == 0:
        raise ConfigError(f"split must be three non-negative fractions summing to 1 with a "
                          f"non-empty training part, got {list(split)}.")
    if min_macros < 2:
        raise ConfigError("min_macros must be at least 2: a session needs an input and a target.")


def split_events(
    events: pl.DataFrame,
    split: tuple[float, float, float],
    min_macros: int,
    seed: int,
    source: str,
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Macro interactions, the session filter and the split, as every consumer must see them.

    Returns the events (sorted, with `macro`, `gmacro` and `split`), the macro table (in
    `gmacro` order, with `split`), and counts of what was loaded and dropped. Sessions with
    fewer than `min_macros` macro interactions are dropped and counted in the log. Event
    columns come from the macro table by gathering on `gmacro`, never by an event-level join.
    """
    events = macro_interactions(events)
    macros = macro_table(events)
    stats = {"sessions": int(macros[S.SESSION].n_unique()), "events": events.height}

    n_macros = macros.group_by(S.SESSION).agg(pl.len().alias("n_macros"))
    short = n_macros.filter(pl.col("n_macros") < min_macros).select(S.SESSION)
    stats[f"sessions_dropped_fewer_than_{min_macros}_macros"] = short.height
    if short.height:
        log.info("%s: dropped %d of %d sessions with fewer than %d macro interactions",
                 source, short.height, n_macros.height, min_macros)
        events = macro_interactions(events.join(short, on=S.SESSION, how="anti",
                                                maintain_order="left"))
        macros = macro_table(events)
    if macros.height == 0:
        raise DataError(f"{source}: no session has {min_macros} or more macro interactions, "
                        "so there is nothing to learn or evaluate.")

    assignment = split_sessions(macros, split, seed)
    macros = macros.join(assignment, on=S.SESSION, maintain_order="left")
    event_split = macros["split"].to_numpy()[events[GMACRO].to_numpy()]
    return events.with_columns(pl.Series("split", event_split)), macros, stats


def dwell_edges(buckets: str, train_macros: pl.DataFrame) -> tuple[float, ...]:
    """The lower edges of dwell buckets 2..5 for a scheme (quantile: fitted on training)."""
    if buckets == "quantile":
        return fit_quantile_edges(train_macros[S.DWELL])
    return BUCKET_EDGES[buckets]


def prepare(
    events: pl.DataFrame,
    buckets: str = "paper",
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    eval_targets: str = "last",
    min_macros: int = 2,
    seed: int = 0,
    source: str = "data",
) -> Prepared:
    """Run the protocol on a validated canonical event table, one stage after another.

    Event-level work is linear scans and gathers by macro index (no event-level joins), so
    paper scale (about 40M events) fits in a few GiB.
    """
    check_settings(buckets, split, eval_targets, min_macros)
    # Stage 1: macro interactions, dwell, session filter and split.
    names = events[S.ACTIVITY].drop_nulls().unique().sort().cast(pl.String).to_list()
    events, macros, stats = split_events(encode_activities(events, names), split, min_macros,
                                         seed, source)
    check_splits(macros, split, min_macros, stats, source)
    # Stage 2: vocabularies and dwell edges, from the training split alone.
    train_macros = macros.filter(pl.col("split") == 0)
    edges = dwell_edges(buckets, train_macros)
    item_vocab = vocabulary(train_macros, S.ITEM, "item_id")
    category_vocab = vocabulary(train_macros.drop_nulls(S.CATEGORY), S.CATEGORY, "category_id")
    event_split = events["split"].to_numpy()
    act = events["act"].fill_null(len(names)).to_numpy().astype(np.int64)  # null -> extra code
    act_order = activity_vocabulary(act[event_split == 0], names)
    # Stage 3: one (item, activity, bucket, category) token per event.
    macros = label_macros(macros, item_vocab, category_vocab, edges)
    gmacro = events[GMACRO].to_numpy()
    tokens = event_tokens(macros, gmacro, activity_ids(act, act_order, len(names)))  # (E, 4)
    macros = macros.with_columns(pl.Series("size", np.bincount(gmacro, minlength=macros.height)))
    del events, act, gmacro
    # Stage 4: examples of each split.
    splits = {}
    for code, name in enumerate(SPLITS):
        mask = event_split == code
        splits[name] = _examples(macros.filter(pl.col("split") == code), tokens[mask],
                                 train=(code == 0), eval_targets=eval_targets)
        stats.update(split_stats(name, splits[name], n_events=int(mask.sum())))
    for name in SPLITS[1:]:
        if stats[f"{name}/unknown_targets"]:
            log.info("%s: %d of %d %s targets are products unseen in training (count as misses)",
                     source, stats[f"{name}/unknown_targets"], stats[f"{name}/examples"], name)
    return Prepared(
        splits=splits,
        items=item_vocab[S.ITEM].to_list(),
        activities=[names[i] for i in act_order],
        bucket_edges=tuple(edges),
        has_activity=bool(act_order),
        has_dwell=bool((macros[S.BUCKET] != S.UNK).any()),
        stats=stats,
        categories=category_vocab[S.CATEGORY].to_list(),
    )


def encode_activities(events: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """The columns the protocol reads, activities as codes into `names` (column `act`).

    Codes right away: 40M activity strings are the largest column of a paper-size table.
    A name outside `names` (new data under a fitted vocabulary) gets a null code, as a
    missing activity does.
    """
    return events.select(
        S.SESSION, S.POS, S.ITEM, S.DWELL, S.TS, S.CATEGORY,
        pl.col(S.ACTIVITY).cast(pl.String).cast(pl.Enum(names), strict=False).to_physical()
        .alias("act"),
    )


SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


def check_splits(macros: pl.DataFrame, split: tuple[float, float, float], min_macros: int,
                 stats: dict, source: str) -> None:
    """Refuse a split that was given a share of the sessions but got none (too little data).

    Every kept session has at least one example in each mode, so a split has examples
    exactly when it has sessions. A zero fraction is a choice (e.g. fitting on all the
    data); the data module refuses it where a trainer needs that split.
    """
    first_macros = macros.filter(pl.col(S.MACRO) == 0)  # one row per session
    n = np.bincount(first_macros["split"].to_numpy(), minlength=len(SPLITS)).tolist()
    empty = [SPLIT_NAMES[name] for code, name in enumerate(SPLITS)
             if n[code] == 0 and split[code] > 0]
    if not empty:
        return
    dropped = stats[f"sessions_dropped_fewer_than_{min_macros}_macros"]
    lower = (f", or a lower data.min_macros ({dropped} sessions had fewer than {min_macros} "
             "macro interactions)" if dropped and min_macros > 2 else "")
    parts, many = " and ".join(empty), len(empty) > 1
    raise DataError(
        f"{source}: the {parts} split{'s' if many else ''} got no sessions (training {n[0]}, "
        f"validation {n[1]}, test {n[2]} of the {sum(n)} sessions kept, so "
        f"{'they have' if many else 'it has'} no examples): use more data or "
        f"{'larger' if many else 'a larger'} {parts} fraction{'s' if many else ''} in "
        f"data.split (now {list(split)}){lower}."
    )


def vocabulary(train_macros: pl.DataFrame, column: str, id_name: str) -> pl.DataFrame:
    """Values of `column` (products, categories) in the training split's macro interactions,
    most frequent first, with ids `id_name` from NUM_SPECIAL."""
    return (
        train_macros.group_by(column).agg(pl.len().alias("count"))
        .sort(["count", column], descending=[True, False])
        .with_row_index(id_name, offset=S.NUM_SPECIAL)
    )


def activity_vocabulary(train_act: np.ndarray, names: list[str]) -> list[int]:
    """Codes of the activities seen in training (code len(names) = missing), most frequent first."""
    counts = np.bincount(train_act, minlength=len(names) + 1)[:len(names)]
    return sorted((i for i in range(len(names)) if counts[i]), key=lambda i: (-counts[i],
                                                                              names[i]))


def activity_ids(act: np.ndarray, order: list[int], n_names: int) -> np.ndarray:
    """(E,) int32 activity id of each event code: NUM_SPECIAL + its place in `order`, else UNK."""
    lookup = np.full(n_names + 1, S.UNK, dtype=np.int32)
    lookup[order] = np.arange(S.NUM_SPECIAL, S.NUM_SPECIAL + len(order), dtype=np.int32)
    return lookup[act]


def label_macros(macros: pl.DataFrame, item_vocab: pl.DataFrame,
                 category_vocab: pl.DataFrame, edges: tuple[float, ...]) -> pl.DataFrame:
    """Add each macro interaction's item and category ids (UNK outside the vocabulary or
    missing) and dwell bucket."""
    return (
        macros.join(item_vocab.select(S.ITEM, "item_id"), on=S.ITEM, how="left",
                    maintain_order="left")
        .join(category_vocab.select(S.CATEGORY, "category_id"), on=S.CATEGORY, how="left",
              maintain_order="left")
        .with_columns(
            pl.col("item_id").fill_null(S.UNK).cast(pl.Int32),
            pl.col("category_id").fill_null(S.UNK).cast(pl.Int32),
            bucketize(pl.col(S.DWELL), edges).alias(S.BUCKET),
        )
    )


def event_tokens(macros: pl.DataFrame, gmacro: np.ndarray, activity: np.ndarray) -> np.ndarray:
    """(E, 4) int32 item, activity, bucket and category ids (TOKEN_COLUMNS): macro
    attributes gathered by macro index."""
    return np.column_stack([
        macros["item_id"].to_numpy()[gmacro],
        activity,
        macros[S.BUCKET].to_numpy()[gmacro],
        macros["category_id"].to_numpy()[gmacro],
    ]).astype(np.int32)  # (E, 4)


def split_stats(name: str, arrays: SplitArrays, n_events: int) -> dict[str, int]:
    """Counts of one split for the logs and the cache."""
    return {
        f"{name}/sessions": int(arrays.session_end.size),
        f"{name}/events": n_events,
        f"{name}/examples": int(arrays.target.size),
        f"{name}/unknown_targets": int((arrays.target == S.UNK).sum()),
    }


def _examples(macros: pl.DataFrame, tokens: np.ndarray, train: bool,
              eval_targets: str) -> SplitArrays:
    """Examples of one split from its macro interactions (in token order) and its tokens.

    For macro interaction t with a successor in its session, the input is the tokens of
    m1..mt and the target the successor's item.
    """
    size = macros["size"].to_numpy()
    end = np.cumsum(size)  # row after each macro interaction's last token
    per_macro = macros.select(S.SESSION, S.MACRO, "item_id", S.TS).with_columns(
        pl.Series("start", end - size), pl.Series("end", end),
    )
    same_session = pl.col(S.SESSION).shift(-1) == pl.col(S.SESSION)
    new_session = (pl.col(S.SESSION) != pl.col(S.SESSION).shift(1)).fill_null(True)
    last_in_session = ~same_session.fill_null(False)
    per_macro = per_macro.with_columns(
        pl.when(new_session).then(pl.col("start")).forward_fill().alias("first"),
        pl.when(same_session).then(pl.col("item_id").shift(-1)).alias("target"),
        last_in_session.alias("last"),
        last_in_session.shift(-1).fill_null(False).alias("target_is_last"),
    )
    last_macros = per_macro.filter(pl.col("last"))
    session_end = last_macros["end"].to_numpy()
    session_time = last_macros[S.TS].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    examples = per_macro.filter(pl.col("target").is_not_null())
    if not train and eval_targets == "last":
        examples = examples.filter(pl.col("target_is_last"))
    return SplitArrays(
        tokens=tokens,
        first=examples["first"].to_numpy().astype(np.int64),
        end=examples["end"].to_numpy().astype(np.int64),
        target=examples["target"].to_numpy().astype(np.int64),
        session=examples[S.SESSION].to_numpy().astype(np.int64),
        position=examples[S.MACRO].to_numpy().astype(np.int64) + 1,  # the target's macro
        session_end=session_end.astype(np.int64),
        session_time=session_time.astype(np.float64),
    )


def encode_sessions(events: pl.DataFrame, prepared: Prepared
                    ) -> tuple[SplitArrays, np.ndarray, pl.Series]:
    """New sessions as model inputs under a run's fitted vocabularies and dwell edges.

    The stages of `prepare` without the session filter and split: macro interactions,
    dwell (given, else derived from timestamps), each product's id in the training
    vocabulary (UNK outside it, as in the test split), activity ids and dwell buckets on the
    fitted edges. Each whole session is one example, its input every micro-behavior (the
    data module keeps the most recent max_len), its target unknown (PAD).

    Returns the examples (sessions in ascending id order), the (S,) session ids in that
    order, and the distinct products outside the vocabulary.
    """
    names = prepared.activities
    events = macro_interactions(encode_activities(events, names))
    vocab = pl.DataFrame({S.ITEM: prepared.items}).with_row_index("item_id",
                                                                  offset=S.NUM_SPECIAL)
    if vocab.schema[S.ITEM] != events.schema[S.ITEM]:
        # integer-looking ids read as int64 on one side, strings on the other: compare as text
        vocab = vocab.with_columns(pl.col(S.ITEM).cast(pl.String))
        events = events.with_columns(pl.col(S.ITEM).cast(pl.String))
    categories = pl.DataFrame({S.CATEGORY: prepared.categories}, schema={S.CATEGORY: pl.String}
                              ).with_row_index("category_id", offset=S.NUM_SPECIAL)
    macros = label_macros(macro_table(events), vocab, categories, prepared.bucket_edges)
    act = events["act"].fill_null(len(names)).to_numpy().astype(np.int64)  # null -> extra code
    tokens = event_tokens(macros, events[GMACRO].to_numpy(),
                          activity_ids(act, list(range(len(names))), len(names)))  # (E, 4)
    new_session = (pl.col(S.SESSION) != pl.col(S.SESSION).shift(1)).fill_null(True)
    first = events.select(pl.arg_where(new_session)).to_series().to_numpy().astype(np.int64)
    end = np.append(first[1:], events.height).astype(np.int64)  # (S,)
    sessions = events[S.SESSION].to_numpy()[first]  # (S,)
    starts = np.searchsorted(macros[S.SESSION].to_numpy(), sessions)  # (S,) in session order
    n_macros = np.diff(np.append(starts, macros.height))  # (S,)
    last_time = macros[S.TS].cast(pl.Float64).fill_null(float("nan")).to_numpy()[
        starts + n_macros - 1]  # (S,) as SplitArrays.session_time
    arrays = SplitArrays(tokens=tokens, first=first, end=end,
                         target=np.full(first.size, S.PAD, dtype=np.int64),
                         session=sessions.astype(np.int64),
                         position=n_macros.astype(np.int64),  # the next macro's index
                         session_end=end, session_time=last_time.astype(np.float64))
    unknown = macros.filter(pl.col("item_id") == S.UNK)[S.ITEM].unique()
    return arrays, sessions, unknown
