"""Repeat and the session-kNN peers (S-KNN, V-SKNN, STAN) on sessions where the right scores
are worked out by hand, S-KNN against a dense computation, the exact search without sampling
against comparing every candidate and against the formulas written out session by session,
and each through a real run."""

import json
import logging
import math

import hydra
import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
import torch
from conftest import ROOT, TINY, compose_cfg
from test_baselines import batch, scores_by_name

from microrec.data.module import MicroDataModule
from microrec.data.schema import NUM_SPECIAL, UNK
from microrec.data.sources import FrameSource
from microrec.data.synthetic import SyntheticSource
from microrec.errors import ConfigError
from microrec.metrics import KS
from microrec.models.ranking import RankingMetrics, target_rank
from microrec.models.repeat import Repeat
from microrec.models.sknn import Pairs, SessionKNN, inputs, product_lists, shared_by_several
from microrec.models.stan import STAN
from microrec.models.vsknn import VSKNN
from microrec.reports.results import row_of
from microrec.runs.train import train

NEG = float("-inf")
DAY = 24 * 3600
e = math.exp


def training_data(sessions: list[str], tmp_path, days: list[int] | None = None):
    """A data module whose training split is `sessions` (one letter per micro-behavior),
    each at its day where `days` is given (no timestamps otherwise), and the products' ids."""
    rows = [(s, pos, item, None if days is None else days[s] * DAY)
            for s, text in enumerate(sessions) for pos, item in enumerate(text)]
    events = pl.DataFrame(rows, schema={"session": pl.Int64, "pos": pl.Int32,
                                        "item": pl.String, "ts": pl.Int64}, orient="row")
    dm = MicroDataModule(FrameSource(events), features="sku", split=(1.0, 0.0, 0.0),
                         cache_dir=str(tmp_path))
    dm.setup()
    return dm, {name: i + NUM_SPECIAL for i, name in enumerate(dm.prepared.items)}


def fitted(cls, dm, **kwargs):
    model = cls(dm.n_items, **kwargs)
    model.fit(dm)
    return model


# -- Repeat -------------------------------------------------------------------------------------
def test_repeat_ranks_earlier_products_most_recent_first():
    a, b, c, d = range(NUM_SPECIAL, NUM_SPECIAL + 4)
    model = Repeat(NUM_SPECIAL + 5)
    # visits a, b, a (a new visit after the unknown product), c; the last one is c
    scores = model.ranked(batch([a, a, b, UNK, a, c]))[0]
    assert scores[NUM_SPECIAL:].tolist() == [3, 2, NEG, 0, 0]
    ranks = target_rank(scores[None].expand(3, -1), torch.tensor([a, b, d]))
    assert ranks.tolist() == [1, 2, 4]  # d ties with every other unscored product


def test_repeat_metrics_follow_from_the_inputs_alone(tmp_path):
    """Recall and MRR recomputed by reading each input as a list, with no model."""
    dm = MicroDataModule(SyntheticSource(n_sessions=300, n_items=60, n_categories=6),
                         features="sku", cache_dir=str(tmp_path))
    dm.setup()
    examples = dm.dataset("train")
    b = examples[list(range(len(examples)))]
    hits, rr = np.zeros(len(KS)), np.zeros(len(KS))
    for items, length, target in zip(b["item"], b["length"], b["target"], strict=True):
        seq = [i for i in items[:length].tolist() if i >= NUM_SPECIAL]
        earlier = list(dict.fromkeys(reversed(seq)))[1:]  # most recent first, last left out
        if target.item() in earlier:
            rank = earlier.index(target.item()) + 1
            hits += [rank <= k for k in KS]
            rr += [1 / rank if rank <= k else 0 for k in KS]
    assert hits[-1] > 0.3 * len(examples)  # repeats are common in the synthetic sessions
    metrics = RankingMetrics()
    metrics.update(Repeat(dm.n_items).ranked(b), b["target"])
    got = metrics.compute()
    for i, k in enumerate(KS):
        assert got[f"recall@{k}"].item() == pytest.approx(hits[i] / len(examples))
        assert got[f"mrr@{k}"].item() == pytest.approx(rr[i] / len(examples))


