"""Train and test one configuration; with -m, a sweep of them. See conf/train.yaml.

    python src/train.py -m features=sku,sku_act,sku_dwell,full
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")  # no account or network needed; override freely

import hydra
import pytorch_lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from microrec.config import build, run_or_exit
from microrec.files import atomic_write
from microrec.models.base import FitFromData
from microrec.naming import job_label
from microrec.resume import LAST, RngStates, check_config, expand_argv, wandb_identity

log = logging.getLogger("microrec.train")
# Batches are built by vectorised indexing in the main process: loader workers would not help.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
TAGGED_GROUPS = ("data", "model", "features", "encoder", "attention")
OmegaConf.register_new_resolver("job_label", job_label, replace=True)


def run_identity() -> dict:
    """W&B group, run name and tags of the current Hydra job (empty outside Hydra)."""
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    choices = hc.runtime.choices
    identity = {
        "name": job_label(list(hc.overrides.task), hc.sweeper.get("params")),
        # a baseline drops the groups it does not use (encoder, attention): no tag for those
        "tags": [f"{g}={choices[g]}" for g in TAGGED_GROUPS if choices.get(g)],
    }
    if hc.mode == hydra.types.RunMode.MULTIRUN:
        identity["group"] = "multirun/" + "/".join(Path(hc.sweep.dir).parts[-2:])
    return identity


def train(cfg: DictConfig) -> dict[str, float]:
    """Seed, build data and model, fit, test the chosen weights once, write metrics.json.

    A gradient-trained model (RIB) runs Lightning's training loop and is evaluated on its
    best checkpoint; a model fitted from data (the baselines) is fitted from the training
    split in one call, evaluated, then saved to the same checkpoint path.
    """
    started = time.time()
    run_dir = Path(cfg.run_dir)
    resume_from = None
    if cfg.resume:  # src/microrec/resume.py: the folder, its overrides and checkpoint
        check_config(cfg, Path(cfg.resume))
        resume_from = Path(cfg.resume) / LAST
    L.seed_everything(cfg.seed, workers=True)

    dm = build(cfg.data)
    dm.setup()
    model = build(cfg.model, n_items=dm.n_items, n_activities=dm.n_activities,
                  n_dwell=dm.n_dwell)

    logger = None
    if cfg.get("logger"):
        is_wandb = cfg.logger._target_.endswith("WandbLogger")
        identity = wandb_identity(run_dir, run_identity(), bool(cfg.resume)) if is_wandb else {}
        logger = build(cfg.logger, **identity)
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    callbacks = [build(c) for c in cfg.callbacks.values() if c is not None]
    callbacks.append(RngStates())  # dropout continues exactly after a resume
    trainer = build(cfg.trainer, logger=logger or False, callbacks=callbacks)

    fitted = isinstance(model, FitFromData)
    if fitted:
        model.fit(dm)  # no training epochs: the weights are final now
        best = None  # evaluate the weights in memory
    else:
        trainer.fit(model, datamodule=dm, ckpt_path=resume_from, weights_only=True)
        best = trainer.checkpoint_callback.best_model_path
        log.info("best checkpoint: %s", best)
    metrics = {}
    for results in (trainer.validate(model, datamodule=dm, ckpt_path=best, verbose=False),
                    trainer.test(model, datamodule=dm, ckpt_path=best, verbose=False)):
        metrics.update({k: float(v) for k, v in results[0].items()})
    if fitted:
        trainer.save_checkpoint(trainer.checkpoint_callback.format_checkpoint_name({}))
    metrics["epochs"] = trainer.current_epoch  # Lightning epochs: 0 for a fitted model
    metrics["time/total_s"] = round(time.time() - started, 2)

    if trainer.is_global_zero:  # under DDP every rank runs this script; one writes
        text = json.dumps(metrics, indent=2, sort_keys=True)
        atomic_write(run_dir / "metrics.json", lambda tmp: Path(tmp).write_text(text + "\n"))
        log.info("test/recall@20 %.4f  test/mrr@20 %.4f  -> %s", metrics["test/recall@20"],
                 metrics["test/mrr@20"], run_dir / "metrics.json")

    if logger is not None and cfg.logger._target_.endswith("WandbLogger"):
        import wandb

        wandb.finish()  # each multirun job must be its own W&B run
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return run_or_exit(train, cfg)[cfg.monitor]


if __name__ == "__main__":
    sys.argv = run_or_exit(expand_argv, sys.argv)  # resume=<folder>: that run's own overrides
    main()
