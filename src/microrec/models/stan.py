"""STAN: session-kNN with exponential decays by position, recency and distance."""

from __future__ import annotations

import logging

import numpy as np

from microrec.errors import ConfigError
from microrec.models.sknn import Neighbours, Pairs, Query, SessionKNN

log = logging.getLogger(__name__)
DAY_S = 24 * 3600


class STAN(SessionKNN):
    """STAN (Garg, Gupta, Shevade, Jain and Kumar, SIGIR 2019; session-rec's STAN, its defaults).

    Three exponential decays; a lambda set to null switches its decay off.
    - Position in the input (lambda1): the product whose last visit is the p-th of L visits
      weighs w(i) = exp((p - L) / lambda1); sim(s, n) = sum of w over the products n shares
      with s / (sqrt(sum of w^2 over s) * sqrt(|n|)), the cosine of the weighted input and
      the neighbour's set.
    - Neighbour recency (lambda2, in days): sim is multiplied by exp(-(t - t_n) / lambda2)
      before the `k` neighbours are chosen, t_n the time of the neighbour's last visit. Only
      where every training session has a timestamp (the JD lines have none: `fit` logs that
      it is skipped). The input's own time is not in the batch; any reference time t gives
      the same neighbours and ranks (it scales all of an input's neighbours alike), so t is
      the most recent candidate's time, which keeps the factors in range.
    - Distance inside the neighbour (lambda3): a neighbour's product j gets
      sim * exp(-|p_n(j) - p_n*| / lambda3), p_n(j) the position of j's last visit in n and
      p_n* the latest position in n of a product it shares with the input (as session-rec;
      the paper words it as the shared product most recent in the input).
    score(j) = the sum over the neighbours containing j. Candidates, sampling (session-rec's
    default sample_size 5000), the exact search without it, ties and checkpoints as
    `SessionKNN`.

    Args:
        n_items: product vocabulary size (from the data).
        n_activities, n_dwell: not used; every model is built with the data's three sizes.
        k: neighbours per input.
        sample_size: most recent candidate sessions compared per input; null for all of them.
        lambda1, lambda2, lambda3: the decays' scales (positions, days, positions).
    """

    name = "stan"

    def __init__(self, n_items: int, n_activities: int = 0, n_dwell: int = 0, k: int = 100,
                 sample_size: int | None = 5000, lambda1: float | None = 1.02,
                 lambda2: float | None = 5.0, lambda3: float | None = 2.05):
        for key, value in (("lambda1", lambda1), ("lambda2", lambda2), ("lambda3", lambda3)):
            if value is not None and not value > 0:
                raise ConfigError(f"stan needs {key} > 0 or null to switch it off, got {value}.")
        super().__init__(n_items, n_activities, n_dwell, k, sample_size)

    def _log_time_use(self) -> None:
        super()._log_time_use()
        if not self.timed and self.hparams.lambda2 is not None:
            log.info("stan: the training sessions have no timestamps, so the neighbour "
                     "recency decay (lambda2=%s days) is skipped", self.hparams.lambda2)

    def query_weights(self, query: Query) -> np.ndarray:
        if self.hparams.lambda1 is None:
            return super().query_weights(query)
        behind = query.pos - query.visits[query.row]  # (Q,) <= 0, 0 for the last product
        return np.exp(behind / self.hparams.lambda1)

    def similarity(self, query: Query, weight: np.ndarray, pairs: Pairs) -> np.ndarray:
        norm = np.sqrt(np.bincount(query.row, weight ** 2, minlength=query.visits.size))  # (B,)
        sim = pairs.weight / (norm[pairs.row] * np.sqrt(self._size[pairs.session]))  # (P,)
        if self.hparams.lambda2 is None or not self.timed or not sim.size:
            return sim
        time = self._time[pairs.session]  # (P,)
        newest = self._time[pairs.newest]  # (B,) sessions are in time order
        return sim * np.exp(-(newest[pairs.row] - time) / (self.hparams.lambda2 * DAY_S))

    def lone_order(self) -> tuple[np.ndarray, float | None]:
        if self.hparams.lambda2 is None or not self.timed:
            return super().lone_order()  # sim = w(j) / (|w| sqrt(|n|)): the smaller first
        # sim = w(j) / |w| * exp(-t / lambda2) * exp(key), t the newest candidate's time and
        # key = t_n / lambda2 - log(|n|) / 2: time and size both count, so the key's rounding
        # and the similarity's may order two sessions differently; the margin is far wider
        # than either (relative errors of some 1e-16 times the key's magnitude)
        key = self._time / (self.hparams.lambda2 * DAY_S) - 0.5 * np.log(self._size)
        return key, 1e-9 * max(1.0, float(np.abs(key).max(initial=0)))

    def item_weights(self, query: Query, near: Neighbours) -> np.ndarray | float:
        if self.hparams.lambda3 is None:
            return 1.0
        pos = self._pos[near.entry]  # (X,) each product's last position in its neighbour
        anchor = near.most(np.where(near.input_pos > 0, pos, 0))  # (K,) p_n*
        return np.exp(-np.abs(pos - anchor[near.owner]) / self.hparams.lambda3)
