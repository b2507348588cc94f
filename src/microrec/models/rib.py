"""RIB (Zhou et al., WSDM 2018): micro-behavior embeddings -> RNN -> attention -> softmax."""

from __future__ import annotations

import torch
from torch import nn

from microrec.errors import ConfigError
from microrec.models.embedding import MicroEmbedding
from microrec.models.neural import NeuralRecommender, last_state
from microrec.schema import PAD

ENCODERS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
# checkpoints written before the embedding tables moved into MicroEmbedding
LEGACY_NAMES = {"item_emb.": "embed.item.", "activity_emb.": "embed.activity.",
                "dwell_emb.": "embed.dwell."}


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


class RIB(NeuralRecommender):
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
        super().__init__(loss, init)
        if encoder not in ENCODERS:
            raise ConfigError(f"unknown encoder '{encoder}': choose one of {', '.join(ENCODERS)}.")
        self.save_hyperparameters()
        self.embed = MicroEmbedding(n_items, n_activities, n_dwell, features, item_dim,
                                    activity_dim, dwell_dim, dropout, sparse=self.sampled)
        self.rnn = ENCODERS[encoder](self.embed.dim, hidden_size, batch_first=True)
        self.attention = Attention(hidden_size, attention_size) if attention else None
        self.dropout = nn.Dropout(dropout)
        # output layer as tables so that a sampled loss can update rows sparsely
        self.out_weight = nn.Embedding(n_items, hidden_size, sparse=self.sampled)
        self.out_bias = nn.Embedding(n_items, 1, sparse=self.sampled)
        nn.init.uniform_(self.out_weight.weight, -hidden_size ** -0.5, hidden_size ** -0.5)
        nn.init.zeros_(self.out_bias.weight)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in list(state):
            for old, new in LEGACY_NAMES.items():
                if key.startswith(old):
                    state[new + key[len(old):]] = state.pop(key)

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (B, T, H) and the real-position mask (B, T)."""
        h, _ = self.rnn(self.embed(batch))  # (B, T, H); right padding keeps real states exact
        return h, batch["item"] != PAD

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
        return last_state(h, batch["length"])  # (B, H)

    def query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, H) the pooled state the output layer scores against (dropout applied)."""
        return self.dropout(self.pooled(batch))

    def output_tables(self) -> tuple[nn.Embedding, nn.Embedding]:
        return self.out_weight, self.out_bias
