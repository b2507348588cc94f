"""BPR-MF: matrix factorisation of session x product interactions, trained with BPR."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from microrec.data.schema import NUM_SPECIAL
from microrec.models.base import (
    FitFromData,
    macro_visits,
    mask_special_,
    stop_if_diverged,
    visits,
)

log = logging.getLogger(__name__)


class BPRMF(FitFromData):
    """Session and product factors fitted with BPR (Rendle et al., 2009) on the training split.

    Training: the interactions are the distinct (training session, product) pairs; each pass
    shuffles them and, for each pair (s, i), samples a product j uniformly and minimises
    -log sigmoid(u_s . v_i - u_s . v_j) + reg * (|u_s|^2 + |v_i|^2 + |v_j|^2) with Adam.
    Scoring: a new session has no factor of its own, so it is represented by the mean of the
    factors of its input's products, one per visit (macro interaction), unknown products left
    out; score(j) = mean . v_j (GRU4Rec's authors used BPR-MF on sessions the same way).
    The session factors are needed only to fit and are dropped afterwards.

    Args:
        n_items: product vocabulary size (from the data).
        n_activities, n_dwell: not used; every model is built with the data's three sizes.
        dim: factor size.
        epochs, batch_size, lr: passes over the pairs, pairs per step, Adam's step size.
        reg: L2 weight on the factors of each pair.
    """

    def __init__(self, n_items: int, n_activities: int = 0, n_dwell: int = 0, dim: int = 64,
                 epochs: int = 20, batch_size: int = 1024, lr: float = 0.01, reg: float = 1e-4):
        super().__init__()
        self.save_hyperparameters()
        self.item_factors = nn.Embedding(n_items, dim)  # (N, D)

    def fit(self, dm) -> None:
        """BPR passes over the training pairs, in this loop rather than Lightning's: its batches
        are (session, product, negative) triples, not the data module's next-product examples."""
        hp = self.hparams
        train = dm.prepared.splits["train"]
        session, item = macro_visits(train)
        pair = np.unique(session * hp.n_items + item)  # distinct (session, product) pairs
        session = torch.from_numpy(pair // hp.n_items)  # (P,)
        item = torch.from_numpy(pair % hp.n_items)  # (P,)

        sessions = nn.Embedding(train.session_end.size, hp.dim)  # (S, D)
        for table in (sessions, self.item_factors):
            nn.init.normal_(table.weight, std=0.1)
        optimizer = torch.optim.Adam([sessions.weight, self.item_factors.weight], lr=hp.lr)
        for epoch in range(hp.epochs):
            total = 0.0
            for step, idx in enumerate(torch.randperm(pair.size).split(hp.batch_size)):
                u = sessions(session[idx])  # (P', D)
                pos = self.item_factors(item[idx])  # (P', D)
                neg = self.item_factors(torch.randint(NUM_SPECIAL, hp.n_items, idx.shape))
                x = (u * (pos - neg)).sum(1)  # (P',) preference of i over j
                penalty = (u.square() + pos.square() + neg.square()).sum(1)  # (P',)
                loss = (-F.logsigmoid(x) + hp.reg * penalty).mean()
                stop_if_diverged(loss, epoch, step, hp.lr)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * idx.numel()
            log.info("BPR-MF epoch %d/%d: loss %.4f", epoch + 1, hp.epochs, total / pair.size)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        weight = visits(batch).float()  # (B, T)
        weight = weight / weight.sum(1, keepdim=True).clamp(min=1)  # mean over visits
        query = torch.einsum("bt,btd->bd", weight, self.item_factors(batch["item"]))  # (B, D)
        scores = query @ self.item_factors.weight.T  # (B, N)
        return mask_special_(scores)
