"""Event sources that are not files: an in-memory canonical frame (tests, notebooks), and the
check that refuses a path for a source that reads none."""

from __future__ import annotations

import hashlib

import polars as pl

from microrec.errors import ConfigError


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


def check_reads_file(source, path) -> None:
    """Refuse `data.path` for a data set whose source reads no file (synthetic data, a frame):
    the path would be ignored and the run would use other data than the user meant."""
    if path is not None and not hasattr(source, "path"):
        raise ConfigError(f"data={source.name} reads no file, so data.path={path} means nothing: "
                          "pick a data set that reads one (data=events reads any event log; "
                          "conf/data/ has the others).")
