"""Experiment tracking with W&B: the one module that opens W&B runs.

A training run logs through Lightning's W&B logger (`wandb_logger`), named and grouped by its
Hydra job (`run_identity`) and keeping its W&B id in its folder so that a resumed run
continues the same W&B run (`wandb_identity`); reports (figures, tables) log once through
`log_run`. The WANDB_MODE default (offline) is set where every entry point gets it:
`import microrec`.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from microrec.files import atomic_write
from microrec.runs.argv import rank
from microrec.runs.naming import job_label, run_label

PROJECT = "microrec"  # the W&B project of every run, unless logger.project / --project says
WANDB_RUN = "wandb-run.json"  # the W&B id, name, group and tags a resumed run reuses
# Hydra groups whose choice tags a run; a model without encoder, attention or head (every
# model but RIB) has no tag for them
TAGGED_GROUPS = ("data", "model", "features", "encoder", "attention", "head", "tuned")


def wandb_logger(project: str | None = None, **kwargs):
    """Lightning's WandbLogger (same arguments; the project defaults to `PROJECT`), minus the
    `anonymous=None` it always passes to `wandb.init`: wandb >= 0.19 ignores the setting and
    prints a deprecation warning for it. conf/logger/wandb.yaml builds it."""
    from pytorch_lightning.loggers import WandbLogger  # reports import this module: no
    # Lightning for them

    logger = WandbLogger(project=project or PROJECT, **kwargs)
    logger._wandb_init.pop("anonymous", None)
    return logger


def uses_wandb(logger: DictConfig | None) -> bool:
    """Whether a logger config (a `_target_` node, or None for no logger) builds a W&B logger."""
    if not logger:
        return False
    built = hydra.utils.get_object(logger._target_)
    if built is wandb_logger:
        return True
    from pytorch_lightning.loggers import WandbLogger

    return isinstance(built, type) and issubclass(built, WandbLogger)


def wandb_group(multirun: Path) -> str:
    """The W&B group of a multirun's jobs: `multirun/<date>/<time>` from its folder."""
    return "multirun/" + "/".join(multirun.parts[-2:])


def run_identity(run_dir: Path) -> dict:
    """W&B group, run name and tags of the current Hydra job (empty outside Hydra)."""
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    choices = hc.runtime.choices
    overrides = list(hc.overrides.task)
    multirun = hc.mode == hydra.types.RunMode.MULTIRUN
    identity = {
        "name": (job_label(overrides, hc.sweeper.get("params")) if multirun
                 else run_label(overrides, run_dir.name)),
        "tags": [f"{g}={choices[g]}" for g in TAGGED_GROUPS if choices.get(g)],
    }
    if multirun:
        identity["group"] = wandb_group(Path(hc.sweep.dir))
    return identity


def wandb_identity(run_dir: Path, fresh: dict, resume: bool) -> dict:
    """WandbLogger arguments: a new run's (kept in the folder) or, resumed, the kept ones.

    The id is fixed here rather than left to W&B so that it is in the folder before
    training starts; a resumed run passes it back with resume='allow'.
    """
    if rank() != 0:  # other DDP ranks never open a W&B run
        return fresh
    path = Path(run_dir) / WANDB_RUN
    if resume and path.is_file():
        return {**json.loads(path.read_text()), "resume": "allow"}
    alphabet = string.ascii_lowercase + string.digits  # what W&B's own run ids use
    identity = {**fresh, "id": "".join(secrets.choice(alphabet) for _ in range(8))}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(identity, indent=2) + "\n"))
    return identity


def log_run(entries: Callable, project: str | None = None, **init) -> None:
    """Log one step to a new W&B run (offline unless WANDB_MODE says otherwise) and finish it.

    entries: wandb -> {key: value}, e.g. `lambda wandb: {"table": wandb.Table(...)}`.
    init: further `wandb.init` arguments (dir, name, group, tags, job_type, config).
    """
    import wandb

    Path(init.get("dir", ".")).mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project or PROJECT, **init)
    run.log(entries(wandb))
    run.finish()


def finish() -> None:
    """End the current training run's W&B run: each multirun job is a W&B run of its own."""
    import wandb

    wandb.finish()
