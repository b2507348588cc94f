"""How many CPU threads a run's math uses (`threads: auto | N` in conf/train.yaml).

torch sizes its pools by the cores it sees on the host, not the ones this process may use: in
a container with a smaller CPU quota, or beside another job, its threads then wait on each
other (one JD epoch took 169 s with the default threads and 24 s with one thread while
another torch job ran). `auto` counts the cores the process may really use.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from microrec.errors import ConfigError

log = logging.getLogger(__name__)
CGROUP = Path("/sys/fs/cgroup")


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in cores (cgroup v2 `cpu.max`, or v1's
    `cpu.cfs_quota_us` / `cpu.cfs_period_us`); None where there is none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # "max 100000", "200000 ..."
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores() -> tuple[int, str]:
    """(cores, how they were counted): the CPU affinity, capped by the cgroup quota and by
    OMP_NUM_THREADS where the user set it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    how = f"CPU affinity {cores}"
    quota = cgroup_quota()
    if quota is not None and math.ceil(quota) < cores:
        cores = max(1, math.ceil(quota))
        how += f", cgroup quota {quota:g}"
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and 0 < int(omp) < cores:
        cores = int(omp)
        how += f", OMP_NUM_THREADS {omp}"
    return cores, how


def count_threads(setting: int | str, side_by_side: int = 1) -> tuple[int, str]:
    """(threads, how they were chosen) for `threads=<setting>`; a bad setting is one sentence.

    Args:
        setting: "auto" (the usable cores, shared among the jobs a launcher runs side by
            side) or a positive number of threads.
        side_by_side: jobs the launcher runs at once in this machine.
    """
    if setting == "auto":
        cores, how = usable_cores()
        threads = max(1, cores // max(1, side_by_side))
        how = f"auto: {how}" + (f", {side_by_side} jobs side by side" if side_by_side > 1 else "")
        return threads, how
    if isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        return setting, "as set"
    raise ConfigError(f"threads={setting}: give auto or a positive whole number.")


def set_threads(threads: int, how: str) -> None:
    """Size torch's intra- and inter-op pools (and so OpenMP's and MKL's), and log it once.
    Call it before torch's first parallel work."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only once per process, before any inter-op work (a sweep's 2nd job)
        pass
    log.info("threads: %d (%s)", threads, how)
