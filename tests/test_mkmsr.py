"""MKM-SR: the batched session graph, the GGNN update, padding, checkpoints, learning."""

import pytest
import pytorch_lightning as L
import torch
from conftest import (
    QUIET,
    compose_cfg,
    reload_after_training,
    scores_alone_and_padded,
    synthetic_and_pop_floor,
)

from microrec.data.schema import FEATURES, PAD
from microrec.models.mkmsr import GGNN, MKMSR, normalised, session_graph
from microrec.reports.results import row_of

SMALL = dict(item_dim=8, activity_dim=4, dwell_dim=4, hidden_size=12)


def build(dm, **kw):
    return MKMSR(dm.n_items, dm.n_activities, dm.n_dwell, n_categories=dm.n_categories,
                 **{**SMALL, **kw})


def graph_by_hand(row: list[int]) -> tuple[list[int], list[int], list[list[float]]]:
    """One input's nodes, aliases and transition counts, read off the sequence one by one."""
    real = [p for p in row if p != PAD]
    nodes = sorted(set(real))
    alias = [nodes.index(p) for p in real]
    edges = [[0.0] * len(nodes) for _ in nodes]
    for t in range(1, len(real)):
        if real[t] != real[t - 1]:  # a new macro interaction: an edge from the previous one
            edges[alias[t - 1]][alias[t]] += 1
    return nodes, alias, edges


def check_against_brute_force(item: torch.Tensor) -> None:
    nodes, alias, edges = session_graph(item)
    a_in, a_out = normalised(edges)
    L_ = nodes.size(1)
    for b, row in enumerate(item.tolist()):
        want_nodes, want_alias, want_edges = graph_by_hand(row)
        n, t = len(want_nodes), len(want_alias)
        assert nodes[b, :n].tolist() == want_nodes and torch.all(nodes[b, n:] == PAD)
        assert alias[b, :t].tolist() == want_alias
        full = torch.zeros(L_, L_)
        full[:n, :n] = torch.tensor(want_edges).view(n, n)
        assert torch.equal(edges[b], full)
        for i in range(L_):
            into = [full[j, i] for j in range(L_)]  # edges j -> i
            out = [full[i, j] for j in range(L_)]  # edges i -> j
            for j in range(L_):
                want_in = full[j, i] / sum(into) if sum(into) else 0.0
                want_out = full[i, j] / sum(out) if sum(out) else 0.0
                assert abs(a_in[b, i, j] - want_in) < 1e-6 and abs(a_out[b, i, j] - want_out) < 1e-6


