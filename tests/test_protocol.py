"""The protocol from events to examples (DESIGN.md), on hand-made frames."""

import numpy as np
import polars as pl
import pytest

from microrec.data import schema as S
from microrec.data.protocol import (
    bucketize,
    fit_quantile_edges,
    macro_interactions,
    macro_table,
    prepare,
    split_sessions,
)
from microrec.data.synthetic import SyntheticSource
from microrec.errors import DataError


def frame(rows, **extra):
    """Canonical events from (session, pos, item, activity, dwell, ts) tuples."""
    df = pl.DataFrame(rows, schema=[S.SESSION, S.POS, S.ITEM, S.ACTIVITY, S.DWELL, S.TS],
                      orient="row")
    return S.validate_events(df, "test")


def test_macro_boundaries_and_derived_dwell():
    events = frame([
        (1, 0, "A", "Home2Product", None, 100),
        (1, 1, "A", "Detail_comments", None, 105),
        (1, 2, "B", "SearchList2Product", None, 130),
        (1, 3, "A", "Cart2Product", None, 200),
        (1, 4, "A", "Cart", None, 210),
        (2, 0, "C", "Home2Product", 7.0, None),  # given dwell wins, no timestamps needed
        (2, 1, "D", "Home2Product", 12.5, None),
    ])
    ev = macro_interactions(events)
    assert ev[S.MACRO].to_list() == [0, 0, 1, 2, 2, 0, 1]
    macros = macro_table(ev)
    assert macros[S.ITEM].to_list() == ["A", "B", "A", "C", "D"]
    # first event to next macro's first event; the session's last macro stays unknown
    assert macros[S.DWELL].to_list() == [30.0, 70.0, None, 7.0, 12.5]
    buckets = macros.select(bucketize(pl.col(S.DWELL), (10.0, 25.0, 61.0, 121.0)))
    assert buckets.to_series().to_list() == [4, 5, S.UNK, 2, 3]


