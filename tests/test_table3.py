"""experiment=table3 as Hydra's basic sweeper expands it, and Table 3 from hand-made jobs."""

import csv
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import ROOT, TINY
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from microrec.data.schema import PAPER_FEATURES as FEATURES
from microrec.errors import ConfigError, DataError
from microrec.reports.results import METRICS, row_of, table3
from microrec.runs import predictions
from microrec.runs.folders import latest_multirun
from microrec.runs.naming import job_label
from microrec.runs.tracking import run_identity

BASELINES = ("pop", "bpr_mf", "item_knn", "word2vec", "word2vec_avg")


def sweep_jobs(argv: list[str]) -> tuple[list[list[str]], dict]:
    """Each job's overrides, exactly as the basic sweeper builds them for `train.py -m argv`."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        params = compose("train", overrides=[a for a in argv if "," not in a],
                         return_hydra_config=True).hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides(
        [*(f"{k}={v}" for k, v in params.items()), *argv])
    return BasicSweeper.split_arguments(parsed, None)[0], params


@pytest.fixture
def hydra_job():
    """Compose one job of a multirun with its Hydra config, as a running job sees it."""
    def make(overrides):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, "hydra.mode=MULTIRUN"],
                          return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return cfg
    yield make
    HydraConfig.instance().cfg = None


def test_table3_is_every_baseline_on_sku_and_rib_with_and_without_attention(hydra_job,
                                                                           monkeypatch):
    argv = ["experiment=table3", "seed=0,1"]
    monkeypatch.setattr("sys.argv", ["src/train.py", "-m", *argv])
    jobs, params = sweep_jobs(argv)
    assert len(jobs) == 2 * (len(BASELINES) + 2 * len(FEATURES))
    rows, labels = set(), []
    for overrides in jobs:
        cfg = hydra_job(overrides)
        choices = cfg.hydra.runtime.choices
        rows.add((choices.model, cfg.features.name, choices.attention))
        assert cfg.model._target_.split(".")[2] == ("rib" if choices.model == "rib" else
                                                    choices.model.removesuffix("_avg"))
        identity = run_identity(Path("unused"))
        labels.append(job_label(overrides, params, argv))
        assert identity["name"] == labels[-1]
        if choices.model == "rib":
            assert cfg.model.attention == (choices.attention == "on")
            assert f"attention={choices.attention}" in identity["tags"]
        else:
            assert identity["tags"] == ["data=synthetic", "model=" + choices.model,
                                        "features=sku"]  # no encoder or attention tag
    assert rows == ({(m, "sku", None) for m in BASELINES}
                    | {("rib", f, a) for f in FEATURES for a in ("on", "off")})
    assert len(set(labels)) == len(labels)
    assert labels[:3] == ["row=pop,seed=0", "row=pop,seed=1", "row=bpr_mf,seed=0"]
    assert "row=rib_noatt_sku_dwell,seed=1" in labels


def test_peers_is_every_peer_beside_the_papers_baselines_and_rib_on_sku_and_full(hydra_job):
    """experiment=peers: each row builds the model it names, on the features it names, and
    sits in its own row of the results table."""
    jobs, _ = sweep_jobs(["experiment=peers"])
    rows = {}
    for overrides in jobs:
        cfg = hydra_job(overrides)
        choices = cfg.hydra.runtime.choices
        rows[choices.row] = (cfg.model._target_.rsplit(".", 1)[-1], cfg.features.name,
                             row_of(cfg))
    fitted = {"repeat": "Repeat", "sknn": "SessionKNN", "vsknn": "VSKNN", "stan": "STAN"}
    for name, cls in fitted.items():
        assert rows[name][:2] == (cls, "sku")
    for name, cls in {"narm": "NARM", "sasrec": "SASRec", "repeatnet": "RepeatNet"}.items():
        assert rows[f"{name}_sku"][:2] == (cls, "sku")
        assert rows[f"{name}_full"][:2] == (cls, "full")
    assert rows["gru4rec"][:2] == ("RIB", "sku") and rows["gru4rec"][2] == ("sku", "GRU4Rec")
    assert rows["rib_full"][2] == ("full", "RIB") and rows["narm_full"][2] == ("full", "NARM")
    assert {m for m in BASELINES} <= set(rows)
    assert len({r[2] for r in rows.values()}) == len(rows) == len(jobs)  # one row each


def test_one_row_of_table3_can_be_run_alone():
    jobs, _ = sweep_jobs(["experiment=table3", "row=item_knn,rib_full"])
    assert jobs == [["row=item_knn", "experiment=table3"],
                    ["row=rib_full", "experiment=table3"]]


@functools.cache
def table_row(model: str, features: str, attention: str | None) -> dict:
    """The `table` node that a job of this model, features and attention saves, resolved."""
    overrides = [f"model={model}", f"features={features}"]
    overrides += [f"attention={attention}"] if attention else []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("train", overrides=overrides).table, resolve=True)


def make_job(folder, name, data, model, seed, metrics=None, features="sku", attention=None,
             n_sessions=1000, data_seed=0, ranks=None):
    """A job folder as train.py leaves it (only what results.py reads: its row is the real
    config's); with `ranks`, a predictions.parquet of those test ranks and the metrics they
    give."""
    job = folder / name
    (job / ".hydra").mkdir(parents=True)
    choices = {"data": data, "model": model, "features": features, "attention": attention,
               "encoder": "gru" if model == "rib" else None}
    OmegaConf.save({"hydra": {"runtime": {"choices": choices}}}, job / ".hydra" / "hydra.yaml")
    OmegaConf.save({"seed": seed, "data": {"source": {"n_sessions": n_sessions},
                                           "features": "${features.name}", "seed": data_seed},
                    "table": table_row(model, features, attention), "tuned": None},
                   job / ".hydra" / "config.yaml")
    if ranks is not None:
        n = len(ranks)
        table = pl.DataFrame({
            "split": ["test"] * n, "example": range(n),
            "session": [1000 * data_seed + i // 2 for i in range(n)],  # two per session
            "position": [1 + i % 2 for i in range(n)], "rank": ranks,
            "repeat": [i % 2 == 0 for i in range(n)]})
        table.write_parquet(job / predictions.PREDICTIONS_FILE)
        values = predictions.metrics(table, ks=(20,))
        metrics = (values["recall@20"], values["mrr@20"])
    if metrics is not None:
        recall, mrr = metrics
        (job / "metrics.json").write_text(json.dumps(
            {"test/recall@20": recall, "test/mrr@20": mrr, "val/mrr@20": 0.0}))


@pytest.fixture
def multiruns(tmp_path):
    """Two multiruns: synthetic with two seeds and a failed job, a JD sample with one seed."""
    runs = tmp_path / "outputs" / "multirun"
    synthetic, jd = runs / "2026-01-01" / "10-00-00", runs / "2026-01-02" / "09-00-00"
    jobs = [("pop", None, None, (0.10, 0.05), (0.20, 0.07)),
            ("item_knn", None, None, (0.30, 0.10), (0.34, 0.12)),
            ("rib", "sku", "on", (0.40, 0.20), (0.50, 0.22)),
            ("rib", "full", "off", (0.16, 0.02), (0.16, 0.04))]
    for i, (model, features, attention, *per_seed) in enumerate(jobs):
        for seed, metrics in enumerate(per_seed):
            make_job(synthetic, f"{2 * i + seed}_row={model}{features or ''},seed={seed}",
                     "synthetic", model, seed, metrics, features or "sku", attention)
    make_job(synthetic, "8_row=bpr_mf,seed=0", "synthetic", "bpr_mf", 0)  # failed
    make_job(jd, "0_row=pop", "jd_computers", "pop", 0, (0.20, 0.10))
    make_job(jd, "1_row=rib_full", "jd_computers", "rib", 0, (0.30, 0.15), "full", "on")
    return synthetic, jd


EXPECTED = """\
| Data type | Model | synthetic Recall@20 | synthetic MRR@20 | jd_computers Recall@20 | jd_computers MRR@20 |
|---|---|---|---|---|---|
| SKU | POP | 0.1500 ± 0.0707 | 0.0600 ± 0.0141 | 0.2000 | 0.1000 |
|  | Item-KNN | 0.3200 ± 0.0283 | 0.1100 ± 0.0141 |  |  |
|  | RIB | 0.4500 ± 0.0707 (+40.6%) | 0.2100 ± 0.0141 (+90.9%) |  |  |
| SKU+Micro-behaviors | RIB w/o attention | 0.1600 ± 0.0000 (-50.0%) | 0.0300 ± 0.0141 (-72.7%) |  |  |
|  | RIB |  |  | 0.3000 (+50.0%) | 0.1500 (+50.0%) |
"""  # noqa: E501


def test_results_lays_out_table3_with_seeds_gains_and_failed_jobs(multiruns):
    synthetic, jd = multiruns
    printed = table3([synthetic, jd])
    written = (synthetic / "table3.md").read_text()
    assert printed == written
    assert EXPECTED in written
    assert "mean ± sample standard deviation over 1 to 2 seeds" in written
    assert f"failed or unfinished), not in the table:\n- {synthetic / '8_row=bpr_mf,seed=0'}" \
        in written
    with open(synthetic / "table3.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["data type"], r["model"]) for r in rows] == [
        ("SKU", "POP"), ("SKU", "Item-KNN"), ("SKU", "RIB"),
        ("SKU+Micro-behaviors", "RIB w/o attention"), ("SKU+Micro-behaviors", "RIB")]
    rib = rows[2]
    assert float(rib["synthetic Recall@20"]) == pytest.approx(0.45)
    assert float(rib["synthetic Recall@20 std"]) == pytest.approx(0.0707107, abs=1e-6)
    gain = float(rib["synthetic MRR@20 vs best baseline %"])
    assert gain == pytest.approx(100 * (0.21 / 0.11 - 1))
    assert rib["synthetic seeds"] == "2" and rib["jd_computers Recall@20"] == ""
    assert not list(synthetic.glob(".*.tmp"))


def save_job(folder, name, overrides, metrics, conf=None):
    """A job folder as train.py leaves it for `overrides` (its config unresolved, as Hydra
    saves it), with a search path for configs a test adds under `conf`."""
    extra = [f"hydra.searchpath=[file://{conf}]"] if conf else []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, *extra], return_hydra_config=True)
    job = folder / name
    (job / ".hydra").mkdir(parents=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    OmegaConf.save({"hydra": {"runtime": {"choices": choices}}}, job / ".hydra" / "hydra.yaml")
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                   job / ".hydra" / "config.yaml")
    (job / "metrics.json").write_text(json.dumps(dict(zip(METRICS, metrics, strict=True))))


NEW_ROW = """\
# @package _global_
# A row someone adds: NARM with a smaller GRU, on dwell times, between RIB's two rows
defaults:
  - override /model: narm
  - override /features: sku_dwell

model:
  hidden_size: 32

table:
  label: NARM-32
  section: sku_dwell
  order: 185
"""


def test_a_new_row_yaml_puts_its_jobs_where_its_table_node_says(tmp_path):
    """A row is its yaml alone: results.py reads its label, data type and order from each
    job's saved config, with no list in the code to extend."""
    (tmp_path / "conf" / "row").mkdir(parents=True)
    (tmp_path / "conf" / "row" / "narm_32.yaml").write_text(NEW_ROW)
    folder = tmp_path / "multirun"
    for i, (row, metrics) in enumerate({"narm_32": (0.30, 0.20), "rib_sku_dwell": (0.40, 0.30),
                                        "rib_noatt_sku_dwell": (0.20, 0.10),
                                        "pop": (0.10, 0.05)}.items()):
        save_job(folder, f"{i}_row={row}", [f"+row={row}"], metrics, conf=tmp_path / "conf")
    text = table3([folder], resamples=200)
    assert [(r["data type"], r["model"]) for r in read_csv(folder).values()] == [
        ("SKU", "POP"), ("SKU+Dwell", "RIB w/o attention"), ("SKU+Dwell", "NARM-32"),
        ("SKU+Dwell", "RIB")]
    assert "|  | NARM-32 | 0.3000 (+200.0%) | 0.2000 (+300.0%) |" in text  # not a baseline
    saved = OmegaConf.load(folder / "0_row=narm_32" / ".hydra" / "config.yaml")
    assert saved.model.hidden_size == 32 and saved.table.order == 185


@pytest.mark.parametrize("overrides, row", [
    ([], ("full", "RIB")),
    (["features=sku", "attention=off"], ("sku", "RIB w/o attention")),
    (["encoder=lstm"], ("full", "RIB (LSTM)")),
    (["head=repeat_explore", "model.tied=true"], ("full", "RIB (repeat-explore, tied)")),
    (["encoder=rnn", "attention=off", "head=repeat_explore", "model.tied=true",
      "model.neighbours=100", "data=jd_computers", "tuned=rib/jd_computers"],
     ("full", "RIB w/o attention (RNN, repeat-explore, tied, neighbours) (tuned)")),
    (["+row=rib_full", "encoder=lstm"], ("full", "RIB (LSTM)")),  # a row and an option
    (["experiment=tuned", "row=rib_tuned_sku", "data=jd_computers", "attention=off"],
     ("sku", "RIB w/o attention (repeat-explore, tied, neighbours, transitions) (tuned)")),
    (["model=gru4rec", "encoder=lstm"], ("sku", "GRU4Rec")),  # a model of its own
    (["model=narm", "features=full", "data=jd_computers", "tuned=narm/jd_computers"],
     ("full", "NARM (tuned)")),
    (["model=stan", "features=full"], ("sku", "STAN")),  # a baseline reads products only
])
def test_a_run_is_named_by_what_it_ran_with_with_or_without_a_row(overrides, row):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    assert row_of(cfg) == row


RIB_GROUPS = [(group, p.stem) for group in ("encoder", "attention", "head")
              for p in sorted((ROOT / "conf" / group).glob("*.yaml"))]
RIB_NAMES = {"lstm": "RIB (LSTM)", "rnn": "RIB (RNN)", "off": "RIB w/o attention",
             "repeat_explore": "RIB (repeat-explore)"}  # the others: the paper's RIB


@pytest.mark.parametrize("group, option", RIB_GROUPS)
def test_every_option_of_ribs_groups_says_how_the_table_names_it(group, option):
    """RIB's label reads `label` from its encoder, attention and head: without one, its
    runs' rows could not be read (and a run with a logger would stop logging its config)."""
    assert "label" in OmegaConf.load(ROOT / "conf" / group / f"{option}.yaml")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"{group}={option}"])
    assert row_of(cfg) == ("full", RIB_NAMES.get(option, "RIB"))


