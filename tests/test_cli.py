"""The entry script as a user runs it, in a subprocess (slow: each pays Lightning's import)."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, TINY

from microrec.runs import predictions
from microrec.runs.folders import job_id, job_order

pytestmark = pytest.mark.slow
FEATURES = ("sku", "sku_act", "sku_dwell", "full")


def run_train(*args, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path)  # keep W&B's settings files out of the real home
    return subprocess.run([sys.executable, "src/train.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_four_feature_multirun_leaves_four_runs_and_one_wandb_group(tmp_path):
    sweep = tmp_path / "multirun"
    done = run_train("-m", f"features={','.join(FEATURES)}", *TINY,
                     f"hydra.sweep.dir={sweep}", f"cache_dir={tmp_path / 'cache'}",
                     tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and job_id(p)[0] is not None),
                  key=job_order)
    assert [j.name for j in jobs] == [f"{i}_features={f}" for i, f in enumerate(FEATURES)]
    for noise in ("litlogger", "anonymous setting", "LeafSpec"):  # notices not meant for users
        assert noise not in done.stderr + done.stdout, noise
    run_ids, groups = set(), set()
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert {"val/mrr@20", "test/recall@20", "test/mrr@20"} <= metrics.keys()
        assert (job / ".hydra" / "config.yaml").is_file()
        assert (job / "checkpoints" / "best.ckpt").is_file()
        offline = list((job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(offline) == 1, "one offline W&B run per job"
        run_ids.add(offline[0].stem)
        blob = offline[0].read_bytes()
        group = "multirun/" + "/".join(sweep.parts[-2:])
        # RunRecord.run_group is protobuf field 6 (tag byte 0x32), then length, then text
        assert bytes([0x32, len(group)]) + group.encode() in blob
        groups.add(group)
        assert f"features={job.name.split('=')[1]}".encode() in blob  # the run's tag
    assert len(run_ids) == 4 and len(groups) == 1


# Entry-script runs that must each end in exactly this one line on stderr, exit 1, and leave
# no run folder: Hydra's composition errors, settings checked before any data loads, and user
# errors raised by the task. run_in_one_process runs them all in one interpreter.
MISTAKES = {
    "unknown option": (["src/train.py", "features=bogus"],
                       "error: no features 'bogus': choose one of full, full_cat, sku, sku_act, "
                       "sku_act_cat, sku_cat, sku_dwell, sku_dwell_cat."),
    "unknown swept option": (
        ["src/train.py", "-m", "data=synthetic,nonexistent"],
        "error: no data 'nonexistent': choose one of events, jd_appliances, jd_computers, "
        "jdata_demo, otto, synthetic, taobao."),
    "unknown option, analyze": (["src/analyze.py", "logger=bogus"],
                                "error: no logger 'bogus': choose one of csv, none, wandb."),
    "unknown setting, stats": (
        ["src/stats.py", "data.bogus=1"],
        "error: no setting data.bogus: data has source, features, buckets, split, "
        "eval_targets, max_len, min_macros, batch_size, eval_batch_size, num_workers, seed, "
        "cache_dir."),
    "not an int": (["src/train.py", "model.hidden_size=abc"],
                   "error: model.hidden_size=abc: expected an int."),
    "path for synthetic data": (
        ["src/train.py", "data.source.path=/x"],
        "error: no setting data.source.path: data.source has n_sessions, n_items, n_categories, "
        "mean_macros, zipf, p_interest, p_follow, p_return, module_views, seed."),
    "missing file": (["src/train.py", "data=jd_appliances", "data.source.path=/nonexistent"],
                     "error: /nonexistent: no such file (point data.source.path at a JD session "
                     "file)."),
    "bad value": (["src/train.py", "data.source.n_items=3"],
                  "error: synthetic data needs n_sessions >= 1, n_items >= 7 and "
                  "n_categories >= 1 (got 10000, 3, 40)."),
}
DEFAULT_RUN = ["src/train.py", *TINY]  # the W&B logger, as by default; no progress bar
END = "=== end of run, exit status"


@pytest.fixture(scope="module")
def run_in_one_process(tmp_path_factory):
    """The default tiny run, then every MISTAKES run, each as `python <script> <args>` would
    run it but all in one interpreter (Lightning loads once).

    Returns {name: (exit status, stdout, stderr, the run's hydra.run.dir / sweep.dir)}.
    """
    tmp = tmp_path_factory.mktemp("cli")
    runs = {"default": DEFAULT_RUN, **{name: args for name, (args, _) in MISTAKES.items()}}
    argvs = [[*args, f"hydra.run.dir={tmp / str(i)}", f"hydra.sweep.dir={tmp / str(i)}",
              f"cache_dir={tmp / 'cache'}"] for i, args in enumerate(runs.values())]
    driver = (
        "import runpy, sys\n"
        f"for argv in {argvs!r}:\n"
        "    sys.argv, status = argv, 0\n"
        "    try:\n"
        "        runpy.run_path(argv[0], run_name='__main__')\n"
        "    except SystemExit as e:\n"
        "        status = e.code\n"
        "    for stream in (sys.stdout, sys.stderr):\n"
        f"        print('\\n{END}', status, file=stream, flush=True)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MICROREC_"))}
    env["HOME"] = str(tmp)  # keep W&B's settings files out of the real home
    done = subprocess.run([sys.executable, "-c", driver], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # each run's output, then END and its exit status on a line of their own
    outs, errs = (re.split(rf"^{END} (\S+)$", text, flags=re.M)
                  for text in (done.stdout, done.stderr))
    assert len(outs) == len(errs) == 2 * len(runs) + 1, done.stderr[-3000:]
    return {name: (outs[2 * i + 1], outs[2 * i].strip(), errs[2 * i].strip(), tmp / str(i))
            for i, name in enumerate(runs)}


@pytest.mark.parametrize("name", MISTAKES)
def test_a_config_or_input_mistake_is_one_error_line_exit_1_and_no_run_folder(
        run_in_one_process, name):
    status, out, err, folder = run_in_one_process[name]
    assert status == "1"
    assert err.splitlines() == [MISTAKES[name][1]], err[-3000:]
    assert out == ""  # not even a log line: the error is said once, and before any data loads
    assert not folder.exists()


def test_a_default_run_prints_progress_its_data_checkpoint_and_metrics_only(run_in_one_process):
    status, out, err, _ = run_in_one_process["default"]
    assert status == "0", err[-3000:]
    # the progress bar draws ━ and wraps its metrics onto indented lines
    lines = [line for line in (out + "\n" + err).splitlines()
             if line.strip() and "━" not in line and not line[0].isspace()]
    for noise in ("wandb:", "Seed set to", "GPU available", "TPU available", "max_epochs",
                  "Restoring states", "log_every_n_steps"):
        assert not [line for line in lines if noise in line], noise
    assert any(line.endswith('"test/unknown_targets": 0}') for line in lines)  # data summary
    assert any("best checkpoint:" in line for line in lines)
    assert any("test/recall@20" in line and "metrics.json" in line for line in lines)
    assert len(lines) <= 10, "\n".join(lines)


def test_ddp_on_two_cpu_processes_evaluates_like_one(tmp_path):
    """Train with DDP (gloo, 2 processes), then re-evaluate its checkpoint in one process."""
    import hydra
    import pytorch_lightning as L
    from conftest import compose_cfg

    from microrec.models.rib import RIB

    run = tmp_path / "run"
    overrides = [*TINY, "data.eval_batch_size=50", f"cache_dir={tmp_path / 'cache'}"]
    done = run_train("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     "logger=none", *overrides, f"hydra.run.dir={run}", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert output.count("processing synthetic") == 1  # rank 1 loads what rank 0 processed
    assert output.count("loaded processed synthetic") >= 1
    ddp = json.loads((run / "metrics.json").read_text())

    cfg = compose_cfg(tmp_path / "single", overrides)
    dm = hydra.utils.instantiate(cfg.data)
    model = RIB.load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    model.keep_predictions = {"test"}
    single = {**trainer.validate(model, datamodule=dm, verbose=False)[0],
              **trainer.test(model, datamodule=dm, verbose=False)[0]}
    assert dm.dataset("val").target.numel() % 100 != 0  # uneven shards across the 2 ranks
    for name in ("val/recall@20", "val/mrr@20", "test/recall@5", "test/mrr@20"):
        assert abs(ddp[name] - single[name]) < 1e-6, name
    # rank 0 gathered both ranks' per-example results: every test example once, in order
    table = predictions.read(run / predictions.PREDICTIONS_FILE)
    assert dm.dataset("test").target.numel() % 100 != 0
    assert table["example"].to_list() == list(range(dm.dataset("test").target.numel()))
    assert table["rank"].fill_null(dm.n_items - 1).to_list() == \
        model.predictions["test"]["rank"].tolist()
    for name, value in predictions.metrics(table).items():
        assert abs(ddp[f"test/{name}"] - value) < 1e-6, name
