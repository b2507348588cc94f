"""Readable, safe names for multirun job folders and W&B runs (what the sweep varies), and
the config resolvers that name things in conf/: `register_resolvers`."""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from omegaconf import OmegaConf

_SWEEP_FUNCTIONS = ("range(", "choice(", "glob(", "interval(", "tag(")  # tag(log, interval(..))
MAX_LEN = 80
SQLITE = "sqlite:///"


def _is_sweep(value: str) -> bool:
    if value.startswith(_SWEEP_FUNCTIONS):
        return True
    depth = 0
    for ch in value:
        depth += ch in "[({"
        depth -= ch in "])}"
        if ch == "," and depth == 0:
            return True
    return False


def swept_keys(argv: list[str]) -> set[str]:
    """Keys given several values on the command line, e.g. features=sku,full -> {features}."""
    keys = set()
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not arg.startswith("-") and _is_sweep(value):
            keys.add(key.lstrip("+~"))
    return keys


def job_label(overrides: list[str], params: Mapping | None = None,
              argv: list[str] | None = None) -> str:
    """The job's swept `key=value` pairs joined by ',' ('job' if nothing is swept).

    A key is swept when the command line (`argv`, default sys.argv) or the sweeper's
    `params` (hydra.sweeper.params, e.g. from an experiment config) give it several values.
    """
    argv = sys.argv[1:] if argv is None else argv
    swept = swept_keys([*argv, *(f"{k}={v}" for k, v in (params or {}).items())])
    return safe_label([o for o in overrides if o.partition("=")[0].lstrip("+~") in swept])


def run_label(overrides: list[str], folder: str) -> str:
    """A single run's W&B name: its command-line overrides, or its folder's name without."""
    own = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "resume="))]
    return safe_label(own, default=folder)


def safe_label(parts: list[str], default: str = "job") -> str:
    """`parts` joined by ',' as one valid folder name: path separators become '_', and a label
    longer than MAX_LEN is cut and given a short hash."""
    label = re.sub(r"[/\\\s]+", "_", ",".join(parts)) or default
    if len(label) > MAX_LEN:
        digest = hashlib.sha1(label.encode()).hexdigest()[:8]
        label = f"{label[:MAX_LEN - 9]}-{digest}"
    return label


def sqlite_url(path: str) -> str:
    """The SQLAlchemy URL of an SQLite file, its folder created (SQLite will not make it)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return SQLITE + path


def register_resolvers() -> None:
    """Register the resolvers conf/ uses: `job_label` (a multirun job folder's name,
    conf/train.yaml) and `sqlite_url` (an Optuna study's storage, conf/tuning/optuna.yaml).
    Every entry script that composes conf/train.yaml calls it before Hydra starts."""
    OmegaConf.register_new_resolver("job_label", job_label, replace=True)
    OmegaConf.register_new_resolver("sqlite_url", sqlite_url, replace=True)
