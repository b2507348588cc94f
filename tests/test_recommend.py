"""Batch recommendations: new sessions in the data set's own format give the same top lists
as the model ranks for the same inputs in evaluation."""

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import ROOT, TINY, compose_cfg
from omegaconf import OmegaConf

from microrec.data import loaders
from microrec.data import schema as S
from microrec.data.loaders import EventLog, JDSessions, write_jd_sessions
from microrec.data.protocol import split_events
from microrec.data.synthetic import SyntheticSource
from microrec.errors import ConfigError, DataError, WriteError
from microrec.models.base import top_items
from microrec.runs import predictions
from microrec.runs.folders import CONFIG
from microrec.runs.recommend import RANK, SCORE, load_run, recommend, session_keys
from microrec.runs.train import train

TOP = 20
RIB_TINY = [o for o in TINY if not o.startswith("data.source.")]  # the JD loader has no such keys


def train_run(root, overrides):
    """A tiny trained run folder with the config Hydra would save beside it."""
    cfg = compose_cfg(root, ["data.eval_targets=last", "data.eval_batch_size=16", *overrides],
                      tiny=False)
    train(cfg)
    (root / ".hydra").mkdir()
    OmegaConf.save(cfg, root / ".hydra" / "config.yaml")
    return cfg


def held_out_sessions(cfg, events: pl.DataFrame) -> pl.DataFrame:
    """The run's test-split sessions, as validated events with `macro` and `split`."""
    d = cfg.data
    events, _, _ = split_events(S.validate_events(events, "t"), tuple(d.split), d.min_macros,
                                d.seed, "t")
    return events.filter(pl.col("split") == 2)


def cut_before_last_product(events: pl.DataFrame) -> pl.DataFrame:
    """Each session without its last macro interaction: the input of its last-target example."""
    last = pl.col(S.MACRO) == pl.col(S.MACRO).max().over(S.SESSION)
    return events.filter(~last).select(S.COLUMNS)


def reference(cfg, top: int = TOP) -> tuple[list[list], np.ndarray]:
    """Each test example's top products (source ids) and scores, as evaluation ranks them
    (the ties in id order, as predictions.parquet lists them)."""
    model, dm = load_run(cfg.run_dir)
    data = dm.dataset("test")
    ids, scores = [], []
    with torch.no_grad():
        for idx in torch.arange(len(data)).split(dm.eval_batch_size):
            ranked = model.ranked(data[idx])  # (B, n_items)
            best = top_items(ranked, top)  # (B, top), equal scores in id order
            ids.append(best)
            scores.append(ranked.gather(1, best))
    items = np.array(dm.prepared.items, dtype=object)
    ids = torch.cat(ids).numpy()
    return [list(row) for row in items[ids - S.NUM_SPECIAL]], torch.cat(scores).numpy()


def lists(recs: pl.DataFrame, key: str = S.SESSION) -> tuple[list[list], np.ndarray]:
    """Per session (in file order) its products by rank, and the (S, top) scores."""
    recs = recs.sort(key, RANK, maintain_order=True)
    assert recs.group_by(key).agg(pl.col(RANK))[RANK].to_list() \
        == [list(range(1, TOP + 1))] * recs[key].n_unique()  # ranks 1..top, none missing
    grouped = recs.group_by(key, maintain_order=True).agg(S.ITEM, SCORE)
    return grouped[S.ITEM].to_list(), np.stack(grouped[SCORE].to_numpy())


@pytest.fixture(scope="module")
def jd(tmp_path_factory):
    """A RIB run on a JD-format file, and its test sessions cut before their last product,
    written in the JD format."""
    root = tmp_path_factory.mktemp("jd")
    path = root / "train.jd"
    write_jd_sessions(SyntheticSource(n_sessions=600, n_items=60, n_categories=6).load(), path)
    cfg = train_run(root / "run", [*RIB_TINY, "data=jd_appliances", f"data.source.path={path}",
                                   f"cache_dir={root / 'cache'}", "model.init=random",
                                   "data.max_len=8", "+trainer.limit_train_batches=4"])
    cut = cut_before_last_product(held_out_sessions(cfg, JDSessions(str(path)).load()))
    assert cut.group_by(S.SESSION).len()["len"].max() > 8  # some inputs are cut to max_len
    write_jd_sessions(cut, root / "input.jd")
    return cfg, root, cut


