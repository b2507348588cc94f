"""Real-data loaders on hand-written files: exact canonical tables, and every bad input."""

import shutil

import hydra
import polars as pl
import pytest
from conftest import ROOT, SHARED_DATA, compose_cfg
from polars.testing import assert_frame_equal

from microrec import schema as S
from microrec.errors import ConfigError, DataError
from microrec.loaders import EventLog, JDSessions, item_ids

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


def test_item_ids_are_integers_only_when_every_id_survives_the_round_trip():
    assert item_ids(pl.Series(["7", "12"])).dtype == pl.Int64
    assert item_ids(pl.Series(["7", "007"])).to_list() == ["7", "007"]  # leading zero
    assert item_ids(pl.Series(["7", "sku9"])).dtype == pl.String


@pytest.mark.parametrize("text, message", [
    ("1+5+c+3+20 1+5+c+3\n", r"jd, line 1: token '1\+5\+c\+3' is not sku\+behavior_type"),
    ("1+5+c+3+20\n2+5+c+3+20 2+5+c+", r"jd, line 2: token '2\+5\+c\+' is not"),  # truncated
    ("1+5+c+3+20\n\n3+11+c+3+20\n", r"jd, line 3: unknown behavior type '11' \(expected 1"),
    ("1+5+c+3+abc\n", r"jd, line 1: dwell time 'abc' is not a number\.$"),
    ("1+5+c+3+20\n1+5+c+3+-4\n", r"jd, line 2: negative dwell time -4\.$"),
    (b"1+5+c+3+20\n1+5+\xff+3+20\n", r"jd, line 2: not UTF-8 text\.$"),
    ("\n  \n", r"jd: the file holds no sessions\.$"),
])
def test_bad_jd_files_name_the_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "jd", text)
    with pytest.raises(DataError, match=message):
        JDSessions(str(path)).load()


def test_a_missing_jd_file_is_one_sentence(tmp_path):
    with pytest.raises(DataError, match=r"nope: no such file \(point data.path at"):
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
    cfg = compose_cfg(tmp_path, ["data=jd_computers", f"data.path={path}", split], tiny=False)
    dm = hydra.utils.instantiate(cfg.data)
    assert (dm.path, dm.source.path, dm.source.name) == (str(path), path, "jd_computers")
    dm.setup()
    stats = dm.prepared.stats
    assert (stats["sessions"], stats["events"]) == (5, 3 + 4 * 2)
    assert sum(stats[f"{part}/sessions"] for part in ("train", "val", "test")) == 5
    assert dm.prepared.has_activity and dm.prepared.has_dwell
    copy = shutil.copy(path, tmp_path / "copy")
    moved = compose_cfg(tmp_path, ["data=jd_computers", f"data.path={copy}", split], tiny=False)
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


GOOD = "session,item,activity,ts,dwell\n1,10,v,100,5\n"


@pytest.mark.parametrize("name, text, settings, message", [
    ("a.csv", GOOD, {"columns": {**COLUMNS, "item": "sku"}},
     r"a.csv: no column\(s\) sku \(named in the event-log mapping\); it has session, item"),
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
])
def test_bad_event_logs_are_one_sentence_naming_file_and_line(tmp_path, name, text, settings,
                                                              message):
    with pytest.raises(DataError, match=message):
        event_log(tmp_path, {name: text}, **settings).load()


def test_missing_paths_are_one_sentence(tmp_path):
    with pytest.raises(DataError, match=r"nope: no such file or folder \(point data.path"):
        EventLog(str(tmp_path / "nope"), columns=COLUMNS).fingerprint()
    write(tmp_path / "readme.md", "no data here")
    with pytest.raises(DataError, match=r"the folder holds no \.csv, \.parquet"):
        EventLog(str(tmp_path), columns=COLUMNS).load()


@pytest.mark.parametrize("settings, message", [
    ({"path": None}, r"no event log given: set data.path"),
    ({"columns": {**COLUMNS, "price": "p"}}, r"unknown column role\(s\) price"),
    ({"columns": {"session": "s"}}, r"needs an item column and a session or user column"),
    ({"columns": {"user": "u", "item": "i"}}, r"cutting users' events .* needs a ts column"),
    ({"ts_format": "minutes"}, r"ts_format 'minutes' is neither a unit \(s, ms, us, ns\)"),
    ({"session_gap_s": 0}, r"session_gap_s must be positive"),
    ({"file_format": "xlsx"}, r"unknown file_format 'xlsx'"),
    ({"activities": {1: "view"}, "activity_groups": {"order": ["order"]}},
     r"activity group 'order' names order, which the activity mapping never produces"),
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
