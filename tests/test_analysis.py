"""Section 3 analyses: numbers on a hand-made frame, what is skipped, and the pictures written."""

import json
import os
import subprocess
import sys

import polars as pl
import pytest
from conftest import ROOT, TINY
from hydra import compose, initialize_config_dir
from polars.testing import assert_frame_equal

from microrec.data import schema as S
from microrec.errors import ConfigError
from microrec.reports.analyze import FIGURES, analyze, section3

PNG = b"\x89PNG\r\n\x1a\n"
SEARCH, HOME, CART_SRC = "SearchList2Product", "Home2Product", "Cart2Product"
COMMENTS, SPEC, BOTTOM = "Detail_comments", "Detail_specification", "Detail_bottom"

# (session, item, activity, dwell seconds); positions follow the row order in each session.
TINY_LOG = [
    (1, "A", SEARCH, 5.0), (1, "A", COMMENTS, 5.0), (1, "A", "Cart", 5.0),
    (1, "B", HOME, 30.0), (1, "B", SPEC, 30.0),
    (1, "A", CART_SRC, 70.0), (1, "A", "Order", 70.0),      # A bought in its 2nd interaction
    (2, "C", SEARCH, 200.0), (2, "C", "Cart", 200.0),        # carted, but D is the one bought
    (2, "D", SEARCH, 12.0), (2, "D", "Order", 12.0),
    (3, "E", HOME, None), (3, "F", SEARCH, 0.0),             # E: no dwell -> unknown bucket
    (4, "G", SEARCH, 50.0), (4, "G", "Order", 50.0), (4, "G", BOTTOM, 50.0),  # bottom after
]


def tiny_events() -> pl.DataFrame:
    frame = pl.DataFrame(TINY_LOG, schema=[S.SESSION, S.ITEM, S.ACTIVITY, S.DWELL],
                         orient="row")
    frame = frame.with_columns(pl.int_range(pl.len()).over(S.SESSION).alias(S.POS))
    return S.validate_events(frame, "tiny")


def as_dict(table: pl.DataFrame, key: str | list[str], *values: str) -> dict:
    keys = [key] if isinstance(key, str) else key
    return {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]:
            tuple(r[v] for v in values) for r in table.iter_rows(named=True)}


def test_section3_numbers_match_a_hand_count():
    result = section3(tiny_events(), S.PAPER_GROUPS, "paper")
    assert result.counts == {"events": 16, "sessions": 4, "macro_interactions": 8}
    assert not result.skipped

    # Figure 2: converted = same product ordered strictly after the activity in the session.
    fig2 = result.tables["fig2_conversion_by_activity"]
    assert fig2["activity"].to_list() == [HOME, CART_SRC, SEARCH, COMMENTS, SPEC, BOTTOM, "Cart"]
    assert as_dict(fig2, "activity", "interactions", "converted") == {
        HOME: (2, 0), CART_SRC: (1, 1), SEARCH: (5, 3), COMMENTS: (1, 1), SPEC: (1, 0),
        BOTTOM: (1, 0),  # viewed after the order: not "later"
        "Cart": (2, 1),  # C was carted but D was ordered: a different product does not count
    }
    assert fig2.filter(pl.col("activity") == SEARCH)["conversion_rate"].item() == 3 / 5

    # Figure 4: converted = product ordered in the interaction or later; unknown bucket last.
    fig4 = result.tables["fig4_conversion_by_dwell"]
    assert fig4["dwell_bucket"].to_list() == ["0-9 s", "10-24 s", "25-60 s", "61-120 s",
                                              "121+ s", "unknown"]
    assert as_dict(fig4, "dwell_bucket", "interactions", "converted") == {
        "0-9 s": (2, 1), "10-24 s": (1, 1), "25-60 s": (2, 1), "61-120 s": (1, 1),
        "121+ s": (1, 0), "unknown": (1, 0)}

    fig3 = as_dict(result.tables["fig3_click_source_vs_module"],
                   ["click_source", "browsing_module"], "interactions", "with_column_value")
    assert fig3[(SEARCH, COMMENTS)] == (5, 1) and fig3[(SEARCH, SPEC)] == (5, 0)
    assert fig3[(SEARCH, "any module")] == (5, 2) and fig3[(HOME, SPEC)] == (2, 1)
    assert fig3[(CART_SRC, "any module")] == (1, 0)
    assert len(fig3) == 3 * 4  # sources present x (modules present + any)

    fig5 = result.tables["fig5_dwell_by_click_source"]
    search = fig5.filter(pl.col("click_source") == SEARCH)
    assert search["share"].to_list() == [2 / 5, 1 / 5, 1 / 5, 0.0, 1 / 5, 0.0]
    fig6 = result.tables["fig6_dwell_by_module"]
    assert as_dict(fig6.filter(pl.col("browsing_module") == "no module"), "dwell_bucket",
                   "with_column_value") == {b: (1,) for b in fig4["dwell_bucket"].to_list()
                                            if b != "25-60 s"} | {"25-60 s": (0,)}
    rows = fig6.group_by("browsing_module").agg(pl.col("share").sum())
    assert rows["share"].to_list() == pytest.approx([1.0] * 4)  # each row is a distribution


