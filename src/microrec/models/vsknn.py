"""V-SKNN: session-kNN with the input's recent products and neighbours weighted higher."""

from __future__ import annotations

import numpy as np

from microrec.models.sknn import Neighbours, Pairs, Query, SessionKNN


class VSKNN(SessionKNN):
    """V-SKNN (Ludewig & Jannach, UMUAI 2018; session-rec's VMContextKNN with its defaults).

    The input is a vector over its products: the product whose last visit is the p-th of L
    visits weighs p / L (session-rec's weighting='div', a linear decay; 1 for the last
    product). sim(s, n) = sum of the weights of the products n shares with s / the number of
    distinct products of s (session-rec's `vec`). The `k` most similar sessions are the
    neighbours, and score(j) = sum over the neighbours n that contain j of sim(s, n) / d(n),
    d(n) = 1 + the number of visits in s after the last visit to a product n shares
    (weighting_score='div': 1 for a neighbour that holds the input's last product).
    Candidates, recency sampling (`sample_size`, session-rec's default 1000), the exact
    search without it, ties and checkpoints as `SessionKNN`, and so are the arguments; no
    score normalisation (ranks do not change).
    """

    name = "vsknn"

    def query_weights(self, query: Query) -> np.ndarray:
        return query.pos / query.visits[query.row]  # (Q,) linear in position

    def similarity(self, query: Query, weight: np.ndarray, pairs: Pairs) -> np.ndarray:
        return pairs.weight / query.distinct[pairs.row]  # (P,)

    def item_weights(self, query: Query, near: Neighbours) -> np.ndarray:
        steps = query.visits[near.row] - near.most(near.input_pos) + 1  # (K,) from 1
        return (1.0 / steps)[near.owner]  # (X,) one decay per neighbour

    def lone_order(self) -> tuple[np.ndarray, float | None]:
        # sim = w(j) / |s| for every session that shares only j: the newest first
        return np.zeros(self._size.size), None