# -- S-KNN --------------------------------------------------------------------------------------
SESSIONS = ["abc", "aba", "acd", "bd", "ae"]


def test_sknn_sums_the_cosine_of_the_k_nearest_sessions(tmp_path, caplog):
    dm, ids = training_data(SESSIONS, tmp_path)
    with caplog.at_level(logging.INFO):
        model = fitted(SessionKNN, dm, k=3)
    assert "no timestamps, so sample_size=1000 is not applied" in caplog.text
    # input {a, b} (the unknown product left out); cosine to each session:
    # abc 2/sqrt(6), aba 2/2, acd 1/sqrt(6), bd 1/2, ae 1/2; the third neighbour is a tie
    # between bd and ae, broken towards the later session, ae
    abc = 2 / math.sqrt(6)
    expected = {"a": 1 + abc + 0.5, "b": 1 + abc, "c": abc, "d": 0, "e": 0.5}
    got = scores_by_name(model(batch([ids["a"], UNK, ids["b"]]))[0], ids)
    assert got == pytest.approx(expected)
    expected["b"] = NEG  # the input's last product
    assert scores_by_name(model.ranked(batch([ids["a"], ids["b"]]))[0], ids) == pytest.approx(
        expected)


def test_sknn_samples_the_most_recent_candidates_where_sessions_have_time(tmp_path):
    dm, ids = training_data(["ab", "abc", "bd", "ce"], tmp_path, days=[0, 1, 2, 3])
    query = batch([ids["a"], ids["b"]])
    # candidates ab, abc, bd (ce shares nothing); the 2 most recent: abc and bd
    abc = 2 / math.sqrt(6)
    got = scores_by_name(fitted(SessionKNN, dm, k=2, sample_size=2)(query)[0], ids)
    assert got == pytest.approx({"a": abc, "b": abc + 0.5, "c": abc, "d": 0.5, "e": 0})
    # no sampling: the two most similar, ab (1) and abc
    got = scores_by_name(fitted(SessionKNN, dm, k=2, sample_size=None)(query)[0], ids)
    assert got == pytest.approx({"a": 1 + abc, "b": 1 + abc, "c": abc, "d": 0, "e": 0})


def dense_sknn(train, n_items: int, item: torch.Tensor, length: torch.Tensor, k: int,
               sample_size: int | None) -> np.ndarray:
    """S-KNN written out session by session over a dense session x product matrix."""
    sessions = np.split(train.tokens[:, 0], train.session_end[:-1])
    contains = np.zeros((len(sessions), n_items))  # (S, N)
    for s, products in enumerate(sessions):
        contains[s, products] = 1
    recency = np.empty(len(sessions))
    recency[np.argsort(train.session_time, kind="stable")] = np.arange(len(sessions))
    out = np.zeros((item.size(0), n_items))
    for row in range(item.size(0)):
        query = np.zeros(n_items)
        query[[i for i in item[row, :length[row]].tolist() if i >= NUM_SPECIAL]] = 1
        shared = contains @ query  # (S,)
        candidates = np.flatnonzero(shared)
        if sample_size is not None:
            candidates = candidates[np.argsort(recency[candidates])[::-1][:sample_size]]
        sim = shared[candidates] / np.sqrt(query.sum() * contains[candidates].sum(1))
        near = np.lexsort((-recency[candidates], -sim))[:k]
        out[row] = sim[near] @ contains[candidates[near]]
    out[:, :NUM_SPECIAL] = NEG
    return out


