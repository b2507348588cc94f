"""S-KNN: score products by the training sessions most similar to the input (session-kNN).

Also the machinery V-SKNN (`vsknn.py`) and STAN (`stan.py`) share: the training sessions as
ragged product lists, the indexes that find an input's candidates, and one vectorised pass
per batch (candidates -> similarities -> k nearest -> scores) with hooks where the three
differ. The neighbour search runs on the CPU (numpy, scipy.sparse); the scores land on the
batch's device.
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
    """(input, training session) pairs sharing a product."""

    row: np.ndarray  # (P,) input
    session: np.ndarray  # (P,) session index (higher = more recent where sessions have time)
    weight: np.ndarray  # (P,) sum of the query weights of the products the two share
    newest: np.ndarray  # (B,) each input's most recent candidate session, -1 if it has none
    sim: np.ndarray | None = None  # (P,) similarity, once computed
    # (B,) a similarity that k of the input's pairs reach (-inf where it has fewer): its k
    # nearest are among the pairs at or above it
    floor: np.ndarray | None = None


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
    return owner, np.repeat(start - first, count) + np.arange(owner.size)


def kth_largest(ptr: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """(B,) the k-th largest of each group of `values` (groups laid out by `ptr`), -inf in a
    group of fewer: one linear-time partition per group, where sorting costs far more."""
    count = np.diff(ptr)  # (B,)
    kth = np.full(count.size, -np.inf)
    for r in np.flatnonzero(count >= k):
        part = values[ptr[r]:ptr[r + 1]]
        kth[r] = np.partition(part, part.size - k)[part.size - k]
    return kth


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


def locate(keys: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of `key` (X,) sits in the sorted, distinct `keys`, and whether it is there."""
    if not keys.size:
        return np.zeros(key.size, dtype=np.int64), np.zeros(key.size, dtype=bool)
    at = np.searchsorted(keys, key).clip(max=keys.size - 1)  # (X,)
    return at, keys[at] == key


@dataclass
class ProductLists:
    """Each product's training sessions, in the order the exact search reads them.

    For an input that shares only product j with them, j's sessions are listed from the
    most similar down: by the model's `lone_order` key, equal keys newest first.
    """

    ptr: np.ndarray  # (N + 1,) each product's first entry
    session: np.ndarray  # (M,)
    # (M,) with a margin: the end of each entry's run of keys that lie within the margin of
    # their neighbours in the list, so that the similarities might order them otherwise
    run_end: np.ndarray | None
    latest: np.ndarray  # (N,) the newest session that holds each product, -1 if none


def product_lists(ptr: np.ndarray, item: np.ndarray, n_items: int, key: np.ndarray,
                  margin: float | None) -> ProductLists:
    """`ProductLists` of the session lists (ptr, item), ordered by `key` (S,)."""
    session = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))  # (M,)
    latest = np.full(n_items, -1)
    np.maximum.at(latest, item, session)
    order = np.lexsort((-session, -key[session], item))  # (M,) by product, best first
    item, session = item[order], session[order]
    run_end = None
    if margin is not None:
        value = key[session]  # (M,) descending within each product
        start = np.ones(item.size, dtype=bool)
        start[1:] = (item[1:] != item[:-1]) | (value[:-1] - value[1:] > margin)
        starts = np.flatnonzero(start)
        run_end = np.append(starts[1:], item.size)[np.cumsum(start) - 1]  # (M,)
    count = np.bincount(item, minlength=n_items)  # (N,)
    return ProductLists(ptr=np.concatenate([[0], np.cumsum(count)]),
                        session=session.astype(np.int32), run_end=run_end, latest=latest)


@dataclass
class PairLists:
    """The training sessions that hold each pair of products a < b that occurs together."""

    key: np.ndarray  # (U,) a * N + b, sorted
    ptr: np.ndarray  # (U + 1,) each pair's first session
    session: np.ndarray  # (E,) sum over sessions of |n| (|n| - 1) / 2 entries


def pair_lists(ptr: np.ndarray, item: np.ndarray, n_items: int) -> PairLists:
    """`PairLists` of the session lists (ptr, item; items sorted within each session)."""
    entry = np.arange(item.size)  # (M,)
    session = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))  # (M,)
    first, second = expand(entry + 1, ptr[1:][session] - entry - 1)  # (E,) every later entry
    key = item[first] * n_items + item[second]  # (E,) a < b
    order = np.argsort(key)
    key = key[order]
    starts = np.flatnonzero(np.diff(key, prepend=-1))  # (U,) each pair's first entry
    return PairLists(key=key[starts], ptr=np.append(starts, key.size),
                     session=session[first[order]].astype(np.int32))


