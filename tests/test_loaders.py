"""Real-data loaders on hand-written files: exact canonical tables, and every bad input."""

import csv
import gzip
import logging
import shutil
from dataclasses import fields

import hydra
import numpy as np
import polars as pl
import pytest
from conftest import ROOT, SHARED_DATA, compose_cfg
from polars.testing import assert_frame_equal

from microrec.data import loaders
from microrec.data import schema as S
from microrec.data.loaders import EventLog, JDSessions, typed_ids, write_jd_sessions
from microrec.data.module import MicroDataModule
from microrec.data.protocol import SPLITS, SplitArrays
from microrec.data.sources import EventSource, FrameSource
from microrec.data.synthetic import SyntheticSource
from microrec.errors import ConfigError, DataError

T0 = 1_577_836_800  # 2020-01-01 00:00:00 UTC


def canonical(**columns):
    """The canonical table with the given columns and typed nulls elsewhere."""
    n = len(columns[S.SESSION])
    types = {S.SESSION: pl.Int64, S.POS: pl.Int32, S.ACTIVITY: pl.String, S.DWELL: pl.Float64,
             S.TS: pl.Int64, S.CATEGORY: pl.String}
    data = {c: columns.get(c, [None] * n) for c in S.COLUMNS}
    item = pl.Int64 if all(isinstance(i, int) for i in columns[S.ITEM]) else pl.String
    return pl.DataFrame(data, schema={**types, S.ITEM: item}).select(S.COLUMNS)


def write(path, text):
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# -- JD sessions ---------------------------------------------------------------------------
def test_jd_tokens_become_canonical_events(tmp_path):
    path = write(tmp_path / "jd", "11+5+c1+3+20 11+7+c1+4+20 22+9+c2+0+7.5\n"
                                  "\n"
                                  "  33+1+c1+2+0   11+10+c1+1+15\r\n")
    events = JDSessions(str(path)).load()
    expected = canonical(
        session=[1, 1, 1, 3, 3],  # the line number; the blank line 2 is skipped
        pos=[0, 1, 2, 0, 1],
        item=[11, 11, 22, 33, 11],
        activity=["SearchList2Product", "Detail_specification", "Cart", "Home2Product",
                  "Order"],
        dwell_s=[20.0, 20.0, 7.5, 0.0, 15.0],
        category=["c1", "c1", "c2", "c1", "c1"],
    )
    assert_frame_equal(events, expected)
    assert_frame_equal(S.validate_events(events, "jd"), expected)
    assert JDSessions(str(path)).activity_groups == S.PAPER_GROUPS


def test_typed_ids_are_integers_only_when_every_id_survives_the_round_trip():
    assert typed_ids(pl.Series(["7", "12"])).dtype == pl.Int64
    assert typed_ids(pl.Series(["7", "007"])).to_list() == ["7", "007"]  # leading zero
    assert typed_ids(pl.Series(["7", "sku9"])).dtype == pl.String


@pytest.mark.parametrize("text, message", [
    ("1+5+c+3+20 1+5+c+3\n", r"jd, line 1: token '1\+5\+c\+3' is not sku\+behavior_type"),
    ("1+5+c+3+20\n2+5+c+3+20 2+5+c+", r"jd, line 2: token '2\+5\+c\+' is not"),  # truncated
    ("1+5+c+3+20\n\n3+11+c+3+20\n", r"jd, line 3: unknown behavior type '11' \(expected 1"),
    ("1+5+c+3+abc\n", r"jd, line 1: dwell time 'abc' is not a number\.$"),
    ("1+5+c+3+20\n1+5+c+3+-4\n", r"jd, line 2: negative dwell time -4\.$"),
    (b"1+5+c+3+20\n1+5+\xff+3+20\n", r"jd, line 2: not UTF-8 text\.$"),
    ("\n  \n", r"jd: the file holds no sessions\.$"),
    ("1+5+c+3+20\n" + "\0" * 960 + "\n",  # a line of NUL bytes: shown escaped, cut short
     r"jd, line 2: token '(\\x00){14}…' is not sku\+behavior_type\+"),
    ("1+5+c+3+20 2\x1b[31m+5+c+3+20\n",
     r"jd, line 1: product id '2\\x1b\[31m' holds a control character\.$"),
])
def test_bad_jd_files_name_the_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "jd", text)
    with pytest.raises(DataError, match=message):
        JDSessions(str(path)).load()


