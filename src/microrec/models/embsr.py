"""EMBSR (Yuan et al., ICDE 2022): a session multigraph whose edges carry the operations done
on a product, a star-graph GNN, and self-attention that knows which operations meet.

The session's distinct products are the nodes of a multigraph with one edge per move from a
macro interaction to the next; each edge carries the operation sequence of the macro
interaction it leaves, encoded by a GRU (the edge GRU). One or more star-graph layers (a
gated graph cell on the edges, then a star node that exchanges information with every node)
and a highway gate give each product a state. The micro-behavior steps (their product's
state plus their operation) follow the star node in one sequence; an attention from the star
node over it adds, to each key and value, an embedding of the pair (the query's operation,
the key's operation) and of the key's position. The session vector gates the star's
attention output with the last step; products are scored by a scaled cosine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from microrec.data.schema import PAD, channels
from microrec.errors import ConfigError
from microrec.models.embedding import MicroEmbedding
from microrec.models.neural import NeuralRecommender, last_state, sampled_softmax_loss

# The channels that say what the user did with a product (EMBSR's "operation"): activity
# and dwell bucket, each one micro-behavior's own. A product's category is no operation.
OPERATIONS = ("activity", "dwell")
STAR_OPERATION = PAD  # the star's operation id in every channel: "the next one, unknown"


@dataclass
class SessionGraph:
    """A batch of session multigraphs over each session's distinct products (nodes), built
    from right-padded micro-behavior products; nodes are numbered by first occurrence.

    step_node: (B, T) the node of each micro-behavior's product (0 on padding).
    node_item: (B, N) the product of each node (PAD past the row's nodes).
    node_real: (B, N) which node slots hold a product.
    edge_src, edge_dst: (B, E) the nodes each edge leaves and enters; E = macros - 1.
    edge_item: (B, E) the product the edge leaves (its macro interaction's product).
    edge_steps: (B, E, K) the micro-behavior positions of the macro interaction the edge
        leaves, in order, -1 after them: the operations the edge carries.
    edge_real: (B, E) which edge slots are edges.
    """

    step_node: torch.Tensor
    node_item: torch.Tensor
    node_real: torch.Tensor
    edge_src: torch.Tensor
    edge_dst: torch.Tensor
    edge_item: torch.Tensor
    edge_steps: torch.Tensor
    edge_real: torch.Tensor


def distinct_nodes(item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each step's node (B, T), each node's product (B, N) and which nodes are real (B, N)."""
    B, T = item.shape
    real = item != PAD  # (B, T)
    t = torch.arange(T, device=item.device)  # (T,)
    same = item[:, :, None] == item[:, None, :]  # (B, T, T)
    first_seen = same.int().argmax(-1)  # (B, T) earliest step on the same product
    is_first = real & (first_seen == t)  # (B, T) a product's first step
    rank = is_first.cumsum(1) - 1  # (B, T) node number at first steps
    step_node = rank.gather(1, first_seen).masked_fill(~real, 0)  # (B, T)
    n_nodes = int(is_first.sum(1).max().clamp(min=1))
    slot = torch.where(is_first, rank, T)  # (B, T); T is a bin for every other step
    node_item = item.new_zeros(B, T + 1).scatter_(1, slot, item)[:, :n_nodes]  # (B, N)
    return step_node, node_item, node_item != PAD


def macro_runs(item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each step's macro interaction (B, T), its place inside it (B, T) and whether it
    opens one (B, T); inputs are right-padded, so padding opens none."""
    real = item != PAD  # (B, T)
    t = torch.arange(item.size(1), device=item.device)  # (T,)
    before = F.pad(item[:, :-1], (1, 0), value=PAD)  # (B, T) the product one step earlier
    start = real & (item != before)  # (B, T)
    macro = (start.cumsum(1) - 1).clamp(min=0)  # (B, T)
    opened = torch.where(start, t, 0).cummax(1).values  # (B, T) first step of its macro
    return macro, t - opened, start


def session_graph(item: torch.Tensor) -> SessionGraph:
    """The multigraph of each session in the batch (item (B, T), right-padded), batched."""
    B, T = item.shape
    real = item != PAD  # (B, T)
    step_node, node_item, node_real = distinct_nodes(item)
    macro, place, start = macro_runs(item)
    n_macros = start.sum(1)  # (B,)
    M = int(n_macros.max().clamp(min=1))
    K = int(place.masked_fill(~real, 0).max()) + 1  # the longest macro interaction
    slot = torch.where(start, macro, M)  # (B, T); M is a bin for every other step
    macro_node = step_node.new_zeros(B, M + 1).scatter_(1, slot, step_node)[:, :M]  # (B, M)
    macro_item = item.new_zeros(B, M + 1).scatter_(1, slot, item)[:, :M]  # (B, M)
    steps = item.new_full((B, M, K), -1)  # (B, M, K)
    b, s = real.nonzero(as_tuple=True)  # every real step
    steps[b, macro[b, s], place[b, s]] = s
    edge_real = torch.arange(M - 1, device=item.device) < (n_macros - 1)[:, None]  # (B, E)
    blank = ~edge_real  # (B, E) slots past a row's last edge hold 0 (steps: -1)
    return SessionGraph(step_node, node_item, node_real,
                        edge_src=macro_node[:, :-1].masked_fill(blank, 0),
                        edge_dst=macro_node[:, 1:].masked_fill(blank, 0),
                        edge_item=macro_item[:, :-1].masked_fill(blank, PAD),
                        edge_steps=steps[:, :-1].masked_fill(blank[..., None], -1),
                        edge_real=edge_real)


class EdgeGRU(nn.Module):
    """Encodes each edge's operation sequence by a GRU's last state (zero where no edge)."""

    def __init__(self, operation_size: int, hidden_size: int):
        super().__init__()
        self.gru = nn.GRU(operation_size, hidden_size, batch_first=True)

    def forward(self, operations: torch.Tensor, graph: SessionGraph) -> torch.Tensor:
        """(B, E, H) from the steps' operation embeddings (B, T, O)."""
        B, E, K = graph.edge_steps.shape
        out = operations.new_zeros(B, E, self.gru.hidden_size)  # (B, E, H)
        if not graph.edge_real.any():
            return out
        rows, edges = graph.edge_real.nonzero(as_tuple=True)  # (R,) each, R real edges
        steps = graph.edge_steps[rows, edges]  # (R, K), -1 after each edge's steps
        x = operations[rows[:, None], steps.clamp(min=0)]  # (R, K, O)
        length = (steps >= 0).sum(1)  # (R,)
        packed = pack_padded_sequence(x, length.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)  # (1, R, H), each edge's state after its last operation
        out[rows, edges] = h[0]
        return out


class StarLayer(nn.Module):
    """One star-graph layer (SGNN-HN): a gated graph cell over the multigraph's edges, then
    the nodes read the star node and the star node reads the nodes.

    An edge's message is W [e_src; g_e] (the product it leaves and its edge-GRU state, or the
    product alone without operations), summed into the node it enters (W_in) and the node it
    leaves (W_out); a GRU cell updates each node from [in; out]. Then
    alpha_i = (W_q1 h_i) . (W_k1 s) / sqrt(d), h_i = (1 - alpha_i) h_i + alpha_i s, and
    s = sum_i beta_i h_i, beta = softmax_i((W_k2 h_i) . (W_q2 s) / sqrt(d)) over real nodes.
    """

    def __init__(self, dim: int, edge_size: int):
        super().__init__()
        self.message_in = nn.Linear(edge_size, dim)  # W_in
        self.message_out = nn.Linear(edge_size, dim)  # W_out
        self.bias_in = nn.Parameter(torch.zeros(dim))
        self.bias_out = nn.Parameter(torch.zeros(dim))
        self.cell = nn.GRUCell(2 * dim, dim)
        self.q1, self.k1 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q2, self.k2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def propagate(self, h: torch.Tensor, edges: torch.Tensor, graph: SessionGraph):
        """(B, N, d) node states after one gated graph step; edges: (B, E, edge_size)."""
        B, N, d = h.shape
        real = graph.edge_real[..., None]  # (B, E, 1)
        into = h.new_zeros(B, N, d).scatter_add_(
            1, graph.edge_dst[..., None].expand(-1, -1, d), self.message_in(edges) * real)
        out_of = h.new_zeros(B, N, d).scatter_add_(
            1, graph.edge_src[..., None].expand(-1, -1, d), self.message_out(edges) * real)
        a = torch.cat([into + self.bias_in, out_of + self.bias_out], dim=-1)  # (B, N, 2d)
        real = graph.node_real  # (B, N); the cell runs on real nodes only, padding stays 0
        return h.new_zeros(B, N, d).masked_scatter_(real[..., None],
                                                    self.cell(a[real], h[real]))  # (B, N, d)

    def forward(self, h: torch.Tensor, star: torch.Tensor, edges: torch.Tensor,
                graph: SessionGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """Node states (B, N, d) and the star node (B, d) after the layer."""
        scale = h.size(-1) ** -0.5
        h = self.propagate(h, edges, graph)  # (B, N, d)
        alpha = (self.q1(h) @ self.k1(star)[:, :, None]) * scale  # (B, N, 1)
        h = (1 - alpha) * h + alpha * star[:, None, :]  # (B, N, d)
        e = (self.k2(h) @ self.q2(star)[:, :, None]).squeeze(-1) * scale  # (B, N)
        beta = torch.softmax(e.masked_fill(~graph.node_real, float("-inf")), dim=1)  # (B, N)
        return h, (beta[:, :, None] * h).sum(1)  # (B, N, d), (B, d)


class PairAttention(nn.Module):
    """Operation-aware attention: query i over keys j, with the embedding a_ij of the pair
    (operation of i, operation of j) added to each key and value.

    e_ij = q_i . (k_j + a_ij) / sqrt(d), q_i = Dropout(ReLU(W_q x_i)); the keys and values
    are the inputs plus their position embeddings (k_j = x_j + p_j);
    out_i = sum_j softmax_j(e_ij) (k_j + a_ij), then out + Dropout(FFN(out)) and LayerNorm.
    """

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.query = nn.Linear(dim, dim)  # W_q
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def weights(self, x: torch.Tensor, keys: torch.Tensor, pairs: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """(B, Q, L) weights of the queries x (B, Q, d) over keys (B, L, d), pair embeddings
        (B, Q, L, d); masked keys (B, L) False get exactly zero."""
        q = self.dropout(torch.relu(self.query(x)))  # (B, Q, d)
        e = (q[:, :, None, :] * (keys[:, None] + pairs)).sum(-1) / math.sqrt(x.size(-1))
        return torch.softmax(e.masked_fill(~mask[:, None, :], float("-inf")), dim=-1)

    def forward(self, x, keys, pairs, mask) -> torch.Tensor:
        """(B, Q, d) each query's output."""
        w = self.weights(x, keys, pairs, mask)  # (B, Q, L)
        out = w @ keys + (w[..., None] * pairs).sum(2)  # (B, Q, d)
        return self.norm(out + self.dropout(self.ffn(out)))


class UnitRows:
    """A product table read through its rows scaled to unit length (cosine = dot product)."""

    def __init__(self, table: nn.Embedding):
        self.table = table

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.table(ids), dim=-1)  # (..., d)


def pair_index(query_op: torch.Tensor, key_op: torch.Tensor, n: int) -> torch.Tensor:
    """(B, Q, L) the row of the pair (query's operation, key's operation) in a table of n * n
    rows, from operation ids (B, Q) and (B, L) below n."""
    return query_op[:, :, None] * n + key_op[:, None, :]


class EMBSR(NeuralRecommender):
    """Micro-behavior encoding for session-based recommendation.

    Nodes start from the product embeddings; the star node from their mean. `n_layers`
    `StarLayer`s, then the highway gate h_f = g h_0 + (1 - g) h_L, g = sigmoid(W_g [h_0; h_L]).
    Step t's input is x_t = h_f[its product] + W_o o_t, o_t the concatenated embeddings of
    its operation channels (`OPERATIONS` that `features` uses: activity and dwell bucket
    under full); the sequence is [star; x_1..x_T]. `PairAttention` from the star node gives
    the global vector h_g; the current one is the last step's input x_T;
    c = sigma h_g + (1 - sigma) x_T, sigma = sigmoid(W_t [h_g; x_T]); score(j) =
    scale * cos(c, e_j). Positions count back from the last step (1 = last, the star 0).
    The star's operation is unknown (the next step's): it has its own id, `STAR_OPERATION`.
    Each operation channel has its own table of pairs; their embeddings are summed.
    features=sku is the model without micro-behaviors: edges carry the product alone, steps
    have no operation term and the attention no pair term.

    Args:
        n_items, n_activities, n_dwell: vocabulary sizes (from the data).
        n_categories: accepted as by every neural model; EMBSR reads no category, so a
            `_cat` variant is refused.
        features: sku | sku_act | sku_dwell | full (the shared `MicroEmbedding`'s tables).
        item_dim: d, the product embeddings and every state.
        activity_dim, dwell_dim: operation embedding size per channel.
        max_len: positions further back share one embedding; the data module's `max_len`.
        n_layers: star-graph layers.
        dropout: on the attention query and its feed-forward output (the paper's).
        scale: w in w * cos (the paper's 12).
        init, w2v_window, w2v_epochs: random or word2vec embedding tables.
        lr, weight_decay: Adam.
        loss, n_negatives: full softmax, or sampled as RIB's (cosines: the query and the
            sampled rows scaled to unit length).
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
        max_len: int = 50,
        n_layers: int = 1,
        dropout: float = 0.2,
        scale: float = 12.0,
        init: str = "random",
        w2v_window: int = 5,
        w2v_epochs: int = 5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        loss: str = "full",
        n_negatives: int = 2048,
    ):
        super().__init__(loss, init)
        if "category" in channels(features):
            raise ConfigError(f"features={features}: EMBSR reads no product categories (its "
                              "micro-behaviors are operations on edges); use features="
                              f"{features.removesuffix('_cat')}.")
        self.save_hyperparameters()
        d = item_dim
        # the tables are read one by one (products for nodes, operations for edges and
        # steps), never concatenated, so the block's own dropout stays off
        self.embed = MicroEmbedding(n_items, n_activities, n_dwell, features, item_dim,
                                    activity_dim, dwell_dim, dropout=0.0, sparse=self.sampled)
        ops = self.operation_tables()
        op_size = sum(t.embedding_dim for t in ops.values())  # O
        self.edge_gru = EdgeGRU(op_size, d) if ops else None
        self.layers = nn.ModuleList(StarLayer(d, 2 * d if ops else d) for _ in range(n_layers))
        self.highway = nn.Linear(2 * d, d)  # W_g
        self.operation = nn.Linear(op_size, d, bias=False) if ops else None  # W_o
        self.pairs = nn.ModuleDict({c: nn.Embedding(t.num_embeddings ** 2, d)
                                    for c, t in ops.items()})
        self.position = nn.Embedding(max_len + 1, d)
        self.attention = PairAttention(d, dropout)
        self.fuse = nn.Linear(2 * d, d)  # W_t
        with torch.no_grad():  # the published N(0, 0.1) for every table
            for table in (self.embed.item, *ops.values(), *self.pairs.values(), self.position):
                table.weight.normal_(std=0.1)
            for table in (self.embed.item, *ops.values()):
                table.weight[PAD] = 0.0

    def operation_tables(self) -> dict[str, nn.Embedding]:
        """The operation channels `features` uses, by batch key."""
        return {c: t for c, t in self.embed.tables().items() if c in OPERATIONS}

    def operations(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, T, O) each step's operation embedding; None under features=sku."""
        parts = [t(batch[c]) for c, t in self.operation_tables().items()]  # (B, T, O_c)
        return torch.cat(parts, dim=-1) if parts else None

    def pair_embeddings(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1, 1 + T, d) the pair embeddings of the star query with [star; steps]."""
        B, T = batch["item"].shape
        out = self.position.weight.new_zeros(B, 1, 1 + T, self.hparams.item_dim)
        for c, table in self.pairs.items():
            star = batch[c].new_full((B, 1), STAR_OPERATION)  # (B, 1)
            key_op = torch.cat([star, batch[c]], dim=1)  # (B, 1 + T)
            out = out + table(pair_index(star, key_op, getattr(self.embed, c).num_embeddings))
        return out

    def nodes(self, graph: SessionGraph, operations: torch.Tensor | None):
        """Each node's state after the highway (B, N, d) and the star node (B, d)."""
        h0 = self.embed.item(graph.node_item)  # (B, N, d)
        real = graph.node_real[..., None]  # (B, N, 1)
        star = (h0 * real).sum(1) / real.sum(1).clamp(min=1)  # (B, d) mean of the nodes
        edges = self.embed.item(graph.edge_item)  # (B, E, d)
        if self.edge_gru is not None:
            edges = torch.cat([edges, self.edge_gru(operations, graph)], dim=-1)  # (B, E, 2d)
        h = h0
        for layer in self.layers:
            h, star = layer(h, star, edges, graph)
        g = torch.sigmoid(self.highway(torch.cat([h0, h], dim=-1)))  # (B, N, d)
        return g * h0 + (1 - g) * h, star

    def steps(self, batch: dict[str, torch.Tensor]):
        """The attention's inputs [star; x_1..x_T] (B, 1 + T, d), its keys (inputs plus
        positions, same shape), pair embeddings (B, 1, 1 + T, d) and mask (B, 1 + T)."""
        item, length = batch["item"], batch["length"]  # (B, T), (B,)
        B, T = item.shape
        graph = session_graph(item)
        ops = self.operations(batch)
        h, star = self.nodes(graph, ops)
        x = h.gather(1, graph.step_node[..., None].expand(-1, -1, h.size(-1)))  # (B, T, d)
        if ops is not None:
            x = x + self.operation(ops)
        x = torch.cat([star[:, None], x], dim=1)  # (B, 1 + T, d)
        back = (length[:, None] - torch.arange(T, device=item.device)).clamp(
            1, self.hparams.max_len)  # (B, T): 1 = the last step
        position = torch.cat([torch.zeros_like(back[:, :1]), back], dim=1)  # (B, 1 + T)
        mask = torch.cat([torch.ones_like(item[:, :1], dtype=torch.bool), item != PAD], dim=1)
        return x, x + self.position(position), self.pair_embeddings(batch), mask

    def attention_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1 + T) the star's attention over itself and each step."""
        x, keys, pairs, mask = self.steps(batch)
        return self.attention.weights(x[:, :1], keys, pairs, mask)[:, 0]

    def session(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, d) the session vector c."""
        x, keys, pairs, mask = self.steps(batch)
        global_ = self.attention(x[:, :1], keys, pairs, mask)[:, 0]  # (B, d) the star's
        current = last_state(x[:, 1:], batch["length"])  # (B, d) the last step's input
        sigma = torch.sigmoid(self.fuse(torch.cat([global_, current], dim=-1)))  # (B, d)
        return sigma * global_ + (1 - sigma) * current

    def query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.hparams.scale * F.normalize(self.session(batch), dim=-1)  # (B, d)

    def output_tables(self) -> tuple[nn.Embedding, None]:
        return self.embed.item, None

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, N) scale * cos(c, e_j) of every item id (padding's zero row scores 0)."""
        return self.query(batch) @ F.normalize(self.embed.item.weight, dim=-1).T

    def sampled_loss(self, batch: dict[str, torch.Tensor], negatives: torch.Tensor):
        """The sampled-softmax estimate of the loss, the rows read at unit length."""
        return sampled_softmax_loss(self.query(batch), UnitRows(self.embed.item), None,
                                    batch["target"], negatives, self.log_q)
