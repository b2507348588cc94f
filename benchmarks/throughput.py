"""Throughput and memory of microrec at paper scale. Prints one JSON line per figure, then a table.

    python benchmarks/throughput.py                      # paper scale (about 40M micro-behaviors)
    python benchmarks/throughput.py --preprocess-only    # only the two preprocessing figures
    python benchmarks/throughput.py --sessions 20000 --items 5000 --steps 10   # a quick look
    python benchmarks/throughput.py --stages rows memory --precision 32-true bf16-mixed \
        --rows rib_full rib_tuned --workdir /tmp/bench   # the rows' steps in fp32 and bf16

Figures: preprocessing (a Parquet event file, and the same events as a JD session text file
-> cached tensors) wall time and peak memory, each in a fresh process; training throughput
of RIB through the Lightning module and through a bare PyTorch loop on the same model,
batches and data (full and sampled softmax); full-ranking evaluation throughput; achieved
GFLOP/s of a training step against a measured SGEMM rate; per results-table row
(`--rows`, conf/row/) the Lightning training step with each loss at each `--precision`,
back to back, and its GFLOP/s against measured fp32 and bf16 matrix-product rates; peak
memory of a real `src/train.py` run of each row at the same scale. See benchmarks/README.md.
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
STAGES = ("preprocess", "training", "rows", "evaluation", "memory")
# what the in-process figures (training, rows, evaluation) are timed by: wall time, or this
# process's CPU time (--clock cpu), which other processes on the cores barely change; with
# one thread (OMP_NUM_THREADS=1) CPU time is what the work takes on an idle core
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = ["wall"]


def timer() -> float:
    return CLOCKS[CLOCK[0]]()
PAPER_DATA = "jd_appliances"  # a `*_tuned` row runs with its study's settings on this data


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
            started = timer()
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
    return timer() - started


def lightning_steps(model, batches, warmup: int, precision: str = "32-true") -> float:
    """Seconds for batches[warmup:] through Trainer.fit and the module's training_step, at
    Lightning's `precision` (bf16-mixed: training_step under autocast)."""
    import pytorch_lightning as L
    from torch.utils.data import DataLoader

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == warmup:
                self.started = timer()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.stopped = timer()

    clock = Clock()
    # one epoch over exactly these batches (max_steps would count each of the sampled
    # loss's two optimizer steps)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False,
                        precision=precision, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[clock])
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == len(batches)
    return clock.stopped - clock.started


def training(dm, args) -> None:
    import pytorch_lightning as L
    import torch

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
    flops = step_flops(RIB(dm.n_items, dm.n_activities, dm.n_dwell, init="random"), timed)
    achieved = flops / (seqs / len(timed)) * full_rate / 1e9  # FLOPs per sequence x rate
    sgemm = gemm_gflops(4096, 4096, 4096, torch.float32)
    report("train_full_gflops_achieved", achieved, "GFLOP/s", flops_per_step=round(flops))
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
        started = timer()
        for batch in batches:
            metric.update(model(batch), batch["target"])
        seconds = timer() - started
    seqs = sum(int(b["target"].numel()) for b in batches)
    report("eval_full_ranking_sequences_per_s", seqs / seconds, "seq/s",
           catalogue=dm.n_items - 2, batch=dm.eval_batch_size)


# -- per row of the results table: the training step at each precision ------------------
def gemm_gflops(m: int, k: int, n: int, dtype, repeats: int = 5) -> float:
    """Measured rate of an (m, k) x (k, n) matrix product in `dtype` on torch's threads."""
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # warm up (and let oneDNN pick its kernel)
    started = timer()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * m * k * n / (timer() - started) / 1e9


def compose_row(row: str, extra: tuple[str, ...] = ()):
    """The overrides that run the results-table row `row` (conf/row/) on any data (a
    `*_tuned` row with the settings its study chose on the paper's data set), and the config
    they compose with `extra`."""
    from hydra import compose, initialize_config_dir

    from microrec.runs.naming import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        tuned = compose("train", overrides=[f"+row={row}"]).get("tuned")
        overrides = [f"+row={row}"] + ([f"tuned={tuned.model}/{PAPER_DATA}"] if tuned else [])
        return overrides, compose("train", overrides=[*overrides, *extra])


