"""Print a data set's Table 2 (per split) and its activity and dwell-bucket distributions.

    python src/stats.py data=jd_appliances
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from microrec.config import run_or_exit
from microrec.summary import print_summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="stats")
def main(cfg: DictConfig) -> None:
    run_or_exit(print_summary, cfg)


if __name__ == "__main__":
    main()
