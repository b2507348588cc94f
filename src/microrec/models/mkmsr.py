"""MKM-SR (Meng, Yang, Xiao, SIGIR 2020): a gated graph network over each session's products,
a GRU over its operations, soft attention from the last micro-behavior.

The paper's knowledge-graph task (TransH on product attributes) is left out: the logs carry no
product attributes (docs/baselines.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from microrec.data.schema import PAD
from microrec.models.embedding import MicroEmbedding
from microrec.models.neural import NeuralRecommender, last_state


def session_graph(item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every input's directed product graph, built for the whole batch at once.

    The nodes of an input are its distinct products, in id order; an edge i -> j counts the
    times a macro interaction on j directly follows one on i (consecutive micro-behaviors on
    one product are one macro interaction, so they add no self-loop).

    Args:
        item: (B, T) right-padded product ids.

    Returns:
        nodes (B, L): each input's products, PAD after its last one (L: the most in the batch);
        alias (B, T): the node of each position (0 on padding);
        edges (B, L, L): transition counts, edges[b, i, j] for node i -> node j.
    """
    B, T = item.shape
    real = item != PAD  # (B, T)
    key = item.masked_fill(~real, torch.iinfo(item.dtype).max)  # padding sorts last
    ordered, order = key.sort(dim=1, stable=True)  # (B, T), (B, T)
    previous = nn.functional.pad(ordered, (1, 0), value=-1)[:, :-1]  # (B, T)
    first = (ordered != previous) & real.gather(1, order)  # (B, T): a product's first copy
    rank = first.cumsum(1) - 1  # (B, T): its node index
    L = max(int(first.sum(1).max()), 1)
    slot = torch.where(first, rank, L)  # (B, T); column L collects the rest, then is dropped
    nodes = item.new_zeros(B, L + 1).scatter_(1, slot, ordered * first)[:, :L]  # (B, L)
    alias = torch.zeros_like(item).scatter_(1, order, rank.clamp(min=0))  # (B, T)
    alias = alias.masked_fill(~real, 0)
    step = real[:, 1:] & (item[:, 1:] != item[:, :-1])  # (B, T - 1): a new macro interaction
    pair = alias[:, :-1] * L + alias[:, 1:]  # (B, T - 1): flat index of (from, to)
    edges = torch.zeros(B, L * L, device=item.device).scatter_add_(1, pair, step.float())
    return nodes, alias, edges.view(B, L, L)