def test_paper_and_hup_bucket_edges():
    dwell = pl.DataFrame({"d": [0.0, 9.9, 10.0, 24.9, 25.0, 60.9, 61.0, 120.9, 121.0, 9999.0]})
    paper = dwell.select(bucketize(pl.col("d"), (10.0, 25.0, 61.0, 121.0))).to_series()
    assert paper.to_list() == [2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    hup = dwell.select(bucketize(pl.col("d"), (15.0, 40.0, 100.0, 600.0))).to_series()
    assert hup.to_list() == [2, 2, 2, 3, 3, 4, 4, 5, 5, 6]


def test_quantile_edges_give_equal_frequency_buckets():
    values = pl.Series(np.arange(1, 101, dtype=np.float64))
    edges = fit_quantile_edges(values)
    ids = pl.DataFrame({"d": values}).select(bucketize(pl.col("d"), edges)).to_series()
    counts = ids.value_counts().sort(ids.name)["count"].to_list()
    assert len(counts) == 5 and max(counts) - min(counts) <= 2


def sessions_frame(n=10, long_test=False):
    """n sessions of three macro interactions; session s starts at time 1000 * s."""
    rows = []
    for s in range(n):
        items = [f"i{s % 3}", f"i{(s + 1) % 3}", f"i{(s + 2) % 3}"]
        if s == n - 1:
            items[2] = "only_in_test"
        if s == n - 2:
            items[1] = "only_in_val"
        for k, item in enumerate(items):
            act = "Order" if s == n - 1 else "Home2Product"
            dwell = 5000.0 if long_test and s >= n - 2 else 10.0 * (k + 1)
            rows.append((s, 2 * k, item, act, dwell, 1000 * s + 10 * k))
            rows.append((s, 2 * k + 1, item, "Detail_comments", dwell, 1000 * s + 10 * k + 1))
    return frame(rows)


def test_vocabularies_come_from_training_sessions_only():
    prep = prepare(sessions_frame(), split=(0.8, 0.1, 0.1))
    assert "only_in_test" not in prep.items and "only_in_val" not in prep.items
    assert "Order" not in prep.activities  # seen only in the test session
    test = prep.splits["test"]
    assert test.target.tolist() == [S.UNK]  # unseen target product -> unknown id (a miss)
    assert set(test.tokens[:, 1].tolist()) == {S.UNK, prep.activities.index(
        "Detail_comments") + S.NUM_SPECIAL}
    val = prep.splits["val"]
    assert S.UNK in val.tokens[:, 0].tolist()  # unseen input product -> unknown id


def test_categories_are_a_training_vocabulary_gathered_per_micro_behavior():
    events = sessions_frame().with_columns(
        pl.when(pl.col(S.ITEM) == "only_in_test").then(pl.lit("c_test"))
        .when(pl.col(S.ITEM) == "i2").then(pl.lit(None, dtype=pl.String))
        .otherwise(pl.format("c_{}", pl.col(S.ITEM))).alias(S.CATEGORY))
    prep = prepare(events, split=(0.8, 0.1, 0.1))
    assert prep.has_category and set(prep.categories) == {"c_i0", "c_i1"}  # no null, no test
    item_ids = {name: i + S.NUM_SPECIAL for i, name in enumerate(prep.items)}
    category_ids = {name: i + S.NUM_SPECIAL for i, name in enumerate(prep.categories)}
    expected = {item_ids["i0"]: category_ids["c_i0"], item_ids["i1"]: category_ids["c_i1"],
                item_ids["i2"]: S.UNK, S.UNK: S.UNK}  # a missing or unseen category -> UNK
    for split in prep.splits.values():
        items, categories = split.tokens[:, 0], split.tokens[:, 3]
        assert [expected[i] for i in items.tolist()] == categories.tolist()
    assert not prepare(sessions_frame()).has_category  # no category column: no channel


def test_quantile_edges_are_fitted_on_training_split_only():
    prep = prepare(sessions_frame(long_test=True), buckets="quantile")
    assert max(prep.bucket_edges) <= 31.0  # test/val dwell (5000 s) never moves an edge


def test_examples_protocol_last_and_all():
    events = sessions_frame()
    last = prepare(events, eval_targets="last")
    every = prepare(events, eval_targets="all")
    # 3 macro interactions per session: train uses t = 1, 2; last keeps only t = 2
    assert last.splits["train"].target.size == 2 * 8
    assert last.splits["val"].target.size == 1 and every.splits["val"].target.size == 2
    val = every.splits["val"]
    assert val.end.tolist() == [2, 4] and val.first.tolist() == [0, 0]


def test_no_target_micro_behavior_is_ever_in_its_input():
    prep = prepare(SyntheticSource(n_sessions=300, n_items=40, n_categories=4).load(),
                   eval_targets="all")
    for arrays in prep.splits.values():
        tok, end, target = arrays.tokens, arrays.end, arrays.target
        known = target != S.UNK
        # the input stops exactly where the target's macro interaction starts ...
        assert (tok[end[known], 0] == target[known]).all()
        # ... so the input's last product is never the target
        assert (tok[end - 1, 0] != target).all()
        assert (arrays.first < end).all()


def test_split_is_chronological_with_timestamps_and_seeded_without():
    macros = macro_table(macro_interactions(sessions_frame(n=20)))
    split = split_sessions(macros, (0.6, 0.2, 0.2), seed=0).sort(S.SESSION)
    # session s starts at 1000 * s: the earliest 60% train, the latest 20% test
    assert split["split"].to_list() == [0] * 12 + [1] * 4 + [2] * 4
    untimed = macros.with_columns(pl.lit(None, dtype=pl.Int64).alias(S.TS))
    a = split_sessions(untimed, (0.6, 0.2, 0.2), seed=0).sort(S.SESSION)["split"].to_list()
    b = split_sessions(untimed, (0.6, 0.2, 0.2), seed=0).sort(S.SESSION)["split"].to_list()
    c = split_sessions(untimed, (0.6, 0.2, 0.2), seed=1).sort(S.SESSION)["split"].to_list()
    assert a == b and a != c and sorted(a) == sorted(c)


def test_short_sessions_are_dropped_and_counted():
    events = pl.concat([sessions_frame(), frame([(99, 0, "i0", "Cart", 3.0, 99_999)])])
    prep = prepare(events)
    assert prep.stats["sessions_dropped_fewer_than_2_macros"] == 1
    assert prep.stats["sessions"] == 11


@pytest.mark.parametrize("change, message", [
    (lambda df: df.drop(S.ITEM), "missing column(s) item"),
    (lambda df: df.with_columns(pl.lit(-1.0).alias(S.DWELL)), "negative dwell time -1.0"),
    (lambda df: df.head(0), "holds no events"),
    (lambda df: df.with_columns(pl.lit(None, dtype=pl.String).alias(S.ITEM)),
     "contain empty values"),
])
def test_bad_events_are_named_in_one_sentence(change, message):
    raw = pl.DataFrame({S.SESSION: [1, 1], S.POS: [0, 1], S.ITEM: ["a", "b"]})
    with pytest.raises(DataError, match=r"^shop\.csv: .*" + message.replace("(", r"\(")
                       .replace(")", r"\)")):
        S.validate_events(change(raw.with_columns(pl.lit(1.0).alias(S.DWELL))), "shop.csv")


def test_nothing_to_learn_is_a_clear_error():
    one_macro_each = frame([(s, 0, "a", "Cart", 1.0, s) for s in range(5)])
    with pytest.raises(DataError, match="no session has 2 or more macro interactions"):
        prepare(one_macro_each)


def short_sessions(n_short):
    """20 sessions of which the first n_short keep only two macro interactions."""
    events = sessions_frame(20)
    return events.filter(~((pl.col(S.SESSION) < n_short) & (pl.col(S.POS) >= 4)))


@pytest.mark.parametrize("events, kwargs, message", [
    (sessions_frame(3), {},
     r"^data: the test split got no sessions \(training 2, validation 1, test 0 of the 3 "
     r"sessions kept, so it has no examples\): use more data or a larger test fraction in "
     r"data\.split \(now \[0\.8, 0\.1, 0\.1\]\)\.$"),
    (sessions_frame(1), {"split": (0.3, 0.4, 0.3)},
     r"^data: the training and test splits got no sessions \(training 0, validation 1, test 0 "
     r"of the 1 sessions kept, so they have no examples\): use more data or larger training "
     r"and test fractions"),
    (short_sessions(11), {"min_macros": 3, "split": (0.9, 0.05, 0.05)},
     r"^data: the test split got no sessions \(training 8, validation 1, test 0 of the 9 "
     r"sessions kept.*, or a lower data\.min_macros \(11 sessions had fewer than 3 macro "
     r"interactions\)\.$"),
])
def test_a_split_without_sessions_stops_with_its_counts_and_the_remedy(events, kwargs, message):
    with pytest.raises(DataError, match=message):
        prepare(events, **kwargs)


def test_the_smallest_data_with_every_split_filled_is_accepted():
    prep = prepare(sessions_frame(3), split=(0.4, 0.3, 0.3))
    assert [prep.stats[f"{name}/sessions"] for name in ("train", "val", "test")] == [1, 1, 1]
    assert all(prep.splits[name].target.size for name in ("train", "val", "test"))
    # a zero fraction is a choice, not too little data (the data module checks its use)
    everything = prepare(sessions_frame(3), split=(1.0, 0.0, 0.0))
    assert everything.splits["val"].target.size == everything.splits["test"].target.size == 0
