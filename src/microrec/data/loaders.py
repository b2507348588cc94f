"""Sources that read real logs into the canonical event table (DESIGN.md).

`JDSessions` reads the JD micro-behavior session files; `EventLog` reads CSV, Parquet or
JSON-lines event logs through a column mapping. Both validate on read: a bad file stops the
run with one sentence naming the file and, where the format has lines, the line. Parsing is
Polars over whole files (JD files: over blocks of lines, so that a paper-size file fits in
memory); every row keeps the file and line it came from until validation is done. Files are
recognised by content before name: Parquet and gzip by their first bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from typing import BinaryIO

import polars as pl

from microrec.data import schema as S
from microrec.data.sources import SOURCE
from microrec.errors import ConfigError, DataError
from microrec.files import atomic_write

log = logging.getLogger(__name__)

LOADER_VERSION = 2  # bump on any change to what load() returns for the same bytes
FILE, LINE = "_file", "_line"  # where a row came from, for error messages
USER = "user"  # an event-log role that is not a canonical column: sessions are cut from users
ROLES = (S.SESSION, USER, S.ITEM, S.ACTIVITY, S.TS, S.DWELL, S.CATEGORY)
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
           ".ndjson": "jsonl", ".json": "jsonl"}
TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
JD_BEHAVIORS = {str(code): name for code, name in enumerate(S.ACTIVITIES, start=1)}
JD_FIELDS = ("sku", "behavior_type", "category", "time_interval", "dwell_time")
PARQUET_MAGIC, GZIP_MAGIC = b"PAR1", b"\x1f\x8b"
GZIP_ERRORS = (OSError, EOFError, zlib.error)  # a damaged or truncated gzip stream
BLOCK_BYTES = 1 << 25  # text per parsed block of a JD file: bounds the parser's extra memory
# Advice in the errors, which names training's settings; recommend.py reads its --input with
# a run's own settings and words this advice for its arguments (recommend.INPUT_ADVICE)
POINT_PATH = "point data.source.path at"
SET_FILE_FORMAT = "set data.source.file_format to csv, parquet or jsonl"
SET_TS_FORMAT = "set data.source.ts_format for date-time strings"


# -- shared helpers ------------------------------------------------------------------------
def content_hash(files: list[Path], settings: dict) -> str:
    """Hash of the files' bytes (streamed, in order) and the loader settings."""
    h = hashlib.sha256(json.dumps({"v": LOADER_VERSION, **settings}, sort_keys=True).encode())
    for path in files:
        h.update(f"\0{path.stat().st_size}\0".encode())  # delimits files; names do not count
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def detect_format(path: Path) -> str | None:
    """csv | parquet | jsonl as the file's content says, else as its name says, else None.

    Parquet starts with b"PAR1" whatever its name (`part-0.parquet.snappy`). A gzip file
    holds the format its inner name gives (`events.csv.gz`), else JSON lines where its first
    non-blank byte is '{' and CSV otherwise.
    """
    with open(path, "rb") as f:
        head = f.read(len(PARQUET_MAGIC))
    if head == PARQUET_MAGIC:
        return "parquet"
    if head.startswith(GZIP_MAGIC):
        inner = FORMATS.get(Path(path.stem).suffix.lower())
        if inner:
            return inner
        try:
            with gzip.open(path, "rb") as f:
                start = f.read(1 << 16).lstrip()
        except GZIP_ERRORS as e:
            raise DataError(f"{path}: not a readable gzip file ({e}).") from None
        return "jsonl" if start.startswith(b"{") else "csv"
    return FORMATS.get(path.suffix.lower())


