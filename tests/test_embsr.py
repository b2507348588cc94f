"""EMBSR: its session multigraph and edge GRU, its pair attention by hand, padding,
checkpoints, its sku ablation, its sampled loss, its configs, and that it learns."""

import math

import pytest
import pytorch_lightning as L
import torch
import torch.nn.functional as F
from conftest import QUIET, compose_cfg, reload_after_training, synthetic_and_pop_floor
from hydra.utils import instantiate

from microrec.data.schema import NUM_SPECIAL, PAD
from microrec.models.embsr import EMBSR, STAR_OPERATION, pair_index, session_graph
from microrec.reports.results import row_of

SMALL = dict(item_dim=8, activity_dim=4, dwell_dim=3)


def build(dm, **kw):
    return EMBSR(dm.n_items, dm.n_activities, dm.n_dwell, **{**SMALL, **kw})


def hand_batch() -> dict[str, torch.Tensor]:
    """Three right-padded sessions: a product left and revisited, a ping-pong between two
    products, and one macro interaction (no edge)."""
    rows = [([5, 5, 6, 5, 7, 7], [3, 4, 5, 6, 7, 8], [2, 2, 3, 4, 5, 5]),
            ([3, 4, 3, 4, 3], [2, 3, 4, 5, 6], [6, 5, 4, 3, 2]),
            ([9, 9, 9], [7, 8, 9], [4, 4, 4])]
    T = max(len(r[0]) for r in rows) + 2  # extra padding on every row
    batch = {key: torch.zeros(len(rows), T, dtype=torch.long)
             for key in ("item", "activity", "dwell")}
    for b, row in enumerate(rows):
        for key, values in zip(("item", "activity", "dwell"), row, strict=True):
            batch[key][b, :len(values)] = torch.tensor(values)
    batch["length"] = torch.tensor([len(r[0]) for r in rows])
    batch["target"] = torch.tensor([8, 10, 2])
    return batch


def brute_force_graph(items: list[int], ops: list[int]):
    """Nodes (products by first occurrence) and edges (from, to, operations of the macro
    interaction left), by walking one session."""
    macros = []  # [product, [operations]]
    for item, op in zip(items, ops, strict=True):
        if item == PAD:
            break
        if macros and macros[-1][0] == item:
            macros[-1][1].append(op)
        else:
            macros.append([item, [op]])
    nodes = list(dict.fromkeys(m[0] for m in macros))
    edges = [(macros[k][0], macros[k + 1][0], macros[k][1]) for k in range(len(macros) - 1)]
    return nodes, edges


def test_edges_carry_each_macro_interactions_operations_and_the_edge_gru_encodes_them():
    batch = hand_batch()
    graph = session_graph(batch["item"])
    for b in range(3):
        items, ops = batch["item"][b].tolist(), batch["activity"][b].tolist()
        nodes, edges = brute_force_graph(items, ops)
        assert graph.node_item[b, :len(nodes)].tolist() == nodes
        assert not graph.node_real[b, len(nodes):].any()
        for t in range(batch["length"][b]):  # each step points at its product's node
            assert graph.node_item[b, graph.step_node[b, t]] == items[t]
        assert int(graph.edge_real[b].sum()) == len(edges)
        for e, (src, dst, edge_ops) in enumerate(edges):
            steps = graph.edge_steps[b, e]
            assert graph.node_item[b, graph.edge_src[b, e]] == src == graph.edge_item[b, e]
            assert graph.node_item[b, graph.edge_dst[b, e]] == dst
            assert [ops[s] for s in steps[steps >= 0].tolist()] == edge_ops
    assert graph.edge_real[2].sum() == 0  # one macro interaction: no edge
    torch.manual_seed(0)
    model = EMBSR(12, 10, 7, features="full", **SMALL).eval()
    with torch.no_grad():
        operations = model.operations(batch)  # (B, T, O)
        encoded = model.edge_gru(operations, graph)  # (B, E, H)
        for b, e in graph.edge_real.nonzero().tolist():
            steps = graph.edge_steps[b, e]
            alone = operations[b, steps[steps >= 0]][None]  # (1, k, O): this edge only
            _, h = model.edge_gru.gru(alone)
            assert torch.allclose(encoded[b, e], h[0, 0], atol=1e-6)
        assert torch.all(encoded[~graph.edge_real] == 0)


