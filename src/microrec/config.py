"""Building objects from Hydra configs: settings checked against their class first, and a
user error keeping its own one-sentence message."""

from __future__ import annotations

import inspect
import logging
import sys
import types
import typing

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from microrec.errors import ConfigError, MicrorecError

EXPECTED = {int: "an int", float: "a number", bool: "true or false"}


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, after `check_args`, and a user error inside a constructor keeps
    its own message."""
    check_args(node)
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


def check_args(node: DictConfig) -> None:
    """Refuse, before anything is built, a setting that a `_target_` node's class does not
    take, or a value that is not the int, float or bool its argument must be.

    Walks `node` and every node below it; the sentence names the key as the user wrote it,
    e.g. `model.hidden_size=abc`.
    """
    params = _parameters(node["_target_"]) if "_target_" in node else None
    for name in node:
        key = node._get_full_key(name)  # e.g. data.source.n_items
        if key == "hydra":  # Hydra's own settings, in a config composed with them (tests)
            continue
        if isinstance(child := node._get_node(name), DictConfig):
            check_args(child)
        if params is None or str(name).startswith("_"):  # _target_, _partial_, ...
            continue
        if name not in params:
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                raise ConfigError(f"{key}: {node['_target_']} takes no argument {name}; it "
                                  f"takes {', '.join(params)}.")
        elif kind := _kind(params[name].annotation):
            # resolved only here: other values may interpolate what exists inside a job only
            value = None if OmegaConf.is_missing(node, name) else node[name]
            if not _fits(value, kind):
                raise ConfigError(f"{key}={value}: expected {EXPECTED[kind]}.")


def _parameters(target: str):
    """The arguments `target` takes, annotations evaluated where they can be; None where
    unknown (instantiate reports a target that does not exist)."""
    try:
        obj = hydra.utils.get_object(target)
    except Exception:
        return None
    for evaluate in (True, False):
        try:
            return inspect.signature(obj, eval_str=evaluate).parameters
        except NameError:  # an annotation naming a type imported for type checkers only
            continue
        except (TypeError, ValueError):  # no signature to read, e.g. a builtin class
            return None
    return None


def _kind(annotation) -> type | None:
    """int, float or bool where an argument must be one of them (or None), else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else None
    return annotation if annotation in EXPECTED else None


def _fits(value, kind: type) -> bool:
    if value is None:  # a null setting means "not set", whatever the argument's type
        return True
    if isinstance(value, bool) or kind is bool:  # bool is an int to Python, not to a user
        return isinstance(value, bool) and kind is bool
    return isinstance(value, int) or (kind is float and isinstance(value, float))
