"""The baselines on hand-made data where the right scores are known by hand.

The protocol never makes the input's last product the target (DESIGN.md), and every baseline
ranks that product last; targets are often earlier products of the input, which
Word2vec Avg and BPR-MF may rank high.
"""

import json

import hydra
import numpy as np
import polars as pl
import pytest
import torch
from conftest import TINY, compose_cfg

from microrec.data.module import MicroDataModule
from microrec.data.schema import NUM_SPECIAL, PAD, UNK
from microrec.data.sources import FrameSource
from microrec.data.synthetic import SyntheticSource
from microrec.errors import ConfigError
from microrec.models.base import macro_visits
from microrec.models.bpr_mf import BPRMF
from microrec.models.item_knn import ItemKNN
from microrec.models.pop import Pop
from microrec.models.ranking import RankingMetrics, target_rank
from microrec.models.word2vec import Word2Vec
from microrec.runs.train import train

NEG = float("-inf")


def training_data(sessions: list[str], tmp_path) -> tuple[MicroDataModule, dict[str, int]]:
    """A data module whose training split is `sessions` (one letter per micro-behavior),
    and the id of each product."""
    rows = [(s, pos, item) for s, text in enumerate(sessions) for pos, item in enumerate(text)]
    events = pl.DataFrame(rows, schema=["session", "pos", "item"], orient="row")
    dm = MicroDataModule(FrameSource(events), features="sku", split=(1.0, 0.0, 0.0),
                         cache_dir=str(tmp_path))
    dm.setup()
    ids = {name: i + NUM_SPECIAL for i, name in enumerate(dm.prepared.items)}
    return dm, ids


def batch(*inputs: list[int]) -> dict[str, torch.Tensor]:
    """Right-padded batch of product id sequences (activity and dwell unused)."""
    T = max(len(x) for x in inputs)
    item = torch.tensor([x + [PAD] * (T - len(x)) for x in inputs])  # (B, T)
    return {"item": item, "activity": torch.zeros_like(item), "dwell": torch.zeros_like(item),
            "length": torch.tensor([len(x) for x in inputs]),
            "target": torch.full((len(inputs),), UNK)}


def scores_by_name(scores: torch.Tensor, ids: dict[str, int]) -> dict[str, float]:
    return {name: float(scores[i]) for name, i in ids.items()}


def test_macro_visits_count_consecutive_micro_behaviors_once(tmp_path):
    dm, ids = training_data(["aaab", "bcb", "ca"], tmp_path)
    session, item = macro_visits(dm.prepared.splits["train"])
    by_id = {i: name for name, i in ids.items()}
    assert [(s, by_id[i]) for s, i in zip(session.tolist(), item.tolist(), strict=True)] == [
        (0, "a"), (0, "b"), (1, "b"), (1, "c"), (1, "b"), (2, "c"), (2, "a")]


def test_pop_ranks_by_training_visits(tmp_path):
    # visits: a 2, b 4, c 2, d 1 (micro-behaviors would put a first: 5 of them)
    dm, ids = training_data(["aaaab", "bcb", "ca", "db"], tmp_path)
    model = Pop(dm.n_items)
    model.fit(dm)
    scores = model.ranked(batch([ids["d"]], [ids["b"]]))  # (2, N)
    assert scores_by_name(scores[0], ids) == {"a": 2, "b": 4, "c": 2, "d": NEG}
    assert scores_by_name(scores[1], ids) == {"a": 2, "b": NEG, "c": 2, "d": 1}
    assert torch.all(scores[:, :NUM_SPECIAL] == NEG)
    rank = target_rank(scores, torch.tensor([ids["b"], ids["d"]]))
    assert rank.tolist() == [1, 3]  # after input b, d ranks behind the tie of a and c


def test_item_knn_follows_the_papers_formula(tmp_path):
    # sessions containing: a 4, b 3, c 2, d 2, e 1 ("aba" contains a once);
    # both: ab 2, ac 2, ad 1, ae 1
    dm, ids = training_data(["abc", "aba", "acd", "bd", "ae"], tmp_path)
    model = ItemKNN(dm.n_items, neighbours=21)
    model.fit(dm)
    expected = {"a": NEG, "b": 2 / (4 * 3), "c": 2 / (4 * 2), "d": 1 / (4 * 2), "e": 1 / (4 * 1)}
    for inputs in ([ids["a"]], [ids["d"], ids["b"], ids["a"]]):  # only the last product counts
        got = scores_by_name(model.ranked(batch(inputs))[0], ids)
        assert got == pytest.approx(expected)
    # c and e tie at 0.25: ties count against the target, so either ranks 2nd
    assert target_rank(model.ranked(batch([ids["a"]])), torch.tensor([ids["e"]])).item() == 2
    # sim(b, e) = 0: products that never co-occur all score 0
    assert scores_by_name(model(batch([ids["b"]]))[0], ids)["e"] == 0