@pytest.mark.parametrize("k, sample_size", [(10, None), (5, 20)])
def test_sknn_matches_a_dense_computation(tmp_path, k, sample_size):
    dm = MicroDataModule(SyntheticSource(n_sessions=400, n_items=60, n_categories=6),
                         features="sku", cache_dir=str(tmp_path))
    dm.setup()
    train_split = dm.prepared.splits["train"]
    assert np.isfinite(train_split.session_time).all()  # synthetic sessions have time
    model = fitted(SessionKNN, dm, k=k, sample_size=sample_size)
    for split in ("train", "test"):
        examples = dm.dataset(split)
        b = examples[list(range(min(len(examples), 400)))]
        reference = dense_sknn(train_split, dm.n_items, b["item"], b["length"], k, sample_size)
        assert np.allclose(model(b).numpy(), reference, rtol=1e-5, atol=1e-6)


# -- V-SKNN -------------------------------------------------------------------------------------
def test_vsknn_weights_recent_products_and_neighbours(tmp_path):
    dm, ids = training_data(SESSIONS, tmp_path)
    model = fitted(VSKNN, dm, k=3)
    # input a c a b: 4 visits, weights a 3/4 (its last visit), c 2/4, b 4/4; 3 products.
    # sim: abc (3/4 + 2/4 + 1) / 3 = 9/12, aba (3/4 + 1) / 3 = 7/12, acd (3/4 + 2/4) / 3 = 5/12,
    # bd 4/12, ae 3/12: the neighbours are abc, aba and acd. abc and aba hold b, the last
    # visit (divided by 1); acd's latest shared product is a, one visit back (divided by 2).
    expected = {"a": 9 / 12 + 7 / 12 + 5 / 24, "b": 9 / 12 + 7 / 12, "c": 9 / 12 + 5 / 24,
                "d": 5 / 24, "e": 0}
    got = scores_by_name(model(batch([ids["a"], ids["c"], ids["a"], ids["b"]]))[0], ids)
    assert got == pytest.approx(expected)


# -- STAN ---------------------------------------------------------------------------------------
STAN_SESSIONS, STAN_DAYS = ["xab", "bcab", "cd", "adx"], [0, 2, 3, 4]


def test_stan_applies_its_three_decays(tmp_path):
    dm, ids = training_data(STAN_SESSIONS, tmp_path, days=STAN_DAYS)
    model = fitted(STAN, dm, k=2, sample_size=None, lambda1=1.0, lambda2=1.0, lambda3=1.0)
    # input a b: weights a e^-1 (one visit back), b 1; |input| = sqrt(e^-2 + 1).
    # cosine: xab and bcab (e^-1 + 1) / (|input| sqrt 3), adx e^-1 / (|input| sqrt 3); cd none.
    # recency, from the newest candidate adx (day 4): xab e^-4, bcab e^-2, adx 1, so the two
    # neighbours are adx and bcab.
    norm = math.sqrt(e(-2) + 1) * math.sqrt(3)
    bcab, adx = (e(-1) + 1) * e(-2) / norm, e(-1) / norm
    # inside bcab (b1 c2 a3 b4) the latest shared product is b at 4: a 1 away, c 2, b 0;
    # inside adx (a1 d2 x3) it is a at 1: d 1 away, x 2
    expected = {"a": bcab * e(-1) + adx, "b": bcab, "c": bcab * e(-2), "d": adx * e(-1),
                "x": adx * e(-2)}
    query = batch([ids["a"], ids["b"]])
    assert scores_by_name(model(query)[0], ids) == pytest.approx(expected)

    # without the recency decay the neighbours are the two most similar: xab and bcab
    # (x1 a2 b3: the latest shared product is b at 3)
    plain = fitted(STAN, dm, k=2, sample_size=None, lambda1=1.0, lambda2=None, lambda3=1.0)
    xab = bcab = (e(-1) + 1) / norm
    expected = {"a": (xab + bcab) * e(-1), "b": xab + bcab, "c": bcab * e(-2), "d": 0,
                "x": xab * e(-2)}
    assert scores_by_name(plain(query)[0], ids) == pytest.approx(expected)


