"""results.py --slices (reports/slices.py): each test example's slices against a brute-force
reading of its input, a difference planted in one slice found there and nowhere else, the
pooled test's weights, and the report from job folders, in process and as a command."""

import json
import re
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from conftest import ROOT, compose_cfg
from omegaconf import OmegaConf

from microrec.config import build
from microrec.data import schema as S
from microrec.errors import ConfigError
from microrec.reports import slices
from microrec.reports.results import table3
from microrec.reports.significance import paired_bootstrap, pooled_bootstrap
from microrec.runs import predictions

MAX_LEN = 20  # some test inputs are longer: the slices must read the truncated input
DATA = ["data.eval_targets=all", f"data.max_len={MAX_LEN}"]
PLANTED = "Cart"  # the last activity whose examples row A gets right and row B wrong


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("slices")


@pytest.fixture(scope="module")
def dm(folder):
    """The synthetic data module the fake jobs below ran on (600 sessions, 60 in test)."""
    data = build(compose_cfg(folder, DATA).data)
    data.setup()
    return data


def brute_force(dm) -> list[dict]:
    """Each test example's slices, read from its input one example at a time."""
    split, prepared = dm.prepared.splits["test"], dm.prepared
    labels = S.bucket_labels(prepared.bucket_edges)
    found = []
    for i in range(split.target.size):
        window = split.tokens[max(split.first[i], split.end[i] - MAX_LEN):split.end[i]]
        names = ["unknown" if a < S.NUM_SPECIAL else prepared.activities[a - S.NUM_SPECIAL]
                 for a in window[:, 1].tolist()]
        bucket = int(window[-1, 2])
        found.append({
            "input length": len(window), "last activity": names[-1],
            "cart or order": "holds one" if {"Cart", "Order"} & set(names) else "holds none",
            "last dwell": "unknown" if bucket == S.UNK else f"bucket {bucket - S.NUM_SPECIAL + 1}",
            "dwell range": labels[bucket],
            "repeat": bool(split.target[i] >= S.NUM_SPECIAL and split.target[i] in window[:, 0])})
    return found


def test_each_example_is_sliced_by_the_input_the_models_saw(dm):
    split = dm.prepared.splits["test"]
    assert ((split.end - split.first) > MAX_LEN).any()  # truncation is exercised
    inputs = slices.split_inputs(dm.prepared, S.PAPER_GROUPS, MAX_LEN)
    expected = brute_force(dm)
    for column in ("input length", "last activity", "cart or order", "last dwell",
                   "dwell range"):
        assert inputs[column].to_list() == [e[column] for e in expected], column
    assert inputs["session"].to_list() == split.session.tolist()
    assert inputs["position"].to_list() == split.position.tolist()
    # the input is the models' own: Examples' lengths and last activities
    batch = dm.dataset("test")[list(range(split.target.size))]
    length = batch["length"].numpy()
    assert (inputs["input length"].to_numpy() == length).all()
    last = batch["activity"][np.arange(length.size), length - 1].numpy()
    names = {S.UNK: "unknown", **{i + S.NUM_SPECIAL: a
                                  for i, a in enumerate(dm.prepared.activities)}}
    assert inputs["last activity"].to_list() == [names[a] for a in last.tolist()]
    assert set(inputs["cart or order"]) == {"holds one", "holds none"}


