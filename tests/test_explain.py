"""The attention case study: weights, summaries, pictures, and errors, on tiny trained runs;
with head=repeat_explore also the repeat attention and the gate."""

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch
from conftest import ROOT, compose_cfg
from omegaconf import OmegaConf

from microrec.data.schema import NUM_SPECIAL, PAD
from microrec.errors import ConfigError
from microrec.reports import interpret as I
from microrec.reports.explain import READABLE, explain, load_runs, pick_example
from microrec.runs.folders import find_checkpoints
from microrec.runs.train import train

PNG = b"\x89PNG\r\n\x1a\n"
REPEAT_FIGURES = ("repeat_example", "repeat_by_activity", "repeat_by_dwell",
                  "repeat_by_last_activity", "repeat_gate")
JOBS = ("features=sku", "features=full", "attention=off", "head=repeat_explore")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A multirun-like folder: four tiny runs, each with its config, metrics and checkpoint."""
    root = tmp_path_factory.mktemp("multirun")
    for i, job in enumerate(JOBS):
        run = root / f"{i}_{job}"
        cfg = compose_cfg(root / "cache", [job, "model.init=random", "data.source.n_sessions=300",
                                            "+trainer.limit_train_batches=4"])
        cfg.run_dir = str(run)  # a Hydra override cannot hold the '=' of a job folder's name
        train(cfg)
        (run / ".hydra").mkdir()
        OmegaConf.save(cfg, run / ".hydra" / "config.yaml")  # what Hydra saves for a job
    return root


@pytest.fixture(scope="module")
def runs(sweep):
    return load_runs(find_checkpoints([str(sweep)]), notes=[])


@pytest.fixture(scope="module")
def explained(sweep, tmp_path_factory):
    """explain's summary and output folder for the whole sweep."""
    out = tmp_path_factory.mktemp("explain")
    return explain([str(sweep)], out, logger="none"), out


def test_runs_load_in_job_order_with_readable_labels(runs):
    assert [r.label for r in runs] == ["SKU · features=sku", "SKU+Micro-behaviors · features=full",
                                       "SKU+Micro-behaviors · attention=off",
                                       "SKU+Micro-behaviors · head=repeat_explore"]
    assert [r.model.attention is not None for r in runs] == [True, True, False, True]
    assert [type(r.model.head).__name__ for r in runs] == [*["SoftmaxHead"] * 3,
                                                           "RepeatExploreHead"]
    assert runs[0].dm is runs[1].dm is runs[2].dm is runs[3].dm  # one data set, rebuilt once


def test_attention_is_a_distribution_over_real_positions_and_zero_on_padding(runs):
    data = runs[0].dm.dataset("test")
    lengths = data.lengths()
    short, long = int(lengths.argmin()), int(lengths.argmax())
    assert lengths[short] < lengths[long]
    batch = data[[long, short]]
    real = batch["item"] != PAD
    for run in runs[:2]:
        weights = I.attention(run.model, batch)  # (2, T)
        assert torch.all(weights[~real] == 0)
        assert torch.all(weights[real] > 0)
        assert torch.allclose(weights.sum(1), torch.ones(2))

        tokens, examples, _, _ = I.scan(run.model, data, run.label, batch_size=16)
        per_example = tokens.group_by(I.EXAMPLE).agg(pl.col(I.WEIGHT).sum(), pl.len(),
                                                     pl.col(I.LENGTH).first()).sort(I.EXAMPLE)
        assert per_example.height == examples.height == len(data)
        assert np.allclose(per_example[I.WEIGHT].to_numpy(), 1.0, atol=1e-5)
        assert (per_example["len"] == per_example[I.LENGTH]).all()  # no padding token kept
    scan = I.scan(runs[2].model, data, runs[2].label)
    assert scan.tokens.height == 0  # attention=off: no weights
    assert scan.repeat.height == scan.products.height == 0  # head=softmax: no repeat outputs
    assert scan.examples[I.GATE].is_null().all()


