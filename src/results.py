"""Collect multirun jobs into the paper's Table 3: Markdown and CSV, optionally a W&B Table.

    python src/results.py                                # the latest under outputs/multirun
    python src/results.py outputs/multirun/A outputs/multirun/B --wandb

A job is a folder with `.hydra/`; its Hydra choices (data, model, features, attention,
encoder) place it in the table and its `metrics.json` gives test Recall@20 and MRR@20.
Jobs of the same data set and row are seeds of one cell: the cell shows their mean and,
with several, their sample standard deviation; a non-baseline row also shows the relative
improvement of its mean over the best baseline's mean on that data set. Writes table3.md
and table3.csv into the first folder and prints the Markdown. Job folders without
metrics.json (failed or unfinished) are listed under the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from microrec.errors import MicrorecError
from microrec.runs import latest_multirun
from microrec.table import table3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="*", type=Path,
                        help="multirun folders (default: the latest under outputs/multirun)")
    parser.add_argument("--wandb", action="store_true", help="also log a W&B Table")
    args = parser.parse_args(argv)
    try:
        folders = args.folders or [latest_multirun()]
        print(table3(folders, args.wandb), end="")
    except MicrorecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"written: {folders[0] / 'table3.md'}, {folders[0] / 'table3.csv'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
