"""RIB's output heads: the repeat-explore mixture (head=repeat_explore) and tied weights."""

import inspect
import itertools

import numpy as np
import pytest
import pytorch_lightning as L
import torch
import torch.nn.functional as F

from microrec.data.schema import FEATURES, NUM_SPECIAL, PAD
from microrec.errors import ConfigError
from microrec.models.heads import (
    RepeatExploreHead,
    SoftmaxHead,
    negatives_in_input,
    repeat_candidates,
)
from microrec.models.rib import RIB

SMALL = dict(item_dim=8, activity_dim=4, dwell_dim=4, hidden_size=12, attention_size=6,
             init="random", head="repeat_explore")
QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


def rib(dm, **kw):
    return RIB(dm.n_items, dm.n_activities, dm.n_dwell, n_categories=dm.n_categories,
               **{**SMALL, **kw})


def sampled_and_full_loss(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampled loss with every real product drawn once under a uniform q (K q = 1: no
    logQ shift), and the full loss, of the same batch."""
    n = model.embed.item.num_embeddings
    model.log_q = torch.full((n,), -torch.log(torch.tensor(float(n - NUM_SPECIAL))))
    with torch.no_grad():
        return model.sampled_loss(batch, torch.arange(NUM_SPECIAL, n)), model.training_loss(batch)


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
    assert torch.allclose(*sampled_and_full_loss(model, batch), atol=1e-5)


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
    for part in (model.embed.item, model.head.repeat.position, model.head.repeat.distance,
                 model.head.repeat.gate, model.head.out.weight):
        assert part.weight.grad.abs().sum() > 0
    for channel in ("activity", "dwell", "category"):
        table = getattr(model.embed, channel)
        assert (table is not None) == (channel in FEATURES[features])


def test_tied_weights_score_against_the_input_product_table(dm):
    untied, tied = rib(dm, head="softmax"), rib(dm, head="softmax", tied=True)
    assert tied.output_tables()[0] is tied.embed.item and not hasattr(tied.head.out, "weight")
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
    with pytest.raises(ConfigError, match="unknown head 'mixture'"):
        rib(dm, head="mixture")


# -- the two head modules -------------------------------------------------------------------
def test_both_heads_answer_the_same_calls(dm):
    """RIB calls either head without asking which: same methods, same arguments; both take
    the output layer's arguments (tied among them), only the repeat-explore head neighbours."""
    for method in ("fit", "logits", "training_loss", "sampled_loss", "score_loss",
                   "repeat_weights"):
        softmax, repeat = (list(inspect.signature(getattr(cls, method)).parameters)
                           for cls in (SoftmaxHead, RepeatExploreHead))
        assert softmax == repeat, method
    shared = list(inspect.signature(SoftmaxHead).parameters)
    assert "tied" in shared and "neighbours" not in shared
    assert list(inspect.signature(RepeatExploreHead).parameters)[:len(shared)] == shared
    with pytest.raises(ConfigError, match=r"^this RIB model has head=softmax: it has no repeat "
                                          r"attention\.$"):
        rib(dm, head="softmax").repeat_weights(dm.dataset("val")[[0]])


@pytest.mark.parametrize("tied", [False, True])
def test_the_softmax_head_scores_the_pooled_state_against_the_output_table(dm, tied):
    batch = dm.dataset("val")[list(range(16))]
    model = rib(dm, head="softmax", tied=tied).eval()
    with torch.no_grad():
        _, _, pooled = model.head_inputs(batch)  # (B, H)
        q = pooled @ model.head.out.proj.weight.T if tied else pooled  # (B, D)
        table = model.embed.item.weight if tied else model.head.out.weight.weight  # (N, D)
        expected = q @ table.T + model.head.out.bias.weight.T  # (B, N)
        assert torch.allclose(model.logits(batch), expected, atol=1e-6)
        assert torch.allclose(model.training_loss(batch),
                              F.cross_entropy(expected, batch["target"]), atol=1e-6)


# the output layer's state-dict prefixes before it moved into a head module
OLD_PREFIXES = {"head.repeat.": "repeat.", "head.cooccurrence.": "cooccurrence.",
                "head.out.proj.": "out_proj.", "head.out.weight.": "out_weight.",
                "head.out.bias.": "out_bias."}
REPEAT_KEYS = {f"repeat.{name}" for name in ("position.weight", "position.bias", "distance.weight",
                                             "query.weight", "score.weight", "gate.weight",
                                             "gate.bias")}


@pytest.mark.parametrize("head, tied, neighbours", [
    ("softmax", False, 0), ("softmax", True, 0), ("repeat_explore", False, 0),
    ("repeat_explore", True, 10)])
def test_checkpoints_from_before_the_head_modules_load_with_identical_scores(
        dm, tmp_path, head, tied, neighbours):
    model = rib(dm, head=head, tied=tied, neighbours=neighbours).eval()
    model.head.fit(dm.prepared.splits["train"])
    torch.nn.init.normal_(model.head.out.bias.weight)  # not the zeros it starts from
    trainer = L.Trainer(**QUIET)
    trainer.strategy.connect(model)
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    state = checkpoint["state_dict"]
    for key in list(state):
        for new, old in OLD_PREFIXES.items():
            if key.startswith(new):
                state[old + key[len(new):]] = state.pop(key)
    expected = {"out_bias.weight", "out_proj.weight" if tied else "out_weight.weight"}
    expected |= REPEAT_KEYS if head == "repeat_explore" else set()
    expected |= {"cooccurrence.weight", "cooccurrence.partner", "cooccurrence.count"} \
        if neighbours else set()
    assert {k for k in state if not k.startswith(("embed.", "rnn.", "attention."))} == expected
    torch.save(checkpoint, path)
    reloaded = RIB.load_from_checkpoint(path).eval()
    batch = dm.dataset("test")[list(range(20))]
    with torch.no_grad():
        assert torch.equal(model(batch), reloaded(batch))


# -- model.neighbours: the co-occurrence expert ---------------------------------------------
def session_sets(split) -> list[set[int]]:
    """Each session's known products, by brute force over its tokens."""
    bounds = [0, *split.session_end.tolist()]
    return [{int(i) for i in split.tokens[a:b, 0] if i >= NUM_SPECIAL}
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def brute_force_counts(sessions: list[set[int]], n_items: int) -> np.ndarray:
    """(N, N) sessions holding both i and j, i != j."""
    both = np.zeros((n_items, n_items))
    for s in sessions:
        for i in s:
            for j in s:
                both[i, j] += i != j
    return both


def expected_counts(batch, both: np.ndarray, own: list[set[int]] | None) -> np.ndarray:
    """C_all and C_last of each row, by brute force."""
    rows = []
    for r in range(batch["item"].size(0)):
        inputs = batch["item"][r, : batch["length"][r]].tolist()
        counts = both.copy()
        if own is not None:  # the example's own session taken out
            for i in own[r]:
                for j in own[r]:
                    counts[i, j] -= i != j
        distinct = {i for i in inputs if i >= NUM_SPECIAL}
        c_all = sum((counts[i] for i in distinct), np.zeros(both.shape[0]))
        c_last = counts[inputs[-1]] if inputs[-1] >= NUM_SPECIAL else np.zeros(both.shape[0])
        rows.append(np.stack([c_all, c_last]))
    return np.stack(rows)  # (B, 2, N)


@pytest.mark.parametrize("split", ["val", "train"])
def test_neighbour_scores_are_the_co_occurrence_counts(dm, split):
    """Every partner kept (k >= N): the expert's two scores equal a brute-force count; on a
    training batch each example's own session is left out of it."""
    train = dm.prepared.splits["train"]
    model = rib(dm, tied=True, neighbours=dm.n_items)
    model.head.cooccurrence.fit(train)
    sessions = session_sets(train)
    both = brute_force_counts(sessions, dm.n_items)
    batch = dm.dataset(split)[list(range(0, 40, 2))]
    own = None
    if split == "train":
        session = np.searchsorted(train.session_end, train.first[batch["index"].numpy()],
                                  side="right")
        own = [sessions[s] for s in session]
        for r, products in enumerate(own):  # the mapping really finds each example's session
            inputs = set(batch["item"][r, : batch["length"][r]].tolist()) - {PAD}
            assert inputs <= products and int(batch["target"][r]) in products
    counts = torch.from_numpy(expected_counts(batch, both, own)).float()  # (B, 2, N)
    w = torch.tensor([0.37, -1.9])
    with torch.no_grad():
        model.head.cooccurrence.weight.copy_(w)
        got = model.head.cooccurrence(batch, leave_out=split == "train")
    # the dense formula's floating-point operations on each score: equal to the bit
    assert torch.equal(got, w[0] * torch.log1p(counts[:, 0]) + w[1] * torch.log1p(counts[:, 1]))
    assert (counts[:, 1] > 0).any() and (counts[:, 0] > counts[:, 1]).any()
    if split == "train":  # the leak is real: without leaving out, the target always counts
        assert (counts[:, 0].amax(1) > 0).any()


def fitted_expert(dm, kind: str, k: int = 10):
    """The co-occurrence (weights a != b) or transition expert of a repeat-explore head,
    fitted."""
    model = rib(dm, tied=True, **{kind: k})
    expert = model.head.cooccurrence if kind == "neighbours" else model.head.transitions
    expert.fit(dm.prepared.splits["train"])
    with torch.no_grad():
        expert.weight.copy_(torch.tensor([0.6, 1.7][: expert.weight.numel()]))
    return expert


EXPERTS = pytest.mark.parametrize("kind", ["neighbours", "transitions"])


@EXPERTS
@pytest.mark.parametrize("split", ["val", "train"])
def test_the_expert_adds_its_scores_into_the_logits_unchanged(dm, split, kind):
    """The full loss adds the expert in place: the same logits, to the bit, as adding its
    dense (B, N) scores."""
    expert, leave_out = fitted_expert(dm, kind), split == "train"
    batch = dm.dataset(split)[list(range(32))]
    logits = torch.randn(32, dm.n_items, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = logits + expert(batch, leave_out)
        assert torch.equal(expert.add_to_(logits.clone(), batch, leave_out), expected)
    assert not torch.equal(expected, logits)


@EXPERTS
@pytest.mark.parametrize("split", ["val", "train"])
def test_the_sampled_path_equals_the_full_path_on_its_candidates(dm, split, kind):
    """The sampled loss reads the expert at the targets and the negatives alone (repeated
    negatives, targets among them): the scores and the weights' gradients equal those of
    the dense scores at the same columns."""
    expert, leave_out = fitted_expert(dm, kind), split == "train"
    batch = dm.dataset(split)[list(range(32))]
    g = torch.Generator().manual_seed(0)
    negatives = torch.randint(NUM_SPECIAL, dm.n_items, (40,), generator=g)
    negatives = torch.cat([negatives, negatives[:3], batch["target"][:5]])  # (K,)
    columns = torch.cat([batch["target"][:, None], negatives.expand(32, -1)], dim=1)
    upstream = torch.randn(columns.shape, generator=g)  # (B, 1 + K)
    grads = []
    for scores in (lambda: expert(batch, leave_out).gather(1, columns),
                   lambda: expert.candidate_scores(batch, negatives, leave_out)):
        expert.weight.grad = None
        (scores() * upstream).sum().backward()
        grads.append(expert.weight.grad.clone())
    with torch.no_grad():
        full = expert(batch, leave_out).gather(1, columns)
        sampled = expert.candidate_scores(batch, negatives, leave_out)
    torch.testing.assert_close(sampled, full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0])
    assert (full[:, 0] != 0).float().mean() > 0.3 and (full[:, 1:] != 0).float().mean() > 0.1


def test_negatives_in_the_input_are_found_by_lookup(dm):
    g = torch.Generator().manual_seed(0)
    item = torch.randint(0, 30, (16, 12), generator=g)  # PAD among them
    for negatives in (torch.randint(NUM_SPECIAL, 30, (50,), generator=g), torch.tensor([7])):
        expected = (negatives[None, None, :] == item[:, :, None]).any(1)  # (B, K)
        assert torch.equal(negatives_in_input(item, negatives), expected)
        assert expected.any()


def test_each_product_keeps_its_most_frequent_partners(dm):
    train = dm.prepared.splits["train"]
    k = 5
    model = rib(dm, neighbours=k)
    model.head.cooccurrence.fit(train)
    both = brute_force_counts(session_sets(train), dm.n_items)
    partner, count = model.head.cooccurrence.partner.numpy(), model.head.cooccurrence.count.numpy()
    for i in range(NUM_SPECIAL, dm.n_items):
        kept = count[i] > 0
        np.testing.assert_array_equal(count[i][kept], both[i, partner[i][kept]])
        top = np.sort(both[i])[::-1][:k]
        np.testing.assert_array_equal(np.sort(count[i])[::-1], top)


# -- model.transitions: the transition expert -----------------------------------------------
def session_visits(split) -> list[list[int]]:
    """Each session's macro interactions (consecutive distinct products), by brute force."""
    bounds = [0, *split.session_end.tolist()]
    visits = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        products = split.tokens[a:b, 0].tolist()
        visits.append([p for t, p in enumerate(products) if t == 0 or p != products[t - 1]])
    return visits


def transition_counts(visits: list[list[int]], n_items: int) -> np.ndarray:
    """(N, N) how many times j directly follows i."""
    counts = np.zeros((n_items, n_items))
    for v in visits:
        for i, j in zip(v[:-1], v[1:], strict=True):
            counts[i, j] += 1
    return counts


@pytest.mark.parametrize("split", ["val", "train"])
def test_transition_scores_are_the_successor_counts(dm, split):
    """Every successor kept (k >= N): c log(1 + T) with T a brute-force count of what follows
    the input's last product; on a training batch without the example's own session."""
    train = dm.prepared.splits["train"]
    expert = fitted_expert(dm, "transitions", k=dm.n_items)
    visits = session_visits(train)
    counts = transition_counts(visits, dm.n_items)
    batch = dm.dataset(split)[list(range(0, 40, 2))]
    expected = []
    for r in range(batch["item"].size(0)):
        last = int(batch["item"][r, batch["length"][r] - 1])
        row = counts[last].copy()
        if split == "train":  # the example's own session taken out
            session = np.searchsorted(train.session_end, train.first[int(batch["index"][r])],
                                      side="right")
            own = transition_counts([visits[session]], dm.n_items)[last]
            assert own[int(batch["target"][r])] >= 1  # the leak is real: it is the target
            row -= own
        expected.append(row)
    expected = torch.from_numpy(np.stack(expected)).float()  # (B, N)
    with torch.no_grad():
        got = expert(batch, leave_out=split == "train")
    assert torch.equal(got, 0.6 * torch.log1p(expected))
    assert (expected > 0).sum(1).float().mean() > 1


def test_each_product_keeps_its_most_frequent_successors(dm):
    k = 3
    expert = fitted_expert(dm, "transitions", k=k)
    counts = transition_counts(session_visits(dm.prepared.splits["train"]), dm.n_items)
    successor, count = expert.successor.numpy(), expert.count.numpy()
    for i in range(NUM_SPECIAL, dm.n_items):
        kept = count[i] > 0
        np.testing.assert_array_equal(count[i][kept], counts[i, successor[i][kept]])
        np.testing.assert_array_equal(np.sort(count[i])[::-1], np.sort(counts[i])[::-1][:k])
    assert (successor != PAD).sum() > dm.n_items


@pytest.mark.parametrize("tied, experts", [(False, dict(neighbours=10)),
                                           (True, dict(neighbours=10)),
                                           (True, dict(neighbours=10, transitions=10))])
def test_sampled_loss_with_the_experts_is_the_full_loss(dm, tied, experts):
    batch = batch_with_a_lone_product(dm)
    model = rib(dm, tied=tied, loss="sampled", **experts).eval()
    model.head.fit(dm.prepared.splits["train"])
    assert len(model.head.experts()) == len(experts)
    assert torch.allclose(*sampled_and_full_loss(model, batch), atol=1e-5)


def test_the_experts_train_reload_and_score_new_products(dm, tmp_path):
    L.seed_everything(0)
    model = rib(dm, tied=True, neighbours=10, transitions=10)
    trainer = L.Trainer(max_epochs=1, **QUIET)
    trainer.fit(model, datamodule=dm)  # setup fits the counts from the training split
    for expert in (model.head.cooccurrence, model.head.transitions):
        assert expert.count.sum() > 0
        assert not torch.equal(expert.weight.detach(), torch.ones_like(expert.weight))  # learned
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = RIB.load_from_checkpoint(path).eval()
    batch = dm.dataset("test")[list(range(20))]
    with torch.no_grad():
        assert torch.equal(model.eval()(batch), reloaded(batch))


@EXPERTS
def test_a_softmax_head_with_an_expert_is_refused_in_one_sentence(dm, kind):
    with pytest.raises(ConfigError) as error:
        rib(dm, head="softmax", **{kind: 10})
    assert str(error.value) == (f"model.{kind}=10 scores the explore side of "
                                f"head=repeat_explore: set head=repeat_explore or {kind}=0.")


def test_each_output_layer_row_builds_its_model_and_names_its_row(tmp_path):
    from conftest import compose_cfg
    from hydra.utils import instantiate

    from microrec.reports.results import row_of

    sizes = dict(n_items=30, n_activities=12, n_dwell=8)
    expected = {  # row: (head, tied, neighbours, transitions, the table's name)
        "rib_full": ("softmax", False, 0, 0, "RIB"),
        "rib_re_full": ("repeat_explore", False, 0, 0, "RIB (repeat-explore)"),
        "rib_re_tied_full": ("repeat_explore", True, 0, 0, "RIB (repeat-explore, tied)"),
        "rib_re_tied_nb_full": ("repeat_explore", True, 100, 0,
                                "RIB (repeat-explore, tied, neighbours)"),
        "rib_re_tied_nb_tr_full": ("repeat_explore", True, 100, 100,
                                   "RIB (repeat-explore, tied, neighbours, transitions)"),
    }
    orders = []
    for row, (head, tied, neighbours, transitions, name) in expected.items():
        cfg = compose_cfg(tmp_path, [f"+row={row}"], tiny=False)
        model = instantiate(cfg.model, **sizes)
        hparams = model.hparams
        assert (hparams.head, hparams.tied, hparams.neighbours, hparams.transitions) == \
            (head, tied, neighbours, transitions)
        assert type(model.head) is (SoftmaxHead if head == "softmax" else RepeatExploreHead)
        assert row_of(cfg) == ("full", name)
        orders.append(cfg.table.order)
    assert orders == sorted(set(orders))  # the table lists them in this order
