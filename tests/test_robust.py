"""Small data, corrupt or unsafe caches, the cache under several processes, and refused writes."""

import errno
import json
import logging
import os
import pickle
import re
import resource
import stat
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch
from conftest import ROOT

import microrec.data.module
from microrec.config import build
from microrec.data.cache import load_arrays
from microrec.data.module import MicroDataModule
from microrec.data.protocol import SPLITS, SplitArrays
from microrec.data.synthetic import SyntheticSource
from microrec.errors import ConfigError, DataError, WriteError
from microrec.files import atomic_write
from microrec.runs import predictions
from microrec.runs.callbacks import CheckpointFiles
from microrec.runs.train import train

SOURCE = dict(n_sessions=300, n_items=40, n_categories=4)


def module(cache_dir, **kwargs) -> MicroDataModule:
    return MicroDataModule(SyntheticSource(**SOURCE), cache_dir=str(cache_dir), **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The data processed once into a cache of its own, to compare rebuilt caches against."""
    dm = module(tmp_path_factory.mktemp("reference"))
    dm.setup()
    return dm.prepared


def assert_same(a, b):
    for name in SPLITS:
        for f in fields(SplitArrays):
            x, y = getattr(a.splits[name], f.name), getattr(b.splits[name], f.name)
            assert x.dtype == y.dtype and np.array_equal(x, y), (name, f.name)
    for attr in ("items", "activities", "bucket_edges", "has_activity", "has_dwell", "stats",
                 "categories"):
        assert getattr(a, attr) == getattr(b, attr), attr


class Plant:
    """Unpickling this creates `path`: proof that a loader ran code from a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def truncate(path, marker):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def flip_a_byte(path, marker):
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside an array's bytes: only the zip CRC can tell
    path.write_bytes(bytes(data))


def zero_a_block(path, marker):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(min(4096, len(data) - middle))  # same size, no CRC
    path.write_bytes(bytes(data))


def fill_with(value):
    """Damage that keeps the file whole: every float array filled with `value`, CRCs valid."""
    def damage(path, marker):
        arrays = load_arrays(path)
        for a in arrays.values():
            if a.dtype.kind == "f":
                a.fill(value)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    damage.__name__ = f"filled_with_{value}"
    return damage


def plain_pickle(path, marker):
    path.write_bytes(pickle.dumps(Plant(marker)))


def torch_pickle(path, marker):  # the format of the cache before it held plain arrays
    torch.save(Plant(marker), path)


def npz_with_object_array(path, marker):
    with open(path, "wb") as f:
        np.savez(f, meta=np.array([Plant(marker)], dtype=object))


def other_settings(path, marker):
    other = module(path.parent / "other", buckets="hup")
    other.setup()
    other.cache_path().replace(path)  # a whole, valid cache file, but for other settings


def id_out_of_range(path, marker):
    with np.load(path, allow_pickle=False) as npz:
        arrays = dict(npz)
    arrays["test.tokens"][-1, 0] = 10**6  # whole and of the right key, but no such product
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("damage", [truncate, flip_a_byte, zero_a_block, plain_pickle,
                                    torch_pickle, npz_with_object_array, other_settings,
                                    id_out_of_range])
def test_a_damaged_or_foreign_cache_is_named_rebuilt_and_never_unpickled(
        damage, reference, tmp_path, caplog):
    dm = module(tmp_path)
    dm.setup()
    path = dm.cache_path()
    marker = tmp_path / "code-ran"
    damage(path, marker)

    again = module(tmp_path)
    with caplog.at_level(logging.INFO, logger="microrec.data.module"):
        again.setup()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"cache file {path} is unreadable" in warnings[0]
    assert "rebuilding it" in warnings[0]
    assert not marker.exists()
    assert_same(again.prepared, reference)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="microrec.data.module"):
        module(tmp_path).setup()  # the rebuilt file is whole again
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("loaded processed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("damage", [truncate, flip_a_byte, zero_a_block, plain_pickle,
                                    fill_with(np.nan), fill_with(np.inf)])
