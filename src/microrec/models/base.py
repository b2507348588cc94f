"""What every recommender shares: scoring a batch and evaluating it by full ranking."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as L
import torch

from microrec.data.protocol import SplitArrays
from microrec.data.schema import NUM_SPECIAL
from microrec.errors import Diverged
from microrec.metrics import K
from microrec.models.ranking import RankingMetrics, target_rank

TOP = K  # products kept per example in the per-example results (predictions.parquet)


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


def full_precision(device: torch.device):
    """A context with autocast off on `device`: evaluation scores in fp32 whatever
    `trainer.precision` is.

    Lightning's mixed precision (`bf16-mixed`, `16-mixed`) runs validation and test steps
    under autocast too, where every matrix product rounds its output to 16 bits: bf16 keeps 8
    significant bits, so among 115k products many scores tie, ties count against the target,
    and a cast to fp32 afterwards cannot undo the rounding. The weights are fp32 in every
    precision, so scoring outside autocast ranks exactly what a fp32 run would.
    """
    return torch.autocast(device.type, enabled=False)


def stop_if_diverged(loss: torch.Tensor, epoch: int, step: int, lr: float) -> None:
    """Stop training at a NaN or infinite loss, before the optimizer steps: the weights, and
    so every metric after, would mean nothing (and a tuning study would keep the trial)."""
    if not torch.isfinite(loss):
        raise Diverged(f"the training loss is {loss.item()} at epoch {epoch}, step {step}: the "
                       f"model diverged; lower model.lr (now {lr:g}) or check the data.")


def top_items(scores: torch.Tensor, k: int = TOP) -> torch.Tensor:
    """(B, k) the k best-scoring ids of each row, best first; equal scores in id order.

    The tie order is fixed (lowest id first, also at the cut), so the list depends only on
    the scores, not on how topk breaks ties on a given device or batch.
    """
    k = min(k, scores.size(1))
    kth = scores.topk(k, dim=1).values[:, -1:]  # (B, 1) the k-th best score
    above = scores > kth  # (B, N)
    tied = scores == kth  # (B, N)
    room = k - above.sum(1, keepdim=True)  # (B, 1) places left for the tied ids
    chosen = above | (tied & (tied.cumsum(1) <= room))  # (B, N), exactly k per row
    ids = chosen.nonzero()[:, 1].view(-1, k)  # (B, k) in id order
    order = scores.gather(1, ids).argsort(dim=1, descending=True, stable=True)  # (B, k)
    return ids.gather(1, order)


def example_results(batch: dict[str, torch.Tensor], scores: torch.Tensor) -> dict:
    """Per-example results of one batch from the scores evaluation ranks, as numpy arrays.

    example: index in the split; rank: `target_rank` (N + 1 for an unknown target); repeat:
    the (known) target occurs in the model's input; length: input micro-behaviors; top:
    (B, TOP) best ids (`top_items`).
    """
    target = batch["target"]  # (B,)
    known = target >= NUM_SPECIAL
    repeat = known & (batch["item"] == target[:, None]).any(1)  # (B,)
    out = {"example": batch["index"], "rank": target_rank(scores, target), "repeat": repeat,
           "length": batch["length"], "top": top_items(scores)}
    return {name: t.cpu().numpy() for name, t in out.items()}


def gather_results(parts: list[dict]) -> dict[str, np.ndarray]:
    """This process's batches of `example_results`, joined with every other DDP process's
    and put in example order (each example is evaluated by exactly one process)."""
    local = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shards = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shards, local)  # uneven shards: plain objects
        local = {name: np.concatenate([s[name] for s in shards]) for name in local}
    order = np.argsort(local["example"], kind="stable")
    return {name: a[order] for name, a in local.items()}


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

    For the stages named in `keep_predictions` ("val", "test"; `train()` sets it before
    the final evaluation) the per-example results of those same scores are kept too: after
    the epoch, `predictions[stage]` holds them for the whole split, on every process.
    """

    def __init__(self):
        super().__init__()
        self.val_metrics = RankingMetrics()
        self.test_metrics = RankingMetrics()
        self.keep_predictions: set[str] = set()
        self.predictions: dict[str, dict[str, np.ndarray]] = {}
        self._kept: dict[str, list[dict]] = {}

    def evaluate(self, batch: dict[str, torch.Tensor], stage: str,
                 scores: torch.Tensor | None = None) -> None:
        """Rank one validation or test batch (`forward`'s scores unless given)."""
        scores = self.ranked(batch, scores)  # (B, n_items)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(scores, batch["target"])
        if stage in self.keep_predictions:
            self._kept.setdefault(stage, []).append(example_results(batch, scores))

    def _log_eval(self, stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        values = metrics.compute()
        self.log_dict({f"{stage}/{name}": v for name, v in values.items()})
        metrics.reset()
        parts = self._kept.pop(stage, [])
        if stage in self.keep_predictions and parts:  # every process has at least one batch
            self.predictions[stage] = gather_results(parts)

    def ranked(self, batch: dict[str, torch.Tensor],
               scores: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_items) fp32 scores evaluation ranks (`forward`'s unless given), rule applied.

        `forward` runs outside autocast (`full_precision`); given scores are cast to fp32. A
        non-finite score (a diverged model's NaN) becomes -inf, ranked after every finite
        one, so the top lists and recommendations stay defined; `target_rank` counts such a
        target as a miss.
        """
        if scores is None:
            with full_precision(self.device):
                scores = self(batch)
        scores = scores.float().nan_to_num_(nan=float("-inf"), posinf=float("-inf"))
        return exclude_last_(mask_special_(scores), batch)

    def validation_step(self, batch, batch_idx):
        self.evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self.evaluate(batch, "test")

    def on_validation_epoch_end(self):
        self._log_eval("val")

    def on_test_epoch_end(self):
        self._log_eval("test")


class FitFromData(Recommender):
    """A model fitted from the training split in one call, outside Lightning's training loop.

    `runs.train.fit_and_evaluate` calls `fit(dm)` instead of `trainer.fit`, then validates
    and tests once.
    Everything `fit` learns lives in buffers or parameters whose shapes follow from the
    constructor's arguments, so a saved checkpoint reloads with `load_from_checkpoint`.
    """

    def fit(self, dm) -> None:
        """Learn from `dm.prepared.splits["train"]` (a set-up `MicroDataModule`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement fit(dm)")