def test_stan_skips_the_recency_decay_without_timestamps(tmp_path, caplog):
    dm, ids = training_data(STAN_SESSIONS, tmp_path)
    with caplog.at_level(logging.INFO):
        model = fitted(STAN, dm, k=2, lambda1=1.0, lambda2=1.0, lambda3=1.0)
    assert "recency decay (lambda2=1.0 days) is skipped" in caplog.text
    timed, _ = training_data(STAN_SESSIONS, tmp_path / "timed", days=STAN_DAYS)
    plain = fitted(STAN, timed, k=2, sample_size=None, lambda1=1.0, lambda2=None, lambda3=1.0)
    query = batch([ids["a"], ids["b"]])
    assert torch.allclose(model(query), plain(query))


@pytest.mark.parametrize("cls", [SessionKNN, VSKNN, STAN])
@pytest.mark.parametrize("sample_size", [1000, None])
def test_an_input_of_unknown_products_has_no_neighbours(cls, sample_size, tmp_path):
    dm, ids = training_data(STAN_SESSIONS, tmp_path, days=STAN_DAYS)
    model = fitted(cls, dm, sample_size=sample_size)
    scores = model(batch([UNK, UNK], [ids["c"]]))  # (2, N)
    assert torch.all(scores[0, NUM_SPECIAL:] == 0)
    assert scores[1, ids["d"]] > 0  # the other input in the batch still gets its neighbours
    assert torch.all(model(batch([UNK]))[0, NUM_SPECIAL:] == 0)  # nothing to search at all


def test_knn_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="k >= 1"):
        SessionKNN(10, k=0)
    with pytest.raises(ConfigError, match="sample_size >= k"):
        VSKNN(10, k=100, sample_size=50)
    with pytest.raises(ConfigError, match="lambda3 > 0 or null"):
        STAN(10, lambda3=0)


# -- the exact search without sampling --------------------------------------------------------
LETTERS = "abcdefghijkl"