def test_other_activities_run_what_applies_and_say_what_was_skipped():
    """A click log with its own activity names, a cart and an order group, and no dwell."""
    events = pl.DataFrame({
        S.SESSION: [1, 1, 1, 2, 2], S.POS: [0, 1, 2, 0, 1], S.ITEM: [7, 7, 8, 9, 9],
        S.ACTIVITY: ["clicks", "carts", "clicks", "clicks", "orders"]})
    groups = {"cart": ("carts",), "order": ("orders",)}
    result = section3(S.validate_events(events, "clicks"), groups)
    assert list(result.tables) == ["fig2_conversion_by_activity"]
    assert set(result.skipped) == set(FIGURES) - {"fig2_conversion_by_activity"}
    assert "click_source" in result.skipped["fig3_click_source_vs_module"]
    assert "dwell" in result.skipped["fig4_conversion_by_dwell"]
    fig2 = result.tables["fig2_conversion_by_activity"]
    assert as_dict(fig2, "activity", "group", "interactions", "converted") == {
        "carts": ("cart", 1, 0), "clicks": ("other", 3, 1)}


def test_activities_outside_every_present_group_are_ranked_as_other():
    """JData's demo names an order and a cart group but holds no cart: no activity besides
    the orders belongs to a present group (this once crashed on an empty ranking frame)."""
    events = pl.DataFrame({
        S.SESSION: [1, 1, 1, 2, 2], S.POS: [0, 1, 2, 0, 1], S.ITEM: [7, 8, 7, 9, 10],
        S.ACTIVITY: ["browse", "follow", "order", "browse", "browse"]})
    result = section3(S.validate_events(events, "demo"), {"order": ("order",),
                                                           "cart": ("cart",)})
    fig2 = result.tables["fig2_conversion_by_activity"]
    assert as_dict(fig2, "activity", "group", "interactions", "converted") == {
        "browse": ("other", 3, 1), "follow": ("other", 1, 0)}
    assert fig2["activity"].to_list() == ["browse", "follow"]


def test_bucket_labels_name_whole_seconds_and_unknown_schemes_are_refused():
    assert list(S.bucket_labels((15.0, 40.0, 100.0, 600.0)).values()) == [
        "unknown", "0-14 s", "15-39 s", "40-99 s", "100-599 s", "600+ s"]
    with pytest.raises(ConfigError, match="unknown dwell buckets 'weekly'"):
        section3(tiny_events(), S.PAPER_GROUPS, "weekly")


def compose_analyze(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="analyze", overrides=[
            *TINY, f"run_dir={tmp_path}", f"cache_dir={tmp_path / 'cache'}", *overrides])


def test_analyze_writes_every_figure_as_png_and_csv_and_logs_them_to_wandb(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    result = analyze(compose_analyze(tmp_path, "logger=wandb"))
    for name, table in result.tables.items():
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png.startswith(PNG) and len(png) > 10_000  # a real, drawn picture
        assert_frame_equal(pl.read_csv(tmp_path / f"{name}.csv"), table, check_dtypes=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["figures"] == sorted(FIGURES) and summary["skipped"] == {}
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = {p.name.split("_0_")[0] for p in runs[0].glob("files/media/images/*.png")}
    assert logged == set(FIGURES)
    assert not list(tmp_path.glob("**/*.tmp"))


@pytest.mark.slow
def test_analyze_command_line_writes_its_run_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path)
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "src/analyze.py", "logger=none", "data.buckets=hup",
         "data.source.n_sessions=300", f"hydra.run.dir={run}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in FIGURES:
        assert (run / f"{name}.png").read_bytes().startswith(PNG)
        assert pl.read_csv(run / f"{name}.csv").height > 0
    assert pl.read_csv(run / "fig4_conversion_by_dwell.csv")["dwell_bucket"][0] == "0-14 s"
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "analyze.log").is_file()
