"""Recommend the next product for new sessions with a trained run (any model=).

    python src/recommend.py outputs/runs/<date>/<time> --input sessions.txt --out recs.parquet
    python src/recommend.py RUN_DIR_OR_CHECKPOINT --input events.csv --top 20 --chunk-size 50000

The input is in the run's data set's own format (a JD session file, or an event log read
with the run's column mapping); each whole session is one query. Writes a Parquet table:
the session as the file names it, rank (1..top), product id and score.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from microrec.config import run_or_exit
from microrec.runs.recommend import recommend


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run folder or its checkpoint")
    parser.add_argument("--input", required=True, help="new sessions in the data set's format")
    parser.add_argument("--out", type=Path, default=Path("recs.parquet"),
                        help="output Parquet file (default recs.parquet)")
    parser.add_argument("--top", type=int, default=20, help="products per session (default 20)")
    parser.add_argument("--chunk-size", type=int, default=10_000,
                        help="sessions encoded and scored at a time (default 10000)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sessions per forward pass (default: the run's eval_batch_size)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if any)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - "
                        "%(message)s")
    summary = run_or_exit(recommend, args.run, args.input, args.out, args.top, args.chunk_size,
                          args.batch_size, args.device)
    print(json.dumps(summary, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
