"""A neighbourhood expert for RIB's explore side: how often training sessions hold a product
together with the input's products."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
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


class Cooccurrence(nn.Module):
    """Scores a * log(1 + C_all(j)) + b * log(1 + C_last(j)) with learned a, b.

    C_all(j) sums, over the input's distinct known products i, the number of training
    sessions holding both i and j; C_last(j) is that count for the input's last product
    alone. Each product keeps its `k` most frequent partners (the rest count 0).

    A training example's own session is in those counts: every input product co-occurs with
    the target there. Left in, the expert would learn to trust counts that validation and
    test inputs (from other sessions) never have, so while training each example's own
    session is taken out of every count it reads (leave one session out).
    """

    def __init__(self, n_items: int, k: int):
        super().__init__()
        self.register_buffer("partner", torch.full((n_items, k), PAD))  # (N, K)
        self.register_buffer("count", torch.zeros(n_items, k))  # (N, K)
        self.weight = nn.Parameter(torch.ones(2))  # a (all inputs), b (last product)
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
        self.partner[at] = partner.to(device)
        self.count[at] = count.float().to(device)
        contains.sort_indices()
        self.session_ptr = torch.from_numpy(contains.indptr.astype(np.int64)).to(device)
        self.session_item = torch.from_numpy(contains.indices.astype(np.int64)).to(device)
        self.example_session = torch.from_numpy(
            np.searchsorted(train.session_end, train.first, side="right")).to(device)

    def own_session(self, batch: dict[str, torch.Tensor], n_items: int) -> torch.Tensor:
        """(B, N) true on the products of each (training) example's own session."""
        session = self.example_session[batch["index"]]  # (B,)
        start, end = self.session_ptr[session], self.session_ptr[session + 1]  # (B,)
        steps = torch.arange(int((end - start).max()), device=start.device)  # (L,)
        real = steps[None, :] < (end - start)[:, None]  # (B, L)
        items = torch.where(real, self.session_item[(start[:, None] + steps).clamp(
            max=self.session_item.numel() - 1)], PAD)  # (B, L)
        own = torch.zeros(items.size(0), n_items, dtype=torch.bool, device=items.device)
        own.scatter_(1, items, True)
        own[:, PAD] = False
        return own

    def counts(self, products: torch.Tensor, use: torch.Tensor,
               own: torch.Tensor | None) -> torch.Tensor:
        """(B, N) summed counts of the partners of `products` (B, P) where `use` (B, P)."""
        partner = self.partner[products]  # (B, P, K); unused slots are PAD with count 0
        count = self.count[products]  # (B, P, K)
        if own is not None:  # the example's own session held both: take it out
            count = count - own.gather(1, partner.flatten(1)).view_as(count).float()
        count = count * use[..., None]
        scores = count.new_zeros(products.size(0), self.partner.size(0))  # (B, N)
        return scores.scatter_add_(1, partner.flatten(1), count.flatten(1))

    def forward(self, batch: dict[str, torch.Tensor], leave_out: bool) -> torch.Tensor:
        """(B, N) the expert's scores, to add to the explore logits; `leave_out`: the batch
        is from the training split, take each example's own session out of the counts."""
        item = batch["item"]  # (B, T)
        own = self.own_session(batch, self.partner.size(0)) if leave_out else None
        earlier = torch.ones(item.size(1), item.size(1), device=item.device).tril(-1).bool()
        repeated = ((item[:, :, None] == item[:, None, :]) & earlier).any(2)  # (B, T)
        distinct = (item >= NUM_SPECIAL) & ~repeated  # (B, T) each product once
        last = last_items(batch)[:, None]  # (B, 1)
        c_all = self.counts(item, distinct, own)
        c_last = self.counts(last, last >= NUM_SPECIAL, own)
        return self.weight[0] * torch.log1p(c_all) + self.weight[1] * torch.log1p(c_last)
