"""Throughput and memory of microrec at paper scale. Prints one JSON line per figure, then a table.

    python benchmarks/throughput.py                      # paper scale (about 40M micro-behaviors)
    python benchmarks/throughput.py --preprocess-only    # only the two preprocessing figures
    python benchmarks/throughput.py --sessions 20000 --items 5000 --steps 10   # a quick look

Figures: preprocessing (a Parquet event file, and the same events as a JD session text file
-> cached tensors) wall time and peak memory, each in a fresh process; training throughput
of RIB through the Lightning module and through a bare PyTorch loop on the same model,
batches and data (full and sampled softmax); full-ranking evaluation throughput; achieved
GFLOP/s of a training step against a measured SGEMM rate; peak memory of a real
`src/train.py` run at the same scale. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES: list[dict] = []


def report(name: str, value: float, unit: str, **extra) -> None:
    row = {"figure": name, "value": round(value, 4), "unit": unit, **extra}
    FIGURES.append(row)
    print(json.dumps(row), flush=True)


def peak_rss_gib() -> float:
    """This process's peak resident memory.

    Read from VmHWM, not ru_maxrss: Linux carries the parent's peak over fork and exec into a
    child's ru_maxrss (and so into RUSAGE_CHILDREN), so a small child of this benchmark's big
    parent would report the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def source_params(args) -> dict:
    return {"n_sessions": args.sessions, "n_items": args.items, "n_categories": args.categories,
            "mean_macros": args.mean_macros, "module_views": args.module_views, "seed": 0}


# -- stage: preprocessing in a fresh process (its peak memory is its own) --------------------
def preprocess(path: Path, kind: str, cache_dir: Path) -> None:
    """Read `path` (parquet: a canonical table; jd: a JD session file) and build the cache."""
    import polars as pl

    from microrec.data.loaders import JDSessions
    from microrec.data.module import MicroDataModule
    from microrec.data.sources import FrameSource

    started = time.perf_counter()
    source = (FrameSource(pl.read_parquet(path), "paper") if kind == "parquet"
              else JDSessions(str(path), "jd"))
    dm = MicroDataModule(source, cache_dir=str(cache_dir))
    dm.setup()
    print(json.dumps({"wall_s": time.perf_counter() - started, "peak_gib": peak_rss_gib(),
                      "events": dm.prepared.stats["events"],
                      "train_examples": dm.prepared.stats["train/examples"],
                      "n_items": dm.n_items}))


# -- training throughput ------------------------------------------------------------------
def bare_steps(model, batches, warmup: int) -> float:
    """Seconds for batches[warmup:] in a plain PyTorch loop doing what training_step does."""
    import torch
    import torch.nn.functional as F

    model.train()
    optimizers = model.configure_optimizers()
    optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
    for i, batch in enumerate(batches):
        if i == warmup:
            started = time.perf_counter()
        target = batch["target"]
        if model.hparams.loss == "full":
            loss = F.cross_entropy(model.logits(batch), target)
        else:
            negatives = torch.multinomial(model.log_q.exp(), model.hparams.n_negatives,
                                          replacement=True)
            loss = model.sampled_loss(batch, negatives)
        for opt in optimizers:
            opt.zero_grad()
        loss.backward()
        for opt in optimizers:
            opt.step()
    return time.perf_counter() - started


def lightning_steps(model, batches, warmup: int) -> float:
    """Seconds for batches[warmup:] through Trainer.fit and the module's training_step."""
    import pytorch_lightning as L
    from torch.utils.data import DataLoader

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == warmup:
                self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.stopped = time.perf_counter()

    clock = Clock()
    # one epoch over exactly these batches (max_steps would count each of the sampled
    # loss's two optimizer steps)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[clock])
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == len(batches)
    return clock.stopped - clock.started


