"""Training speed of the neural models (GRU4Rec, NARM, SASRec, RepeatNet, RIB) in sequences/s.

    python benchmarks/peers.py                       # the JD Appliances sample and paper scale
    python benchmarks/peers.py --skip-paper          # the JD sample only (a minute)
    python benchmarks/peers.py --sessions 100000 --items 20000 --steps 5   # a quick look

Each model trains on the same batches of the data module's training split (batch 2048,
length-bucketed as in every run, 2 threads): a few warm-up steps, then `--steps` timed steps
of what `training_step` does with the full softmax (loss, backward, Adam). Sizes are
RecBole 1.2's defaults, to compare with its figures on this kind of machine: embedding 64 and
hidden 128 for GRU4Rec, NARM and RepeatNet; SASRec width 64, 2 blocks, 2 heads; RIB at its
own defaults with every micro-behavior. Prints one JSON line per figure, then a table.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JD_SAMPLE = ROOT.parent / "shared" / "data" / "jd-micro-behaviors" / "JD_Applicances_sample"
FIGURES: list[dict] = []

# (label, class path, arguments): peers on product ids alone, as RecBole runs them
MODELS = [
    ("GRU4Rec", "microrec.models.rib.RIB",
     dict(features="sku", attention=False, init="random", item_dim=64, hidden_size=128)),
    ("NARM", "microrec.models.narm.NARM", dict(features="sku", item_dim=64, hidden_size=128)),
    ("SASRec", "microrec.models.sasrec.SASRec",
     dict(features="sku", item_dim=64, n_blocks=2, n_heads=2, max_len=50)),
    ("RepeatNet", "microrec.models.repeatnet.RepeatNet",
     dict(features="sku", item_dim=64, hidden_size=128)),
    ("RIB (full)", "microrec.models.rib.RIB", dict(features="full", init="random")),
]


def report(name: str, value: float, unit: str, **extra) -> None:
    row = {"figure": name, "value": round(value, 2), "unit": unit, **extra}
    FIGURES.append(row)
    print(json.dumps(row), flush=True)


def batches_of(dm, count: int) -> list[dict]:
    """The first `count` training batches, cycling through epochs if the split is small."""
    out = []
    while len(out) < count:
        out.extend(itertools.islice(dm.train_dataloader(), count - len(out)))
    return out


def train_rate(model, batches: list[dict], warmup: int) -> float:
    """Sequences/s of full-softmax training steps over batches[warmup:]."""
    model.train()
    optimizer = model.configure_optimizers()
    for i, batch in enumerate(batches):
        if i == warmup:
            started = time.perf_counter()
        optimizer.zero_grad()
        model.training_loss(batch).backward()
        optimizer.step()
    seqs = sum(int(b["target"].numel()) for b in batches[warmup:])
    return seqs / (time.perf_counter() - started)


def measure(dm, scale: str, args) -> None:
    import importlib

    import pytorch_lightning as L

    L.seed_everything(0, verbose=False)  # the same batches on every run
    batches = batches_of(dm, args.warmup + args.steps)
    timed = batches[args.warmup:]
    mean_len = sum(int(b["length"].sum()) for b in timed) / sum(b["length"].numel()
                                                                 for b in timed)
    for label, path, kwargs in MODELS:
        module, name = path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        L.seed_everything(0, verbose=False)
        model = cls(dm.n_items, dm.n_activities, dm.n_dwell, **kwargs)
        rate = train_rate(model, batches, args.warmup)
        report(f"{scale} {label}", rate, "seq/s", catalogue=dm.n_items - 2,
               batch=args.batch, steps=args.steps, mean_length=round(mean_len, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jd", type=Path, default=JD_SAMPLE, help="a JD session file")
    parser.add_argument("--skip-paper", action="store_true", help="the JD sample only")
    parser.add_argument("--sessions", type=int, default=1_060_000, help="paper scale")
    parser.add_argument("--items", type=int, default=115_000, help="paper scale")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps on the JD sample")
    parser.add_argument("--paper-steps", type=int, default=4, help="timed steps at paper scale")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the processed data here (default: a temp dir)")
    args = parser.parse_args()

    import torch

    from microrec.data.loaders import JDSessions
    from microrec.data.module import MicroDataModule
    from microrec.data.synthetic import SyntheticSource

    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="microrec-peers-"))
    common = dict(features="full", batch_size=args.batch, cache_dir=str(workdir))
    dm = MicroDataModule(JDSessions(str(args.jd), "jd_appliances"), **common)
    dm.setup()
    measure(dm, "jd", args)
    if not args.skip_paper:
        source = SyntheticSource(n_sessions=args.sessions, n_items=args.items,
                                 n_categories=1000, mean_macros=5.0, module_views=6.0)
        dm = MicroDataModule(source, **common)
        dm.setup()
        args.steps = args.paper_steps
        measure(dm, "paper", args)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"training sequences/s, batch {args.batch}, {args.threads} threads")
    for col in ("figure", "sequences/s", "catalogue", "mean input length"):
        table.add_column(col)
    for r in FIGURES:
        table.add_row(r["figure"], f"{r['value']:,.0f}", f"{r['catalogue']:,}",
                      str(r["mean_length"]))
    Console().print(table)


if __name__ == "__main__":
    main()
