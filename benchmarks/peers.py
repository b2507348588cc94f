"""Training speed of the neural models (GRU4Rec, NARM, SASRec, RepeatNet, RIB, HUP, MKM-SR,
EMBSR) in sequences/s,
beside RecBole 1.2.1's GRU4Rec, NARM and SASRec on the very same batches, in one run.

    python benchmarks/peers.py                       # the JD Appliances sample and paper scale
    python benchmarks/peers.py --skip-paper          # the JD sample only (a few minutes)
    python benchmarks/peers.py --sessions 100000 --items 20000 --steps 5   # a quick look
    python benchmarks/peers.py --skip-paper --recbole-python .venv-recbole/bin/python

Each model trains on the same batches of the data module's training split (batch 2048,
length-bucketed as in every run, 2 threads, autograd anomaly detection off): a few warm-up
steps, then `--steps` timed steps of what `training_step` does with the full softmax (loss,
backward, Adam). Sizes are RecBole 1.2's defaults: embedding 64 and hidden 128 for GRU4Rec,
NARM and RepeatNet; SASRec width 64, 2 blocks, 2 heads; RIB at its own defaults with every
micro-behavior.

With `--recbole-python`, RecBole's GRU4Rec, NARM and SASRec train beside microrec's rows of the
same name, in a subprocess of that interpreter (benchmarks/recbole_side.py, which imports
RecBole and not microrec): the batches go to an .npz that both sides read, and each round
times a microrec model and RecBole's same model back to back (which goes first alternates
from round to round), so a change of load hits both. RecBole's pins (numpy<2 among them) are
not microrec's, so it lives in a venv of its own, never a dependency of microrec:

    python3.11 -m venv .venv-recbole
    .venv-recbole/bin/pip install torch==2.13.0 'recbole==1.2.1' 'numpy<2'

Prints one JSON line per figure (medians over `--rounds`, the ratio the median of each round's
microrec/RecBole ratio), then a table. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
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
    # the micro-behavior models at their own defaults, with every micro-behavior
    ("HUP (full)", "microrec.models.hup.HUP", dict(features="full", init="random")),
    ("MKM-SR (full)", "microrec.models.mkmsr.MKMSR", dict(features="full")),
    ("EMBSR (full)", "microrec.models.embsr.EMBSR", dict(features="full")),
]
# the rows RecBole 1.2.1 also has, by label: timed beside it with --recbole-python
RECBOLE_PEERS = ("GRU4Rec", "NARM", "SASRec")


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


def write_batches(batches: list[dict], n_items: int, path: Path) -> list[dict]:
    """Save the batches (every (B, T) channel, `length`, `target`) for both sides to read,
    and read them back: microrec trains on what it wrote, as RecBole does."""
    import numpy as np
    import torch

    arrays = {f"{key}_{i}": value.numpy() for i, batch in enumerate(batches)
              for key, value in batch.items() if key != "index"}
    np.savez(path, n_items=np.int64(n_items), **arrays)
    data = np.load(path)
    return [{key: torch.from_numpy(data[f"{key}_{i}"]) for key in batch if key != "index"}
            for i, batch in enumerate(batches)]


class RecBoleSide:
    """RecBole's models, trained in a subprocess of another interpreter on the same .npz."""

    def __init__(self, python: str, batches: Path, args):
        script = Path(__file__).with_name("recbole_side.py")
        self.proc = subprocess.Popen(
            [python, str(script), str(batches), "--threads", str(args.threads),
             "--warmup", str(args.warmup)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._answer(lambda line: line == "ready")  # RecBole's import is not timed

    def _answer(self, done) -> str:
        for line in self.proc.stdout:
            if done(line.strip()):
                return line.strip()
        raise RuntimeError(f"RecBole's side stopped (exit {self.proc.wait()}); see above.")

    def rate(self, label: str) -> dict:
        """{rate, loss, anomaly, threads, recbole, torch, numpy} of RecBole's model `label`."""
        self.proc.stdin.write(label + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self._answer(lambda line: line.startswith("{")))
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


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


def microrec_rate(dm, label: str, batches: list[dict], warmup: int) -> float:
    """Sequences/s of a freshly built microrec model of row `label`."""
    import importlib

    import pytorch_lightning as L

    _, path, kwargs = next(row for row in MODELS if row[0] == label)
    module, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    L.seed_everything(0, verbose=False)
    model = cls(dm.n_items, dm.n_activities, dm.n_dwell, **kwargs)
    return train_rate(model, batches, warmup)


def rounds(dm, batches: list[dict], side: RecBoleSide | None, args) -> dict[str, dict]:
    """Per label, each round's microrec rate, RecBole's rate where it has the model, and
    the load average before each; within a round the two sides of a model run back to back."""
    times = {label: {"microrec": [], "recbole": [], "load": []} for label, _, _ in MODELS}
    for r in range(args.rounds):
        for label, _, _ in MODELS:
            got = times[label]
            got["load"].append(os.getloadavg()[0])
            sides = ["microrec"] + (["recbole"] if side and label in RECBOLE_PEERS else [])
            for which in sides if r % 2 == 0 else sides[::-1]:  # who goes first alternates
                if which == "microrec":
                    got["microrec"].append(microrec_rate(dm, label, batches, args.warmup))
                else:
                    answer = side.rate(label)
                    got["recbole"].append(answer["rate"])
                    got["recbole_env"] = {f"recbole_{k}": answer[k] for k in
                                          ("anomaly", "threads", "version", "torch", "numpy")}
                print(f"round {r + 1}/{args.rounds}: {label}, {which}: {got[which][-1]:,.0f} "
                      f"seq/s", file=sys.stderr, flush=True)
    return times


def measure(dm, scale: str, args) -> None:
    import pytorch_lightning as L
    import torch

    L.seed_everything(0, verbose=False)  # the same batches on every run
    path = args.workdir / f"peers-{scale}-batches.npz"
    batches = write_batches(batches_of(dm, args.warmup + args.steps), dm.n_items, path)
    timed = batches[args.warmup:]
    mean_len = sum(int(b["length"].sum()) for b in timed) / sum(b["length"].numel()
                                                                 for b in timed)
    side = RecBoleSide(args.recbole_python, path, args) if args.recbole_python else None
    try:
        times = rounds(dm, batches, side, args)
    finally:
        if side:
            side.close()
    for label, got in times.items():
        extra = {}
        if got["recbole"]:
            ratios = [m / r for m, r in zip(got["microrec"], got["recbole"], strict=True)]
            extra = dict(recbole=round(statistics.median(got["recbole"]), 2),
                         ratio=round(statistics.median(ratios), 3),
                         recbole_rounds=[round(r) for r in got["recbole"]],
                         ratio_rounds=[round(r, 3) for r in ratios], **got["recbole_env"])
        report(f"{scale} {label}", statistics.median(got["microrec"]), "seq/s",
               catalogue=dm.n_items - 2, batch=args.batch, steps=args.steps,
               mean_length=round(mean_len, 1), rounds=[round(m) for m in got["microrec"]],
               load=[round(x, 1) for x in got["load"]], threads=torch.get_num_threads(),
               anomaly=torch.is_anomaly_enabled(), **extra)


def print_table(args) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"training sequences/s, batch {args.batch}, {args.threads} threads, "
                        f"median of {args.rounds} rounds")
    for col in ("figure", "microrec", "RecBole 1.2.1", "microrec / RecBole", "catalogue",
                "mean input length"):
        table.add_column(col)
    for r in FIGURES:
        theirs = f"{r['recbole']:,.0f}" if "recbole" in r else ""
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
        table.add_row(r["figure"], f"{r['value']:,.0f}", theirs, ratio, f"{r['catalogue']:,}",
                      str(r["mean_length"]))
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jd", type=Path, default=JD_SAMPLE, help="a JD session file")
    parser.add_argument("--skip-paper", action="store_true", help="the JD sample only")
    parser.add_argument("--skip-jd", action="store_true", help="paper scale only")
    parser.add_argument("--sessions", type=int, default=1_060_000, help="paper scale")
    parser.add_argument("--items", type=int, default=115_000, help="paper scale")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps on the JD sample")
    parser.add_argument("--paper-steps", type=int, default=4, help="timed steps at paper scale")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times every model is measured (figures are medians)")
    parser.add_argument("--recbole-python", default=None,
                        help="the python of a venv with RecBole 1.2.1: time its models too")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the processed data and batches here (default: a temp dir)")
    args = parser.parse_args()
    if args.recbole_python and not Path(args.recbole_python).is_file():
        sys.exit(f"error: --recbole-python {args.recbole_python} is no file; make the venv "
                 "as this script's docstring says.")

    import torch

    from microrec.data.loaders import JDSessions
    from microrec.data.module import MicroDataModule
    from microrec.data.synthetic import SyntheticSource

    torch.set_num_threads(args.threads)
    torch.autograd.set_detect_anomaly(False)  # as on RecBole's side, which must turn it off
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="microrec-peers-"))
    common = dict(features="full", batch_size=args.batch, cache_dir=str(args.workdir))
    if not args.skip_jd:
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
    print_table(args)


if __name__ == "__main__":
    main()
