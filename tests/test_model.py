"""The RIB network: masking, every ablation, word2vec init, checkpoints."""

import itertools

import numpy as np
import pytest
import pytorch_lightning as L
import torch

from microrec.data.schema import FEATURES, PAD
from microrec.data.word2vec import train_vectors
from microrec.models.rib import RIB

SMALL = dict(item_dim=8, activity_dim=4, dwell_dim=4, hidden_size=12, attention_size=6,
             init="random")


def rib(dm, **kw):
    return RIB(dm.n_items, dm.n_activities, dm.n_dwell, n_categories=dm.n_categories,
               **{**SMALL, **kw})


def test_padded_positions_get_exactly_zero_attention(dm):
    batch = dm.dataset("val")[list(range(32))]
    assert (batch["item"] == PAD).any(), "the batch must mix input lengths"
    model = rib(dm).eval()
    with torch.no_grad():
        att = model.attention_weights(batch)  # (B, T)
    real = batch["item"] != PAD
    assert torch.all(att[~real] == 0)
    assert torch.all(att[real] > 0)
    assert torch.allclose(att.sum(1), torch.ones(att.size(0)))


@pytest.mark.parametrize("encoder, attention, features",
                         list(itertools.product(("gru", "lstm", "rnn"), (True, False),
                                                FEATURES)))
def test_every_ablation_runs_forward_and_backward(dm, encoder, attention, features):
    model = rib(dm, encoder=encoder, attention=attention, features=features)
    batch = dm.dataset("train")[list(range(16))]
    loss = torch.nn.functional.cross_entropy(model.logits(batch), batch["target"])
    loss.backward()
    assert model.embed.item.weight.grad.abs().sum() > 0
    for table, channel in ((model.embed.activity, "activity"), (model.embed.dwell, "dwell"),
                           (model.embed.category, "category")):
        uses = channel in FEATURES[features]
        assert (table is not None) == uses
        if uses:
            assert table.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("attention", [True, False])
def test_scores_do_not_depend_on_padding(dm, attention):
    """An example scores the same alone and padded inside a batch of longer inputs."""
    ds = dm.dataset("val")
    lengths = ds.lengths()
    short, long = int(lengths.argmin()), int(lengths.argmax())
    assert lengths[short] < lengths[long]
    model = rib(dm, attention=attention).eval()
    with torch.no_grad():
        alone = model(ds[[short]])
        padded = model(ds[[long, short]])[1:]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_word2vec_init_puts_gensims_vectors_into_the_tables(dm):
    from gensim.models import Word2Vec

    from microrec.data.word2vec import _stable_hash

    train = dm.prepared.splits["train"]
    sentences = np.split(train.tokens[:, 0], train.session_end[:-1])
    table = train_vectors(sentences, dm.n_items, dim=8, window=3, epochs=2, seed=5)
    reference = Word2Vec([s.tolist() for s in sentences], vector_size=8, window=3, min_count=1,
                         sg=0, workers=1, epochs=2, seed=5, hashfxn=_stable_hash)
    for key in reference.wv.index_to_key[:20]:
        np.testing.assert_allclose(table[key], reference.wv[key], rtol=1e-6)
    assert not table[PAD].any()

    model = rib(dm, init="word2vec", w2v_window=3, w2v_epochs=2)
    model.load_word2vec(dm)
    for channel, emb in (("item", model.embed.item), ("activity", model.embed.activity),
                         ("dwell", model.embed.dwell)):
        expected = dm.word2vec(channel, emb.embedding_dim, 3, 2)
        np.testing.assert_array_equal(emb.weight.detach().numpy(), expected)
    assert model.embed.item.weight[2:].std() > 0.05  # trained vectors, not the tiny random fill


def test_reload_from_checkpoint_gives_identical_scores(dm, tmp_path):
    L.seed_everything(0)
    model = rib(dm, features="sku_dwell", encoder="lstm")
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = RIB.load_from_checkpoint(path)  # no Hydra, no data module needed
    assert reloaded.hparams.encoder == "lstm" and reloaded.hparams.features == "sku_dwell"
    batch = dm.dataset("test")[list(range(20))]
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), reloaded(batch))


def test_sampled_softmax_with_every_product_as_negative_is_the_full_softmax():
    from microrec.models.neural import sampled_softmax_loss

    g = torch.Generator().manual_seed(0)
    n, h_size = 30, 5
    h = torch.randn(8, h_size, generator=g)
    weight, bias = torch.nn.Embedding(n, h_size), torch.nn.Embedding(n, 1)
    target = torch.randint(2, n, (8,), generator=g)
    negatives = torch.arange(2, n)  # K = 28 real products, each once
    log_q = torch.full((n,), -float(np.log(n - 2)))  # uniform: K q = 1, no correction
    sampled = sampled_softmax_loss(h, weight, bias, target, negatives, log_q)
    scores = h @ weight.weight.T + bias.weight.T  # (B, n)
    full = torch.nn.functional.cross_entropy(scores[:, 2:], target - 2)
    assert torch.allclose(sampled, full, atol=1e-6)
    # a non-uniform q shifts each logit by -log(K q): check one hand-picked case
    skewed = log_q.clone()
    skewed[target[0]] += 1.0
    assert not torch.allclose(sampled_softmax_loss(h, weight, bias, target, negatives, skewed),
                              full)


def test_sampled_loss_updates_only_the_sampled_rows(dm):
    L.seed_everything(0)
    model = rib(dm, loss="sampled", n_negatives=4)
    model.set_sampling(dm.prepared.splits["train"].target)
    assert torch.all(model.log_q[:2] < -60)  # padding and unknown are never drawn
    before = model.head.out.weight.weight.detach().clone()
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    batch = dm.dataset("train")[list(range(8))]
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    changed = (model.head.out.weight.weight.detach() != before).any(1)
    assert changed.any()
    assert changed.sum() <= 8 + 4  # the batch's targets and the 4 negatives at most
    assert changed[batch["target"]].all()


def test_evaluation_ranks_the_inputs_last_product_last_and_nothing_else(dm):
    """One rule for every model (Recommender.ranked): RIB's scores change only there."""
    batch = dm.dataset("val")[list(range(32))]
    model = rib(dm).eval()
    with torch.no_grad():
        raw, ranked = model(batch), model.ranked(batch)  # (B, N)
    rows = torch.arange(32)
    last = batch["item"][rows, batch["length"] - 1]  # (B,)
    assert torch.all(ranked[rows, last] == float("-inf"))
    keep = torch.ones_like(ranked, dtype=torch.bool)
    keep[rows, last] = False
    assert torch.equal(ranked[keep], raw[keep])


def test_checkpoints_from_before_the_shared_embedding_block_still_load(dm, tmp_path):
    """Older RIB checkpoints name the tables item_emb/activity_emb/dwell_emb."""
    model = rib(dm).eval()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    state = checkpoint["state_dict"]
    for channel in ("item", "activity", "dwell"):
        state[f"{channel}_emb.weight"] = state.pop(f"embed.{channel}.weight")
    torch.save(checkpoint, path)
    reloaded = RIB.load_from_checkpoint(path).eval()
    batch = dm.dataset("test")[list(range(20))]
    with torch.no_grad():
        assert torch.equal(model(batch), reloaded(batch))
