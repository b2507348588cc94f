"""RepeatNet (Ren et al., AAAI 2019): re-consume one of the input's products, or explore."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from microrec.data.schema import NUM_SPECIAL, PAD
from microrec.models.embedding import MicroEmbedding
from microrec.models.neural import NeuralRecommender, last_state


class AdditiveAttention(nn.Module):
    """e_j = v^T tanh(W h_j + U h_t), softmax over the real positions."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.w = nn.Linear(hidden_size, hidden_size, bias=False)
        self.u = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v = nn.Linear(hidden_size, 1, bias=False)

    def weights(self, h: torch.Tensor, query: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) weights of the states h (B, T, H) for the query (B, H); zero on padding."""
        e = self.v(torch.tanh(self.w(h) + self.u(query)[:, None, :])).squeeze(-1)  # (B, T)
        return torch.softmax(e.masked_fill(~mask, float("-inf")), dim=1)  # padding: weight 0

    def forward(self, h: torch.Tensor, query: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.weights(h, query, mask)  # (B, T)
        return torch.bmm(a.unsqueeze(1), h).squeeze(1)  # (B, H)


class RepeatNet(NeuralRecommender):
    """Repeat-explore mixture: p(j) = P(repeat) p_r(j) + P(explore) p_e(j).

    A GRU encodes the input. The mode gate is softmax(W c_re), c_re an attention pooling of
    the states with the last state as query. The repeat decoder puts an attention
    distribution over the input's positions and sums the positions of each product: p_r is
    zero outside the input. The explore decoder is a softmax of W_e [h_t; c_e] over the
    products not in the input (c_e another attention pooling). `forward` returns log p(j)
    (padding and unknown masked), so ranking is by probability; training minimises
    -log p(target).

    Args:
        n_items, n_activities, n_dwell: vocabulary sizes (from the data).
        n_categories: category vocabulary size (from the data; a `_cat` variant only).
        features: sku | sku_act | sku_dwell | full (the shared `MicroEmbedding`).
        item_dim, activity_dim, dwell_dim, category_dim: embedding size per channel.
        hidden_size: GRU state size.
        dropout: on the embeddings.
        init, w2v_window, w2v_epochs: random or word2vec embedding tables.
        lr, weight_decay: Adam. Full softmax only: the explore softmax excludes each input's
            own products, which a batch-shared sample of negatives does not express.
    """

    def __init__(
        self,
        n_items: int,
        n_activities: int,
        n_dwell: int,
        n_categories: int = 0,
        features: str = "sku",
        item_dim: int = 100,
        activity_dim: int = 16,
        dwell_dim: int = 16,
        category_dim: int = 16,
        hidden_size: int = 100,
        dropout: float = 0.25,
        init: str = "random",
        w2v_window: int = 5,
        w2v_epochs: int = 5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ):
        super().__init__("full", init)
        self.save_hyperparameters()
        self.embed = MicroEmbedding(n_items, n_activities, n_dwell, features, item_dim,
                                    activity_dim, dwell_dim, dropout,
                                    n_categories=n_categories, category_dim=category_dim)
        self.gru = nn.GRU(self.embed.dim, hidden_size, batch_first=True)
        self.mode_attention = AdditiveAttention(hidden_size)
        self.mode = nn.Linear(hidden_size, 2, bias=False)  # [repeat, explore]
        self.repeat_attention = AdditiveAttention(hidden_size)
        self.explore_attention = AdditiveAttention(hidden_size)
        self.explore = nn.Linear(2 * hidden_size, n_items, bias=False)  # W_e

    def parts(self, batch: dict[str, torch.Tensor]):
        """log P(mode) (B, 2), repeat weights per position (B, T), explore logits (B, N).

        The explore logits are -inf on padding, unknown and the input's own products.
        """
        item = batch["item"]  # (B, T)
        h, _ = self.gru(self.embed(batch))  # (B, T, H); right padding keeps real states exact
        last = last_state(h, batch["length"])  # (B, H)
        mask = item != PAD  # (B, T)
        log_mode = F.log_softmax(self.mode(self.mode_attention(h, last, mask)), dim=-1)  # (B, 2)
        repeat = self.repeat_attention.weights(h, last, mask)  # (B, T)
        c = torch.cat([last, self.explore_attention(h, last, mask)], dim=-1)  # (B, 2H)
        explore = self.explore(c).scatter_(1, item, float("-inf"))  # (B, N): not the input's
        explore[:, :NUM_SPECIAL] = float("-inf")  # never padding or unknown
        return log_mode, repeat, explore

    def attention_weights(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """(B, T) weights of the mode, repeat and explore attentions."""
        h, _ = self.gru(self.embed(batch))
        last = last_state(h, batch["length"])
        mask = batch["item"] != PAD
        return {name: att.weights(h, last, mask) for name, att in (
            ("mode", self.mode_attention), ("repeat", self.repeat_attention),
            ("explore", self.explore_attention))}

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, N) log p(j) over every item id."""
        item = batch["item"]  # (B, T)
        log_mode, repeat, explore = self.parts(batch)
        p_repeat = torch.zeros_like(explore).scatter_add_(1, item, repeat)  # (B, N)
        seen = torch.zeros_like(explore, dtype=torch.bool).scatter_(1, item, True)  # (B, N)
        seen[:, PAD] = False  # padded positions are no product
        # each product is in exactly one branch; log(p + 1) = 0 keeps the other one finite
        log_repeat = log_mode[:, :1] + torch.log(p_repeat + ~seen)  # (B, N)
        log_explore = log_mode[:, 1:] + F.log_softmax(explore, dim=-1)  # (B, N)
        return torch.where(seen, log_repeat, log_explore)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean -log p(target), reading only the target's column of each branch."""
        item, target = batch["item"], batch["target"]  # (B, T), (B,)
        log_mode, repeat, explore = self.parts(batch)
        hits = item == target[:, None]  # (B, T)
        repeated = hits.any(1)  # (B,)
        p_repeat = (repeat * hits).sum(1) + ~repeated  # (B,); 1 where unused keeps log finite
        nll_repeat = -(log_mode[:, 0] + torch.log(p_repeat))  # (B,)
        nll_explore = -log_mode[:, 1] + F.cross_entropy(
            explore, target.masked_fill(repeated, -100), ignore_index=-100, reduction="none")
        return torch.where(repeated, nll_repeat, nll_explore).mean()

    def score_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(logits, target)  # logits are log p already
