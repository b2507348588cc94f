"""Batch samplers: length bucketing, reproducible order, DDP shards."""

import torch

from microrec.data.batches import EvalBatches, LengthBucketBatches


def test_eval_shards_partition_the_examples():
    shards = [torch.cat(list(EvalBatches(1003, 100, rank=r, world=3))) for r in range(3)]
    together = torch.cat(shards)
    assert sorted(together.tolist()) == list(range(1003))  # each example once, none padded


def test_training_shards_are_disjoint_equal_and_follow_the_seed():
    lengths = torch.randint(1, 50, (1000,), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    ranks = [list(LengthBucketBatches(lengths, 32, rank=r, world=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(LengthBucketBatches(lengths, 32, world=2))
    seen = [set(torch.cat(batches).tolist()) for batches in ranks]
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) >= 1000 - 32  # at most one uneven batch left out

    one = LengthBucketBatches(lengths, 32)
    first, second = torch.cat(list(one)), torch.cat(list(one))
    assert sorted(first.tolist()) == list(range(1000))
    assert not torch.equal(first, second)  # a new order each epoch
    one.set_epoch(0)
    assert torch.equal(torch.cat(list(one)), first)  # the epoch and the seed fix the order
    spread = [float(lengths[b].max() - lengths[b].min()) for b in LengthBucketBatches(lengths, 32)]
    assert sum(spread) / len(spread) < 10  # batches hold similar lengths (random: about 45)


def test_order_works_with_any_initial_seed():
    torch.manual_seed(2**64 - 1)  # the largest seed torch accepts (a fresh process picks any)
    assert len(list(LengthBucketBatches(torch.ones(10, dtype=torch.long), 4))) == 3


def test_a_small_eval_split_still_gives_every_rank_a_batch():
    # one 512-batch would leave rank 1 without one: it would skip the epoch end and leave
    # rank 0 waiting in the metric sync
    shards = [list(EvalBatches(101, 512, rank=r, world=2)) for r in range(2)]
    assert all(len(s) == 1 for s in shards)
    assert sorted(torch.cat([s[0] for s in shards]).tolist()) == list(range(101))
    assert [b.numel() for b in EvalBatches(101, 512)] == [101]  # one process: unchanged
    assert len(EvalBatches(1, 512, rank=1, world=2)) == 0  # fewer examples than ranks
