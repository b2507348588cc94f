"""The source protocol every data set follows, and the in-memory source (tests, notebooks).

The sources: `loaders.JDSessions` (JD session text files), `loaders.EventLog` (CSV, Parquet
or JSON-lines event logs), `synthetic.SyntheticSource` (the project's generator) and
`FrameSource` (a canonical frame already in memory).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import polars as pl

# prefix of the columns holding a file's own session keys (`source_session`, `source_user`)
# in what `EventSource.blocks` yields
SOURCE = "source_"


@runtime_checkable
class EventSource(Protocol):
    """What a data set provides: a name, the file it reads, a content hash, and the canonical
    event table, whole or by blocks of sessions.

    A source may also expose `activity_groups` (group name -> activity names, as
    `schema.PAPER_GROUPS`) for the Section 3 analyses.
    """

    name: str  # how logs and cache files call the data set
    path: Path | None  # the file or folder it reads (`data.source.path`); None: it reads none

    def fingerprint(self) -> str:
        """A hash of everything that determines the events: the processed-data cache's key."""

    def load(self) -> pl.DataFrame:
        """The canonical event table (microrec.data.schema)."""

    def blocks(self) -> Iterator[pl.DataFrame]:
        """The same events a block of whole sessions at a time (so a file of any size is read
        in bounded memory where the format allows it), with the file's own session keys as
        `source_*` columns where it has them: how `src/recommend.py` reads new sessions."""


class FrameSource:
    """Serve a canonical event table already in memory.

    Args:
        events: a frame with at least session, pos and item (see microrec.data.schema).
        name: how logs and cache files call this data set.
    """

    path = None  # reads no file

    def __init__(self, events: pl.DataFrame, name: str = "frame"):
        self.events = events
        self.name = name

    def fingerprint(self) -> str:
        schema = ",".join(f"{k}:{v}" for k, v in self.events.schema.items())
        rows = self.events.hash_rows(seed=0).to_numpy()
        return hashlib.sha256(schema.encode() + rows.tobytes()).hexdigest()[:16]

    def load(self) -> pl.DataFrame:
        return self.events

    def blocks(self) -> Iterator[pl.DataFrame]:
        yield self.events
