"""The Lightning data module: a source of canonical events -> cached tensors -> batches."""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl
import pytorch_lightning as L
import torch
from pytorch_lightning.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader, Dataset, Sampler

from microrec import schema as S
from microrec.errors import ConfigError, DataError
from microrec.files import atomic_write, writing
from microrec.protocol import (
    N_BUCKETS,
    PROTOCOL_VERSION,
    SPLIT_NAMES,
    SPLITS,
    Prepared,
    SplitArrays,
    prepare,
)
from microrec.resume import ResumableLoader
from microrec.sources import check_reads_file

try:
    import fcntl
except ImportError:  # Windows: no lock; concurrent builders still each write a whole file
    fcntl = None

log = logging.getLogger(__name__)
CACHE_FORMAT = 3  # layout of the processed-data cache file; bump when it changes
N_DWELL = N_BUCKETS + S.NUM_SPECIAL
# The splits each trainer stage serves: a training run also tests its chosen checkpoint
# afterwards (DESIGN.md), so an empty test split stops it before training, not after.
STAGE_SPLITS = {"fit": SPLITS, "validate": ("val",), "test": ("test",)}
STAGE_USE = {"fit": "a training run validates and then tests its chosen checkpoint",
             "validate": "trainer.validate evaluates on it", "test": "trainer.test evaluates on it"}


class EventSource(Protocol):
    """What a data set provides: a name, a content hash, and the canonical event table.

    A source may also expose `activity_groups` (group name -> activity names, as
    `schema.PAPER_GROUPS`) for the Section 3 analyses.
    """

    name: str

    def fingerprint(self) -> str: ...

    def load(self) -> pl.DataFrame: ...


class Examples(Dataset):
    """Examples of one split, served a whole batch per index list (no per-example Python).

    Inputs are right-padded: real tokens first, so a causal encoder's state at position
    length-1 is exactly the state after the last real token.
    """

    def __init__(self, arrays: SplitArrays, max_len: int):
        self.tokens = torch.from_numpy(arrays.tokens)  # (E, 3) int32
        self.first = torch.from_numpy(arrays.first)  # (N,)
        self.end = torch.from_numpy(arrays.end)  # (N,)
        self.target = torch.from_numpy(arrays.target)  # (N,)
        self.max_len = max_len

    def __len__(self) -> int:
        return self.target.numel()

    def lengths(self) -> torch.Tensor:
        """(N,) input length of every example after truncation to max_len."""
        return (self.end - self.first).clamp(max=self.max_len)

    def __getitem__(self, idx) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        end = self.end[idx]  # (B,)
        start = torch.maximum(self.first[idx], end - self.max_len)  # most recent max_len kept
        length = end - start  # (B,)
        steps = torch.arange(int(length.max()))  # (T,)
        rows = start[:, None] + steps  # (B, T)
        real = steps[None, :] < length[:, None]  # (B, T)
        tok = self.tokens[torch.where(real, rows, 0)] * real[..., None]  # (B, T, 3), pad = 0
        tok = tok.long()
        return {
            "item": tok[..., 0],
            "activity": tok[..., 1],
            "dwell": tok[..., 2],
            "length": length,
            "target": self.target[idx],
            "index": idx,  # (B,) example index in the split, for per-example results
        }


class LengthBucketBatches(Sampler):
    """Random batches of similar input length, so little compute goes to padding.

    Each epoch shuffles all examples, sorts windows of `pool` batches by length, cuts them
    into batches and shuffles the batch order. The order depends only on torch's initial
    seed (set by `seed_everything`) and the epoch, so every DDP rank draws the same order
    and takes its own share: batches rank, rank + world, ..., cut to an equal count so all
    ranks run the same number of steps.
    """

    def __init__(self, lengths: torch.Tensor, batch_size: int, pool: int = 50,
                 rank: int = 0, world: int = 1):
        self.lengths = lengths
        self.batch_size = batch_size
        self.window = batch_size * pool
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.lengths.numel() // self.batch_size) // self.world

    def __iter__(self):
        g = torch.Generator().manual_seed((torch.initial_seed() + 1_000_003 * self.epoch) % 2**63)
        self.epoch += 1  # a new order next time even if no trainer calls set_epoch
        order = torch.randperm(self.lengths.numel(), generator=g)
        batches = []
        for window in order.split(self.window):
            window = window[torch.argsort(self.lengths[window], stable=True)]
            batches.extend(window.split(self.batch_size))
        shuffled = torch.randperm(len(batches), generator=g).tolist()
        for i in shuffled[self.rank::self.world][:len(self)]:
            yield batches[i]


