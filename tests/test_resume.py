"""resume=<run folder>: a run killed mid-epoch continues to the same result as one never stopped."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from microrec.data.batches import ResumableLoader
from microrec.errors import ConfigError
from microrec.runs.argv import expand_argv
from microrec.runs.callbacks import RngStates
from microrec.runs.folders import LAST, RUN_ID, checkpoint_run_id
from microrec.runs.resume import check_config
from microrec.runs.tracking import WANDB_RUN, wandb_identity


def make_run(folder, overrides=("a=1", "b=x"), checkpoint=True, finished=False):
    """A run folder as src/train.py leaves it, as far as resume looks."""
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(list(overrides)), folder / ".hydra" / "overrides.yaml")
    if checkpoint:
        (folder / LAST).parent.mkdir()
        (folder / LAST).write_bytes(b"")
    if finished:
        (folder / "metrics.json").write_text("{}")
    return folder


def parsed(override):
    return OverridesParser.create().parse_override(override)


def test_resume_reruns_the_folders_own_overrides_in_that_folder(tmp_path):
    run = make_run(tmp_path / "0_features=sku")  # a multirun job's name holds '='
    argv = expand_argv(["train.py", f"resume={run}"])
    assert argv[:3] == ["train.py", "a=1", "b=x"]
    assert {parsed(a).key_or_group: parsed(a).value() for a in argv[3:]} == {
        "hydra.run.dir": str(run), "hydra.output_subdir": None, "resume": str(run)}
    # the original command plus resume= is the same request; so is a Lightning DDP child's
    again = expand_argv(["train.py", "b=x", "a=1", "hydra.job.name=train_ddp_process_1",
                         f"resume={run}"])
    assert again == [*argv[:3], "hydra.job.name=train_ddp_process_1", *argv[3:]]
    assert expand_argv(["train.py", "a=1"]) == ["train.py", "a=1"]
    assert expand_argv(["train.py", "resume=null"]) == ["train.py", "resume=null"]


@pytest.mark.parametrize("case, args, message", [
    ("missing", [], "no such folder"),
    ("not_a_run", [], "is not a run folder of src/train.py"),
    ("finished", [], "that run has finished (metrics.json exists)"),
    ("no_checkpoint", [], "no checkpoints/last.ckpt to continue from"),
    ("run", ["trainer.max_epochs=9", "a=1"], "drop the overrides it did not have: "
                                             "trainer.max_epochs=9."),
    ("run", ["-m"], "resume continues one run, not a multirun"),
])
def test_bad_resume_is_one_sentence(tmp_path, case, args, message):
    folder = tmp_path / case
    if case == "not_a_run":
        folder.mkdir()
    elif case != "missing":
        make_run(folder, checkpoint=case != "no_checkpoint", finished=case == "finished")
    with pytest.raises(ConfigError) as e:
        expand_argv(["train.py", *args, f"resume={folder}"])
    assert message in str(e.value) and str(e.value).count(". ") == 0


def test_resume_refuses_config_files_that_changed_since_the_run(cfg_factory, tmp_path):
    cfg = cfg_factory()
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    cfg.resume = str(run)
    check_config(cfg, run)  # the same config, now with resume set
    cfg.model.dropout = 0.3
    cfg.callbacks.early_stopping = None
    with pytest.raises(ConfigError, match=r"changed since the run started "
                                          r"\(callbacks.early_stopping, model.dropout\)"):
        check_config(cfg, run)


def test_wandb_id_is_kept_in_the_folder_and_reused_on_resume(tmp_path):
    fresh = {"name": "features=sku", "group": "multirun/a/b", "tags": ["features=sku"]}
    first = wandb_identity(tmp_path, fresh, resume=False)
    assert first == {**fresh, "id": first["id"]} and len(first["id"]) == 8
    assert json.loads((tmp_path / WANDB_RUN).read_text()) == first
    resumed = wandb_identity(tmp_path, {"name": "job"}, resume=True)
    assert resumed == {**first, "resume": "allow"}  # the run's own name and group, not new ones
    assert wandb_identity(tmp_path, fresh, resume=False)["id"] != first["id"]


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in "abc"]


def test_random_states_survive_a_weights_only_checkpoint(tmp_path):
    saved = RngStates().state_dict()
    expected = draws()
    torch.save({"rng": saved}, tmp_path / "c.ckpt")
    draws()  # the process moves on (or dies); a new one seeds itself afresh
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    restored = RngStates()
    restored.load_state_dict(torch.load(tmp_path / "c.ckpt", weights_only=True)["rng"])
    restored.on_train_start(None, None)
    assert draws() == expected


class Shuffled(torch.utils.data.Sampler):
    """Batches of 2 in an order drawn from the epoch, like LengthBucketBatches."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 5

    def __iter__(self):
        order = torch.randperm(10, generator=torch.Generator().manual_seed(self.epoch))
        return iter(order.split(2))