def test_rib_recommends_what_evaluation_ranks_for_the_test_examples(jd):
    cfg, root, cut = jd
    summary = recommend(cfg.run_dir, str(root / "input.jd"), root / "recs.parquet", top=TOP)
    recs = pl.read_parquet(root / "recs.parquet")
    assert recs.columns == [S.SESSION, RANK, S.ITEM, SCORE]
    expected_ids, expected_scores = reference(cfg)
    ids, scores = lists(recs)
    assert recs[S.SESSION].unique().sort().to_list() == list(range(1, len(ids) + 1))  # lines
    assert summary["sessions"] == len(ids) == len(expected_ids) == cut[S.SESSION].n_unique()
    assert ids == expected_ids
    assert np.allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)
    # the run's predictions.parquet holds these examples (last targets, sessions in order)
    # with the same top-20 lists
    written = predictions.read(Path(cfg.run_dir) / predictions.PREDICTIONS_FILE)
    assert written["top"].to_list() == ids


def test_chunks_and_blocks_smaller_than_the_input_give_the_same_table(jd, monkeypatch):
    cfg, root, _ = jd
    recommend(cfg.run_dir, str(root / "input.jd"), root / "one.parquet", chunk_size=10_000)
    monkeypatch.setattr(loaders, "BLOCK_BYTES", 300)  # the file is read in many blocks
    blocks = list(JDSessions(str(root / "input.jd")).blocks())
    assert len(blocks) > 5 and sum(b.height for b in blocks) == \
        JDSessions(str(root / "input.jd")).load().height
    summary = recommend(cfg.run_dir, str(root / "input.jd"), root / "many.parquet",
                        chunk_size=7, batch_size=5)  # chunks and batches that split the
    # evaluation's batches, inside blocks that split the file
    assert summary["sessions"] == pl.read_parquet(root / "one.parquet")[S.SESSION].n_unique()
    one, many = pl.read_parquet(root / "one.parquet"), pl.read_parquet(root / "many.parquet")
    assert many.height == one.height > 0
    assert many.drop(SCORE).equals(one.drop(SCORE))
    assert np.allclose(many[SCORE].to_numpy(), one[SCORE].to_numpy(), rtol=1e-5, atol=1e-6)


def test_unknown_products_are_counted_and_ignored(jd):
    cfg, root, cut = jd
    first = cut[S.SESSION].min()
    where = (pl.col(S.SESSION) == first) & (pl.col(S.POS) < 2)
    outs = []
    for new in (10_000_001, 10_000_002):  # products training never saw
        path = root / f"unknown-{new}.jd"
        write_jd_sessions(cut.with_columns(pl.when(where).then(new).otherwise(pl.col(S.ITEM))
                                           .alias(S.ITEM)), path)
        summary = recommend(cfg.run_dir, str(path), root / f"unknown-{new}.parquet")
        assert summary["unknown_product_events"] == 2
        assert summary["unknown_products"] == 1
        outs.append(pl.read_parquet(root / f"unknown-{new}.parquet"))
        assert new not in outs[-1][S.ITEM].to_list()
    assert outs[0].equals(outs[1])  # which unseen product it was makes no difference


