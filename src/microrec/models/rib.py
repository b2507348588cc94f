"""RIB (Zhou et al., WSDM 2018): micro-behavior embeddings -> RNN -> attention -> softmax."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from microrec.errors import ConfigError
from microrec.models.base import Recommender, mask_special
from microrec.schema import NUM_SPECIAL, PAD, channels

log = logging.getLogger(__name__)

ENCODERS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
INITS = ("word2vec", "random")


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
        lr, weight_decay: Adam settings.
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
    ):
        super().__init__()
        if encoder not in ENCODERS:
            raise ConfigError(f"unknown encoder '{encoder}': choose one of {', '.join(ENCODERS)}.")
        if init not in INITS:
            raise ConfigError(f"unknown init '{init}': choose word2vec or random.")
        self.save_hyperparameters()
        self.channels = channels(features)
        self.item_emb = nn.Embedding(n_items, item_dim, padding_idx=PAD)
        self.activity_emb = (nn.Embedding(n_activities, activity_dim, padding_idx=PAD)
                             if "activity" in self.channels else None)
        self.dwell_emb = (nn.Embedding(n_dwell, dwell_dim, padding_idx=PAD)
                          if "dwell" in self.channels else None)
        input_size = item_dim + (activity_dim if self.activity_emb is not None else 0) \
            + (dwell_dim if self.dwell_emb is not None else 0)
        self.rnn = ENCODERS[encoder](input_size, hidden_size, batch_first=True)
        self.attention = Attention(hidden_size, attention_size) if attention else None
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, n_items)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.init == "word2vec":
            self.load_word2vec(self.trainer.datamodule)

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

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.out(self.dropout(self.pooled(batch)))  # (B, n_items)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return mask_special(self.logits(batch))  # (B, n_items)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self.logits(batch), batch["target"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["target"].numel())
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self.logits(batch)  # (B, n_items)
        known = batch["target"] >= NUM_SPECIAL
        if known.any():
            loss = F.cross_entropy(logits[known], batch["target"][known])
            self.log("val/loss", loss, batch_size=int(known.sum()))
        self.val_metrics.update(mask_special(logits), batch["target"])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
