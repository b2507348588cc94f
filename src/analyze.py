"""The paper's Section 3 as pictures: conversion, click sources, browsing modules, dwell.

    python src/analyze.py                                 # synthetic data, W&B offline
    python src/analyze.py data=jd_appliances logger=none

Writes one PNG and the CSV behind it per figure, and summary.json, to the run folder.
"""

from __future__ import annotations

from omegaconf import DictConfig

from microrec.config import hydra_main
from microrec.reports.analyze import analyze


@hydra_main("analyze")
def main(cfg: DictConfig) -> None:
    analyze(cfg)


if __name__ == "__main__":
    main()
