"""The neural peers (NARM, SASRec, RepeatNet, GRU4Rec): masking, features, checkpoints, learning."""

import itertools
import json
from functools import partial

import pytest
import pytorch_lightning as L
import torch
import torch.nn.functional as F
from conftest import compose_cfg, synthetic_and_pop_floor

from microrec.data.schema import FEATURES, NUM_SPECIAL, PAD
from microrec.models.narm import NARM
from microrec.models.repeatnet import RepeatNet
from microrec.models.rib import RIB
from microrec.models.sasrec import SASRec
from microrec.reports.results import row_of
from microrec.runs.train import train

MODELS = {"narm": NARM, "sasrec": SASRec, "repeatnet": RepeatNet}
SIDE = dict(activity_dim=4, dwell_dim=4)
SMALL = {"narm": dict(item_dim=8, hidden_size=12, **SIDE),
         "sasrec": dict(item_dim=8, n_heads=2, **SIDE),
         "repeatnet": dict(item_dim=8, hidden_size=12, **SIDE)}
QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


def build(dm, name, **kw):
    return MODELS[name](dm.n_items, dm.n_activities, dm.n_dwell, n_categories=dm.n_categories,
                        **{**SMALL[name], **kw})


@pytest.mark.parametrize("name", MODELS)
def test_scores_do_not_depend_on_padding(dm, name):
    """An example scores the same alone and padded inside a batch of longer inputs."""
    ds = dm.dataset("val")
    lengths = ds.lengths()
    short, long = int(lengths.argmin()), int(lengths.argmax())
    assert lengths[short] < lengths[long]
    model = build(dm, name, features="full").eval()
    with torch.no_grad():
        alone = model(ds[[short]])
        padded = model(ds[[long, short, long]])[1:2]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_padding_gets_zero_attention_narm_and_repeatnet(dm):
    batch = dm.dataset("val")[list(range(32))]
    real = batch["item"] != PAD  # (B, T)
    assert (~real).any(), "the batch must mix input lengths"
    with torch.no_grad():
        narm = build(dm, "narm").eval().attention_weights(batch)  # (B, T)
        repeat = build(dm, "repeatnet").eval().attention_weights(batch)
    assert torch.all(narm[~real] == 0) and torch.all(narm[real] != 0)
    for weights in repeat.values():  # mode, repeat, explore: softmax over real positions
        assert torch.all(weights[~real] == 0) and torch.all(weights[real] > 0)
        assert torch.allclose(weights.sum(1), torch.ones(32))


def test_sasrec_attends_to_no_padding_and_no_future(dm):
    batch = dm.dataset("val")[list(range(32))]
    length = batch["length"]  # (B,)
    T = batch["item"].size(1)
    steps = torch.arange(T)
    model = build(dm, "sasrec", n_blocks=2).eval()
    with torch.no_grad():
        weights = model.attention_weights(batch)
    assert len(weights) == 2
    query_real = steps[None, :, None] < length[:, None, None]  # (B, T, 1)
    visible = (steps[None, None, :] <= steps[None, :, None]) & \
        (steps[None, None, :] < length[:, None, None])  # (B, T, T): past or now, not padding
    for w in weights:  # (B, heads, T, T)
        rows = query_real.expand(-1, -1, T)[:, None].expand_as(w)
        hidden = (~visible)[:, None].expand_as(w)
        assert torch.all(w[rows & hidden] == 0)
        assert torch.all(w[rows & ~hidden] > 0)
        assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]))


def test_sasrec_block_forward_is_its_attention_weights_applied(dm):
    """The fused attention in `forward` uses the mask as `weights` does (True = may attend)."""
    batch = dm.dataset("val")[list(range(16))]
    model = build(dm, "sasrec").eval()
    block = model.blocks[0]
    with torch.no_grad():
        x, allowed = model.inputs(batch)
        _, _, v = block._heads(x)
        att = (block.weights(x, allowed) @ v).transpose(1, 2).reshape(x.shape)  # (B, T, C)
        y = x + att
        expected = y + block.ffn(block.ffn_norm(y))
        assert torch.allclose(block(x, allowed), expected, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_reload_from_checkpoint_gives_identical_scores(dm, tmp_path, name):
    L.seed_everything(0)
    model = build(dm, name, features="sku_dwell")
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, **QUIET)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = MODELS[name].load_from_checkpoint(path)  # no Hydra, no data module needed
    assert reloaded.hparams.features == "sku_dwell"
    batch = dm.dataset("test")[list(range(20))]
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), reloaded(batch))


