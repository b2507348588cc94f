"""S-KNN: score products by the training sessions most similar to the input (session-kNN).

Also the machinery V-SKNN (`vsknn.py`) and STAN (`stan.py`) share: the training sessions as
ragged product lists, a sparse product -> session index, and one vectorised pass per batch
(candidates -> similarities -> k nearest -> scores) with hooks where the three differ. The
neighbour search runs on the CPU (scipy.sparse); the scores land on the batch's device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from microrec.errors import ConfigError
from microrec.models.base import FitFromData, macro_visits, mask_special_, visits

log = logging.getLogger(__name__)
# Fitted state whose sizes follow the training data (number of sessions, of their products),
# not the constructor's arguments: resized to the checkpoint's before it is loaded.
SESSION_BUFFERS = ("session_ptr", "session_item", "session_pos", "session_time")


@dataclass
class Query:
    """A batch's inputs as distinct (input, product) entries, sorted, unknown products left out."""

    row: np.ndarray  # (Q,) input (batch row) of each entry
    item: np.ndarray  # (Q,) product id
    pos: np.ndarray  # (Q,) 1-based position of the product's last visit in the input
    visits: np.ndarray  # (B,) visits (macro interactions on known products) of each input
    distinct: np.ndarray  # (B,) distinct known products of each input


@dataclass
class Pairs:
    """(input, training session) pairs sharing a product, sorted by input then session."""

    ptr: np.ndarray  # (B + 1,) each input's first pair
    row: np.ndarray  # (P,) input
    session: np.ndarray  # (P,) session index (higher = more recent where sessions have time)
    weight: np.ndarray  # (P,) sum of the query weights of the products the two share


@dataclass
class Neighbours:
    """Each input's `k` nearest sessions and every product of theirs."""

    row: np.ndarray  # (K,) input
    session: np.ndarray  # (K,) session index
    sim: np.ndarray  # (K,) similarity
    first: np.ndarray  # (K,) where each neighbour's products start in the arrays below
    owner: np.ndarray  # (X,) neighbour of each product entry
    entry: np.ndarray  # (X,) index into the session lists (session_item, session_pos)
    input_pos: np.ndarray  # (X,) position of the product's last visit in the input, 0 if absent

    def most(self, values: np.ndarray) -> np.ndarray:
        """(K,) the largest of `values` (X,) over each neighbour's products."""
        return np.maximum.reduceat(values, self.first) if self.first.size else values[:0]


