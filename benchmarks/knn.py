"""Scoring rate of the session-kNN peers and Repeat: test prefixes per second, full ranking.

    python benchmarks/knn.py              # the JD Appliances sample, its whole test split
    python benchmarks/knn.py --synthetic --sessions 1060000 --items 115000 --prefixes 5120
                                          # paper size: the first 5,120 test prefixes

Each model is fitted on the training split (timed), then scores test batches through
`ranked` and the shared metric, as `trainer.test` does; prints one JSON line per model with
the rate and, where only part of the split was scored, the projected time for all of it,
in wall-clock and in the process's CPU time (which other processes on the cores inflate
less). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from microrec.data.loaders import JDSessions
from microrec.data.module import MicroDataModule
from microrec.data.synthetic import SyntheticSource
from microrec.models.ranking import RankingMetrics
from microrec.models.repeat import Repeat
from microrec.models.sknn import SessionKNN
from microrec.models.stan import STAN
from microrec.models.vsknn import VSKNN

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"repeat": Repeat, "sknn": SessionKNN, "vsknn": VSKNN, "stan": STAN}


def data_module(args) -> MicroDataModule:
    """The JD sample as `data=jd_appliances` reads it, or synthetic data as `data=synthetic`."""
    if args.synthetic:
        source = SyntheticSource(n_sessions=args.sessions, n_items=args.items, seed=0)
        return MicroDataModule(source, features="sku", cache_dir=args.cache_dir)
    return MicroDataModule(JDSessions(args.jd, "jd_appliances"), features="sku",
                           eval_targets="all", cache_dir=args.cache_dir)


def measure(model, dm: MicroDataModule, prefixes: int | None) -> dict:
    """Fit, then score test batches until `prefixes` (all when None) have been ranked."""
    started = time.perf_counter()
    model.fit(dm)
    fit_s = time.perf_counter() - started
    metrics, scored = RankingMetrics(), 0
    started, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for batch in dm.test_dataloader():
            metrics.update(model.ranked(batch), batch["target"])
            scored += batch["target"].numel()
            if prefixes is not None and scored >= prefixes:
                break
    score_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    total = dm.prepared.stats["test/examples"]
    values = metrics.compute()
    return {"fit_s": round(fit_s, 2), "prefixes": scored, "score_s": round(score_s, 2),
            "score_cpu_s": round(cpu_s, 2), "prefixes_per_s": round(scored / score_s),
            "test_prefixes": total, "projected_test_s": round(total * score_s / scored, 1),
            "projected_test_cpu_s": round(total * cpu_s / scored, 1),
            "recall@20": round(values["recall@20"].item(), 4),
            "mrr@20": round(values["mrr@20"].item(), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synthetic", action="store_true", help="synthetic data, not JD")
    parser.add_argument("--sessions", type=int, default=10000, help="synthetic sessions")
    parser.add_argument("--items", type=int, default=1000, help="synthetic products")
    parser.add_argument("--jd", default=str(ROOT.parent / "shared" / "data" / "jd-micro-behaviors"
                                            / "JD_Applicances_sample"))
    parser.add_argument("--prefixes", type=int, default=None,
                        help="score only the first N test prefixes (default: all)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--all-candidates", action="store_true",
                        help="kNN models with sample_size=null, as on data without timestamps")
    parser.add_argument("--cache-dir", default=str(ROOT / "outputs" / "cache"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    dm = data_module(args)
    dm.setup()
    stats = dm.prepared.stats
    print(json.dumps({"data": dm.source.name, "train_sessions": stats["train/sessions"],
                      "products": dm.n_items, "test_prefixes": stats["test/examples"],
                      "setup_s": round(time.perf_counter() - started, 1),
                      "threads": torch.get_num_threads()}), flush=True)
    for name in args.models.split(","):
        options = {"sample_size": None} if args.all_candidates and name != "repeat" else {}
        row = {"model": name, **options,
               **measure(MODELS[name](dm.n_items, **options), dm, args.prefixes)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
