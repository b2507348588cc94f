"""Keep the best trial of an Optuna sweep as the config the tuned results rows load.

    python src/train.py -m hparams_search=narm data=jd_computers   # the study (8 trials)
    python src/tune.py outputs/multirun/<date>/<time>   # -> conf/tuned/narm/jd_computers.yaml
    python src/train.py -m +row=narm_tuned data=jd_computers seed=0,1,2

Reads the sweep's Optuna study (outputs/optuna/<model>_<data>.db) and writes its best trial's
hyperparameters, with where they came from, to conf/tuned/<model>/<data>.yaml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from microrec.config import run_or_exit
from microrec.runs.tune import keep_best


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path, help="the multirun folder of a hparams_search sweep")
    parser.add_argument("--conf", type=Path, default=None,
                        help="the config folder to write tuned/ into (default: the one the "
                             "sweep composed from)")
    args = parser.parse_args(argv)
    out = run_or_exit(keep_best, args.sweep, args.conf, "python src/tune.py " + " ".join(argv))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
