"""Print a data set's Table 2 (per split) and its activity and dwell-bucket distributions.

    python src/stats.py data=jd_appliances
"""

from __future__ import annotations

from omegaconf import DictConfig

from microrec.config import hydra_main
from microrec.reports.stats import print_summary


@hydra_main("stats")
def main(cfg: DictConfig) -> None:
    print_summary(cfg)


if __name__ == "__main__":
    main()
