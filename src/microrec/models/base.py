"""What every recommender shares: scoring a batch and evaluating it by full ranking."""

from __future__ import annotations

import pytorch_lightning as L
import torch

from microrec.metrics import RankingMetrics
from microrec.schema import NUM_SPECIAL


def mask_special(scores: torch.Tensor) -> torch.Tensor:
    """Padding and unknown ids can never be recommended (in place, returns `scores`)."""
    scores[:, :NUM_SPECIAL] = float("-inf")
    return scores


class Recommender(L.LightningModule):
    """Subclasses implement `forward(batch) -> (B, n_items)` scores over every item id,
    with padding and unknown masked (`mask_special`)."""

    def __init__(self):
        super().__init__()
        self.val_metrics = RankingMetrics()
        self.test_metrics = RankingMetrics()

    def _log_eval(self, stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        values = metrics.compute()
        self.log_dict({f"{stage}/{name}": v for name, v in values.items()})
        metrics.reset()

    def validation_step(self, batch, batch_idx):
        self.val_metrics.update(self(batch), batch["target"])

    def test_step(self, batch, batch_idx):
        self.test_metrics.update(self(batch), batch["target"])

    def on_validation_epoch_end(self):
        self._log_eval("val")

    def on_test_epoch_end(self):
        self._log_eval("test")