def training(dm, args) -> None:
    import pytorch_lightning as L
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from microrec.models.rib import RIB

    loader = iter(dm.train_dataloader())
    batches = [next(loader) for _ in range(args.warmup + args.steps)]
    timed = batches[args.warmup:]
    micro = sum(int(b["length"].sum()) for b in timed)
    seqs = sum(int(b["target"].numel()) for b in timed)
    step_s, full_rate = {}, 0.0
    for loss in ("full", "sampled"):
        rates = {}
        for loop, run in (("bare", bare_steps), ("lightning", lightning_steps)):
            L.seed_everything(0, verbose=False)
            model = RIB(dm.n_items, dm.n_activities, dm.n_dwell, init="random", loss=loss,
                        n_negatives=args.negatives)
            model.set_sampling(dm.prepared.splits["train"].target)
            seconds = run(model, batches, args.warmup)
            rates[loop] = seqs / seconds
            report(f"train_{loss}_{loop}_sequences_per_s", seqs / seconds, "seq/s")
            report(f"train_{loss}_{loop}_microbehaviors_per_s", micro / seconds, "events/s")
        step_s[loss] = seqs / rates["lightning"] / len(timed)
        full_rate = full_rate or rates["lightning"]
        report(f"train_{loss}_lightning_over_bare", rates["lightning"] / rates["bare"], "ratio",
               target=">= 0.9")
    report("train_sampled_over_full_speedup", step_s["full"] / step_s["sampled"], "x",
           target=">= 5", negatives=args.negatives)

    # Achieved GFLOP/s of the full-softmax step (counted by torch) against a measured SGEMM.
    model = RIB(dm.n_items, dm.n_activities, dm.n_dwell, init="random")
    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.cross_entropy(model.logits(timed[0]), timed[0]["target"]).backward()
    flops_per_seq = counter.get_total_flops() / timed[0]["target"].numel()
    achieved = flops_per_seq * full_rate / 1e9
    a = torch.randn(4096, 4096)
    a @ a  # warm up
    started = time.perf_counter()
    for _ in range(5):
        a @ a
    sgemm = 5 * 2 * 4096**3 / (time.perf_counter() - started) / 1e9
    report("train_full_gflops_achieved", achieved, "GFLOP/s",
           flops_per_step=counter.get_total_flops())
    report("sgemm_gflops_measured_peak", sgemm, "GFLOP/s", threads=torch.get_num_threads())
    report("train_full_fraction_of_peak", achieved / sgemm, "ratio")


def evaluation(dm, args) -> None:
    import torch

    from microrec.models.ranking import RankingMetrics
    from microrec.models.rib import RIB

    model = RIB(dm.n_items, dm.n_activities, dm.n_dwell, init="random").eval()
    metric = RankingMetrics()
    loader = iter(dm.val_dataloader())
    batches = [next(loader) for _ in range(min(args.eval_batches, len(dm.val_dataloader())))]
    with torch.no_grad():
        metric.update(model(batches[0]), batches[0]["target"])  # warm up
        started = time.perf_counter()
        for batch in batches:
            metric.update(model(batch), batch["target"])
        seconds = time.perf_counter() - started
    seqs = sum(int(b["target"].numel()) for b in batches)
    report("eval_full_ranking_sequences_per_s", seqs / seconds, "seq/s",
           catalogue=dm.n_items - 2, batch=dm.eval_batch_size)


# -- stage: a training run in a fresh process that reports its own peak memory -------------
def train_run(overrides: list[str]) -> None:
    """Run `src/train.py` with `overrides` in this process, then print its peak memory."""
    import runpy

    sys.argv = [str(ROOT / "src" / "train.py"), *overrides]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        print(json.dumps({"peak_gib": peak_rss_gib()}), flush=True)


def training_run_memory(args, cache_dir: Path) -> None:
    """Peak memory of `src/train.py` at this scale (generation, preprocessing and training)."""
    params = [f"data.source.{k}={v}" for k, v in source_params(args).items()]
    overrides = [*params, "logger=none",
                 "callbacks.progress=null", f"+trainer.max_steps={args.run_steps}",
                 f"+trainer.limit_val_batches={args.eval_batches}",
                 f"+trainer.limit_test_batches={args.eval_batches}", "model.init=random",
                 f"+trainer.val_check_interval={args.run_steps}",
                 f"cache_dir={cache_dir}", f"hydra.run.dir={cache_dir / 'run'}"]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--stage", "train-run", "--overrides",
                           json.dumps(overrides)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: the training run failed:\n{done.stderr[-2000:]}")
    peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_gib"]
    report("train_run_peak_memory", peak, "GiB", target="< 12",
           wall_s=round(time.perf_counter() - started, 1), steps=args.run_steps)


