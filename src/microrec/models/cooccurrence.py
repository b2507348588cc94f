"""A neighbourhood expert for RIB's explore side: how often training sessions hold a product
together with the input's products."""

from __future__ import annotations

from typing import NamedTuple

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


def example_sessions(train: SplitArrays) -> torch.Tensor:
    """(N,) each training example's session, as its index in `train.session_end`."""
    return torch.from_numpy(np.searchsorted(train.session_end, train.first, side="right"))


def session_steps(ptr: torch.Tensor, session: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each session's entries in arrays that `ptr` (S + 1,) cuts into sessions: (B, L) their
    places (clamped in range past a session's end) and (B, L) whether they are the session's."""
    start, end = ptr[session], ptr[session + 1]  # (B,)
    steps = torch.arange(int((end - start).max()), device=start.device)  # (L,)
    real = steps[None, :] < (end - start)[:, None]  # (B, L)
    return (start[:, None] + steps).clamp(max=int(ptr[-1]) - 1), real


def places(distinct: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Each of `ids` (any shape) as its place among the sorted `distinct` ids (U,), or U
    where it is not among them: a lookup rather than a comparison with every one."""
    u = distinct.numel()
    at = torch.searchsorted(distinct, ids.contiguous()).clamp(max=u - 1)
    return torch.where(distinct[at] == ids, at, u)


class Slots(NamedTuple):
    """Each kept partner of each input's distinct known products: one slot per (example,
    input product, partner), all (S,)."""

    row: torch.Tensor  # the example
    col: torch.Tensor  # the partner
    count: torch.Tensor  # training sessions holding both (float)
    last: torch.Tensor  # true where the input product is the input's last one


class Inputs(NamedTuple):
    """Each input's distinct known products, all (P,), and the batch's distinct products
    (D,) with their partners, read once however many inputs hold them."""

    row: torch.Tensor  # the example
    last: torch.Tensor  # true where the product is the input's last one
    which: torch.Tensor  # the product, as its place in `product`
    product: torch.Tensor  # (D,)
    partner: torch.Tensor  # (D, K) their kept partners, PAD in unused slots


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
        contains.sort_indices()  # each session's products in id order
        self.session_ptr = torch.from_numpy(contains.indptr.astype(np.int64)).to(device)
        self.session_item = torch.from_numpy(contains.indices.astype(np.int64)).to(device)
        self.example_session = example_sessions(train).to(device)

    def own_pairs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The (example, product) pairs of each (training) example's own session: (O,) rows
        and (O,) products."""
        at, real = session_steps(self.session_ptr, self.example_session[batch["index"]])
        row = torch.arange(real.size(0), device=real.device)[:, None].expand_as(real)
        return row[real], self.session_item[at[real]]

    def inputs(self, batch: dict[str, torch.Tensor]) -> Inputs:
        """Each input's distinct known products and their partners (`Inputs`)."""
        item = batch["item"].sort(dim=1).values  # (B, T) equal products side by side
        first = torch.ones_like(item, dtype=torch.bool)  # (B, T)
        first[:, 1:] = item[:, 1:] != item[:, :-1]
        row, t = ((item >= NUM_SPECIAL) & first).nonzero(as_tuple=True)  # (P,) once each
        product = item[row, t]  # (P,)
        last = product == last_items(batch)[row]  # (P,)
        distinct, which = torch.unique(product, return_inverse=True)  # (D,), (P,)
        return Inputs(row, last, which, distinct, self.partner.index_select(0, distinct))

    def slots(self, inputs: Inputs) -> Slots:
        """The used (not PAD) slots of the inputs' partner rows (`Slots`)."""
        k = self.partner.size(1)
        partner = inputs.partner.index_select(0, inputs.which)  # (P, K)
        at = (partner != PAD).flatten().nonzero().squeeze(1)  # (S,)
        p = at // k  # (S,) the input product of each slot
        at_table = inputs.product.index_select(0, inputs.which.index_select(0, p)) * k + at % k
        return Slots(inputs.row.index_select(0, p), partner.flatten().index_select(0, at),
                     self.count.flatten().index_select(0, at_table),
                     inputs.last.index_select(0, p))

    @staticmethod
    def log_counts(bins: torch.Tensor, count: torch.Tensor, last: torch.Tensor, n_bins: int,
                   held: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """log(1 + C_all) and log(1 + C_last) (n_bins,) of bins of (example, product) pairs.

        Args:
            bins, count: each slot's bin and count, (S,) or (P, K) alike.
            last: (S,) or (P,) whether the slot's input product is the input's last one; the
                last product's partners are distinct, so a bin (bar a catch-all one) holds at
                most one of them (C_last is that slot's count, 0 in the other bins).
            held: (n_bins,) whether the example's own session held the bin's pair (then each
                of its slots counts one session less), or None.
        """
        if held is not None:  # the example's own session held both: take it out
            count = count - held.index_select(0, bins.flatten()).view_as(count).float()
        c_all = count.new_zeros(n_bins).scatter_add_(0, bins.flatten(), count.flatten())
        log_last = count.new_zeros(n_bins).index_put_(
            (bins[last].flatten(),), torch.log1p(count[last].flatten()))
        return torch.log1p(c_all), log_last

    def score(self, log_all: torch.Tensor, log_last: torch.Tensor) -> torch.Tensor:
        """a log(1 + C_all) + b log(1 + C_last), elementwise."""
        return self.weight[0] * log_all + self.weight[1] * log_last

    def add_to_(self, logits: torch.Tensor, batch: dict[str, torch.Tensor],
                leave_out: bool) -> torch.Tensor:
        """`logits` (B, N) plus the expert's scores, in place (the full loss, evaluation).

        A row's scores are non-zero on its slots' partners alone: the slots are grouped by
        (row, partner) with one sort and their scores added there. `leave_out`: the batch is
        from the training split, take each example's own session out of the counts.
        """
        slots = self.slots(self.inputs(batch))
        if slots.row.numel() == 0:
            return logits
        n = logits.size(1)
        # sorting int32 keys takes a third of the time of int64 ones
        dtype = torch.int32 if logits.numel() < 2 ** 31 else torch.int64
        entry, slot_bin = torch.unique((slots.row * n + slots.col).to(dtype),
                                       return_inverse=True)  # (E,) sorted, (S,)
        held = None
        if leave_out:
            own_row, own_product = self.own_pairs(batch)  # (O,)
            own_key = (own_row * n + own_product).to(dtype)  # (O,)
            at = torch.searchsorted(entry, own_key).clamp(max=entry.numel() - 1)  # (O,)
            held = torch.zeros(entry.numel(), dtype=torch.bool, device=logits.device)
            held[at[entry[at] == own_key]] = True
        scores = self.score(*self.log_counts(slot_bin, slots.count, slots.last, entry.numel(),
                                             held))  # (E,)
        return logits.put_(entry.long(), scores, accumulate=True)

    def candidate_scores(self, batch: dict[str, torch.Tensor], negatives: torch.Tensor,
                         leave_out: bool) -> torch.Tensor:
        """(B, 1 + K) the expert's scores of each example's target (column 0) and of the
        negatives (K,) shared by the batch (the sampled loss), from those columns alone.

        Every slot of the inputs' partner rows falls in a (B, U + 1) grid of bins: one for
        each of the U distinct targets and negatives, one for every other product."""
        inputs, target = self.inputs(batch), batch["target"]  # (B,)
        b = target.size(0)
        distinct, inverse = torch.unique(torch.cat([target, negatives]),
                                         return_inverse=True)  # (U,), (B + K,)
        u = distinct.numel()
        column = torch.full((self.partner.size(0),), u, device=target.device)  # (N,) u: other
        column[distinct] = torch.arange(u, device=target.device)
        partner_column = column.index_select(0, inputs.partner.flatten())  # (D * K,)
        partner_column = partner_column.view_as(inputs.partner).index_select(0, inputs.which)
        bins = inputs.row[:, None] * (u + 1) + partner_column  # (P, K)
        held = None
        if leave_out:
            own_row, own_product = self.own_pairs(batch)  # (O,)
            own_column = column[own_product]  # (O,)
            held = torch.zeros(b * (u + 1), dtype=torch.bool, device=target.device)
            held[(own_row * (u + 1) + own_column)[own_column < u]] = True
        count = self.count.index_select(0, inputs.product).index_select(0, inputs.which)
        # count (P, K) is 0 in unused slots
        logs = self.log_counts(bins, count, inputs.last, b * (u + 1), held)
        # each row's target, then the negatives: (B, 1 + K) each
        log_all, log_last = (torch.cat([log.view(b, u + 1).gather(1, inverse[:b, None]),
                                        log.view(b, u + 1).index_select(1, inverse[b:])], dim=1)
                             for log in logs)
        return self.score(log_all, log_last)

    def forward(self, batch: dict[str, torch.Tensor], leave_out: bool) -> torch.Tensor:
        """(B, N) the expert's scores of every product (to read them; the heads use
        `add_to_` and `candidate_scores`)."""
        scores = self.weight.new_zeros(batch["item"].size(0), self.partner.size(0))  # (B, N)
        return self.add_to_(scores, batch, leave_out)


class Transitions(nn.Module):
    """Scores c * log(1 + T(j)) with a learned c: T(j) is how many times j directly follows
    the input's last product in the training sessions (one macro interaction after it).

    Each product keeps its `k` most frequent successors (the rest count 0), so an input's
    scores are non-zero on at most k columns. As `Cooccurrence` does, a training example
    reads the counts without its own session's transitions: there its last product is always
    followed by its target.
    """

    def __init__(self, n_items: int, k: int):
        super().__init__()
        self.register_buffer("successor", torch.full((n_items, k), PAD))  # (N, K)
        self.register_buffer("count", torch.zeros(n_items, k))  # (N, K)
        self.weight = nn.Parameter(torch.ones(1))  # c
        # the training split's sessions as macro interactions, for leaving one out (rebuilt
        # by `fit`, not saved)
        self.register_buffer("session_ptr", torch.zeros(1, dtype=torch.long), persistent=False)
        self.register_buffer("session_item", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("example_session", torch.zeros(0, dtype=torch.long),
                             persistent=False)

    def fit(self, train: SplitArrays) -> None:
        """Count the training split's transitions between consecutive macro interactions."""
        n = self.successor.size(0)
        session, item = macro_visits(train)  # (M,) each, sessions in order
        same = session[1:] == session[:-1]  # (M - 1,) a transition inside one session
        pair, count = np.unique(item[:-1][same] * n + item[1:][same], return_counts=True)
        at, successor, count = keep_top(pair // n, pair % n, count, self.successor.size(1))
        device = self.successor.device
        self.successor.fill_(PAD)
        self.count.zero_()
        self.successor[at] = successor.to(device)
        self.count[at] = count.float().to(device)
        ptr = np.searchsorted(session, np.arange(train.session_end.size + 1))  # (S + 1,)
        self.session_ptr = torch.from_numpy(ptr.astype(np.int64)).to(device)
        self.session_item = torch.from_numpy(item).to(device)
        self.example_session = example_sessions(train).to(device)

    def own_counts(self, batch: dict[str, torch.Tensor], successor: torch.Tensor) -> torch.Tensor:
        """(B, K) how many times each of `successor` (B, K) directly follows the example's
        last product in its own (training) session."""
        at, real = session_steps(self.session_ptr, self.example_session[batch["index"]])
        visit = self.session_item[at].masked_fill(~real, PAD)  # (B, L) its macro interactions
        after_last = visit[:, :-1] == last_items(batch)[:, None]  # (B, L - 1)
        follower = visit[:, 1:].masked_fill(~after_last, PAD)  # (B, L - 1)
        own = (successor[:, :, None] == follower[:, None, :]).sum(-1)  # (B, K)
        return own.masked_fill(successor == PAD, 0).float()

    def slots(self, batch: dict[str, torch.Tensor],
              leave_out: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The last product's kept successors (B, K) and their scores (B, K), 0 in unused
        slots. `leave_out`: the batch is from the training split."""
        last = last_items(batch)  # (B,)
        successor, count = self.successor[last], self.count[last]  # (B, K) each
        if leave_out:
            count = count - self.own_counts(batch, successor)
        return successor, self.weight * torch.log1p(count)

    def add_to_(self, logits: torch.Tensor, batch: dict[str, torch.Tensor],
                leave_out: bool) -> torch.Tensor:
        """`logits` (B, N) plus the expert's scores, in place."""
        successor, score = self.slots(batch, leave_out)
        return logits.scatter_add_(1, successor, score)  # unused slots add 0 to PAD

    def candidate_scores(self, batch: dict[str, torch.Tensor], negatives: torch.Tensor,
                         leave_out: bool) -> torch.Tensor:
        """(B, 1 + K') the expert's scores of each example's target (column 0) and of the
        negatives (K',) shared by the batch (the sampled loss)."""
        successor, score = self.slots(batch, leave_out)  # (B, K) each
        target = (score * (successor == batch["target"][:, None])).sum(1, keepdim=True)  # (B, 1)
        distinct, inverse = torch.unique(negatives, return_inverse=True)  # (U,), (K',)
        at = places(distinct, successor)  # (B, K) U: not a negative
        grid = score.new_zeros(score.size(0), distinct.numel() + 1).scatter_add_(
            1, at, score)  # (B, U + 1)
        return torch.cat([target, grid.index_select(1, inverse)], dim=1)

    def forward(self, batch: dict[str, torch.Tensor], leave_out: bool) -> torch.Tensor:
        """(B, N) the expert's scores of every product (to read them)."""
        scores = self.weight.new_zeros(batch["item"].size(0), self.successor.size(0))  # (B, N)
        return self.add_to_(scores, batch, leave_out)