def test_a_damaged_word2vec_cache_is_retrained(damage, tmp_path, caplog):
    dm = module(tmp_path)
    vectors = dm.word2vec("item", dim=8, epochs=1)
    (path,) = tmp_path.glob("w2v-*")
    marker = tmp_path / "code-ran"
    damage(path, marker)
    with caplog.at_level(logging.WARNING, logger="microrec.data.module"):
        again = module(tmp_path).word2vec("item", dim=8, epochs=1)
    assert [f"cache file {path} is unreadable" in r.getMessage() for r in caplog.records] == [True]
    assert not marker.exists()
    np.testing.assert_array_equal(again, vectors)  # word2vec is seeded: the same vectors
    np.testing.assert_array_equal(load_arrays(path)["vectors"], vectors)  # rebuilt whole


def test_prepare_data_builds_the_cache_and_setup_only_loads_it(reference, tmp_path,
                                                               monkeypatch):
    first = module(tmp_path)
    first.prepare_data()  # what Lightning runs on rank 0 only
    assert first.cache_path().is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("setup processed the data again")

    monkeypatch.setattr(microrec.data.module, "prepare", refuse)
    other_rank = module(tmp_path)
    other_rank.setup()
    assert_same(other_rank.prepared, reference)
    first.setup()  # the same process keeps what prepare_data built
    assert first.prepared is not None


def test_processes_starting_together_on_a_cold_cache_process_once(reference, tmp_path,
                                                                  monkeypatch):
    calls = []
    real = microrec.data.module.prepare

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(microrec.data.module, "prepare", counted)
    modules = [module(tmp_path) for _ in range(3)]
    threads = [threading.Thread(target=m.setup) for m in modules]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    for m in modules:
        assert_same(m.prepared, reference)
    assert not list(tmp_path.glob(".*.lock"))  # the lock is gone once the cache is built


def test_a_rank_without_a_training_batch_stops_before_training(tmp_path):
    dm = module(tmp_path, batch_size=100_000)  # the whole training split is one batch
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
    with pytest.raises(DataError, match=r"^synthetic: the train split's \d+ examples give "
                       r"rank 1 of 2 processes no batch: use more data, a smaller "
                       r"data\.batch_size \(now 100000\) or fewer devices\.$"):
        dm.train_dataloader()


@pytest.mark.parametrize("split, stage, message", [
    ((1.0, 0.0, 0.0), "fit", r"leaves the validation and test splits empty, but a training run "
                             r"validates and then tests its chosen checkpoint: give each a "
                             r"positive fraction\.$"),
    ((0.9, 0.1, 0.0), "fit", r"leaves the test split empty, but a training run"),
    ((0.9, 0.1, 0.0), "test", r"leaves the test split empty, but trainer\.test evaluates on it: "
                              r"give it a positive fraction\.$"),
])
def test_a_stage_refuses_a_split_its_zero_fraction_left_empty(tmp_path, split, stage, message,
                                                              caplog):
    dm = module(tmp_path, split=split)
    dm.setup()  # a script without a trainer may use the training split alone
    with pytest.raises(ConfigError, match=r"^data\.split \[[0-9., ]+\] " + message):
        dm.setup(stage)
    with caplog.at_level(logging.WARNING, logger="microrec.data.module"):
        module(tmp_path, split=split).setup("validate" if split[1] else None)
    assert not caplog.records  # a cache with an empty split is whole, not rebuilt


# Three JD sessions: 0.8 / 0.1 / 0.1 of three sessions leaves the test split empty.
THREE_SESSIONS = """\
11+5+7+0+12 11+6+7+3+12 12+5+7+9+30 13+2+7+31+4
21+5+7+0+40 22+5+7+41+8 22+9+7+2+8
31+1+7+0+3 32+5+7+4+70 33+7+7+80+15 31+5+7+16+9
"""