def test_a_missing_jd_file_is_one_sentence(tmp_path):
    with pytest.raises(DataError, match=r"nope: no such file \(point data.source.path at"):
        JDSessions(str(tmp_path / "nope")).fingerprint()
    with pytest.raises(DataError, match="a folder, not a session file"):
        JDSessions(str(tmp_path)).load()


def test_fingerprint_follows_content_not_location(tmp_path):
    a = write(tmp_path / "a", "1+5+c+3+20 2+5+c+3+20\n")
    b = tmp_path / "elsewhere" / "b"
    b.parent.mkdir()
    shutil.copy(a, b)
    assert JDSessions(str(a)).fingerprint() == JDSessions(str(b)).fingerprint()
    write(b, "1+5+c+3+21 2+5+c+3+20\n")
    assert JDSessions(str(a)).fingerprint() != JDSessions(str(b)).fingerprint()


def test_jd_config_reads_data_path_and_the_cache_follows_content(tmp_path):
    path = write(tmp_path / "sample", "1+5+c+3+20 2+6+c+3+5 3+9+c+1+8\n"
                                      + "4+5+c+3+20 5+5+c+3+5\n" * 4)
    split = "data.split=[0.4,0.3,0.3]"  # five sessions: 0.8 / 0.1 / 0.1 leaves one empty
    cfg = compose_cfg(tmp_path, ["data=jd_computers", f"data.source.path={path}", split],
                      tiny=False)
    dm = hydra.utils.instantiate(cfg.data)
    assert (dm.source.path, dm.source.name) == (path, "jd_computers")
    dm.setup()
    stats = dm.prepared.stats
    assert (stats["sessions"], stats["events"]) == (5, 3 + 4 * 2)
    assert sum(stats[f"{part}/sessions"] for part in ("train", "val", "test")) == 5
    assert dm.prepared.has_activity and dm.prepared.has_dwell
    copy = shutil.copy(path, tmp_path / "copy")
    moved = compose_cfg(tmp_path, ["data=jd_computers", f"data.source.path={copy}", split],
                        tiny=False)
    assert hydra.utils.instantiate(moved.data).cache_key() == dm.cache_key()


# -- generic event logs --------------------------------------------------------------------
COLUMNS = {"session": "session", "item": "item", "activity": "activity", "ts": "ts"}


def event_log(tmp_path, files: dict, **settings):
    """An EventLog over files written into tmp_path/log (one file: that file)."""
    folder = tmp_path / "log"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        write(folder / name, text)
    path = folder / next(iter(files)) if len(files) == 1 else folder
    return EventLog(str(path), **{"columns": COLUMNS, **settings})


def test_user_logs_are_cut_into_sessions_at_inactivity_gaps(tmp_path):
    source = event_log(tmp_path, {"log.csv": (
        "time,uid,sku,kind\n"
        "2020-01-01 00:30:30,u1,A,1\n"  # 1800 s after the previous u1 event: same session
        "2020-01-01 00:00:00,u1,A,1\n"
        "2020-01-01 00:00:10,u2,A,1\n"
        "2020-01-01 00:00:30,u1,B,2\n"
        "\n"                            # blank: skipped and counted
        "2020-01-01 01:00:31,u1,A,1\n"  # 1801 s later: a new session
        "2020-01-01 00:00:10,u2,B,1\n"  # same second as u2's A: file order decides
    )}, columns={"user": "uid", "item": "sku", "activity": "kind", "ts": "time"},
        activities={1: "view", 2: "cart"}, ts_format="%Y-%m-%d %H:%M:%S")
    expected = canonical(
        session=[0, 0, 0, 1, 2, 2],
        pos=[0, 1, 2, 0, 0, 1],
        item=["A", "B", "A", "A", "A", "B"],
        activity=["view", "cart", "view", "view", "view", "view"],
        ts=[T0, T0 + 30, T0 + 1830, T0 + 3631, T0 + 10, T0 + 10],
    )
    assert_frame_equal(source.load(), expected)


def test_nested_json_lines_with_millisecond_timestamps(tmp_path):
    source = event_log(tmp_path, {"s.jsonl": (
        '{"session": 7, "events": [{"aid": 5, "ts": 1000500, "type": "clicks"},'
        ' {"aid": 6, "ts": 1002999, "type": "carts"}]}\n'
        "\n"
        '{"session": 3, "events": []}\n'
        '{"session": 4, "events": [{"aid": 5, "ts": 999000, "type": "orders"}]}\n'
    )}, columns={"session": "session", "item": "aid", "activity": "type", "ts": "ts"},
        explode="events", ts_format="ms", activity_groups={"cart": ["carts"]})
    expected = canonical(session=[0, 1, 1], pos=[0, 0, 1], item=[5, 5, 6],
                         activity=["orders", "clicks", "carts"], ts=[999, 1000, 1002])
    assert_frame_equal(source.load(), expected)
    assert source.activity_groups == {"cart": ("carts",)}


