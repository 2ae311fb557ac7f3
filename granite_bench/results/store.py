"""Append-only parquet result store: one immutable file per run and table.

Layout: <root>/<table>/schema_version=<v>/<run_id>.parquet (hive-style), and
<root>/_commits/<run_id>.json, the commit marker of a run.

Whole runs: a run's tables are written first (each atomically), then its commit
marker, atomically, last. Readers see a file only when its run's marker exists, so
a run's tables appear together or not at all, also after a crash or a kill between
two files; files of a run that never committed are listed by `uncommitted()` and
reported, never read. Files written before commit markers existed (no
`granite_bench.needs_commit` footer key) are read as they always were.
Readers union every file of a table by column name across schema versions,
and skip (by name, with a warning) any file that cannot be read.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from granite_bench.results.metadata import RunMetadata, metadata_column_names

# Footer key holding the run's metadata columns as JSON, so runs() reads only footers.
RUN_FOOTER_KEY = b"granite_bench.run"
# Footer key of files that are visible only once their run's commit marker exists.
NEEDS_COMMIT_KEY = b"granite_bench.needs_commit"
COMMITS_DIR = "_commits"

RUN_COLUMNS = ["run_id", "utc_time", "git_sha", "git_dirty", "suite", "device", "dtype"]

TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
VERSION_DIR = re.compile(r"^schema_version=(\d+)$")


class CorruptResultFile(Exception):
    """A result file that cannot be read; the message names the file."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"corrupt result file {path}: {reason}")
        self.path = path


