"""Run and multirun folders as `src/train.py` leaves them: job identity, order and files.

A run folder holds `.hydra/` (its composed config and Hydra's choices), `metrics.json` and
`checkpoints/best.ckpt`; a multirun folder holds one run folder per job, named
`<job number>_<label>` (conf/train.yaml's `hydra.sweep.subdir`).
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

from microrec.errors import ConfigError, DataError

MULTIRUNS = Path("outputs/multirun")
RUN_ID = "run_id"  # names the run in metrics.json, predictions.parquet and every checkpoint
HYDRA = Path(".hydra") / "hydra.yaml"  # Hydra's own config: the job's choices
CONFIG = Path(".hydra") / "config.yaml"  # the job's composed config
METRICS_FILE = "metrics.json"
CHECKPOINT = Path("checkpoints") / "best.ckpt"
LAST = Path("checkpoints") / "last.ckpt"  # written after every validation: what resume= reads
# what a run writes besides Hydra's .hydra/ and its log: a folder holding any of these holds
# a run, and a fresh run must not write into it (one folder, one run's outputs)
RUN_OUTPUTS = (METRICS_FILE, "predictions.parquet", "checkpoints", "wandb-run.json", "wandb",
               "csv")


def new_run_id() -> str:
    """A fresh run's id: 12 random hex digits."""
    return secrets.token_hex(6)


def run_outputs(folder: Path) -> list[str]:
    """The names of RUN_OUTPUTS present in `folder` (empty for a new or missing folder)."""
    return [name for name in RUN_OUTPUTS if (Path(folder) / name).exists()]


def refuse_used_folder(folder: Path, option: str) -> None:
    """Stop a fresh run whose folder already holds another run's outputs."""
    if found := run_outputs(folder):
        raise ConfigError(f"{option}={folder} already holds a run ({', '.join(found)}): a fresh "
                          f"run never writes into another's folder; choose a new folder, or "
                          f"continue that run with resume={folder}.")


def checkpoint_run_id(path: Path) -> str | None:
    """The run id a checkpoint carries (None for one written before run ids existed)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return state.get("callbacks", {}).get("RunIdentity", {}).get(RUN_ID)


def check_same_run(metrics: dict, path: Path, run_id: str | None) -> None:
    """Refuse an output (a predictions file, a checkpoint) of another run than metrics.json's."""
    if metrics.get(RUN_ID) != run_id:
        raise ConfigError(f"{path} belongs to another run than the {METRICS_FILE} beside it "
                          f"(run {run_id} against {metrics.get(RUN_ID)}): the folder mixes two "
                          "runs' outputs; run it again into a new folder.")


def saved_config(ckpt: Path):
    """The composed config of the run a checkpoint belongs to, to rebuild its data and model.

    Runs written before the package was regrouped by role (`microrec.loaders`,
    `microrec.synthetic`, `data.path`) are refused in one sentence: their configs name
    classes and settings that no longer exist.
    """
    import hydra
    from omegaconf import OmegaConf

    run_dir = run_folder(ckpt)
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{ckpt}: its run folder {run_dir} has no {CONFIG}, so its data and "
                          "model cannot be rebuilt.")
    cfg = OmegaConf.load(run_dir / CONFIG)
    gone = ["data.path"] if "path" in cfg.data else []  # now data.source.path
    for key in ("data._target_", "data.source._target_", "model._target_"):
        if (target := OmegaConf.select(cfg, key)) and not gone:
            try:
                hydra.utils.get_object(target)
            except Exception:
                gone.append(target)
    if gone:
        raise ConfigError(f"{run_dir} was written by an older layout of microrec (its config "
                          f"names {gone[0]}, which no longer exists): train it again to use "
                          "it here.")
    return cfg


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
