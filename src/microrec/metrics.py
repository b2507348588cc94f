"""The cut-offs and the metric definitions, written once: Recall@k and MRR@k from each
example's rank by full ranking over the catalogue (1 = best, ties counted against the model).

`hits_and_rr` turns ranks into hit@k and reciprocal rank@k: the one definition every table,
report and breakdown calls. Ranking itself and the metric accumulated during training are
in `models.ranking` (`target_rank`, `RankingMetrics`, tested against `hits_and_rr`); this
module imports no torch, so that the reports stay quick to start.
"""

from __future__ import annotations

import numpy as np
import polars as pl

K = 20  # the headline cut-off: Recall@20 and MRR@20, what tables report and runs select on
KS = (5, 10, K)  # the cut-offs every evaluation logs
RECALL, MRR = f"recall@{K}", f"mrr@{K}"  # the headline metrics' names (`<split>/` prefixed)


def hits_and_rr(rank: pl.Series | np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """(N,) hit@k and reciprocal rank@k of each example from its rank (1 = best); a null rank
    (an unknown target, a non-finite score) is a miss."""
    r = pl.Series(rank).cast(pl.Float64).fill_null(np.inf).to_numpy()  # (N,)
    inside = r <= k
    return inside.astype(np.float64), np.where(inside, 1.0 / r, 0.0)