def write_rows_atomic(path: Path | str, frame: pd.DataFrame, footer: dict[bytes, bytes] | None = None) -> Path:
    """Write frame to path via a fsynced temp file and os.replace; never overwrite."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"result file already exists (files are immutable): {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if footer:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **footer})
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            raise FileExistsError(f"result file already exists (files are immutable): {path}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a small file via a fsynced temp file and os.replace (the commit marker of a run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _as_frame(rows: pd.DataFrame | list[dict]) -> pd.DataFrame | None:
    """rows as a fresh DataFrame, or None when there is nothing to write."""
    if isinstance(rows, pd.DataFrame):
        if len(rows.columns) == 0:
            return None
        return rows.reset_index(drop=True)
    rows = list(rows)
    if not rows:
        return None
    return pd.DataFrame(rows)


def _with_metadata(frame: pd.DataFrame, columns: dict) -> pd.DataFrame:
    """frame with the run's metadata columns first; clashing values are an error."""
    for name, value in columns.items():
        if name in frame.columns and not (frame[name].astype(object) == value).all():
            raise ValueError(
                f"row column {name!r} clashes with the run metadata value {value!r}; rename it"
            )
    data = frame.drop(columns=[c for c in columns if c in frame.columns])
    # Built from one typed row, so a 0-row frame keeps real column types.
    meta = pd.DataFrame([columns]).iloc[[0] * len(data)].reset_index(drop=True)
    return pd.concat([meta, data], axis=1)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class ResultStore:
    """Versioned parquet results under one root folder."""

    def __init__(self, root: Path | str = "results"):
        self.root = Path(root)
        # Files found unreadable by the last read(), runs() or query() call.
        self.skipped: list[Path] = []
        # Every file skipped since this store was opened, with why: what listings and the dashboard report.
        self.skip_log: dict[Path, str] = {}

    # ----- writing -----

    def write(self, table: str, rows: pd.DataFrame | list[dict], meta: RunMetadata) -> Path | None:
        """Write and commit one run's rows of one table; returns the file, or None for an empty list."""
        written = self.write_run(meta, {table: rows})
        return written[0] if written else None

    def write_run(self, meta: RunMetadata, tables: dict[str, pd.DataFrame | list[dict]]) -> list[Path]:
        """Write every table of one run, then commit the run: readers see all of its tables or none.

        Empty tables are left out; a run with no rows at all writes nothing. When a write fails, the files
        already written are removed again (a kill leaves them uncommitted, so no reader sees them either).
        A later call for the same run adds its tables (files stay immutable) and commits them in one step."""
        for table in tables:
            if not TABLE_NAME.match(table):
                raise ValueError(f"table name must match {TABLE_NAME.pattern}: {table!r}")
        marker = self.commit_marker(meta.run_id)
        earlier = json.loads(marker.read_text())["files"] if marker.exists() else []
        written: list[Path] = []
        try:
            for table, rows in tables.items():
                path = self._write_table(table, rows, meta)
                if path is not None:
                    written.append(path)
            if written:
                record = {"run_id": meta.run_id,
                          "files": earlier + [str(p.relative_to(self.root)) for p in written]}
                _write_bytes_atomic(marker, (json.dumps(record, indent=1) + "\n").encode())
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return written

    def _write_table(self, table: str, rows, meta: RunMetadata) -> Path | None:
        columns = meta.columns(table)
        frame = _as_frame(rows)
        if frame is None:
            return None
        frame = _with_metadata(frame, columns)
        path = self.root / table / f"schema_version={columns['schema_version']}" / f"{meta.run_id}.parquet"
        footer = {RUN_FOOTER_KEY: json.dumps(columns).encode(), NEEDS_COMMIT_KEY: b"1"}
        return write_rows_atomic(path, frame, footer)

    def commit_marker(self, run_id: str) -> Path:
        return self.root / COMMITS_DIR / f"{run_id}.json"

    def run_files(self, run_id: str) -> list[Path]:
        """The files a committed run wrote, as its commit marker lists them ([] for a run without a marker, or a
        marker that cannot be read)."""
        marker = self.commit_marker(run_id)
        try:
            return [self.root / name for name in json.loads(marker.read_text())["files"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def committed_runs(self) -> set[str]:
        folder = self.root / COMMITS_DIR
        if not folder.is_dir():
            return set()
        return {p.stem for p in folder.glob("*.json") if not p.name.startswith(".")}

    # ----- listing -----

    def tables(self) -> list[str]:
        """Folders under root that hold at least one schema_version=N folder."""
        if not self.root.is_dir():
            return []
        return sorted(
            d.name
            for d in self.root.iterdir()
            if d.is_dir() and TABLE_NAME.match(d.name) and any(self._version_dirs(d))
        )

    def files(self, table: str | None = None) -> list[Path]:
        """Result files of committed runs (and of runs from before commit markers), ordered by table, schema
        version, then run id."""
        committed = self.committed_runs()
        return [p for p in self._all_files(table) if self._visible(p, committed)]

    def uncommitted(self, table: str | None = None) -> list[Path]:
        """Files of runs that started writing but never committed (a crash, a kill, a full disk): never read."""
        committed = self.committed_runs()
        return [p for p in self._all_files(table) if not self._visible(p, committed)]

    def _all_files(self, table: str | None) -> list[Path]:
        names = self.tables() if table is None else [table]
        found = []
        for name in names:
            for version, folder in sorted(self._version_dirs(self.root / name)):
                found += sorted(
                    p for p in folder.glob("*.parquet") if not p.name.startswith(".") and p.is_file()
                )
        return found

    @staticmethod
    def _visible(path: Path, committed: set[str]) -> bool:
        if path.stem in committed:
            return True
        try:
            footer = pq.read_metadata(path).metadata or {}
        except Exception:  # noqa: BLE001 - an unreadable file stays visible, so readers name it as corrupt
            return True
        return NEEDS_COMMIT_KEY not in footer

    @staticmethod
    def _version_dirs(table_dir: Path):
        if not table_dir.is_dir():
            return
        for d in table_dir.iterdir():
            m = VERSION_DIR.match(d.name)
            if m and d.is_dir():
                yield int(m.group(1)), d

    # ----- reading -----

    def read_file(self, path: Path) -> pd.DataFrame:
        """One file as a DataFrame; CorruptResultFile when it cannot be read."""
        try:
            with pq.ParquetFile(path) as f:
                return f.read().to_pandas()
        except Exception as e:  # pyarrow raises several types for bad files
            raise CorruptResultFile(path, f"{type(e).__name__}: {e}") from e

    def read(self, table: str, *, run_id: str | None = None) -> pd.DataFrame:
        """All rows of a table (optionally one run), unioned by column name."""
        self.skipped = []
        frames = []
        for path in self.files(table):
            if run_id is not None and path.stem != run_id:
                continue
            frame = self._read_or_skip(path)
            if frame is not None:
                frames.append(frame)
        if not frames:
            return pd.DataFrame()
        if len(frames) > 1:
            # Empty frames only add columns; keep them out of the dtype decision.
            nonempty = [f for f in frames if len(f)] or frames[:1]
            columns = list(dict.fromkeys(c for f in frames for c in f.columns))
            return pd.concat(nonempty, ignore_index=True, sort=False).reindex(columns=columns)
        return frames[0]

    def _read_or_skip(self, path: Path) -> pd.DataFrame | None:
        try:
            return self.read_file(path)
        except CorruptResultFile as e:
            self._skip(path, e)
            return None

    def _skip(self, path: Path, error: Exception) -> None:
        warnings.warn(f"skipping {error}", stacklevel=3)
        self.skipped.append(path)
        self.skip_log.setdefault(path, str(error))

    def runs(self) -> pd.DataFrame:
        """One row per run over all tables, sorted by utc_time."""
        self.skipped = []
        records = []
        for table in self.tables():
            for path in self.files(table):
                for record in self._run_records(path):
                    records.append({**record, "table": table})
        if not records:
            return pd.DataFrame(columns=RUN_COLUMNS + ["tables"])
        found = pd.DataFrame(records)
        for name in RUN_COLUMNS:
            if name not in found.columns:
                found[name] = pd.NA
        tables = found.groupby("run_id")["table"].agg(lambda t: ",".join(sorted(set(t))))
        first = found.drop_duplicates("run_id").set_index("run_id")
        result = first[RUN_COLUMNS[1:]].join(tables.rename("tables")).reset_index()
        return result.sort_values(["utc_time", "run_id"], ignore_index=True)[RUN_COLUMNS + ["tables"]]

    def _run_records(self, path: Path) -> list[dict]:
        """Run metadata of one file: from its footer, else from its rows."""
        try:
            footer = pq.read_metadata(path).metadata or {}
            if RUN_FOOTER_KEY in footer:
                columns = json.loads(footer[RUN_FOOTER_KEY])
                return [{k: columns.get(k) for k in RUN_COLUMNS}]
            with pq.ParquetFile(path) as f:
                present = [c for c in RUN_COLUMNS if c in f.schema_arrow.names]
                if "run_id" not in present:
                    return []
                rows = f.read(columns=present).to_pandas().drop_duplicates("run_id")
            return rows.to_dict("records")
        except Exception as e:
            self._skip(path, CorruptResultFile(path, f"{type(e).__name__}: {e}"))
            return []

    def _readable_files(self, table: str) -> list[Path]:
        """Files whose parquet footer parses (a cheap check before DuckDB sees them)."""
        good = []
        for path in self.files(table):
            try:
                pq.read_metadata(path)
            except Exception as e:
                self._skip(path, CorruptResultFile(path, f"{type(e).__name__}: {e}"))
            else:
                good.append(path)
        return good

    def unreadable_files(self) -> list[CorruptResultFile]:
        """Every committed file whose parquet footer cannot be read (readers skip these), as errors naming them."""
        bad = []
        for path in self.files():
            try:
                pq.read_metadata(path)
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
                bad.append(CorruptResultFile(path, f"{type(e).__name__}: {e}"))
        return bad

    def query(self, sql: str, read_only: bool = False) -> pd.DataFrame:
        """Run SQL in DuckDB with one view per table over its readable files.

        read_only: the query runs sandboxed. Only SELECT/EXPLAIN statements are taken (ValueError otherwise), so it
        cannot write files (COPY ... TO), attach databases or change settings; and DuckDB itself reads only the
        committed files behind the views (`allowed_paths`, with `enable_external_access` off): no other file on
        the machine, no uncommitted file of the store, no URL, no extension loaded or installed, the settings
        locked. A query that reaches for anything else fails with DuckDB's PermissionException."""
        self.skipped = []
        con = duckdb.connect(config={"autoload_known_extensions": False, "autoinstall_known_extensions": False}
                             if read_only else {})
        try:
            if read_only:
                check_read_only(con, sql)
            readable = []
            for table in self.tables():
                paths = self._readable_files(table)
                if not paths:
                    continue
                readable += paths
                listed = ", ".join(_sql_string(str(p)) for p in paths)
                con.execute(
                    f'CREATE VIEW "{table}" AS SELECT * FROM read_parquet('
                    f"[{listed}], union_by_name=true, hive_partitioning=true)"
                )
            if read_only:
                sandbox(con, readable)
            return con.execute(sql).df()
        finally:
            con.close()


def sandbox(con, readable: list[Path]) -> None:
    """Let `con` read only `readable` from here on: external access off, extensions neither loaded nor installed,
    and the configuration locked so the query cannot turn any of it back on."""
    con.execute(f"SET allowed_paths = [{', '.join(_sql_string(str(p)) for p in readable)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET lock_configuration = true")


READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


def check_read_only(con, sql: str) -> None:
    """ValueError unless every statement of sql only reads (SELECT, EXPLAIN)."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as err:
        raise ValueError(f"query failed: {str(err).splitlines()[0]}") from None
    if not statements:
        raise ValueError("the query is empty: give a SELECT statement")
    for statement in statements:
        kind = str(statement.type).rsplit(".", 1)[-1]
        if kind not in READ_ONLY_STATEMENTS:
            raise ValueError(f"--sql is read-only: {kind} statements are refused (use SELECT; write rows with "
                             f"--csv)")


__all__ = [
    "CorruptResultFile",
    "ResultStore",
    "RUN_COLUMNS",
    "metadata_column_names",
    "write_rows_atomic",
]
