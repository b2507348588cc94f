"""NARM (Li et al., CIKM 2017): a GRU, attention from its last state, a bilinear decoder."""

from __future__ import annotations

import torch
from torch import nn

from microrec.data.schema import PAD
from microrec.models.embedding import MicroEmbedding
from microrec.models.neural import NeuralRecommender, last_state


class NARMAttention(nn.Module):
    """The local encoder: a_j = v^T sigmoid(A_1 h_t + A_2 h_j), c_l = sum_j a_j h_j.

    As in the paper the weights are not normalised (no softmax); padded positions get
    exactly zero.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.a1 = nn.Linear(hidden_size, hidden_size, bias=False)  # A_1, applied to the query h_t
        self.a2 = nn.Linear(hidden_size, hidden_size, bias=False)  # A_2, applied to each h_j
        self.v = nn.Linear(hidden_size, 1, bias=False)

    def weights(self, h: torch.Tensor, query: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) weights of the states h (B, T, H) for the query (B, H); zero on padding."""
        e = torch.sigmoid(self.a1(query)[:, None, :] + self.a2(h))  # (B, T, H)
        return self.v(e).squeeze(-1).masked_fill(~mask, 0.0)  # padding must not count

    def forward(self, h: torch.Tensor, query: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.weights(h, query, mask)  # (B, T)
        return torch.bmm(a.unsqueeze(1), h).squeeze(1)  # (B, H)


class NARM(NeuralRecommender):
    """Neural Attentive Recommendation Machine.

    One GRU over the embedded micro-behaviors; c = [h_t; c_l] (global: the last state h_t,
    local: attention over every state with h_t as the query); score(j) = emb_j^T B c, with
    emb the input's product table (a bilinear decoder, no separate output layer).

    Args:
        n_items, n_activities, n_dwell: vocabulary sizes (from the data).
        n_categories: category vocabulary size (from the data; a `_cat` variant only).
        features: sku | sku_act | sku_dwell | full (the shared `MicroEmbedding`).
        item_dim, activity_dim, dwell_dim, category_dim: embedding size per channel.
        hidden_size: GRU state size.
        emb_dropout: on the embeddings (the paper's 0.25).
        ct_dropout: on c, before the bilinear decoder (the paper's 0.5).
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
        hidden_size: int = 100,
        emb_dropout: float = 0.25,
        ct_dropout: float = 0.5,
        init: str = "random",
        w2v_window: int = 5,
        w2v_epochs: int = 5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        loss: str = "full",
        n_negatives: int = 2048,
    ):
        super().__init__(loss, init)
        self.save_hyperparameters()
        self.embed = MicroEmbedding(n_items, n_activities, n_dwell, features, item_dim,
                                    activity_dim, dwell_dim, emb_dropout, sparse=self.sampled,
                                    n_categories=n_categories, category_dim=category_dim)
        self.gru = nn.GRU(self.embed.dim, hidden_size, batch_first=True)
        self.attention = NARMAttention(hidden_size)
        self.ct_dropout = nn.Dropout(ct_dropout)
        self.bilinear = nn.Linear(2 * hidden_size, item_dim, bias=False)  # B, as B c

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """GRU states (B, T, H) and the last real state (B, H)."""
        h, _ = self.gru(self.embed(batch))  # (B, T, H); right padding keeps real states exact
        return h, last_state(h, batch["length"])

    def attention_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) the local encoder's weight of each input micro-behavior."""
        h, last = self.encode(batch)
        return self.attention.weights(h, last, batch["item"] != PAD)

    def query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h, last = self.encode(batch)
        local = self.attention(h, last, batch["item"] != PAD)  # (B, H)
        c = self.ct_dropout(torch.cat([last, local], dim=-1))  # (B, 2H)
        return self.bilinear(c)  # (B, E_item): scores are emb_j . (B c)

    def output_tables(self) -> tuple[nn.Embedding, None]:
        return self.embed.item, None
