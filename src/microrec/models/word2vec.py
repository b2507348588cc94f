"""Word2vec and Word2vec Avg: score products by cosine similarity of gensim item vectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from microrec.data.schema import NUM_SPECIAL
from microrec.errors import ConfigError
from microrec.models.base import FitFromData, last_items, mask_special_, visits

QUERIES = ("last", "mean")


class Word2Vec(FitFromData):
    """Item vectors from word2vec on the training split; a session is one query vector.

    `query=last` (the paper's Word2vec) is the vector of the input's last product;
    `query=mean` (Word2vec Avg) the mean of the unit vectors of its products, one per visit
    (macro interaction), unknown products left out. Products score by cosine similarity to
    the query. The vectors are `MicroDataModule.word2vec("item", ...)`: gensim CBOW on the
    training sessions' micro-behavior product sequences, as RIB's initialisation.

    Args:
        n_items: product vocabulary size (from the data).
        n_activities, n_dwell: not used; every model is built with the data's three sizes.
        query: last | mean.
        dim, window, epochs, seed: gensim's vector size, context window, passes and seed.
    """

    def __init__(self, n_items: int, n_activities: int = 0, n_dwell: int = 0,
                 query: str = "last", dim: int = 64, window: int = 5, epochs: int = 5,
                 seed: int = 0):
        super().__init__()
        if query not in QUERIES:
            raise ConfigError(f"unknown word2vec query '{query}': choose last or mean.")
        self.save_hyperparameters()
        self.register_buffer("vectors", torch.zeros(n_items, dim))  # (N, D) unit rows

    def fit(self, dm) -> None:
        hp = self.hparams
        vectors = torch.from_numpy(dm.word2vec("item", hp.dim, hp.window, hp.epochs, hp.seed))
        vectors[:NUM_SPECIAL] = 0.0  # padding and unknown products have no vector
        self.vectors.copy_(F.normalize(vectors, dim=1))  # (N, D); zero rows stay zero

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.hparams.query == "last":
            query = self.vectors[last_items(batch)]  # (B, D)
        else:
            weight = visits(batch).float()  # (B, T)
            # the sum of the unit vectors points where their mean does
            query = torch.einsum("bt,btd->bd", weight, self.vectors[batch["item"]])  # (B, D)
        scores = F.normalize(query, dim=1) @ self.vectors.T  # (B, N) cosine similarity
        return mask_special_(scores)
