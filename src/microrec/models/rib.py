"""RIB (Zhou et al., WSDM 2018): micro-behavior embeddings -> RNN -> attention -> softmax.

With `head=repeat_explore` the softmax becomes a mixture of returning to one of the input's
products and exploring a new one (`RepeatExplore`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from microrec.data.schema import NUM_SPECIAL, PAD
from microrec.errors import ConfigError
from microrec.models.base import last_items
from microrec.models.cooccurrence import Cooccurrence
from microrec.models.embedding import MicroEmbedding
from microrec.models.neural import NeuralRecommender, last_state, sampled_softmax_loss

ENCODERS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
HEADS = ("softmax", "repeat_explore")
MAX_DISTANCE = 50  # positions further than this from the end share one distance embedding
MASKED = -1e9  # a finite "minus infinity": a row with nothing to attend to stays NaN-free
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


def repeat_candidates(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T) the positions a target can return to: known products other than the last one."""
    item = batch["item"]  # (B, T)
    return (item >= NUM_SPECIAL) & (item != last_items(batch)[:, None])


class RepeatExplore(nn.Module):
    """p(j) = g p_repeat(j) + (1 - g) p_explore(j), the output head of `head=repeat_explore`.

    p_repeat: attention over the input positions, summed over the positions of each
    product. A position's score v^T tanh(W [h_t; x_t] + D[dist_t] + U q) sees its hidden
    state h_t, its micro-behavior embeddings x_t (product, activity, dwell), its distance
    from the end dist_t, and the query q = [pooled state; last state]. Positions of the last
    product (never the target) and of unknown products are excluded. p_explore: the softmax
    of the output layer over the products not in the input. g = sigmoid(w^T q + b); an input
    with no product to return to has g = 0.
    """

    def __init__(self, hidden_size: int, input_size: int, attention_size: int):
        super().__init__()
        self.position = nn.Linear(hidden_size + input_size, attention_size)  # W
        self.distance = nn.Embedding(MAX_DISTANCE + 1, attention_size)  # D
        self.query = nn.Linear(2 * hidden_size, attention_size, bias=False)  # U
        self.score = nn.Linear(attention_size, 1, bias=False)  # v
        self.gate = nn.Linear(2 * hidden_size, 1)  # w, b

    def forward(self, h: torch.Tensor, x: torch.Tensor, q: torch.Tensor,
                batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Repeat weights (B, T), log g and log(1 - g) (B,) each.

        The weights are zero on every excluded position and sum to one over the rest.
        """
        item, length = batch["item"], batch["length"]  # (B, T), (B,)
        t = torch.arange(item.size(1), device=item.device)  # (T,)
        distance = (length[:, None] - 1 - t).clamp(0, MAX_DISTANCE)  # (B, T)
        candidate = repeat_candidates(batch)  # (B, T)
        e = self.score(torch.tanh(self.position(torch.cat([h, x], dim=-1))
                                  + self.distance(distance)
                                  + self.query(q)[:, None, :])).squeeze(-1)  # (B, T)
        weights = torch.softmax(e.masked_fill(~candidate, MASKED), dim=1) * candidate  # (B, T)
        z = self.gate(q).squeeze(-1)  # (B,)
        can_repeat = candidate.any(1)  # (B,)
        log_g = F.logsigmoid(z).masked_fill(~can_repeat, float("-inf"))  # (B,)
        log_not_g = F.logsigmoid(-z).masked_fill(~can_repeat, 0.0)  # (B,)
        return weights, log_g, log_not_g


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
        head: softmax (the paper's output layer) or repeat_explore (`RepeatExplore`: a gated
            mixture of returning to an input product and a softmax over new products).
        tied: score products against the input product embeddings through a projection of
            the state (the product table is shared, word2vec-initialised with it) instead of
            a separate output table; each product keeps its own output bias.
        neighbours: 0 (off), or the explore side adds a learned weight times log(1 + how
            many training sessions hold each product with the input's products, and with
            its last product) (`Cooccurrence`, each product's `neighbours` most frequent
            partners kept); head=repeat_explore only.
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
        head: str = "softmax",
        tied: bool = False,
        neighbours: int = 0,
    ):
        super().__init__(loss, init)
        if encoder not in ENCODERS:
            raise ConfigError(f"unknown encoder '{encoder}': choose one of {', '.join(ENCODERS)}.")
        if head not in HEADS:
            raise ConfigError(f"unknown head '{head}': choose one of {', '.join(HEADS)}.")
        if neighbours and head != "repeat_explore":
            raise ConfigError(f"model.neighbours={neighbours} scores the explore side of "
                              "head=repeat_explore: set head=repeat_explore or neighbours=0.")
        self.save_hyperparameters()
        self.embed = MicroEmbedding(n_items, n_activities, n_dwell, features, item_dim,
                                    activity_dim, dwell_dim, dropout, sparse=self.sampled)
        self.rnn = ENCODERS[encoder](self.embed.dim, hidden_size, batch_first=True)
        self.attention = Attention(hidden_size, attention_size) if attention else None
        self.dropout = nn.Dropout(dropout)
        self.repeat = (RepeatExplore(hidden_size, self.embed.dim, attention_size)
                       if head == "repeat_explore" else None)
        self.cooccurrence = Cooccurrence(n_items, neighbours) if neighbours else None
        # output layer as tables so that a sampled loss can update rows sparsely
        if tied:  # the state is mapped into the product embedding space and scored there
            self.out_proj = nn.Linear(hidden_size, item_dim, bias=False)
        else:
            self.out_weight = nn.Embedding(n_items, hidden_size, sparse=self.sampled)
            nn.init.uniform_(self.out_weight.weight, -hidden_size ** -0.5, hidden_size ** -0.5)
        self.out_bias = nn.Embedding(n_items, 1, sparse=self.sampled)
        nn.init.zeros_(self.out_bias.weight)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule
        if stage == "fit" and dm is not None and self.cooccurrence is not None:
            self.cooccurrence.fit(dm.prepared.splits["train"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in list(state):
            for old, new in LEGACY_NAMES.items():
                if key.startswith(old):
                    state[new + key[len(old):]] = state.pop(key)

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (B, T, H) and the real-position mask (B, T)."""
        _, h, _, _ = self.head_inputs(batch)
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

    def pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h, mask = self.encode(batch)
        return self.pool(h, mask, batch["length"])  # (B, H)

    def query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) the pooled state the output layer scores against (dropout applied)."""
        return self.output_query(self.pooled(batch))

    def output_query(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, D) the output layer's query from the pooled state (B, H)."""
        q = self.dropout(pooled)
        return self.out_proj(q) if self.hparams.tied else q

    def output_tables(self) -> tuple[nn.Embedding, nn.Embedding]:
        weight = self.embed.item if self.hparams.tied else self.out_weight
        return weight, self.out_bias

    # -- head=repeat_explore ----------------------------------------------------------------
    def head_inputs(self, batch: dict[str, torch.Tensor]):
        """Embedded input (B, T, E), states (B, T, H), pooled state (B, H) and the head's
        query [pooled; last state] (B, 2H)."""
        x = self.embed(batch)  # (B, T, E)
        h, _ = self.rnn(x)  # (B, T, H); right padding keeps real states exact
        pooled = self.pool(h, batch["item"] != PAD, batch["length"])  # (B, H)
        return x, h, pooled, torch.cat([pooled, last_state(h, batch["length"])], dim=-1)

    def neighbour_scores(self, batch: dict[str, torch.Tensor], leave_out: bool):
        """(B, N) the co-occurrence expert's explore scores, or None (neighbours=0)."""
        if self.cooccurrence is None:
            return None
        return self.cooccurrence(batch, leave_out)

    def mixture(self, batch: dict[str, torch.Tensor], leave_out: bool = False):
        """Repeat weights (B, T), log g, log(1 - g) (B,) and explore logits (B, N).

        The explore logits are -inf on padding, unknown and every product of the input.
        `leave_out`: a training batch (the neighbour expert leaves its own sessions out).
        """
        x, h, pooled, q = self.head_inputs(batch)
        weights, log_g, log_not_g = self.repeat(h, x, q, batch)
        weight, bias = self.output_tables()
        explore = self.output_query(pooled) @ weight.weight.T + bias.weight.T  # (B, N)
        neighbours = self.neighbour_scores(batch, leave_out)
        if neighbours is not None:
            explore = explore + neighbours
        explore = explore.scatter_(1, batch["item"], float("-inf"))  # not the input's products
        explore[:, :NUM_SPECIAL] = float("-inf")
        return weights, log_g, log_not_g, explore

    def repeat_weights(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the head decides per input: repeat weight of each position (B, T) and the
        gate g = P(return to an input product) (B,)."""
        if self.repeat is None:
            raise ConfigError("this RIB model has head=softmax: it has no repeat attention.")
        weights, log_g, _, _ = self.mixture(batch)
        return {"repeat": weights, "gate": log_g.exp()}

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, N) scores of every item id: log p(j) for head=repeat_explore."""
        if self.repeat is None:
            return super().logits(batch)
        item = batch["item"]  # (B, T)
        weights, log_g, log_not_g, explore = self.mixture(batch)
        p_repeat = torch.zeros_like(explore).scatter_add_(1, item, weights)  # (B, N)
        can = torch.zeros_like(explore, dtype=torch.bool).scatter_(
            1, item, repeat_candidates(batch))  # (B, N) the products p_repeat spans
        # each product is in one branch; log(p + 1) = 0 keeps the unused one finite
        log_repeat = log_g[:, None] + torch.log(p_repeat + ~can)  # (B, N)
        log_explore = log_not_g[:, None] + F.log_softmax(explore, dim=-1)  # (B, N)
        return torch.where(can, log_repeat, log_explore)

    @staticmethod
    def split_target(batch: dict[str, torch.Tensor], weights: torch.Tensor):
        """(B,) the target's repeat probability (1 where it is no candidate) and whether it is."""
        hits = (batch["item"] == batch["target"][:, None]) & repeat_candidates(batch)  # (B, T)
        repeated = hits.any(1)  # (B,)
        return (weights * hits).sum(1) + ~repeated, repeated

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean -log p(target), reading only the target's column of each branch."""
        if self.repeat is None:
            return super().training_loss(batch)
        weights, log_g, log_not_g, explore = self.mixture(batch, leave_out=True)
        p_repeat, repeated = self.split_target(batch, weights)
        target = batch["target"].masked_fill(repeated, -100)  # explore rows only
        nll_explore = -log_not_g + F.cross_entropy(explore, target, ignore_index=-100,
                                                   reduction="none")
        return torch.where(repeated, -(log_g + torch.log(p_repeat)), nll_explore).mean()

    def sampled_loss(self, batch: dict[str, torch.Tensor], negatives: torch.Tensor) -> torch.Tensor:
        """The mixture's -log p(target) with the explore softmax estimated from `negatives`
        (K,); the repeat side is exact (it only spans the input)."""
        if self.repeat is None:
            return super().sampled_loss(batch, negatives)
        x, h, pooled, q = self.head_inputs(batch)
        weights, log_g, log_not_g = self.repeat(h, x, q, batch)
        p_repeat, repeated = self.split_target(batch, weights)
        in_input = (negatives[None, None, :] == batch["item"][:, :, None]).any(1)  # (B, K)
        nll_explore = -log_not_g + sampled_softmax_loss(
            self.output_query(pooled), *self.output_tables(), batch["target"], negatives,
            self.log_q, exclude=in_input, offset=self.neighbour_scores(batch, leave_out=True),
            reduction="none")  # (B,)
        return torch.where(repeated, -(log_g + torch.log(p_repeat)), nll_explore).mean()

    def score_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.repeat is None:
            return super().score_loss(logits, target)
        return F.nll_loss(logits, target)  # logits are log p already
