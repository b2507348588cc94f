"""POP: recommend the training split's most popular products to everyone."""

from __future__ import annotations

import numpy as np
import torch

from microrec.models.base import FitFromData, macro_visits, mask_special_


class Pop(FitFromData):
    """Scores every product by its number of macro interactions in the training split.

    Args:
        n_items: product vocabulary size (from the data).
        n_activities, n_dwell: not used; every model is built with the data's three sizes.
    """

    def __init__(self, n_items: int, n_activities: int = 0, n_dwell: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.register_buffer("counts", torch.zeros(n_items))  # (N,)

    def fit(self, dm) -> None:
        _, item = macro_visits(dm.prepared.splits["train"])
        counts = np.bincount(item, minlength=self.hparams.n_items)  # (N,)
        self.counts.copy_(torch.from_numpy(counts))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scores = self.counts.expand(batch["item"].size(0), -1).clone()  # (B, N)
        return mask_special_(scores)
