"""Paired comparisons of two models on the same test examples: a bootstrap over sessions.

Examples of one session are correlated (they share a user and most of their input), so the
resampling unit is the test session, not the example (DESIGN.md). Each model's per-example
hit@K and reciprocal rank@K (`metrics.K`) are first averaged over its seeds; the two models are then
paired example by example. With several data splits (`data.seed`) only examples of the
same split are paired, and each split's sessions are resampled within that split.

The test, for a per-example difference d_i (model A minus model B):
- the difference is the mean of d_i over the paired examples;
- one bootstrap replicate draws, within each split, as many sessions as it has, uniformly
  with replacement, and takes the mean of d_i over every example of the drawn sessions
  (a session drawn twice counts twice); R replicates (RESAMPLES) from a seeded generator;
- the 95% interval is the 2.5% and 97.5% quantiles of the replicates (percentile interval);
- the two-sided p-value is p = min(1, 2 * min(1 + #{replicates <= 0},
  1 + #{replicates >= 0}) / (R + 1)): twice the bootstrap probability of the lesser side of
  zero, with the usual +1 so that it is never 0. It is below 0.05 (nearly) exactly when the
  95% interval excludes 0; identical models give p = 1, and the smallest p is 2 / (R + 1).

Over several data sets (`pooled_bootstrap`) each data set's sessions are resampled as above
and the pooled difference is a weighted mean of the data sets' differences, each data set
weighted equally by default (or by its test sessions), so a large data set does not drown a
small one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from microrec.metrics import MRR, RECALL, hits_and_rr

RESAMPLES = 5000
SEED = 0
LEVEL = 0.95
COLUMNS = {RECALL: "hit", MRR: "rr"}  # metric -> per-example column
POOL_WEIGHTS = ("equal", "sessions")  # how `pooled_bootstrap` weighs its data sets


@dataclass
class Paired:
    """One paired comparison of a metric: A minus B."""

    diff: float
    low: float
    high: float
    p: float
    examples: int
    sessions: int

    def shown(self) -> str:
        """e.g. '+0.0123 [+0.0050, +0.0190] p=0.002' (p<0.001 below that)."""
        p = "p<0.001" if self.p < 0.001 else f"p={self.p:.3f}"
        return f"{self.diff:+.4f} [{self.low:+.4f}, {self.high:+.4f}] {p}"


def seed_average(runs: list[tuple[int, pl.DataFrame]]) -> pl.DataFrame:
    """One model's test examples with hit@K and reciprocal rank@K averaged over seeds.

    runs: (data.seed, predictions table) of each run (seed) of the model. Returns one row
    per (data_seed, example) with session, repeat, hit, rr and runs (how many seeds).
    Raises ValueError when runs of one split hold different examples.
    """
    frames = []
    for data_seed, table in runs:
        hit, rr = hits_and_rr(table["rank"])
        frames.append(table.select("example", "session", "position", "repeat").with_columns(
            pl.lit(data_seed, pl.Int64).alias("data_seed"), pl.Series("hit", hit),
            pl.Series("rr", rr)))
    averaged = pl.concat(frames).group_by("data_seed", "example").agg(
        pl.col("session", "position", "repeat").first(),
        pl.max_horizontal(pl.col("session").n_unique(), pl.col("position").n_unique())
        .alias("names"),  # 1: every run names the example alike
        pl.col("hit", "rr").mean(), pl.len().alias("runs"))
    per_split = pl.DataFrame({"data_seed": [s for s, _ in runs]}).group_by("data_seed").len()
    joined = averaged.join(per_split, on="data_seed")
    if (joined["names"] != 1).any() or (joined["runs"] != joined["len"]).any():
        raise ValueError("its runs on one split hold different test examples")
    return averaged.drop("names").sort("data_seed", "example")


def pair(a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:
    """The examples of the splits both models ran on, side by side (columns _a and _b).

    Raises ValueError when the two hold different examples on a split they share.
    """
    shared = set(a["data_seed"]) & set(b["data_seed"])
    a = a.filter(pl.col("data_seed").is_in(shared))
    b = b.filter(pl.col("data_seed").is_in(shared))
    both = a.join(b, on=["data_seed", "example"], suffix="_b")
    if not (both.height == a.height == b.height
            and (both["session"] == both["session_b"]).all()
            and (both["position"] == both["position_b"]).all()):
        raise ValueError("they hold different test examples on the same split")
    return both


def compare(a: pl.DataFrame, b: pl.DataFrame, resamples: int = RESAMPLES,
            seed: int = SEED) -> dict[str, Paired] | None:
    """A minus B in Recall@K and MRR@K on their shared examples (`seed_average` tables);
    None when they share no split."""
    both = pair(a, b)
    if both.height == 0:
        return None
    diff = np.column_stack([both[c] - both[f"{c}_b"] for c in COLUMNS.values()])  # (n, 2)
    tests = paired_bootstrap(diff, both["session"].to_numpy(), both["data_seed"].to_numpy(),
                             resamples, seed)
    return dict(zip(COLUMNS, tests, strict=True))


def paired_bootstrap(diff: np.ndarray, session: np.ndarray, stratum: np.ndarray | None = None,
                     resamples: int = RESAMPLES, seed: int = SEED) -> list[Paired]:
    """The module's test on per-example differences, one result per column of `diff`.

    diff: (n, m) per-example differences; session: (n,) session of each example; stratum:
    (n,) the split of each example (sessions are drawn within their split), or None.
    """
    rng = np.random.default_rng(seed)
    observed, replicates, n_sessions = session_replicates(diff, session, stratum, resamples,
                                                          rng)
    return summarise(observed, replicates, len(session), n_sessions)


def session_replicates(diff: np.ndarray, session: np.ndarray, stratum: np.ndarray | None,
                       resamples: int, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray, int]:
    """The mean difference (m,), its bootstrap replicates (R, m) and the number of sessions:
    each replicate draws, within each stratum, as many sessions as it has."""
    diff = np.asarray(diff, dtype=np.float64).reshape(len(session), -1)  # (n, m)
    stratum = np.zeros(len(session), dtype=np.int64) if stratum is None else stratum
    keys, cluster = np.unique(np.column_stack([stratum, session]), axis=0,
                              return_inverse=True)
    cluster = cluster.ravel()  # (n,) index of each example's (split, session)
    n_clusters = keys.shape[0]
    sums = np.column_stack([np.bincount(cluster, d, n_clusters) for d in diff.T])  # (C, m)
    counts = np.bincount(cluster, minlength=n_clusters).astype(np.float64)  # (C,)
    groups = [np.flatnonzero(keys[:, 0] == s) for s in np.unique(keys[:, 0])]

    replicates = np.empty((resamples, diff.shape[1]))  # (R, m)
    chunk = max(1, 4_000_000 // n_clusters)  # replicates at a time, bounding the memory
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        drawn = np.concatenate([g[rng.integers(0, g.size, (r, g.size))] for g in groups],
                               axis=1)  # (r, C) sessions drawn, split by split
        times = np.bincount((np.arange(r)[:, None] * n_clusters + drawn).ravel(),
                            minlength=r * n_clusters).reshape(r, n_clusters)  # (r, C)
        replicates[start:start + r] = (times @ sums) / (times @ counts)[:, None]
    return diff.mean(0), replicates, n_clusters


def summarise(observed: np.ndarray, replicates: np.ndarray, examples: int, sessions: int
              ) -> list[Paired]:
    """Per column: the observed difference, the percentile interval and the p-value of its
    replicates (the module's definitions)."""
    resamples = replicates.shape[0]
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail], axis=0)  # (m,) each
    below, above = (replicates <= 0).sum(0), (replicates >= 0).sum(0)  # (m,) each
    p = np.minimum(1.0, 2 * (1 + np.minimum(below, above)) / (resamples + 1))
    return [Paired(float(observed[i]), float(low[i]), float(high[i]), float(p[i]),
                   examples, sessions) for i in range(observed.size)]


