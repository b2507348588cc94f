"""A neighbourhood expert for RIB's explore side: how often training sessions hold a product
together with the input's products."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from microrec.data.protocol import SplitArrays
from microrec.data.schema import NUM_SPECIAL, PAD
from microrec.models.base import last_items, macro_visits


def session_cooccurrence(train: SplitArrays, n_items: int):
    """The training split's (S, N) 0/1 session x product incidence, each product's session
    count Freq(i) (N,), and the off-diagonal co-occurrence as (row i, col j, sessions holding
    both) entries."""
    session, item = macro_visits(train)
    # duplicates are summed on construction, then set to 1: a product counts once per session
    contains = sp.csr_matrix((np.ones(item.size), (session, item)),
                             shape=(train.session_end.size, n_items))
    contains.data[:] = 1.0
    freq = np.asarray(contains.sum(axis=0)).ravel()  # (N,)
    both = (contains.T @ contains).tocoo()  # (N, N), sparse
    off = both.row != both.col
    return contains, freq, both.row[off], both.col[off], both.data[off]


def keep_top(row: np.ndarray, col: np.ndarray, value: np.ndarray, k: int):
    """Each row's k largest values, largest first (equal values by column): the (row, rank)
    slots as tensors, and the kept columns and values."""
    order = np.lexsort((col, -value, row))
    row, col, value = row[order], col[order], value[order]
    rank = np.arange(row.size) - np.searchsorted(row, row)  # position inside its row
    keep = rank < k
    at = (torch.from_numpy(row[keep].astype(np.int64)), torch.from_numpy(rank[keep]))
    return at, torch.from_numpy(col[keep].astype(np.int64)), torch.from_numpy(value[keep])


class Slots(NamedTuple):
    """Each kept partner of each input's distinct known products: one slot per (example,
    input product, partner), all (S,)."""

    row: torch.Tensor  # the example
    col: torch.Tensor  # the partner
    count: torch.Tensor  # training sessions holding both (float)
    last: torch.Tensor  # true where the input product is the input's last one


class Cooccurrence(nn.Module):
    """Scores a * log(1 + C_all(j)) + b * log(1 + C_last(j)) with learned a, b.

    C_all(j) sums, over the input's distinct known products i, the number of training
    sessions holding both i and j; C_last(j) is that count for the input's last product
    alone. Each product keeps its `k` most frequent partners (the rest count 0), so an
    input's scores are non-zero on at most (its distinct products x k) columns: the expert
    works on those slots only, and adds into logits (`add_to_`) or reads chosen columns
    (`candidate_scores`) without a (batch x products) tensor of its own.

    A training example's own session is in those counts: every input product co-occurs with
    the target there. Left in, the expert would learn to trust counts that validation and
    test inputs (from other sessions) never have, so while training each example's own
    session is taken out of every count it reads (leave one session out).
    """

    def __init__(self, n_items: int, k: int):
        super().__init__()
        # each product's partners first in its row, PAD (count 0) in the unused slots after
        self.register_buffer("partner", torch.full((n_items, k), PAD))  # (N, K)
        self.register_buffer("count", torch.zeros(n_items, k))  # (N, K)
        self.weight = nn.Parameter(torch.ones(2))  # a (all inputs), b (last product)
        # each product's number of partners (derived from `partner`, not saved)
        self.register_buffer("n_partners", torch.zeros(n_items, dtype=torch.long),
                             persistent=False)
        self.register_load_state_dict_post_hook(lambda module, keys: module.count_partners())
        # the training split's sessions, for leaving one out (rebuilt by `fit`, not saved)
        self.register_buffer("session_ptr", torch.zeros(1, dtype=torch.long), persistent=False)
        self.register_buffer("session_item", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("example_session", torch.zeros(0, dtype=torch.long),
                             persistent=False)

    def fit(self, train: SplitArrays) -> None:
        """Count co-occurrences in the training split's sessions."""
        contains, _, row, col, count = session_cooccurrence(train, self.partner.size(0))
        at, partner, count = keep_top(row, col, count, self.partner.size(1))
        device = self.partner.device
        self.partner.fill_(PAD)
        self.count.zero_()
        self.partner[at] = partner.to(device)  # ranks 0, 1, ...: the partners come first
        self.count[at] = count.float().to(device)
        self.count_partners()
        contains.sort_indices()  # each session's products in id order
        self.session_ptr = torch.from_numpy(contains.indptr.astype(np.int64)).to(device)
        self.session_item = torch.from_numpy(contains.indices.astype(np.int64)).to(device)
        self.example_session = torch.from_numpy(
            np.searchsorted(train.session_end, train.first, side="right")).to(device)

    def count_partners(self) -> None:
        """Each product's number of partners, after fitting or loading the tables."""
        self.n_partners = (self.partner != PAD).sum(1)  # (N,)

    def own_pairs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The (example, product) pairs of each (training) example's own session: (O,) rows
        and (O,) products."""
        session = self.example_session[batch["index"]]  # (B,)
        start, end = self.session_ptr[session], self.session_ptr[session + 1]  # (B,)
        steps = torch.arange(int((end - start).max()), device=start.device)  # (L,)
        real = steps[None, :] < (end - start)[:, None]  # (B, L)
        row = torch.arange(session.numel(), device=start.device)[:, None].expand_as(real)
        return row[real], self.session_item[(start[:, None] + steps)[real]]

    def slots(self, batch: dict[str, torch.Tensor]) -> Slots:
        """The partners of each input's distinct known products (`Slots`), read from the
        used part of their rows only."""
        item = batch["item"]  # (B, T)
        earlier = torch.ones(item.size(1), item.size(1), device=item.device).tril(-1).bool()
        repeated = ((item[:, :, None] == item[:, None, :]) & earlier).any(2)  # (B, T)
        row, t = ((item >= NUM_SPECIAL) & ~repeated).nonzero(as_tuple=True)  # (P,) once each
        product = item[row, t]  # (P,)
        last = product == last_items(batch)[row]  # (P,)
        n = self.n_partners[product]  # (P,)
        p = torch.repeat_interleave(torch.arange(n.numel(), device=n.device), n)  # (S,)
        rank = torch.arange(p.numel(), device=n.device) - (n.cumsum(0) - n)[p]  # (S,)
        at = product[p] * self.partner.size(1) + rank  # (S,) in the flattened tables
        return Slots(row.index_select(0, p), self.partner.flatten().index_select(0, at),
                     self.count.flatten().index_select(0, at), last.index_select(0, p))

    def add_(self, out: torch.Tensor, slots: Slots, column: torch.Tensor,
             own: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """`out` (B, W) plus, in place, the expert's score of each (row, column) the slots
        fall in; the other entries of `out` are left as they are.

        Args:
            column: (S,) each slot's column in `out`.
            own: the (row, column) pairs of each example's own session, to leave out of the
                counts, or None (they keep it).
        """
        if slots.row.numel() == 0:
            return out
        width = out.size(1)
        # sorting int32 keys takes a third of the time of int64 ones
        dtype = torch.int32 if out.numel() < 2 ** 31 else torch.int64
        entry, slot_bin = torch.unique((slots.row * width + column).to(dtype),
                                       return_inverse=True)  # (E,) sorted, (S,)
        count = slots.count  # (S,)
        if own is not None:  # the example's own session held both: take it out
            own_key = (own[0] * width + own[1]).to(dtype)  # (O,)
            at = torch.searchsorted(entry, own_key).clamp(max=entry.numel() - 1)  # (O,)
            held = torch.zeros(entry.numel(), dtype=torch.bool, device=out.device)
            held[at[entry[at] == own_key]] = True
            count = count - held[slot_bin].float()
        c_all = count.new_zeros(entry.numel()).index_add_(0, slot_bin, count)  # (E,)
        c_last = count.new_zeros(entry.numel()).index_add_(0, slot_bin, count * slots.last)
        scores = self.weight[0] * torch.log1p(c_all) + self.weight[1] * torch.log1p(c_last)
        return out.put_(entry.long(), scores, accumulate=True)

    def add_to_(self, logits: torch.Tensor, batch: dict[str, torch.Tensor],
                leave_out: bool) -> torch.Tensor:
        """`logits` (B, N) plus the expert's scores, in place (the full loss, evaluation).

        A row's scores are non-zero on its slots' partners alone: the slots are grouped by
        (row, partner) with one sort and their scores added there. `leave_out`: the batch is
        from the training split, take each example's own session out of the counts.
        """
        slots = self.slots(batch)
        return self.add_(logits, slots, slots.col, self.own_pairs(batch) if leave_out else None)

    def candidate_scores(self, batch: dict[str, torch.Tensor], negatives: torch.Tensor,
                         leave_out: bool) -> torch.Tensor:
        """(B, 1 + K) the expert's scores of each example's target (column 0) and of the
        negatives (K,) shared by the batch (the sampled loss), from those columns alone."""
        target = batch["target"]  # (B,)
        distinct, inverse = torch.unique(negatives, return_inverse=True)  # (U,), (K,)
        # the columns of the scores: 0 each row's target, 1 + i the i-th distinct negative
        column = torch.zeros(self.partner.size(0), dtype=torch.long, device=target.device)
        column[distinct] = torch.arange(1, distinct.numel() + 1, device=target.device)
        slots = self.slots(batch)
        pick, slot_column = candidate_columns(slots.row, slots.col, target, column)
        own = None
        if leave_out:
            own_row, own_product = self.own_pairs(batch)  # (O,)
            own_pick, own_column = candidate_columns(own_row, own_product, target, column)
            own = own_row[own_pick], own_column
        scores = torch.zeros(target.size(0), 1 + distinct.numel(), device=target.device)
        scores = self.add_(scores, Slots(*(f[pick] for f in slots)), slot_column, own)
        return scores.index_select(1, F.pad(1 + inverse, (1, 0)))  # (B, 1 + K)

    def forward(self, batch: dict[str, torch.Tensor], leave_out: bool) -> torch.Tensor:
        """(B, N) the expert's scores of every product (to read them; the heads use
        `add_to_` and `candidate_scores`)."""
        scores = self.weight.new_zeros(batch["item"].size(0), self.partner.size(0))  # (B, N)
        return self.add_to_(scores, batch, leave_out)


def candidate_columns(row: torch.Tensor, product: torch.Tensor, target: torch.Tensor,
                      column: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of the (row, product) pairs (P,) are a candidate of `candidate_scores`, and
    their columns there: 0 where the product is the row's target, column[product] where it
    is a negative (column 0: none); a pair that is both is picked twice."""
    at_target = (product == target[row]).nonzero().squeeze(1)
    negative = (column[product] > 0).nonzero().squeeze(1)
    return (torch.cat([at_target, negative]),
            torch.cat([torch.zeros_like(at_target), column[product[negative]]]))
