"""What the models trained by Lightning share: initialisation, losses and optimizers."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from microrec.data.schema import NUM_SPECIAL
from microrec.errors import ConfigError
from microrec.models.base import Recommender, full_precision, mask_special_, stop_if_diverged

INITS = ("word2vec", "random")
LOSSES = ("full", "sampled")
NEGATIVE_POWER = 0.75  # negatives drawn with probability ~ (training target count + 1) ** 0.75


def sampled_softmax_loss(h: torch.Tensor, out_weight: nn.Embedding, out_bias: nn.Embedding | None,
                         target: torch.Tensor, negatives: torch.Tensor, log_q: torch.Tensor,
                         exclude: torch.Tensor | None = None, offset: torch.Tensor | None = None,
                         reduction: str = "mean") -> torch.Tensor:
    """Softmax cross-entropy over each target and K negatives shared by the batch.

    Logits are corrected by log(K q(i)), q the sampling distribution (logQ correction), so
    the loss estimates the full softmax; a negative equal to the row's target is removed,
    and so is every negative `exclude` (B, K) marks (products outside that row's softmax).
    `offset` (B, 1 + K): scores added to the target's (column 0) and each negative's
    corrected logit (another expert's).
    The output rows are looked up through the tables' forward, so sparse tables get sparse
    gradients. h: (B, H); target: (B,); negatives: (K,); log_q: (N,) log probabilities;
    out_bias None: the output layer has no bias.
    """
    k = negatives.numel()
    pos = (h * out_weight(target)).sum(-1)  # (B,)
    neg = h @ out_weight(negatives).T  # (B, K)
    if out_bias is not None:
        pos = pos + out_bias(target).squeeze(-1)
        neg = neg + out_bias(negatives).squeeze(-1)
    pos = pos - log_q[target] - math.log(k)
    neg = neg - log_q[negatives] - math.log(k)
    hits = negatives[None, :] == target[:, None]  # (B, K)
    neg = neg.masked_fill(hits if exclude is None else hits | exclude, float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1)  # (B, 1 + K), the target is column 0
    if offset is not None:
        logits = logits + offset
    return F.cross_entropy(logits, torch.zeros_like(target), reduction=reduction)


def last_state(h: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """(B, H) each row's state at its last real position (inputs are right-padded)."""
    last = (length - 1).clamp(min=0)  # (B,)
    return h[torch.arange(h.size(0), device=h.device), last]  # (B, H)


class NeuralRecommender(Recommender):
    """A recommender trained by Lightning: the full softmax over the catalogue, or its sampled
    estimate (`loss=sampled`).

    A subclass builds `self.embed` (a `MicroEmbedding`), calls `save_hyperparameters()` with
    `init`, `w2v_window`, `w2v_epochs`, `lr`, `weight_decay` among its arguments, and
    implements `query(batch) -> (B, D)` and `output_tables()`: scores are
    `query . W_j (+ b_j)`. `loss=sampled` (popularity-sampled negatives shared by the batch,
    logQ-corrected, sparse updates of the product tables) needs the arguments `loss` and
    `n_negatives`. A model whose scores are not such a product overrides `logits` and the
    two loss methods instead. Under `trainer.precision=bf16-mixed` training steps run in
    Lightning's autocast; validation scores in fp32 (`full_precision`), as every evaluation.
    """

    def __init__(self, loss: str = "full", init: str = "random"):
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss '{loss}': choose full or sampled.")
        if init not in INITS:
            raise ConfigError(f"unknown init '{init}': choose word2vec or random.")
        self.sampled = loss == "sampled"
        self.automatic_optimization = not self.sampled  # two optimizers: Adam and SparseAdam
        self.register_buffer("log_q", torch.zeros(0), persistent=False)

    # -- what a subclass provides --------------------------------------------------------
    def query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) the vector the output tables score."""
        raise NotImplementedError

    def output_tables(self) -> tuple[nn.Embedding, nn.Embedding | None]:
        """(N, D) output weights and (N, 1) biases (None: no bias)."""
        raise NotImplementedError

    # -- scores and losses ----------------------------------------------------------------
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, N) unnormalised scores of every item id."""
        weight, bias = self.output_tables()
        scores = self.query(batch) @ weight.weight.T  # (B, N)
        return scores if bias is None else scores + bias.weight.T

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return mask_special_(self.logits(batch))  # (B, N)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean full-softmax cross-entropy of the batch's targets."""
        return F.cross_entropy(self.logits(batch), batch["target"])

    def sampled_loss(self, batch: dict[str, torch.Tensor], negatives: torch.Tensor) -> torch.Tensor:
        """The sampled-softmax estimate of `training_loss` with the negatives (K,)."""
        return sampled_softmax_loss(self.query(batch), *self.output_tables(), batch["target"],
                                    negatives, self.log_q)

    def score_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The same loss from `logits(batch)` already computed (validation reuses them)."""
        return F.cross_entropy(logits, target)

    # -- Lightning ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if stage != "fit" or dm is None:  # without a data module the caller prepares these
            return
        if self.hparams.init == "word2vec":
            self.load_word2vec(dm)
        if self.sampled:
            self.set_sampling(dm.prepared.splits["train"].target)

    def load_word2vec(self, dm) -> None:
        """Initialise the embedding tables from word2vec on `dm`'s training split."""
        self.embed.load_word2vec(dm, self.hparams.w2v_window, self.hparams.w2v_epochs)

    def set_sampling(self, train_targets: np.ndarray) -> None:
        """Negative sampling distribution from the training targets' popularity."""
        n_items = self.embed.item.num_embeddings
        counts = np.bincount(train_targets, minlength=n_items).astype(np.float64)
        q = (counts + 1.0) ** NEGATIVE_POWER
        q[:NUM_SPECIAL] = 0.0  # padding and unknown are never negatives
        q = torch.as_tensor(q / q.sum(), dtype=torch.float32, device=self.log_q.device)
        self.log_q = torch.log(q.clamp(min=1e-30))  # (N,)

    def training_step(self, batch, batch_idx):
        target = batch["target"]  # (B,)
        if self.automatic_optimization:
            loss = self.training_loss(batch)
        else:
            negatives = torch.multinomial(self.log_q.exp(), self.hparams.n_negatives,
                                          replacement=True)  # (K,)
            loss = self.sampled_loss(batch, negatives)
        stop_if_diverged(loss, self.current_epoch, self.global_step, self.hparams.lr)
        if not self.automatic_optimization:
            optimizers = self.optimizers()
            for opt in optimizers:
                opt.zero_grad()
            self.manual_backward(loss)
            for opt in optimizers:
                opt.step()
        self.log("train/loss", loss, prog_bar=True, batch_size=target.numel())
        return loss

    def validation_step(self, batch, batch_idx):
        with full_precision(self.device):  # ranked and scored in fp32 under any precision
            logits = self.logits(batch)  # (B, N)
        known = batch["target"] >= NUM_SPECIAL
        if known.any():
            loss = self.score_loss(logits[known], batch["target"][known])
            self.log("val/loss", loss, batch_size=int(known.sum()), sync_dist=True)
        self.evaluate(batch, "val", logits)

    def configure_optimizers(self):
        hp = self.hparams
        if self.automatic_optimization:
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        weight, bias = self.output_tables()
        sparse = list({id(p): p for p in (self.embed.item.weight, weight.weight,
                                          *([bias.weight] if bias is not None else []))}.values())
        ids = {id(p) for p in sparse}
        dense = [p for p in self.parameters() if id(p) not in ids]
        return [torch.optim.Adam(dense, lr=hp.lr, weight_decay=hp.weight_decay),
                torch.optim.SparseAdam(sparse, lr=hp.lr)]
