"""One run folder holds one run's outputs, each named by the run's id; every stop shows in the
exit status, and a stopped run continues from its last checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
import torch
from conftest import ROOT, TINY, compose_cfg
from omegaconf import OmegaConf
from test_table3 import make_job

from microrec.errors import ConfigError
from microrec.reports.explain import load_runs
from microrec.reports.results import table3
from microrec.runs import predictions
from microrec.runs.argv import expand_argv
from microrec.runs.folders import LAST, RUN_ID, checkpoint_run_id, find_checkpoints
from microrec.runs.resume import check_checkpoint, resume_point
from microrec.runs.train import train


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny RIB run: its folder (with .hydra/config.yaml, as Hydra leaves it), its
    config and metrics."""
    run = tmp_path_factory.mktemp("run")
    cfg = compose_cfg(run, ["model.init=random", "+trainer.limit_train_batches=3"])
    metrics = train(cfg)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    return run, cfg, metrics


def test_every_output_names_the_run(finished):
    run, _, metrics = finished
    run_id = json.loads((run / "metrics.json").read_text())[RUN_ID]
    assert run_id == metrics[RUN_ID] and len(run_id) == 12
    assert predictions.run_of(run / predictions.PREDICTIONS_FILE) == run_id
    for checkpoint in ("best.ckpt", "last.ckpt"):
        assert checkpoint_run_id(run / "checkpoints" / checkpoint) == run_id


def test_a_fresh_run_into_a_used_folder_is_refused_before_hydra_writes_there(finished, tmp_path):
    run, cfg, _ = finished
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    message = f"hydra.run.dir={run} already holds a run (metrics.json, predictions.parquet, "
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.").replace("(", r"\(")):
        expand_argv(["train.py", "model=item_knn", f"hydra.run.dir={run}"])
    sweep = tmp_path / "sweep"
    (sweep / "0_seed=0").mkdir(parents=True)
    (sweep / "0_seed=0" / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"already holds a sweep's runs \(0_seed=0, ...\)"):
        expand_argv(["train.py", "-m", "seed=0,1", f"hydra.sweep.dir={sweep}"])
    with pytest.raises(ConfigError, match=f"^run_dir={run} already holds a run"):
        train(cfg)  # the same check where the folder is given otherwise (run_dir=)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing touched
    assert expand_argv(["train.py", f"hydra.run.dir={tmp_path / 'new'}"])  # a new folder is fine
    (tmp_path / "hydra_only" / ".hydra").mkdir(parents=True)  # e.g. a run that never started
    expand_argv(["train.py", f"hydra.run.dir={tmp_path / 'hydra_only'}"])


def test_results_and_explain_refuse_outputs_of_two_runs_in_one_folder(finished, tmp_path):
    folder = tmp_path / "multirun"
    make_job(folder, "0_a", "synthetic", "pop", 0, ranks=[1, 5, 50, 50])
    make_job(folder, "1_b", "synthetic", "item_knn", 0, ranks=[1, 1, 50, 50])
    table3([folder], resamples=200)  # written before run ids: nothing to compare
    path = folder / "1_b" / predictions.PREDICTIONS_FILE
    pl.read_parquet(path).write_parquet(path, metadata={RUN_ID: "0123456789ab"})  # POP's, say
    with pytest.raises(ConfigError, match=f"^{path} belongs to another run than the metrics.json "
                                          r"beside it \(run 0123456789ab against None\)"):
        table3([folder], resamples=200)

    run, _, metrics = finished
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in (".hydra", "checkpoints"):
        os.symlink(run / name, mixed / name)
    (mixed / "metrics.json").write_text(json.dumps({**metrics, RUN_ID: "another0run"}))
    with pytest.raises(ConfigError, match=r"best.ckpt belongs to another run .*against "
                                          "another0run"):
        load_runs(find_checkpoints([str(mixed)]), notes=[])


@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_a_damaged_last_checkpoint_is_one_sentence(finished, tmp_path, damage):
    run, cfg, _ = finished
    good = (run / LAST).read_bytes()
    bad = {"truncated": good[:len(good) // 2], "empty": b"",
           "random": bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).tolist())}[damage]
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text((run / ".hydra" / "config.yaml").read_text())
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / LAST).write_bytes(bad)
    with pytest.raises(ConfigError, match=f"^{tmp_path / LAST} is damaged or not a checkpoint "
                                          r"\(.*\): the run cannot continue from it; start it "
                                          "again in a new folder.$"):
        check_checkpoint(tmp_path / LAST)
    check_checkpoint(run / LAST)  # the undamaged one passes
    cfg = cfg.copy()
    cfg.resume = str(tmp_path)
    with pytest.raises(ConfigError, match="is damaged or not a checkpoint"):
        resume_point(cfg, tmp_path)  # what train() asks first, before any data is read