def write_inputs(args, workdir: Path) -> tuple[Path, Path]:
    """The synthetic events at this scale as a Parquet file and as a JD session file (kept)."""
    import polars as pl

    from microrec.data.loaders import write_jd_sessions
    from microrec.data.synthetic import SyntheticSource
    from microrec.files import atomic_write

    source = SyntheticSource(**source_params(args))
    parquet = workdir / f"events-{source.fingerprint()}.parquet"
    jd = workdir / f"events-{source.fingerprint()}.jd"
    events = None
    if not parquet.exists():
        started = time.perf_counter()
        events = source.load()
        atomic_write(parquet, events.write_parquet)
        report("generate_and_write_parquet_s", time.perf_counter() - started, "s")
    if not jd.exists():
        started = time.perf_counter()
        write_jd_sessions(events if events is not None else pl.read_parquet(parquet), jd)
        report("write_jd_text_s", time.perf_counter() - started, "s",
               bytes=jd.stat().st_size)
    return parquet, jd


def measure_preprocessing(kind: str, path: Path, cache_dir: Path) -> dict:
    """Wall time and peak memory of a cold preprocessing of `path`, in a fresh process."""
    shutil.rmtree(cache_dir, ignore_errors=True)  # always measure a cold preprocessing
    child = subprocess.run([sys.executable, __file__, "--stage", "preprocess", "--input",
                            str(path), "--kind", kind, "--workdir", str(cache_dir)],
                           capture_output=True, text=True, cwd=ROOT)
    if child.returncode:
        sys.exit(f"error: preprocessing {kind} failed: "
                 f"{child.stderr.strip().splitlines()[-1]}")
    pre = json.loads(child.stdout.strip().splitlines()[-1])
    label = "" if kind == "parquet" else f"_{kind}"  # the Parquet figures keep their names
    report(f"preprocess{label}_wall_s", pre["wall_s"], "s", target="< 90",
           events=pre["events"], train_examples=pre["train_examples"],
           products=pre["n_items"] - 2)
    report(f"preprocess{label}_peak_memory", pre["peak_gib"], "GiB", target="< 8")
    return pre


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1_060_000)
    parser.add_argument("--items", type=int, default=115_000)
    parser.add_argument("--categories", type=int, default=1_000)
    parser.add_argument("--mean-macros", type=float, default=5.0)
    parser.add_argument("--module-views", type=float, default=6.0)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--negatives", type=int, default=2048)
    parser.add_argument("--eval-batches", type=int, default=20)
    parser.add_argument("--run-steps", type=int, default=100,
                        help="training steps of the memory run")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the Parquet file and caches here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines here")
    parser.add_argument("--preprocess-only", action="store_true",
                        help="measure only preprocessing (Parquet and JD text), not training")
    parser.add_argument("--stage", choices=["preprocess", "train-run"], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=["parquet", "jd"], help=argparse.SUPPRESS)
    parser.add_argument("--overrides", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "preprocess":
        return preprocess(args.input, args.kind, args.workdir)
    if args.stage == "train-run":
        return train_run(args.overrides)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="microrec-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    parquet, jd = write_inputs(args, workdir)
    cache_dir = workdir / "cache-preprocess"
    pre = measure_preprocessing("parquet", parquet, cache_dir)
    measure_preprocessing("jd", jd, workdir / "cache-preprocess-jd")

    if not args.preprocess_only:
        import polars as pl

        from microrec.data.module import MicroDataModule
        from microrec.data.sources import FrameSource

        dm = MicroDataModule(FrameSource(pl.read_parquet(parquet), "paper"),
                             cache_dir=str(cache_dir))
        dm.setup()
        training(dm, args)
        evaluation(dm, args)
        training_run_memory(args, workdir / "cache-run")

    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in FIGURES))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"microrec at {pre['events']:,} micro-behaviors, "
                        f"{pre['n_items'] - 2:,} products")
    for col in ("figure", "value", "unit", "target"):
        table.add_column(col)
    for r in FIGURES:
        table.add_row(r["figure"], f"{r['value']:,.3f}", r["unit"], r.get("target", ""))
    Console().print(table)


if __name__ == "__main__":
    main()