def open_bytes(path: Path) -> BinaryIO:
    """The file for reading, decompressed where its content is gzip (whatever its name)."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def line_blocks(path: Path, block_bytes: int) -> Iterator[pl.DataFrame]:
    """The file's lines as (_line, text) frames of about `block_bytes` each.

    Lines are numbered from 1 over the whole (decompressed) file and lose their line ends;
    a block always ends at a line end, so no line or character is cut in two.
    """
    first, rest = 1, b""
    with open_bytes(path) as f:
        while True:
            try:
                chunk = f.read(block_bytes)
            except GZIP_ERRORS as e:  # plain files do not fail here once open
                raise DataError(f"{path}: not a readable gzip file ({e}).") from None
            data = rest + chunk
            if chunk:
                cut = data.rfind(b"\n") + 1
                data, rest = data[:cut], data[cut:]
                if not data:
                    continue  # a line longer than the block: read on
            if not data:
                return
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                line = first + data.count(b"\n", 0, e.start)
                raise DataError(f"{path}, line {line}: not UTF-8 text.") from None
            # the newline that ends the block's last line opens no new one
            lines = (pl.Series("text", [text.removesuffix("\n")]).str.split("\n").explode()
                     .str.strip_suffix("\r").to_frame()
                     .with_row_index(LINE, offset=first))
            first += lines.height
            yield lines
            if not chunk:
                return


def read_lines(path: Path) -> pl.DataFrame:
    """The whole file's lines as (_line, text), numbered from 1, without line-end characters."""
    blocks = list(line_blocks(path, BLOCK_BYTES))
    if not blocks:
        return pl.DataFrame(schema={LINE: pl.UInt32, "text": pl.String})
    return pl.concat(blocks)


def shown(value, width: int = 60) -> str:
    """A raw value as an error message quotes it: control characters escaped (as repr does)
    and cut to about `width` characters, so that a line of NUL bytes cannot flood a terminal."""
    text = str(value)
    if len(repr(text)) <= width:
        return repr(text)
    text = text[:width]
    while len(repr(text)) >= width:  # cut characters, so that no escape is cut in two
        text = text[:-1]
    quoted = repr(text)
    return f"{quoted[:-1]}…{quoted[-1]}"


def check_ids(frame: pl.DataFrame, ids: Mapping[str, str],
              where: Callable[[dict], str]) -> None:
    """Stop at the first id (column -> what it identifies) that holds a control character: a
    NUL byte or an escape in an id is damage, not a name, and would reach every output."""
    for column, what in ids.items():
        if not frame.schema[column].is_integer():
            raise_first(frame, pl.col(column).cast(pl.String).str.contains(r"\p{Cc}"),
                        lambda r, c=column, w=what: f"{where(r)}: {w} id {shown(r[c])} holds "
                                                    "a control character.")


def raise_first(frame: pl.DataFrame, bad: pl.Expr, message: Callable[[dict], str]) -> None:
    """Raise DataError(message(row)) for the first row where `bad` holds, if any."""
    hit = frame.filter(bad.fill_null(False)).head(1)
    if hit.height:
        raise DataError(message(hit.row(0, named=True)))


def typed_ids(ids: pl.Series) -> pl.Series:
    """Ids (products, session and user keys) as int64 where every one is an integer written
    plainly (its text survives a round trip through int64: no leading zero or plus sign),
    else as strings; so a CSV file's text and a Parquet or JSON file's numbers agree."""
    if ids.dtype.is_integer():
        return ids.cast(pl.Int64)
    text = ids.cast(pl.String)
    number = text.cast(pl.Int64, strict=False)
    return number if number.cast(pl.String).eq_missing(text).all() else text


def parse_dwell(frame: pl.DataFrame, raw: str, where: Callable[[dict], str]) -> pl.DataFrame:
    """Add `dwell_s` (float seconds) from column `raw`; non-numeric or negative values stop."""
    frame = frame.with_columns(pl.col(raw).cast(pl.Float64, strict=False).alias(S.DWELL))
    dwell = pl.col(S.DWELL)
    raise_first(frame, pl.col(raw).is_not_null() & (dwell.is_null() | ~dwell.is_finite()),
                lambda r: f"{where(r)}: dwell time {shown(r[raw])} is not a number.")
    raise_first(frame, dwell < 0, lambda r: f"{where(r)}: negative dwell time {r[raw]}.")
    return frame


def window_bound(bound: int | float | str) -> int:
    """A `ts_window` bound as unix seconds: a number is taken as such, a string as an ISO
    date-time (with its UTC offset where it gives one, else UTC)."""
    if isinstance(bound, (int, float)) and not isinstance(bound, bool):
        return int(bound)
    try:
        when = datetime.fromisoformat(str(bound))
    except ValueError:
        raise ConfigError(f"ts_window bound {shown(bound)} is neither unix seconds nor an ISO "
                          "date-time such as '2017-11-25T00:00:00+08:00'.") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp())


