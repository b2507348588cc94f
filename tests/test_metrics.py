"""The ranking metric against a brute-force computation, ties included."""

import polars as pl
import pytest
import torch

from microrec.data.schema import NUM_SPECIAL, UNK
from microrec.metrics import KS, MRR, RECALL, K, hits_and_rr
from microrec.models.base import example_results
from microrec.models.ranking import RankingMetrics, target_rank


def brute_force(scores, target, k):
    hits, rr = 0.0, 0.0
    for row, t in zip(scores.tolist(), target.tolist(), strict=True):
        if t < NUM_SPECIAL:
            continue  # unknown product: a miss
        real = row[NUM_SPECIAL:]
        rank = sum(1 for s in real if s >= row[t])  # ties count against the model
        if rank <= k:
            hits += 1
            rr += 1.0 / rank
    return hits / len(target), rr / len(target)


def test_metric_equals_brute_force_with_ties_over_batches():
    g = torch.Generator().manual_seed(0)
    metric = RankingMetrics()
    all_scores, all_targets = [], []
    for _ in range(3):
        scores = torch.randint(0, 6, (40, 50), generator=g).float()  # many ties
        target = torch.randint(NUM_SPECIAL, 50, (40,), generator=g)
        target[:3] = UNK
        metric.update(scores, target)
        all_scores.append(scores)
        all_targets.append(target)
    got = metric.compute()
    scores, target = torch.cat(all_scores), torch.cat(all_targets)
    for k in (5, 10, 20):
        recall, mrr = brute_force(scores, target, k)
        assert abs(got[f"recall@{k}"].item() - recall) < 1e-6
        assert abs(got[f"mrr@{k}"].item() - mrr) < 1e-6


def test_a_tie_with_the_target_costs_a_rank():
    scores = torch.tensor([[0.0, 0.0, 5.0, 5.0, 1.0]])  # target 3 ties with item 2
    metric = RankingMetrics(ks=(1, 2))
    metric.update(scores, torch.tensor([3]))
    out = metric.compute()
    assert out["recall@1"] == 0 and out["recall@2"] == 1 and out["mrr@2"] == 0.5


def test_padding_and_unknown_columns_never_outrank_the_target():
    scores = torch.tensor([[9.0, 9.0, 1.0, 0.0]])
    metric = RankingMetrics(ks=(1,))
    metric.update(scores, torch.tensor([2]))
    assert metric.compute()["mrr@1"] == 1.0


def test_a_non_finite_score_never_improves_a_metric():
    nan, inf = float("nan"), float("inf")
    # rows: the target NaN, +inf, -inf; then a finite target beside NaN and +inf rivals
    scores = torch.tensor([[0.0, 0.0, nan, 1.0, 2.0],
                           [0.0, 0.0, inf, 1.0, 2.0],
                           [0.0, 0.0, -inf, 1.0, 2.0],
                           [0.0, 0.0, 1.0, nan, inf]])
    target = torch.tensor([2, 2, 2, 2])
    assert target_rank(scores, target).tolist() == [4, 4, 4, 1]  # N - 2 + 1 = 4: a miss
    metric = RankingMetrics(ks=(5,))
    metric.update(scores[:3], target[:3])  # a catalogue of 3: every finite target is a hit
    assert metric.compute()["recall@5"] == 0 and metric.compute()["mrr@5"] == 0


def test_a_diverged_model_ranks_nothing_and_its_top_list_is_defined():
    from microrec.models.base import Recommender

    class Diverged(Recommender):
        def forward(self, batch):
            return torch.full((batch["item"].size(0), 30), float("nan"))

    batch = {"item": torch.tensor([[5, 6]]), "length": torch.tensor([2]),
             "target": torch.tensor([7]), "index": torch.tensor([0])}
    model = Diverged()
    ranked = model.ranked(batch)
    assert not ranked.isnan().any()
    assert target_rank(ranked, batch["target"]).item() == 29  # a miss, not rank 0
    assert example_results(batch, ranked)["top"].shape == (1, 20)  # was an IndexError


def test_training_metric_equals_the_one_definition_every_report_uses():
    """RankingMetrics (torch, accumulated) and hits_and_rr (from ranks, what tables,
    breakdowns and figures call) give the same Recall@k and MRR@k, misses included."""
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (60, 25), generator=g).float()  # many ties
    scores[5, 7] = float("nan")  # a non-finite score
    target = torch.randint(NUM_SPECIAL, 25, (60,), generator=g)
    target[:4] = UNK  # unknown products: misses
    metric = RankingMetrics()
    metric.update(scores, target)
    got = metric.compute()
    rank = target_rank(scores, target).numpy().astype(float)
    rank[rank > scores.size(1) - NUM_SPECIAL] = float("nan")  # a miss has no rank
    for k in KS:
        hit, rr = hits_and_rr(pl.Series(rank).fill_nan(None), k)
        assert got[f"recall@{k}"].item() == pytest.approx(hit.mean(), abs=1e-6)
        assert got[f"mrr@{k}"].item() == pytest.approx(rr.mean(), abs=1e-6)
    assert (RECALL, MRR) == (f"recall@{K}", f"mrr@{K}") and K in KS
