"""Per-example results of a run (`predictions.parquet`) and what is read back from them.

One row per evaluated example, from the very scores the metric ranked:

| column | type | meaning |
|---|---|---|
| `split` | string | `test` (and `val` with `predictions=[val,test]`) |
| `example` | int64 | the example's index in its split |
| `session` | int64 | its session id as in the source |
| `position` | int64 | the target's macro interaction index in the session (from 0) |
| `target` | product id | the target product as in the source; null when unknown |
| `rank` | int64 | the target's rank, ties counted against the model; null for a miss by |
|        |       | rule: an unknown target, or one scored NaN or inf (a diverged model) |
| `repeat` | bool | the target occurs in the model's input (an unknown target never does) |
| `length` | int64 | input micro-behaviors (after `max_len`) |
| `top` | array of 20 product ids | the best-scored products, best first, ties in id order |

Kept free of torch and Lightning, so `results.py` stays light.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from microrec.data.protocol import SplitArrays
from microrec.data.schema import NUM_SPECIAL
from microrec.errors import DataError
from microrec.files import atomic_write
from microrec.metrics import KS, MRR, RECALL, hits_and_rr
from microrec.runs.folders import RUN_ID

PREDICTIONS_FILE = "predictions.parquet"
STAGES = ("val", "test")


def frame(stage: str, results: dict[str, np.ndarray], split: SplitArrays,
          items: list) -> pl.DataFrame:
    """One split's per-example results (`models.base.gather_results`) as a table.

    Args:
        split: the split's arrays, for session ids, positions and targets.
        items: the product vocabulary (`Prepared.items`: id i + NUM_SPECIAL -> product id).
    """
    example = results["example"]  # (N,)
    if not np.array_equal(example, np.arange(split.target.size)):
        raise ValueError(f"the {stage} results do not cover each example of the split once")
    vocabulary = pl.Series("item", items)

    def products(ids: np.ndarray) -> pl.Series:  # ids below NUM_SPECIAL have no product
        index = pl.Series(ids.ravel() - NUM_SPECIAL).set(pl.Series(ids.ravel() < NUM_SPECIAL),
                                                          None)
        return vocabulary.gather(index)

    # a miss by rule (unknown target, or one scored NaN or inf) has rank len(items) + 1
    missed = (split.target < NUM_SPECIAL) | (results["rank"] > len(items))
    top = results["top"]  # (N, TOP)
    return pl.DataFrame({
        "split": pl.Series([stage] * example.size, dtype=pl.String),
        "example": example.astype(np.int64),
        "session": split.session,
        "position": split.position,
        "target": products(split.target),
        "rank": pl.Series(results["rank"].astype(np.int64)).set(pl.Series(missed), None),
        "repeat": results["repeat"].astype(bool),
        "length": results["length"].astype(np.int64),
        "top": products(top).reshape((example.size, top.shape[1])),
    })


def write(path: Path, frames: list[pl.DataFrame], run_id: str) -> None:
    """Write the splits' tables as one parquet file, atomically, named by the run's id."""
    table = pl.concat(frames)
    atomic_write(path, lambda tmp: table.write_parquet(tmp, metadata={RUN_ID: run_id}))


def run_of(path: Path) -> str | None:
    """The run id a predictions file carries (None for one written before run ids existed)."""
    return pl.read_parquet_metadata(path).get(RUN_ID)


def read(path: Path, stage: str = "test") -> pl.DataFrame:
    """One split's rows of a `predictions.parquet`, in example order."""
    try:
        return pl.read_parquet(path).filter(pl.col("split") == stage).sort("example")
    except pl.exceptions.PolarsError as e:  # truncated, damaged, or not this table
        reason = str(e).strip().splitlines()[0].rstrip(".")
        raise DataError(f"{path}: not a readable predictions file ({reason}); run that job "
                        "again, or delete the file to leave the job out of the paired "
                        "comparisons.") from None


def metrics(table: pl.DataFrame, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@k and MRR@k over a table's rows, as `metrics.json` names them (no prefix)."""
    out = {}
    for k in ks:
        hit, rr = hits_and_rr(table["rank"], k)
        out[f"recall@{k}"], out[f"mrr@{k}"] = float(hit.mean()), float(rr.mean())
    return out


def breakdown(hit: np.ndarray, rr: np.ndarray, repeat: np.ndarray) -> dict[str, float]:
    """Share, Recall@K and MRR@K of repeat targets (in the input) and of new ones.

    hit, rr: (N,) per-example hit@K and reciprocal rank@K (e.g. averaged over seeds);
    repeat: (N,) bool. A group without examples gets NaN.
    """
    out = {}
    for name, rows in (("repeat", repeat), ("new", ~repeat)):
        n = int(rows.sum())
        out[f"{name}/share"] = n / max(rows.size, 1)
        out[f"{name}/{RECALL}"] = float(hit[rows].mean()) if n else float("nan")
        out[f"{name}/{MRR}"] = float(rr[rows].mean()) if n else float("nan")
    return out


def summary(table: pl.DataFrame) -> dict[str, float]:
    """The repeat / new breakdown of one run's table (one split)."""
    hit, rr = hits_and_rr(table["rank"])
    return breakdown(hit, rr, table["repeat"].to_numpy())
