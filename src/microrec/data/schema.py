"""The canonical event table, the paper's activities and dwell buckets, and the special ids.

Every loader produces the canonical table; every later step reads these names only.
"""

from __future__ import annotations

import math

import polars as pl

from microrec.errors import ConfigError, DataError

# Canonical event table (DESIGN.md).
SESSION = "session"
POS = "pos"
ITEM = "item"
ACTIVITY = "activity"
DWELL = "dwell_s"
TS = "ts"
CATEGORY = "category"
COLUMNS = (SESSION, POS, ITEM, ACTIVITY, DWELL, TS, CATEGORY)
REQUIRED = (SESSION, POS, ITEM)

# Columns the protocol derives.
MACRO = "macro"  # index of the macro interaction inside its session, from 0
BUCKET = "bucket"  # dwell bucket id

# The paper's activities (Table 1), a1..a10 in order.
ACTIVITIES = (
    "Home2Product",
    "ShopList2Product",
    "Sale2Product",
    "Cart2Product",
    "SearchList2Product",
    "Detail_comments",
    "Detail_specification",
    "Detail_bottom",
    "Cart",
    "Order",
)
CLICK_SOURCES = ACTIVITIES[:5]
BROWSING_MODULES = ACTIVITIES[5:8]
# Activity groups of the paper's Section 3 analysis. A source whose activities differ exposes
# its own mapping as `activity_groups` (a group it lacks is simply absent).
PAPER_GROUPS = {
    "click_source": CLICK_SOURCES,
    "browsing_module": BROWSING_MODULES,
    "cart": ("Cart",),
    "order": ("Order",),
}

# Id 0 is padding and id 1 is "unknown" in every vocabulary (items, activities, buckets).
PAD = 0
UNK = 1
NUM_SPECIAL = 2

def bucket_labels(edges: tuple[float, ...]) -> dict[int, str]:
    """Readable name of every dwell bucket id: whole seconds, lower edge inclusive."""
    lows = [0, *(math.ceil(e) for e in edges)]
    labels = {UNK: "unknown"}
    for i, low in enumerate(lows):
        top = f"-{lows[i + 1] - 1} s" if i + 1 < len(lows) else "+ s"
        labels[NUM_SPECIAL + i] = f"{low}{top}"
    return labels


# Feature variants: which channels besides the product the model sees. Each of the paper's
# four has a `_cat` form that adds the product's category as a fourth channel.
PAPER_FEATURES = {
    "sku": (),
    "sku_act": ("activity",),
    "sku_dwell": ("dwell",),
    "full": ("activity", "dwell"),
}
FEATURES = {**PAPER_FEATURES,
            **{f"{name}_cat": (*sides, "category") for name, sides in PAPER_FEATURES.items()}}
# What tables, figures and logs call each variant: the paper's names (its Table 3).
FEATURE_LABELS = {
    "sku": "SKU",
    "sku_act": "SKU+Activity",
    "sku_dwell": "SKU+Dwell",
    "full": "SKU+Micro-behaviors",
}
FEATURE_LABELS.update({f"{name}_cat": f"{label}+Category"
                       for name, label in list(FEATURE_LABELS.items())})


def channels(features: str) -> tuple[str, ...]:
    """The side channels (activity, dwell, category) a feature variant uses."""
    if features not in FEATURES:
        raise ConfigError(
            f"unknown features '{features}': choose one of {', '.join(FEATURES)}."
        )
    return FEATURES[features]


_STRING_TYPES = (pl.String, pl.Categorical, pl.Enum)


def validate_events(events: pl.DataFrame, source: str) -> pl.DataFrame:
    """Check a loader's output against the canonical schema and return it with all columns.

    Missing optional columns are added as nulls; wrong types, nulls where values are required
    and negative dwell times stop with one sentence naming `source`.
    """
    missing = [c for c in REQUIRED if c not in events.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}.")
    for col, dtype in ((ACTIVITY, pl.String), (DWELL, pl.Float64), (TS, pl.Int64),
                       (CATEGORY, pl.String)):
        if col not in events.columns:
            events = events.with_columns(pl.lit(None, dtype=dtype).alias(col))
    schema = events.schema
    if not schema[SESSION].is_integer() or not schema[POS].is_integer():
        raise DataError(f"{source}: columns '{SESSION}' and '{POS}' must be integers.")
    if not (schema[ITEM].is_integer() or isinstance(schema[ITEM], _STRING_TYPES)):
        raise DataError(f"{source}: column '{ITEM}' must hold strings or integers.")
    if not isinstance(schema[ACTIVITY], (*_STRING_TYPES, pl.Null)):
        raise DataError(f"{source}: column '{ACTIVITY}' must hold activity names.")
    if not (schema[DWELL].is_numeric() or schema[DWELL] == pl.Null):
        raise DataError(f"{source}: column '{DWELL}' must be numeric seconds.")
    if events.height == 0:
        raise DataError(f"{source}: the data set holds no events.")
    nulls = [c for c in REQUIRED if events[c].null_count()]
    if nulls:
        raise DataError(f"{source}: column(s) {', '.join(nulls)} contain empty values.")
    events = events.with_columns(
        pl.col(SESSION).cast(pl.Int64),
        pl.col(POS).cast(pl.Int32),
        pl.col(DWELL).cast(pl.Float64),
        pl.col(TS).cast(pl.Int64),
        pl.col(CATEGORY).cast(pl.String),
    )
    negative = events.filter(pl.col(DWELL) < 0)
    if negative.height:
        row = negative.row(0, named=True)
        raise DataError(
            f"{source}: negative dwell time {row[DWELL]} in session {row[SESSION]} "
            f"at position {row[POS]}."
        )
    return events.select(COLUMNS)