def normalised(edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SR-GNN's incoming and outgoing adjacency (B, L, L) from the counts (B, L, L).

    a_in[i, j] = edges[j, i] / in-degree(i) and a_out[i, j] = edges[i, j] / out-degree(i); a
    node without such edges keeps a zero row.
    """
    in_degree = edges.sum(1).unsqueeze(-1).clamp(min=1)  # (B, L, 1)
    out_degree = edges.sum(2, keepdim=True).clamp(min=1)  # (B, L, 1)
    return edges.transpose(1, 2) / in_degree, edges / out_degree


class GGNN(nn.Module):
    """SR-GNN's gated graph network: `steps` rounds of messages along the in and out edges,
    each node updated by a GRU cell.

    a = [a_in (W_in h + b) + b_in ; a_out (W_out h + b) + b_out]  (B, L, 2d), then
    h' = GRUCell(a, h): r = sigmoid(W_r a + U_r h), z = sigmoid(W_z a + U_z h),
    n = tanh(W_n a + r * (U_n h)), h' = (1 - z) n + z h (every product with its bias).
    """

    def __init__(self, dim: int, steps: int = 1):
        super().__init__()
        self.steps = steps
        self.edge_in = nn.Linear(dim, dim)  # W_in: what a node sends along its out edges
        self.edge_out = nn.Linear(dim, dim)  # W_out: what it sends back along its in edges
        self.bias_in = nn.Parameter(torch.zeros(dim))
        self.bias_out = nn.Parameter(torch.zeros(dim))
        self.cell = nn.GRUCell(2 * dim, dim)

    def propagate(self, h: torch.Tensor, a_in: torch.Tensor, a_out: torch.Tensor,
                  real: torch.Tensor) -> torch.Tensor:
        """One round: node states (B, L, d) to node states (B, L, d); padding nodes stay 0."""
        incoming = a_in @ self.edge_in(h) + self.bias_in  # (B, L, d)
        outgoing = a_out @ self.edge_out(h) + self.bias_out  # (B, L, d)
        a = torch.cat([incoming, outgoing], dim=-1)  # (B, L, 2d)
        # the cell runs on the real nodes alone (R of the B * L): most of L is padding
        updated = self.cell(a[real], h[real])  # (R, d)
        return torch.zeros_like(h).index_put((real,), updated)  # (B, L, d)

    def forward(self, h: torch.Tensor, a_in: torch.Tensor, a_out: torch.Tensor,
                real: torch.Tensor | None = None) -> torch.Tensor:
        """Node states (B, L, d) after `steps` rounds; `real` (B, L) marks the nodes that
        are products (default: all)."""
        real = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device) if real is None else real
        for _ in range(self.steps):
            h = self.propagate(h, a_in, a_out, real)  # (B, L, d)
        return h


class SessionAttention(nn.Module):
    """SR-GNN's session representation from the steps m_1..m_T and the last one m_n:
    alpha_t = q^T sigmoid(W_1 m_n + W_2 m_t + c), s = W_3 [sum_t alpha_t m_t ; m_n].

    The weights are not normalised (as published); padded positions get exactly zero.
    """

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, dim)  # W_1 and c
        self.w2 = nn.Linear(dim, dim, bias=False)  # W_2
        self.q = nn.Linear(dim, 1, bias=False)
        self.w3 = nn.Linear(2 * dim, out_dim)  # W_3: global and local to the product space

    def weights(self, m: torch.Tensor, last: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) the weight of each step m (B, T, D) for the last one (B, D); zero on padding."""
        e = torch.sigmoid(self.w1(last)[:, None, :] + self.w2(m))  # (B, T, D)
        return self.q(e).squeeze(-1).masked_fill(~mask, 0.0)  # padding must not count

    def forward(self, m: torch.Tensor, last: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        alpha = self.weights(m, last, mask)  # (B, T)
        pooled = torch.bmm(alpha.unsqueeze(1), m).squeeze(1)  # (B, D)
        return self.w3(torch.cat([pooled, last], dim=-1))  # (B, out_dim)


class MKMSR(NeuralRecommender):
    """MKM-SR's session encoder, without its knowledge-graph task.

    Each input's distinct products form a directed graph (an edge for each pair of
    consecutive macro interactions) and a GGNN over their embeddings gives every product a
    state v. Each micro-behavior m_t is [v of its product ; o_t], o_t the state of a GRU over
    the micro-behaviors' operations (their activity and dwell embeddings concatenated, the
    side channels of `MicroEmbedding`); with features=sku there are no operations and
    m_t = v (SR-GNN on the micro-behaviors' products). The session s comes from soft
    attention with the last micro-behavior as query and is scored against the input's
    product table: score(j) = s . emb_j.

    Args:
        n_items, n_activities, n_dwell: vocabulary sizes (from the data).
        n_categories: category vocabulary size (from the data; a `_cat` variant only).
        features: sku | sku_act | sku_dwell | full: which operation channels exist.
        item_dim: product embedding and GGNN state size d.
        activity_dim, dwell_dim, category_dim: operation embedding sizes per channel (a
            `_cat` variant's category joins each micro-behavior's operation, as every side
            channel does).
        hidden_size: the operation GRU's state size (unused with features=sku).
        steps: GGNN propagation rounds (the paper's 1).
        dropout: on the product and operation embeddings (none in the paper).
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
        features: str = "full",
        item_dim: int = 100,
        activity_dim: int = 16,
        dwell_dim: int = 16,
        category_dim: int = 16,
        hidden_size: int = 100,
        steps: int = 1,
        dropout: float = 0.0,
        init: str = "random",
        w2v_window: int = 5,
        w2v_epochs: int = 5,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        loss: str = "full",
        n_negatives: int = 2048,
    ):
        super().__init__(loss, init)
        self.save_hyperparameters()
        self.embed = MicroEmbedding(n_items, n_activities, n_dwell, features, item_dim,
                                    activity_dim, dwell_dim, dropout, sparse=self.sampled,
                                    n_categories=n_categories, category_dim=category_dim)
        self.ggnn = GGNN(item_dim, steps)
        side = self.embed.dim - item_dim  # the operation channels' width
        self.operation = nn.GRU(side, hidden_size, batch_first=True) if side else None
        dim = item_dim + (hidden_size if side else 0)  # D, the width of m_t
        self.attention = SessionAttention(dim, item_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SR-GNN's initialisation: every weight uniform in +-1/sqrt(d); padding rows zero."""
        bound = 1.0 / math.sqrt(self.hparams.item_dim)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-bound, bound)
            for table in self.embed.tables().values():
                table.weight[PAD] = 0.0

    def operations(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, T, E_op) each micro-behavior's operation embedding; None with features=sku."""
        side = [t(batch[name]) for name, t in self.embed.tables().items() if name != "item"]
        return self.embed.dropout(torch.cat(side, dim=-1)) if side else None  # (B, T, E_op)

    def micro_behaviors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, D) each micro-behavior's representation m_t = [v_t ; o_t]."""
        nodes, alias, edges = session_graph(batch["item"])  # (B, L), (B, T), (B, L, L)
        a_in, a_out = normalised(edges)  # (B, L, L) each
        h = self.embed.dropout(self.embed.item(nodes))  # (B, L, d)
        h = self.ggnn(h, a_in, a_out, nodes != PAD)  # (B, L, d)
        v = h.gather(1, alias[..., None].expand(-1, -1, h.size(-1)))  # (B, T, d)
        ops = self.operations(batch)
        if ops is None:
            return v
        o, _ = self.operation(ops)  # (B, T, H); right padding keeps real states exact
        return torch.cat([v, o], dim=-1)  # (B, T, d + H)

    def attention_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) the attention weight of each input micro-behavior."""
        m = self.micro_behaviors(batch)  # (B, T, D)
        last = last_state(m, batch["length"])  # (B, D)
        return self.attention.weights(m, last, batch["item"] != PAD)

    def query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        m = self.micro_behaviors(batch)  # (B, T, D)
        last = last_state(m, batch["length"])  # (B, D)
        return self.attention(m, last, batch["item"] != PAD)  # (B, d): scores are s . emb_j

    def output_tables(self) -> tuple[nn.Embedding, None]:
        return self.embed.item, None
