"""Cost of RIB's output heads per training step at paper scale. Prints one JSON line per
configuration, then a table with each one's time relative to the paper's softmax head.

    python benchmarks/heads.py                                  # CPU, paper scale
    python benchmarks/heads.py --device cuda                    # on a GPU
    python benchmarks/heads.py --items 20000 --steps 5          # a quick look
    python benchmarks/heads.py --heads softmax "repeat-explore, tied, neighbours"

A step is what training does per batch: the loss of `RIB.training_loss` (loss=full) or
`RIB.sampled_loss` (loss=sampled, `--negatives` popularity-drawn negatives), backward and
the optimizer step(s), on the same random batches for every configuration, which take their
steps in turn on each batch (a change in a shared machine's load falls on all of them
alike); wall and process CPU time (all threads) are both reported. The batches hold
`--batch` inputs of 1..`--max-len` micro-behaviors over `--items` products (the paper's
Appliances catalogue: 115k), features=full, attention on, the model's default sizes.
Products are drawn with the same Zipf-like popularity in the batches as in the random
training sessions the count experts (model.neighbours, model.transitions) are fitted on,
so the inputs' products have full partner lists, as on real data (the experts' work grows
with them), and in the targets the sampled loss draws its negatives from (`set_sampling`),
so many of them are partners of the inputs. The experts' fitting (once per run) is not timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from microrec.data.protocol import SplitArrays  # noqa: E402
from microrec.data.schema import NUM_SPECIAL  # noqa: E402
from microrec.models.rib import RIB  # noqa: E402

CONFIGS = {  # name: RIB arguments
    "softmax": dict(head="softmax"),
    "softmax, tied": dict(head="softmax", tied=True),
    "repeat-explore": dict(head="repeat_explore"),
    "repeat-explore, tied": dict(head="repeat_explore", tied=True),
    "repeat-explore, tied, neighbours": dict(head="repeat_explore", tied=True, neighbours=100),
    "repeat-explore, tied, neighbours, transitions": dict(head="repeat_explore", tied=True,
                                                          neighbours=100, transitions=100),
}
N_ACTIVITIES, N_DWELL = 12, 8


def popular(rng, size, n_items: int) -> np.ndarray:
    """Product ids drawn with Zipf-like popularity (id 2 the most popular)."""
    return NUM_SPECIAL + (rng.zipf(1.3, size) - 1) % (n_items - NUM_SPECIAL)


def random_sessions(args, rng) -> tuple[SplitArrays, int]:
    """A training split of random sessions (Zipf-like products), for the expert's counts."""
    lengths = rng.integers(2, 2 * args.session_len, args.sessions)
    items = popular(rng, lengths.sum(), args.items)
    tokens = np.zeros((items.size, 3), dtype=np.int32)
    tokens[:, 0] = items
    session_end = np.cumsum(lengths)
    first = np.repeat(session_end - lengths, lengths - 1)  # one example per later position
    n = first.size
    empty = np.zeros(n, dtype=np.int64)
    return SplitArrays(tokens, first, first + 1, empty, empty, empty, session_end,
                       np.full(lengths.size, np.nan)), n


def random_batches(args, n_examples: int, rng, device) -> list[dict[str, torch.Tensor]]:
    """Inputs and targets with the sessions' popularity: an input's products are then mostly
    popular ones, whose partner lists (the expert's work) are full, as on real data."""
    batches = []
    for _ in range(args.warmup + args.steps):
        length = torch.as_tensor(rng.integers(1, args.max_len + 1, args.batch))
        shape = (args.batch, int(length.max()))
        real = torch.arange(shape[1])[None, :] < length[:, None]  # (B, T)
        item = torch.as_tensor(popular(rng, shape, args.items)) * real
        activity, dwell = (torch.as_tensor(rng.integers(NUM_SPECIAL, high, shape)) * real
                           for high in (N_ACTIVITIES, N_DWELL))
        batch = {"item": item, "activity": activity, "dwell": dwell, "length": length,
                 "target": torch.as_tensor(popular(rng, args.batch, args.items)),
                 "index": torch.as_tensor(rng.integers(0, n_examples, args.batch))}
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


def build(name: str, loss: str, args, train: SplitArrays, log_q_source, device):
    """The configuration's model, in training mode, and its optimizers."""
    torch.manual_seed(0)
    model = RIB(args.items, N_ACTIVITIES, N_DWELL, init="random", loss=loss,
                n_negatives=args.negatives, **CONFIGS[name])
    model.head.fit(train)  # the experts' counts, where the head has them
    model = model.to(device)
    model.set_sampling(log_q_source)
    model.train()
    optimizers = model.configure_optimizers()
    return model, optimizers if isinstance(optimizers, list) else [optimizers]


def step(model: RIB, optimizers, batch, args) -> None:
    """One training step: the loss, backward, the optimizer steps."""
    if model.sampled:
        negatives = torch.multinomial(model.log_q.exp(), args.negatives, replacement=True)
        loss = model.sampled_loss(batch, negatives)
    else:
        loss = model.training_loss(batch)
    for opt in optimizers:
        opt.zero_grad()
    loss.backward()
    for opt in optimizers:
        opt.step()


def time_steps(models: dict, batches, args, device) -> dict[str, tuple[float, float]]:
    """Each configuration's mean wall and process CPU seconds per step over
    batches[warmup:]. On each batch every configuration steps in turn, so that a change in
    the load of a shared machine falls on all of them alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    spent = {name: [0.0, 0.0] for name in models}
    for i, batch in enumerate(batches):
        for name, (model, optimizers) in models.items():
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            step(model, optimizers, batch, args)
            sync()
            if i >= args.warmup:
                spent[name][0] += time.perf_counter() - wall
                spent[name][1] += time.process_time() - cpu
    return {name: (wall / args.steps, cpu / args.steps) for name, (wall, cpu) in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=115_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=200_000,
                        help="random training sessions the co-occurrence counts come from")
    parser.add_argument("--session-len", type=int, default=8)
    parser.add_argument("--negatives", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--heads", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        help="the configurations to time (softmax, the baseline, always)")
    parser.add_argument("--losses", nargs="+", choices=["full", "sampled"],
                        default=["full", "sampled"])
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    train, n_examples = random_sessions(args, rng)
    batches = random_batches(args, n_examples, rng, device)
    log_q_source = popular(rng, 100_000, args.items)  # training targets: the sampling's q
    rows = []
    heads = ["softmax"] + [name for name in args.heads if name != "softmax"]
    for loss in args.losses:
        models = {name: build(name, loss, args, train, log_q_source, device) for name in heads}
        for name, (wall, cpu) in time_steps(models, batches, args, device).items():
            row = {"loss": loss, "head": name, "ms_per_step": round(1000 * wall, 2),
                   "cpu_ms_per_step": round(1000 * cpu, 2),
                   "parameters": sum(p.numel() for p in models[name][0].parameters()),
                   "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)",
                   "items": args.items, "batch": args.batch}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del models
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    """Each row's times and their ratios to the softmax head with the same loss."""
    print("\n| loss | head | ms / step | x softmax | CPU ms / step | x softmax | parameters |"
          "\n|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["loss"] == r["loss"] and b["head"] == "softmax")
        print(f"| {r['loss']} | {r['head']} | {r['ms_per_step']:.1f} | "
              f"{r['ms_per_step'] / base['ms_per_step']:.2f} | {r['cpu_ms_per_step']:.1f} | "
              f"{r['cpu_ms_per_step'] / base['cpu_ms_per_step']:.2f} | {r['parameters']:,} |")


if __name__ == "__main__":
    main()
