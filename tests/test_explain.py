"""The attention case study: weights, summaries, pictures, and errors, on tiny trained runs."""

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

from microrec import interpret as I
from microrec.errors import ConfigError
from microrec.explain import READABLE, explain, load_runs, pick_example
from microrec.runs import find_checkpoints
from microrec.schema import NUM_SPECIAL, PAD
from microrec.training import train

PNG = b"\x89PNG\r\n\x1a\n"
JOBS = ("features=sku", "features=full", "attention=off")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A multirun-like folder: three tiny runs, each with its config, metrics and checkpoint."""
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


def test_runs_load_in_job_order_with_readable_labels(runs):
    assert [r.label for r in runs] == ["SKU · features=sku", "SKU+Micro-behaviors · features=full",
                                       "SKU+Micro-behaviors · attention=off"]
    assert [r.model.attention is not None for r in runs] == [True, True, False]
    assert runs[0].dm is runs[1].dm is runs[2].dm  # one data set, rebuilt once


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

        tokens, examples = I.scan(run.model, data, run.label, batch_size=16)
        per_example = tokens.group_by(I.EXAMPLE).agg(pl.col(I.WEIGHT).sum(), pl.len(),
                                                     pl.col(I.LENGTH).first()).sort(I.EXAMPLE)
        assert per_example.height == examples.height == len(data)
        assert np.allclose(per_example[I.WEIGHT].to_numpy(), 1.0, atol=1e-5)
        assert (per_example["len"] == per_example[I.LENGTH]).all()  # no padding token kept
    tokens, _ = I.scan(runs[2].model, data, runs[2].label)
    assert tokens.height == 0  # attention=off: no weights


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


def test_explain_writes_the_pictures_and_reproduces_each_runs_test_metrics(sweep, runs,
                                                                           tmp_path):
    summary = explain([str(sweep)], tmp_path, logger="none")
    figures = ("attention_example", "attention_by_activity", "attention_by_dwell",
               "metrics_by_length")
    assert sorted(summary["figures"]) == sorted(figures)
    for name in figures:
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png.startswith(PNG) and len(png) > 10_000
        assert pl.read_csv(tmp_path / f"{name}.csv").height > 0
    assert any("attention=off" in note and "no attention weights" in note
               for note in summary["notes"])

    for run, row in zip(runs, summary["runs"], strict=True):
        written = json.loads((run.dir / "metrics.json").read_text())
        assert row["test"]["recall@20"] == pytest.approx(written["test/recall@20"], abs=1e-6)
        assert row["test"]["mrr@20"] == pytest.approx(written["test/mrr@20"], abs=1e-6)

    # Figure 8: the two attention runs over one example, with the rank of its next product.
    example = pl.read_csv(tmp_path / "attention_example.csv")
    assert example[I.RUN].unique(maintain_order=True).to_list() == [r.label for r in runs[:2]]
    index = summary["example"]
    data = runs[0].dm.dataset("test")
    batch = data[[index]]
    for run in runs[:2]:
        rows = example.filter(pl.col(I.RUN) == run.label)
        assert rows[I.POSITION].to_list() == list(range(1, int(batch["length"][0]) + 1))
        assert rows[I.WEIGHT].sum() == pytest.approx(1.0, abs=1e-5)
        with torch.no_grad():
            scores = run.model(batch)[0, NUM_SPECIAL:]
        target = int(batch["target"][0]) - NUM_SPECIAL
        assert rows[I.RANK].unique().to_list() == [int((scores >= scores[target]).sum())]

    by_length = pl.read_csv(tmp_path / "metrics_by_length.csv")
    for run, row in zip(runs, summary["runs"], strict=True):
        bins = by_length.filter(pl.col(I.RUN) == run.label)
        assert bins[I.EXAMPLES].sum() == len(data)
        recall = (bins["recall@20"] * bins[I.EXAMPLES]).sum() / len(data)
        assert recall == pytest.approx(row["test"]["recall@20"])
    activity = pl.read_csv(tmp_path / "attention_by_activity.csv")
    assert set(activity[I.RUN]) == {r.label for r in runs[:2]}


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
    printed = json.loads(done.stdout[:done.stdout.rindex("}") + 1])
    assert list(printed) == [f"{label} · {job}" for label, job in (
        ("SKU", "features=sku"), ("SKU+Micro-behaviors", "features=full"),
        ("SKU+Micro-behaviors", "attention=off"))]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["example"] >= 0
    assert len(list((tmp_path / "out" / "wandb").glob("offline-run-*"))) == 1

    done = run(str(tmp_path / "nowhere"), "--logger", "none")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nowhere'} does not exist."
    assert "Traceback" not in done.stderr + done.stdout