def test_pair_index_is_one_row_per_pair_of_operations():
    torch.manual_seed(0)
    q, k = torch.randint(0, 6, (2, 3)), torch.randint(0, 6, (2, 5))
    index = pair_index(q, k, 6)  # (2, 3, 5)
    for b in range(2):
        for i in range(3):
            for j in range(5):
                assert index[b, i, j] == q[b, i] * 6 + k[b, j]
    rows = {(a, c): int(pair_index(torch.tensor([[a]]), torch.tensor([[c]]), 6))
            for a in range(6) for c in range(6)}
    assert sorted(rows.values()) == list(range(36))  # every pair its own row


def test_the_star_row_of_the_pair_attention_by_hand():
    torch.manual_seed(0)
    batch = hand_batch()
    model = EMBSR(12, 10, 7, features="full", **SMALL).eval()
    d = SMALL["item_dim"]
    att = model.attention
    with torch.no_grad():
        x, keys, pairs, mask = model.steps(batch)
        weights = model.attention_weights(batch)  # (B, 1 + T)
        out = att(x[:, :1], keys, pairs, mask)[:, 0]  # (B, d)
        for b in range(3):
            n = int(batch["length"][b])
            for j in range(1 + n):  # the pair embedding of (the star's operation, step j's)
                act = STAR_OPERATION if j == 0 else int(batch["activity"][b, j - 1])
                dwell = STAR_OPERATION if j == 0 else int(batch["dwell"][b, j - 1])
                expected = (model.pairs["activity"].weight[STAR_OPERATION * 10 + act]
                            + model.pairs["dwell"].weight[STAR_OPERATION * 7 + dwell])
                assert torch.allclose(pairs[b, 0, j], expected)
                position = 0 if j == 0 else n - (j - 1)  # 1 = the last step
                assert torch.allclose(keys[b, j] - x[b, j], model.position.weight[position])
            q = torch.relu(att.query.weight @ x[b, 0] + att.query.bias)  # (d,)
            e = [float(q @ (keys[b, j] + pairs[b, 0, j])) / math.sqrt(d) for j in range(1 + n)]
            alpha = [math.exp(v) / sum(math.exp(u) for u in e) for v in e]
            assert weights[b, :1 + n].tolist() == pytest.approx(alpha, abs=1e-6)
            assert torch.all(weights[b, 1 + n:] == 0)  # padding: exactly zero
            pooled = sum(a * (keys[b, j] + pairs[b, 0, j]) for j, a in enumerate(alpha))
            assert torch.allclose(out[b], att.norm(pooled + att.ffn(pooled)), atol=1e-5)


@pytest.mark.parametrize("features", ["full", "sku"])
def test_scores_do_not_depend_on_padding(dm, features):
    """An example scores the same alone and padded inside a batch of longer inputs."""
    ds = dm.dataset("val")
    lengths = ds.lengths()
    short, long = int(lengths.argmin()), int(lengths.argmax())
    assert lengths[short] < lengths[long]
    model = build(dm, features=features).eval()
    with torch.no_grad():
        alone = model(ds[[short]])  # (1, N)
        padded = model(ds[[long, short, long]])[1:2]
        alone_batch = ds[[short]]
        wider = {k: F.pad(v, (0, 7)) if v.dim() == 2 else v for k, v in alone_batch.items()}
        extra = model(wider)  # seven more padding steps than the batch needs
    assert torch.allclose(alone[:, NUM_SPECIAL:], padded[:, NUM_SPECIAL:], atol=1e-5)
    assert torch.allclose(alone[:, NUM_SPECIAL:], extra[:, NUM_SPECIAL:], atol=1e-5)


