"""Training and testing one configuration: what `src/train.py` runs for each job."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from microrec.config import build, check_args, takes
from microrec.errors import ConfigError, Stopped
from microrec.files import atomic_write
from microrec.metrics import MRR, RECALL
from microrec.models.base import FitFromData
from microrec.runs import predictions, tracking
from microrec.runs.callbacks import CheckpointFiles, CheckpointOnSigterm, RngStates, RunIdentity
from microrec.runs.folders import LAST, METRICS_FILE, RUN_ID
from microrec.runs.resume import resume_point
from microrec.runs.threads import count_threads, set_threads
from microrec.runs.tracking import run_identity, uses_wandb, wandb_identity
from microrec.runs.tune import check_tuned  # and the sqlite_url resolver hparams_search uses

log = logging.getLogger("microrec.train")


def write_predictions(run_dir: Path, model, dm, stages: list[str],
                      run_id: str) -> dict[str, float]:
    """Write the final evaluation's per-example results to predictions.parquet; return (and
    log) their repeat / new breakdown, e.g. `test/repeat/recall@20`."""
    prepared = dm.prepared
    missing = [stage for stage in stages if stage not in model.predictions]
    if missing:  # a developer's mistake, not a user's: say where to look
        raise RuntimeError(f"{type(model).__name__} kept no per-example {missing} results: "
                           "its validation_step / test_step must call Recommender.evaluate.")
    tables = {stage: predictions.frame(stage, model.predictions[stage],
                                       prepared.splits[stage], prepared.items)
              for stage in predictions.STAGES if stage in stages}
    predictions.write(run_dir / predictions.PREDICTIONS_FILE, list(tables.values()), run_id)
    summary = {f"{stage}/{name}": value for stage, table in tables.items()
               for name, value in predictions.summary(table).items()}
    log.info("repeat / new targets: %s -> %s",
             "  ".join(f"{k} {v:.4f}" for k, v in summary.items()),
             run_dir / predictions.PREDICTIONS_FILE)
    return summary


def train(cfg: DictConfig) -> dict:
    """Seed, build data and model, fit, test the chosen weights once, write metrics.json.

    A gradient-trained model (RIB) runs Lightning's training loop and is evaluated on its
    best checkpoint; a model fitted from data (the baselines) is fitted from the training
    split in one call, evaluated, then saved to the same checkpoint path. With
    `test: false` (a tuning trial) the chosen weights are validated only. A run stopped by
    SIGTERM keeps `last.ckpt` and raises `Stopped`, which names the `resume=` that continues.
    """
    started = time.time()
    check_args(cfg)  # the model's settings too, before the data loads (build checks each)
    threads = count_threads(cfg.threads, side_by_side())
    run_dir = Path(cfg.run_dir)
    keep = kept_predictions(cfg)
    if HydraConfig.initialized():  # a `*_tuned` row's config must exist
        check_tuned(cfg.get("tuned"), HydraConfig.get().runtime.choices.data)
    resume_from = resume_point(cfg, run_dir)  # None for a fresh run into an unused folder
    L.seed_everything(cfg.seed, workers=True)

    dm = build(cfg.data)
    dm.setup()  # NumPy and Polars only: torch's thread pools start with the model
    set_threads(*threads)
    model = build_model(cfg.model, dm)

    logger = None
    if cfg.get("logger"):
        identity = (wandb_identity(run_dir, run_identity(run_dir), resume_from is not None)
                    if uses_wandb(cfg.logger) else {})
        logger = build(cfg.logger, **identity)
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    named = RunIdentity()  # a resumed run gets its own id back from the checkpoint
    callbacks = [build(c) for c in cfg.callbacks.values() if c is not None]
    callbacks += [RngStates(), named, CheckpointOnSigterm(run_dir / LAST)]
    trainer = build(cfg.trainer, logger=logger or False, callbacks=callbacks,
                    plugins=[CheckpointFiles()])

    try:
        metrics = fit_and_evaluate(cfg, trainer, model, dm, resume_from, keep)
    except SIGTERMException:
        raise Stopped(f"SIGTERM at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                      f"{run_dir / LAST} is kept: continue with python src/train.py "
                      f"resume={run_dir}") from None
    metrics[RUN_ID] = named.run_id
    metrics["time/total_s"] = round(time.time() - started, 2)

    if trainer.is_global_zero:  # under DDP every rank runs this script; one writes
        if keep:  # before metrics.json, which marks the run finished
            summary = write_predictions(run_dir, model, dm, keep, named.run_id)
            if uses_wandb(cfg.get("logger")):
                logger.experiment.summary.update(summary)  # beside the run's final metrics
        text = json.dumps(metrics, indent=2, sort_keys=True)
        atomic_write(run_dir / METRICS_FILE, lambda tmp: Path(tmp).write_text(text + "\n"))
        stage = "test" if cfg.test else "val"
        log.info("%s/%s %.4f  %s/%s %.4f  -> %s", stage, RECALL, metrics[f"{stage}/{RECALL}"],
                 stage, MRR, metrics[f"{stage}/{MRR}"], run_dir / METRICS_FILE)

    if uses_wandb(cfg.get("logger")):
        tracking.finish()
    return metrics


def build_model(node: DictConfig, dm):
    """The model `node` names, built with the data's vocabulary sizes (dm.sizes)."""
    sizes = dm.sizes()
    if "n_categories" in sizes and not takes(node, "n_categories"):
        raise ConfigError(f"features={dm.features} adds product categories, but "
                          f"{node._target_.rsplit('.', 1)[-1]} reads no micro-behavior "
                          f"channels; use a neural model or features="
                          f"{dm.features.removesuffix('_cat')}.")
    return build(node, **sizes)