def csv_header(header: Sequence[str] | None) -> tuple[str, ...] | None:
    """The `header` setting checked: None, or the distinct non-empty names of a header-less
    CSV file's columns in order."""
    if header is None:
        return None
    if isinstance(header, (str, bytes)) or not isinstance(header, Sequence) or not header:
        raise ConfigError("header must list the column names of a CSV file without a header "
                          "line, or be null where the first line is the header.")
    names = tuple(str(name) for name in header)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if "" in names or repeated:
        raise ConfigError(f"header names must be distinct and non-empty, got {list(names)}.")
    return names


# -- JD micro-behavior sessions ------------------------------------------------------------
class JDSessions:
    """JD micro-behavior session files (the RIB and HUP papers' data).

    One session per line; tokens `sku+behavior_type+category+time_interval+dwell_time`
    separated by white space; behavior types 1..10 are the paper's activities in order.
    The session id is the line number. Dwell is given (shared by a product's consecutive
    tokens). The lines carry no absolute time, so `ts` is null and the protocol splits
    sessions at random with its seed; `time_interval` is read past (only its presence is
    checked) because relative gaps cannot order sessions.

    Args:
        path: the session file.
        name: how logs and cache files call this data set.
    """

    activity_groups = S.PAPER_GROUPS

    def __init__(self, path: str, name: str = "jd"):
        self.path = Path(path)
        self.name = name
        self._fingerprint: str | None = None

    def _file(self) -> Path:
        if not self.path.is_file():
            what = "a folder, not a session file" if self.path.is_dir() else "no such file"
            raise DataError(f"{self.path}: {what} ({POINT_PATH} a JD session file).")
        return self.path

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = content_hash([self._file()], {"loader": "jd"})
        return self._fingerprint

    def _parsed_blocks(self) -> Iterator[pl.DataFrame]:
        """The file's tokens, validated, one block of whole lines at a time (sku a string)."""
        n_blank = 0
        for lines in line_blocks(self._file(), BLOCK_BYTES):
            blank = pl.col("text").str.strip_chars() == ""
            n_blank += lines.select(blank.sum()).item()
            yield self._parse(lines.filter(~blank))
        if n_blank:
            log.info("%s: skipped %d blank line(s) of %s", self.name, n_blank, self.path)

    def load(self) -> pl.DataFrame:
        blocks = list(self._parsed_blocks())
        tokens = pl.concat(blocks, rechunk=False) if blocks else pl.DataFrame()
        if tokens.height == 0:
            raise DataError(f"{self.path}: the file holds no sessions.")
        log.info("%s: %d sessions, %d micro-behaviors from %s", self.name,
                 tokens[S.SESSION].n_unique(), tokens.height, self.path)
        return _jd_canonical(tokens)

    def blocks(self) -> Iterator[pl.DataFrame]:
        """The canonical table a block of whole sessions at a time, so a file of any size is
        read in bounded memory (products typed per block: int64 where all are integers)."""
        empty = True
        for tokens in self._parsed_blocks():
            if tokens.height:
                empty = False
                yield _jd_canonical(tokens)
        if empty:
            raise DataError(f"{self.path}: the file holds no sessions.")

    def _parse(self, lines: pl.DataFrame) -> pl.DataFrame:
        """Non-blank (_line, text) lines -> one row per token, validated; sku still a string."""
        tokens = (
            lines.select(LINE, pl.col("text").str.extract_all(r"\S+").alias("token"))
            .explode("token")
            .with_columns(pl.int_range(pl.len()).over(LINE).alias(S.POS))
        )

        def where(row: dict) -> str:
            return f"{self.path}, line {row[LINE]}"

        shape = r"^[^+]+\+[^+]+\+[^+]+\+[^+]+\+[^+]+$"  # five non-empty fields
        raise_first(tokens, ~pl.col("token").str.contains(shape),
                    lambda r: f"{where(r)}: token {shown(r['token'])} is not "
                              f"{'+'.join(JD_FIELDS)}.")
        tokens = tokens.with_columns(
            pl.col("token").str.split_exact("+", 4).struct.rename_fields(list(JD_FIELDS))
        ).unnest("token")
        check_ids(tokens, {"sku": "product"}, where)
        tokens = tokens.with_columns(
            pl.col("behavior_type").replace_strict(JD_BEHAVIORS, default=None)
            .alias(S.ACTIVITY)
        )
        raise_first(tokens, pl.col(S.ACTIVITY).is_null(),
                    lambda r: f"{where(r)}: unknown behavior type {shown(r['behavior_type'])} "
                              "(expected 1 to 10).")
        tokens = parse_dwell(tokens, "dwell_time", where)
        return tokens.select(
            pl.col(LINE).cast(pl.Int64).alias(S.SESSION),
            pl.col(S.POS).cast(pl.Int32),
            "sku",
            S.ACTIVITY,
            S.DWELL,
            pl.col("category").alias(S.CATEGORY),
        )