def row_model(dm, row: str, loss: str, args):
    """The row's model on `dm` (random init), with `loss` where the model has the setting;
    None where it has not (RepeatNet has no sampled loss). RIB's co-occurrence counts and
    the negative sampling are set up as a run's `setup` would; a fitted model is not fit."""
    from microrec.config import build

    _, cfg = compose_row(row)
    if "init" in cfg.model:  # word2vec vectors would cost minutes and change no step time
        cfg.model.init = "random"
    if "loss" in cfg.model:
        cfg.model.loss, cfg.model.n_negatives = loss, args.negatives
    elif loss != "full":
        return None
    model = build(cfg.model, n_items=dm.n_items, n_activities=dm.n_activities,
                  n_dwell=dm.n_dwell)
    if hasattr(model, "head"):  # what RIB's setup does in a run: the co-occurrence counts
        model.head.fit(dm.prepared.splits["train"])
    if hasattr(model, "set_sampling"):
        model.set_sampling(dm.prepared.splits["train"].target)
    return model


def step_flops(model, batches) -> float:
    """Mean FLOPs of a full-softmax training step (loss forward and backward) over `batches`,
    counted by torch: batches are length-bucketed, so one batch's count is not the mean."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        for batch in batches:
            model.training_loss(batch).backward()
    model.zero_grad()
    return counter.get_total_flops() / len(batches)


def matmul_rates(dm, batch: int) -> dict[str, float]:
    """Report and return the measured fp32 and bf16 rates of a 4096^3 product, and those of
    the paper's output layer, (B, 100) x (100, N)."""
    import torch

    peak = {}
    for dtype in ("float32", "bfloat16"):
        peak[dtype] = gemm_gflops(4096, 4096, 4096, getattr(torch, dtype))
        report(f"gemm_{dtype}_gflops", peak[dtype], "GFLOP/s", shape="4096^3",
               threads=torch.get_num_threads(), clock=CLOCK[0])
        report(f"output_layer_gemm_{dtype}_gflops", gemm_gflops(
            batch, 100, dm.n_items, getattr(torch, dtype)), "GFLOP/s",
            shape=f"{batch}x100x{dm.n_items}", clock=CLOCK[0])
    return peak


def eval_rate(model, batches) -> float:
    """Sequences/s of evaluation: `ranked` (fp32 scores, the rule) and the shared metric."""
    import torch

    from microrec.models.ranking import RankingMetrics

    metric = RankingMetrics()
    model.eval()
    with torch.no_grad():
        metric.update(model.ranked(batches[0]), batches[0]["target"])  # warm up
        started = timer()
        for batch in batches:
            metric.update(model.ranked(batch), batch["target"])
    return sum(int(b["target"].numel()) for b in batches) / (timer() - started)


def row_steps(dm, row: str, args, batches, peak: dict[str, float]) -> None:
    """One row's Lightning training step for each loss, its precisions back to back, and
    the full-softmax step's GFLOP/s against the measured rate of its precision."""
    import pytorch_lightning as L

    n_timed = len(batches) - args.warmup
    seqs_per_step = sum(int(b["target"].numel()) for b in batches[args.warmup:]) / n_timed
    for loss in args.losses:
        step_s = {}
        for precision in args.precision:
            L.seed_everything(0, verbose=False)
            model = row_model(dm, row, loss, args)
            if model is None:  # no such loss for this model
                break
            step_s[precision] = lightning_steps(model, batches, args.warmup, precision) / n_timed
            report(f"row_{row}_{loss}_{precision}_step_ms", 1000 * step_s[precision], "ms",
                   sequences_per_s=round(seqs_per_step / step_s[precision], 1), clock=CLOCK[0])
        if len(step_s) == 2:
            report(f"row_{row}_{loss}_bf16_speedup",
                   step_s["32-true"] / step_s["bf16-mixed"], "x")
        if loss == "full" and step_s:
            flops = step_flops(row_model(dm, row, loss, args), batches[args.warmup:])
            for precision, seconds in step_s.items():
                rate = flops / seconds / 1e9
                dtype = "bfloat16" if precision == "bf16-mixed" else "float32"
                report(f"row_{row}_full_{precision}_gflops_achieved", rate, "GFLOP/s",
                       flops_per_step=round(flops), of_measured_gemm=round(rate / peak[dtype], 4))


def rows(dm, args, batches) -> None:
    """Per results-table row: training steps (`row_steps`) or the fit of a fitted model,
    then the evaluation rate (always fp32)."""
    from microrec.models.base import FitFromData

    peak = matmul_rates(dm, int(batches[0]["target"].numel()))
    loader = iter(dm.val_dataloader())
    val = [next(loader) for _ in range(min(args.eval_batches, len(dm.val_dataloader())))]
    for row in args.rows:
        model = row_model(dm, row, "full", args)
        if isinstance(model, FitFromData):
            started = timer()
            model.fit(dm)
            report(f"row_{row}_fit_s", timer() - started, "s")
        else:
            row_steps(dm, row, args, batches, peak)
        report(f"row_{row}_eval_sequences_per_s", eval_rate(model, val), "seq/s",
               batch=dm.eval_batch_size, clock=CLOCK[0])