def test_summaries_match_a_hand_count():
    tokens = pl.DataFrame({
        I.RUN: ["r"] * 5, I.EXAMPLE: [0, 0, 1, 1, 1], I.ACTIVITY: [2, 3, 2, 2, 1],
        I.DWELL_BUCKET: [2, 2, 2, 3, 3], I.WEIGHT: [0.25, 0.75, 0.5, 0.3, 0.2],
        I.LENGTH: [2, 2, 3, 3, 3]})
    table = I.by_channel(tokens, I.ACTIVITY, {3: "Cart", 2: "Home2Product", 1: "unknown"})
    assert table[I.ACTIVITY].to_list() == ["Cart", "Home2Product", "unknown"]  # names' order
    assert table[I.TOKENS].to_list() == [1, 3, 1]
    assert table[I.MEAN_WEIGHT].to_list() == pytest.approx([0.75, (0.25 + 0.5 + 0.3) / 3, 0.2])
    assert table[I.RELATIVE].to_list() == pytest.approx([1.5, (0.5 + 1.5 + 0.9) / 3, 0.6])

    examples = pl.DataFrame({I.RUN: ["r"] * 5, I.HISTORY: [1, 4, 5, 12, 60],
                             I.RANK: [1, 30, 4, 2, 20]})
    table = I.by_length(examples)
    assert table[I.LENGTH_BIN].to_list() == ["1-4", "5-9", "10-19", "50+"]
    assert table[I.EXAMPLES].to_list() == [2, 1, 1, 1]
    assert table["recall@20"].to_list() == [0.5, 1.0, 1.0, 1.0]
    assert table["mrr@20"].to_list() == pytest.approx([0.5, 0.25, 0.5, 0.05])


def test_explain_writes_the_pictures_and_reproduces_each_runs_test_metrics(runs, explained):
    summary, out = explained
    with_attention = [runs[0], runs[1], runs[3]]
    figures = ("attention_example", "attention_by_activity", "attention_by_dwell",
               "metrics_by_length", *REPEAT_FIGURES)
    assert sorted(summary["figures"]) == sorted(figures)
    for name in figures:
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(PNG) and len(png) > 10_000
        assert pl.read_csv(out / f"{name}.csv").height > 0
    assert any("attention=off" in note and "no attention weights" in note
               for note in summary["notes"])

    for run, row in zip(runs, summary["runs"], strict=True):
        written = json.loads((run.dir / "metrics.json").read_text())
        assert row["test"]["recall@20"] == pytest.approx(written["test/recall@20"], abs=1e-6)
        assert row["test"]["mrr@20"] == pytest.approx(written["test/mrr@20"], abs=1e-6)

    # Figure 8: the attention runs over one example, with the rank of its next product.
    example = pl.read_csv(out / "attention_example.csv")
    assert example[I.RUN].unique(maintain_order=True).to_list() == [
        r.label for r in with_attention]
    index = summary["example"]
    data = runs[0].dm.dataset("test")
    batch = data[[index]]
    for run in with_attention:
        rows = example.filter(pl.col(I.RUN) == run.label)
        assert rows[I.POSITION].to_list() == list(range(1, int(batch["length"][0]) + 1))
        assert rows[I.WEIGHT].sum() == pytest.approx(1.0, abs=1e-5)
        assert rows[I.RANK].unique().to_list() == [direct_rank(run.model, batch)]

    by_length = pl.read_csv(out / "metrics_by_length.csv")
    for run, row in zip(runs, summary["runs"], strict=True):
        bins = by_length.filter(pl.col(I.RUN) == run.label)
        assert bins[I.EXAMPLES].sum() == len(data)
        recall = (bins["recall@20"] * bins[I.EXAMPLES]).sum() / len(data)
        assert recall == pytest.approx(row["test"]["recall@20"])
    activity = pl.read_csv(out / "attention_by_activity.csv")
    assert set(activity[I.RUN]) == {r.label for r in with_attention}


def direct_rank(model, batch) -> int:
    """The rank of the next product of a one-example batch, counted over every product other
    than the input's last (never the target)."""
    with torch.no_grad():
        scores = model(batch)[0]
    scores[batch["item"][0, int(batch["length"][0]) - 1]] = float("-inf")
    scores = scores[NUM_SPECIAL:]
    return int((scores >= scores[int(batch["target"][0]) - NUM_SPECIAL]).sum())


