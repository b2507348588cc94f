"""Building objects from Hydra configs, keeping a user error's own one-sentence message."""

from __future__ import annotations

import logging
import sys

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


def run_or_exit(task, *args):
    """Run an entry script's task; a user error becomes one `error: ...` line and exit 1."""
    try:
        return task(*args)
    except MicrorecError as e:
        logging.getLogger("microrec").error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
