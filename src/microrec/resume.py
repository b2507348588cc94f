"""Continuing a killed training run in its own folder, as if it had never stopped.

`python src/train.py resume=<run folder>` reruns the folder's own overrides in that folder
from `checkpoints/last.ckpt`. Exactness rests on three pieces kept in every checkpoint:
Lightning's loop, model and optimizer state; the random states (`RngStates`); and the
training loader's position inside its epoch (`ResumableLoader`).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import secrets
import string
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Callback
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Sampler

from microrec.errors import ConfigError
from microrec.files import atomic_write
from microrec.runs import (
    METRICS_FILE,
    RUN_ID,
    new_run_id,
    refuse_used_folder,
    run_outputs,
)

LAST = Path("checkpoints") / "last.ckpt"
WANDB_RUN = "wandb-run.json"  # the W&B id, name, group and tags a resumed run reuses
_MULTIRUN_FLAGS = ("-m", "--multirun")


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
    if rank_zero_only.rank != 0 or requeued():  # a DDP child joins its rank 0's run; a
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


def _differences(saved, now, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config trees."""
    if not (isinstance(saved, dict) and isinstance(now, dict)):
        return [] if saved == now else [prefix.rstrip(".") or "<root>"]
    keys = sorted(saved.keys() | now.keys(), key=str)
    return [d for k in keys for d in _differences(saved.get(k), now.get(k), f"{prefix}{k}.")]


def check_config(cfg: DictConfig, folder: Path) -> None:
    """Refuse to resume when the config files now compose differently from the run's own."""
    saved = OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "config.yaml"))
    now = OmegaConf.to_container(cfg)
    saved.pop("resume", None)
    now.pop("resume", None)
    if changed := _differences(saved, now):
        raise ConfigError(f"resume={folder}: the config files have changed since the run "
                          f"started ({', '.join(changed[:5])}); restore them or start a new run.")


def requeued() -> bool:
    """Whether this is a SLURM job started again after a preemption or a node failure."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def resume_point(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint a run continues from: `resume=<folder>`'s last one, or a requeued SLURM
    job's own; None for a fresh run, whose folder must not hold another run's outputs."""
    if cfg.resume:
        folder = Path(cfg.resume)
        check_config(cfg, folder)
    elif requeued() and (run_dir / LAST).is_file():
        folder = run_dir  # submitit reran the job in its own folder, with its own config
    else:
        if rank_zero_only.rank == 0 and not requeued():  # DDP children join rank 0's run
            refuse_used_folder(run_dir, "run_dir")
        return None
    check_checkpoint(folder / LAST)
    return folder / LAST


def check_checkpoint(path: Path) -> None:
    """Refuse, in one sentence, a checkpoint that cannot be read (truncated, empty, foreign)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ValueError("not a Lightning checkpoint")
    except Exception as e:  # whatever torch says of a damaged file, the answer is the same
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path} is damaged or not a checkpoint ({reason[:120]}): the run "
                          "cannot continue from it; start it again in a new folder.") from None


def wandb_identity(run_dir: Path, fresh: dict, resume: bool) -> dict:
    """WandbLogger arguments: a new run's (kept in the folder) or, resumed, the kept ones.

    The id is fixed here rather than left to W&B so that it is in the folder before
    training starts; a resumed run passes it back with resume='allow'.
    """
    if rank_zero_only.rank != 0:  # other DDP ranks never open a W&B run
        return fresh
    path = Path(run_dir) / WANDB_RUN
    if resume and path.is_file():
        return {**json.loads(path.read_text()), "resume": "allow"}
    alphabet = string.ascii_lowercase + string.digits  # what W&B's own run ids use
    identity = {**fresh, "id": "".join(secrets.choice(alphabet) for _ in range(8))}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(identity, indent=2) + "\n"))
    return identity


class RngStates(Callback):
    """Keeps torch's, NumPy's and Python's random states in every checkpoint.

    Lightning does not, so without this a resumed run draws other dropout masks than the
    run it continues. The states are put back in `on_train_start`, the last hook before
    the first training batch; all are plain tensors, ints and strings, so the checkpoint
    still loads with weights_only=True.
    """

    def __init__(self):
        self._loaded: dict | None = None

    def state_dict(self) -> dict:
        kind, key, pos, has_gauss, gauss = np.random.get_state()
        state = {"torch": torch.get_rng_state(), "python": random.getstate(),
                 "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss]}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        self._loaded = state

    def on_train_start(self, trainer, pl_module) -> None:
        if self._loaded is None:
            return
        state, self._loaded = self._loaded, None
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        kind, key, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class RunIdentity(Callback):
    """Names the run in every checkpoint (`runs.checkpoint_run_id` reads it back).

    A fresh run draws a new id; a resumed one gets its own back from the checkpoint, so
    metrics.json and predictions.parquet, written after training, carry the run's one id.
    """

    def __init__(self):
        self.run_id = new_run_id()

    def state_dict(self) -> dict:
        return {RUN_ID: self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state[RUN_ID]


class CheckpointOnSigterm(Callback):
    """Writes `last.ckpt` when Lightning stops training on SIGTERM, so `resume=` continues
    from there even before the first regular checkpoint."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path, weights_only=False)  # all that resume needs


class _SkipFirst(Sampler):
    """A batch sampler that, once, starts its epoch `skip` batches in."""

    def __init__(self, batches: Sampler):
        self.batches = batches
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.skip, None)


class ResumableLoader(DataLoader):
    """A training loader whose place in its epoch is saved with every checkpoint.

    Lightning saves and restores the state of any loader with state_dict/load_state_dict.
    The place is (epoch, batches delivered), counted where batches leave the loader, so
    prefetching by worker processes does not inflate it. Resumed, the epoch's batch order
    (seeded by the epoch) is drawn again and the delivered batches are skipped before
    anything is gathered. The sampler must take `set_epoch`, as Lightning calls it.
    """

    def __init__(self, dataset, sampler: Sampler, **kwargs):
        # DataLoader iterators draw a worker seed from the global RNG unless given their own
        # generator; that extra draw per epoch would shift dropout on resume.
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(dataset, sampler=_SkipFirst(sampler), **kwargs)
        self.place = {"epoch": 0, "batches": 0}
        self._resume_at: dict | None = None

    def __iter__(self):
        # a generator: nothing runs until the first batch is asked for, which Lightning
        # does only after it has called set_epoch for this epoch
        epoch = self.sampler.epoch
        at = self._resume_at
        self._resume_at = None
        self.sampler.skip = at["batches"] if at and at["epoch"] == epoch else 0
        self.place = {"epoch": epoch, "batches": self.sampler.skip}
        for batch in super().__iter__():
            self.place["batches"] += 1
            yield batch

    def state_dict(self) -> dict:
        return dict(self.place)

    def load_state_dict(self, state: dict) -> None:
        self._resume_at = dict(state)