def hand_count(model, data):
    """The repeat head's outputs, one example at a time in plain Python: every position it
    can return to as (example, activity, dwell, weight, candidates); per example (gate,
    can repeat, is repeat, top weight, most recent); every product it can return to in a
    repeat-target example as (activity of its last micro-behavior, probability, is next)."""
    positions, examples, products = [], [], []
    for i in range(len(data)):
        batch = data[[i]]
        with torch.no_grad():
            out = model.repeat_weights(batch)
        n = int(batch["length"][0])
        items, acts = batch["item"][0, :n].tolist(), batch["activity"][0, :n].tolist()
        dwell, weights = batch["dwell"][0, :n].tolist(), out["repeat"][0, :n].tolist()
        target = int(batch["target"][0])
        keep = [t for t in range(n) if items[t] >= NUM_SPECIAL and items[t] != items[-1]]
        positions += [(i, acts[t], dwell[t], weights[t], len(keep)) for t in keep]
        prob, last = {}, {}
        for t in keep:
            prob[items[t]] = prob.get(items[t], 0.0) + weights[t]
            last[items[t]] = t
        repeated = target in prob
        top = repeated and all(prob[target] > p for j, p in prob.items() if j != target)
        recent = repeated and last[target] == max(last.values())
        examples.append((float(out["gate"][0]), bool(keep), repeated, top, recent))
        if repeated:
            products += [(acts[t], prob[j], j == target) for j, t in last.items()]
    return positions, examples, products


def test_repeat_tables_match_a_hand_count_over_the_test_split(runs, explained):
    summary, out = explained
    run, dm = runs[3], runs[3].dm
    positions, examples, products = hand_count(run.model, dm.dataset("test"))
    names = I.activity_names(dm.prepared)

    table = pl.read_csv(out / "repeat_by_activity.csv")
    assert set(table[I.RUN]) == {run.label}  # the softmax runs are left out
    expected = {}
    for _, act, _, weight, size in positions:
        expected.setdefault(names[act], []).append((weight, weight * size))
    assert table[I.ACTIVITY].to_list() == [a for a in names.values() if a in expected]
    for act, tokens, mean, relative in table.select(
            I.ACTIVITY, I.TOKENS, I.MEAN_WEIGHT, I.RELATIVE).iter_rows():
        assert tokens == len(expected[act])
        assert mean == pytest.approx(np.mean([w for w, _ in expected[act]]), abs=1e-5)
        assert relative == pytest.approx(np.mean([r for _, r in expected[act]]), abs=1e-5)
    dwell = pl.read_csv(out / "repeat_by_dwell.csv")
    assert dwell[I.TOKENS].sum() == len(positions)

    last = pl.read_csv(out / "repeat_by_last_activity.csv")
    for act, n, n_next, mean, next_mean in last.select(
            I.ACTIVITY, I.PRODUCTS, I.NEXT, I.MEAN_PROB, I.NEXT_PROB).iter_rows():
        rows = [(p, is_next) for a, p, is_next in products if names[a] == act]
        assert (n, n_next) == (len(rows), sum(is_next for _, is_next in rows))
        assert mean == pytest.approx(np.mean([p for p, _ in rows]), abs=1e-5)
        if n_next:
            assert next_mean == pytest.approx(np.mean([p for p, x in rows if x]), abs=1e-5)
    assert last[I.NEXT].sum() == sum(x for *_, x in products)  # one next product per example

    gate, can, repeated, top, recent = map(np.array, zip(*examples, strict=True))
    assert np.all(gate[~can] == 0)  # nothing to return to: g = 0
    on, off = gate[can & repeated], gate[can & ~repeated]
    assert on.size and off.size
    pairs = on[:, None] - off[None, :]
    row = pl.read_csv(out / "repeat_gate.csv").row(0, named=True)
    assert row.pop(I.RUN) == run.label
    assert row == pytest.approx(summary["runs"][3]["repeat"], rel=1e-6)
    assert row[I.EXAMPLES] == can.sum() and row["repeat_targets"] == repeated.sum()
    assert row["repeat_share"] == pytest.approx(repeated[can].mean())
    assert row["mean_gate"] == pytest.approx(gate[can].mean(), abs=1e-5)
    assert row["mean_gate_repeat"] == pytest.approx(on.mean(), abs=1e-5)
    assert row["mean_gate_new"] == pytest.approx(off.mean(), abs=1e-5)
    assert row["gate_auc"] == pytest.approx(((pairs > 0) + 0.5 * (pairs == 0)).mean(), abs=1e-6)
    assert row["top_weight_share"] == pytest.approx(top[repeated].mean())
    assert row["most_recent_share"] == pytest.approx(recent[repeated].mean())