def test_bad_input_stops_with_one_sentence(jd, tmp_path):
    cfg, root, _ = jd
    out = tmp_path / "recs.parquet"
    with pytest.raises(ConfigError, match=r"does not exist\.$"):
        recommend(str(tmp_path / "nowhere"), str(root / "input.jd"), out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"holds no checkpoints/best\.ckpt"):
        recommend(str(tmp_path / "empty"), str(root / "input.jd"), out)
    bad = tmp_path / "bad.jd"
    bad.write_text("1+5+c+3+20 1+55+c+3+20\n")
    with pytest.raises(DataError, match=r"bad\.jd, line 1: unknown behavior type '55'"):
        recommend(cfg.run_dir, str(bad), out)
    bad.write_text("\n\n")
    with pytest.raises(DataError, match=r"the file holds no sessions\.$"):
        recommend(cfg.run_dir, str(bad), out)
    synthetic = tmp_path / "synthetic"  # a run on generated data: no file format to read
    (synthetic / "checkpoints").mkdir(parents=True)
    (synthetic / "checkpoints" / "best.ckpt").write_bytes(b"")
    (synthetic / ".hydra").mkdir()
    OmegaConf.save(compose_cfg(tmp_path, ["model.init=random"]), synthetic / CONFIG)
    with pytest.raises(ConfigError, match=r"source SyntheticSource is not read from a file"):
        recommend(str(synthetic), str(root / "input.jd"), out)
    broken = tmp_path / "broken"  # the JD run's config beside a damaged checkpoint
    (broken / "checkpoints").mkdir(parents=True)
    (broken / "checkpoints" / "best.ckpt").write_bytes(b"PK\x03\x04 not a checkpoint")
    (broken / ".hydra").mkdir()
    OmegaConf.save(cfg, broken / CONFIG)
    with pytest.raises(DataError, match=r"best\.ckpt: not a readable RIB checkpoint \("):
        recommend(str(broken), str(root / "input.jd"), out)
    assert not out.exists()

    result = subprocess.run(
        [sys.executable, str(ROOT / "src" / "recommend.py"), cfg.run_dir, "--input",
         str(tmp_path / "missing.jd"), "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'missing.jd'}: no such file (point --input at a "
                      "JD session file)."]
    assert not out.exists()


def test_an_out_that_cannot_be_written_is_one_sentence(jd, tmp_path, monkeypatch):
    cfg, root, _ = jd
    blocker = tmp_path / "notes.txt"
    blocker.write_text("")
    out = blocker / "recs" / "recs.parquet"
    with pytest.raises(WriteError, match=rf"^{re.escape(str(out))}: cannot be written: "
                                         rf"{re.escape(str(blocker))} is a file, not a folder\.$"):
        recommend(cfg.run_dir, str(root / "input.jd"), out)
    with pytest.raises(WriteError, match=rf"^{re.escape(str(tmp_path))}: cannot be written "
                                         r"\(Is a directory\)\.$"):
        recommend(cfg.run_dir, str(root / "input.jd"), tmp_path)

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real_open = os.open

    def refuse(path, *args, **kwargs):  # what a read-only folder does (chmod binds no root)
        if Path(path).parent == read_only:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    out = read_only / "recs.parquet"
    with pytest.raises(WriteError, match=rf"^{re.escape(str(out))}: cannot be written "
                                         r"\(Permission denied\)\.$"):
        recommend(cfg.run_dir, str(root / "input.jd"), out)
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("model", ["pop", "item_knn"])
def test_a_baseline_on_an_event_log_names_sessions_as_the_file_does(tmp_path, model):
    """A fitted baseline on a Parquet event log with string session ids: the same lists as
    evaluation, the keys as written."""
    events = SyntheticSource(n_sessions=300, n_items=40, n_categories=4).load()
    log_file = tmp_path / "log.parquet"
    # ids whose text order is their number order, so the loader numbers sessions as we do
    named = pl.format("s{}", pl.col(S.SESSION).cast(pl.String).str.zfill(4))
    events.select(named.alias("sid"), pl.col(S.ITEM).alias("sku"), S.ACTIVITY, S.TS) \
        .write_parquet(log_file)
    cfg = train_run(tmp_path / "run", [f"model={model}", "data=events",
                                       f"data.source.path={log_file}",
                                       "data.source.columns.session=sid",
                                       "data.source.columns.item=sku",
                                       f"cache_dir={tmp_path / 'cache'}"])
    source_sessions = held_out_sessions(cfg, events)
    cut = cut_before_last_product(source_sessions)
    input_file = tmp_path / "input.parquet"
    cut.select(named.alias("sid"), pl.col(S.ITEM).alias("sku"), S.ACTIVITY, S.TS) \
        .write_parquet(input_file)
    recommend(cfg.run_dir, str(input_file), tmp_path / "recs.parquet")
    recs = pl.read_parquet(tmp_path / "recs.parquet")
    assert recs.columns == [S.SESSION, RANK, S.ITEM, SCORE]
    # the loader numbers sessions in order of their ids (as text), as the test split has them
    order = cut.select(named.alias("sid"))["sid"].unique().sort().to_list()
    assert recs[S.SESSION].unique(maintain_order=True).to_list() == order
    expected_ids, expected_scores = reference(cfg)
    ids, scores = lists(recs)
    assert ids == expected_ids
    assert np.array_equal(scores, expected_scores)
    written = predictions.read(Path(cfg.run_dir) / predictions.PREDICTIONS_FILE)
    assert written["top"].to_list() == ids  # equal scores abound here: the same tie order


def test_input_errors_advise_on_this_commands_arguments(tmp_path):
    """The loaders' advice names training's settings (data.path, data.source.*), which
    recommend.py does not take: it is worded for --input instead."""
    log_file = tmp_path / "log.csv"
    SyntheticSource(n_sessions=200, n_items=30, n_categories=3).load() \
        .select(S.SESSION, S.ITEM, S.ACTIVITY, S.TS).write_csv(log_file)
    cfg = train_run(tmp_path / "run", ["model=pop", "data=events", f"data.source.path={log_file}",
                                       f"cache_dir={tmp_path / 'cache'}"])
    out = tmp_path / "recs.parquet"
    (tmp_path / "log.txt").write_text(log_file.read_text())
    (tmp_path / "late.csv").write_text("session,item,activity,ts\n1,2,Cart,3\n1,4,Cart,soon\n")
    for name, message in (
            ("nowhere", r"nowhere: no such file or folder \(point --input at the event log\)\.$"),
            ("log.txt", r"log\.txt: unknown file type '\.txt'; give the --input file a \.csv, "
                        r"\.parquet or \.jsonl name\.$"),
            ("late.csv", r"late\.csv, line 3: timestamp 'soon' is not a number \(write "
                         r"--input's timestamps as the run's training data does\)\.$")):
        with pytest.raises(DataError, match=message) as e:
            recommend(cfg.run_dir, str(tmp_path / name), out)
        assert "data." not in str(e.value)
    assert not out.exists()


def test_session_keys_are_the_logs_own(tmp_path):
    """Sessions keyed by user and session, or cut from a user's events: named as the log does."""
    path = tmp_path / "log.csv"
    path.write_text("visitor,visit,sku,t\nu2,b,10,5\nu1,z,11,9\nu1,a,12,1\nu2,b,13,7\n"
                    "u1,a,14,2\n")
    both = EventLog(str(path), {"user": "visitor", "session": "visit", "item": "sku", "ts": "t"})
    events = both.load(keys=True)
    sessions = events[S.SESSION].unique().sort().to_numpy()
    assert session_keys(events, sessions).rows() == [("u1", "a"), ("u1", "z"), ("u2", "b")]
    assert both.load().columns == list(S.COLUMNS)  # without keys, the canonical table only
    cut = EventLog(str(path), {"user": "visitor", "item": "sku", "ts": "t"}, session_gap_s=3)
    events = cut.load(keys=True)
    keys = session_keys(events, events[S.SESSION].unique().sort().to_numpy())
    assert keys.columns == ["user", S.SESSION]
    assert keys.rows() == [("u1", 0), ("u1", 1), ("u2", 2)]  # u1: t 1, 2 | 9; u2: t 5, 7
