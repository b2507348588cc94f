"""Item-KNN: score products by their session co-occurrence with the input's last product."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from microrec.errors import ConfigError
from microrec.metrics import KS
from microrec.models.base import FitFromData, last_items, macro_visits, mask_special_
from microrec.schema import PAD


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
        n_items, k = self.neighbours.shape
        train = dm.prepared.splits["train"]
        session, item = macro_visits(train)
        # (S, N) session x product incidence, 1 where the session contains the product
        contains = sp.csr_matrix((np.ones(item.size), (session, item)),
                                 shape=(train.session_end.size, n_items))
        contains.data[:] = 1.0  # duplicates were summed: a product counts once per session
        freq = np.asarray(contains.sum(axis=0)).ravel()  # (N,) Freq(i)
        both = (contains.T @ contains).tocoo()  # (N, N) Freq(ij), sparse
        off_diagonal = both.row != both.col
        row, col = both.row[off_diagonal], both.col[off_diagonal]
        sim = both.data[off_diagonal] / (freq[row] * freq[col])

        order = np.lexsort((-sim, row))  # by product, most similar first
        row, col, sim = row[order], col[order], sim[order]
        rank = np.arange(row.size) - np.searchsorted(row, row)  # position inside its row
        keep = rank < k
        at = (torch.from_numpy(row[keep].astype(np.int64)), torch.from_numpy(rank[keep]))
        self.neighbours.fill_(PAD)
        self.similarity.zero_()
        self.neighbours[at] = torch.from_numpy(col[keep].astype(np.int64))
        self.similarity[at] = torch.from_numpy(sim[keep]).float()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        last = last_items(batch)  # (B,)
        scores = torch.zeros(last.size(0), self.neighbours.size(0), device=last.device)  # (B, N)
        scores.scatter_(1, self.neighbours[last], self.similarity[last])  # unused slots hit PAD
        return mask_special_(scores)