def expand(start: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranges [start, start + count) laid end to end: (X,) owner of each element and its index."""
    owner = np.repeat(np.arange(count.size), count)
    first = np.cumsum(count) - count  # (R,) where each range begins in the output
    return owner, start[owner] + np.arange(owner.size) - first[owner]


def inputs(batch: dict[str, torch.Tensor], n_items: int) -> Query:
    """Each input's distinct known products and the position of their last visit."""
    visit = visits(batch)  # (B, T)
    pos = torch.cumsum(visit, 1)  # (B, T) visit number of each micro-behavior, from 1
    row, col = visit.nonzero(as_tuple=True)  # (V,) every visit, in input order
    key = (row * n_items + batch["item"][row, col]).cpu().numpy()  # (V,) (input, product)
    at = pos[row, col].cpu().numpy()  # (V,)
    # the last visit of each (input, product): its first occurrence in reverse order
    key, last = np.unique(key[::-1], return_index=True)  # (Q,) sorted: input, product
    row = key // n_items
    return Query(row=row, item=key % n_items, pos=at[::-1][last],
                 visits=visit.sum(1).cpu().numpy(),
                 distinct=np.bincount(row, minlength=visit.size(0)))


class SessionKNN(FitFromData):
    """S-KNN (Jannach & Ludewig, RecSys 2017; session-rec's ContextKNN with cosine similarity).

    A training session n is a set of products; the input s is the set of its known products.
    sim(s, n) = |s & n| / sqrt(|s| |n|); the `k` most similar sessions are the neighbours and
    score(j) = sum of sim(s, n) over the neighbours n that contain j. Products of the input
    are scored like any other (session-rec's default: no reminder boost, nothing excluded);
    the shared evaluation rule ranks the input's last product last.

    Candidates are the training sessions that share a product with the input (any other has
    similarity 0). Where every training session has a timestamp, only the `sample_size` most
    recent candidates are compared (session-rec's sampling='recent'); without timestamps
    (the JD lines) every candidate is, and `fit` says so in the log. Equal similarities are
    broken towards the more recent session (the later one in the split without timestamps).
    session-rec divides the scores by their maximum; ranks do not change, so it is left out.

    The fitted state is the training sessions, whose sizes follow the data: checkpoints
    reload because `_load_from_state_dict` takes the saved sizes.

    Args:
        n_items: product vocabulary size (from the data).
        n_activities, n_dwell: not used; every model is built with the data's three sizes.
        k: neighbours per input.
        sample_size: most recent candidate sessions compared per input; null for all of them.
    """

    name = "sknn"

    def __init__(self, n_items: int, n_activities: int = 0, n_dwell: int = 0, k: int = 100,
                 sample_size: int | None = 1000):
        super().__init__()
        if k < 1:
            raise ConfigError(f"{self.name} needs k >= 1 neighbours, got {k}.")
        if sample_size is not None and sample_size < k:
            raise ConfigError(f"{self.name} needs sample_size >= k ({k}), or null for every "
                              f"candidate session, got {sample_size}.")
        self.save_hyperparameters()
        # Training sessions, oldest first: each one's distinct products (sorted) and the
        # position of each product's last visit in it (from 1), as ragged rows.
        self.register_buffer("session_ptr", torch.zeros(1, dtype=torch.long))  # (S + 1,)
        self.register_buffer("session_item", torch.zeros(0, dtype=torch.long))  # (M,)
        self.register_buffer("session_pos", torch.zeros(0, dtype=torch.long))  # (M,)
        # (S,) time of each session in seconds, or (0,) where some session has none
        self.register_buffer("session_time", torch.zeros(0, dtype=torch.float64))
        self._build_index()

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, dm) -> None:
        n_items = self.hparams.n_items
        train = dm.prepared.splits["train"]
        session, item = macro_visits(train)  # (V,) every visit, sessions in split order
        n_sessions = train.session_end.size
        pos = np.arange(session.size) - np.searchsorted(session, session) + 1  # (V,) from 1

        time = train.session_time  # (S,)
        timed = n_sessions > 0 and bool(np.isfinite(time).all())
        order = np.argsort(time, kind="stable") if timed else np.arange(n_sessions)
        recency = np.empty(n_sessions, dtype=np.int64)
        recency[order] = np.arange(n_sessions)  # each session's new index: oldest first

        # one entry per (session, product), with the position of its last visit
        key = recency[session] * n_items + item  # (V,)
        key, last = np.unique(key[::-1], return_index=True)  # (M,) sorted: session, product
        count = np.bincount(key // n_items, minlength=n_sessions)  # (S,)
        self.session_ptr = torch.from_numpy(np.concatenate([[0], np.cumsum(count)]))
        self.session_item = torch.from_numpy(key % n_items)
        self.session_pos = torch.from_numpy(pos[::-1][last])
        self.session_time = torch.from_numpy(time[order] if timed else np.zeros(0))
        self._build_index()
        self._log_time_use()

    def _log_time_use(self) -> None:
        """Say which time-based settings the data cannot support."""
        if not self.timed and self.hparams.sample_size is not None:
            log.info("%s: the training sessions have no timestamps, so sample_size=%d is not "
                     "applied: every session that shares a product with the input is a "
                     "candidate", self.name, self.hparams.sample_size)

    def _build_index(self) -> None:
        """CPU views of the session lists and the (N, S) product -> session incidence.

        Where sampling applies, each product keeps only its `sample_size` most recent
        sessions: the `sample_size` most recent candidates of an input (any product) lie
        among those, and every product they share with it keeps them, so nothing that can
        be sampled is lost.
        """
        self._ptr = self.session_ptr.cpu().numpy()  # (S + 1,)
        self._size = np.diff(self._ptr)  # (S,) distinct products of each session
        self._item = self.session_item.cpu().numpy()  # (M,)
        self._pos = self.session_pos.cpu().numpy()  # (M,)
        self._time = self.session_time.cpu().numpy()  # (S,) or (0,)
        self.timed = self._time.size > 0
        n_items, n_sessions = self.hparams.n_items, self._ptr.size - 1
        session = np.repeat(np.arange(n_sessions, dtype=np.int32), self._size)  # (M,)
        by_item = np.argsort(self._item, kind="stable")  # (M,) oldest session first per product
        count = np.bincount(self._item, minlength=n_items)  # (N,)
        end = np.cumsum(count)  # (N,)
        keep = count
        if self.timed and self.hparams.sample_size is not None:
            keep = np.minimum(count, self.hparams.sample_size)  # the newest of each product
        _, index = expand(end - keep, keep)  # (M',) positions in by_item
        self._index = sp.csr_matrix(
            (np.ones(index.size), session[by_item[index]], np.concatenate([[0], np.cumsum(keep)])),
            shape=(n_items, n_sessions))  # (N, S)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in SESSION_BUFFERS:  # sizes come from the data: take the checkpoint's
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._build_index()

    # -- scoring ------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        B, n_items = batch["item"].size(0), self.hparams.n_items
        query = inputs(batch, n_items)
        weight = self.query_weights(query)  # (Q,)
        pairs = self.candidates(query, weight)
        near = self.nearest(query, pairs, self.similarity(query, weight, pairs))
        value = near.sim[near.owner] * self.item_weights(query, near)  # (X,)
        target = near.row[near.owner] * n_items + self._item[near.entry]  # (X,) in (B * N)
        device = batch["item"].device
        scores = torch.zeros(B * n_items, device=device)  # (B * N,)
        scores.index_add_(0, torch.from_numpy(target).to(device),
                          torch.from_numpy(value).float().to(device))
        return mask_special_(scores.view(B, n_items))  # (B, N)

    def candidates(self, query: Query, weight: np.ndarray) -> Pairs:
        """Every (input, session) pair sharing a product, with the summed query weights;
        only each input's `sample_size` most recent where sessions have time."""
        B = query.visits.size
        inputs = sp.csr_matrix((weight, (query.row, query.item)),
                               shape=(B, self.hparams.n_items))  # (B, N)
        shared = inputs @ self._index  # (B, S) summed weights of the shared products
        shared.sort_indices()  # oldest session first in each row
        ptr, session, weight = shared.indptr, shared.indices, shared.data
        count = np.diff(ptr)  # (B,)
        limit = self.hparams.sample_size
        if self.timed and limit is not None and (count > limit).any():
            row = np.repeat(np.arange(B), count)  # (P,)
            keep = ptr[1:][row] - np.arange(row.size) <= limit  # the newest of each input
            session, weight = session[keep], weight[keep]
            count = np.minimum(count, limit)
            ptr = np.concatenate([[0], np.cumsum(count)])
        return Pairs(ptr=ptr, row=np.repeat(np.arange(B), count), session=session,
                     weight=weight)

    def nearest(self, query: Query, pairs: Pairs, sim: np.ndarray) -> Neighbours:
        """Each input's `k` most similar pairs (equal ones: newest first) and their products."""
        k = self.hparams.k
        count = np.diff(pairs.ptr)  # (B,)
        kth = np.full(count.size, -np.inf)  # (B,) each input's k-th largest similarity
        for r in np.flatnonzero(count > k):  # a linear-time partition per input, where
            part = sim[pairs.ptr[r]:pairs.ptr[r + 1]]  # sorting every pair costs far more
            kth[r] = np.partition(part, part.size - k)[part.size - k]
        best = np.flatnonzero(sim >= kth[pairs.row])  # the k best, and any tied with the k-th
        best = best[np.lexsort((-pairs.session[best], -sim[best], pairs.row[best]))]  # by
        row = pairs.row[best]  # input, most similar first
        near = best[np.arange(best.size) - np.searchsorted(row, row) < k]  # (K,)
        session, row = pairs.session[near], pairs.row[near]
        start, count = self._ptr[session], self._size[session]  # (K,)
        owner, entry = expand(start, count)  # (X,)
        # where each product sits in its input: looked up among the input's sorted keys
        n_items = self.hparams.n_items
        keys = query.row * n_items + query.item  # (Q,) sorted
        key = row[owner] * n_items + self._item[entry]  # (X,)
        at = np.searchsorted(keys, key).clip(max=keys.size - 1)  # (X,); no X without keys
        return Neighbours(row=row, session=session, sim=sim[near],
                          first=np.cumsum(count) - count, owner=owner, entry=entry,
                          input_pos=np.where(keys[at] == key, query.pos[at], 0))

    # -- what S-KNN, V-SKNN and STAN do differently -------------------------------------------
    def query_weights(self, query: Query) -> np.ndarray:
        """(Q,) float64 weight of each input product: S-KNN's binary vector."""
        return np.ones(query.item.size)

    def similarity(self, query: Query, weight: np.ndarray, pairs: Pairs) -> np.ndarray:
        """(P,) float64 similarity that picks the neighbours: cosine of the two sets."""
        return pairs.weight / np.sqrt(query.distinct[pairs.row] * self._size[pairs.session])

    def item_weights(self, query: Query, near: Neighbours) -> np.ndarray | float:
        """Factor on its neighbour's similarity for each neighbour product (X,): S-KNN
        weighs every product alike."""
        return 1.0
