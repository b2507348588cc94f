"""The micro-behavior embedding block every neural model reads its input through."""

from __future__ import annotations

import logging

import torch
from torch import nn

from microrec.data.schema import NUM_SPECIAL, PAD, channels
from microrec.errors import ConfigError

log = logging.getLogger(__name__)


class MicroEmbedding(nn.Module):
    """concat(W_P p, W_A a, W_D d[, W_C c]) of each micro-behavior, over the channels
    `features` uses.

    RIB's input layer (the paper's Section 4), shared by every neural model so that
    `features=sku|sku_act|sku_dwell|full` asks the same question of each architecture; a
    `_cat` variant adds the product's category c as a fourth channel.

    Args:
        n_items, n_activities, n_dwell: vocabulary sizes (from the data).
        n_categories: the category vocabulary's size; needed only by a `_cat` variant.
        features: sku | sku_act | sku_dwell | full, or one of them + `_cat`: which tables
            are concatenated.
        item_dim, activity_dim, dwell_dim, category_dim: embedding size per channel.
        dropout: on the concatenation.
        sparse: the product table gets sparse gradients (a sampled loss updates few rows).
    """

    def __init__(self, n_items: int, n_activities: int, n_dwell: int, features: str = "full",
                 item_dim: int = 64, activity_dim: int = 16, dwell_dim: int = 16,
                 dropout: float = 0.1, sparse: bool = False, n_categories: int = 0,
                 category_dim: int = 16):
        super().__init__()
        self.channels = channels(features)
        if "category" in self.channels and n_categories <= NUM_SPECIAL:
            raise ConfigError(f"features={features} reads product categories, but the model "
                              "was built without any (n_categories).")
        self.item = nn.Embedding(n_items, item_dim, padding_idx=PAD, sparse=sparse)
        self.activity = (nn.Embedding(n_activities, activity_dim, padding_idx=PAD)
                         if "activity" in self.channels else None)
        self.dwell = (nn.Embedding(n_dwell, dwell_dim, padding_idx=PAD)
                      if "dwell" in self.channels else None)
        self.category = (nn.Embedding(n_categories, category_dim, padding_idx=PAD)
                         if "category" in self.channels else None)
        self.dropout = nn.Dropout(dropout)
        self.dim = sum(t.embedding_dim for t in self.tables().values())  # E

    def tables(self) -> dict[str, nn.Embedding]:
        """The tables in use, by the batch key (and word2vec channel) they embed."""
        tables = {"item": self.item, "activity": self.activity, "dwell": self.dwell,
                  "category": self.category}
        return {name: t for name, t in tables.items() if t is not None}

    def load_word2vec(self, dm, window: int, epochs: int) -> None:
        """Copy gensim vectors trained on `dm`'s training split into every table in use."""
        for channel, table in self.tables().items():
            vectors = dm.word2vec(channel, table.embedding_dim, window, epochs)
            with torch.no_grad():
                table.weight.copy_(torch.from_numpy(vectors))
        log.info("embeddings initialised from word2vec (%s)", ", ".join(self.tables()))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, E) the embedded micro-behaviors, dropout applied; padding embeds as zero."""
        parts = [table(batch[name]) for name, table in self.tables().items()]  # (B, T, E_c)
        return self.dropout(torch.cat(parts, dim=-1))  # (B, T, E)
