"""RIB's output heads: from the encoded input to a score of every product, and the losses.

`conf/head/softmax.yaml` is `SoftmaxHead` (the paper's output layer) and
`conf/head/repeat_explore.yaml` is `RepeatExploreHead` (`make_head` builds one by name). RIB
calls both the same way, with the batch, the embedded input x (B, T, E), the RNN states
h (B, T, H) and the pooled state (B, H):
    logits(batch, x, h, pooled)                        (B, N) scores to rank by
    training_loss(batch, x, h, pooled)                 mean loss over every product
    sampled_loss(batch, x, h, pooled, negatives, log_q)   its estimate from K negatives
    score_loss(logits, target)                         the loss from `logits` already computed
    repeat_weights(batch, x, h, pooled)                what the repeat side decides per input
    fit(train)                                         counts from the training split, if any
    out                                                the `OutputLayer` (its tables)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from microrec.data.schema import NUM_SPECIAL
from microrec.errors import ConfigError
from microrec.models.base import last_items
from microrec.models.cooccurrence import Cooccurrence, Transitions, places
from microrec.models.neural import last_state, sampled_softmax_loss

MAX_DISTANCE = 50  # positions further than this from the end share one distance embedding
MASKED = -1e9  # a finite "minus infinity": a row with nothing to attend to stays NaN-free


def make_head(name: str, neighbours: int, transitions: int, input_size: int,
              attention_size: int, **output) -> SoftmaxHead | RepeatExploreHead:
    """The head `conf/head/<name>.yaml` names.

    neighbours: the co-occurrence expert's partners per product (0: off), repeat_explore only.
    transitions: the transition expert's successors per product (0: off), likewise.
    input_size, attention_size: the embedded input's and the repeat attention's sizes.
    output: `OutputLayer`'s arguments, which both heads take.
    """
    if name == "softmax":
        for option, value in (("neighbours", neighbours), ("transitions", transitions)):
            if value:
                raise ConfigError(f"model.{option}={value} scores the explore side of "
                                  f"head=repeat_explore: set head=repeat_explore or {option}=0.")
        return SoftmaxHead(**output)
    if name == "repeat_explore":
        return RepeatExploreHead(**output, input_size=input_size, attention_size=attention_size,
                                 neighbours=neighbours, transitions=transitions)
    raise ConfigError(f"unknown head '{name}': choose one of softmax, repeat_explore.")


def repeat_candidates(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T) the positions a target can return to: known products other than the last one."""
    item = batch["item"]  # (B, T)
    return (item >= NUM_SPECIAL) & (item != last_items(batch)[:, None])


def split_target(batch: dict[str, torch.Tensor], weights: torch.Tensor):
    """(B,) the target's repeat probability (1 where it is no candidate) and whether it is."""
    hits = (batch["item"] == batch["target"][:, None]) & repeat_candidates(batch)  # (B, T)
    repeated = hits.any(1)  # (B,)
    return (weights * hits).sum(1) + ~repeated, repeated


