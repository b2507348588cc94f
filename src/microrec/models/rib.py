"""RIB (Zhou et al., WSDM 2018): micro-behavior embeddings -> RNN -> attention -> output head.

The output head is a module of `microrec.models.heads`, built from `head`: `SoftmaxHead` (the
paper's softmax over every product) or `RepeatExploreHead` (a mixture of returning to one of
the input's products and exploring a new one). RIB encodes the input and hands the head the
embedded input, the states and the pooled state; scores and losses are the head's.
"""

from __future__ import annotations

import torch
from torch import nn

from microrec.data.schema import PAD
from microrec.errors import ConfigError
from microrec.models.embedding import MicroEmbedding
from microrec.models.heads import make_head
from microrec.models.neural import NeuralRecommender, last_state

ENCODERS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
# old -> new state-dict key prefixes of checkpoints written before the embedding tables moved
# into MicroEmbedding, and before the output layer moved into a head module (`self.head`)
LEGACY_NAMES = {"item_emb.": "embed.item.", "activity_emb.": "embed.activity.",
                "dwell_emb.": "embed.dwell.", "repeat.": "head.repeat.",
                "cooccurrence.": "head.cooccurrence.", "out_proj.": "head.out.proj.",
                "out_weight.": "head.out.weight.", "out_bias.": "head.out.bias."}


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
        n_categories: category vocabulary size (from the data; a `_cat` variant only).
        features: sku | sku_act | sku_dwell | full (+ `_cat`): which embeddings are
            concatenated.
        encoder: gru | lstm | rnn.
        attention: attention pooling if true, else the last hidden state.
        item_dim, activity_dim, dwell_dim, category_dim: embedding size per channel.
        hidden_size, attention_size: RNN state and attention projection sizes.
        dropout: on the concatenated embeddings and on the pooled state.
        init: word2vec (gensim vectors of the training split) or random.
        w2v_window, w2v_epochs: word2vec settings when init=word2vec.
        head: softmax (`SoftmaxHead`, the paper's output layer) or repeat_explore
            (`RepeatExploreHead`: a gated mixture of returning to an input product and a
            softmax over new products).
        tied: score products against the input product embeddings through a projection of
            the state (the product table is shared, word2vec-initialised with it) instead of
            a separate output table; each product keeps its own output bias.
        neighbours: 0 (off), or the explore side adds a learned weight times log(1 + how
            many training sessions hold each product with the input's products, and with
            its last product) (`Cooccurrence`, each product's `neighbours` most frequent
            partners kept); head=repeat_explore only.
        transitions: 0 (off), or the explore side adds a learned weight times log(1 + how
            many times each product directly follows the input's last product in the
            training sessions) (`Transitions`, each product's `transitions` most frequent
            successors kept); head=repeat_explore only.
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
        n_categories: int = 0,
        features: str = "full",
        encoder: str = "gru",
        attention: bool = True,
        item_dim: int = 64,
        activity_dim: int = 16,
        dwell_dim: int = 16,
        category_dim: int = 16,
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
        head: str = "softmax",
        tied: bool = False,
        neighbours: int = 0,
        transitions: int = 0,
    ):
        super().__init__(loss, init)
        if encoder not in ENCODERS:
            raise ConfigError(f"unknown encoder '{encoder}': choose one of {', '.join(ENCODERS)}.")
        self.save_hyperparameters()
        self.embed = MicroEmbedding(n_items, n_activities, n_dwell, features, item_dim,
                                    activity_dim, dwell_dim, dropout, sparse=self.sampled,
                                    n_categories=n_categories, category_dim=category_dim)
        self.rnn = ENCODERS[encoder](self.embed.dim, hidden_size, batch_first=True)
        self.attention = Attention(hidden_size, attention_size) if attention else None
        self.head = make_head(head, neighbours, transitions, self.embed.dim, attention_size,
                              n_items=n_items, hidden_size=hidden_size, dropout=dropout,
                              tied=self.embed.item if tied else None, sparse=self.sampled)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule
        if stage == "fit" and dm is not None:
            self.head.fit(dm.prepared.splits["train"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in list(state):
            for old, new in LEGACY_NAMES.items():
                if key.startswith(old):
                    state[new + key[len(old):]] = state.pop(key)

    def head_inputs(self, batch: dict[str, torch.Tensor]):
        """What the output head reads: the embedded input (B, T, E), the states (B, T, H)
        and the pooled state (B, H)."""
        x = self.embed(batch)  # (B, T, E)
        h, _ = self.rnn(x)  # (B, T, H); right padding keeps real states exact
        return x, h, self.pool(h, batch["item"] != PAD, batch["length"])

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (B, T, H) and the real-position mask (B, T)."""
        _, h, _ = self.head_inputs(batch)
        return h, batch["item"] != PAD

    def attention_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) weight of each input micro-behavior (attention on only)."""
        if self.attention is None:
            raise ConfigError("this RIB model was trained with attention=off: it has no weights.")
        h, mask = self.encode(batch)
        return self.attention.weights(h, mask)

    def pool(self, h: torch.Tensor, mask: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """(B, H) the attention pooling of the states, or the last state (attention=off)."""
        if self.attention is not None:
            return self.attention(h, mask)
        return last_state(h, length)

    def output_tables(self) -> tuple[nn.Embedding, nn.Embedding]:
        return self.head.out.tables()

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, N) scores of every item id: log p(j) for head=repeat_explore."""
        return self.head.logits(batch, *self.head_inputs(batch))

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head.training_loss(batch, *self.head_inputs(batch))

    def sampled_loss(self, batch: dict[str, torch.Tensor], negatives: torch.Tensor) -> torch.Tensor:
        return self.head.sampled_loss(batch, *self.head_inputs(batch), negatives, self.log_q)

    def score_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.head.score_loss(logits, target)

    def repeat_weights(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the head decides per input: repeat weight of each position (B, T) and the
        gate g = P(return to an input product) (B,); head=softmax has none (ConfigError)."""
        return self.head.repeat_weights(batch, *self.head_inputs(batch))

