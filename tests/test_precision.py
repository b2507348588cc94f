"""trainer.precision=bf16-mixed: training under autocast, evaluation ranking fp32 scores."""

import hydra
import numpy as np
import pytest
import torch

from microrec.data.schema import NUM_SPECIAL
from microrec.models.narm import NARM
from microrec.models.neural import NeuralRecommender
from microrec.models.ranking import RankingMetrics, target_rank
from microrec.models.rib import RIB
from microrec.runs.train import train

BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


def test_bf16_scores_are_ranked_as_fp32_and_a_nan_target_is_still_a_miss(dm):
    model = RIB(dm.n_items, dm.n_activities, dm.n_dwell, init="random").eval()
    batch = next(iter(dm.val_dataloader()))
    target = batch["target"]  # (B,)
    assert target[0] >= NUM_SPECIAL  # a known target: only the NaN can make it a miss
    scores = model(batch).to(torch.bfloat16)  # (B, N)
    scores[0, target[0]] = float("nan")
    ranked = model.ranked(batch, scores)
    assert ranked.dtype == torch.float32
    assert target_rank(ranked, target)[0] == dm.n_items - NUM_SPECIAL + 1  # never rank 0


@torch.no_grad()
def test_evaluation_scores_in_fp32_inside_autocast(dm):
    """What Lightning's bf16-mixed does to a validation step, without Lightning: the scores
    ranked inside autocast equal those outside it, though autocast changes the logits."""
    model = RIB(dm.n_items, dm.n_activities, dm.n_dwell, init="random").eval()
    batch = next(iter(dm.val_dataloader()))
    reference = model.ranked(batch)  # (B, N) fp32, no autocast
    with BF16:
        rounded = model.logits(batch)  # (B, N) products rounded to bf16, + fp32 bias
        inside = model.ranked(batch)
    assert not torch.equal(rounded, model.logits(batch))  # autocast does change the scores
    assert torch.equal(inside, reference)


def record_calls(monkeypatch) -> dict[str, list]:
    """Record the scores the metric receives and whether training steps ran under autocast."""
    seen = {"scores": [], "train_autocast": []}
    update, step = RankingMetrics.update, NeuralRecommender.training_step

    def recording_update(self, scores, target):
        seen["scores"].append(scores.detach().clone())
        return update(self, scores, target)

    def recording_step(self, batch, batch_idx):
        seen["train_autocast"].append(torch.is_autocast_enabled("cpu"))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(RankingMetrics, "update", recording_update)
    monkeypatch.setattr(NeuralRecommender, "training_step", recording_step)
    return seen


RUNS = {  # RIB as its tuned row runs it (full loss), and a peer on the sampled loss
    "rib_repeat_explore": (RIB, ["head=repeat_explore", "model.tied=true",
                                 "model.neighbours=5"], True),
    "narm_sampled": (NARM, ["model=narm", "features=full", "model.loss=sampled",
                            "model.n_negatives=16", "model.item_dim=8", "model.hidden_size=12",
                            "data.source.n_sessions=600", "data.source.n_items=60",
                            "data.source.n_categories=6", "data.batch_size=64",
                            "trainer.max_epochs=1", "callbacks.progress=null"], False),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_a_bf16_mixed_run_trains_in_bf16_and_ranks_fp32_scores(cfg_factory, tmp_path,
                                                               monkeypatch, name):
    model_class, overrides, tiny = RUNS[name]
    seen = record_calls(monkeypatch)
    cfg = cfg_factory("trainer.precision=bf16-mixed", *overrides, tiny=tiny)
    metrics = train(cfg)
    assert seen["train_autocast"] and all(seen["train_autocast"])  # bf16 really trained
    assert all(s.dtype == torch.float32 for s in seen["scores"])
    for stage in ("val", "test"):
        assert 0 < metrics[f"{stage}/recall@20"] <= 1
        assert 0 < metrics[f"{stage}/mrr@20"] <= metrics[f"{stage}/recall@20"]

    # the test scores ranked in the run are the chosen checkpoint's fp32 scores, not the
    # bf16-rounded ones autocast would give (the test above: they differ)
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    model = model_class.load_from_checkpoint(tmp_path / "checkpoints" / "best.ckpt").eval()
    test_batches = list(dm.test_dataloader())
    assert len(seen["scores"]) > len(test_batches)  # validation, then test
    with torch.no_grad():
        for batch, scores in zip(test_batches, seen["scores"][-len(test_batches):],
                                 strict=True):
            np.testing.assert_allclose(model.ranked(batch).numpy(), scores.numpy(), rtol=0,
                                       atol=1e-5)

