"""The Lightning data module: a source of canonical events -> cached tensors -> batches."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as L
from pytorch_lightning.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader

from microrec.data import schema as S
from microrec.data.batches import EvalBatches, Examples, LengthBucketBatches, ResumableLoader
from microrec.data.cache import (
    N_DWELL,
    exclusive,
    read_cache,
    read_cached,
    read_vectors,
    save_arrays,
    write_cache,
)
from microrec.data.protocol import (
    PROTOCOL_VERSION,
    SPLIT_NAMES,
    SPLITS,
    TOKEN_COLUMNS,
    Prepared,
    prepare,
)
from microrec.data.sources import EventSource
from microrec.errors import ConfigError, DataError

log = logging.getLogger(__name__)
# The splits each trainer stage serves: a training run also tests its chosen checkpoint
# afterwards (DESIGN.md), so an empty test split stops it before training, not after.
STAGE_SPLITS = {"fit": SPLITS, "validate": ("val",), "test": ("test",)}
STAGE_USE = {"fit": "a training run validates and then tests its chosen checkpoint",
             "validate": "trainer.validate evaluates on it", "test": "trainer.test evaluates on it"}


class MicroDataModule(L.LightningDataModule):
    """Serves one data set under one feature variant, per DESIGN.md's protocol.

    Args:
        source: the data set (see `EventSource`).
        features: sku | sku_act | sku_dwell | full; checked against what the data holds.
        buckets: dwell bucket scheme, paper | hup | quantile.
        split: train / validation / test fractions of sessions.
        eval_targets: last (one example per session) or all (every prefix).
        max_len: most recent micro-behaviors kept in an input.
        num_workers: loader processes (batches are cheap gathers; workers help on a GPU).
        min_macros: sessions with fewer macro interactions are dropped (and counted).
        cache_dir: where processed tensors and word2vec vectors are kept.
    """

    def __init__(
        self,
        source: EventSource,
        features: str = "full",
        buckets: str = "paper",
        split: tuple[float, float, float] = (0.8, 0.1, 0.1),
        eval_targets: str = "last",
        max_len: int = 50,
        min_macros: int = 2,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str = "outputs/cache",
    ):
        super().__init__()
        S.channels(features)  # fail early on an unknown variant
        if max_len < 1 or batch_size < 1 or eval_batch_size < 1:
            raise ConfigError("max_len, batch_size and eval_batch_size must be positive.")
        self.source = source
        self.features = features
        self.protocol = {"buckets": buckets, "split": tuple(float(f) for f in split),
                         "eval_targets": eval_targets, "min_macros": min_macros, "seed": seed}
        self.max_len = max_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir)
        self.prepared: Prepared | None = None

    # -- preparation ---------------------------------------------------------------------
    def cache_key(self) -> str:
        """Hash of the source data and every setting that shapes the tensors."""
        blob = json.dumps({"v": PROTOCOL_VERSION, "source": self.source.fingerprint(),
                           **self.protocol}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def cache_path(self) -> Path:
        return self.cache_dir / f"{self.source.name}-{self.cache_key()}.npz"

    def prepare_data(self) -> None:
        """Process the data into the cache once; Lightning calls this on (local) rank 0 only.

        The other ranks then load the cache in `setup`. Kept in memory here too, so this
        process's own `setup` does not read it back.
        """
        self._ready()

    def setup(self, stage: str | None = None) -> None:
        """Load the cache on every rank (building it first where no `prepare_data` did, as
        in a script without a trainer), and check the splits the trainer's stage needs."""
        prepared = self._ready()
        needed = STAGE_SPLITS.get(stage, ())
        empty = [SPLIT_NAMES[name] for name in needed if prepared.splits[name].target.size == 0]
        if empty:  # only a zero fraction leaves a split empty: prepare() refuses the rest
            many = len(empty) > 1
            raise ConfigError(
                f"data.split {list(self.protocol['split'])} leaves the {' and '.join(empty)} "
                f"split{'s' if many else ''} empty, but {STAGE_USE[stage]}: give "
                f"{'each' if many else 'it'} a positive fraction."
            )

    def _load_or_build(self) -> Prepared:
        path = self.cache_path()
        prepared = self._read(path, warn=True)
        if prepared is None:
            with exclusive(path):
                # a process that held the lock before us may have just built it
                prepared = self._read(path, warn=False)
                if prepared is None:
                    prepared = self._build(path)
        return prepared

    def _read(self, path: Path, warn: bool) -> Prepared | None:
        """The cached data, or None when the file is missing or unusable (then rebuilt)."""
        prepared = read_cached(path, lambda p: read_cache(p, self.cache_key()), warn)
        if prepared is not None:
            log.info("loaded processed %s from %s", self.source.name, path)
        return prepared

    def _build(self, path: Path) -> Prepared:
        log.info("processing %s%s (cache miss: %s)", self.source.name,
                 f" from {self.source.path}" if self.source.path else "", path)
        # no name keeps the raw table alive while prepare() slims it down
        prepared = prepare(S.validate_events(self.source.load(), self.source.name),
                           source=self.source.name, **self.protocol)
        write_cache(path, prepared, self.cache_key())
        return prepared

    def _check_features(self, prepared: Prepared) -> None:
        needs = S.channels(self.features)
        if "activity" in needs and not prepared.has_activity:
            raise ConfigError(f"features={self.features} needs activities, but data set "
                              f"'{self.source.name}' has none; use features=sku or sku_dwell.")
        if "dwell" in needs and not prepared.has_dwell:
            raise ConfigError(f"features={self.features} needs dwell times, but data set "
                              f"'{self.source.name}' has neither dwell nor timestamps; use "
                              "features=sku or sku_act.")
        if "category" in needs and not prepared.has_category:
            raise ConfigError(f"features={self.features} needs product categories, but data "
                              f"set '{self.source.name}' has none; use features="
                              f"{self.features.removesuffix('_cat')}.")

    def _ready(self) -> Prepared:
        if self.prepared is None:
            prepared = self._load_or_build()
            self._check_features(prepared)
            log.info("%s: %s", self.source.name, json.dumps(prepared.stats))
            self.prepared = prepared
        return self.prepared

    @property
    def n_items(self) -> int:
        return self._ready().n_items

    @property
    def n_activities(self) -> int:
        return self._ready().n_activities

    @property
    def n_dwell(self) -> int:
        return N_DWELL

    @property
    def n_categories(self) -> int:
        return self._ready().n_categories

    def sizes(self) -> dict[str, int]:
        """The vocabulary sizes a model is built with: the product, activity and dwell
        tables', and the category table's where the feature variant reads categories."""
        sizes = {"n_items": self.n_items, "n_activities": self.n_activities,
                 "n_dwell": self.n_dwell}
        if "category" in S.channels(self.features):
            sizes["n_categories"] = self.n_categories
        return sizes

    # -- loaders -------------------------------------------------------------------------
    def dataset(self, split: str) -> Examples:
        return Examples(self._ready().splits[split], self.max_len)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.dataset(split)
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        if shuffle:
            batches = LengthBucketBatches(data.lengths(), self.batch_size, rank=rank,
                                          world=world)
        else:
            batches = EvalBatches(len(data), self.eval_batch_size, rank=rank, world=world)
        if len(batches) == 0:
            raise DataError(
                f"{self.source.name}: the {split} split's {len(data)} examples give rank {rank} "
                f"of {world} processes no batch: use more data, a smaller data.batch_size "
                f"(now {self.batch_size}) or fewer devices."
            )
        pin = bool(trainer) and isinstance(trainer.accelerator, CUDAAccelerator)
        loader = ResumableLoader if shuffle else DataLoader  # training can stop mid-epoch
        return loader(data, sampler=batches, batch_size=None, num_workers=self.num_workers,
                      pin_memory=pin, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # -- word2vec ------------------------------------------------------------------------
    def word2vec(self, channel: str, dim: int, window: int = 5, epochs: int = 5,
                 seed: int = 0) -> np.ndarray:
        """Vectors for every id of a channel (TOKEN_COLUMNS) from the training split.

        Trained by gensim on the training sessions' micro-behavior sequences of that channel
        and cached. Row i is the vector of id i; padding is zero, ids gensim never saw keep
        a small seeded random vector.
        """
        from microrec.data.word2vec import train_vectors

        column = TOKEN_COLUMNS.index(channel)
        size = {"item": self.n_items, "activity": self.n_activities, "dwell": self.n_dwell,
                "category": self.n_categories}
        params = {"data": self.cache_key(), "channel": channel, "dim": dim, "window": window,
                  "epochs": epochs, "seed": seed}
        key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:20]
        path = self.cache_dir / f"w2v-{key}.npz"
        vectors = read_cached(path, lambda p: read_vectors(p, (size[channel], dim)))
        if vectors is None:
            train = self._ready().splits["train"]
            sentences = np.split(train.tokens[:, column], train.session_end[:-1])
            vectors = train_vectors(sentences, size[channel], dim, window, epochs, seed)
            save_arrays(path, {"vectors": vectors})
        return vectors