def run_results(*args, cwd=ROOT):
    """src/results.py as a user runs it."""
    return subprocess.run([sys.executable, str(ROOT / "src" / "results.py"), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_results_command_reads_the_latest_multirun_and_errors_are_one_line(multiruns):
    synthetic, jd = multiruns
    done = run_results(cwd=synthetic.parents[3])
    assert done.returncode == 0, done.stderr
    assert "jd_computers Recall@20" in done.stdout
    assert done.stdout == (jd / "table3.md").read_text()
    assert not (synthetic / "table3.md").exists()
    for args, message in (((), "error: no multirun under outputs/multirun; run"),
                          ((synthetic / "nowhere",), "error: no multirun folder at")):
        done = run_results(*args, cwd=synthetic)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith(message) and done.stderr.count("\n") == 1


def test_latest_multirun_is_the_newest_date_and_time(multiruns, tmp_path):
    synthetic, jd = multiruns
    assert latest_multirun(synthetic.parents[1]) == jd
    (synthetic.parents[1] / "2026-01-02" / "08-59-59").mkdir()  # earlier the same day
    assert latest_multirun(synthetic.parents[1]) == jd
    with pytest.raises(ConfigError, match="no multirun under"):
        latest_multirun(tmp_path / "none")


def test_results_logs_a_wandb_table_offline(multiruns, monkeypatch):
    synthetic, _ = multiruns
    monkeypatch.setenv("HOME", str(synthetic.parent))
    monkeypatch.setenv("WANDB_MODE", "offline")
    table3([synthetic], use_wandb=True)
    tables = list(synthetic.glob("wandb/offline-run-*/files/media/table/table3_*.table.json"))
    assert len(tables) == 1
    logged = json.loads(tables[0].read_text())
    with open(synthetic / "table3.csv") as f:
        header, *rows = list(csv.reader(f))
    assert logged["columns"] == header
    assert {"synthetic Recall@20 diff", "synthetic Recall@20 ci_low", "synthetic MRR@20 p",
            "synthetic MRR@20 vs"} <= set(header)
    assert [r[:2] for r in logged["data"]] == [r[:2] for r in rows]
    assert logged["data"][0][2] == pytest.approx(0.15)


@pytest.mark.parametrize("case, message", [
    ("missing", "no multirun folder at"),
    ("empty", "holds no job folders"),
    ("all failed", "none of the 1 jobs in"),
    ("seed twice", "are both seed 0 of POP on synthetic; pass each seed once."),
    ("two settings", "both use data=synthetic but with different data settings"),
    ("untested", "0_x/metrics.json has no test/recall@20: that job never ran on test "
                 "(test=false, as in a tuning sweep); pass multiruns of tested runs."),
    ("before rows", "0_x was made before rows carried their table labels (its "
                    ".hydra/config.yaml has no `table` node); run it again."),
    ("bad order", "0_x/.hydra/config.yaml: table.order=first is not a number."),
])
def test_bad_input_is_one_sentence(tmp_path, case, message):
    one, two = tmp_path / "a", tmp_path / "b"
    one.mkdir()
    two.mkdir()
    if case in ("all failed", "untested"):
        make_job(one, "0_x", "synthetic", "pop", 0)
    if case == "untested":  # a tuning trial's metrics.json
        (one / "0_x" / "metrics.json").write_text(json.dumps({"val/mrr@20": 0.1}))
    if case in ("before rows", "bad order"):  # a job saved before rows had a `table` node
        make_job(one, "0_x", "synthetic", "pop", 0, (0.1, 0.1))
        saved = one / "0_x" / ".hydra" / "config.yaml"
        config = OmegaConf.load(saved)
        if case == "bad order":
            config.table.order = "first"
        else:
            del config["table"]
        OmegaConf.save(config, saved)
    if case in ("seed twice", "two settings"):
        make_job(one, "0_x", "synthetic", "pop", 0, (0.1, 0.1))
        make_job(two, "0_x", "synthetic", "pop", 0 if case == "seed twice" else 1, (0.1, 0.1),
                 n_sessions=1000 if case == "seed twice" else 500)
    folders = {"missing": [tmp_path / "nowhere"], "empty": [one], "all failed": [one],
               "untested": [one], "before rows": [one], "bad order": [one]}.get(
        case, [one, two])
    with pytest.raises(ConfigError, match=re.escape(message)):
        table3(folders)
    assert not (one / "table3.md").exists()


def truncate_half(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


@pytest.mark.parametrize("damaged, message", [
    ("metrics.json", r"not a readable metrics file \(Unterminated string starting at: line 1 "
                     r"column \d+ \(char \d+\)\); run that job again, or delete the file to "
                     r"list the job as unfinished\.$"),
    (predictions.PREDICTIONS_FILE, r"not a readable predictions file \(parquet: File out of "
                                   r"specification: The file must end with PAR1 or PARE\); run "
                                   r"that job again, or delete the file to leave the job out "
                                   r"of the paired comparisons\.$"),
])
def test_a_truncated_metrics_or_predictions_file_is_one_sentence(paired_runs, damaged, message):
    path = paired_runs / "3_x" / damaged
    truncate_half(path)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: {message}"):
        table3([paired_runs], resamples=100)
    if damaged == "metrics.json":  # and from the command, in one line
        done = run_results(paired_runs)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith(f"error: {path}: not a readable metrics file (")
        assert done.stderr.count("\n") == 1


@pytest.mark.slow
def test_table3_sweep_end_to_end_with_two_rows_and_two_seeds(tmp_path):
    """`train.py -m experiment=table3` as a user runs it (two of its rows), then results.py."""
    sweep = tmp_path / "multirun"
    data = [o for o in TINY if o.startswith(("data.", "trainer.", "callbacks."))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path)  # keep W&B's settings files out of the real home
    done = subprocess.run(
        [sys.executable, "src/train.py", "-m", "experiment=table3", "row=pop,rib_noatt_sku",
         "seed=0,1", *data, f"hydra.sweep.dir={sweep}", f"cache_dir={tmp_path / 'cache'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    names = ["row=pop,seed=0", "row=pop,seed=1", "row=rib_noatt_sku,seed=0",
             "row=rib_noatt_sku,seed=1"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [
        f"{i}_{n}" for i, n in enumerate(names)]
    pop_run = next((sweep / f"0_{names[0]}").glob("wandb/offline-run-*/run-*.wandb"))
    blob = pop_run.read_bytes()
    assert b"model=pop" in blob and b"features=sku" in blob and b"encoder=" not in blob

    table = table3([sweep], breakdown=True)
    assert "over 2 seeds" in table and "not in the table" not in table
    assert "| SKU | POP |" in table and "|  | RIB w/o attention |" in table
    # every job left its per-example results: RIB is paired with POP, the only baseline
    assert "without predictions.parquet" not in table
    paired = table[table.index("## Paired differences from the best baseline"):]
    assert "| SKU | POP | reference | reference |" in paired
    assert re.search(r"\|  \| RIB w/o attention \| [+-]0\.\d{4} \[", paired)
    assert "## Repeat and new targets" in table


N = 60  # test examples: 30 sessions of two, the first of each a repeat target
PAIRED = {  # row -> test ranks of seed 0 and seed 1 (None: unknown target)
    ("pop", None, None): ([50] * N, [50] * N),
    ("item_knn", None, None): ([5, 50] * (N // 2), [5, 50] * (N // 2)),  # the best baseline
    ("rib", "sku", "on"): ([1] * N, [2] * (N // 2) + [4] * (N // 2)),  # better everywhere
    ("rib", "full", "off"): ([5, 50] * (N // 2), [5, None] * (N // 2)),  # Item-KNN's again
}


@pytest.fixture
def paired_runs(tmp_path):
    """A multirun whose jobs left predictions: four rows, two seeds, on two data splits."""
    folder = tmp_path / "multirun"
    number = 0
    for (model, features, attention), per_seed in PAIRED.items():
        for data_seed in (0, 1):
            for seed, ranks in enumerate(per_seed):
                make_job(folder, f"{number}_x", "synthetic", model, seed, None,
                         features or "sku", attention, data_seed=data_seed, ranks=ranks)
                number += 1
    return folder


def read_csv(folder):
    with open(folder / "table3.csv") as f:
        return {(r["data type"], r["model"]): r for r in csv.DictReader(f)}


def test_every_row_is_paired_with_the_best_baseline_on_the_same_examples(paired_runs):
    text = table3([paired_runs], resamples=2000)
    assert "over 2 seeds × 2 splits" in text
    assert "† marks a difference from the best baseline with p < 0.05" in text
    assert "| SKU | POP | 0.0000 ± 0.0000 † | 0.0000 ± 0.0000 † |" in text
    assert "|  | Item-KNN | 0.5000 ± 0.0000 | 0.1000 ± 0.0000 |" in text
    # RIB's MRR@20 by run: 1 and (1/2 + 1/4) / 2 on each split
    assert "|  | RIB | 1.0000 ± 0.0000 (+100.0%) † | 0.6875 ± 0.3608 (+587.5%) † |" in text
    assert "| SKU+Micro-behaviors | RIB w/o attention | 0.5000 ± 0.0000 (+0.0%) | " in text
    paired = text[text.index("## Paired differences from the best baseline"):]
    assert "|  | Item-KNN | reference | reference |" in paired
    # identical per-example results: no difference, p = 1 (MRR: the unknown target of seed 1
    # is a miss either way)
    assert ("| SKU+Micro-behaviors | RIB w/o attention | +0.0000 [+0.0000, +0.0000] p=1.000 "
            "| +0.0000 [+0.0000, +0.0000] p=1.000 |") in paired
    # better on every session: hit 1 against 0.5; RR (1 + 1/2) / 2 or (1 + 1/4) / 2 against
    # 0.2 or 0, i.e. a session mean of 0.65 or 0.525
    assert re.search(r"\|  \| RIB \| \+0\.5000 \[\+0\.5000, \+0\.5000\] p<0\.001 \| "
                     r"\+0\.5875 \[\+0\.5\d+, \+0\.6\d+\] p<0\.001 \|", paired)
    rows = read_csv(paired_runs)
    rib = rows["SKU", "RIB"]
    assert rib["synthetic Recall@20 vs"] == "SKU Item-KNN"
    assert float(rib["synthetic Recall@20 diff"]) == pytest.approx(0.5)
    assert float(rib["synthetic Recall@20 p"]) == pytest.approx(2 / 2001, abs=1e-6)
    assert 0.525 < float(rib["synthetic MRR@20 ci_low"]) < 0.5875 < float(
        rib["synthetic MRR@20 ci_high"]) < 0.65
    assert rib["synthetic seeds"] == "2" and rib["synthetic splits"] == "2"
    assert rows["SKU", "Item-KNN"]["synthetic Recall@20 diff"] == ""


def test_against_a_row_and_the_repeat_new_breakdown(paired_runs):
    text = table3([paired_runs], against="full/RIB w/o attention", breakdown=True,
                  resamples=500)
    assert "## Paired differences from SKU+Micro-behaviors RIB w/o attention" in text
    assert "|  | Item-KNN | +0.0000 [+0.0000, +0.0000] p=1.000 |" in text
    parts = text[text.index("## Repeat and new targets"):]
    # Item-KNN: every repeat target at rank 5, every new one missed; half are repeats
    assert "|  | Item-KNN | 0.5000 | 1.0000 | 0.2000 | 0.0000 | 0.0000 |" in parts
    assert "|  | RIB | 0.5000 | 1.0000 | 0.6875 | 1.0000 | 0.6875 |" in parts
    rows = read_csv(paired_runs)
    assert rows["SKU", "POP"]["synthetic new share"] == "0.5"
    assert rows["SKU", "Item-KNN"]["synthetic MRR@20 repeat"] == "0.2"
    assert "from SKU RIB" in table3([paired_runs], against="RIB", resamples=200)
    make_job(paired_runs, "99_x", "synthetic", "rib", 0, (0.1, 0.1), "full", "on")
    for spec, message in (("RIB", " names several rows; give one of: sku/RIB, full/RIB."),
                          ("KNN", " names no row of the table; give one of: sku/POP"),
                          ("full/RIB", ": no data set has predictions.parquet from every")):
        with pytest.raises(ConfigError, match=re.escape(f"--against '{spec}'{message}")):
            table3([paired_runs], against=spec)


def test_only_examples_of_the_same_split_are_paired(tmp_path):
    folder = tmp_path / "multirun"
    make_job(folder, "0_a", "synthetic", "pop", 0, data_seed=0, ranks=[1, 1, 1, 1])
    make_job(folder, "1_a", "synthetic", "pop", 0, data_seed=1, ranks=[50, 50, 50, 50])
    make_job(folder, "2_b", "synthetic", "item_knn", 0, data_seed=1, ranks=[1, 50, 1, 50])
    table3([folder], against="POP", resamples=200)
    knn = read_csv(folder)["SKU", "Item-KNN"]
    assert float(knn["synthetic Recall@20 diff"]) == pytest.approx(0.5)  # split 1 only
    make_job(folder, "3_b", "synthetic", "item_knn", 1, data_seed=1, ranks=[1, 1, 1])
    with pytest.raises(ConfigError, match="Item-KNN on synthetic .* do not fit together"):
        table3([folder])


def test_jobs_without_predictions_are_named_and_left_blank(paired_runs):
    (paired_runs / "0_x" / predictions.PREDICTIONS_FILE).unlink()  # a POP run
    text = table3([paired_runs], resamples=200)
    assert ("Cells with a run without predictions.parquet (no paired test or breakdown): "
            "SKU POP on synthetic.") in text
    assert "| SKU | POP | 0.0000 ± 0.0000 | 0.0000 ± 0.0000 |" in text


def test_data_splits_sweep_like_seeds_with_their_own_folder_and_run_names(hydra_job,
                                                                          monkeypatch):
    argv = ["experiment=table3", "row=pop,rib_full", "data.seed=0,1", "seed=0,1"]
    monkeypatch.setattr("sys.argv", ["src/train.py", "-m", *argv])
    jobs, params = sweep_jobs(argv)
    labels = []
    for overrides in jobs:
        cfg = hydra_job(overrides)
        labels.append(job_label(overrides, params, argv))
        assert run_identity(Path("unused"))["name"] == labels[-1]
        assert cfg.data.seed == int(labels[-1].split("data.seed=")[1][0])
    assert len(jobs) == 8 and len(set(labels)) == 8
    assert labels[:2] == ["row=pop,data.seed=0,seed=0", "row=pop,data.seed=0,seed=1"]


def test_the_caption_speaks_of_gains_only_where_the_table_shows_them(tmp_path):
    folder = tmp_path / "multirun"
    make_job(folder, "0_a", "synthetic", "rib", 0, (0.3, 0.1), "full", "on")  # no baseline
    assert "in parentheses" not in table3([folder], resamples=200)
    make_job(folder, "1_b", "synthetic", "pop", 0, (0.1, 0.05))
    text = table3([folder], resamples=200)
    assert "; in parentheses, the relative improvement over the best baseline" in text
    assert "(+200.0%)" in text