class EvalBatches(Sampler):
    """Consecutive batches in example order; under DDP each rank takes every world-th batch.

    No example is repeated or padded in, so the metric states summed over ranks equal a
    single process's exactly.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        if -(-n // batch_size) < world:
            # a rank without a batch would skip the epoch end and leave the others waiting
            # in the metric sync, so small splits are cut into one smaller batch per rank
            batch_size = max(1, -(-n // world))
        self.batches = torch.arange(n).split(batch_size)[rank::world]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


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
        path: the data file or folder the source reads, logged. Configs of file-backed
            data sets interpolate it into the source (`source.path: ${data.path}`) so that
            `data.path=...` points the data set elsewhere.
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
        path: str | None = None,
    ):
        super().__init__()
        S.channels(features)  # fail early on an unknown variant
        check_reads_file(source, path)
        if max_len < 1 or batch_size < 1 or eval_batch_size < 1:
            raise ConfigError("max_len, batch_size and eval_batch_size must be positive.")
        self.source = source
        self.path = path
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
                 f" from {self.path}" if self.path else "", path)
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
        """Vectors for every id of a channel (item, activity, dwell) from the training split.

        Trained by gensim on the training sessions' micro-behavior sequences of that channel
        and cached. Row i is the vector of id i; padding is zero, ids gensim never saw keep
        a small seeded random vector.
        """
        from microrec.word2vec import train_vectors

        column = {"item": 0, "activity": 1, "dwell": 2}[channel]
        size = {"item": self.n_items, "activity": self.n_activities, "dwell": self.n_dwell}
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


# -- cache files -------------------------------------------------------------------------------
# Every cache file is an .npz of plain arrays: nothing in it needs pickle, and each array's
# bytes carry the zip CRC that `load_arrays` checks, so a damaged file is rebuilt, never used.
def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` as one .npz, atomically."""
    def save(tmp):
        with open(tmp, "wb") as f:  # a file object: given a name, numpy would append .npz
            np.savez(f, **arrays)

    atomic_write(path, save)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a file written by `save_arrays`, each checked against its zip CRC.

    zipfile compares a member's CRC only once the member is read to its end, and numpy
    reads only the bytes an array's header asks for: so each member is read to its end here.
    """
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            with archive.open(name) as f:
                arrays[name.removesuffix(".npy")] = np.lib.format.read_array(
                    f, allow_pickle=False)
                if f.read():
                    raise ValueError(f"{name} holds more bytes than its array")
    return arrays


def read_cached(path: Path, read, warn: bool = True):
    """`read(path)`, or None where the file is missing or fails any check (a warning names
    it, and the caller rebuilds it)."""
    if not path.exists():
        return None
    try:
        return read(path)
    except Exception as e:  # any failure to read it means only that it must be rebuilt
        if warn:
            log.warning("cache file %s is unreadable (%s: %s); rebuilding it", path,
                        type(e).__name__, e)
        return None


def read_vectors(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The word2vec table of a cache file, checked: its shape, float32, every value finite."""
    vectors = load_arrays(path)["vectors"]
    if vectors.shape != shape or vectors.dtype != np.float32:
        raise ValueError(f"holds {vectors.dtype} {vectors.shape}")
    if not np.isfinite(vectors).all():  # NaN or inf would reach the embeddings unseen
        raise ValueError("holds values that are not finite")
    return vectors


# -- the processed-data cache ----------------------------------------------------------------
@contextmanager
def exclusive(path: Path):
    """Hold a lock beside `path`, so processes that start together build its file once.

    flock is dropped by the kernel when the holder exits, so a killed process leaves no
    stale lock behind; the file itself is removed by its holder once done. A process waiting
    on the removed file then holds a lock nobody else shares, but it reads the cache its
    predecessor built before building anything, so it builds nothing twice.
    """
    lock = path.parent / f".{path.name}.lock"
    with writing(lock):
        f = open(lock, "w")
    with f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # still held: no one else can be building now


def write_cache(path: Path, prepared: Prepared, key: str) -> None:
    """Store `prepared` as one .npz of plain arrays, metadata as JSON bytes, atomically.

    One file, so data and metadata cannot be torn apart.
    """
    meta = {"format": CACHE_FORMAT, "key": key, "items": prepared.items,
            "activities": prepared.activities, "bucket_edges": list(prepared.bucket_edges),
            "has_activity": prepared.has_activity, "has_dwell": prepared.has_dwell,
            "stats": prepared.stats}
    arrays = {f"{name}.{f.name}": getattr(split, f.name)
              for name, split in prepared.splits.items() for f in fields(SplitArrays)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    save_arrays(path, arrays)


def read_cache(path: Path, key: str) -> Prepared:
    """Load a file written by `write_cache` for `key`, never unpickling anything.

    Raises when a byte of the file changed (zip CRCs), it was written for other settings, or
    its arrays do not fit together.
    """
    npz = load_arrays(path)
    meta = json.loads(npz["meta"].tobytes())
    if meta["format"] != CACHE_FORMAT or meta["key"] != key:
        raise ValueError(f"written for other settings (key {meta['key']})")
    splits = {name: SplitArrays(**{f.name: npz[f"{name}.{f.name}"]
                                   for f in fields(SplitArrays)}) for name in SPLITS}
    prepared = Prepared(splits=splits, items=meta["items"], activities=meta["activities"],
                        bucket_edges=tuple(meta["bucket_edges"]),
                        has_activity=meta["has_activity"], has_dwell=meta["has_dwell"],
                        stats=meta["stats"])
    bounds = np.array([prepared.n_items, prepared.n_activities, N_DWELL])
    for name, arrays in splits.items():
        if not _consistent(arrays, bounds):
            raise ValueError(f"its {name} arrays do not fit together")
    return prepared


def _consistent(a: SplitArrays, bounds: np.ndarray) -> bool:
    """Whether one split's arrays have the shapes, types and ranges that serving assumes."""
    offsets = (a.first, a.end, a.target, a.session, a.position, a.session_end)
    if (a.tokens.dtype != np.int32 or a.tokens.ndim != 2 or a.tokens.shape[1] != 3
            or any(x.dtype != np.int64 or x.ndim != 1 for x in offsets)
            or not a.first.shape == a.end.shape == a.target.shape == a.session.shape
            == a.position.shape
            or a.session_time.dtype != np.float64 or a.session_time.shape != a.session_end.shape):
        return False
    n_tokens = a.tokens.shape[0]
    if n_tokens == 0:  # a split given no sessions (a zero fraction)
        return a.target.size == 0 and a.session_end.size == 0
    return bool(a.session_end.size and a.session_end[-1] == n_tokens
                and (0 <= a.first).all() and (a.first < a.end).all()
                and (a.end <= n_tokens).all() and (0 <= a.target).all()
                and (a.target < bounds[0]).all() and a.tokens.min() >= 0
                and (a.tokens.max(axis=0) < bounds).all())
