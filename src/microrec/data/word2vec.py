"""gensim word2vec vectors for the embedding tables (the paper's initialisation)."""

from __future__ import annotations

import logging
import zlib

import numpy as np

log = logging.getLogger(__name__)
logging.getLogger("gensim").setLevel(logging.WARNING)  # its per-epoch INFO lines drown ours


def _stable_hash(text: str) -> int:
    """gensim seeds each word's starting vector with a hash; Python's own is salted per process."""
    return zlib.crc32(text.encode())


def train_vectors(sentences: list[np.ndarray], n_ids: int, dim: int, window: int = 5,
                  epochs: int = 5, seed: int = 0) -> np.ndarray:
    """Train CBOW word2vec over id sequences and return an (n_ids, dim) float32 table.

    One worker, a fixed seed and a stable hash make the vectors reproducible. Row 0
    (padding) is zero; ids absent from the corpus get a small seeded random vector.
    """
    from gensim.models import Word2Vec

    corpus = [s.tolist() for s in sentences if s.size]
    model = Word2Vec(
        sentences=corpus, vector_size=dim, window=window, min_count=1, sg=0, workers=1,
        epochs=epochs, seed=seed, hashfxn=_stable_hash,
    )
    rng = np.random.default_rng(seed)
    table = (rng.standard_normal((n_ids, dim)) * 0.01).astype(np.float32)
    known = np.array([k for k in model.wv.index_to_key if 0 < k < n_ids], dtype=np.int64)
    if known.size:
        table[known] = model.wv[known.tolist()]
    table[0] = 0.0
    log.debug("word2vec: %d of %d ids learned from %d sequences", known.size, n_ids, len(corpus))
    return table
