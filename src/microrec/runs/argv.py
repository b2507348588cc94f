"""The command line of `src/train.py` before Hydra reads it: `resume=<folder>` becomes that
run's own overrides, and a fresh run (or sweep) into a folder that holds a run is refused.

Imports nothing heavy, so a mistake here is reported before torch and Lightning load.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from microrec.errors import ConfigError
from microrec.runs.folders import LAST, METRICS_FILE, refuse_used_folder, run_outputs

_MULTIRUN_FLAGS = ("-m", "--multirun")
# where a launcher (torchrun, SLURM, Lightning's DDP) gives a process its global rank, in
# the order Lightning reads them
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def rank() -> int:
    """This process's rank among a distributed run's processes (0 when alone)."""
    for name in RANK_VARIABLES:
        if (value := os.environ.get(name)) is not None:
            return int(value)
    return 0


def requeued() -> bool:
    """Whether this is a SLURM job started again after a preemption or a node failure."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def _quoted(value: str) -> str:
    """A Hydra override value that may hold '=', ',' or spaces (a multirun job folder does)."""
    return "'" + value.replace("'", "\\'") + "'"


def expand_argv(argv: list[str]) -> list[str]:
    """Rewrite `train.py resume=<folder>` into the folder's own overrides, run in that folder.

    Other overrides are allowed only where the run had them too (so the original command
    plus `resume=` works); `hydra.*` overrides and flags pass through. Hydra is told not to
    write `.hydra/` again, so the folder keeps the configuration the run started with.
    """
    args = argv[1:]
    given = [a.partition("=")[2] for a in args if a.startswith("resume=")]
    if not given or given[-1] in ("", "null"):
        refuse_used_folders(args)
        return argv
    folder = Path(given[-1].strip("'\""))
    if any(a in _MULTIRUN_FLAGS for a in args):
        raise ConfigError("resume continues one run, not a multirun: resume each job of a "
                          "sweep on its own, as in resume=<sweep dir>/0_features=sku.")
    saved = folder / ".hydra" / "overrides.yaml"
    if not folder.is_dir():
        raise ConfigError(f"resume={folder}: no such folder.")
    if not saved.is_file():
        raise ConfigError(f"resume={folder} is not a run folder of src/train.py "
                          "(it has no .hydra/overrides.yaml).")
    if (folder / METRICS_FILE).exists():
        raise ConfigError(f"resume={folder}: that run has finished (metrics.json exists); "
                          "there is nothing to resume.")
    if not (folder / LAST).is_file():
        raise ConfigError(f"resume={folder}: no {LAST} to continue from (the run stopped "
                          "before its first checkpoint); start it again.")
    overrides = [str(o) for o in OmegaConf.load(saved)]
    passed = [a for a in args if a.startswith(("hydra.", "hydra/", "-"))]
    extra = [a for a in args if a not in overrides and a not in passed
             and not a.startswith("resume=")]
    if extra:
        raise ConfigError(f"resume={folder} continues that run as it was started; drop the "
                          f"overrides it did not have: {' '.join(extra)}.")
    quoted = _quoted(str(folder))
    return [argv[0], *overrides, *passed, f"hydra.run.dir={quoted}",
            "hydra.output_subdir=null", f"resume={quoted}"]


def refuse_used_folders(args: list[str]) -> None:
    """Stop a fresh run (or sweep) pointed at a folder that holds a run, before Hydra writes
    its `.hydra/` there: one folder holds one run's outputs."""
    if rank() != 0 or requeued():  # a DDP child joins its rank 0's run; a
        return  # requeued SLURM job continues its own
    sweep = any(a in _MULTIRUN_FLAGS for a in args)
    option = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    given = [a.partition("=")[2].strip("'\"") for a in args if a.startswith(option + "=")]
    if not given:  # the default folders are new timestamps
        return
    folder = Path(given[-1])
    if not sweep:
        refuse_used_folder(folder, option)
    elif folder.is_dir():
        used = sorted(p.name for p in folder.iterdir() if p.is_dir() and run_outputs(p))
        if used:
            raise ConfigError(f"{option}={folder} already holds a sweep's runs ({used[0]}, ...): "
                              "a new sweep never writes into another's folder; choose a new "
                              "folder, or continue a job with resume=<its folder>.")
