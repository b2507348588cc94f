"""W&B through Lightning: which loggers are W&B, the offline default, and a quiet start."""

import logging
import os
import subprocess
import sys

import pytest
from conftest import compose_cfg
from omegaconf import OmegaConf

from microrec.config import build
from microrec.runs.tracking import uses_wandb


def test_a_logger_is_wandb_by_its_class_not_its_name():
    assert uses_wandb(OmegaConf.create({"_target_": "microrec.runs.tracking.wandb_logger"}))
    assert uses_wandb(OmegaConf.create({"_target_": "pytorch_lightning.loggers.WandbLogger"}))
    assert not uses_wandb(OmegaConf.create({"_target_": "pytorch_lightning.loggers.CSVLogger"}))
    assert not uses_wandb(None)


@pytest.mark.parametrize("given, expected", [(None, "offline"), ("disabled", "disabled")])
def test_importing_microrec_makes_wandb_offline_unless_wandb_mode_is_set(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    if given:
        env["WANDB_MODE"] = given
    done = subprocess.run([sys.executable, "-c", "import os, microrec; "
                           "print(os.environ['WANDB_MODE'])"], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == expected


@pytest.mark.parametrize("verbose, expected", [(None, "30 30 false"), ("1", "0 0 None")])
def test_microrec_verbose_brings_back_what_wandb_and_lightning_say_for_information(
        verbose, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("MICROREC_VERBOSE", "WANDB_SHOW_INFO")}
    if verbose:
        env["MICROREC_VERBOSE"] = verbose
    done = subprocess.run([sys.executable, "-c", "import logging, os, microrec; print("
                           "logging.getLogger('lightning_fabric.utilities.seed').level, "
                           "logging.getLogger('pytorch_lightning.utilities.rank_zero').level, "
                           "os.environ.get('WANDB_SHOW_INFO'))"], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == expected  # 30: WARNING ("Seed set to 0" is INFO), 0: unset


def test_the_configured_wandb_logger_runs_offline_without_the_anonymous_warning(
        tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    cfg = compose_cfg(tmp_path, ["logger=wandb"])
    assert uses_wandb(cfg.logger)
    logger = build(cfg.logger)
    try:
        logger.experiment.log({"x": 1})
    finally:
        import wandb

        wandb.finish()
    err = capfd.readouterr().err
    assert "anonymous" not in err  # a warning, so W&B would print it even when quiet
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1


def test_lightnings_litlogger_tip_is_dropped_and_its_other_notes_kept(caplog):
    import pytorch_lightning as L

    # at INFO, as with MICROREC_VERBOSE=1: the tip is dropped even then
    with caplog.at_level(logging.INFO, logger="pytorch_lightning.utilities.rank_zero"):
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    messages = [r.getMessage() for r in caplog.records]
    assert any("GPU available" in m for m in messages)
    assert not any("litlogger" in m for m in messages)
