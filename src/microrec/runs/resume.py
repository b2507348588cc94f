"""Continuing a killed training run in its own folder, as if it had never stopped.

`python src/train.py resume=<run folder>` reruns the folder's own overrides in that folder
(`runs.argv`) from `checkpoints/last.ckpt`. Exactness rests on three pieces kept in every
checkpoint: Lightning's loop, model and optimizer state; the random states
(`runs.callbacks.RngStates`); and the training loader's position inside its epoch
(`data.batches.ResumableLoader`). Here: the checks that a run may continue, and from where.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from microrec.errors import ConfigError
from microrec.runs.argv import rank, requeued
from microrec.runs.folders import LAST, refuse_used_folder


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


def resume_point(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint a run continues from: `resume=<folder>`'s last one, or a requeued SLURM
    job's own; None for a fresh run, whose folder must not hold another run's outputs."""
    if cfg.resume:
        folder = Path(cfg.resume)
        check_config(cfg, folder)
    elif requeued() and (run_dir / LAST).is_file():
        folder = run_dir  # submitit reran the job in its own folder, with its own config
    else:
        if rank() == 0 and not requeued():  # DDP children join rank 0's run
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