# -- end to end: SIGTERM a sweep, then continue its job as a requeued SLURM job would -------
def child_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))}
    env.update(HOME=str(tmp_path), OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_sigterm_stops_a_sweep_with_status_143_and_the_job_continues_from_last_ckpt(tmp_path):
    sweep = tmp_path / "sweep"
    config = [*TINY, "trainer.max_epochs=3", "logger=none", f"cache_dir={tmp_path / 'cache'}",
              "data.source.n_sessions=2000",  # a checkpoint every 2 steps: proof that training
              "callbacks.mid_epoch_checkpoint.train_time_interval=null",  # (and so Lightning's
              "callbacks.mid_epoch_checkpoint.every_n_train_steps=2"]  # SIGTERM handler) is on
    victim = subprocess.Popen(
        [sys.executable, "src/train.py", "-m", "seed=0,1", *config, f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env=child_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    job = sweep / "0_seed=0"
    deadline = time.time() + 300
    while not (job / LAST).exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGTERM)
    out, err = victim.communicate(timeout=300)
    assert victim.returncode == 143, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(("stopped:", "error:"))]
    assert len(lines) == 1 and lines[0].startswith("stopped: SIGTERM at epoch ")
    assert lines[0].endswith(f"{job / LAST} is kept: continue with python src/train.py "
                             f"resume={job}")
    assert "Traceback" not in err
    assert (job / LAST).is_file() and not (job / "metrics.json").exists()
    assert not (sweep / "1_seed=1").exists()  # the sweep stopped; it did not go on

    # submitit reruns a preempted job in its folder with SLURM_RESTART_COUNT set
    overrides = [str(o) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]
    again = subprocess.run([sys.executable, "src/train.py", *overrides,
                            f"hydra.run.dir='{job}'"], cwd=ROOT,
                           env=child_env(tmp_path, SLURM_RESTART_COUNT="1"),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics[RUN_ID] == checkpoint_run_id(job / LAST)


@pytest.mark.parametrize("data", [
    {"_target_": "microrec.data.MicroDataModule", "source": {"_target_": "x"}},
    {"_target_": "microrec.data.module.MicroDataModule", "path": "/x",
     "source": {"_target_": "microrec.data.loaders.JDSessions", "path": "${data.path}"}},
])
def test_a_run_of_the_old_layout_is_refused_in_one_sentence(tmp_path, data):
    from microrec.runs.folders import saved_config

    (tmp_path / ".hydra").mkdir()
    (tmp_path / "checkpoints").mkdir()
    model = {"_target_": "microrec.models.pop.Pop"}
    OmegaConf.save(OmegaConf.create({"data": data, "model": model}),
                   tmp_path / ".hydra" / "config.yaml")
    (tmp_path / "checkpoints" / "best.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"was written by an older layout of microrec \(its "
                                          r"config names (microrec\.data\.MicroDataModule|"
                                          r"data\.path), which no longer exists\)"):
        saved_config(tmp_path / "checkpoints" / "best.ckpt")
