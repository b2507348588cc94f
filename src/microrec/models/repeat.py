"""Repeat: recommend the input's own earlier products, the most recently seen first."""

from __future__ import annotations

import torch

from microrec.models.base import FitFromData, mask_special_, visits


class Repeat(FitFromData):
    """Scores each product of the input by the position of its last visit (1 = the first
    visit, L = the last); every other product scores 0, below all of them, so the metric
    sees them tied behind the input's products (ties count against the target).

    The input's last product scores highest here and is ranked last by the shared
    evaluation rule, so the ranking is the input's earlier products, most recent first.
    Nothing is learnt: `fit` only satisfies the fitted-model path of `src/train.py`.

    Args:
        n_items: product vocabulary size (from the data).
        n_activities, n_dwell: not used; every model is built with the data's three sizes.
    """

    def __init__(self, n_items: int, n_activities: int = 0, n_dwell: int = 0):
        super().__init__()
        self.save_hyperparameters()

    def fit(self, dm) -> None:
        pass  # nothing to learn: the input alone decides the scores

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        item = batch["item"]  # (B, T)
        # visit number of each micro-behavior; padding and unknown columns are masked below
        position = torch.cumsum(visits(batch), 1).float()  # (B, T)
        scores = torch.zeros(item.size(0), self.hparams.n_items, device=item.device)  # (B, N)
        scores.scatter_reduce_(1, item, position, "amax")
        return mask_special_(scores)
