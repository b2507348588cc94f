"""RIB's output heads: the repeat-explore mixture (head=repeat_explore) and tied weights."""

import itertools

import pytest
import pytorch_lightning as L
import torch
import torch.nn.functional as F

from microrec.data import MicroDataModule
from microrec.models.rib import RIB, repeat_candidates
from microrec.schema import FEATURES, NUM_SPECIAL, PAD
from microrec.synthetic import SyntheticSource

SMALL = dict(item_dim=8, activity_dim=4, dwell_dim=4, hidden_size=12, attention_size=6,
             init="random", head="repeat_explore")
QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    data = MicroDataModule(SyntheticSource(n_sessions=400, n_items=50, n_categories=5),
                           batch_size=32, eval_batch_size=64,
                           cache_dir=str(tmp_path_factory.mktemp("cache")))
    data.setup()
    return data


def rib(dm, **kw):
    return RIB(dm.n_items, dm.n_activities, dm.n_dwell, **{**SMALL, **kw})


def batch_with_a_lone_product(dm):
    """32 training examples, the first rewritten to show one product only (nothing to return
    to), so that both kinds of input are in the batch."""
    batch = dm.dataset("train")[list(range(32))]
    batch["item"][0, : batch["length"][0]] = batch["item"][0, 0]
    batch["target"][0] = next(j for j in range(NUM_SPECIAL, dm.n_items)
                              if j != batch["item"][0, 0])
    return batch


@pytest.mark.parametrize("tied", [False, True])
def test_the_mixture_is_one_distribution_split_by_the_gate(dm, tied):
    batch = batch_with_a_lone_product(dm)
    model = rib(dm, tied=tied).eval()
    with torch.no_grad():
        log_p = model.logits(batch)  # (B, N)
        parts = model.repeat_weights(batch)
    p = log_p.exp()
    assert torch.allclose(p.sum(1), torch.ones(32), atol=1e-5)
    candidates = repeat_candidates(batch)  # (B, T)
    returnable = torch.zeros_like(p, dtype=torch.bool).scatter_(1, batch["item"], candidates)
    # the mass on the products the input can return to is exactly the gate
    assert torch.allclose((p * returnable).sum(1), parts["gate"], atol=1e-5)
    some = candidates.any(1)  # (B,)
    assert not some[0] and some.any() and not some.all()
    assert torch.equal(parts["gate"] > 0, some)  # no product to return to: g = 0
    # each returnable product gets g times the repeat weights of its positions
    expected = torch.zeros_like(p).scatter_add_(1, batch["item"], parts["repeat"])
    assert torch.allclose(p * returnable, parts["gate"][:, None] * expected, atol=1e-5)
    # the last product, padding and unknown can never be predicted
    rows = torch.arange(32)
    last = batch["item"][rows, batch["length"] - 1]
    assert torch.all(log_p[rows, last] == float("-inf"))
    assert torch.all(log_p[:, :NUM_SPECIAL] == float("-inf"))


def test_repeat_weights_cover_exactly_the_returnable_positions(dm):
    batch = batch_with_a_lone_product(dm)
    assert (batch["item"] == PAD).any(), "the batch must mix input lengths"
    with torch.no_grad():
        weights = rib(dm).eval().repeat_weights(batch)["repeat"]  # (B, T)
    candidates = repeat_candidates(batch)
    assert torch.all(weights[~candidates] == 0) and torch.all(weights[candidates] > 0)
    some = candidates.any(1)
    assert not some[0] and some[1:].any()  # the lone-product row has none
    assert torch.allclose(weights[some].sum(1), torch.ones(int(some.sum())))
    assert torch.all(weights[~some] == 0)


@pytest.mark.parametrize("tied", [False, True])
def test_the_training_loss_is_minus_log_p_of_the_target(dm, tied):
    batch = batch_with_a_lone_product(dm)
    model = rib(dm, tied=tied).eval()
    with torch.no_grad():
        log_p = model.logits(batch)
        assert torch.isfinite(log_p.gather(1, batch["target"][:, None])).all()
        assert torch.allclose(model.training_loss(batch), F.nll_loss(log_p, batch["target"]),
                              atol=1e-5)
        assert torch.equal(model(batch), log_p)  # evaluation ranks by log p


@pytest.mark.parametrize("tied", [False, True])
def test_sampled_loss_with_every_product_as_negative_is_the_full_loss(dm, tied):
    """Uniform q and each real product drawn once: no logQ shift, and removing the input's
    products from the negatives must give exactly the explore softmax."""
    batch = batch_with_a_lone_product(dm)
    model = rib(dm, tied=tied, loss="sampled").eval()
    n = dm.n_items
    model.log_q = torch.full((n,), -torch.log(torch.tensor(float(n - NUM_SPECIAL))))
    with torch.no_grad():
        sampled = model.sampled_loss(batch, torch.arange(NUM_SPECIAL, n))
        full = model.training_loss(batch)
    assert torch.allclose(sampled, full, atol=1e-5)


def test_scores_do_not_depend_on_padding(dm):
    ds = dm.dataset("val")
    lengths = ds.lengths()
    short, long = int(lengths.argmin()), int(lengths.argmax())
    model = rib(dm).eval()
    with torch.no_grad():
        alone = model(ds[[short]])
        padded = model(ds[[long, short]])[1:]
    finite = torch.isfinite(alone)
    assert torch.equal(finite, torch.isfinite(padded))
    assert torch.allclose(alone[finite], padded[finite], atol=1e-5)


@pytest.mark.parametrize("encoder, attention, features",
                         list(itertools.product(("gru", "lstm"), (True, False), FEATURES)))
def test_every_ablation_trains_the_head(dm, encoder, attention, features):
    model = rib(dm, encoder=encoder, attention=attention, features=features)
    model.training_loss(dm.dataset("train")[list(range(16))]).backward()
    for part in (model.embed.item, model.repeat.position, model.repeat.distance,
                 model.repeat.gate, model.out_weight):
        assert part.weight.grad.abs().sum() > 0
    for channel in ("activity", "dwell"):
        table = getattr(model.embed, channel)
        assert (table is not None) == (channel in FEATURES[features])


def test_tied_weights_score_against_the_input_product_table(dm):
    untied, tied = rib(dm, head="softmax"), rib(dm, head="softmax", tied=True)
    assert tied.output_tables()[0] is tied.embed.item and not hasattr(tied, "out_weight")
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    saved = n_params(untied) - n_params(tied)
    assert saved == dm.n_items * 12 - 12 * 8  # the output table, less the projection
    batch = dm.dataset("train")[list(range(16))]
    tied.training_loss(batch).backward()
    # the output layer reaches product rows the batch's inputs never touch
    unseen = torch.ones(dm.n_items, dtype=torch.bool)
    unseen[batch["item"].unique()] = False
    assert tied.embed.item.weight.grad[unseen].abs().sum() > 0


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_a_trained_head_reloads_with_identical_scores(dm, tmp_path, loss):
    L.seed_everything(0)
    model = rib(dm, tied=True, loss=loss, n_negatives=8)
    trainer = L.Trainer(max_epochs=1, **QUIET)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = RIB.load_from_checkpoint(path).eval()
    assert reloaded.hparams.head == "repeat_explore" and reloaded.hparams.tied
    batch = dm.dataset("test")[list(range(20))]
    with torch.no_grad():
        assert torch.equal(model.eval()(batch), reloaded(batch))


def test_an_unknown_head_is_refused_in_one_sentence(dm):
    from microrec.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown head 'mixture'"):
        rib(dm, head="mixture")
