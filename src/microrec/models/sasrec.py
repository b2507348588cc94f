"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the input, learned positions."""

from __future__ import annotations

import torch
from torch import nn

from microrec.data.schema import PAD
from microrec.errors import ConfigError
from microrec.models.embedding import MicroEmbedding
from microrec.models.neural import NeuralRecommender, last_state


class Block(nn.Module):
    """One self-attention block: g(x) = x + Dropout(g(LayerNorm(x))) for attention, then FFN.

    Attention is the paper's: heads of softmax(Q K^T / sqrt(d)) V, concatenated (no output
    projection); the feed-forward network is ReLU(x W_1 + b_1) W_2 + b_2.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # W^Q, W^K, W^V
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape  # batch, time, channels
        qkv = self.qkv(self.attn_norm(x)).view(B, T, 3, self.n_heads, C // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, C / heads)
        return q, k, v

    def weights(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """(B, heads, T, T) attention of each query position over the key positions."""
        q, k, _ = self._heads(x)
        e = q @ k.transpose(-1, -2) * q.size(-1) ** -0.5  # (B, heads, T, T)
        # the future and padding must not get attention: exactly zero weight
        return torch.softmax(e.masked_fill(~allowed[:, None], float("-inf")), dim=-1)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self._heads(x)
        att = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        x = x + self.dropout(att.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
        return x + self.dropout(self.ffn(self.ffn_norm(x)))  # (B, T, C)


class SASRec(NeuralRecommender):
    """Self-attentive sequential recommendation, scored at the input's last position.

    The embedded micro-behaviors (projected to `item_dim` when side channels are concatenated)
    plus a learned position embedding pass through `n_blocks` causal self-attention blocks
    and a final layer norm; the last real position's output is scored against the input's
    product table. Positions count back from the last real micro-behavior (0 = most recent),
    as left padding to a fixed length does in the authors' code, so a right-padded input
    scores the same whatever the batch's longest input.

    Args:
        n_items, n_activities, n_dwell: vocabulary sizes (from the data).
        n_categories: category vocabulary size (from the data; a `_cat` variant only).
        features: sku | sku_act | sku_dwell | full (the shared `MicroEmbedding`).
        item_dim: the model width d (product embeddings and every block).
        activity_dim, dwell_dim, category_dim: side-channel embedding sizes.
        max_len: the longest input (learned positions); the data module's `max_len`.
        n_blocks, n_heads: self-attention blocks and heads per block.
        dropout: on the embeddings, inside and after each sublayer.
        init, w2v_window, w2v_epochs: random or word2vec embedding tables.
        lr, weight_decay: Adam.
        loss, n_negatives: full softmax, or sampled as RIB's.
    """

    def __init__(
        self,
        n_items: int,
        n_activities: int,
        n_dwell: int,
        n_categories: int = 0,
        features: str = "sku",
        item_dim: int = 50,
        activity_dim: int = 16,
        dwell_dim: int = 16,
        category_dim: int = 16,
        max_len: int = 50,
        n_blocks: int = 2,
        n_heads: int = 1,
        dropout: float = 0.2,
        init: str = "random",
        w2v_window: int = 5,
        w2v_epochs: int = 5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        loss: str = "full",
        n_negatives: int = 2048,
    ):
        super().__init__(loss, init)
        if item_dim % n_heads:
            raise ConfigError(f"item_dim {item_dim} must be a multiple of n_heads {n_heads}.")
        self.save_hyperparameters()
        self.embed = MicroEmbedding(n_items, n_activities, n_dwell, features, item_dim,
                                    activity_dim, dwell_dim, dropout, sparse=self.sampled,
                                    n_categories=n_categories, category_dim=category_dim)
        self.proj = nn.Linear(self.embed.dim, item_dim) if self.embed.dim != item_dim else None
        self.position = nn.Embedding(max_len, item_dim)
        # unit-variance rows would make the first logits ~ sqrt(d) (the products are scored
        # against this table): std d^-1/2 starts them near 1 and trains far faster
        with torch.no_grad():
            for table in (self.embed.item, self.position):
                table.weight.normal_(std=item_dim ** -0.5)
            self.embed.item.weight[PAD] = 0.0
        self.blocks = nn.ModuleList(Block(item_dim, n_heads, dropout) for _ in range(n_blocks))
        self.norm = nn.LayerNorm(item_dim)

    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The first block's input (B, T, d) and which keys each query may see (B, T, T)."""
        length = batch["length"]  # (B,)
        T = batch["item"].size(1)
        if T > self.hparams.max_len:
            raise ConfigError(f"an input of {T} micro-behaviors is longer than this SASRec's "
                              f"max_len={self.hparams.max_len}; use data.max_len <= max_len.")
        x = self.embed(batch)  # (B, T, E)
        if self.proj is not None:
            x = self.proj(x)  # (B, T, d)
        steps = torch.arange(T, device=x.device)  # (T,)
        position = (length[:, None] - 1 - steps).clamp(min=0)  # (B, T), 0 = the last real one
        x = x + self.position(position)  # (B, T, d)
        real = batch["item"] != PAD  # (B, T)
        causal = steps[None, :] <= steps[:, None]  # (T, T): query i sees keys j <= i
        return x, causal[None] & real[:, None, :]  # (B, T, d), (B, T, T)

    def attention_weights(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Each block's (B, heads, T, T) attention weights."""
        x, allowed = self.inputs(batch)
        weights = []
        for block in self.blocks:
            weights.append(block.weights(x, allowed))
            x = block(x, allowed)
        return weights

    def query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, allowed = self.inputs(batch)
        for block in self.blocks:
            x = block(x, allowed)  # (B, T, d)
        return self.norm(last_state(x, batch["length"]))  # (B, d)

    def output_tables(self) -> tuple[nn.Embedding, None]:
        return self.embed.item, None