def random_sessions(seed: int, n: int) -> list[str]:
    """`n` sessions over a dozen products: many equal sessions, popular pairs, long lists."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(LETTERS), size=rng.integers(2, 8))) for _ in range(n)]


def random_inputs(seed: int, ids: dict[str, int], n: int) -> dict[str, torch.Tensor]:
    """`n` inputs of 1-9 micro-behaviors, repeats, revisits and unknown products included."""
    rng = np.random.default_rng(seed)
    pool = [ids[c] for c in LETTERS if c in ids] + [UNK]
    return batch(*[rng.choice(pool, size=rng.integers(1, 10)).tolist() for _ in range(n)])


def every_candidate(model, query, weight) -> Pairs:
    """The search before the exact one: every session that shares a product with the input,
    from one sparse product over all the training sessions, all of them compared."""
    B, N, S = query.visits.size, model.hparams.n_items, model._size.size
    session = np.repeat(np.arange(S), model._size)
    index = sp.csr_matrix((np.ones(session.size), (model._item, session)), shape=(N, S))
    shared = (sp.csr_matrix((weight, (query.row, query.item)), shape=(B, N)) @ index).tocoo()
    newest = np.full(B, -1)
    np.maximum.at(newest, shared.row, shared.col)
    pairs = Pairs(row=shared.row.astype(np.int64), session=shared.col, weight=shared.data,
                  newest=newest)
    pairs.sim = model.similarity(query, weight, pairs)
    pairs.floor = np.full(B, -np.inf)
    return pairs


EXACT_CASES = [(cls, timed, k) for cls in (SessionKNN, VSKNN, STAN) for timed in (False, True)
               for k in (1, 4, 30)]


@pytest.mark.parametrize("cls, timed, k", EXACT_CASES)
def test_the_exact_search_equals_comparing_every_candidate_to_the_bit(cls, timed, k, tmp_path):
    sessions = random_sessions(k, 300)
    days = np.random.default_rng(k).integers(0, 3, len(sessions)).tolist() if timed else None
    dm, ids = training_data(sessions, tmp_path, days)  # equal times where timed: more ties
    options = {"lambda1": 0.7, "lambda2": 0.5, "lambda3": 1.5} if cls is STAN else {}
    model = fitted(cls, dm, k=k, sample_size=None, **options)
    query = random_inputs(k, ids, 200)
    got = model(query)
    q = inputs(query, model.hparams.n_items)
    weight = model.query_weights(q)
    compared, every = model.candidates(q, weight), every_candidate(model, q, weight)
    assert compared.row.size < every.row.size  # the point: some are never compared
    model.candidates = lambda q, w: every_candidate(model, q, w)
    assert torch.equal(got, model(query))


def written_out(name: str, train, items: list[int], k: int, n_items: int) -> np.ndarray:
    """(N,) one input's scores session by session, from the models' definitions (docs/
    baselines.md) with STAN's lambdas 0.7, 0.5 and 1.5."""
    def visits(seq):  # macro interactions on known products; last position of each
        seq = [i for i in seq if i >= NUM_SPECIAL]
        seq = [i for n, i in enumerate(seq) if n == 0 or seq[n - 1] != i]
        return len(seq), {i: p for p, i in enumerate(seq, 1)}

    length, pos = visits(items)
    w = {"sknn": {i: 1.0 for i in pos}, "vsknn": {i: p / length for i, p in pos.items()},
         "stan": {i: e((p - length) / 0.7) for i, p in pos.items()}}[name]
    norm = math.sqrt(sum(w[i] ** 2 for i in sorted(pos)))
    sessions = [visits(s)[1] for s in np.split(train.tokens[:, 0], train.session_end[:-1])]
    time, timed = train.session_time, bool(np.isfinite(train.session_time).all())
    recency = np.argsort(np.argsort(time, kind="stable"), kind="stable")
    candidates = []
    for n, where in enumerate(sessions):
        shared = [i for i in sorted(where) if i in pos]
        total = sum((w[i] for i in shared), 0.0)
        if not shared or total == 0:
            continue
        sim = {"sknn": total / math.sqrt(len(pos) * len(where)), "vsknn": total / len(pos),
               "stan": total / (norm * math.sqrt(len(where)))}[name]
        candidates.append((sim, recency[n], n, shared))
    if name == "stan" and timed and candidates:
        newest = max(time[n] for _, _, n, _ in candidates)
        candidates = [(sim * e(-(newest - time[n]) / (0.5 * DAY)), r, n, shared)
                      for sim, r, n, shared in candidates]
    scores = np.zeros(n_items)
    for sim, _, n, shared in sorted(candidates, key=lambda c: (-c[0], -c[1]))[:k]:
        anchor = max(sessions[n][i] for i in shared)  # STAN: the latest shared position in n
        for j, p in sessions[n].items():
            scores[j] += {"sknn": sim, "stan": sim * e(-abs(p - anchor) / 1.5),
                          "vsknn": sim / (length - max(pos[i] for i in shared) + 1)}[name]
    scores[:NUM_SPECIAL] = NEG
    return scores


@pytest.mark.parametrize("name, timed", [(n, t) for n in ("sknn", "vsknn", "stan")
                                         for t in (False, True)])
def test_the_exact_search_follows_the_formulas_written_out(name, timed, tmp_path):
    sessions = random_sessions(7, 200)
    days = np.random.default_rng(7).integers(0, 4, len(sessions)).tolist() if timed else None
    dm, ids = training_data(sessions, tmp_path, days)
    cls, options = MODELS[name], {"lambda1": 0.7, "lambda2": 0.5, "lambda3": 1.5}
    model = fitted(cls, dm, k=5, sample_size=None, **(options if name == "stan" else {}))
    query = random_inputs(7, ids, 60)
    got = model(query).numpy()
    for row in range(got.shape[0]):
        items = query["item"][row, :query["length"][row]].tolist()
        expected = written_out(name, dm.prepared.splits["train"], items, 5, dm.n_items)
        assert np.allclose(got[row], expected, rtol=1e-5, atol=1e-7), (row, items)