def pooled_bootstrap(diff: np.ndarray, session: np.ndarray, group: np.ndarray,
                     stratum: np.ndarray | None = None, weights: str = "equal",
                     resamples: int = RESAMPLES, seed: int = SEED) -> list[Paired]:
    """The module's test pooled over the test sessions of several data sets (`group`).

    Each data set's mean difference and replicates come from its own sessions (drawn
    within their split, as in `paired_bootstrap`); the pooled difference is their weighted
    mean, each replicate the same weighted mean of one replicate per data set. Sessions are
    pooled, never data sets: a data set is not the resampling unit.

    weights: `equal` (each data set counts the same, however many sessions it has) or
        `sessions` (in proportion to its test sessions).
    """
    if weights not in POOL_WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(POOL_WEIGHTS)}, not {weights!r}")
    rng = np.random.default_rng(seed)
    diff = np.asarray(diff, dtype=np.float64).reshape(len(session), -1)  # (n, m)
    stratum = np.zeros(len(session), dtype=np.int64) if stratum is None else stratum
    means, replicates, sizes = [], [], []
    for g in np.unique(group):
        rows = group == g
        mean, reps, n_sessions = session_replicates(diff[rows], session[rows], stratum[rows],
                                                    resamples, rng)
        means.append(mean)
        replicates.append(reps)
        sizes.append(n_sessions)
    w = np.ones(len(sizes)) if weights == "equal" else np.asarray(sizes, dtype=np.float64)
    w = w / w.sum()  # (D,)
    pooled = np.tensordot(w, np.stack(replicates), axes=1)  # (R, m)
    return summarise(w @ np.stack(means), pooled, len(session), sum(sizes))