def _jd_canonical(tokens: pl.DataFrame) -> pl.DataFrame:
    """Parsed JD tokens as the canonical event table."""
    return tokens.select(
        S.SESSION,
        S.POS,
        typed_ids(tokens["sku"]).alias(S.ITEM),
        S.ACTIVITY,
        S.DWELL,
        pl.lit(None, dtype=pl.Int64).alias(S.TS),
        S.CATEGORY,
    )


def write_jd_sessions(events: pl.DataFrame, path: Path,
                      sessions_per_write: int = 100_000) -> None:
    """Write a canonical table in the JD session format, one line per session in session order.

    The inverse of `JDSessions` for tables with the paper's activities, dwell and category
    (the benchmark writes paper-size files with it). `time_interval` is the gap to the
    session's next event in whole seconds, 0 for the last event or where `ts` is null.

    Args:
        sessions_per_write: sessions formatted at a time (bounds the memory used).
    """
    codes = {name: code for code, name in JD_BEHAVIORS.items()}
    dwell = pl.col(S.DWELL)
    gap = (pl.col(S.TS).shift(-1) - pl.col(S.TS)).fill_null(0)  # inside one session's group
    token = pl.concat_str(
        pl.col(S.ITEM).cast(pl.String),
        pl.col(S.ACTIVITY).replace_strict(codes),
        pl.col(S.CATEGORY),
        gap.cast(pl.String),
        # whole seconds as JD writes them ("20", not "20.0")
        pl.when(dwell == dwell.round()).then(dwell.cast(pl.Int64).cast(pl.String))
        .otherwise(dwell.cast(pl.String)),
        separator="+",
    )
    events = events.sort(S.SESSION, S.POS)
    first = (pl.col(S.SESSION) != pl.col(S.SESSION).shift(1)).fill_null(True)
    starts = events.select(pl.arg_where(first)).to_series().to_list()
    cuts = [*starts[::sessions_per_write], events.height]

    def write(tmp):
        with open(tmp, "wb") as f:
            for a, b in pairwise(cuts):
                (events.slice(a, b - a).group_by(S.SESSION, maintain_order=True)
                 .agg(token.str.join(" ")).drop(S.SESSION)
                 .write_csv(f, include_header=False, quote_style="never"))

    atomic_write(Path(path), write)