def side_by_side() -> int:
    """Jobs the launcher runs at once on this machine (joblib's n_jobs; one otherwise)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != hydra.types.RunMode.MULTIRUN:
        return 1
    return int(HydraConfig.get().launcher.get("n_jobs") or 1)


def kept_predictions(cfg: DictConfig) -> list[str]:
    """The splits whose per-example results go to predictions.parquet (`predictions=`)."""
    keep = cfg.get("predictions") or []
    keep = [keep] if isinstance(keep, str) else list(keep)
    if any(stage not in predictions.STAGES for stage in keep):
        raise ConfigError(f"predictions={keep}: name splits among {list(predictions.STAGES)}, "
                          "e.g. predictions=[val,test], or predictions=[] for none.")
    if "test" in keep and not cfg.test:
        raise ConfigError(f"predictions={keep} with test=false: a run that never evaluates "
                          "on test has no test predictions; drop test from predictions.")
    return keep


def fit_and_evaluate(cfg: DictConfig, trainer: L.Trainer, model, dm, resume_from: Path | None,
                     keep: list[str]) -> dict:
    """Fit the model (Lightning's loop, or `fit(dm)` for a fitted one) and evaluate the
    chosen weights once: validation, and test unless `test: false`."""
    fitted = isinstance(model, FitFromData)
    if fitted:
        model.fit(dm)  # no training epochs: the weights are final now
        best = None  # evaluate the weights in memory
    else:
        trainer.fit(model, datamodule=dm, ckpt_path=resume_from, weights_only=True)
        best = trainer.checkpoint_callback.best_model_path
        log.info("best checkpoint: %s", best)
    model.keep_predictions = set(keep)  # the final evaluation only, not every epoch's
    metrics = {}
    stages = [trainer.validate, trainer.test] if cfg.test else [trainer.validate]
    for evaluate in stages:  # test=false (a tuning trial): no test metric is ever computed
        results = evaluate(model, datamodule=dm, ckpt_path=best, verbose=False,
                           weights_only=True)  # a checkpoint never runs code
        metrics.update({k: float(v) for k, v in results[0].items()})
    if fitted:
        trainer.save_checkpoint(trainer.checkpoint_callback.format_checkpoint_name({}),
                               weights_only=False)
    metrics["epochs"] = trainer.current_epoch  # Lightning epochs: 0 for a fitted model
    return metrics
