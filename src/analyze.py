"""The paper's Section 3 as pictures: conversion, click sources, browsing modules, dwell.

    python src/analyze.py                                 # synthetic data, W&B offline
    python src/analyze.py data=jd_appliances logger=none

Writes one PNG and the CSV behind it per figure, and summary.json, to the run folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")  # no account or network needed; override freely

import hydra
import polars as pl
from hydra.core.hydra_config import HydraConfig
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from microrec import schema as S
from microrec.analysis import (
    CLICK,
    CONVERTED,
    DWELL_BUCKET,
    FIGURES,
    GROUP,
    INTERACTIONS,
    MODULE,
    RATE,
    SHARE,
    Section3,
    section3,
)
from microrec.config import build, run_or_exit
from microrec.plots import bars, heatmap, log_to_wandb, save_csv, save_json, save_png

log = logging.getLogger("microrec.analyze")


def rate_notes(table: pl.DataFrame, sep: str = " ") -> list[str]:
    """ "12.3% (45/366)": each conversion rate with its counts."""
    return [f"{r:.1%}{sep}({c:,}/{n:,})" for r, c, n in
            table.select(RATE, CONVERTED, INTERACTIONS).iter_rows()]


def grid(table: pl.DataFrame, row: str, col: str, row_title: str, col_title: str,
         title: str) -> Figure:
    """Heatmap of a crosstab table: each row's share of macro interactions per column."""
    rows = table.select(row, INTERACTIONS).unique(maintain_order=True)
    cols = table[col].unique(maintain_order=True).to_list()
    values = table[SHARE].to_numpy().reshape(rows.height, len(cols))
    labels = [f"{name} (n={n:,})" for name, n in rows.iter_rows()]
    return heatmap(values, labels, cols, title, col_title, row_title,
                   colorbar="share of the row's macro interactions")


def draw(name: str, table: pl.DataFrame, data: str) -> Figure:
    """The picture of one Section 3 table."""
    if name == "fig2_conversion_by_activity":
        return bars(table[S.ACTIVITY].to_list(), table[RATE].to_list(), rate_notes(table),
                    f"Figure 2. Conversion rate per activity ({data})",
                    "conversion rate: share whose product is ordered later in the session",
                    "activity", groups=table[GROUP].to_list())
    if name == "fig3_click_source_vs_module":
        return grid(table, CLICK, MODULE, "click source", "browsing module viewed",
                    f"Figure 3. Browsing modules viewed after each click source ({data})")
    if name == "fig4_conversion_by_dwell":
        return bars(table[DWELL_BUCKET].to_list(), table[RATE].to_list(),
                    rate_notes(table, sep="\n"),
                    f"Figure 4. Conversion rate per dwell bucket ({data})",
                    "conversion rate: product ordered in or after the interaction",
                    "dwell time on the product", vertical=True)
    if name == "fig5_dwell_by_click_source":
        return grid(table, CLICK, DWELL_BUCKET, "click source", "dwell time on the product",
                    f"Figure 5. Dwell time per click source ({data})")
    return grid(table, MODULE, DWELL_BUCKET, "browsing module viewed",
                "dwell time on the product",
                f"Figure 6. Dwell time per browsing module ({data})")


def analyze(cfg: DictConfig) -> Section3:
    """Load the data set's events, run every analysis that applies, write PNG + CSV each."""
    run_dir = Path(cfg.run_dir)
    dm = build(cfg.data)  # the data set exactly as training builds it; no tensors made
    source, buckets = dm.source, dm.protocol["buckets"]
    groups = getattr(source, "activity_groups", S.PAPER_GROUPS)
    events = S.validate_events(source.load(), source.name)
    result = section3(events, groups, buckets)
    log.info("%s: %s", source.name, result.counts)
    for name, reason in result.skipped.items():
        log.warning("skipped %s (%s): %s", name, FIGURES[name], reason)

    images = {}
    for name, table in result.tables.items():
        save_csv(table, run_dir / f"{name}.csv")
        images[name] = save_png(draw(name, table, source.name), run_dir / f"{name}.png")
        log.info("%s -> %s", FIGURES[name], images[name])
    save_json({"data": source.name, "buckets": buckets,
               "bucket_edges": list(result.edges), "activity_groups": groups,
               **result.counts, "figures": sorted(images), "skipped": result.skipped},
              run_dir / "summary.json")

    if cfg.get("logger") and cfg.logger._target_.endswith("WandbLogger"):
        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
        log_to_wandb(images, project=cfg.logger.project, dir=str(run_dir),
                     name=f"analysis-{source.name}", job_type="analysis",
                     tags=[f"data={choices.get('data', source.name)}"],
                     config=OmegaConf.to_container(cfg.data, resolve=True))
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    run_or_exit(analyze, cfg)


if __name__ == "__main__":
    main()
