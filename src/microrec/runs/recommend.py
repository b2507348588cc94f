"""Batch recommendations from a trained run: new sessions in the data set's own format in,
the top products of each out.

The run's config rebuilds its data module (for the training vocabularies and dwell edges,
from its processed-data cache) and, with the path replaced, the loader that reads the new
sessions. Each whole session is one query: its next product is recommended, ranked by
`model.ranked` (the evaluation's rule). Sessions are encoded, scored and written a chunk at
a time; JD session files are also read a block of lines at a time, so memory is bounded by
a block and a chunk, not by the input. An event log is read whole first (its sessions are
only known once all its events are sorted), as training reads it.
"""

from __future__ import annotations

import copy
import itertools
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import hydra
import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import MofNCompleteColumn, Progress

from microrec.config import build
from microrec.data import loaders
from microrec.data import schema as S
from microrec.data.batches import Examples
from microrec.data.loaders import USER
from microrec.data.module import MicroDataModule
from microrec.data.protocol import Prepared, encode_sessions
from microrec.data.sources import SOURCE
from microrec.errors import ConfigError, DataError
from microrec.files import atomic_write
from microrec.metrics import K
from microrec.models.base import Recommender
from microrec.models.base import top_items as best_ids
from microrec.runs.folders import find_checkpoints, saved_config

log = logging.getLogger("microrec.recommend")
RANK, SCORE = "rank", "score"  # output columns besides the session keys and S.ITEM
# The loaders advise on training's settings; here the file is --input, read with the run's
# own settings, so their advice is worded for this command's arguments
INPUT_ADVICE = {
    loaders.POINT_PATH: "point --input at",
    loaders.SET_FILE_FORMAT: "give the --input file a .csv, .parquet or .jsonl name",
    loaders.SET_TS_FORMAT: "write --input's timestamps as the run's training data does",
}


def run_config(path: str) -> tuple[Path, DictConfig]:
    """The checkpoint a run folder or checkpoint path names, and its run's saved config."""
    checkpoints = find_checkpoints([path])
    if len(checkpoints) > 1:
        raise ConfigError(f"{path} holds {len(checkpoints)} runs' checkpoints: give one run "
                          "folder or checkpoint.")
    return checkpoints[0], saved_config(checkpoints[0])


def load_model(ckpt: Path, cfg: DictConfig, device: str = "cpu"
               ) -> tuple[Recommender, MicroDataModule]:
    """The run's model (the class of its config's `model._target_`) in eval mode, and its
    data module set up from the processed-data cache of its training data.

    The weights load with weights_only=True: a checkpoint never runs code.
    """
    target = OmegaConf.select(cfg, "model._target_")
    cls = hydra.utils.get_class(target)
    if not issubclass(cls, Recommender):
        raise ConfigError(f"{ckpt}: model {target} is not a microrec recommender.")
    try:
        model = cls.load_from_checkpoint(ckpt, map_location=device, weights_only=True)
    except Exception as e:  # whatever torch or Lightning raise, the file is not usable
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{ckpt}: not a readable {cls.__name__} checkpoint ({reason}).") from None
    dm = build(cfg.data)
    dm.setup()  # vocabularies and dwell edges: the run's own, from its cache
    return model.eval(), dm


def load_run(path: str, device: str = "cpu") -> tuple[Recommender, MicroDataModule]:
    """The model and set-up data module of a run folder or checkpoint."""
    return load_model(*run_config(path), device)


def input_source(cfg, path: Path):
    """The run's data source (its loader and settings) reading `path` instead."""
    if "path" not in cfg.data.source:
        source = cfg.data.source
        name = source.get("name") or source._target_.rsplit(".", 1)[-1]
        raise ConfigError(f"the run's data source {name} is not read from a file, so there is "
                          "no format to read new sessions in: use a run trained on a file "
                          "data set (jd_appliances, jd_computers, events, ...).")
    cfg = copy.deepcopy(cfg)
    cfg.data.source.path = str(path)
    return build(cfg.data.source)


def validated(raw: pl.DataFrame, name: str) -> pl.DataFrame:
    """Canonical events sorted by session, with the file's session keys where the loader
    keeps them (`source_session`, `source_user`)."""
    keys = [c for c in raw.columns if c.startswith(SOURCE)]
    # validation keeps rows in order, so the key columns can ride along
    events = S.validate_events(raw.drop(keys), name).hstack(raw.select(keys))
    if not events[S.SESSION].is_sorted():
        events = events.sort(S.SESSION, S.POS, maintain_order=True)
    return events


def event_blocks(source) -> Iterator[pl.DataFrame]:
    """The new sessions as canonical event tables of whole sessions, block by block as the
    source streams them (`EventSource.blocks`). A bad file's error gives the advice of
    `INPUT_ADVICE`."""
    try:
        for raw in source.blocks():
            yield validated(raw, source.name)
    except DataError as e:
        message = str(e)
        for training, here in INPUT_ADVICE.items():
            message = message.replace(training, here)
        raise DataError(message) from None


def session_keys(chunk: pl.DataFrame, sessions: np.ndarray) -> pl.DataFrame:
    """One row per session of `sessions` (in order): how the file names it.

    `session` is the file's session id (a JD line number; an event log's session column,
    else the loader's session number), with `user` before it where the log maps users.
    """
    own = {c: c.removeprefix(SOURCE) for c in (SOURCE + USER, SOURCE + S.SESSION)
           if c in chunk.columns}
    firsts = chunk.select(S.SESSION, *own).unique(S.SESSION, keep="first")
    keys = pl.DataFrame({S.SESSION: sessions}).join(firsts, on=S.SESSION, how="left",
                                                     maintain_order="left")
    if SOURCE + S.SESSION in own:
        keys = keys.drop(S.SESSION)
    return keys.rename(own).select(*([USER] if SOURCE + USER in own else []), S.SESSION)


