"""predictions.parquet: per-example results that reproduce metrics.json, from a real run."""

import json
import re

import numpy as np
import polars as pl
import pytest
import torch

from microrec.data.schema import NUM_SPECIAL
from microrec.errors import ConfigError
from microrec.metrics import K
from microrec.models.base import top_items
from microrec.models.ranking import target_rank
from microrec.runs import predictions
from microrec.runs.train import train


def test_top_items_is_a_sort_by_score_then_id_with_ties_at_the_cut():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (30, 40), generator=g).float()  # many ties, also at the cut
    scores[:, :NUM_SPECIAL] = float("-inf")
    top = top_items(scores, 7)
    for row, got in zip(scores.tolist(), top.tolist(), strict=True):
        expected = sorted(range(len(row)), key=lambda i: (-row[i], i))[:7]
        assert got == expected
    assert top_items(scores[:, :5], 20).shape == (30, 5)  # a catalogue smaller than k


def test_an_unknown_predictions_split_is_one_sentence(cfg_factory):
    with pytest.raises(ConfigError, match=r"predictions=\['train'\]: name splits among"):
        train(cfg_factory("predictions=[train]"))


def test_a_run_writes_predictions_that_reproduce_its_metrics(cfg_factory, tmp_path,
                                                             monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    cfg = cfg_factory("predictions=[val,test]", "logger=wandb", "data.max_len=4")
    metrics = train(cfg)
    path = tmp_path / predictions.PREDICTIONS_FILE
    assert not list(tmp_path.glob(".*.tmp"))

    import hydra

    from microrec.models.rib import RIB

    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    model = RIB.load_from_checkpoint(tmp_path / "checkpoints" / "best.ckpt").eval()
    items = dm.prepared.items
    for stage in ("val", "test"):
        table = predictions.read(path, stage)
        split = dm.prepared.splits[stage]
        # the file's own numbers give metrics.json's, every k
        for name, value in predictions.metrics(table).items():
            assert value == pytest.approx(metrics[f"{stage}/{name}"], abs=1e-6), name
        assert table["example"].to_list() == list(range(split.target.size))
        assert (table["session"].to_numpy() == split.session).all()
        # the same scores, recomputed from the checkpoint in one batch
        batch = dm.dataset(stage)[torch.arange(split.target.size)]
        with torch.no_grad():
            scores = model.ranked(batch)  # (N, n_items)
        rank = target_rank(scores, batch["target"]).numpy()
        known = split.target >= NUM_SPECIAL
        assert table["rank"].is_null().to_list() == (~known).tolist()
        assert (table["rank"].to_numpy()[known] == rank[known]).all()
        order = np.argsort(-scores.numpy(), axis=1, kind="stable")[:, :K]
        assert table["top"].to_list() == [[items[i - NUM_SPECIAL] for i in row]
                                          for row in order]
        assert table["target"].to_list() == [items[t - NUM_SPECIAL] if t >= NUM_SPECIAL
                                             else None for t in split.target]
        # repeat and length from the split's own arrays: the last max_len tokens
        last4 = [split.tokens[max(f, e - 4):e, 0] for f, e in zip(split.first, split.end,
                                                                    strict=True)]
        assert table["length"].to_list() == [len(x) for x in last4]
        repeat = [bool(k and t in x) for k, t, x in zip(known, split.target, last4,
                                                         strict=True)]
        assert table["repeat"].to_list() == repeat
        assert 0 < sum(repeat) < len(repeat)
        # positions: the target is the macro after the input's last one
        tokens = split.tokens[:, 0]
        for i in range(10):
            session = tokens[split.first[i]:split.end[i]]
            macros = 1 + int((session[1:] != session[:-1]).sum())
            assert table["position"][i] == macros

    # the repeat / new breakdown is in the run's W&B summary: each key, then its value as
    # JSON text, in a summary record of the offline run file
    blob = next(tmp_path.glob("wandb/offline-run-*/run-*.wandb")).read_bytes()
    expected = predictions.summary(predictions.read(path, "test"))
    for name in ("repeat/share", "repeat/recall@20", "new/mrr@20"):
        key, value = f"test/{name}".encode(), json.dumps(expected[name]).encode()
        assert re.search(re.escape(key) + b".{1,4}" + re.escape(value), blob, re.S), name
    assert expected["repeat/share"] + expected["new/share"] == pytest.approx(1.0)


def test_breakdown_splits_examples_by_repeat():
    rank = pl.Series([1, 4, None, 30, 2], dtype=pl.Int64)
    hit, rr = predictions.hits_and_rr(rank)
    assert hit.tolist() == [1, 1, 0, 0, 1] and rr.tolist() == [1, 0.25, 0, 0, 0.5]
    out = predictions.breakdown(hit, rr, np.array([True, True, False, False, False]))
    assert out == {"repeat/share": 0.4, "repeat/recall@20": 1.0, "repeat/mrr@20": 0.625,
                   "new/share": 0.6, "new/recall@20": pytest.approx(1 / 3),
                   "new/mrr@20": pytest.approx(0.5 / 3)}