def shared_by_several(query: Query, weight: np.ndarray, pairs: PairLists, n_items: int,
                      n_sessions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (input, session) pairs that share two or more products, and their summed weights.

    Returns (G,) input and (G,) session, sorted by input then session, and (G,) the sums of
    the query weights of the shared products, added one by one in product order as a
    sparse product adds them (so that the sums are the same to the bit).
    """
    Q, B = query.item.size, query.visits.size
    end = np.searchsorted(query.row, query.row, side="right")  # (Q,) end of each input
    a, b = expand(np.arange(Q) + 1, end - np.arange(Q) - 1)  # (R,) entries a < b of one input
    row = query.row[a]  # (R,) sorted
    at, found = locate(pairs.key, query.item[a] * n_items + query.item[b])  # (R,)
    start = pairs.ptr[at]
    count = np.where(found, pairs.ptr[at + 1] - start, 0)  # (R,) sessions holding each pair
    shift = max(a.size, 1).bit_length()  # pair numbers take the low bits of a code
    if B * n_sessions >= 2 ** (63 - shift):
        raise ConfigError(f"a batch of {B} inputs over {n_sessions} training sessions is too "
                          f"large for the exact neighbour search; lower data.eval_batch_size.")
    # one code per (pair, session holding it): input, session, then the pair's number; sorted,
    # by input, then session, and in each (input, session) its shared pairs in query order
    _, entry = expand(start, count)  # (E,)
    code = np.repeat((row * n_sessions << shift) + np.arange(a.size), count)  # (E,)
    code += pairs.session[entry].astype(np.int64) << shift
    code.sort()
    group, mask = code >> shift, (1 << shift) - 1  # (E,) input * S + session
    first = np.flatnonzero(np.concatenate([group[:1] >= 0, group[1:] != group[:-1]]))  # (G,)
    n_pairs = np.diff(first, append=group.size)  # (G,) c (c - 1) / 2 for c shared products
    # a group's first c - 1 pairs are (a1, a2), ..., (a1, ac): its shared products in order
    head = code[first] & mask  # (G,) (a1, a2)
    total = weight[a[head]] + weight[b[head]]  # (G,)
    more = np.flatnonzero(n_pairs > 1)  # (G',) three or more
    for r in range(1, int(np.sqrt(2 * n_pairs.max(initial=1))) + 1):
        more = more[n_pairs[more] > r * (r + 1) // 2]  # c > r + 1
        total[more] += weight[b[code[first[more] + r] & mask]]
    row = row[head]  # (G,)
    return row, group[first] - row * n_sessions, total


def sharing_one(query: Query, lists: ProductLists, k: int, holds, lone_sim,
                floor: np.ndarray) -> tuple[np.ndarray, ...]:
    """For each input product j, the sessions of its list that share only j with the input
    and can be among its k nearest: the first k of them, or fewer where the list falls
    below `floor` (B,), a similarity that k other candidates of the input reach; with a
    margin, also the rest of the last session read's run.

    `holds(rows, sessions)` counts the input's products in each session, `lone_sim(entries,
    sessions)` is the similarity of a session that shares only that query entry's product.
    Returns (Y,) query entry (sorted), (Y,) session and (Y,) similarity. Any later session
    of the list that shares only j is less similar than those k (or as similar and older),
    or than the floor, so it cannot be among the k nearest.
    """
    lo, hi = lists.ptr[query.item], lists.ptr[query.item + 1]  # (Q,)
    read, found = lo.copy(), np.zeros(lo.size, dtype=np.int64)  # (Q,)
    take = np.minimum(hi - lo, k)  # (Q,) entries read in the next round
    kept = [(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0))]

    def keep(entry: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keep the sessions read that can be among the k nearest; (Y,) whether each is
        kept, and whether it is below the floor."""
        session = lists.session[entry]  # (Y,)
        sim = lone_sim(q, session)  # (Y,)
        low = sim < floor[query.row[q]]  # (Y,)
        good = ~low
        good[good] = holds(query.row[q[good]], session[good]) == 1  # sharing only j
        kept.append((q[good], session[good], sim[good]))
        return good, low

    active = np.flatnonzero(take)
    while active.size:
        owner, entry = expand(read[active], take[active])  # (Y,)
        good, low = keep(entry, active[owner])
        found[active] += np.bincount(owner, good, minlength=active.size).astype(np.int64)
        read[active] += take[active]
        # a session below the floor: the rest of the list is too (similarities fall along it)
        low = np.bincount(owner, low, minlength=active.size) > 0  # (A,)
        take = np.minimum(hi - read, np.maximum(k - found, read - lo))
        active = active[(found[active] < k) & (take[active] > 0) & ~low]
    if lists.run_end is not None:
        ended = np.flatnonzero(read > lo)  # (Q',) the rest of the last entry's run
        owner, entry = expand(read[ended], lists.run_end[read[ended] - 1] - read[ended])
        keep(entry, ended[owner])
    q, session, sim = (np.concatenate(c) for c in zip(*kept, strict=True))
    order = np.argsort(q, kind="stable")  # by input, as the rounds read them
    return q[order], session[order], sim[order]


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
    (the JD lines) every candidate counts, and `fit` says so in the log. Equal similarities
    are broken towards the more recent session (the later one in the split without
    timestamps). session-rec divides the scores by their maximum; ranks do not change, so it
    is left out.

    Without sampling the search is exact but does not compare every candidate: those that
    share two or more products with the input come from an index of the sessions of each
    pair of products, and those that share one product j only from j's sessions in the
    order such sessions rank (`lone_order`), read until k of them are found or they fall
    below the k-th similarity already reached. The result, scores and ties included, is the
    same to the bit as comparing every candidate.

    The fitted state is the training sessions, whose sizes follow the data: checkpoints
    reload because `_load_from_state_dict` takes the saved sizes, and the indexes are
    rebuilt from them.

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
        """CPU views of the session lists and the index the candidate search reads.

        Where sampling applies, an (N, S) product -> session incidence in which each product
        keeps only its `sample_size` most recent sessions: the `sample_size` most recent
        candidates of an input (any product) lie among those, and every product they share
        with it keeps them, so nothing that can be sampled is lost. Otherwise each product's
        sessions in `lone_order` (`ProductLists`) and the sessions of each pair of products
        (`PairLists`, sum over sessions of |n| (|n| - 1) / 2 entries).
        """
        self._ptr = self.session_ptr.cpu().numpy()  # (S + 1,)
        self._size = np.diff(self._ptr)  # (S,) distinct products of each session
        self._item = self.session_item.cpu().numpy()  # (M,)
        self._pos = self.session_pos.cpu().numpy()  # (M,)
        self._time = self.session_time.cpu().numpy()  # (S,) or (0,)
        self.timed = self._time.size > 0
        self.sampled = self.timed and self.hparams.sample_size is not None
        n_items, n_sessions = self.hparams.n_items, self._ptr.size - 1
        if not self.sampled:
            self._lists = product_lists(self._ptr, self._item, n_items, *self.lone_order())
            self._pairs = pair_lists(self._ptr, self._item, n_items)
            return
        session = np.repeat(np.arange(n_sessions, dtype=np.int32), self._size)  # (M,)
        by_item = np.argsort(self._item, kind="stable")  # (M,) oldest session first per product
        count = np.bincount(self._item, minlength=n_items)  # (N,)
        keep = np.minimum(count, self.hparams.sample_size)  # the newest of each product
        _, index = expand(np.cumsum(count) - keep, keep)  # (M',) positions in by_item
        self._latest = np.full(n_items, -1)  # (N,) the newest session of each product
        self._latest[count > 0] = session[by_item[np.cumsum(count)[count > 0] - 1]]
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
        near = self.nearest(query, self.candidates(query, weight))
        value = near.sim[near.owner] * self.item_weights(query, near)  # (X,)
        target = near.row[near.owner] * n_items + self._item[near.entry]  # (X,) in (B * N)
        device = batch["item"].device
        scores = torch.zeros(B * n_items, device=device)  # (B * N,)
        scores.index_add_(0, torch.from_numpy(target).to(device),
                          torch.from_numpy(value).float().to(device))
        return mask_special_(scores.view(B, n_items))  # (B, N)

    def candidates(self, query: Query, weight: np.ndarray) -> Pairs:
        """The (input, session) pairs to compare, with the summed query weights of the
        products they share and their similarities: each input's `sample_size` most recent
        candidates where sampling applies, otherwise every candidate that can be among its
        k nearest."""
        B = query.visits.size
        latest = self._latest if self.sampled else self._lists.latest  # (N,)
        newest = np.full(B, -1)  # (B,) the newest session sharing a weighted product
        live = weight > 0  # (Q,) a sparse product leaves out a sum of 0
        np.maximum.at(newest, query.row[live], latest[query.item[live]])
        if not self.sampled:
            return self._exact(query, weight, newest)
        ptr, session, total = self._sampled(query, weight)
        pairs = Pairs(row=np.repeat(np.arange(B), np.diff(ptr)), session=session, weight=total,
                      newest=newest)
        pairs.sim = self.similarity(query, weight, pairs)
        pairs.floor = kth_largest(ptr, pairs.sim, self.hparams.k)
        return pairs

    def _sampled(self, query: Query, weight: np.ndarray) -> tuple[np.ndarray, ...]:
        """(B + 1,) ptr, (P,) session and (P,) summed weight of each input's `sample_size`
        most recent candidates: one sparse product with the trimmed incidence."""
        B = query.visits.size
        inputs = sp.csr_matrix((weight, (query.row, query.item)),
                               shape=(B, self.hparams.n_items))  # (B, N)
        shared = inputs @ self._index  # (B, S) summed weights of the shared products
        shared.sort_indices()  # oldest session first in each row
        ptr, session, weight = shared.indptr, shared.indices, shared.data
        count = np.diff(ptr)  # (B,)
        limit = self.hparams.sample_size
        if (count > limit).any():
            row = np.repeat(np.arange(B), count)  # (P,)
            keep = ptr[1:][row] - np.arange(row.size) <= limit  # the newest of each input
            session, weight = session[keep], weight[keep]
            ptr = np.concatenate([[0], np.cumsum(np.minimum(count, limit))])
        return ptr, session, weight

    def _exact(self, query: Query, weight: np.ndarray, newest: np.ndarray) -> Pairs:
        """Every candidate that can be among an input's k nearest: those that share several
        products with it, and for each of its products the first sessions of its list that
        share only that one (`sharing_one`)."""
        B, n_items, k = query.visits.size, self.hparams.n_items, self.hparams.k
        row, session, total = shared_by_several(query, weight, self._pairs, n_items,
                                                self._size.size)  # (G,) sorted by input
        sim = self.similarity(query, weight, Pairs(row=row, session=session, weight=total,
                                                   newest=newest))  # (G,)
        floor = kth_largest(np.searchsorted(row, np.arange(B + 1)), sim, k)  # (B,)
        row, session, total, sim = self._above(floor, row, session, total, sim)

        def lone_sim(entry: np.ndarray, session: np.ndarray) -> np.ndarray:
            return self.similarity(query, weight, Pairs(
                row=query.row[entry], session=session, weight=weight[entry], newest=newest))
        entry, one, one_sim = sharing_one(query, self._lists, k, self.holds(query), lone_sim,
                                          floor)
        pairs = Pairs(row=np.concatenate([row, query.row[entry]]),
                      session=np.concatenate([session, one]),
                      weight=np.concatenate([total, weight[entry]]),  # one product: its weight
                      newest=newest, sim=np.concatenate([sim, one_sim]), floor=floor)
        if (pairs.weight <= 0).any():  # as in a sparse product, a sum of 0 is no pair
            keep = pairs.weight > 0
            pairs.row, pairs.session = pairs.row[keep], pairs.session[keep]
            pairs.weight, pairs.sim = pairs.weight[keep], pairs.sim[keep]
        return pairs

    def _above(self, floor: np.ndarray, row: np.ndarray, *columns: np.ndarray) -> list:
        """The pairs (sorted by input, then session) that can be among the k nearest: above
        the floor, or at it and among the k newest there (equal similarities)."""
        sim = columns[-1]
        at = np.flatnonzero(sim == floor[row])  # (T,) ties with the k-th, oldest first
        ties = np.bincount(row[at], minlength=floor.size)  # (B,)
        from_end = np.cumsum(ties)[row[at]] - 1 - np.arange(at.size)  # (T,) 0: the newest
        keep = sim > floor[row]  # (G,)
        keep[at[from_end < self.hparams.k]] = True
        keep = np.flatnonzero(keep)
        return [row[keep], *(c[keep] for c in columns)]

    def holds(self, query: Query):
        """A function (rows, sessions) -> how many of the input's products each session holds."""
        B, n_items = query.visits.size, self.hparams.n_items
        column = np.full(n_items, -1)  # (N,) the batch's products, numbered
        products = np.flatnonzero(np.bincount(query.item, minlength=n_items))  # (U,)
        column[products] = np.arange(products.size)
        table = np.zeros((B, products.size + 1), dtype=bool)  # (B, U + 1), last: none
        table[query.row, column[query.item]] = True

        def count(rows: np.ndarray, sessions: np.ndarray) -> np.ndarray:
            owner, entry = expand(self._ptr[sessions], self._size[sessions])  # (X,)
            return np.bincount(owner, table[rows[owner], column[self._item[entry]]],
                               minlength=rows.size)  # (Y,)
        return count

    def nearest(self, query: Query, pairs: Pairs) -> Neighbours:
        """Each input's `k` most similar pairs (equal ones: newest first) and their products."""
        k, sim = self.hparams.k, pairs.sim
        best = np.flatnonzero(sim >= pairs.floor[pairs.row])  # the k best, and maybe more
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

    def lone_order(self) -> tuple[np.ndarray, float | None]:
        """How the sessions rank for an input that shares exactly one product with them.

        Returns (S,) a key, higher first, whose order is that of the similarities of such
        sessions (all else equal; equal keys: the newer session first), and the margin
        within which two keys may order the computed similarities either way, or None
        where equal keys give equal similarities and unequal ones never disagree with them.
        S-KNN: sim = 1 / sqrt(|s| |n|), the smaller session first (distinct integers
        |s| |n| stay apart through sqrt and the division).
        """
        return -self._size.astype(np.float64), None