def test_sku_is_the_model_without_micro_behaviors(dm):
    model = build(dm, features="sku").eval()
    assert model.embed.activity is None and model.embed.dwell is None
    assert model.edge_gru is None and model.operation is None and len(model.pairs) == 0
    assert not [k for k in model.state_dict() if "activity" in k or "dwell" in k]
    batch = dm.dataset("val")[list(range(16))]
    other = {**batch, "activity": batch["activity"].flip(1), "dwell": batch["dwell"].flip(1)}
    full = build(dm, features="full").eval()
    with torch.no_grad():
        assert torch.equal(model(batch), model(other))  # operations are never read
        assert not torch.allclose(full(batch), full(other))  # they are under full


def test_reload_from_checkpoint_gives_identical_scores(dm, tmp_path):
    L.seed_everything(0)
    model = build(dm, features="full")
    reloaded = reload_after_training(model, dm, tmp_path)
    assert type(reloaded) is EMBSR and reloaded.hparams.features == "full"
    batch = dm.dataset("test")[list(range(20))]
    with torch.no_grad():
        assert torch.equal(model(batch), reloaded(batch))


def test_sampled_loss_with_every_product_once_is_the_softmax_of_the_cosines(dm):
    """Scores are scale * cos: the sampled loss reads unit rows, so drawing every real
    product once with equal probability gives the full softmax over those products."""
    L.seed_everything(0)
    model = build(dm, features="full", loss="sampled").eval()
    n = dm.n_items - NUM_SPECIAL
    model.log_q = torch.full((dm.n_items,), -math.log(n))
    batch = dm.dataset("train")[list(range(16))]
    with torch.no_grad():
        sampled = model.sampled_loss(batch, torch.arange(NUM_SPECIAL, dm.n_items))
        logits = model.logits(batch)  # (B, N)
        full = F.cross_entropy(logits[:, NUM_SPECIAL:], batch["target"] - NUM_SPECIAL)
    assert torch.allclose(sampled, full, atol=1e-5)
    assert logits.abs().max() <= model.hparams.scale + 1e-4  # cosines times the scale


def test_configs_build_it_with_the_features_asked_for(tmp_path):
    sizes = dict(n_items=30, n_activities=12, n_dwell=8)
    cfg = compose_cfg(tmp_path, ["model=embsr", "features=sku_act"], tiny=False)
    model = instantiate(cfg.model, **sizes)  # yaml keys are exactly __init__'s arguments
    assert type(model) is EMBSR and model.hparams.features == "sku_act"
    assert model.embed.dwell is None and set(model.pairs) == {"activity"}
    assert model.hparams.max_len == cfg.data.max_len
    assert "encoder" not in cfg and "attention" not in cfg
    assert compose_cfg(tmp_path, ["model=embsr"], tiny=False).features.name == "full"
    for row, features in (("embsr_full", "full"), ("embsr_sku", "sku")):
        cfg = compose_cfg(tmp_path, [f"+row={row}"], tiny=False)
        assert row_of(cfg) == (features, "EMBSR")


@pytest.mark.slow
def test_it_beats_pop_by_a_wide_margin_on_synthetic_data(tmp_path):
    """Planted sequential signal: EMBSR's test MRR@20 is over twice POP's."""
    dm, floor = synthetic_and_pop_floor(tmp_path, n_sessions=1000)
    L.seed_everything(0)
    model = build(dm, item_dim=32, activity_dim=4, dwell_dim=4, lr=0.01)
    trainer = L.Trainer(max_epochs=5, num_sanity_val_steps=0, **QUIET)
    trainer.fit(model, datamodule=dm)
    mrr = trainer.test(model, datamodule=dm, verbose=False)[0]["test/mrr@20"]
    assert mrr > 2 * floor, (mrr, floor)
