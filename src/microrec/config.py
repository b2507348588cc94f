"""Building objects from Hydra configs, keeping a user error's own one-sentence message."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from microrec.errors import Diverged, MicrorecError


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, but a user error inside a constructor keeps its own message."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, MicrorecError):
            raise e.__cause__ from None
        raise


def in_optuna_study() -> bool:
    """Whether this is a trial of an Optuna sweep (`hparams_search=<model>`)."""
    return (HydraConfig.initialized()
            and HydraConfig.get().runtime.choices.get("hydra/sweeper") == "optuna")


def run_or_exit(task, *args):
    """Run an entry script's task; a user error becomes one `error: ...` line and exit 1
    (a stop by SIGTERM: one `stopped: ...` line and exit 143).

    A trial of an Optuna study that diverged is the exception: its error goes to the sweeper,
    which records the trial as failed (never as a value) and runs the next one.
    """
    try:
        return task(*args)
    except Diverged as e:
        if not in_optuna_study():
            _exit(e)
        logging.getLogger("microrec").error("trial failed: %s", e)
        raise
    except MicrorecError as e:
        _exit(e)


def _exit(e: MicrorecError):
    logging.getLogger("microrec").error("%s", e)
    print(f"{e.label}: {e}", file=sys.stderr)
    sys.exit(e.exit_status)