# -- generic event logs --------------------------------------------------------------------
class EventLog:
    """An event log (CSV, Parquet or JSON lines) read through a column mapping.

    Sessions are the `session` column (paired with `user` where both are mapped), or each
    user's events cut wherever `session_gap_s` seconds pass without one. Events are ordered
    by time within a session (file order breaks ties and stands in where there is no time).
    Dwell is the `dwell_s` column where mapped; otherwise it stays null and the protocol
    derives it from the timestamps (DESIGN.md).

    Args:
        path: a file, or a folder whose files of the format are read as one log, in name
            order (files that are neither Parquet nor gzip by content count by extension).
        columns: role -> column in the file. Roles: session, user, item, activity, ts,
            dwell_s, category; item and one of session/user are required.
        activities: source code -> activity name; a code not listed stops the run.
            None: the codes are the names.
        activity_groups: group -> activity names (see `schema.PAPER_GROUPS`).
        file_format: csv | parquet | jsonl; None: from each file's content where it says
            (Parquet, gzip-compressed CSV or JSON lines), else from its extension.
        explode: a column holding a list of event records per row (nested JSON such as
            OTTO's `events`); its records become rows and their fields columns.
        ts_format: s | ms | us | ns for numeric timestamps, or a strptime format such as
            "%Y-%m-%d %H:%M:%S" for date-time strings (read as UTC). Datetime columns of a
            Parquet file need neither.
        ts_window: [start, end): events timed outside it are dropped, counted and logged
            (stray timestamps of a log known to cover one period). Bounds are unix seconds
            or ISO date-times ('2017-11-25T00:00:00+08:00'; without an offset, UTC).
            None: every parsed time is kept.
        session_gap_s: inactivity that ends a user's session (only where no session column).
        separator: the CSV field separator.
        header: the column names of CSV files without a header line, in order; None: each
            file's first line is its header.
        name: how logs and cache files call this data set.
    """

    def __init__(
        self,
        path: str | None,
        columns: Mapping[str, str | None],
        activities: Mapping | None = None,
        activity_groups: Mapping[str, list[str]] | None = None,
        file_format: str | None = None,
        explode: str | None = None,
        ts_format: str = "s",
        ts_window: Sequence[int | float | str] | None = None,
        session_gap_s: float = 1800,
        separator: str = ",",
        header: Sequence[str] | None = None,
        name: str = "events",
    ):
        if path is None:
            raise ConfigError("no event log given: set data.source.path to a file or a folder.")
        self.path = Path(path)
        self.name = name
        self.columns = {str(k): str(v) for k, v in columns.items() if v is not None}
        unknown = sorted(set(self.columns) - set(ROLES))
        if unknown:
            raise ConfigError(f"unknown column role(s) {', '.join(unknown)} in the event-log "
                              f"mapping: use {', '.join(ROLES)}.")
        if S.ITEM not in self.columns or not {S.SESSION, USER} & set(self.columns):
            raise ConfigError("the event-log mapping needs an item column and a session or "
                              "user column.")
        if S.SESSION not in self.columns and S.TS not in self.columns:
            raise ConfigError("cutting users' events into sessions needs a ts column in the "
                              "event-log mapping.")
        if ts_format not in TIME_UNITS and "%" not in ts_format:
            raise ConfigError(f"ts_format '{ts_format}' is neither a unit "
                              f"({', '.join(TIME_UNITS)}) nor a strptime format.")
        if session_gap_s <= 0:
            raise ConfigError(f"session_gap_s must be positive, got {session_gap_s}.")
        self.ts_window = self._window(ts_window)
        if file_format not in (None, *set(FORMATS.values())):
            raise ConfigError(f"unknown file_format '{file_format}': use csv, parquet or "
                              "jsonl.")
        self.activities = (None if activities is None
                           else {str(k): str(v) for k, v in activities.items()})
        self.activity_groups = {str(g): tuple(str(a) for a in names)
                                for g, names in (activity_groups or {}).items()}
        if self.activities is not None:
            for group, names in self.activity_groups.items():
                strays = sorted(set(names) - set(self.activities.values()))
                if strays:
                    raise ConfigError(f"activity group '{group}' names {', '.join(strays)}, "
                                      "which the activity mapping never produces.")
        self.file_format = file_format
        self.explode = explode
        self.ts_format = ts_format
        self.session_gap_s = float(session_gap_s)
        self.separator = separator
        self.header = csv_header(header)
        self._fingerprint: str | None = None

    def _window(self, ts_window) -> tuple[int, int] | None:
        """`ts_window` as (start, end) unix seconds, checked."""
        if ts_window is None:
            return None
        if S.TS not in self.columns:
            raise ConfigError("ts_window needs a ts column in the event-log mapping.")
        if not isinstance(ts_window, Sequence) or isinstance(ts_window, str) \
                or len(ts_window) != 2:
            raise ConfigError(f"ts_window must be [start, end], got {shown(ts_window)}.")
        start, end = (window_bound(b) for b in ts_window)
        if start >= end:
            raise ConfigError(f"ts_window must start before it ends, got {list(ts_window)}.")
        return start, end

    # -- files -----------------------------------------------------------------------------
    def _format(self, path: Path) -> str:
        fmt = self.file_format or detect_format(path)
        if fmt is None:
            raise DataError(f"{path}: unknown file type '{path.suffix}'; {SET_FILE_FORMAT}.")
        return fmt

    def files(self) -> list[Path]:
        """The file, or the folder's files of the format in name order."""
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            raise DataError(f"{self.path}: no such file or folder ({POINT_PATH} the event "
                            "log).")
        suffixes = [s for s, f in FORMATS.items() if self.file_format in (None, f)]
        formats = {FORMATS[s] for s in suffixes}
        files = sorted(p for p in self.path.iterdir()
                       if p.is_file() and detect_format(p) in formats)
        if not files:
            raise DataError(f"{self.path}: the folder holds no {', '.join(suffixes)} files "
                            "(by name, or Parquet and gzip by content).")
        return files

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            settings = {"loader": "events", "columns": self.columns,
                        "activities": self.activities, "file_format": self.file_format,
                        "explode": self.explode, "ts_format": self.ts_format,
                        "session_gap_s": self.session_gap_s, "separator": self.separator,
                        "ts_window": self.ts_window, "header": self.header}
            self._fingerprint = content_hash(self.files(), settings)
        return self._fingerprint

    def _read(self, path: Path) -> pl.DataFrame:
        """One file's rows with the mapped columns renamed to their roles, plus _line."""
        fmt = self._format(path)
        if self.header and fmt != "csv":
            raise DataError(f"{path}: a {fmt} file, but data.source.header names the columns "
                            "of header-less CSV files.")
        try:
            if fmt == "csv":
                frame = _read_csv(path, self.separator, self.header)
            elif fmt == "jsonl":
                frame = _read_jsonl(path)
            else:
                frame = pl.read_parquet(path).with_row_index(LINE, offset=1)
        except pl.exceptions.PolarsError as e:
            reason = str(e).strip().splitlines()[0].rstrip(".")
            raise DataError(f"{path}: cannot be read as {fmt} ({reason}).") from None
        if self.explode:
            frame = _unpack(frame, self.explode, path)
        missing = sorted({c for c in self.columns.values() if c not in frame.columns})
        if missing:
            has = ", ".join(shown(c) for c in frame.columns if c != LINE)
            raise DataError(f"{path}: no column(s) {', '.join(missing)} (named in the "
                            f"event-log mapping); it has {has}.")
        return frame.select(LINE, *(pl.col(c).alias(r) for r, c in self.columns.items()))

    # -- the table -------------------------------------------------------------------------
    def load(self, keys: bool = False) -> pl.DataFrame:
        """The canonical event table; with `keys`, also the file's own session keys as
        columns `source_session` and `source_user` (those mapped), e.g. to name sessions in
        output as the file does."""
        files = self.files()
        units = ["row" if self._format(p) == "parquet" else "line" for p in files]
        frame = pl.concat(
            [self._read(p).with_columns(pl.lit(i, dtype=pl.Int32).alias(FILE))
             for i, p in enumerate(files)],
            how="vertical_relaxed",
        )

        def where(row: dict) -> str:
            return f"{files[row[FILE]]}, {units[row[FILE]]} {row[LINE]}"

        roles = list(self.columns)
        blank = pl.all_horizontal(pl.col(r).is_null() for r in roles)
        n_blank = frame.select(blank.sum()).item()
        if n_blank:
            log.info("%s: skipped %d blank row(s) of %s", self.name, n_blank, self.path)
            frame = frame.filter(~blank)
        if frame.height == 0:
            raise DataError(f"{self.path}: the event log holds no events.")
        for role in roles:
            if role not in (S.DWELL, S.CATEGORY):
                raise_first(frame, pl.col(role).is_null(),
                            lambda r, role=role: f"{where(r)}: no value in column "
                                                 f"'{self.columns[role]}' ({role}).")
        check_ids(frame, {r: what for r, what in ((S.ITEM, "product"), (S.SESSION, "session"),
                                                   (USER, "user")) if r in frame.columns}, where)

        if S.ACTIVITY in frame.columns:
            frame = self._activities(frame, where)
        if S.TS in frame.columns:
            frame = self._timestamps(frame, where)
        if self.ts_window:
            frame = self._inside_window(frame)
        if S.DWELL in frame.columns:
            frame = parse_dwell(frame.rename({S.DWELL: "dwell_raw"}), "dwell_raw", where)
        if keys:
            frame = frame.with_columns(typed_ids(frame[k]).alias(SOURCE + k)
                                       for k in (USER, S.SESSION) if k in frame.columns)
        frame = self._sessions(frame)
        log.info("%s: %d sessions, %d events from %d file(s) at %s", self.name,
                 frame[S.SESSION].n_unique(), frame.height, len(files), self.path)
        return frame.select(
            S.SESSION,
            S.POS,
            typed_ids(frame[S.ITEM]).alias(S.ITEM),
            *(pl.col(c).cast(t) if c in frame.columns else pl.lit(None, dtype=t).alias(c)
              for c, t in ((S.ACTIVITY, pl.String), (S.DWELL, pl.Float64), (S.TS, pl.Int64),
                           (S.CATEGORY, pl.String))),
            pl.col(f"^{SOURCE}.*$"),
        )

    def blocks(self) -> Iterator[pl.DataFrame]:
        """The whole log with the file's session keys: its sessions are only known once every
        event is read and sorted."""
        yield self.load(keys=True)

    def _activities(self, frame: pl.DataFrame, where) -> pl.DataFrame:
        """Map activity codes to names; a code the mapping lacks stops the run."""
        code = pl.col(S.ACTIVITY).cast(pl.String)
        frame = frame.with_columns(code.alias("activity_code"))
        if self.activities is None:
            return frame.with_columns(code.alias(S.ACTIVITY))
        frame = frame.with_columns(
            code.replace_strict(self.activities, default=None).alias(S.ACTIVITY))
        raise_first(frame, pl.col(S.ACTIVITY).is_null(),
                    lambda r: f"{where(r)}: unknown activity code {shown(r['activity_code'])} "
                              f"(the mapping knows {', '.join(self.activities)}).")
        return frame

    def _timestamps(self, frame: pl.DataFrame, where) -> pl.DataFrame:
        """Replace `ts` by int64 seconds; values that do not parse stop the run."""
        frame = frame.rename({S.TS: "ts_raw"})
        raw = pl.col("ts_raw")
        dtype = frame.schema["ts_raw"]
        if dtype.is_temporal():
            seconds = raw.cast(pl.Datetime("us")).dt.epoch("s")
            expected = "a time"
        elif "%" in self.ts_format:
            seconds = raw.cast(pl.String).str.to_datetime(self.ts_format, strict=False) \
                .dt.epoch("s")
            expected = f"a date-time of format '{self.ts_format}'"
        else:
            number = raw.cast(pl.Float64, strict=False)
            number = pl.when(number.is_finite()).then(number)
            seconds = (number / TIME_UNITS[self.ts_format]).floor().cast(pl.Int64)
            expected = f"a number ({SET_TS_FORMAT})"
        frame = frame.with_columns(seconds.alias(S.TS))
        raise_first(frame, pl.col(S.TS).is_null(),
                    lambda r: f"{where(r)}: timestamp {shown(r['ts_raw'])} is not {expected}.")
        return frame

    def _inside_window(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Drop, count and log the events timed outside `ts_window`."""
        start, end = self.ts_window
        inside = pl.col(S.TS).is_between(start, end, closed="left")
        n_outside = frame.height - frame.select(inside.sum()).item()
        if n_outside == frame.height:
            raise DataError(f"{self.path}: no event lies inside ts_window [{start}, {end}) "
                            "(unix seconds).")
        if n_outside:
            log.info("%s: dropped %d of %d event(s) timed outside ts_window [%d, %d) of %s",
                     self.name, n_outside, frame.height, start, end, self.path)
        return frame.filter(inside)

    def _sessions(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Number sessions 0.. and events inside each by time, then file order."""
        keys = [k for k in (USER, S.SESSION) if k in frame.columns]
        if S.SESSION in keys:
            keys = [USER, S.SESSION] if USER in keys else [S.SESSION]
        time = [S.TS] if S.TS in frame.columns else []
        # keys sort as numbers where all are integers, else as text, whatever the file type:
        # the numbering, and so a seeded random split, must not follow the file type
        frame = frame.with_columns(typed_ids(frame[k]) for k in keys)
        frame = frame.sort(*keys, *time, FILE, LINE)
        new = pl.any_horizontal((pl.col(k) != pl.col(k).shift(1)).fill_null(True) for k in keys)
        if S.SESSION not in frame.columns:  # a user's events, cut at inactivity gaps
            gap = (pl.col(S.TS) - pl.col(S.TS).shift(1)) > self.session_gap_s
            new = new | gap.fill_null(True)
        frame = frame.with_columns((new.cast(pl.Int64).cum_sum() - 1).alias(S.SESSION))
        return frame.with_columns(
            pl.int_range(pl.len(), dtype=pl.Int32).over(S.SESSION).alias(S.POS))


def _read_csv(path: Path, separator: str, header: tuple[str, ...] | None) -> pl.DataFrame:
    """A CSV file as strings, rows numbered by their line; a ragged line stops the run.

    `header` names the columns of a file without a header line; None: its first line does.
    """
    lines = read_lines(path)
    if lines.height == 0:
        raise DataError(f"{path}: the file is empty{'' if header else ' (not even a header)'}.")
    # Lines without quotes must have the header's number of separators; quoted ones may hold
    # separators inside a field, so Polars' parser judges them.
    sep = pl.col("text").str.count_matches(separator, literal=True)
    lines = lines.with_columns(sep.alias("n_sep"))
    n_sep = len(header) - 1 if header else lines["n_sep"][0]
    plain = ~pl.col("text").str.contains('"', literal=True) & (pl.col("text") != "")
    names = "data.source.header names" if header else "the header has"
    raise_first(lines if header else lines.slice(1), plain & (pl.col("n_sep") != n_sep),
                lambda r: f"{path}, line {r[LINE]}: {r['n_sep'] + 1} fields where {names} "
                          f"{n_sep + 1}.")
    with open_bytes(path) as f:
        frame = pl.read_csv(f, separator=separator, infer_schema=False,
                            has_header=header is None,
                            new_columns=list(header) if header else None)
    first = 1 if header else 2  # the first data line: line 1 is the header where there is one
    return frame.with_row_index(LINE, offset=first)


def _read_jsonl(path: Path) -> pl.DataFrame:
    """A JSON-lines file, one object per non-blank line, rows numbered by their line."""
    lines = read_lines(path).filter(pl.col("text").str.strip_chars() != "")
    if lines.height == 0:
        raise DataError(f"{path}: the file holds no JSON records.")
    # json_path_match is null where a line is not valid JSON; records must be objects.
    whole = pl.col("text").str.json_path_match("$")
    raise_first(lines, whole.is_null() | ~pl.col("text").str.strip_chars().str.starts_with("{"),
                lambda r: f"{path}, line {r[LINE]}: not a JSON object (truncated or "
                          "malformed).")
    records = lines["text"].str.json_decode(infer_schema_length=None)
    return records.struct.unnest().with_columns(lines[LINE])


def _unpack(frame: pl.DataFrame, column: str, path: Path) -> pl.DataFrame:
    """Turn a column of event-record lists into one row per record (fields as columns)."""
    if column not in frame.columns:
        raise DataError(f"{path}: no column '{column}' to unpack (data.source.explode).")
    dtype = frame.schema[column]
    if not (isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)):
        raise DataError(f"{path}: column '{column}' does not hold lists of event records.")
    empty = frame.filter(pl.col(column).list.len().fill_null(0) == 0).height
    if empty:
        log.info("%s: skipped %d record(s) with no events in '%s'", path, empty, column)
    frame = frame.filter(pl.col(column).list.len() > 0).explode(column)
    return frame.with_columns(pl.col(column).struct.unnest()).drop(column)
