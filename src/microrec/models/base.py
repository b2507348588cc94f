"""What every recommender shares: scoring a batch and evaluating it by full ranking."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as L
import torch

from microrec.metrics import RankingMetrics
from microrec.protocol import SplitArrays
from microrec.schema import NUM_SPECIAL


def mask_special_(scores: torch.Tensor) -> torch.Tensor:
    """Padding and unknown ids can never be recommended (in place, returns `scores`)."""
    scores[:, :NUM_SPECIAL] = float("-inf")
    return scores


def last_items(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) the product of each input's last micro-behavior (inputs are right-padded)."""
    last = (batch["length"] - 1).clamp(min=0)  # (B,)
    return batch["item"].gather(1, last[:, None]).squeeze(1)


def exclude_last_(scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The input's last product is never its target (DESIGN.md): rank it last (in place)."""
    return scores.scatter_(1, last_items(batch)[:, None], float("-inf"))


def visits(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T) true where a macro interaction on a known product starts.

    Consecutive micro-behaviors on one product are one visit; padding and unknown products
    are never visits.
    """
    item = batch["item"]  # (B, T)
    previous = torch.nn.functional.pad(item, (1, 0), value=-1)[:, :-1]  # (B, T)
    return (item != previous) & (item >= NUM_SPECIAL)


def macro_visits(split: SplitArrays) -> tuple[np.ndarray, np.ndarray]:
    """Every macro interaction of a split as (M,) session index and (M,) product id."""
    item = split.tokens[:, 0].astype(np.int64)  # (E,)
    session = np.searchsorted(split.session_end, np.arange(item.size), side="right")  # (E,)
    start = np.ones(item.size, dtype=bool)
    start[1:] = (item[1:] != item[:-1]) | (session[1:] != session[:-1])
    return session[start], item[start]


class Recommender(L.LightningModule):
    """What every model shares: one ranking rule and one metric for validation and test.

    Subclasses implement `forward(batch) -> (B, n_items)` scores over every item id.
    Evaluation ranks `ranked(batch)`: those scores with padding and unknown never
    recommended and the input's last product ranked last (it is never the target,
    DESIGN.md), the same rule for every model.
    """

    def __init__(self):
        super().__init__()
        self.val_metrics = RankingMetrics()
        self.test_metrics = RankingMetrics()

    def _log_eval(self, stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        values = metrics.compute()
        self.log_dict({f"{stage}/{name}": v for name, v in values.items()})
        metrics.reset()

    def ranked(self, batch: dict[str, torch.Tensor],
               scores: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_items) the scores evaluation ranks (`forward`'s unless given), rule applied."""
        scores = self(batch) if scores is None else scores
        return exclude_last_(mask_special_(scores), batch)

    def validation_step(self, batch, batch_idx):
        self.val_metrics.update(self.ranked(batch), batch["target"])

    def test_step(self, batch, batch_idx):
        self.test_metrics.update(self.ranked(batch), batch["target"])

    def on_validation_epoch_end(self):
        self._log_eval("val")

    def on_test_epoch_end(self):
        self._log_eval("test")


class FitFromData(Recommender):
    """A model fitted from the training split in one call, outside Lightning's training loop.

    `src/train.py` calls `fit(dm)` instead of `trainer.fit`, then validates and tests once.
    Everything `fit` learns lives in buffers or parameters whose shapes follow from the
    constructor's arguments, so a saved checkpoint reloads with `load_from_checkpoint`.
    """

    def fit(self, dm) -> None:
        """Learn from `dm.prepared.splits["train"]` (a set-up `MicroDataModule`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement fit(dm)")
