"""Two training runs at once on one machine: wall time with `threads=auto` and with fewer.

    python benchmarks/threads.py                        # JD Appliances, features=sku_act, 1 epoch
    python benchmarks/threads.py --settings auto 1 --jobs 2 --data synthetic

For each setting, `--jobs` copies of the same `src/train.py` run start together (each with its
own run folder and a shared, warm data cache) and the wall time of each is taken; then one
run alone with `threads=auto` as the reference. Prints one JSON line per figure, then a table.
`threads=auto` on a machine where nothing else runs is what torch would take by itself (every
core of the process), so the gap between the rows is what oversubscription costs. See
benchmarks/README.md and docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(data: str, threads: str, run_dir: Path, cache: Path) -> list[str]:
    return [sys.executable, str(ROOT / "src" / "train.py"), f"data={data}", "features=sku_act",
            "trainer.max_epochs=1", "logger=none", "predictions=[]", "callbacks.progress=null",
            f"threads={threads}", f"hydra.run.dir={run_dir}", f"cache_dir={cache}"]


def timed_runs(data: str, threads: str, jobs: int, work: Path,
               cache: Path) -> tuple[list[float], list[str]]:
    """Start `jobs` runs together; the wall time of each in seconds, and its test
    Recall@20 / MRR@20 (equal settings give equal numbers only with equal thread counts)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # threads= decides
    folders = [work / f"{threads}-{jobs}-{i}" for i in range(jobs)]
    started = time.time()
    runs = [subprocess.Popen(command(data, threads, folder, cache), cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for folder in folders]
    times = []
    for run in runs:
        _, err = run.communicate()
        if run.returncode:
            sys.exit(f"a run failed:\n{err[-2000:]}")
        times.append(round(time.time() - started, 1))
    results = []
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        results.append(f"{metrics['test/recall@20']:.4f} / {metrics['test/mrr@20']:.4f}")
    return times, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="jd_appliances")
    parser.add_argument("--jobs", type=int, default=2, help="runs started together")
    parser.add_argument("--settings", nargs="+", default=["auto", "1"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work, cache = Path(tmp), Path(tmp) / "cache"
        timed_runs(args.data, "auto", 1, work / "warm", cache)  # cache and word2vec built once
        rows.append(("auto", 1, timed_runs(args.data, "auto", 1, work, cache)))
        for setting in args.settings:
            rows.append((setting, args.jobs, timed_runs(args.data, setting, args.jobs, work,
                                                        cache)))
    for setting, jobs, (times, results) in rows:
        print(json.dumps({"data": args.data, "threads": setting, "jobs": jobs, "wall_s": times,
                          "test_recall_mrr@20": results, "cores": len(os.sched_getaffinity(0))}),
              flush=True)
    print("\n| threads | runs at once | wall time of each run (s) | test Recall@20 / MRR@20 |\n"
          "|---|---|---|---|")
    for setting, jobs, (times, results) in rows:
        print(f"| {setting} | {jobs} | {', '.join(map(str, times))} | {', '.join(results)} |")


if __name__ == "__main__":
    main()
