"""The paired bootstrap over sessions on constructed predictions whose answer is known."""

import itertools

import numpy as np
import polars as pl
import pytest

from microrec.reports.significance import compare, paired_bootstrap, seed_average


def sessions(sizes):
    """(n,) session id of each example, for sessions of the given sizes."""
    return np.repeat(np.arange(len(sizes)), sizes)


def test_identical_models_differ_by_zero_with_p_one():
    session = sessions([3, 1, 4, 2, 5] * 20)
    (result,) = paired_bootstrap(np.zeros(session.size), session)
    assert result.diff == 0 and result.low == 0 and result.high == 0 and result.p == 1
    assert result.sessions == 100 and result.examples == session.size


def test_a_model_better_on_every_session_is_significant():
    rng = np.random.default_rng(1)
    session = sessions(rng.integers(1, 6, 60))
    diff = rng.choice([-1.0, 0.0, 1.0], session.size)  # hit minus hit, example by example
    first = np.unique(session, return_index=True)[1]
    diff[first] += np.maximum(0, 1 - np.bincount(session, diff))  # lift each session to >= 1
    assert (np.bincount(session, diff) > 0).all()  # better on every session
    recall, mrr = paired_bootstrap(np.column_stack([diff, diff / 4]), session, resamples=2000)
    for r in (recall, mrr):
        assert r.p < 0.01 and r.p == pytest.approx(2 / 2001) and 0 < r.low < r.diff < r.high
    assert recall.diff == pytest.approx(diff.mean())
    assert mrr.diff == pytest.approx(diff.mean() / 4)


def test_interval_and_p_against_the_exact_bootstrap_distribution():
    """Four sessions of 1-3 examples: all 4^4 equally likely draws, enumerated by hand."""
    diff = np.array([1.0, 0.0, -1.0, 1.0, 1.0, 0.5, -0.5, -1.0])
    session = np.array([0, 0, 0, 1, 2, 2, 3, 3])
    groups = [diff[session == s] for s in range(4)]
    exact = np.array([np.concatenate([groups[s] for s in draw]).mean()
                      for draw in itertools.product(range(4), repeat=4)])  # (256,)
    (result,) = paired_bootstrap(diff, session, resamples=40_000, seed=3)
    assert result.diff == pytest.approx(diff.mean())
    # the Monte Carlo p equals the exact one within a few standard errors (about 0.0025)
    p_exact = min(1.0, 2 * min((exact <= 0).mean(), (exact >= 0).mean()))
    assert result.p == pytest.approx(p_exact, abs=0.01)
    assert 0.05 < p_exact < 0.95  # a case where the interval matters
    # each end of the interval is a quantile of the exact distribution: the exact CDF
    # crosses 2.5% (97.5%) there, up to Monte Carlo error
    for end, level in ((result.low, 0.025), (result.high, 0.975)):
        assert (exact < end).mean() <= level + 0.01
        assert (exact <= end).mean() >= level - 0.01


def test_the_resampling_unit_is_the_session_and_splits_stay_apart():
    rng = np.random.default_rng(0)
    session = sessions(rng.integers(1, 4, 50))
    diff = rng.normal(size=session.size)
    (once,) = paired_bootstrap(diff, session)
    # every example twice in its own session: the same sessions, the same interval; an
    # example-level bootstrap would narrow it by about sqrt(2)
    (twice,) = paired_bootstrap(np.repeat(diff, 2), np.repeat(session, 2))
    assert (twice.low, twice.high, twice.p) == (once.low, once.high, once.p)
    # two splits, +1 everywhere in one and -1 in the other, equal sessions: drawn within
    # each split, every replicate is exactly 0; pooled, they would vary
    split = np.repeat([0, 1], 40)
    (strata,) = paired_bootstrap(np.where(split == 0, 1.0, -1.0), np.tile(np.arange(40), 2),
                                 split)
    assert strata.low == strata.high == 0 and strata.sessions == 80


def test_the_resampler_is_seeded():
    rng = np.random.default_rng(0)
    session = sessions(rng.integers(1, 4, 30))
    diff = rng.normal(size=session.size)
    a, b, c = (paired_bootstrap(diff, session, seed=s)[0] for s in (0, 0, 1))
    assert a == b and (a.low, a.high) != (c.low, c.high)


def table(ranks, repeat=None, sessions_of=None):
    """A predictions table as `predictions.read` returns it (the columns the test reads)."""
    n = len(ranks)
    return pl.DataFrame({
        "example": np.arange(n), "session": sessions_of if sessions_of is not None
        else np.arange(n) // 2, "position": np.ones(n, dtype=np.int64),
        "rank": pl.Series(ranks, dtype=pl.Int64),
        "repeat": repeat if repeat is not None else np.zeros(n, dtype=bool)})


def test_seeds_are_averaged_per_example_before_pairing():
    a = seed_average([(0, table([1, 30, 2, None])), (0, table([30, 30, 4, 1]))])
    assert a["hit"].to_list() == [0.5, 0.0, 1.0, 0.5]
    assert a["rr"].to_list() == [0.5, 0.0, 0.375, 0.5]
    b = seed_average([(0, table([2, 2, 2, 2]))])
    result = compare(a, b, resamples=500)
    assert result["recall@20"].diff == pytest.approx(0.5 - 1.0)
    assert result["mrr@20"].diff == pytest.approx((0.5 + 0.375 + 0.5) / 4 - 0.5)
    assert result["recall@20"].sessions == 2
    # only examples of the same split are paired
    other_split = seed_average([(1, table([1, 1, 1, 1]))])
    assert compare(a, other_split) is None
    with pytest.raises(ValueError, match="different test examples"):
        compare(a, seed_average([(0, table([1, 1, 1, 1], sessions_of=np.arange(4)))]))
    with pytest.raises(ValueError, match="different test examples"):
        seed_average([(0, table([1, 1])), (0, table([1, 1, 1]))])
