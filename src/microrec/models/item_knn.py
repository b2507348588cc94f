"""Item-KNN: score products by their session co-occurrence with the input's last product."""

from __future__ import annotations

import torch

from microrec.data.schema import PAD
from microrec.errors import ConfigError
from microrec.metrics import KS
from microrec.models.base import FitFromData, last_items, mask_special_
from microrec.models.cooccurrence import keep_top, session_cooccurrence


class ItemKNN(FitFromData):
    """The paper's Item-KNN: sim(i, j) = Freq(ij) / (Freq(i) * Freq(j)) for i != j.

    Freq(i) is the number of training sessions that contain product i, Freq(ij) the number
    that contain both. A session is scored against its last product: score(j) = sim(last, j).
    Each product keeps its `neighbours` most similar products (the rest score 0, as products
    that never co-occur do). With more than 20 neighbours, Recall@k and MRR@k for k <= 20 are
    exactly those of the full similarity matrix: a target outside the kept neighbours has at
    least `neighbours` products scored at or above it either way.

    Args:
        n_items: product vocabulary size (from the data).
        n_activities, n_dwell: not used; every model is built with the data's three sizes.
        neighbours: similar products kept per product.
    """

    def __init__(self, n_items: int, n_activities: int = 0, n_dwell: int = 0,
                 neighbours: int = 100):
        super().__init__()
        if neighbours <= max(KS):
            raise ConfigError(f"item_knn needs more than {max(KS)} neighbours per product so "
                              f"that metrics@{max(KS)} are exact, got {neighbours}.")
        self.save_hyperparameters()
        self.register_buffer("neighbours", torch.full((n_items, neighbours), PAD))  # (N, K)
        self.register_buffer("similarity", torch.zeros(n_items, neighbours))  # (N, K)

    def fit(self, dm) -> None:
        _, freq, row, col, both = session_cooccurrence(dm.prepared.splits["train"],
                                                       self.neighbours.size(0))
        at, neighbour, sim = keep_top(row, col, both / (freq[row] * freq[col]),
                                      self.neighbours.size(1))
        self.neighbours.fill_(PAD)
        self.similarity.zero_()
        self.neighbours[at] = neighbour
        self.similarity[at] = sim.float()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        last = last_items(batch)  # (B,)
        scores = torch.zeros(last.size(0), self.neighbours.size(0), device=last.device)  # (B, N)
        scores.scatter_(1, self.neighbours[last], self.similarity[last])  # unused slots hit PAD
        return mask_special_(scores)