def test_repeat_example_shows_weights_gate_and_rank_and_softmax_runs_are_noted(runs,
                                                                              explained):
    summary, out = explained
    run = runs[3]
    batch = run.dm.dataset("test")[[summary["example"]]]
    n = int(batch["length"][0])
    items = batch["item"][0, :n]
    rows = pl.read_csv(out / "repeat_example.csv")
    assert set(rows[I.RUN]) == {run.label}
    with torch.no_grad():
        out_ = run.model.repeat_weights(batch)
    assert rows[I.GATE].unique().to_list() == [pytest.approx(float(out_["gate"][0]))]
    assert rows[I.RANK].unique().to_list() == [direct_rank(run.model, batch)]
    excluded = ((items < NUM_SPECIAL) | (items == items[-1])).tolist()
    assert rows[I.REPEAT_WEIGHT].is_null().to_list() == excluded
    assert rows[I.REPEAT_WEIGHT].sum() == pytest.approx(1.0, abs=1e-5)
    assert rows[I.ATTENTION_WEIGHT].sum() == pytest.approx(1.0, abs=1e-5)

    for r, row in zip(runs, summary["runs"], strict=True):
        assert row["head"] == ("repeat_explore" if r is run else "softmax")
        assert (row["repeat"] is None) == (r is not run)
        noted = [note for note in summary["notes"] if note.startswith(f"{r.label}: ")
                 and "head=softmax" in note and "no repeat attention" in note]
        assert len(noted) == (r is not run)


def test_default_example_is_readable_and_its_next_product_is_among_its_inputs(runs):
    data = runs[0].dm.dataset("test")
    index = pick_example(data, None)
    batch = data[[index]]
    assert READABLE[0] <= int(batch["length"][0]) <= READABLE[1]
    assert (batch["item"][0] == batch["target"][0]).any()
    assert pick_example(data, 3) == 3


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist."),
    ("empty", "holds no checkpoints/best.ckpt"),
    ("no_config", "has no .hydra/config.yaml"),
    ("bad_example", "example 100000 is out of range: the test split has"),
])
def test_user_errors_end_in_one_sentence(sweep, tmp_path, case, message):
    paths, example = {
        "missing": ([str(tmp_path / "nowhere")], None),
        "empty": ([str(tmp_path)], None),
        "bad_example": ([str(sweep)], 100_000),
    }.get(case, (None, None))
    if case == "no_config":  # a copy of a checkpoint outside its run folder
        copy = tmp_path / "best.ckpt"
        copy.write_bytes((sweep / "0_features=sku" / "checkpoints" / "best.ckpt").read_bytes())
        paths = [str(copy)]
    with pytest.raises(ConfigError, match=message):
        explain(paths, tmp_path / "out", example, logger="none")
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.slow
def test_explain_command_writes_its_folder_and_a_user_error_is_one_line(sweep, tmp_path):
    def run(*args):
        env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
        env["HOME"] = str(tmp_path)  # keep W&B's settings files out of the real home
        return subprocess.run([sys.executable, "src/explain.py", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    done = run(str(sweep), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("{")  # no blank lines left by progress bars
    assert "wandb:" not in done.stderr
    printed = json.loads(done.stdout[:done.stdout.rindex("}") + 1])
    assert list(printed) == [f"{label} · {job}" for label, job in (
        ("SKU", "features=sku"), ("SKU+Micro-behaviors", "features=full"),
        ("SKU+Micro-behaviors", "attention=off"),
        ("SKU+Micro-behaviors", "head=repeat_explore"))]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["example"] >= 0
    assert len(list((tmp_path / "out" / "wandb").glob("offline-run-*"))) == 1

    done = run(str(tmp_path / "nowhere"), "--logger", "none")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'} does not exist."]
    assert "Traceback" not in done.stderr + done.stdout
