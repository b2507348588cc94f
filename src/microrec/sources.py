"""Event sources that are not files: an in-memory canonical frame (tests, notebooks)."""

from __future__ import annotations

import hashlib

import polars as pl


class FrameSource:
    """Serve a canonical event table already in memory.

    Args:
        events: a frame with at least session, pos and item (see microrec.schema).
        name: how logs and cache files call this data set.
    """

    def __init__(self, events: pl.DataFrame, name: str = "frame"):
        self.events = events
        self.name = name

    def fingerprint(self) -> str:
        schema = ",".join(f"{k}:{v}" for k, v in self.events.schema.items())
        rows = self.events.hash_rows(seed=0).to_numpy()
        return hashlib.sha256(schema.encode() + rows.tobytes()).hexdigest()[:16]

    def load(self) -> pl.DataFrame:
        return self.events
