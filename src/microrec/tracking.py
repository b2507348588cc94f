"""Experiment tracking with W&B through Lightning: the one test of "is this logger W&B", and
Lightning's W&B logger without the argument that makes wandb warn on every run.

The WANDB_MODE default (offline) is set where every entry point gets it: `import microrec`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig
from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger (same arguments), minus the `anonymous=None` it always passes to
    `wandb.init`: wandb >= 0.19 ignores the setting and prints a deprecation warning for it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)


def uses_wandb(logger: DictConfig | None) -> bool:
    """Whether a logger config (a `_target_` node, or None for no logger) builds a W&B logger."""
    if not logger:
        return False
    return issubclass(hydra.utils.get_class(logger._target_), LightningWandbLogger)
