"""RIB (Zhou et al., WSDM 2018): micro-behavior embeddings -> RNN -> attention -> softmax."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from microrec.errors import ConfigError
from microrec.models.base import Recommender, mask_special_
from microrec.schema import NUM_SPECIAL, PAD, channels

log = logging.getLogger(__name__)

ENCODERS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
INITS = ("word2vec", "random")
LOSSES = ("full", "sampled")
NEGATIVE_POWER = 0.75  # negatives drawn with probability ~ (training target count + 1) ** 0.75


def sampled_softmax_loss(h: torch.Tensor, out_weight: nn.Embedding, out_bias: nn.Embedding,
                         target: torch.Tensor, negatives: torch.Tensor,
                         log_q: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over each target and K negatives shared by the batch.

    Logits are corrected by log(K q(i)), q the sampling distribution (logQ correction), so
    the loss estimates the full softmax; a negative equal to the row's target is removed.
    The output rows are looked up through the tables' forward, so sparse tables get sparse
    gradients. h: (B, H); target: (B,); negatives: (K,); log_q: (N,) log probabilities.
    """
    k = negatives.numel()
    pos = (h * out_weight(target)).sum(-1) + out_bias(target).squeeze(-1)  # (B,)
    neg = h @ out_weight(negatives).T + out_bias(negatives).squeeze(-1)  # (B, K)
    pos = pos - log_q[target] - math.log(k)
    neg = neg - log_q[negatives] - math.log(k)
    neg = neg.masked_fill(negatives[None, :] == target[:, None], float("-inf"))  # hits
    logits = torch.cat([pos[:, None], neg], dim=1)  # (B, 1 + K), the target is column 0
    return F.cross_entropy(logits, torch.zeros_like(target))


