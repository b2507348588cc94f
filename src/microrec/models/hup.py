"""HUP (Gu et al., WSDM 2020): pyramid Behavior-LSTMs over micro-behaviors, products, categories."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from microrec.models.embedding import MicroEmbedding
from microrec.models.neural import NeuralRecommender, last_state


class BehaviorLSTM(nn.Module):
    """An LSTM whose gates also read a behavior embedding b and a time embedding d.

        i, f, o = sigmoid(W x + U h + V b + bias)     (one W, U, V block per gate)
        c~      = tanh(W_c x + U_c h + bias_c)
        g_b     = sigmoid(W_b x + V_b b + bias_b)     the behavior gate
        g_d     = sigmoid(W_d x + Q_d d + bias_d)     the time gate
        c = f * c + i * (g_b * g_d * c~),   h = o * tanh(c)

    Without behavior and time (`behavior_size = time_size = 0`) there is no V, no g_b and no
    g_d: the cell is exactly `nn.LSTM` (gates in its order i, f, c~, o; its two biases are
    one here). The two extra gates read no h, so they are computed for every step at once.

    Args:
        input_size, hidden_size: sizes of x and h.
        behavior_size: size of b (0: none).
        time_size: size of d (0: none).
    """

    def __init__(self, input_size: int, hidden_size: int, behavior_size: int = 0,
                 time_size: int = 0):
        super().__init__()
        H = hidden_size
        self.input_gates = nn.Linear(input_size, 4 * H)  # W and the biases of i, f, c~, o
        self.recurrent_gates = nn.Linear(H, 4 * H, bias=False)  # U
        self.behavior_gates = (nn.Linear(behavior_size, 3 * H, bias=False)  # V of i, f, o
                               if behavior_size else None)
        self.behavior_gate = (nn.Linear(input_size + behavior_size, H)  # [W_b V_b], bias_b
                              if behavior_size else None)
        self.time_gate = nn.Linear(input_size + time_size, H) if time_size else None  # [W_d Q_d]
        bound = H ** -0.5
        with torch.no_grad():
            for p in self.parameters():  # nn.LSTM's initialisation
                p.uniform_(-bound, bound)
            self.input_gates.bias[H:2 * H] += 1.0  # forget gate open at first (the code's Keras)

    def modulation(self, x: torch.Tensor, behavior: torch.Tensor | None,
                   time: torch.Tensor | None) -> torch.Tensor | None:
        """(B, T, H) g_b * g_d of every step (None: neither gate exists)."""
        gate = None
        if self.behavior_gate is not None:
            gate = torch.sigmoid(self.behavior_gate(torch.cat([x, behavior], -1)))  # (B, T, H)
        if self.time_gate is not None:
            g_d = torch.sigmoid(self.time_gate(torch.cat([x, time], -1)))  # (B, T, H)
            gate = g_d if gate is None else gate * g_d
        return gate

    def forward(self, x: torch.Tensor, behavior: torch.Tensor | None = None,
                time: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, H) the states of x (B, T, E), behavior (B, T, E_b), time (B, T, E_d).

        From zero states; right padding does not change the real steps' states.
        """
        B, T, _ = x.shape
        if self.behavior_gates is None:
            pre = self.input_gates(x)  # (B, T, 4H): what the input adds to i, f, c~, o
        else:  # [W V] [x; b] with V's c~ block zero: one product, no (B, T, 4H) copies
            v_i, v_f, v_o = self.behavior_gates.weight.chunk(3)  # each (H, E_b)
            v = torch.cat([v_i, v_f, torch.zeros_like(v_i), v_o])  # (4H, E_b)
            pre = F.linear(torch.cat([x, behavior], -1), torch.cat([self.input_gates.weight, v], 1),
                           self.input_gates.bias)  # (B, T, 4H)
        gate = self.modulation(x, behavior, time)  # (B, T, H) or None
        # unbind, not pre[:, t]: the gradient of each slice would be a whole (B, T, 4H) tensor
        pre_t = pre.unbind(1)  # T x (B, 4H)
        gate_t = (None,) * T if gate is None else gate.unbind(1)  # T x (B, H)
        h = c = x.new_zeros(B, self.recurrent_gates.in_features)  # (B, H)
        states = []
        for t in range(T):
            i, f, g, o = (pre_t[t] + self.recurrent_gates(h)).chunk(4, -1)  # each (B, H)
            g = torch.tanh(g) if gate is None else torch.tanh(g) * gate_t[t]  # (B, H)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * g  # (B, H)
            h = torch.sigmoid(o) * torch.tanh(c)  # (B, H)
            states.append(h)
        return torch.stack(states, 1)  # (B, T, H)


