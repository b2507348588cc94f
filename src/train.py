"""Train and test one configuration; with -m, a sweep of them. See conf/train.yaml.

    python src/train.py -m features=sku,sku_act,sku_dwell,full
    python src/train.py resume=outputs/runs/<date>/<time>      # continue a killed run
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from microrec.config import run_or_exit
from microrec.resume import expand_argv
from microrec.training import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return run_or_exit(train, cfg)[cfg.monitor]


if __name__ == "__main__":
    sys.argv = run_or_exit(expand_argv, sys.argv)  # resume=<folder>: that run's own overrides
    main()
