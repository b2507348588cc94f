"""Recall@k and MRR@k by full ranking over the catalogue, ties counted against the model.

The cut-offs and the metric definitions live here only: `target_rank` ranks, `hits_and_rr`
turns ranks into hit@k and reciprocal rank@k (the one definition every table, report and
breakdown calls), and `RankingMetrics` accumulates the same during training (tested against
`hits_and_rr`).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from torchmetrics import Metric

from microrec.data.schema import NUM_SPECIAL

K = 20  # the headline cut-off: Recall@20 and MRR@20, what tables report and runs select on
KS = (5, 10, K)  # the cut-offs every evaluation logs
RECALL, MRR = f"recall@{K}", f"mrr@{K}"  # the headline metrics' names (`<split>/` prefixed)


def hits_and_rr(rank: pl.Series | np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """(N,) hit@k and reciprocal rank@k of each example from its rank (1 = best); a null rank
    (an unknown target, a non-finite score) is a miss."""
    r = pl.Series(rank).cast(pl.Float64).fill_null(np.inf).to_numpy()  # (N,)
    inside = r <= k
    return inside.astype(np.float64), np.where(inside, 1.0 / r, 0.0)


def target_rank(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rank of each target: how many items score at least as high (1 = best).

    scores: (B, N) over all item ids; padding and unknown columns are ignored.
    target: (B,) item ids; a target below NUM_SPECIAL (unknown product) gets rank N + 1, a miss.
    A non-finite score (NaN or inf, a diverged model) ranks after every finite one: a target
    scored so is a miss, and another product scored so never outranks the target. Every
    comparison with NaN is false, so without this rule a NaN target would rank 0 (1/0 = inf).
    """
    scores = scores[:, NUM_SPECIAL:]  # (B, N - 2) real products only
    column = (target - NUM_SPECIAL).clamp(min=0)
    target_score = scores.gather(1, column[:, None])  # (B, 1)
    rank = ((scores >= target_score) & scores.isfinite()).sum(1)  # (B,)
    counted = (target >= NUM_SPECIAL) & target_score[:, 0].isfinite()  # (B,)
    return torch.where(counted, rank, torch.full_like(rank, scores.size(1) + 1))


class RankingMetrics(Metric):
    """Accumulates Recall@k and MRR@k for k in KS; `compute()` returns a dict by name."""

    full_state_update = False

    def __init__(self, ks: tuple[int, ...] = KS):
        super().__init__()
        self.ks = tuple(ks)
        self.add_state("hits", default=torch.zeros(len(self.ks), dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("rr", default=torch.zeros(len(self.ks), dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.float64),
                       dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        rank = target_rank(scores, target).to(torch.float64)  # (B,)
        n = scores.size(1) - NUM_SPECIAL  # rank n + 1 is a miss even in a catalogue below k
        for i, k in enumerate(self.ks):
            inside = rank <= min(k, n)
            self.hits[i] += inside.sum()
            self.rr[i] += torch.where(inside, 1.0 / rank, torch.zeros_like(rank)).sum()
        self.count += rank.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=1)
        out = {}
        for i, k in enumerate(self.ks):
            out[f"recall@{k}"] = (self.hits[i] / n).float()
            out[f"mrr@{k}"] = (self.rr[i] / n).float()
        return out