def test_lone_lists_keep_near_ties_together_where_keys_round():
    # keys of one product's sessions, best first: 3.0, 3.0 - 1e-12, 2.0, 2.0 - 2e-12, 1.0
    key = np.array([3.0, 3.0 - 1e-12, 2.0, 2.0 - 2e-12, 1.0])
    ptr, item = np.arange(6), np.full(5, NUM_SPECIAL)  # five sessions of one product each
    lists = product_lists(ptr, item, NUM_SPECIAL + 1, key, margin=1e-9)
    assert lists.session.tolist() == [0, 1, 2, 3, 4]
    assert lists.run_end.tolist() == [2, 2, 4, 4, 5]  # a run ends where the keys part
    assert lists.latest[NUM_SPECIAL] == 4
    exact = product_lists(ptr, item, NUM_SPECIAL + 1, np.zeros(5), margin=None)
    assert exact.session.tolist() == [4, 3, 2, 1, 0] and exact.run_end is None  # newest first


def test_several_shared_products_are_summed_in_product_order_to_the_bit(tmp_path):
    dm, ids = training_data(random_sessions(3, 300), tmp_path)
    model = fitted(SessionKNN, dm, sample_size=None)
    q = inputs(random_inputs(3, ids, 100), model.hparams.n_items)
    weight = np.random.default_rng(3).random(q.item.size) * 10.0 ** np.arange(q.item.size % 7)[
        np.arange(q.item.size) % (q.item.size % 7 or 1)]  # magnitudes apart: order shows
    row, session, total = shared_by_several(q, weight, model._pairs, model.hparams.n_items,
                                            model._size.size)
    expected = {}
    for r in range(q.visits.size):
        mine = {i: w for i, w, rr in zip(q.item, weight, q.row, strict=True) if rr == r}
        for n in range(model._size.size):
            shared = sorted(set(model._item[model._ptr[n]:model._ptr[n + 1]]) & set(mine))
            if len(shared) >= 2:
                expected[r, n] = 0.0
                for i in shared:  # one by one, the smallest product first
                    expected[r, n] += mine[i]
    assert list(zip(row.tolist(), session.tolist(), strict=True)) == sorted(expected)
    assert total.tolist() == [expected[key] for key in sorted(expected)]  # exact, not close


def test_a_session_sharing_one_product_wins_a_tie_with_the_kth_as_the_newer(tmp_path):
    dm, ids = training_data(["ab", "jx"], tmp_path, days=[0, 1])
    model = fitted(VSKNN, dm, k=1, sample_size=None)
    # input a b j: weights 1/3, 2/3, 1 over 3 products; ab (two shared) 1/3, jx (one) 1/3
    assert (1 / 3 + 2 / 3) / 3 == 1 / 3
    got = scores_by_name(model(batch([ids["a"], ids["b"], ids["j"]]))[0], ids)
    assert got == pytest.approx({"a": 0, "b": 0, "j": 1 / 3, "x": 1 / 3})  # jx, the newer


