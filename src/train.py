"""Train and test one configuration; with -m, a sweep of them. See conf/train.yaml.

    python src/train.py -m features=sku,sku_act,sku_dwell,full
    python src/train.py resume=outputs/runs/<date>/<time>      # continue a killed run
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from microrec.config import hydra_main, run_or_exit
from microrec.runs.argv import expand_argv
from microrec.runs.naming import register_resolvers


@hydra_main("train")
def main(cfg: DictConfig) -> float:
    from microrec.runs.train import train  # torch and Lightning load only for a valid config

    return train(cfg)[cfg.monitor]


if __name__ == "__main__":
    sys.argv = run_or_exit(expand_argv, sys.argv)  # resume=<folder>: that run's own overrides
    register_resolvers()
    main()
