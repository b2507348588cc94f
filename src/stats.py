"""Print a data set's Table 2 (per split) and its activity and dwell-bucket distributions.

    python src/stats.py data=jd_appliances
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from microrec import schema as S
from microrec.config import build, run_or_exit
from microrec.summary import Summary, summarize

log = logging.getLogger("microrec.stats")


def table(title: str, frame, caption: str | None = None) -> Table:
    """A rich table of a Polars frame: counts with thousands separators, shares in percent."""
    out = Table(title=title, caption=caption, title_justify="left")
    for name, dtype in frame.schema.items():
        out.add_column(name.replace("_", " "), justify="right" if dtype.is_numeric() else "left")
    for row in frame.iter_rows():
        out.add_row(*(f"{v:.1%}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int)
                      else "" if v is None else str(v) for v in row))
    return out


def stats(cfg: DictConfig) -> Summary:
    """Load the configured data set, summarise it and print the tables."""
    source = build(cfg.data.source)
    events = S.validate_events(source.load(), source.name)
    summary = summarize(events, buckets=cfg.data.buckets, split=tuple(cfg.data.split),
                        min_macros=cfg.data.min_macros, seed=cfg.data.seed,
                        activity_groups=getattr(source, "activity_groups", None),
                        source=source.name)
    dropped = (f"{summary.dropped_sessions:,} session(s) with fewer than "
               f"{cfg.data.min_macros} macro interactions dropped before the split; "
               if summary.dropped_sessions else "")
    console = Console()
    console.print(table(
        f"{source.name}: Table 2", summary.table,
        f"{dropped}targets = evaluation examples with eval_targets=all (last: one per "
        "session)"))
    if summary.activities.height:
        console.print(table(f"{source.name}: activities (micro-behaviors)", summary.activities))
    else:
        console.print(f"{source.name}: no activities in the data")
    console.print(table(f"{source.name}: dwell buckets ({cfg.data.buckets})", summary.dwell,
                        "macro interactions of the kept sessions"))
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="stats")
def main(cfg: DictConfig) -> None:
    run_or_exit(stats, cfg)


if __name__ == "__main__":
    main()