@pytest.mark.slow
def test_three_sessions_end_in_one_error_line_not_a_traceback(tmp_path):
    data = tmp_path / "three_sessions.txt"
    data.write_text(THREE_SESSIONS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "src/train.py", "data=jd_appliances", f"data.source.path={data}",
         "logger=none", f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == ["error: jd_appliances: the test split got no sessions (training 2, "
                      "validation 1, test 0 of the 3 sessions kept, so it has no examples): "
                      "use more data or a larger test fraction in data.split (now [0.8, 0.1, "
                      "0.1])."]
    assert "Traceback" not in output
    assert not (tmp_path / "run" / "metrics.json").exists()


# -- writing outputs ---------------------------------------------------------------------------
@contextmanager
def file_size_limit(size: int):
    """`ulimit -f` for this process: writes past `size` bytes fail with EFBIG (Python ignores
    SIGXFSZ, so the write raises instead of the process being killed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def write_predictions(path):
    predictions.write(path, [pl.DataFrame({"example": np.arange(5000)})], "0123456789ab")


def write_checkpoint(path):
    CheckpointFiles().save_checkpoint({"weights": torch.arange(5000.0)}, path)


def write_metrics(path):  # as training writes metrics.json
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(list(range(5000)))))


def write_cache_file(path):
    microrec.data.cache.save_arrays(path, {"vectors": np.zeros((500, 8), dtype=np.float32)})


@pytest.mark.parametrize("write", [write_predictions, write_checkpoint, write_metrics,
                                   write_cache_file])
def test_a_file_too_large_is_one_sentence_and_leaves_the_old_file(write, tmp_path):
    path = tmp_path / "out" / "file"
    path.parent.mkdir()
    path.write_text("the previous run's")
    with file_size_limit(4096), pytest.raises(WriteError) as e:
        write(path)
    assert str(e.value) == f"{path}: cannot be written (File too large)."
    assert path.read_text() == "the previous run's"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    pl.exceptions.ComputeError("parquet: underlying IO error: No space left on device "
                               "(os error 28)"),  # Polars' writers name the errno in text
])
def test_a_full_disk_is_one_sentence_naming_the_file(failure, tmp_path):
    def write(tmp):
        Path(tmp).write_text("half")
        raise failure

    with pytest.raises(WriteError, match=rf"^{re.escape(str(tmp_path / 'a.json'))}: cannot be "
                                         r"written \((No space left on device|Disk quota "
                                         r"exceeded)\)\.$"):
        atomic_write(tmp_path / "a.json", write)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", [ValueError("a bug"), OSError(errno.EBADF, "Bad fd")])
def test_other_failures_while_writing_pass_through(failure, tmp_path):
    def write(tmp):
        raise failure

    with pytest.raises(type(failure)) as e:
        atomic_write(tmp_path / "a.json", write)
    assert e.value is failure  # not turned into a user error: a bug keeps its traceback
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_get_the_mode_of_the_umask(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("x"))
        write_checkpoint(tmp_path / "b.ckpt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "b.ckpt").stat().st_mode) == mode


def test_a_cache_folder_that_cannot_be_made_is_one_sentence(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    dm = module(tmp_path / "notes.txt" / "cache")
    with pytest.raises(WriteError, match=rf"^{re.escape(str(tmp_path / 'notes.txt'))}/cache/"
                                         r"\.synthetic-\w+\.npz\.lock: cannot be written: "
                                         rf"{re.escape(str(tmp_path / 'notes.txt'))} is a "
                                         r"file, not a folder\.$"):
        dm.setup()


def test_a_checkpoint_that_cannot_be_written_stops_training_in_one_sentence(cfg_factory,
                                                                           tmp_path):
    cfg = cfg_factory("model.init=random")
    build(cfg.data).setup()  # the data cache is written before the limit applies
    with file_size_limit(4096), pytest.raises(WriteError) as e:
        train(cfg)
    checkpoints = tmp_path / "checkpoints"
    assert str(e.value) == f"{checkpoints / 'best.ckpt'}: cannot be written (File too large)."
    assert list(checkpoints.iterdir()) == []
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_a_cache_that_cannot_be_written_ends_train_py_in_one_error_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    done = subprocess.run(
        [sys.executable, "src/train.py", "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
         f"cache_dir={tmp_path / 'cache'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        # the config files Hydra writes fit, the processed data (megabytes) does not
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 18, 1 << 18)))
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    (error,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert re.fullmatch(f"error: {re.escape(str(tmp_path / 'cache'))}/synthetic-\\w+\\.npz: "
                        r"cannot be written \(File too large\)\.", error), error
    assert "Traceback" not in output
    assert not list((tmp_path / "cache").iterdir())  # no partial file, no lock left behind
