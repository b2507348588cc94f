"""Building objects from Hydra configs, keeping a user error's own one-sentence message."""

from __future__ import annotations

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from microrec.errors import MicrorecError


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, but a user error inside a constructor keeps its own message."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, MicrorecError):
            raise e.__cause__ from None
        raise
