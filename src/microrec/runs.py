"""Run and multirun folders as `src/train.py` leaves them: job identity, order and files.

A run folder holds `.hydra/` (its composed config and Hydra's choices), `metrics.json` and
`checkpoints/best.ckpt`; a multirun folder holds one run folder per job, named
`<job number>_<label>` (conf/train.yaml's `hydra.sweep.subdir`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from microrec.errors import ConfigError, DataError

MULTIRUNS = Path("outputs/multirun")
HYDRA = Path(".hydra") / "hydra.yaml"  # Hydra's own config: the job's choices
CONFIG = Path(".hydra") / "config.yaml"  # the job's composed config
METRICS_FILE = "metrics.json"
CHECKPOINT = Path("checkpoints") / "best.ckpt"


def job_id(folder: Path) -> tuple[int | None, str]:
    """(Hydra job number, label) of a job folder named `<n>_<label>`; (None, its name) for a
    folder named otherwise, e.g. a single run's."""
    head, _, label = folder.name.partition("_")
    return (int(head), label) if head.isdigit() and label else (None, folder.name)


def job_order(folder: Path) -> tuple[int, str]:
    """Sort key of job folders: job number (2_ before 10_), then the name; others last."""
    number, _ = job_id(folder)
    return (sys.maxsize if number is None else number, folder.name)


def job_folders(multirun: Path) -> list[Path]:
    """Every job folder (a sub-folder with .hydra/) of a multirun folder, in job order."""
    if not multirun.is_dir():
        raise ConfigError(f"no multirun folder at {multirun}.")
    found = [p for p in multirun.iterdir() if (p / HYDRA).is_file()]
    if not found:
        raise ConfigError(f"{multirun} holds no job folders (sub-folders with .hydra/); pass "
                          "a multirun folder.")
    return sorted(found, key=job_order)


def read_metrics(job: Path) -> dict | None:
    """A job's metrics.json, or None where it has none (the job failed or is unfinished)."""
    path = job / METRICS_FILE
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_bytes())
        if not isinstance(metrics, dict):
            raise ValueError("it holds no JSON object")
    except ValueError as e:  # also text that is not UTF-8
        raise DataError(f"{path}: not a readable metrics file ({e}); run that job again, or "
                        "delete the file to list the job as unfinished.") from None
    return metrics


def latest_multirun(root: Path = MULTIRUNS) -> Path:
    """The newest multirun folder under `root` (<date>/<time>, so names sort by time)."""
    runs = sorted(p for p in root.glob("*/*") if p.is_dir())
    if not runs:
        raise ConfigError(f"no multirun under {root}; run `python src/train.py -m "
                          "experiment=table3` first or pass a multirun folder.")
    return runs[-1]


def wandb_group(multirun: Path) -> str:
    """The W&B group of a multirun's jobs: `multirun/<date>/<time>` from its folder."""
    return "multirun/" + "/".join(multirun.parts[-2:])


def run_folder(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (a copy elsewhere: the folder it lies in)."""
    inside = checkpoint.parent.name == CHECKPOINT.parent.name
    return checkpoint.parent.parent if inside else checkpoint.parent


def find_checkpoints(paths: list[str]) -> list[Path]:
    """The checkpoint of every run a path names: a checkpoint, a run or a multirun folder
    (its jobs in job order; jobs without a checkpoint, e.g. failed ones, are passed over)."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"{path} does not exist.")
        if path.is_file():
            found.append(path)
        elif (path / CHECKPOINT).is_file():
            found.append(path / CHECKPOINT)
        else:
            jobs = sorted(path.glob(f"*/{CHECKPOINT}"), key=lambda p: job_order(run_folder(p)))
            if not jobs:
                raise ConfigError(f"{path} holds no {CHECKPOINT}: give a checkpoint, a run "
                                  "folder or a multirun folder.")
            found.extend(jobs)
    return found