class LevelAttention(nn.Module):
    """e_s = tanh(v^T tanh(W [h_s; h_last; b_s] + bias) + bias_v), softmax over real steps.

    The authors' two-layer scorer: the level's last state is the query, b_s the level's
    behavior embedding (none at the category level).
    """

    def __init__(self, hidden_size: int, behavior_size: int, attention_size: int):
        super().__init__()
        # W [h; q; b] + bias as three products: no (B, S, 2H + E_b) concatenation
        self.w_state = nn.Linear(hidden_size, attention_size)
        self.w_query = nn.Linear(hidden_size, attention_size, bias=False)
        self.w_behavior = (nn.Linear(behavior_size, attention_size, bias=False)
                           if behavior_size else None)
        self.v = nn.Linear(attention_size, 1)

    def weights(self, h: torch.Tensor, length: torch.Tensor,
                behavior: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) weights of the states h (B, S, H) of inputs of `length` (B,) real steps."""
        S = h.size(1)
        hidden = self.w_state(h) + self.w_query(last_state(h, length))[:, None, :]  # (B, S, A)
        if self.w_behavior is not None:
            hidden = hidden + self.w_behavior(behavior)  # (B, S, A)
        e = torch.tanh(self.v(torch.tanh(hidden))).squeeze(-1)  # (B, S)
        real = torch.arange(S, device=h.device)[None, :] < length[:, None]  # (B, S)
        return torch.softmax(e.masked_fill(~real, float("-inf")), dim=1)  # padding: weight 0

    def forward(self, h: torch.Tensor, length: torch.Tensor,
                behavior: torch.Tensor | None = None) -> torch.Tensor:
        a = self.weights(h, length, behavior)  # (B, S)
        return torch.bmm(a.unsqueeze(1), h).squeeze(1)  # (B, H)


class Level(nn.Module):
    """One level of the pyramid: a Behavior-LSTM over the level's steps, then attention."""

    def __init__(self, input_size: int, hidden_size: int, behavior_size: int, time_size: int,
                 attention_size: int):
        super().__init__()
        self.rnn = BehaviorLSTM(input_size, hidden_size, behavior_size, time_size)
        self.attention = LevelAttention(hidden_size, behavior_size, attention_size)

    def forward(self, x: torch.Tensor, length: torch.Tensor, behavior: torch.Tensor | None,
                time: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The states (B, S, H) and their attention pooling (B, H)."""
        h = self.rnn(x, behavior, time)  # (B, S, H)
        return h, self.attention(h, length, behavior)


def run_ends(ids: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """(B, S) true at the last step of each run of equal ids among the first `length` steps."""
    S = ids.size(1)
    steps = torch.arange(S, device=ids.device)  # (S,)
    following = F.pad(ids[:, 1:], (0, 1))  # (B, S): the next step's id
    last = steps[None, :] == (length - 1)[:, None]  # (B, S)
    return (steps[None, :] < length[:, None]) & ((ids != following) | last)


def compact(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept steps of each row moved to its front, in order: (B, K) positions, (B,) counts.

    Positions past a row's count point at steps it does not keep (right padding of the
    compacted sequence); K is the largest count in the batch.
    """
    count = keep.sum(1)  # (B,)
    K = max(int(count.max()), 1)
    order = torch.argsort((~keep).int(), dim=1, stable=True)  # (B, S): kept steps first
    return order[:, :K], count  # (B, K), (B,)


def take(x: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    """x (B, S) or (B, S, E) at the positions index (B, K) of each row."""
    if x is None or x.dim() == 2:
        return None if x is None else x.gather(1, index)  # (B, K)
    return x.gather(1, index[..., None].expand(-1, -1, x.size(-1)))  # (B, K, E)


class HUP(NeuralRecommender):
    """Hierarchical User Profiling: a pyramid of Behavior-LSTMs, one per level of detail.

    Micro-behavior level: a Behavior-LSTM over the embedded micro-behaviors, its gates reading
    the activity (behavior) and dwell (time) embeddings. Product level: one step per macro
    interaction, input [product embedding; the micro level's state at the macro
    interaction's last micro-behavior], the dwell embedding as its behavior. Category level
    (only when the embedding block has a `category` table): one step per run of consecutive
    macro interactions in one category, input [category embedding; the product level's state
    at the run's end]. Each level pools its states by attention; the user representation
    W [o_micro; o_product; o_category] is scored against the product table (full softmax).
    With features=sku there is no behavior or time input and every level is a plain LSTM.

    Args:
        n_items, n_activities, n_dwell, n_categories: vocabulary sizes (from the data).
        features: sku | sku_act | sku_dwell | full (the shared `MicroEmbedding`); a `_cat`
            variant adds the category level.
        item_dim, activity_dim, dwell_dim, category_dim: embedding size per channel.
        hidden_size: the state size of every level.
        attention_size: the hidden layer of each level's attention scorer (the authors' 20).
        dropout: on the embeddings and on the user representation.
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
        item_dim: int = 64,
        activity_dim: int = 16,
        dwell_dim: int = 16,
        category_dim: int = 16,
        hidden_size: int = 100,
        attention_size: int = 20,
        dropout: float = 0.2,
        init: str = "word2vec",
        w2v_window: int = 5,
        w2v_epochs: int = 5,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        loss: str = "full",
        n_negatives: int = 2048,
    ):
        super().__init__(loss, init)
        self.save_hyperparameters()
        self.embed = MicroEmbedding(n_items, n_activities, n_dwell, features=features,
                                    item_dim=item_dim, activity_dim=activity_dim,
                                    dwell_dim=dwell_dim, dropout=dropout, sparse=self.sampled,
                                    n_categories=n_categories, category_dim=category_dim)
        tables = self.embed.tables()
        b_size = tables["activity"].embedding_dim if "activity" in tables else 0
        d_size = tables["dwell"].embedding_dim if "dwell" in tables else 0
        H, A = hidden_size, attention_size
        self.micro = Level(self.embed.dim, H, b_size, d_size, A)
        self.product = Level(item_dim + H, H, d_size, 0, A)  # the dwell is the product's behavior
        category = tables.get("category")
        self.category = (Level(category.embedding_dim + H, H, 0, 0, A)
                         if category is not None else None)
        self.dropout = nn.Dropout(dropout)
        self.user = nn.Linear((2 if category is None else 3) * H, item_dim)  # W

    def side(self, batch: dict[str, torch.Tensor], channel: str) -> torch.Tensor | None:
        """(B, T, E_c) the embedding of a side channel the gates read; None if not in use."""
        table = self.embed.tables().get(channel)
        return None if table is None else table(batch[channel])

    def query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        length = batch["length"]  # (B,)
        dwell = self.side(batch, "dwell")  # (B, T, E_d) or None
        h_micro, o_micro = self.micro(self.embed(batch), length, self.side(batch, "activity"),
                                      dwell)  # (B, T, H), (B, H)
        # product level: one step per macro interaction, read at its last micro-behavior
        at, n_macro = compact(run_ends(batch["item"], length))  # (B, M), (B,)
        item = self.dropout(self.embed.item(take(batch["item"], at)))  # (B, M, E_item)
        h_product, o_product = self.product(torch.cat([item, take(h_micro, at)], -1), n_macro,
                                            take(dwell, at), None)  # (B, M, H), (B, H)
        levels = [o_micro, o_product]
        if self.category is not None:  # one step per run of macro interactions in a category
            category = take(batch["category"], at)  # (B, M)
            end, n_runs = compact(run_ends(category, n_macro))  # (B, C), (B,)
            c = self.dropout(self.embed.tables()["category"](take(category, end)))  # (B, C, E_c)
            _, o_category = self.category(torch.cat([c, take(h_product, end)], -1), n_runs,
                                          None, None)  # (B, H)
            levels.append(o_category)
        return self.user(self.dropout(torch.cat(levels, -1)))  # (B, E_item)

    def output_tables(self) -> tuple[nn.Embedding, None]:
        return self.embed.item, None
