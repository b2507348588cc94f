"""Cache files: the processed data and the word2vec vectors, as checked .npz files of plain
arrays, written atomically and built once by processes that start together."""

from __future__ import annotations

import json
import logging
import zipfile
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import numpy as np

from microrec.data import schema as S
from microrec.data.protocol import N_BUCKETS, SPLITS, Prepared, SplitArrays
from microrec.files import atomic_write, writing

try:
    import fcntl
except ImportError:  # Windows: no lock; concurrent builders still each write a whole file
    fcntl = None

log = logging.getLogger(__name__)
CACHE_FORMAT = 4  # layout of the processed-data cache file; bump when it changes
N_DWELL = N_BUCKETS + S.NUM_SPECIAL


# -- checked array files ---------------------------------------------------------------
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
            "stats": prepared.stats, "categories": prepared.categories}
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
                        stats=meta["stats"], categories=meta["categories"])
    bounds = np.array([prepared.n_items, prepared.n_activities, N_DWELL,
                       prepared.n_categories])  # per column of the tokens
    for name, arrays in splits.items():
        if not _consistent(arrays, bounds):
            raise ValueError(f"its {name} arrays do not fit together")
    return prepared


def _consistent(a: SplitArrays, bounds: np.ndarray) -> bool:
    """Whether one split's arrays have the shapes, types and ranges that serving assumes."""
    offsets = (a.first, a.end, a.target, a.session, a.position, a.session_end)
    if (a.tokens.dtype != np.int32 or a.tokens.ndim != 2 or a.tokens.shape[1] != bounds.size
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
