"""Figure 8 and beyond: what trained RIB runs attend to, side by side.

    python src/train.py -m features=sku,sku_act,sku_dwell,full
    python src/explain.py outputs/multirun/<date>/<time>              # every job of the sweep
    python src/explain.py RUN_DIR_OR_CHECKPOINT ... --example 7 --logger none

Writes to --out (default outputs/explain/<date>/<time>): attention_example (one test
sequence, every run's weights side by side, Figure 8), attention_by_activity,
attention_by_dwell, metrics_by_length (a PNG and its CSV each) and summary.json; runs with
head=repeat_explore add repeat_example, repeat_by_activity, repeat_by_dwell,
repeat_by_last_activity and repeat_gate (docs/analysis.md).
Paths are plain arguments, not Hydra overrides: job folders are named like 0_features=sku
and Hydra's override grammar does not take an unquoted '='.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime
from pathlib import Path

from microrec.config import run_or_exit
from microrec.reports.explain import READABLE, explain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="checkpoints, run folders or multirun folders")
    parser.add_argument("--example", type=int, default=None,
                        help="test example to show (default: the first with "
                             f"{READABLE[0]}-{READABLE[1]} input micro-behaviors)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default outputs/explain/<date>/<time>)")
    parser.add_argument("--logger", choices=("wandb", "none"), default="wandb")
    parser.add_argument("--project", default=None, help="W&B project (default microrec)")
    args = parser.parse_args(argv)
    out = args.out or Path("outputs/explain") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - "
                        "%(message)s")
    summary = run_or_exit(explain, args.paths, out, args.example, args.logger, args.project)
    print(json.dumps({r["label"]: r["test"] for r in summary["runs"]}, indent=2,
                     ensure_ascii=False))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
