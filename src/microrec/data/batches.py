"""Examples and the order they are served in: a split's dataset, length-bucketed training
batches, sharded evaluation batches, and the training loader that resumes mid-epoch."""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from microrec.data.protocol import TOKEN_COLUMNS, SplitArrays


class Examples(Dataset):
    """Examples of one split, served a whole batch per index list (no per-example Python).

    Inputs are right-padded: real tokens first, so a causal encoder's state at position
    length-1 is exactly the state after the last real token.
    """

    def __init__(self, arrays: SplitArrays, max_len: int):
        self.tokens = torch.from_numpy(arrays.tokens)  # (E, 4) int32, TOKEN_COLUMNS
        self.first = torch.from_numpy(arrays.first)  # (N,)
        self.end = torch.from_numpy(arrays.end)  # (N,)
        self.target = torch.from_numpy(arrays.target)  # (N,)
        self.max_len = max_len

    def __len__(self) -> int:
        return self.target.numel()

    def lengths(self) -> torch.Tensor:
        """(N,) input length of every example after truncation to max_len."""
        return (self.end - self.first).clamp(max=self.max_len)

    def __getitem__(self, idx) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        end = self.end[idx]  # (B,)
        start = torch.maximum(self.first[idx], end - self.max_len)  # most recent max_len kept
        length = end - start  # (B,)
        steps = torch.arange(int(length.max()))  # (T,)
        rows = start[:, None] + steps  # (B, T)
        real = steps[None, :] < length[:, None]  # (B, T)
        tok = self.tokens[torch.where(real, rows, 0)] * real[..., None]  # (B, T, 4), pad = 0
        tok = tok.long()
        return {
            **{name: tok[..., c] for c, name in enumerate(TOKEN_COLUMNS)},  # each (B, T)
            "length": length,
            "target": self.target[idx],
            "index": idx,  # (B,) example index in the split, for per-example results
        }


class LengthBucketBatches(Sampler):
    """Random batches of similar input length, so little compute goes to padding.

    Each epoch shuffles all examples, sorts windows of `pool` batches by length, cuts them
    into batches and shuffles the batch order. The order depends only on torch's initial
    seed (set by `seed_everything`) and the epoch, so every DDP rank draws the same order
    and takes its own share: batches rank, rank + world, ..., cut to an equal count so all
    ranks run the same number of steps.
    """

    def __init__(self, lengths: torch.Tensor, batch_size: int, pool: int = 50,
                 rank: int = 0, world: int = 1):
        self.lengths = lengths
        self.batch_size = batch_size
        self.window = batch_size * pool
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.lengths.numel() // self.batch_size) // self.world

    def __iter__(self):
        g = torch.Generator().manual_seed((torch.initial_seed() + 1_000_003 * self.epoch) % 2**63)
        self.epoch += 1  # a new order next time even if no trainer calls set_epoch
        order = torch.randperm(self.lengths.numel(), generator=g)
        batches = []
        for window in order.split(self.window):
            window = window[torch.argsort(self.lengths[window], stable=True)]
            batches.extend(window.split(self.batch_size))
        shuffled = torch.randperm(len(batches), generator=g).tolist()
        for i in shuffled[self.rank::self.world][:len(self)]:
            yield batches[i]


class EvalBatches(Sampler):
    """Consecutive batches in example order; under DDP each rank takes every world-th batch.

    No example is repeated or padded in, so the metric states summed over ranks equal a
    single process's exactly.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        if -(-n // batch_size) < world:
            # a rank without a batch would skip the epoch end and leave the others waiting
            # in the metric sync, so small splits are cut into one smaller batch per rank
            batch_size = max(1, -(-n // world))
        self.batches = torch.arange(n).split(batch_size)[rank::world]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class _SkipFirst(Sampler):
    """A batch sampler that, once, starts its epoch `skip` batches in."""

    def __init__(self, batches: Sampler):
        self.batches = batches
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.skip, None)


class ResumableLoader(DataLoader):
    """A training loader whose place in its epoch is saved with every checkpoint.

    Lightning saves and restores the state of any loader with state_dict/load_state_dict.
    The place is (epoch, batches delivered), counted where batches leave the loader, so
    prefetching by worker processes does not inflate it. Resumed, the epoch's batch order
    (seeded by the epoch) is drawn again and the delivered batches are skipped before
    anything is gathered. The sampler must take `set_epoch`, as Lightning calls it.
    """

    def __init__(self, dataset, sampler: Sampler, **kwargs):
        # DataLoader iterators draw a worker seed from the global RNG unless given their own
        # generator; that extra draw per epoch would shift dropout on resume.
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(dataset, sampler=_SkipFirst(sampler), **kwargs)
        self.place = {"epoch": 0, "batches": 0}
        self._resume_at: dict | None = None

    def __iter__(self):
        # a generator: nothing runs until the first batch is asked for, which Lightning
        # does only after it has called set_epoch for this epoch
        epoch = self.sampler.epoch
        at = self._resume_at
        self._resume_at = None
        self.sampler.skip = at["batches"] if at and at["epoch"] == epoch else 0
        self.place = {"epoch": epoch, "batches": self.sampler.skip}
        for batch in super().__iter__():
            self.place["batches"] += 1
            yield batch

    def state_dict(self) -> dict:
        return dict(self.place)

    def load_state_dict(self, state: dict) -> None:
        self._resume_at = dict(state)
