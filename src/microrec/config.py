"""Building objects from Hydra configs, and the entry scripts' one `error: ...` line for every
mistake a user can make in a config: an unknown option or setting Hydra finds while composing,
a value its class cannot take, and a user error the task itself raises."""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import os
import shutil
import sys
import types
import typing
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from microrec.errors import ConfigError, Diverged, MicrorecError

log = logging.getLogger("microrec")
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
        log.error("trial failed: %s", e)
        raise
    except MicrorecError as e:
        _exit(e)


def _exit(e: MicrorecError):
    _log_to_files(str(e))
    print(f"{e.label}: {e}", file=sys.stderr)
    sys.exit(e.exit_status)


def _log_to_files(message: str) -> None:
    """Keep an error in a Hydra job's log file, which says why a kept run folder stopped,
    but not on the console, which gets it once, as `error: ...`."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def hydra_main(config_name: str):
    """`hydra.main` for an entry script whose configs are in conf/ (beside src/).

    The task runs under `run_or_exit`, and a mistake Hydra finds while composing (an unknown
    option or setting, a malformed override) is one `error: ...` line too, not Hydra's block;
    HYDRA_FULL_ERROR=1 still shows the traceback.
    A job that stops before writing anything but Hydra's files and its log leaves no folder.
    """

    def decorate(task):
        @functools.wraps(task)  # Hydra finds conf/ relative to the task's own file
        def job(cfg: DictConfig):
            try:
                return run_or_exit(task, cfg)
            except BaseException:
                hc = HydraConfig.get()
                own = {f"{hc.job.name}.log"}
                if hc.output_subdir:  # None when resume= continues a run in its own folder
                    own |= {hc.output_subdir, *(f"{hc.output_subdir}/{name}.yaml"
                                                for name in ("config", "hydra", "overrides"))}
                _remove_if_only(Path(hc.runtime.output_dir), own)
                raise

        main = hydra.main(version_base="1.3", config_path="../conf", config_name=config_name)(job)

        def entry():
            asked = os.environ.get("HYDRA_FULL_ERROR")
            os.environ["HYDRA_FULL_ERROR"] = "1"  # so that Hydra raises rather than prints
            try:
                return main()
            except (ConfigCompositionException, OverrideParseException) as e:
                if asked == "1":
                    raise
                print(f"error: {hydra_error(e)}", file=sys.stderr)
                sys.exit(1)
            finally:
                if asked is None:
                    del os.environ["HYDRA_FULL_ERROR"]
                else:
                    os.environ["HYDRA_FULL_ERROR"] = asked

        return entry

    return decorate


class RemoveEmptySweep(Callback):
    """Hydra callback (conf/train.yaml): a sweep folder in which no job is left when the
    process ends (a swept value that does not compose, a first job that never started) is
    deleted, so that it does not pass for the latest multirun."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        atexit.register(_remove_if_only, Path(config.hydra.sweep.dir), {"multirun.yaml"})


def _remove_if_only(folder: Path, own: set[str]) -> None:
    """Delete `folder` if every path in it (relative, as posix) is one of `own`: the files a
    run that never started leaves, never anything it wrote itself."""
    if folder.is_dir() and folder != Path.cwd() and \
            {p.relative_to(folder).as_posix() for p in folder.rglob("*")} <= own:
        shutil.rmtree(folder)


def hydra_error(e: ConfigCompositionException | OverrideParseException) -> str:
    """One sentence for a mistake Hydra found while composing a config."""
    if isinstance(e, MissingConfigException) and e.options:
        group, _, name = e.missing_cfg_file.rpartition("/")
        return f"no {group} '{name}': choose one of {', '.join(e.options)}."
    cause = e.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and \
            isinstance(cause.parent_node, DictConfig):
        # Hydra suggests `+key=value`, but no class takes a setting its config lacks
        where = cause.full_key.rpartition(".")[0] or "the config"
        names = ", ".join(str(k) for k in cause.parent_node if not str(k).startswith("_")
                          and k != "hydra")
        return f"no setting {cause.full_key}: {where} has {names}."
    text = " ".join(str(e).split("\n\n")[0].split())  # its first paragraph, on one line
    return f"{e.override}: {text}" if isinstance(e, OverrideParseException) else text


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


def takes(node: DictConfig, name: str) -> bool:
    """Whether the class a `_target_` node builds takes an argument `name`."""
    params = _parameters(node["_target_"]) or {}
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


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