def test_loader_resumes_its_epoch_where_it_stopped():
    data = torch.arange(100, 110)
    loader = ResumableLoader(data, Shuffled(), batch_size=None)
    loader.sampler.set_epoch(3)
    it = iter(loader)
    seen = [next(it).tolist() for _ in range(2)]
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches": 2}
    rest = [b.tolist() for b in it]

    again = ResumableLoader(data, Shuffled(), batch_size=None)
    again.load_state_dict(state)
    again.sampler.set_epoch(3)
    assert [b.tolist() for b in again] == rest and len(seen + rest) == 5
    assert again.state_dict() == {"epoch": 3, "batches": 5}
    again.load_state_dict(state)
    again.sampler.set_epoch(4)  # a saved place in another epoch skips nothing
    assert len(list(again)) == 5


# -- end to end: SIGKILL a training subprocess, resume it, compare ---------------------------
def train_cmd(*args):
    return [sys.executable, "src/train.py", *args]


def child_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_MODE="offline")  # W&B settings stay in tmp_path
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_metrics_and_wandb_run(tmp_path):
    env = child_env(tmp_path)
    # a checkpoint every 3 of the 37 steps per epoch: wherever the kill lands, the last one
    # is most likely mid-epoch (checked below)
    config = [*TINY, "trainer.max_epochs=2", "logger=wandb", f"cache_dir={tmp_path / 'cache'}",
              "callbacks.mid_epoch_checkpoint.train_time_interval=null",
              "callbacks.mid_epoch_checkpoint.every_n_train_steps=3"]
    whole, cut = tmp_path / "whole", tmp_path / "0_features=full"
    log = (tmp_path / "reference.log").open("w")
    reference = subprocess.Popen(train_cmd(*config, f"hydra.run.dir={whole}"), cwd=ROOT,
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
    victim = subprocess.Popen(train_cmd(*config, f"hydra.run.dir='{cut}'"), cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (cut / LAST).exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run ended before its first checkpoint"
    assert not (cut / "metrics.json").exists()
    place = torch.load(cut / LAST, weights_only=True)["loops"]["fit_loop"]["state_dict"]
    place = place["combined_loader"][0]  # the training loader's (epoch, batches delivered)
    first_half = checkpoint_run_id(cut / LAST)

    resumed = subprocess.run(train_cmd(f"resume={cut}"), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    steps_per_epoch = torch.load(whole / LAST, weights_only=True)["global_step"] // 2
    assert 0 < place["batches"] < steps_per_epoch  # killed mid-epoch

    def results(run):
        metrics = json.loads((run / "metrics.json").read_text())
        return {k: v for k, v in metrics.items() if not k.startswith("time/") and k != RUN_ID}

    expected, got = results(whole), results(cut)
    assert json.loads((cut / "metrics.json").read_text())[RUN_ID] == first_half  # one run
    assert got.keys() == expected.keys() and expected["epochs"] == 2
    assert got == {k: pytest.approx(v, abs=1e-6) for k, v in expected.items()}
    # one W&B id for both halves, kept in the folder; the folder's first config is untouched
    run_id = json.loads((cut / WANDB_RUN).read_text())["id"]
    halves = sorted((cut / "wandb").glob("offline-run-*"))
    assert len(halves) == 2 and all(h.name.endswith(f"-{run_id}") for h in halves)
    assert list(OmegaConf.load(cut / ".hydra" / "overrides.yaml")) == config


@pytest.mark.slow
def test_resume_of_a_missing_folder_is_one_error_line(tmp_path):
    done = subprocess.run(train_cmd(f"resume={tmp_path / 'nope'}"), cwd=ROOT,
                          env=child_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: resume={tmp_path / 'nope'}: no such "
                                                "folder."]
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "nope").exists()
