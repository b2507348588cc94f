"""The stats command: Table 2 and the distributions on a hand-made frame, then as a user runs it."""

import os
import subprocess
import sys

import polars as pl
import pytest
from conftest import ROOT, SHARED_DATA
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from polars.testing import assert_frame_equal

from microrec.data import schema as S
from microrec.data.protocol import BUCKET_EDGES
from microrec.reports.stats import print_summary, summarize


def hand_made():
    """Five sessions; s5 has one macro interaction. Per event: item, activity, dwell."""
    sessions = {
        1: [("A", "Home2Product", 5.0), ("A", "Detail_comments", 5.0), ("B", "Cart", 30.0),
            ("C", "Order", None)],  # C: last macro, no dwell and no next event -> unknown
        2: [("B", "SearchList2Product", 130.0), ("A", "SearchList2Product", 9.9)],
        3: [("C", "SearchList2Product", 10.0), ("A", "Cart", 60.0), ("C", "Order", 61.0)],
        4: [("D", "SearchList2Product", 120.0), ("E", "Home2Product", 121.0)],
        5: [("A", "SearchList2Product", 1000.0), ("A", "Detail_comments", 1000.0)],
    }
    start = {1: 100, 2: 200, 3: 300, 4: 400, 5: 50}  # chronological: s1, s2 | s3 | s4
    rows = [(s, pos, item, act, dwell, start[s] + pos)
            for s, events in sessions.items() for pos, (item, act, dwell) in enumerate(events)]
    frame = pl.DataFrame(rows, orient="row",
                         schema=[S.SESSION, S.POS, S.ITEM, S.ACTIVITY, S.DWELL, S.TS])
    return S.validate_events(frame, "hand-made")


def test_table2_and_distributions_by_hand():
    summary = summarize(hand_made(), split=(0.5, 0.25, 0.25), activity_groups=S.PAPER_GROUPS)
    assert summary.dropped_sessions == 1
    assert summary.table.rows() == [
        # part, sessions, products, macro interactions, micro-behaviors, targets
        ("all", 5, 5, 11, 13, 6),
        ("train", 2, 3, 5, 6, 3),
        ("val", 1, 2, 3, 3, 2),
        ("test", 1, 2, 2, 2, 1),
    ]
    assert_frame_equal(summary.activities, pl.DataFrame({
        "activity": ["SearchList2Product", "Cart", "Detail_comments", "Home2Product", "Order"],
        "group": ["click_source", "cart", "browsing_module", "click_source", "order"],
        "micro_behaviors": pl.Series([5, 2, 2, 2, 2], dtype=pl.UInt32),
        "share": [5 / 13, 2 / 13, 2 / 13, 2 / 13, 2 / 13],
    }))
    assert summary.dwell.rows() == [
        ("1", "0-9 s", 2, 0.2), ("2", "10-24 s", 1, 0.1), ("3", "25-60 s", 2, 0.2),
        ("4", "61-120 s", 2, 0.2), ("5", "121+ s", 2, 0.2), ("unknown", "no dwell", 1, 0.1),
    ]


def test_bucket_labels_are_whole_seconds():
    assert list(S.bucket_labels(BUCKET_EDGES["hup"]).values()) == [
        "unknown", "0-14 s", "15-39 s", "40-99 s", "100-599 s", "600+ s"]
    labels = S.bucket_labels((3.000000001, 7.0, 8.0, 20.0))
    assert (labels[S.NUM_SPECIAL], labels[S.NUM_SPECIAL + 1]) == ("0-3 s", "4-6 s")


def stats_cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="stats", overrides=list(overrides))


def test_stats_prints_the_tables_of_a_configured_data_set(tmp_path, capsys):
    path = tmp_path / "jd"
    path.write_text("1+5+c+3+20 1+6+c+3+20 2+9+c+1+8\n4+5+c+3+20 5+5+c+3+500\n")
    summary = print_summary(stats_cfg("data=jd_appliances", f"data.source.path={path}",
                              "data.split=[0.5,0.5,0.0]"))
    out = capsys.readouterr().out
    assert summary.table.row(0) == ("all", 2, 4, 4, 5, 2)
    assert "jd_appliances: Table 2" in out
    assert any(line.split() == ["│", "all", "│", "2", "│", "4", "│", "4", "│", "5", "│", "2", "│"]
               for line in out.splitlines())
    assert "SearchList2Product" in out and "121+ s" in out


def test_a_path_for_data_that_reads_no_file_is_refused_not_ignored(capsys):
    # the synthetic source has no path setting: the config does not compose
    with pytest.raises(ConfigCompositionException, match="data.source.path"):
        print_summary(stats_cfg("data.source.path=/x"))
    assert capsys.readouterr().out == ""  # refused before any table of synthetic data

@pytest.mark.skipif(not (SHARED_DATA / "jd-micro-behaviors").is_dir(),
                    reason="../shared/data/jd-micro-behaviors is not here")
def test_stats_of_the_jd_appliances_sample(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    summary = print_summary(stats_cfg("data=jd_appliances"))
    table = summary.table
    assert table.row(0) == ("all", 1000, 9134, 34_177, 57_332, 33_177)
    assert table.filter(pl.col("part") != "all").select(
        pl.col("sessions", "macro_interactions", "micro_behaviors").sum()).row(0) \
        == (1000, 34_177, 57_332)
    assert summary.activities["micro_behaviors"].sum() == 57_332
    assert summary.dwell["macro_interactions"].sum() == 34_177


@pytest.mark.slow
def test_a_bad_file_is_one_sentence_and_a_nonzero_exit(tmp_path):
    path = tmp_path / "jd"
    path.write_text("1+5+c+3+20 2+5+c+3+20\n3+5+c+3+20 4+5+c+3\n")  # line 2 truncated
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    done = subprocess.run(
        [sys.executable, "src/stats.py", "data=jd_appliances", f"data.source.path={path}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert (f"error: {path}, line 2: token '4+5+c+3' is not "
            "sku+behavior_type+category+time_interval+dwell_time.") in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