class Attention(nn.Module):
    """The paper's pooling: M = tanh(W_m h + b_m), att = softmax(W_a M + b_a), out = sum att h."""

    def __init__(self, hidden_size: int, attention_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, attention_size)  # W_m, b_m
        self.score = nn.Linear(attention_size, 1)  # W_a, b_a

    def weights(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) attention weights; padded positions get exactly zero."""
        e = self.score(torch.tanh(self.proj(h))).squeeze(-1)  # (B, T)
        e = e.masked_fill(~mask, float("-inf"))  # padding must not get attention
        return torch.softmax(e, dim=1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        att = self.weights(h, mask)  # (B, T)
        return torch.bmm(att.unsqueeze(1), h).squeeze(1)  # (B, H)


class RIB(Recommender):
    """The RIB recommender.

    Args:
        n_items, n_activities, n_dwell: vocabulary sizes (from the data, never from yaml).
        features: sku | sku_act | sku_dwell | full: which embeddings are concatenated.
        encoder: gru | lstm | rnn.
        attention: attention pooling if true, else the last hidden state.
        item_dim, activity_dim, dwell_dim: embedding size per channel.
        hidden_size, attention_size: RNN state and attention projection sizes.
        dropout: on the concatenated embeddings and on the pooled state.
        init: word2vec (gensim vectors of the training split) or random.
        w2v_window, w2v_epochs: word2vec settings when init=word2vec.
        lr, weight_decay: Adam settings (weight decay applies to the dense parameters).
        loss: full (softmax over every product) or sampled (n_negatives popularity-sampled
            negatives shared by the batch, logQ-corrected; the product tables then get
            sparse gradients and SparseAdam). Evaluation always ranks every product.
    """

    def __init__(
        self,
        n_items: int,
        n_activities: int,
        n_dwell: int,
        features: str = "full",
        encoder: str = "gru",
        attention: bool = True,
        item_dim: int = 64,
        activity_dim: int = 16,
        dwell_dim: int = 16,
        hidden_size: int = 100,
        attention_size: int = 64,
        dropout: float = 0.1,
        init: str = "word2vec",
        w2v_window: int = 5,
        w2v_epochs: int = 5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        loss: str = "full",
        n_negatives: int = 2048,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss '{loss}': choose full or sampled.")
        if encoder not in ENCODERS:
            raise ConfigError(f"unknown encoder '{encoder}': choose one of {', '.join(ENCODERS)}.")
        if init not in INITS:
            raise ConfigError(f"unknown init '{init}': choose word2vec or random.")
        self.save_hyperparameters()
        self.channels = channels(features)
        sparse = loss == "sampled"  # only the sampled rows of the product tables change
        self.automatic_optimization = not sparse  # two optimizers: Adam and SparseAdam
        self.item_emb = nn.Embedding(n_items, item_dim, padding_idx=PAD, sparse=sparse)
        self.activity_emb = (nn.Embedding(n_activities, activity_dim, padding_idx=PAD)
                             if "activity" in self.channels else None)
        self.dwell_emb = (nn.Embedding(n_dwell, dwell_dim, padding_idx=PAD)
                          if "dwell" in self.channels else None)
        input_size = item_dim + (activity_dim if self.activity_emb is not None else 0) \
            + (dwell_dim if self.dwell_emb is not None else 0)
        self.rnn = ENCODERS[encoder](input_size, hidden_size, batch_first=True)
        self.attention = Attention(hidden_size, attention_size) if attention else None
        self.dropout = nn.Dropout(dropout)
        # output layer as tables so that a sampled loss can update rows sparsely
        self.out_weight = nn.Embedding(n_items, hidden_size, sparse=sparse)
        self.out_bias = nn.Embedding(n_items, 1, sparse=sparse)
        nn.init.uniform_(self.out_weight.weight, -hidden_size ** -0.5, hidden_size ** -0.5)
        nn.init.zeros_(self.out_bias.weight)
        self.register_buffer("log_q", torch.zeros(n_items), persistent=False)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if stage != "fit" or dm is None:  # without a data module the caller prepares these
            return
        if self.hparams.init == "word2vec":
            self.load_word2vec(dm)
        if self.hparams.loss == "sampled":
            self.set_sampling(dm.prepared.splits["train"].target)

    def set_sampling(self, train_targets: np.ndarray) -> None:
        """Negative sampling distribution from the training targets' popularity."""
        counts = np.bincount(train_targets, minlength=self.hparams.n_items).astype(np.float64)
        q = (counts + 1.0) ** NEGATIVE_POWER
        q[:NUM_SPECIAL] = 0.0  # padding and unknown are never negatives
        q = torch.as_tensor(q / q.sum(), dtype=torch.float32, device=self.log_q.device)
        self.log_q.copy_(torch.log(q.clamp(min=1e-30)))

    def load_word2vec(self, dm) -> None:
        """Copy gensim vectors trained on the training split into the embedding tables."""
        hp = self.hparams
        for channel, table in (("item", self.item_emb), ("activity", self.activity_emb),
                               ("dwell", self.dwell_emb)):
            if table is None:
                continue
            vectors = dm.word2vec(channel, table.embedding_dim, hp.w2v_window, hp.w2v_epochs)
            with torch.no_grad():
                table.weight.copy_(torch.from_numpy(vectors))
        log.info("embeddings initialised from word2vec")

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (B, T, H) and the real-position mask (B, T)."""
        parts = [self.item_emb(batch["item"])]  # (B, T, E_item)
        if self.activity_emb is not None:
            parts.append(self.activity_emb(batch["activity"]))  # (B, T, E_act)
        if self.dwell_emb is not None:
            parts.append(self.dwell_emb(batch["dwell"]))  # (B, T, E_dwell)
        x = self.dropout(torch.cat(parts, dim=-1))  # (B, T, E)
        h, _ = self.rnn(x)  # (B, T, H); right padding keeps real states exact
        mask = batch["item"] != PAD  # (B, T)
        return h, mask

    def attention_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) weight of each input micro-behavior (attention on only)."""
        if self.attention is None:
            raise ConfigError("this RIB model was trained with attention=off: it has no weights.")
        h, mask = self.encode(batch)
        return self.attention.weights(h, mask)

    def pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h, mask = self.encode(batch)
        if self.attention is not None:
            return self.attention(h, mask)  # (B, H)
        last = (batch["length"] - 1).clamp(min=0)  # (B,)
        return h[torch.arange(h.size(0), device=h.device), last]  # (B, H)

    def query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, H) the pooled state the output layer scores against (dropout applied)."""
        return self.dropout(self.pooled(batch))

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.query(batch)  # (B, H)
        return h @ self.out_weight.weight.T + self.out_bias.weight.T  # (B, n_items)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return mask_special_(self.logits(batch))  # (B, n_items)

    def training_step(self, batch, batch_idx):
        target = batch["target"]  # (B,)
        if self.automatic_optimization:
            loss = F.cross_entropy(self.logits(batch), target)
        else:
            negatives = torch.multinomial(self.log_q.exp(), self.hparams.n_negatives,
                                          replacement=True)  # (K,)
            loss = sampled_softmax_loss(self.query(batch), self.out_weight, self.out_bias,
                                        target, negatives, self.log_q)
            optimizers = self.optimizers()
            for opt in optimizers:
                opt.zero_grad()
            self.manual_backward(loss)
            for opt in optimizers:
                opt.step()
        self.log("train/loss", loss, prog_bar=True, batch_size=target.numel())
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self.logits(batch)  # (B, n_items)
        known = batch["target"] >= NUM_SPECIAL
        if known.any():
            loss = F.cross_entropy(logits[known], batch["target"][known])
            self.log("val/loss", loss, batch_size=int(known.sum()), sync_dist=True)
        self.evaluate(batch, "val", logits)

    def configure_optimizers(self):
        hp = self.hparams
        if self.automatic_optimization:
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        sparse = [self.item_emb.weight, self.out_weight.weight, self.out_bias.weight]
        ids = {id(p) for p in sparse}
        dense = [p for p in self.parameters() if id(p) not in ids]
        return [torch.optim.Adam(dense, lr=hp.lr, weight_decay=hp.weight_decay),
                torch.optim.SparseAdam(sparse, lr=hp.lr)]