def test_stan_lets_the_similarities_order_sessions_whose_keys_nearly_tie(tmp_path):
    """Two sessions sharing only j with the input, whose keys (time and size) order them
    one way and whose similarities, rounded, the other: the search reads both."""
    scale = 1e11 * DAY  # lambda2 = 1e11 days: the time term is as fine as the rounding
    newer = 4 * 10 ** 15
    near = int(newer + 0.5 * scale * math.log(2 / 3))
    older = np.arange(near - 300, near + 300, dtype=np.float64)  # (C,)
    time, size = np.stack([older, np.full_like(older, newer)], 1), np.array([2.0, 3.0])
    key = time / scale - 0.5 * np.log(size)  # (C, 2) as STAN.lone_order
    sim = 1 / np.sqrt(size) * np.exp(-(newer - time) / scale)  # (C, 2) as STAN.similarity
    flips = np.flatnonzero((key[:, 0] > key[:, 1]) & (sim[:, 0] < sim[:, 1]))
    assert flips.size  # the keys put the older session first, the similarities the newer
    rows = [(0, 0, "j", int(older[flips[0]])), (0, 1, "x", int(older[flips[0]])),
            (1, 0, "j", newer), (1, 1, "y", newer), (1, 2, "z", newer)]
    events = pl.DataFrame(rows, schema={"session": pl.Int64, "pos": pl.Int32,
                                        "item": pl.String, "ts": pl.Int64}, orient="row")
    dm = MicroDataModule(FrameSource(events), features="sku", split=(1.0, 0.0, 0.0),
                         cache_dir=str(tmp_path))
    dm.setup()
    ids = {name: i + NUM_SPECIAL for i, name in enumerate(dm.prepared.items)}
    model = fitted(STAN, dm, k=1, sample_size=None, lambda2=1e11)
    lists = model._lists
    assert lists.session[lists.ptr[ids["j"]]:lists.ptr[ids["j"] + 1]].tolist() == [0, 1]
    query = batch([ids["j"]])
    got = model(query)
    assert got[0, ids["y"]] > 0 and got[0, ids["x"]] == 0  # the newer one, jyz, is nearest
    model.candidates = lambda q, w: every_candidate(model, q, w)
    assert torch.equal(got, model(query))


# -- through a real run -------------------------------------------------------------------------
MODELS = {"repeat": Repeat, "sknn": SessionKNN, "vsknn": VSKNN, "stan": STAN}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("name, options", [(name, []) for name in MODELS] + [
    ("stan", ["model.sample_size=null"])])  # the exact search's indexes are rebuilt on load
def test_a_knn_model_goes_through_train_and_reloads_identically(name, options, tmp_path,
                                                                shared_cache):
    data = [o for o in TINY if not o.startswith("model.")]  # the tiny sizes are RIB's
    cfg = compose_cfg(tmp_path, [*data, f"model={name}", f"cache_dir={shared_cache}", *options],
                      tiny=False)
    assert cfg.features.name == "sku" and "encoder" not in cfg and "attention" not in cfg
    metrics = train(cfg)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["epochs"] == 0 and 0 < metrics["test/recall@20"] <= 1

    reloaded = MODELS[name].load_from_checkpoint(tmp_path / "checkpoints" / "best.ckpt")
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    fresh = hydra.utils.instantiate(cfg.model, n_items=dm.n_items)
    fresh.fit(dm)
    test = RankingMetrics()
    with torch.no_grad():
        for b in dm.test_dataloader():
            scores = reloaded.ranked(b)
            assert torch.equal(scores, fresh.ranked(b))
            test.update(scores, b["target"])
    again = test.compute()
    assert again["recall@20"].item() == pytest.approx(metrics["test/recall@20"])
    assert again["mrr@20"].item() == pytest.approx(metrics["test/mrr@20"])


def test_the_results_table_names_the_peers_after_the_papers_baselines(tmp_path):
    names = {"repeat": "Repeat", "sknn": "S-KNN", "vsknn": "V-SKNN", "stan": "STAN"}
    models = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
    configs = {m: compose_cfg(tmp_path, [f"model={m}"], tiny=False) for m in models}
    for model, name in names.items():
        assert row_of(configs[model]) == ("sku", name)
        assert configs[model].table.baseline  # the best baseline may be one of them
    in_order = sorted(models, key=lambda m: configs[m].table.order)
    start = in_order.index("repeat")
    assert in_order[start - 1:start + 4] == ["word2vec_avg", *names]
    assert in_order.index("stan") < in_order.index("narm") < in_order.index("rib")