def top_items(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k) best scores and their ids, best first, ties in id order as in the run's
    predictions.parquet (`models.base.top_items`)."""
    ids = best_ids(scores, k)  # (B, k)
    return scores.gather(1, ids), ids


@torch.no_grad()
def score_chunk(model: Recommender, arrays, max_len: int, batch_size: int,
                top: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, top) ids and scores of the best products of each session, in batches."""
    data = Examples(arrays, max_len)
    ids, values = [], []
    device = model.device
    for idx in torch.arange(len(data)).split(batch_size):  # the evaluation's batches
        batch = {k: v.to(device) for k, v in data[idx].items()}
        v, i = top_items(model.ranked(batch), top)  # (B, top)
        values.append(v.float().cpu())
        ids.append(i.cpu())
    return torch.cat(ids).numpy(), torch.cat(values).numpy()


def chunk_table(keys: pl.DataFrame, ids: np.ndarray, scores: np.ndarray,
                items: pl.Series) -> pl.DataFrame:
    """Long table: each session's keys, rank 1..top, product (source id) and score.

    Products that can never be recommended (padding, unknown, the input's last product)
    score -inf and are left out, so a tiny catalogue may give fewer than `top` rows.
    """
    n, k = ids.shape
    keep = np.isfinite(scores).ravel()  # (n * k,)
    rows = np.repeat(np.arange(n), k)[keep]
    return keys[rows].with_columns(
        pl.Series(RANK, np.tile(np.arange(1, k + 1, dtype=np.int32), n)[keep]),
        items.gather(ids.ravel()[keep] - S.NUM_SPECIAL).alias(S.ITEM),
        pl.Series(SCORE, scores.ravel()[keep]),
    )


def chunks(events: pl.DataFrame, size: int):
    """Slices of `events` (sorted by session) holding `size` whole sessions each."""
    new = (pl.col(S.SESSION) != pl.col(S.SESSION).shift(1)).fill_null(True)
    starts = events.select(pl.arg_where(new)).to_series().to_list()
    cuts = [*starts[::size], events.height]
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        yield events.slice(a, b - a)


def recommend(run: str, input_path: str, out: Path, top: int = K, chunk_size: int = 10_000,
              batch_size: int | None = None, device: str | None = None) -> dict:
    """Write the top `top` products of every session in `input_path` to `out` (Parquet).

    Args:
        run: a run folder or its checkpoint.
        input_path: new sessions in the format of the run's data set.
        chunk_size: sessions encoded and scored at a time (bounds the memory of scoring).
        batch_size: sessions per forward pass (default: the run's data.eval_batch_size).
        device: torch device (default: cuda where available, else cpu).
    Returns the summary that is logged: counts of sessions, events, unknown products.
    """
    if top < 1 or chunk_size < 1 or (batch_size is not None and batch_size < 1):
        raise ConfigError("--top, --chunk-size and --batch-size must be positive.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt, cfg = run_config(run)
    source = input_source(cfg, Path(input_path))
    blocks = event_blocks(source)
    first = next(blocks)  # a bad file usually stops here, before the model is loaded
    model, dm = load_model(ckpt, cfg, device)
    prepared: Prepared = dm.prepared
    batch_size = batch_size or dm.eval_batch_size
    items = pl.Series(S.ITEM, prepared.items)
    summary = {"sessions": 0, "events": 0, "unknown_product_events": 0,
               "unknown_products": 0, "sessions_without_known_products": 0}
    unknown: set = set()

    def write(tmp):
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as parts, \
                Progress(*Progress.get_default_columns(), MofNCompleteColumn()) as progress:
            files = []
            task = progress.add_task("recommending", total=None)
            for events in itertools.chain([first], blocks):
                summary["sessions"] += events[S.SESSION].n_unique()
                summary["events"] += events.height
                for chunk in chunks(events, chunk_size):
                    arrays, sessions, unknown_here = encode_sessions(chunk, prepared)
                    known = arrays.tokens[:, 0] != S.UNK  # (E,)
                    summary["unknown_product_events"] += int((~known).sum())
                    summary["sessions_without_known_products"] += int(
                        (np.add.reduceat(known.astype(np.int64), arrays.first) == 0).sum())
                    unknown.update(unknown_here.to_list())
                    ids, scores = score_chunk(model, arrays, dm.max_len, batch_size, top)
                    table = chunk_table(session_keys(chunk, sessions), ids, scores, items)
                    files.append(Path(parts) / f"{len(files):06d}.parquet")
                    table.write_parquet(files[-1])
                    progress.update(task, advance=len(sessions),
                                    description=f"recommending ({summary['sessions']:,} "
                                                "sessions read)")
            pl.scan_parquet(files).sink_parquet(tmp)  # streams: one chunk in memory at a time

    atomic_write(out, write)
    summary["unknown_products"] = len(unknown)
    log.info("%s: %d sessions, %d events; %d events on %d products unseen in training (the "
             "unknown id, as in evaluation), %d sessions with no known product -> %s",
             source.name, summary["sessions"], summary["events"],
             summary["unknown_product_events"], summary["unknown_products"],
             summary["sessions_without_known_products"], out)
    return summary