def test_item_knn_keeps_exact_metrics_at_20_with_21_neighbours(tmp_path):
    """Against a dense similarity matrix computed independently, session by session."""
    dm = MicroDataModule(SyntheticSource(n_sessions=300, n_items=60, n_categories=6),
                         features="sku", cache_dir=str(tmp_path))
    dm.setup()
    train = dm.prepared.splits["train"]
    sessions = [set(s.tolist()) for s in np.split(train.tokens[:, 0], train.session_end[:-1])]
    freq = np.zeros(dm.n_items)
    both = np.zeros((dm.n_items, dm.n_items))
    for products in sessions:
        for i in products:
            freq[i] += 1
            for j in products:
                both[i, j] += i != j
    dense = both / np.maximum(np.outer(freq, freq), 1)  # (N, N)
    assert dm.n_items - NUM_SPECIAL > 40  # enough products for the cut to matter

    model = ItemKNN(dm.n_items, neighbours=21)
    model.fit(dm)
    examples = dm.dataset("train")
    b = examples[list(range(len(examples)))]
    last = b["item"][torch.arange(len(examples)), b["length"] - 1]
    reference = torch.from_numpy(dense[last.numpy()]).float()  # (B, N)
    reference[:, :NUM_SPECIAL] = NEG
    reference[torch.arange(len(examples)), last] = NEG
    ours = model.ranked(b)
    assert torch.allclose(ours[ours > 0], reference[ours > 0])
    top = lambda r: torch.where(r <= 20, r, 0)  # noqa: E731
    assert torch.equal(top(target_rank(ours, b["target"])), top(target_rank(reference,
                                                                              b["target"])))
    with pytest.raises(ConfigError, match="more than 20 neighbours"):
        ItemKNN(dm.n_items, neighbours=20)


class HandVectors:
    """Stands in for the data module: word2vec returns vectors set by hand."""

    def __init__(self, table: np.ndarray):
        self.table = table
        self.asked = None

    def word2vec(self, channel, dim, window, epochs, seed):
        self.asked = (channel, dim, window, epochs, seed)
        return self.table.copy()


def test_word2vec_last_and_mean_queries():
    p, q, r, s = range(NUM_SPECIAL, NUM_SPECIAL + 4)
    table = np.array([[0, 0], [5, 5], [2, 0], [0, 3], [1, 1], [-1, 0.2]], dtype=np.float32)
    dm = HandVectors(table)
    last, mean = Word2Vec(6, query="last", dim=2, seed=7), Word2Vec(6, query="mean", dim=2)
    for model in (last, mean):
        model.fit(dm)
    assert dm.asked == ("item", 2, 5, 5, 0) and last.hparams.seed == 7
    assert torch.all(last.vectors[:NUM_SPECIAL] == 0)  # padding and unknown have no vector

    cos_s = lambda x, y: (-x + 0.2 * y) / (np.hypot(x, y) * np.hypot(1, 0.2))  # noqa: E731
    # last = q: cosine to (0, 1)
    got = last.ranked(batch([p, q]))[0]
    assert got[[p, q, r, s]].tolist() == pytest.approx([0, NEG, 2 ** -0.5, cos_s(0, 1)])
    # mean of the unit vectors of p and q, one per visit: the direction (1, 1)
    for inputs in ([p, q], [p, p, p, q], [p, UNK, q]):
        got = mean.ranked(batch(inputs))[0]
        assert got[[p, q, r, s]].tolist() == pytest.approx([2 ** -0.5, NEG, 1, cos_s(1, 1)])
    # an input of unknown products has no query: every product ties
    assert torch.all(last(batch([UNK]))[0, NUM_SPECIAL:] == 0)


def test_bpr_mf_scores_a_session_by_the_mean_of_its_products_factors():
    p, q, r = range(NUM_SPECIAL, NUM_SPECIAL + 3)
    model = BPRMF(5, dim=2)
    with torch.no_grad():
        model.item_factors.weight.copy_(torch.tensor(
            [[9, 9], [9, 9], [1, 0], [0, 2], [3, -1]], dtype=torch.float))
    for inputs in ([p, q], [p, p, p, q], [UNK, p, q]):  # one per visit, unknown left out
        got = model.ranked(batch(inputs))[0]
        # mean = (0.5, 1): p 0.5, q excluded as the last product, r 1.5 - 1
        assert got.tolist() == pytest.approx([NEG, NEG, 0.5, NEG, 0.5])


def test_bpr_mf_learns_which_products_share_sessions(tmp_path):
    rng = np.random.default_rng(0)
    groups = ("abcd", "wxyz")
    sessions = ["".join(rng.choice(list(groups[k % 2]), size=3, replace=False))
                for k in range(80)]
    dm, ids = training_data(sessions, tmp_path)
    torch.manual_seed(0)
    model = BPRMF(dm.n_items, dim=8, epochs=30, batch_size=64, lr=0.05)
    model.fit(dm)
    with torch.no_grad():
        for group, other in (groups, groups[::-1]):
            scores = model(batch([ids[group[0]]]))[0]
            worst_own = min(scores[ids[c]] for c in group[1:])
            best_other = max(scores[ids[c]] for c in other)
            assert worst_own > best_other, group


BASELINES = {"pop": Pop, "bpr_mf": BPRMF, "item_knn": ItemKNN, "word2vec": Word2Vec,
             "word2vec_avg": Word2Vec}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("name", BASELINES)
def test_a_fitted_baseline_goes_through_train_and_reloads(name, tmp_path, shared_cache):
    """Fitted from the training split, no training epochs, tested once; the checkpoint holds
    the fitted state."""
    data = [o for o in TINY if not o.startswith("model.")]  # the tiny sizes are RIB's
    cfg = compose_cfg(tmp_path, [*data, f"model={name}", f"cache_dir={shared_cache}"],
                      tiny=False)
    assert cfg.features.name == "sku" and "encoder" not in cfg and "attention" not in cfg
    metrics = train(cfg)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["epochs"] == 0
    assert 0 < metrics["test/recall@20"] <= 1 and 0 < metrics["val/mrr@20"] <= 1

    model = BASELINES[name].load_from_checkpoint(tmp_path / "checkpoints" / "best.ckpt")
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    test = RankingMetrics()
    with torch.no_grad():
        for b in dm.test_dataloader():
            test.update(model.ranked(b), b["target"])
    again = test.compute()
    assert again["recall@20"].item() == pytest.approx(metrics["test/recall@20"])
    assert again["mrr@20"].item() == pytest.approx(metrics["test/mrr@20"])
