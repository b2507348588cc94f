"""src/train.py on composed real configs: outputs, loggers, the planted signal, bad input."""

import json

import hydra
import numpy as np
import polars as pl
import pytest
import torch
from conftest import ROOT, TINY, compose_cfg

from microrec.config import check_args
from microrec.data.module import MicroDataModule
from microrec.data.sources import FrameSource
from microrec.errors import ConfigError, Diverged
from microrec.models.ranking import target_rank
from microrec.models.rib import RIB
from microrec.runs.train import train


def test_a_run_leaves_metrics_and_checkpoint(cfg_factory, tmp_path):
    metrics = train(cfg_factory("logger=csv"))
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == metrics
    for stage in ("val", "test"):
        for k in (5, 10, 20):
            assert 0 <= written[f"{stage}/recall@{k}"] <= 1
            assert 0 <= written[f"{stage}/mrr@{k}"] <= written[f"{stage}/recall@{k}"]
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert list((tmp_path / "csv").glob("version_*/metrics.csv"))
    assert not list(tmp_path.glob("**/*.tmp"))  # atomic writes leave no debris


@pytest.mark.parametrize("model", ["rib", "bpr_mf"])
def test_a_diverged_model_stops_the_run_instead_of_scoring(cfg_factory, tmp_path, model):
    cfg = (cfg_factory("model.lr=1e30") if model == "rib" else
           cfg_factory("model=bpr_mf", "model.lr=1e30", "model.dim=8",
                       *(o for o in TINY if o.startswith(("data.", "trainer."))), tiny=False))
    with pytest.raises(Diverged, match=r"^the training loss is (nan|inf) at epoch 0, step \d+: "
                                       r"the model diverged; lower model.lr \(now 1e\+30\)"):
        train(cfg)
    assert not (tmp_path / "metrics.json").exists()


def test_processed_tensors_are_cached_by_content(cfg_factory, tmp_path):
    cfg = cfg_factory()
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    files = sorted((tmp_path / "cache").glob("synthetic-*.npz"))
    assert len(files) == 1
    again = hydra.utils.instantiate(cfg.data)
    again.setup()
    assert sorted((tmp_path / "cache").glob("synthetic-*.npz")) == files
    np.testing.assert_array_equal(dm.prepared.splits["train"].tokens,
                                  again.prepared.splits["train"].tokens)
    assert hydra.utils.instantiate(cfg.data, buckets="hup").cache_key() != dm.cache_key()
    assert hydra.utils.instantiate(cfg.data, source={"seed": 1}).cache_key() != dm.cache_key()


def test_categories_reach_the_neural_model_and_a_baseline_refuses_them(cfg_factory):
    with pytest.raises(ConfigError, match="features=sku_cat adds product categories, but Pop "
                                          "reads no micro-behavior channels; .*features=sku"):
        train(cfg_factory("model=pop", "features=sku_cat",
                          *(o for o in TINY if o.startswith("data.")), tiny=False))
    cfg = cfg_factory("features=full_cat", "model.init=word2vec")
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    model = hydra.utils.instantiate(cfg.model, **dm.sizes())
    model.load_word2vec(dm)  # every table in use, the category's too
    assert model.embed.category.num_embeddings == dm.n_categories > 2
    vectors = dm.word2vec("category", model.embed.category.embedding_dim,
                          cfg.model.w2v_window, cfg.model.w2v_epochs)
    np.testing.assert_array_equal(model.embed.category.weight.detach().numpy(), vectors)


def test_features_the_data_cannot_supply_are_refused(tmp_path):
    events = pl.DataFrame({"session": [1, 1, 2, 2], "pos": [0, 1, 0, 1],
                           "item": ["a", "b", "a", "c"]})
    for features, missing in (("sku_act", "activities"), ("sku_dwell", "dwell"),
                              ("sku_cat", "product categories")):
        dm = MicroDataModule(FrameSource(events, "clicks"), features=features,
                             split=(1.0, 0.0, 0.0), cache_dir=str(tmp_path))
        with pytest.raises(ConfigError, match=f"features={features} needs {missing}.*'clicks'"):
            dm.setup()
    MicroDataModule(FrameSource(events), features="sku", split=(1.0, 0.0, 0.0),
                    cache_dir=str(tmp_path)).setup()



@pytest.mark.parametrize("override, message", [
    ("+model.bogus=1", "model.bogus: microrec.models.rib.RIB takes no argument bogus; it takes "
                       "n_items, "),
    ("model.tied=maybe", "model.tied=maybe: expected true or false."),
    ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5: expected an int."),
    ("data.source.p_follow=high", "data.source.p_follow=high: expected a number."),
])
def test_a_setting_its_class_cannot_take_stops_the_run_before_the_data_loads(
        cfg_factory, tmp_path, override, message):
    with pytest.raises(ConfigError) as refused:
        train(cfg_factory(override))
    assert str(refused.value).startswith(message)
    assert not (tmp_path / "cache").exists()  # no data was read or processed


def test_every_row_of_the_results_passes_the_settings_check(tmp_path):
    for row in sorted(p.stem for p in (ROOT / "conf" / "row").glob("*.yaml")):
        check_args(compose_cfg(tmp_path, [f"+row={row}", "data=jd_appliances"], tiny=False))


SIGNAL = [
    "data.source.n_sessions=6000", "data.source.n_items=300", "data.source.n_categories=15",
    "data.eval_targets=all", "trainer.max_epochs=4", "model.lr=0.005",
    "callbacks.progress=null",
]


def val_reciprocal_ranks(cfg_factory, tmp_path, features):
    """Train RIB on planted-signal data; per-example reciprocal rank@20 on validation."""
    run_dir = tmp_path / features
    cfg = cfg_factory(f"features={features}", f"run_dir={run_dir}", *SIGNAL, tiny=False)
    metrics = train(cfg)
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    model = RIB.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt").eval()
    with torch.no_grad():
        rank = torch.cat([target_rank(model.ranked(b), b["target"]) for b in dm.val_dataloader()])
    rr = torch.where(rank <= 20, 1.0 / rank.double(), torch.zeros(rank.shape, dtype=torch.double))
    assert abs(rr.mean().item() - metrics["val/mrr@20"]) < 1e-5  # same numbers as the run's
    return rr.numpy()


def test_micro_behaviors_beat_products_alone_on_planted_signal(cfg_factory, tmp_path):
    """RIB full beats RIB sku on validation MRR@20 by more than evaluation noise explains.

    Paired over the same validation examples: the mean gain must exceed four standard errors.
    """
    sku = val_reciprocal_ranks(cfg_factory, tmp_path, "sku")
    full = val_reciprocal_ranks(cfg_factory, tmp_path, "full")
    gain = full - sku
    stderr = gain.std(ddof=1) / np.sqrt(gain.size)
    assert gain.size > 2000
    assert gain.mean() > 4 * stderr, (gain.mean(), stderr)


def test_sampled_softmax_trains_end_to_end(cfg_factory, tmp_path):
    metrics = train(cfg_factory("model.loss=sampled", "model.n_negatives=16"))
    assert 0 < metrics["val/recall@20"] <= 1
    assert RIB.load_from_checkpoint(tmp_path / "checkpoints" / "best.ckpt").hparams.loss == \
        "sampled"