# -- stage: a training run in a fresh process that reports its own peak memory -------------
def train_run(overrides: list[str]) -> None:
    """Run `src/train.py` with `overrides` in this process, then print its peak memory."""
    import runpy

    sys.argv = [str(ROOT / "src" / "train.py"), *overrides]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        print(json.dumps({"peak_gib": peak_rss_gib()}), flush=True)


def training_run_memory(args, workdir: Path, row: str) -> None:
    """Peak memory of `src/train.py` running the results-table row `row` at this scale
    (generation, cold preprocessing and training, word2vec off)."""
    cache_dir = workdir / f"cache-run-{row}"
    shutil.rmtree(cache_dir, ignore_errors=True)  # a cold run, as a first run would be
    params = [f"data.source.{k}={v}" for k, v in source_params(args).items()]
    row_args, cfg = compose_row(row)
    if "init" in cfg.model:
        row_args.append("model.init=random")
    overrides = [*row_args, *params, "logger=none", "predictions=[]",  # a part of test only
                 "callbacks.progress=null", f"+trainer.max_steps={args.run_steps}",
                 f"+trainer.limit_val_batches={args.eval_batches}",
                 f"+trainer.limit_test_batches={args.eval_batches}",
                 f"+trainer.val_check_interval={args.run_steps}",
                 f"cache_dir={cache_dir}", f"hydra.run.dir={cache_dir / 'run'}"]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--stage", "train-run", "--overrides",
                           json.dumps(overrides)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: the training run failed:\n{done.stderr[-2000:]}")
    peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_gib"]
    report(f"train_run_{row}_peak_memory", peak, "GiB", target="< 12",
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
                        help="measure only preprocessing (Parquet and JD text): --stages "
                             "preprocess")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="what to measure (default: all); the data is built either way")
    parser.add_argument("--rows", nargs="+", default=["rib_full", "rib_tuned"],
                        help="results-table rows (conf/row/) whose training step the rows "
                             "stage times and whose training run the memory stage measures")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="time the training, rows and evaluation figures by wall time or "
                             "by this process's CPU time (on a shared machine, with "
                             "OMP_NUM_THREADS=1)")
    parser.add_argument("--losses", nargs="+", default=["full", "sampled"],
                        choices=["full", "sampled"], help="losses of the rows stage")
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"],
                        choices=["32-true", "bf16-mixed"],
                        help="Lightning precisions of the rows stage, timed back to back")
    parser.add_argument("--stage", choices=["preprocess", "train-run"], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=["parquet", "jd"], help=argparse.SUPPRESS)
    parser.add_argument("--overrides", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "preprocess":
        return preprocess(args.input, args.kind, args.workdir)
    if args.stage == "train-run":
        return train_run(args.overrides)

    stages = {"preprocess"} if args.preprocess_only else set(args.stages)
    CLOCK[0] = args.clock
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="microrec-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    parquet, jd = write_inputs(args, workdir)
    cache_dir = workdir / "cache-preprocess"
    if "preprocess" in stages:
        measure_preprocessing("parquet", parquet, cache_dir)
        measure_preprocessing("jd", jd, workdir / "cache-preprocess-jd")

    if stages - {"preprocess"}:
        import polars as pl

        from microrec.data.module import MicroDataModule
        from microrec.data.sources import FrameSource

        dm = MicroDataModule(FrameSource(pl.read_parquet(parquet), "paper"),
                             cache_dir=str(cache_dir))
        dm.setup()  # reuses the cache the preprocessing stage built, or builds it
        if "training" in stages:
            training(dm, args)
        if "rows" in stages:
            loader = iter(dm.train_dataloader())
            rows(dm, args, [next(loader) for _ in range(args.warmup + args.steps)])
        if "evaluation" in stages:
            evaluation(dm, args)
        if "memory" in stages:
            for row in args.rows:
                training_run_memory(args, workdir, row)

    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in FIGURES))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"microrec at {args.sessions:,} sessions, {args.items:,} products")
    for col in ("figure", "value", "unit", "target"):
        table.add_column(col)
    for r in FIGURES:
        table.add_row(r["figure"], f"{r['value']:,.3f}", r["unit"], r.get("target", ""))
    Console().print(table)


if __name__ == "__main__":
    main()
