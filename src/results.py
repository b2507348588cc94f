"""Collect multirun jobs into the paper's Table 3: Markdown and CSV, optionally W&B Tables.

    python src/results.py                                # the latest under outputs/multirun
    python src/results.py outputs/multirun/A outputs/multirun/B --logger wandb
    python src/results.py --breakdown --against full/RIB
    python src/results.py A B --slices                   # each full row minus its sku row, by slice
    python src/results.py A B --slices "full/RIB" --against "sku/RIB"

A job is a folder with `.hydra/`; its saved config's `table` node (label, data type, order)
and its `data` choice place it in the table and its `metrics.json` gives test Recall@20 and
MRR@20.
Jobs of the same data set and row are runs of one cell (seeds, and data splits swept with
data.seed): the cell shows their mean and, with several, their sample standard deviation;
a non-baseline row also shows the relative improvement of its mean over the best
baseline's mean on that data set. From the jobs' predictions.parquet, every row is compared
with the best baseline (or the --against row) on the same test examples: difference, 95%
interval and p-value of a paired bootstrap over test sessions. With --slices, two rows are
also compared on slices of the test examples (repeat / new target, input length, last
activity, cart or order in the input, last dwell), per data set and pooled over the data
sets. Writes table3.md and table3.csv (with --slices also slices.csv and slices_<n>.png)
into the first folder and prints the Markdown. Job folders without metrics.json (failed or
unfinished) are listed under the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from microrec.config import run_or_exit
from microrec.reports.results import table3
from microrec.reports.significance import POOL_WEIGHTS, RESAMPLES
from microrec.reports.slices import CSV_FILE
from microrec.runs.folders import latest_multirun


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="*", type=Path,
                        help="multirun folders (default: the latest under outputs/multirun)")
    parser.add_argument("--logger", choices=("wandb", "none"), default="none",
                        help="wandb: also log the table (and the --slices table and figures) to "
                        "W&B (default none)")
    parser.add_argument("--against", metavar="ROW",
                        help="compare every row with this one rather than the best baseline: "
                             "a model (RIB) or data type/model (full/RIB)")
    parser.add_argument("--breakdown", action="store_true",
                        help="add Recall@20 and MRR@20 on repeat and on new targets")
    parser.add_argument("--resamples", type=int, default=RESAMPLES,
                        help=f"bootstrap replicates per paired test (default {RESAMPLES})")
    parser.add_argument("--slices", nargs="?", const="", metavar="ROW",
                        help="compare ROW (default: every SKU+Micro-behaviors row) minus the "
                             "--against row (default: the same model's SKU row) on slices of "
                             "the test examples; give it after the folders")
    parser.add_argument("--pool-weights", choices=POOL_WEIGHTS, default="equal",
                        help="--slices pools data sets with equal weights (default) or by "
                             "their test sessions")
    args = parser.parse_args(argv)
    folders = args.folders or [run_or_exit(latest_multirun)]
    print(run_or_exit(table3, folders, args.logger == "wandb", args.against, args.breakdown,
                      args.resamples, args.slices, args.pool_weights), end="")
    written = ["table3.md", "table3.csv"] + ([] if args.slices is None else
                                             [CSV_FILE, "slices_<n>.png"])
    print(f"written: {', '.join(str(folders[0] / w) for w in written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
