"""W&B through Lightning: which loggers are W&B, the offline default, and a quiet start."""

import logging
import os
import subprocess
import sys

import pytest
from conftest import compose_cfg
from omegaconf import OmegaConf

from microrec.config import build
from microrec.tracking import uses_wandb


def test_a_logger_is_wandb_by_its_class_not_its_name():
    assert uses_wandb(OmegaConf.create({"_target_": "microrec.tracking.WandbLogger"}))
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
    assert "offline" in err  # wandb did start and speak on stderr
    assert "anonymous" not in err
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1


def test_lightnings_litlogger_tip_is_dropped_and_its_other_notes_kept(caplog):
    import pytorch_lightning as L

    with caplog.at_level(logging.INFO):
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    messages = [r.getMessage() for r in caplog.records]
    assert any("GPU available" in m for m in messages)
    assert not any("litlogger" in m for m in messages)