def test_session_graph_built_for_the_batch_equals_one_built_input_by_input():
    item = torch.tensor([
        [5, 5, 3, 7, 3, 3, 9, 0, 0],  # consecutive repeats (no self-loop), 3 visited twice
        [2, 6, 2, 6, 8, 0, 0, 0, 0],  # the edge 2 -> 6 twice
        [4, 4, 4, 0, 0, 0, 0, 0, 0],  # one product: one node, no edge
        [9, 8, 7, 6, 5, 4, 3, 2, 1],  # no padding, ids descending (unknown id 1 a node too)
    ])
    nodes, alias, edges = session_graph(item)
    assert nodes.tolist() == [[3, 5, 7, 9, 0, 0, 0, 0, 0], [2, 6, 8, 0, 0, 0, 0, 0, 0],
                              [4, 0, 0, 0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert alias[0].tolist() == [1, 1, 0, 2, 0, 0, 3, 0, 0]
    assert edges[1, :3, :3].tolist() == [[0, 2, 0], [1, 0, 1], [0, 0, 0]]
    check_against_brute_force(item)
    g = torch.Generator().manual_seed(0)
    length = torch.randint(1, 13, (64,), generator=g)  # (B,)
    item = torch.randint(1, 7, (64, 12), generator=g)  # few products: many repeats
    item = item.masked_fill(torch.arange(12)[None, :] >= length[:, None], PAD)
    check_against_brute_force(item)


def test_one_ggnn_step_is_the_gated_update_worked_out_by_hand():
    torch.manual_seed(0)
    d = 4
    ggnn = GGNN(d, steps=1)
    with torch.no_grad():
        for p in ggnn.parameters():
            p.uniform_(-0.5, 0.5)
    # 3 nodes: 0 -> 1 twice, 0 -> 2, 1 -> 2, 2 -> 0
    edges = torch.tensor([[[0.0, 2.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    a_in, a_out = normalised(edges)
    # in-degrees 1, 2, 2 and out-degrees 3, 1, 1
    assert torch.allclose(a_in[0], torch.tensor([[0, 0, 1], [1, 0, 0], [1 / 2, 1 / 2, 0]]))
    assert torch.allclose(a_out[0], torch.tensor([[0, 2 / 3, 1 / 3], [0, 0, 1], [1, 0, 0]]))
    h = torch.randn(1, 3, d)
    cell = ggnn.cell
    W_r, W_z, W_n = cell.weight_ih.chunk(3)  # (d, 2d) each, on the messages a
    U_r, U_z, U_n = cell.weight_hh.chunk(3)  # (d, d) each, on the states h
    b_r, b_z, b_n = cell.bias_ih.chunk(3)
    c_r, c_z, c_n = cell.bias_hh.chunk(3)
    expected = torch.empty(3, d)
    for i in range(3):
        m_in = sum(a_in[0, i, j] * (ggnn.edge_in.weight @ h[0, j] + ggnn.edge_in.bias)
                   for j in range(3)) + ggnn.bias_in
        m_out = sum(a_out[0, i, j] * (ggnn.edge_out.weight @ h[0, j] + ggnn.edge_out.bias)
                    for j in range(3)) + ggnn.bias_out
        a = torch.cat([m_in, m_out])  # (2d,)
        r = torch.sigmoid(W_r @ a + b_r + U_r @ h[0, i] + c_r)
        z = torch.sigmoid(W_z @ a + b_z + U_z @ h[0, i] + c_z)
        n = torch.tanh(W_n @ a + b_n + r * (U_n @ h[0, i] + c_n))
        expected[i] = (1 - z) * n + z * h[0, i]
    with torch.no_grad():
        assert torch.allclose(ggnn(h, a_in, a_out)[0], expected, atol=1e-6)
        # node 0's incoming message comes from node 2 alone, node 2's half from 0, half from 1
        assert not torch.allclose(ggnn(h, a_in, a_out), ggnn(h, a_out, a_in))


@pytest.mark.parametrize("features", ["sku", "full"])
def test_scores_do_not_depend_on_padding(dm, features):
    """An example scores the same alone and padded inside a batch of longer inputs."""
    ds = dm.dataset("val")
    model = build(dm, features=features).eval()
    alone, padded = scores_alone_and_padded(model, ds)
    assert torch.allclose(alone, padded, atol=1e-5)
    with torch.no_grad():
        batch = ds[list(range(32))]
        weights = model.attention_weights(batch)  # (B, T)
    real = batch["item"] != PAD
    assert (~real).any() and torch.all(weights[~real] == 0) and torch.all(weights[real] != 0)


@pytest.mark.parametrize("features", list(FEATURES))
def test_each_feature_variant_has_the_operation_channels_it_names(dm, features):
    """features=sku is the GGNN alone: no side table and no operation GRU."""
    model = build(dm, features=features)
    batch = dm.dataset("train")[list(range(16))]
    loss = model.training_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    for channel in ("activity", "dwell", "category"):
        table = getattr(model.embed, channel)
        assert (table is not None) == (channel in FEATURES[features])
        if table is not None:
            assert table.weight.grad.abs().sum() > 0
    assert (model.operation is None) == (features == "sku")
    assert model.embed.item.weight.grad.abs().sum() > 0
    assert model.ggnn.cell.weight_ih.grad.abs().sum() > 0


def test_reload_from_checkpoint_gives_identical_scores(dm, tmp_path):
    L.seed_everything(0)
    model = build(dm, features="full", loss="sampled", n_negatives=8)
    reloaded = reload_after_training(model, dm, tmp_path)
    assert type(reloaded) is MKMSR
    assert (reloaded.hparams.features, reloaded.hparams.loss) == ("full", "sampled")
    batch = dm.dataset("test")[list(range(20))]
    with torch.no_grad():
        assert torch.equal(model(batch), reloaded(batch))


def test_the_config_builds_it_and_names_its_row(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_cfg(tmp_path, ["model=mkmsr"], tiny=False)
    assert cfg.features.name == "full"  # the published model reads micro-behaviors
    model = instantiate(cfg.model, n_items=30, n_activities=12, n_dwell=8)
    assert type(model) is MKMSR and model.operation is not None
    assert "encoder" not in cfg and "attention" not in cfg
    sku = compose_cfg(tmp_path, ["+row=mkmsr_sku"], tiny=False)
    assert row_of(cfg) == ("full", "MKM-SR") and row_of(sku) == ("sku", "MKM-SR")


def test_it_learns_the_planted_signal_far_better_than_pop(tmp_path):
    """On synthetic data with sequential signal its test MRR@20 is over twice POP's.

    Measured: 0.406-0.424 over seeds 0-2 against POP's 0.188.
    """
    dm, floor = synthetic_and_pop_floor(tmp_path, n_sessions=3000)
    L.seed_everything(0)
    model = MKMSR(dm.n_items, dm.n_activities, dm.n_dwell, features="full", item_dim=32,
                  activity_dim=8, dwell_dim=8, hidden_size=16, lr=5e-3)
    trainer = L.Trainer(max_epochs=2, num_sanity_val_steps=0, limit_val_batches=0, **QUIET)
    trainer.fit(model, datamodule=dm)
    mrr = trainer.test(model, datamodule=dm, verbose=False)[0]["test/mrr@20"]
    assert mrr > 2 * floor, (mrr, floor)