def test_parquet_with_given_dwell_category_and_datetimes(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    pl.DataFrame({
        "sid": ["s2", "s1", "s1"],
        "product": ["p9", "p1", "p2"],
        "seen": (pl.Series([T0 + 5, T0 + 60, T0]) * 1000).cast(pl.Datetime("ms")),
        "secs": [3.5, 12.0, None],
        "cat": ["x", "y", "y"],
    }).write_parquet(folder / "part.parquet")
    source = EventLog(str(folder), columns={"session": "sid", "item": "product", "ts": "seen",
                                            "dwell_s": "secs", "category": "cat"})
    expected = canonical(session=[0, 0, 1], pos=[0, 1, 0], item=["p2", "p1", "p9"],
                         ts=[T0, T0 + 60, T0 + 5], dwell_s=[None, 12.0, 3.5],
                         category=["y", "y", "x"])
    assert_frame_equal(source.load(), expected)


TAOBAO_HEADER = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
TAOBAO_COLUMNS = {"user": "user_id", "item": "item_id", "category": "category_id",
                  "activity": "behavior_type", "ts": "timestamp"}
DAY = ["2020-01-01T08:00:00+08:00", "2020-01-02T00:00:00Z"]  # [T0, T0 + 86400) in two zones


def test_a_header_less_csv_with_categories_and_a_time_window(tmp_path, caplog):
    """Taobao's shape: no header line, a category column, a stray timestamp outside the
    log's window (dropped and counted, not a session of its own)."""
    source = event_log(tmp_path, {"log.csv": (
        f"7,100,c1,pv,{T0 + 60}\n"
        f"7,101,c2,buy,{T0 + 90}\n"
        "7,102,c2,pv,15\n"            # stray: dropped, counted, logged
        "\n"                          # blank: skipped, and line numbers still count it
        f"8,100,c1,cart,{T0}\n"
        f"7,100,c1,fav,{T0 + 86_399}\n"  # the window's last second: kept
        f"8,101,c2,pv,{T0 + 86_400}\n"   # its end: outside
    )}, columns=TAOBAO_COLUMNS, header=TAOBAO_HEADER, ts_window=DAY,
        activities={"pv": "pv", "cart": "cart", "fav": "fav", "buy": "buy"})
    with caplog.at_level(logging.INFO, logger="microrec.data.loaders"):
        table = source.load()
    expected = canonical(session=[0, 0, 1, 2], pos=[0, 1, 0, 0], item=[100, 101, 100, 100],
                         activity=["pv", "buy", "fav", "cart"],
                         ts=[T0 + 60, T0 + 90, T0 + 86_399, T0],
                         category=["c1", "c2", "c1", "c1"])
    assert_frame_equal(table, expected)
    assert f"dropped 2 of 6 event(s) timed outside ts_window [{T0}, {T0 + 86_400})" \
        in caplog.text
    assert source.fingerprint() != EventLog(str(source.path), TAOBAO_COLUMNS,
                                            header=TAOBAO_HEADER).fingerprint()
    # a bad value is named by its line, counted from the file's first line (no header)
    bad = event_log(tmp_path, {"log.csv": f"7,100,c1,pv,{T0}\n\n7,101,c2,pv,soon\n"},
                    columns=TAOBAO_COLUMNS, header=TAOBAO_HEADER)
    with pytest.raises(DataError, match=r"log.csv, line 3: timestamp 'soon' is not a number"):
        bad.load()


def test_a_folder_of_files_is_one_log(tmp_path):
    source = event_log(tmp_path, {
        "a.csv": "session,item,activity,ts\n1,10,v,100.0\n2,10,v,50\n",
        "b.csv": "session,item,activity,ts\n1,11,v,160\n",
        "notes.txt": "not read",
    })
    expected = canonical(session=[0, 0, 1], pos=[0, 1, 0], item=[10, 11, 10],
                         activity=["v", "v", "v"], ts=[100, 160, 50])
    assert_frame_equal(source.load(), expected)
    before = source.fingerprint()
    write(tmp_path / "log" / "b.csv", "session,item,activity,ts\n1,11,v,161\n")
    assert EventLog(str(tmp_path / "log"), columns=COLUMNS).fingerprint() != before
    assert EventLog(str(tmp_path / "log"), columns=COLUMNS, ts_format="ms").fingerprint() \
        != EventLog(str(tmp_path / "log"), columns=COLUMNS).fingerprint()


def test_the_split_depends_on_the_sessions_not_on_the_file_type(tmp_path):
    """CSV keys are text and Parquet or JSON keys numbers: both must order sessions alike, or
    the session numbering, and so the seeded random split, would follow the file type."""
    events = SyntheticSource(n_sessions=300, n_items=40, n_categories=4).load()
    log = events.select((pl.col(S.SESSION) * 7 - 500).alias("visit"),  # some negative
                        pl.format("u{}", pl.col(S.SESSION) % 13).alias("visitor"),
                        S.ITEM, S.ACTIVITY)  # no time: a seeded random split
    log.write_csv(tmp_path / "log.csv")
    log.write_parquet(tmp_path / "log.parquet")
    log.write_ndjson(tmp_path / "log.jsonl")
    prepared = []
    for name in ("log.csv", "log.parquet", "log.jsonl"):
        source = EventLog(str(tmp_path / name),
                          {"session": "visit", "user": "visitor", "item": "item",
                           "activity": "activity"})
        dm = MicroDataModule(source, features="sku_act", cache_dir=str(tmp_path / "cache"))
        dm.setup()
        prepared.append(dm.prepared)
    first = prepared[0]
    for other in prepared[1:]:
        assert other.items == first.items
        for name in SPLITS:
            for f in fields(SplitArrays):  # session ids, tokens, targets, ...
                np.testing.assert_array_equal(getattr(other.splits[name], f.name),
                                              getattr(first.splits[name], f.name))


GOOD = "session,item,activity,ts,dwell\n1,10,v,100,5\n"


@pytest.mark.parametrize("name, text, settings, message", [
    ("a.csv", GOOD, {"columns": {**COLUMNS, "item": "sku"}},
     r"a.csv: no column\(s\) sku \(named in the event-log mapping\); it has 'session', "
     r"'item'"),
    ("a.csv", GOOD + "1,11,click,160,5\n", {"activities": {"v": "view"}},
     r"a.csv, line 3: unknown activity code 'click' \(the mapping knows v\)\.$"),
    ("a.csv", GOOD + "1,11,v,160,abc\n", {"columns": {**COLUMNS, "dwell_s": "dwell"}},
     r"a.csv, line 3: dwell time 'abc' is not a number\.$"),
    ("a.csv", GOOD + "1,11,v,160,-2\n", {"columns": {**COLUMNS, "dwell_s": "dwell"}},
     r"a.csv, line 3: negative dwell time -2\.$"),
    ("a.csv", GOOD + "1,11,v,160,5,9\n", {}, r"a.csv, line 3: 6 fields where the header has 5"),
    ("a.csv", GOOD + "1,11,v\n", {}, r"a.csv, line 3: 3 fields where the header has 5"),
    ("a.csv", GOOD + "1,,v,160,5\n", {}, r"a.csv, line 3: no value in column 'item' \(item\)"),
    ("a.csv", GOOD + "1,11,v,soon,5\n", {}, r"a.csv, line 3: timestamp 'soon' is not a number"),
    ("a.csv", GOOD, {"ts_format": "%Y-%m-%d"},
     r"a.csv, line 2: timestamp '100' is not a date-time of format '%Y-%m-%d'\.$"),
    ("a.csv", "session,item,activity,ts\n\n", {}, r"a.csv: the event log holds no events\.$"),
    ("a.csv", "", {}, r"a.csv: the file is empty \(not even a header\)\.$"),
    ("a.jsonl", '{"session": 1, "item": 2, "activity": "v", "ts": 3}\n{"session": 1, "it',
     {}, r"a.jsonl, line 2: not a JSON object \(truncated or malformed\)\.$"),
    ("a.jsonl", '{"session": 1, "events": 5}\n', {"explode": "events"},
     r"a.jsonl: column 'events' does not hold lists of event records\.$"),
    ("a.parquet", "not parquet", {}, r"a.parquet: cannot be read as parquet \("),
    ("a.txt", GOOD, {}, r"a.txt: unknown file type '.txt'; set data.source.file_format"),
    ("a.csv", GOOD + "1,11\0,v,160,5\n", {},
     r"a.csv, line 3: product id '11\\x00' holds a control character\.$"),
    ("a.csv", GOOD + "1\x07,11,v,160,5\n", {},
     r"a.csv, line 3: session id '1\\x07' holds a control character\.$"),
    ("a.csv", "visitor,item,ts\nu1,10,100\nu\x7f2,11,160\n",
     {"columns": {"user": "visitor", "item": "item", "ts": "ts"}},
     r"a.csv, line 3: user id 'u\\x7f2' holds a control character\.$"),
    ("a.jsonl", '{"session": 1, "item": "10", "activity": "v", "ts": 3}\n'
                '{"session": 1, "item": "1\\u00001", "activity": "v", "ts": 4}\n', {},
     r"a.jsonl, line 2: product id '1\\x001' holds a control character\.$"),
    ("a.csv", GOOD + "1,11,v,1" + "\0" * 500 + ",5\n", {},
     r"a.csv, line 3: timestamp '1(\\x00){14}…' is not a number"),
    ("a.csv", "1,10,v,100,5\n1,11,v\n", {"header": [*COLUMNS, "dwell"]},
     r"a.csv, line 2: 3 fields where data.source.header names 5\.$"),
    ("a.csv", "", {"header": [*COLUMNS, "dwell"]}, r"a.csv: the file is empty\.$"),
    ("a.jsonl", '{"session": 1, "item": 2, "activity": "v", "ts": 3}\n', {"header": [*COLUMNS]},
     r"a.jsonl: a jsonl file, but data.source.header names the columns of header-less CSV"),
    ("a.csv", GOOD, {"ts_window": [0, 100]},
     r"a.csv: no event lies inside ts_window \[0, 100\) \(unix seconds\)\.$"),
])
def test_bad_event_logs_are_one_sentence_naming_file_and_line(tmp_path, name, text, settings,
                                                              message):
    with pytest.raises(DataError, match=message):
        event_log(tmp_path, {name: text}, **settings).load()


def test_missing_paths_are_one_sentence(tmp_path):
    with pytest.raises(DataError, match=r"nope: no such file or folder \(point data.source.path"):
        EventLog(str(tmp_path / "nope"), columns=COLUMNS).fingerprint()
    write(tmp_path / "readme.md", "no data here")
    with pytest.raises(DataError, match=r"the folder holds no \.csv, \.parquet"):
        EventLog(str(tmp_path), columns=COLUMNS).load()


@pytest.mark.parametrize("settings, message", [
    ({"path": None}, r"no event log given: set data.source.path"),
    ({"columns": {**COLUMNS, "price": "p"}}, r"unknown column role\(s\) price"),
    ({"columns": {"session": "s"}}, r"needs an item column and a session or user column"),
    ({"columns": {"user": "u", "item": "i"}}, r"cutting users' events .* needs a ts column"),
    ({"ts_format": "minutes"}, r"ts_format 'minutes' is neither a unit \(s, ms, us, ns\)"),
    ({"session_gap_s": 0}, r"session_gap_s must be positive"),
    ({"file_format": "xlsx"}, r"unknown file_format 'xlsx'"),
    ({"activities": {1: "view"}, "activity_groups": {"order": ["order"]}},
     r"activity group 'order' names order, which the activity mapping never produces"),
    ({"header": "session,item"}, r"header must list the column names of a CSV file"),
    ({"header": ["session", "item", "session"]}, r"header names must be distinct and non-empty"),
    ({"ts_window": [100, 100]}, r"ts_window must start before it ends, got \[100, 100\]"),
    ({"ts_window": ["2017-11-25", "soon"]},
     r"ts_window bound 'soon' is neither unix seconds nor an ISO date-time"),
    ({"ts_window": [1, 2, 3]}, r"ts_window must be \[start, end\]"),
    ({"ts_window": 1511539200}, r"ts_window must be \[start, end\], got '1511539200'"),
    ({"columns": {"session": "s", "item": "i"}, "ts_window": [0, 9]},
     r"ts_window needs a ts column"),
])
def test_impossible_event_log_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        EventLog(**{"path": "log.csv", "columns": COLUMNS, **settings})


# -- the shipped real data (skipped where ../shared/data is missing) -------------------------
REAL = [  # data config, file under shared/data, sessions, micro-behaviors, products
    ("jd_appliances", "jd-micro-behaviors/JD_Applicances_sample", 1000, 57_332, 9_134),
    ("jd_computers", "jd-micro-behaviors/JD_Computers_sample", 1000, 43_014, 9_289),
    ("jdata_demo", "jdata-demo", 5_052 + 581, 27_183 + 2_262, 12_195),
    ("otto", "otto-fixture/train.jsonl", 20, 862, 510),
    ("taobao", "taobao-userbehavior/UserBehavior_2h.csv", 62_116, 96_168, 75_384),
]


@pytest.mark.parametrize("data, rel, sessions, events, products", REAL)
def test_shipped_real_data_loads_with_the_documented_counts(tmp_path, monkeypatch, data, rel,
                                                             sessions, events, products):
    if not (SHARED_DATA / rel).exists():
        pytest.skip(f"{SHARED_DATA / rel} is not here")
    monkeypatch.chdir(ROOT)  # the configs' default paths are relative to the repository
    cfg = compose_cfg(tmp_path, [f"data={data}"], tiny=False)
    source = hydra.utils.instantiate(cfg.data.source)
    table = S.validate_events(source.load(), source.name)
    assert table.select(pl.col(S.SESSION).n_unique(), pl.len(), pl.col(S.ITEM).n_unique()).row(0) \
        == (sessions, events, products)
    assert table[S.ACTIVITY].null_count() == 0
    assert set(source.activity_groups["order"]) <= set(table[S.ACTIVITY].unique())
    if isinstance(source, JDSessions):
        assert table[S.CATEGORY].n_unique() == {"jd_appliances": 71, "jd_computers": 77}[data]
        assert table[S.DWELL].null_count() == 0 and table[S.TS].null_count() == table.height
    else:
        assert table[S.TS].null_count() == 0 and table[S.DWELL].null_count() == table.height


TAOBAO = SHARED_DATA / "taobao-userbehavior"


@pytest.mark.parametrize("name", ["UserBehavior_2h.csv", "UserBehavior_10k.csv"])
def test_taobao_drops_exactly_the_events_outside_its_nine_days(tmp_path, monkeypatch, caplog,
                                                               name):
    """Against a plain reading of the file: every event inside the data set's window is
    loaded (with its category and behavior), and only those outside are dropped."""
    if not (TAOBAO / name).exists():
        pytest.skip(f"{TAOBAO / name} is not here")
    monkeypatch.chdir(ROOT)
    cfg = compose_cfg(tmp_path, ["data=taobao", f"data.source.path={TAOBAO / name}"], tiny=False)
    with open(TAOBAO / name, newline="") as f:
        rows = list(csv.reader(f))
    start, end = 1_511_539_200, 1_512_316_800  # 2017-11-25 and 2017-12-04, 00:00 Beijing
    inside = [r for r in rows if start <= int(r[4]) < end]
    outside = [int(r[4]) for r in rows if not start <= int(r[4]) < end]
    source = hydra.utils.instantiate(cfg.data.source)
    with caplog.at_level(logging.INFO, logger="microrec.data.loaders"):
        table = S.validate_events(source.load(), source.name)
    assert f"dropped {len(outside)} of {len(rows)} event(s)" in caplog.text
    assert table.height == len(inside)
    assert table[S.CATEGORY].n_unique() == len({r[2] for r in inside})
    assert sorted(table.select(S.ITEM, S.CATEGORY, S.ACTIVITY, S.TS).rows()) \
        == sorted((int(r[1]), r[2], r[3], int(r[4])) for r in inside)
    if name == "UserBehavior_2h.csv":  # the shared/data README: one stray timestamp, 15
        assert outside == [15]
        assert (len(rows), table[S.CATEGORY].n_unique()) == (96_169, 3_757)


# -- JD files read in blocks, and written back -----------------------------------------------
def python_jd_table(path):
    """An independent reading of a JD file with plain Python, for comparison."""
    rows = []
    for number, line in enumerate(path.read_text().split("\n"), start=1):
        for pos, token in enumerate(line.split()):
            sku, code, category, _, dwell = token.split("+")
            rows.append((number, pos, int(sku), S.ACTIVITIES[int(code) - 1], float(dwell),
                         category))
    columns = [S.SESSION, S.POS, S.ITEM, S.ACTIVITY, S.DWELL, S.CATEGORY]
    return canonical(**{c: [r[i] for r in rows] for i, c in enumerate(columns)})


@pytest.mark.parametrize("block_bytes", [1, 7, 40, 1 << 20])
def test_jd_blocks_keep_lines_whole_and_numbered(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(loaders, "BLOCK_BYTES", block_bytes)
    path = write(tmp_path / "jd", "11+5+c1+3+20 11+7+c1+4+20 22+9+c2+0+7.5\n"
                                  "\n"
                                  "  33+1+c1+2+0   11+10+c1+1+15\r\n"
                                  "44+2+c3+1+5")  # no newline at the end
    assert_frame_equal(JDSessions(str(path)).load(), python_jd_table(path))
    write(path, "1+5+c+3+20\n" * 9 + "1+5+c+3+20 1+55+c+3+20\n")
    with pytest.raises(DataError, match=r"jd, line 10: unknown behavior type '55'"):
        JDSessions(str(path)).load()
    write(path, b"1+5+c+3+20 1+5+c+3+20\n" * 4 + "1+5+c+3+20 1+5+\xe9+3+20\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"jd, line 5: not UTF-8 text\.$"):
        JDSessions(str(path)).load()


@pytest.mark.parametrize("rel", ["jd-micro-behaviors/JD_Applicances_sample",
                                 "jd-micro-behaviors/JD_Computers_sample"])
def test_shipped_jd_samples_match_a_plain_python_reading(monkeypatch, rel):
    if not (SHARED_DATA / rel).exists():
        pytest.skip(f"{SHARED_DATA / rel} is not here")
    expected = python_jd_table(SHARED_DATA / rel)
    assert_frame_equal(JDSessions(str(SHARED_DATA / rel)).load(), expected)
    monkeypatch.setattr(loaders, "BLOCK_BYTES", 1 << 14)  # about 70 blocks
    assert_frame_equal(JDSessions(str(SHARED_DATA / rel)).load(), expected)


def test_written_jd_files_read_back_as_the_same_table(tmp_path, monkeypatch):
    events = SyntheticSource(n_sessions=300, n_items=40, n_categories=4).load()
    path = tmp_path / "synthetic.jd"
    write_jd_sessions(events, path, sessions_per_write=70)
    monkeypatch.setattr(loaders, "BLOCK_BYTES", 1000)
    # sessions become line numbers, and JD lines carry no absolute time
    expected = events.with_columns(pl.col(S.SESSION) + 1, pl.lit(None, dtype=pl.Int64).alias(S.TS))
    assert_frame_equal(JDSessions(str(path)).load(), expected)
    first = path.read_text().split("\n")[0].split(" ")
    session = events.filter(pl.col(S.SESSION) == 0)
    row = session.row(0, named=True)
    gap = session[S.TS][1] - session[S.TS][0]
    assert first[0] == f"{row[S.ITEM]}+{S.ACTIVITIES.index(row[S.ACTIVITY]) + 1}+" \
                       f"{row[S.CATEGORY]}+{gap}+{int(row[S.DWELL])}"
    assert first[-1].split("+")[3] == "0"  # a session's last event has no next one


# -- file formats by content ---------------------------------------------------------------
CSV_LOG = "session,item,activity,ts\n1,10,v,100\n2,10,v,50\n\n1,11,v,160\n"
CSV_TABLE = canonical(session=[0, 0, 1], pos=[0, 1, 0], item=[10, 11, 10],
                      activity=["v", "v", "v"], ts=[100, 160, 50])
JSONL_LOG = ('\n  \n{"session": 1, "item": 10, "activity": "v", "ts": 100}\n'
             '{"session": 2, "item": 10, "activity": "v", "ts": 50}\n'
             '{"session": 1, "item": 11, "activity": "v", "ts": 160}\n')


@pytest.mark.parametrize("name, content", [
    ("part-0.parquet.snappy", "parquet"),  # Parquet by its magic bytes, whatever the name
    ("events.csv", "parquet"),              # content before extension
    ("events.csv.gz", CSV_LOG),             # gzip, format from the inner extension
    ("events.gz", CSV_LOG),                 # gzip, sniffed: not '{' -> CSV
    ("events.gz", JSONL_LOG),               # gzip, sniffed past blank lines: '{' -> JSON lines
    ("events.jsonl.gz", JSONL_LOG),
    ("dump.bin", CSV_LOG),                  # plain text with an unknown name: file_format
])
def test_files_are_recognised_by_content_before_name(tmp_path, name, content):
    path = tmp_path / name
    if content == "parquet":
        pl.read_csv(CSV_LOG.encode()).write_parquet(path, compression="snappy")
    else:
        path.write_bytes(gzip.compress(content.encode()) if ".gz" in name
                         else content.encode())
    settings = {"file_format": "csv"} if name == "dump.bin" else {}
    assert_frame_equal(EventLog(str(path), columns=COLUMNS, **settings).load(), CSV_TABLE)


def test_a_folder_reads_files_recognised_by_content(tmp_path):
    pl.DataFrame({"session": [1], "item": [10], "activity": ["v"], "ts": [100]}) \
        .write_parquet(tmp_path / "a.parquet.snappy")
    write(tmp_path / "b.gz", gzip.compress(b'{"session": 2, "item": 10, "activity": "v", '
                                           b'"ts": 50}\n'))
    write(tmp_path / "c.csv.gz", gzip.compress(b"session,item,activity,ts\n1,11,v,160\n"))
    write(tmp_path / "notes.txt", "not read")
    write(tmp_path / "_SUCCESS", "")
    assert_frame_equal(EventLog(str(tmp_path), columns=COLUMNS).load(), CSV_TABLE)
    with pytest.raises(DataError, match=r"a.parquet.snappy: no column\(s\) sku"):
        EventLog(str(tmp_path), columns={**COLUMNS, "item": "sku"}).load()
    only_csv = EventLog(str(tmp_path), columns=COLUMNS, file_format="csv")
    assert [p.name for p in only_csv.files()] == ["c.csv.gz"]


def test_the_file_format_setting_overrides_content_and_name(tmp_path):
    path = write(tmp_path / "events.jsonl.gz", gzip.compress(CSV_LOG.encode()))
    assert_frame_equal(EventLog(str(path), columns=COLUMNS, file_format="csv").load(),
                       CSV_TABLE)
    with pytest.raises(DataError, match=r"events.jsonl.gz, line 1: not a JSON object"):
        EventLog(str(path), columns=COLUMNS).load()


@pytest.mark.parametrize("name, data, message", [
    ("a.csv.gz", gzip.compress((CSV_LOG + "1,12,v\n").encode()),
     r"a.csv.gz, line 6: 3 fields where the header has 4\.$"),
    ("a.csv.gz", gzip.compress((CSV_LOG + "1,12,v,soon\n").encode()),
     r"a.csv.gz, line 6: timestamp 'soon' is not a number"),
    ("a.gz", gzip.compress((JSONL_LOG + '{"session": 3, "it\n').encode()),
     r"a.gz, line 6: not a JSON object \(truncated or malformed\)\.$"),
    ("a.csv.gz", gzip.compress(CSV_LOG.encode() + b"1,\xff,v,1\n"),
     r"a.csv.gz, line 6: not UTF-8 text\.$"),
    ("a.csv.gz", gzip.compress(CSV_LOG.encode() * 50)[:-20],
     r"a.csv.gz: not a readable gzip file \("),
    ("a.gz", gzip.compress(CSV_LOG.encode())[:30], r"a.gz: not a readable gzip file \("),
    ("a.parquet.gz", gzip.compress(CSV_LOG.encode()), r"a.parquet.gz: cannot be read as"),
    ("blob.dat", bytes(range(256)), r"blob.dat: unknown file type '.dat'; set data.source"),
])
def test_bad_content_is_one_sentence_with_right_line_numbers(tmp_path, name, data, message):
    with pytest.raises(DataError, match=message):
        EventLog(str(write(tmp_path / name, data)), columns=COLUMNS).load()


def test_gzip_jd_files_read_like_plain_ones(tmp_path):
    text = "11+5+c1+3+20 11+7+c1+4+20\n\n22+9+c2+0+7.5\n"
    plain = JDSessions(str(write(tmp_path / "jd", text))).load()
    assert_frame_equal(JDSessions(str(write(tmp_path / "jd.gz", gzip.compress(text.encode())))
                                  ).load(), plain)
    write(tmp_path / "bad.gz", gzip.compress((text + "1+5+c+3+-1\n").encode()))
    with pytest.raises(DataError, match=r"bad.gz, line 4: negative dwell time -1\.$"):
        JDSessions(str(tmp_path / "bad.gz")).load()


def test_every_source_follows_the_one_source_protocol(tmp_path):
    """name, path, fingerprint, load and blocks on every source: recommend reads any of them
    through blocks(), without asking which kind it is."""
    events = SyntheticSource(n_sessions=30, n_items=20, n_categories=3).load()
    jd = tmp_path / "jd.txt"
    write_jd_sessions(events, jd)
    log = tmp_path / "log.csv"
    events.select(S.SESSION, S.ITEM, S.ACTIVITY).write_csv(log)
    sources = [SyntheticSource(n_sessions=30, n_items=20, n_categories=3),
               FrameSource(events), JDSessions(str(jd)),
               EventLog(str(log), {"session": S.SESSION, "item": S.ITEM,
                                   "activity": S.ACTIVITY})]
    for source in sources:
        assert isinstance(source, EventSource)
        blocks = list(source.blocks())
        table = source.load()
        assert sum(b.height for b in blocks) == table.height > 0
        assert isinstance(source.fingerprint(), str) and source.name
    assert [s.path for s in sources] == [None, None, jd, log]
    keyed = sources[3].blocks().__next__()
    assert "source_session" in keyed.columns  # the file's own keys, for naming its sessions
