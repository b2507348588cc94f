"""Ranking by full scores over the catalogue, and Recall@k and MRR@k accumulated over batches
during evaluation (torch; the definitions are `microrec.metrics`'s)."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from microrec.data.schema import NUM_SPECIAL
from microrec.metrics import KS


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