@pytest.mark.parametrize("name, features", list(itertools.product(MODELS, FEATURES)))
def test_every_feature_variant_runs_forward_and_backward(dm, name, features):
    model = build(dm, name, features=features)
    batch = dm.dataset("train")[list(range(16))]
    loss = model.training_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.embed.item.weight.grad.abs().sum() > 0
    for channel in ("activity", "dwell", "category"):
        table = getattr(model.embed, channel)
        assert (table is not None) == (channel in FEATURES[features])
        if table is not None:
            assert table.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_repeatnet_is_a_mixture_of_the_inputs_products_and_the_rest(dm):
    batch = dm.dataset("train")[list(range(32))]
    model = build(dm, "repeatnet").eval()
    with torch.no_grad():
        log_p = model.logits(batch)  # (B, N)
        log_mode, _, _ = model.parts(batch)
        assert torch.allclose(log_p.exp().sum(1), torch.ones(32), atol=1e-5)
        seen = torch.zeros_like(log_p, dtype=torch.bool).scatter_(1, batch["item"], True)
        seen[:, PAD] = False
        repeat_mass = torch.where(seen, log_p.exp(), torch.zeros(())).sum(1)  # (B,)
        assert torch.allclose(repeat_mass, log_mode[:, 0].exp(), atol=1e-5)
        assert torch.all(log_p[:, :NUM_SPECIAL] == float("-inf"))
        # the training loss reads one column per branch; it is -log p(target) all the same
        assert torch.allclose(model.training_loss(batch),
                              F.nll_loss(log_p, batch["target"]), atol=1e-5)
        assert torch.equal(model(batch), log_p)  # forward ranks by log p


@pytest.mark.parametrize("name", ["narm", "sasrec"])
def test_sampled_loss_updates_only_the_rows_it_reads(dm, name):
    L.seed_everything(0)
    model = build(dm, name, loss="sampled", n_negatives=4)
    model.set_sampling(dm.prepared.splits["train"].target)
    before = model.embed.item.weight.detach().clone()
    batch = dm.dataset("train")[list(range(8))]
    trainer = L.Trainer(max_steps=1, **QUIET)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    changed = (model.embed.item.weight.detach() != before).any(1)
    read = set(batch["item"].unique().tolist()) | set(batch["target"].tolist())
    assert changed[batch["target"]].all()
    assert changed.sum() <= len(read - {PAD}) + 4  # inputs, targets and 4 negatives at most


def test_configs_build_each_peer_and_tag_only_the_groups_it_uses(tmp_path):
    from hydra.utils import instantiate

    sizes = dict(n_items=30, n_activities=12, n_dwell=8)
    for name, cls in MODELS.items():
        cfg = compose_cfg(tmp_path, [f"model={name}", "features=sku_act"], tiny=False)
        model = instantiate(cfg.model, **sizes)  # yaml keys are exactly __init__'s arguments
        assert type(model) is cls and model.hparams.features == "sku_act"
        assert "encoder" not in cfg and "attention" not in cfg  # no W&B tag for RIB's groups
    assert compose_cfg(tmp_path, ["model=narm"], tiny=False).features.name == "sku"
    gru4rec = compose_cfg(tmp_path, ["model=gru4rec"], tiny=False)
    model = instantiate(gru4rec.model, **sizes)
    assert type(model) is RIB and model.attention is None
    assert (model.hparams.features, model.hparams.init, model.hparams.encoder) == \
        ("sku", "random", "gru")
    rows = {name: row_of(compose_cfg(tmp_path, [f"model={name}", "features=full"], tiny=False))
            for name in (*MODELS, "gru4rec")}
    assert rows == {"narm": ("full", "NARM"), "sasrec": ("full", "SASRec"),
                    "repeatnet": ("full", "RepeatNet"), "gru4rec": ("full", "GRU4Rec")}


def test_a_peer_trains_end_to_end_through_train(tmp_path):
    cfg = compose_cfg(tmp_path, [
        "model=sasrec", "features=full", "data.source.n_sessions=600", "data.source.n_items=60",
        "data.max_len=20", "trainer.max_epochs=1", "callbacks.progress=null",
        "model.item_dim=8", "model.activity_dim=4", "model.dwell_dim=4"], tiny=False)
    metrics = train(cfg)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    model = SASRec.load_from_checkpoint(tmp_path / "checkpoints" / "best.ckpt")
    assert model.hparams.max_len == 20 and model.position.num_embeddings == 20


@pytest.mark.slow
def test_each_peer_beats_pop_by_a_wide_margin_on_synthetic_data(tmp_path):
    """Planted sequential signal: every neural peer's validation MRR@20 is over twice POP's."""
    dm, floor = synthetic_and_pop_floor(tmp_path, n_sessions=1500, split="val")
    sizes = (dm.n_items, dm.n_activities, dm.n_dwell)
    peers = {**{name: partial(cls, features="full") for name, cls in MODELS.items()},
             "gru4rec": partial(RIB, features="sku", attention=False, init="random")}
    for name, make in peers.items():
        L.seed_everything(0)
        model = make(*sizes)
        trainer = L.Trainer(max_epochs=6, num_sanity_val_steps=0, **QUIET)
        trainer.fit(model, datamodule=dm)
        mrr = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/mrr@20"]
        assert mrr > 2 * floor, (name, mrr, floor)