def negatives_in_input(item: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """(B, K) whether each of the negatives (K,) is among each input's products (B, T).

    Each input position is looked up among the sorted distinct negatives, rather than
    compared with every negative (a (B, T, K) comparison)."""
    distinct, inverse = torch.unique(negatives, return_inverse=True)  # (U,), (K,)
    at = places(distinct, item)  # (B, T) U: not a negative
    found = torch.zeros(item.size(0), distinct.numel() + 1, dtype=torch.bool,
                        device=item.device)
    return found.scatter_(1, at, True).index_select(1, inverse)  # (B, K)


class OutputLayer(nn.Module):
    """Scores every product: query . W_j + b_j, the query being the pooled state after dropout.

    Args:
        n_items, hidden_size: product vocabulary and pooled state sizes.
        dropout: on the pooled state.
        tied: None (a separate output table W), or the input product table to score against
            through a projection of the state (each product keeps its own bias b).
        sparse: the tables get sparse gradients (loss=sampled).
    """

    def __init__(self, n_items: int, hidden_size: int, dropout: float,
                 tied: nn.Embedding | None = None, sparse: bool = False):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.tied = tied is not None
        # tables rather than a Linear so that a sampled loss can update rows sparsely
        if self.tied:  # the state is mapped into the product embedding space and scored there
            self.proj = nn.Linear(hidden_size, tied.embedding_dim, bias=False)
            # a tuple, so that the table stays registered (and saved) in MicroEmbedding only
            self.shared = (tied,)
        else:
            self.weight = nn.Embedding(n_items, hidden_size, sparse=sparse)
            nn.init.uniform_(self.weight.weight, -hidden_size ** -0.5, hidden_size ** -0.5)
        self.bias = nn.Embedding(n_items, 1, sparse=sparse)
        nn.init.zeros_(self.bias.weight)

    def query(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, D) the vector the tables score, from the pooled state (B, H)."""
        q = self.dropout(pooled)
        return self.proj(q) if self.tied else q

    def tables(self) -> tuple[nn.Embedding, nn.Embedding]:
        """(N, D) output weights and (N, 1) biases."""
        return (self.shared[0] if self.tied else self.weight), self.bias

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        weight, bias = self.tables()
        return self.query(pooled) @ weight.weight.T + bias.weight.T  # (B, N)


class SoftmaxHead(nn.Module):
    """The paper's output layer: one softmax over every product (`OutputLayer`'s scores)."""

    def __init__(self, n_items: int, hidden_size: int, dropout: float,
                 tied: nn.Embedding | None = None, sparse: bool = False):
        super().__init__()
        self.out = OutputLayer(n_items, hidden_size, dropout, tied, sparse)

    def fit(self, train) -> None:
        pass  # nothing is counted from the data

    def logits(self, batch, x, h, pooled) -> torch.Tensor:
        return self.out(pooled)  # (B, N)

    def training_loss(self, batch, x, h, pooled) -> torch.Tensor:
        return F.cross_entropy(self.out(pooled), batch["target"])

    def sampled_loss(self, batch, x, h, pooled, negatives, log_q) -> torch.Tensor:
        return sampled_softmax_loss(self.out.query(pooled), *self.out.tables(), batch["target"],
                                    negatives, log_q)

    def score_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)

    def repeat_weights(self, batch, x, h, pooled) -> dict[str, torch.Tensor]:
        raise ConfigError("this RIB model has head=softmax: it has no repeat attention.")


class RepeatExplore(nn.Module):
    """The repeat side and the gate of `RepeatExploreHead`.

    p_repeat: attention over the input positions, summed over the positions of each
    product. A position's score v^T tanh(W [h_t; x_t] + D[dist_t] + U q) sees its hidden
    state h_t, its micro-behavior embeddings x_t (product, activity, dwell), its distance
    from the end dist_t, and the query q = [pooled state; last state]. Positions of the last
    product (never the target) and of unknown products are excluded. g = sigmoid(w^T q + b);
    an input with no product to return to has g = 0.
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