def test_length_thirds_cut_at_the_order_statistics(dm):
    length = slices.split_inputs(dm.prepared, S.PAPER_GROUPS, MAX_LEN)["input length"]
    length = length.to_numpy()
    short, middle, long = slices.length_thirds(length)
    n = length.size
    # a cut is the length of the example ranked k (from 0): fewer than k + 1 examples are
    # shorter, and at least k + 1 are as short or shorter
    for third, k in ((short, (n - 1) // 3), (middle, 2 * (n - 1) // 3)):
        cut = length[third.rows].max()
        assert (length < cut).sum() <= k < (length <= cut).sum()
    assert (short.rows | middle.rows | long.rows).all()
    assert not (short.rows & middle.rows).any() and not (middle.rows & long.rows).any()
    assert length[short.rows].max() < length[middle.rows].min()
    assert length[middle.rows].max() < length[long.rows].min()
    assert long.detail == f"{length[long.rows].min()}-{length[long.rows].max()}"
    for n in range(3, 13):  # distinct lengths: each cut is exactly the example ranked k
        length = np.random.default_rng(n).permutation(n) + 1
        sizes = [int(s.rows.sum()) for s in slices.length_thirds(length)]
        assert sizes == [(n - 1) // 3 + 1, 2 * (n - 1) // 3 - (n - 1) // 3,
                         n - 1 - 2 * (n - 1) // 3]


def averaged(split, hit, rr, repeat, data_seed=0) -> pl.DataFrame:
    """A `significance.seed_average` table of one split's test examples."""
    n = split.target.size
    return pl.DataFrame({"data_seed": np.full(n, data_seed), "example": np.arange(n),
                         "session": split.session, "position": split.position,
                         "repeat": repeat, "hit": hit, "rr": rr, "runs": np.ones(n)})


def test_a_difference_planted_in_one_slice_is_found_there_and_only_there(dm):
    split = dm.prepared.splits["test"]
    inputs = slices.split_inputs(dm.prepared, S.PAPER_GROUPS, MAX_LEN).with_columns(
        pl.lit(0, pl.Int64).alias("data_seed"))
    planted = (inputs["last activity"] == PLANTED).to_numpy()
    rng = np.random.default_rng(0)
    shared = rng.random(split.target.size) < 0.4  # both rows hit these
    repeat = np.array([e["repeat"] for e in brute_force(dm)])
    b = averaged(split, shared.astype(float), shared / 4, repeat)
    a = averaged(split, np.where(planted, 1.0, shared), np.where(planted, 1.0, shared / 4),
                 repeat)
    result = slices.compare(a, b, inputs, resamples=2000)
    found = {(r.slice.dimension, r.slice.name): r for r in result.results}
    cart = found["last activity", PLANTED]
    for metric, test in cart.tests.items():
        assert test.p < 0.01 and test.low > 0 and test.examples == planted.sum()
        assert cart.means[metric][0] == 1.0
    for (dimension, name), r in found.items():
        share = planted[r.slice.rows].mean()  # A - B is 1 on planted examples where B missed
        gain = (planted & ~shared)[r.slice.rows].mean()
        assert r.tests["recall@20"].diff == pytest.approx(gain), (dimension, name)
        if dimension == "last activity" and name != PLANTED:
            assert share == 0 and all(t.diff == 0 and t.p == 1 for t in r.tests.values())
    assert [name for (dimension, name) in found if dimension == "target"] == ["repeat", "new"]
    assert found["target", "repeat"].slice.rows.sum() == repeat.sum()
    with pytest.raises(ConfigError, match="the test split of synth rebuilt from the runs' data "
                       "config holds other examples than their predictions.parquet"):
        slices.compare(a, b, inputs.with_columns(pl.col("position") + 1), 200, "synth")


def test_the_pooled_test_weighs_data_sets_equally_not_by_their_sessions():
    rng = np.random.default_rng(1)
    small, large = np.repeat(np.arange(10), 3), np.repeat(np.arange(100), 3)  # 10x sessions
    diff = np.concatenate([rng.normal(1.0, 0.5, small.size), rng.normal(0.0, 0.5, large.size)])
    session = np.concatenate([small, large])  # the same session ids in both: kept apart
    group = np.repeat([0, 1], [small.size, large.size])
    means = [diff[group == 0].mean(), diff[group == 1].mean()]
    (equal,) = pooled_bootstrap(diff, session, group, resamples=2000)
    assert equal.diff == pytest.approx((means[0] + means[1]) / 2)
    assert equal.sessions == 110 and equal.low < 0.5 < equal.high and equal.p < 0.01
    (by_sessions,) = pooled_bootstrap(diff, session, group, weights="sessions",
                                      resamples=2000)
    assert by_sessions.diff == pytest.approx((10 * means[0] + 100 * means[1]) / 110)
    assert by_sessions.high < 0.5  # the large data set dominates only when asked to
    # one data set: the pooled test is the paired test
    one = group == 1
    assert pooled_bootstrap(diff[one], session[one], group[one]) == \
        paired_bootstrap(diff[one], session[one])
    with pytest.raises(ValueError, match="weights must be one of equal, sessions"):
        pooled_bootstrap(diff, session, group, weights="examples")


def save_job(folder, multirun, name, data, features, source_seed, ranks, split) -> None:
    """A finished job as train.py leaves it: its composed config, metrics.json and a
    predictions.parquet with these test ranks (None: a miss)."""
    cfg = compose_cfg(folder, [*DATA, "model=rib", f"features={features}",
                                        f"data.source.seed={source_seed}"])
    job = multirun / name
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save({"hydra": {"runtime": {"choices": {"data": data, "model": "rib"}}}},
                   job / ".hydra" / "hydra.yaml")
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    n = split.target.size
    table = pl.DataFrame({"split": ["test"] * n, "example": np.arange(n),
                          "session": split.session, "position": split.position,
                          "rank": pl.Series(ranks, dtype=pl.Int64),
                          "repeat": np.zeros(n, dtype=bool)})
    table.write_parquet(job / predictions.PREDICTIONS_FILE)
    values = predictions.metrics(table, ks=(20,))
    (job / "metrics.json").write_text(json.dumps(
        {"test/recall@20": values["recall@20"], "test/mrr@20": values["mrr@20"]}))


@pytest.fixture(scope="module")
def multiruns(folder, dm):
    """Two data sets (the synthetic log with two generator seeds), each with RIB on SKU and
    on all micro-behaviors; the latter ranks the targets after a cart first."""
    made = []
    for source_seed, data in enumerate(("synth_a", "synth_b")):
        data_module = build(compose_cfg(folder, [*DATA, f"data.source.seed={source_seed}"])
                            .data)
        data_module.setup()
        split = data_module.prepared.splits["test"]
        inputs = slices.split_inputs(data_module.prepared, S.PAPER_GROUPS, MAX_LEN)
        planted = (inputs["last activity"] == PLANTED).to_list()
        shared = np.random.default_rng(source_seed).integers(1, 40, split.target.size)
        sku = [int(r) if r <= 20 else None for r in shared]
        full = [1 if p else r for p, r in zip(planted, sku, strict=True)]
        multirun = folder / "multirun" / data
        save_job(folder, multirun, "0_row=rib_sku", data, "sku", source_seed, sku, split)
        save_job(folder, multirun, "1_row=rib_full", data, "full", source_seed, full, split)
        made.append(multirun)
    return made


def test_slices_report_each_data_set_and_the_pooled_test(multiruns):
    text = table3(multiruns, sliced="", resamples=500)
    assert text == (multiruns[0] / "table3.md").read_text()
    assert "## Slices: SKU+Micro-behaviors RIB minus SKU RIB" in text
    assert "### synth_a" in text and "### synth_b" in text
    assert "### Pooled over synth_a, synth_b (each data set weighted equally" in text
    table = pl.read_csv(multiruns[0] / slices.CSV_FILE)
    assert set(table["data set"]) == {"synth_a", "synth_b", "pooled (equal)"}
    cart = table.filter(pl.col("slice") == PLANTED)
    assert cart.height == 3 and (cart["recall@20 p"] < 0.05).all()
    assert (cart["recall@20 diff"] > 0).all() and (cart["A recall@20"].drop_nulls() == 1).all()
    others = table.filter((pl.col("dimension") == "last activity")
                          & (pl.col("slice") != PLANTED))
    assert (others["recall@20 diff"] == 0).all() and (others["recall@20 p"] == 1).all()
    pooled = table.filter(pl.col("data set") == "pooled (equal)")
    per_set = table.filter(pl.col("data set") != "pooled (equal)")
    mean_all = per_set.filter(pl.col("slice") == "all")["mrr@20 diff"].mean()
    assert pooled.filter(pl.col("slice") == "all")["mrr@20 diff"].item() == \
        pytest.approx(mean_all)
    assert np.allclose(pooled["mrr@20 half_width"],
                       (pooled["mrr@20 ci_high"] - pooled["mrr@20 ci_low"]) / 2)
    assert (multiruns[0] / "slices_1.png").stat().st_size > 0
    by_sessions = table3(multiruns, sliced="full/RIB", against="sku/RIB", resamples=200,
                         pool_weights="sessions")
    assert "(each data set weighted by its test sessions)" in by_sessions


def test_with_wandb_the_slices_table_and_figures_are_logged_beside_table3(multiruns,
                                                                            monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(multiruns[0].parent / "wandb-home"))
    table3(multiruns, sliced="", use_wandb=True, resamples=200)
    runs = list((multiruns[0] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = {p.name.split("_0_")[0]: p for p in runs[0].glob("files/media/table/*.json")}
    assert set(tables) == {"table3", "slices"}
    logged = json.loads(tables["slices"].read_text())
    written = pl.read_csv(multiruns[0] / slices.CSV_FILE)
    assert logged["columns"] == written.columns and len(logged["data"]) == written.height
    images = {p.name.split("_0_")[0] for p in runs[0].glob("files/media/images/*.png")}
    assert images == {"slices_1"}


@pytest.mark.parametrize(("sliced", "against", "message"), [
    ("RIB", None, "--slices 'RIB' names several rows; give one of: sku/RIB, full/RIB."),
    ("sku/RIB", None, "--slices 'sku/RIB': that row has no SKU row of its model"),
    ("full/RIB", "full/RIB", "--slices: no pair of rows with predictions.parquet"),
])
def test_slices_that_name_no_pair_are_one_sentence(multiruns, sliced, against, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        table3(multiruns, against=against, sliced=sliced, resamples=200)


@pytest.mark.slow
def test_results_command_with_slices(multiruns):
    done = subprocess.run([sys.executable, str(ROOT / "src" / "results.py"), *map(
        str, multiruns), "--slices", "--resamples", "200", "--pool-weights", "sessions"],
        cwd=multiruns[0].parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (multiruns[0] / "table3.md").read_text()
    assert "### Pooled over synth_a, synth_b (each data set weighted by its test sessions)" \
        in done.stdout
    assert f"{multiruns[0] / slices.CSV_FILE}" in done.stderr