class RepeatExploreHead(nn.Module):
    """p(j) = g p_repeat(j) + (1 - g) p_explore(j), trained on its log-likelihood.

    p_repeat and g: `RepeatExplore`. p_explore: the softmax of the output layer over the
    products not in the input, its logits plus the co-occurrence expert's scores
    (`Cooccurrence`) when `neighbours` > 0 and the transition expert's (`Transitions`) when
    `transitions` > 0. `logits` are log p(j).

    Args: `OutputLayer`'s, and
        input_size, attention_size: the embedded input's and the repeat attention's sizes.
        neighbours: the co-occurrence expert's partners kept per product (0: off).
        transitions: the transition expert's successors kept per product (0: off).
    """

    def __init__(self, n_items: int, hidden_size: int, dropout: float,
                 tied: nn.Embedding | None = None, sparse: bool = False, *,
                 input_size: int, attention_size: int, neighbours: int = 0,
                 transitions: int = 0):
        super().__init__()
        # the output layer last, so that a seed draws the same initial weights as RIB did
        # before its heads were modules
        self.repeat = RepeatExplore(hidden_size, input_size, attention_size)
        self.cooccurrence = Cooccurrence(n_items, neighbours) if neighbours else None
        self.out = OutputLayer(n_items, hidden_size, dropout, tied, sparse)
        # after the output layer, so that a seed draws the weights it drew without it
        self.transitions = Transitions(n_items, transitions) if transitions else None

    def experts(self) -> list[Cooccurrence | Transitions]:
        """The count experts the explore side adds, in order."""
        return [e for e in (self.cooccurrence, self.transitions) if e is not None]

    def fit(self, train) -> None:
        """Count co-occurrences and transitions in the training split (`SplitArrays`), for
        the experts that are on."""
        for expert in self.experts():
            expert.fit(train)

    def mixture(self, batch, x, h, pooled, leave_out: bool = False):
        """Repeat weights (B, T), log g, log(1 - g) (B,) and explore logits (B, N).

        The explore logits are -inf on padding, unknown and every product of the input.
        `leave_out`: a training batch (the neighbour expert leaves its own sessions out).
        """
        weights, log_g, log_not_g = self.repeat(h, x, self.repeat_query(batch, h, pooled), batch)
        explore = self.out(pooled)  # (B, N)
        for expert in self.experts():  # their scores added where they are non-zero only
            explore = expert.add_to_(explore, batch, leave_out)
        explore = explore.scatter_(1, batch["item"], float("-inf"))  # not the input's products
        explore[:, :NUM_SPECIAL] = float("-inf")
        return weights, log_g, log_not_g, explore

    @staticmethod
    def repeat_query(batch, h: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """(B, 2H) q = [pooled state; last state]."""
        return torch.cat([pooled, last_state(h, batch["length"])], dim=-1)

    def repeat_weights(self, batch, x, h, pooled) -> dict[str, torch.Tensor]:
        """The repeat weight of each position (B, T) and the gate g = P(return to an input
        product) (B,)."""
        weights, log_g, _, _ = self.mixture(batch, x, h, pooled)
        return {"repeat": weights, "gate": log_g.exp()}

    def logits(self, batch, x, h, pooled) -> torch.Tensor:
        """(B, N) log p(j) of every item id."""
        item = batch["item"]  # (B, T)
        weights, log_g, log_not_g, explore = self.mixture(batch, x, h, pooled)
        p_repeat = torch.zeros_like(explore).scatter_add_(1, item, weights)  # (B, N)
        can = torch.zeros_like(explore, dtype=torch.bool).scatter_(
            1, item, repeat_candidates(batch))  # (B, N) the products p_repeat spans
        # each product is in one branch; log(p + 1) = 0 keeps the unused one finite
        log_repeat = log_g[:, None] + torch.log(p_repeat + ~can)  # (B, N)
        log_explore = log_not_g[:, None] + F.log_softmax(explore, dim=-1)  # (B, N)
        return torch.where(can, log_repeat, log_explore)

    def training_loss(self, batch, x, h, pooled) -> torch.Tensor:
        """Mean -log p(target), reading only the target's column of each branch."""
        weights, log_g, log_not_g, explore = self.mixture(batch, x, h, pooled, leave_out=True)
        p_repeat, repeated = split_target(batch, weights)
        target = batch["target"].masked_fill(repeated, -100)  # explore rows only
        nll_explore = -log_not_g + F.cross_entropy(explore, target, ignore_index=-100,
                                                   reduction="none")
        return torch.where(repeated, -(log_g + torch.log(p_repeat)), nll_explore).mean()

    def sampled_loss(self, batch, x, h, pooled, negatives, log_q) -> torch.Tensor:
        """The mixture's -log p(target) with the explore softmax estimated from `negatives`
        (K,) drawn with log probabilities `log_q` (N,); the repeat side is exact (it only
        spans the input)."""
        weights, log_g, log_not_g = self.repeat(h, x, self.repeat_query(batch, h, pooled), batch)
        p_repeat, repeated = split_target(batch, weights)
        in_input = negatives_in_input(batch["item"], negatives)  # (B, K)
        offset = None  # the experts' scores of the targets and the negatives alone
        for expert in self.experts():
            scores = expert.candidate_scores(batch, negatives, leave_out=True)  # (B, 1 + K)
            offset = scores if offset is None else offset + scores
        nll_explore = -log_not_g + sampled_softmax_loss(
            self.out.query(pooled), *self.out.tables(), batch["target"], negatives, log_q,
            exclude=in_input, offset=offset, reduction="none")  # (B,)
        return torch.where(repeated, -(log_g + torch.log(p_repeat)), nll_explore).mean()

    def score_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(logits, target)  # logits are log p already
