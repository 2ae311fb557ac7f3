"""`granite-bench results`: the runs in a store with their verdicts, or any table / SQL query as a result table."""

from __future__ import annotations

import warnings

import pandas as pd
from rich.markup import escape

from granite_bench.results.metadata import metadata_column_names
from granite_bench.results.store import ResultStore

DEFAULT_LIMIT = 50


def _verdicts_of(store: ResultStore, table: str, column: str, good: str, bad: str) -> dict[str, str]:
    """run_id -> 'good'/'bad' from a boolean column (all true -> good)."""
    if table not in store.tables():
        return {}
    frame = store.read(table)
    if frame.empty or column not in frame.columns or "run_id" not in frame.columns:
        return {}
    ok = frame.groupby("run_id")[column].agg(lambda v: bool(pd.Series(v).fillna(False).astype(bool).all()))
    return {run: good if passed else bad for run, passed in ok.items()}


def run_verdicts(store: ResultStore) -> dict[str, str]:
    """run_id -> verdict text from whatever each run wrote."""
    found: dict[str, list[str]] = {}
    sources = [("parity_summary", "run_passed", "parity pass", "parity FAIL"),
               ("eval_summary", "passed", "eval pass", "eval FAIL")]
    for table, column, good, bad in sources:
        for run, verdict in _verdicts_of(store, table, column, good, bad).items():
            found.setdefault(run, []).append(verdict)
    for run, verdict in _verdicts_of(store, "comparisons", "regressed", "compare REGRESSION", "compare ok").items():
        # regressed is true for a regression: the labels are swapped on purpose
        found.setdefault(run, []).append(verdict)
    if "perf_summary" in store.tables():
        perf = store.read("perf_summary")
        if len(perf) and "run_id" in perf.columns:
            for run, count in perf.groupby("run_id").size().items():
                found.setdefault(run, []).append(f"perf {count} rows")
    return {run: ", ".join(v) for run, v in found.items()}


def runs_frame(store: ResultStore) -> pd.DataFrame:
    """One row per run: id, time, git sha (+ '*' when dirty), suite, device, dtype, tables, verdicts."""
    runs = store.runs()
    if runs.empty:
        return runs
    verdicts = run_verdicts(store)
    dirty = runs["git_dirty"].map(lambda d: "*" if str(d).lower() in ("true", "1") else "")
    out = pd.DataFrame({
        "run_id": runs["run_id"], "utc_time": runs["utc_time"],
        "git_sha": runs["git_sha"].astype(str).str[:10] + dirty,
        "suite": runs["suite"], "device": runs["device"], "dtype": runs["dtype"], "tables": runs["tables"],
        "verdicts": runs["run_id"].map(lambda r: verdicts.get(r, "")),
    })
    return out


def table_frame(store: ResultStore, table: str, all_columns: bool = False) -> pd.DataFrame:
    """A whole table through DuckDB; the run metadata columns (but run_id) are left out unless all_columns."""
    if table not in store.tables():
        known = ", ".join(store.tables()) or "none yet"
        raise ValueError(f"no table {table!r} in {store.root} (tables: {known})")
    frame = store.query(f'SELECT * FROM "{table}" ORDER BY run_id')
    if not all_columns:
        hidden = set(metadata_column_names()) - {"run_id"}
        frame = frame[[c for c in frame.columns if c not in hidden]]
    return frame


def collect(store: ResultStore, fn, *args):
    """fn(*args) and the files the store skipped on the way, with why: (result, skipped messages). The store's
    own warnings are silenced here: the listing names each skipped file once, on one line."""
    before = set(store.skip_log)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fn(*args)
    return result, [message for path, message in store.skip_log.items() if path not in before]


def fitting_columns(frame: pd.DataFrame, width: int, cap: int = 28) -> list[str]:
    """Leading columns whose (capped) widths fit the console; at least one."""
    chosen, used = [], 0
    for column in frame.columns:
        cells = [len(str(column))] + [len(_text(v)) for v in frame[column].head(50)]
        need = min(max(cells), cap) + 3
        if chosen and used + need > width:
            break
        chosen.append(column)
        used += need
    return chosen


def render_frame(console, frame: pd.DataFrame, title: str, limit: int | None = DEFAULT_LIMIT) -> None:
    from rich.table import Table
    from rich.text import Text
    if frame.empty:
        console.print(Text(f"{title}: no rows"))
        return
    shown = frame.tail(limit) if limit else frame
    # a terminal gets the leading columns that fit, cells capped; a log or pipe gets every column and cell whole
    terminal = console.is_terminal
    columns = fitting_columns(shown, console.width or 160) if terminal else list(shown.columns)
    note = f", last {len(shown)} shown" if len(shown) < len(frame) else ""
    table = Table(title=Text(f"{title} ({len(frame)} rows{note})"), title_justify="left")
    for column in columns:
        table.add_column(str(column), overflow="ellipsis", no_wrap=True, max_width=28 if terminal else None)
    for row in shown[columns].itertuples(index=False):
        table.add_row(*[Text(_text(v)) for v in row])  # values are data, never markup
    console.print(table)
    hidden = [c for c in frame.columns if c not in columns]
    if hidden:
        console.print(f"{len(hidden)} more columns not shown ({', '.join(map(str, hidden[:12]))}"
                      f"{', ...' if len(hidden) > 12 else ''}): pick columns with --sql or write all with --csv",
                      highlight=False)


def _text(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def uncommitted_messages(store: ResultStore) -> list[str]:
    """One line per run whose files were written but never committed (a crash or kill mid-write): ignored."""
    runs: dict[str, list[str]] = {}
    for path in store.uncommitted():
        runs.setdefault(path.stem, []).append(path.parent.parent.name)
    return [f"ignoring run {run} in {store.root}: it never committed (interrupted while writing "
            f"{', '.join(sorted(tables))}); delete its files or leave them, no reader uses them"
            for run, tables in sorted(runs.items())]


def query_or_explain(store: ResultStore, sql: str) -> pd.DataFrame:
    """store.query, with DuckDB's parser and binder errors turned into one-line ValueErrors."""
    import duckdb
    try:
        return store.query(sql, read_only=True)
    except duckdb.PermissionException as err:  # the sandbox: a file, URL or extension outside the store's tables
        reason = str(err).splitlines()[0].removeprefix("Permission Error: ")
        raise ValueError(f"--sql reads only the store's tables, as views ({', '.join(store.tables())}); refused: "
                         f"{reason}") from None
    except duckdb.Error as err:
        raise ValueError(f"query failed: {str(err).splitlines()[0]} (tables: {', '.join(store.tables())})") from None


def run_results_command(store: ResultStore, console, err_console, table: str | None = None, sql: str | None = None,
                        all_columns: bool = False, limit: int = DEFAULT_LIMIT, csv=None) -> None:
    """Print the runs, one table, or a query result; name every corrupt file that was skipped and every file of a
    run that never committed (both are left out)."""
    if limit is not None and limit < 0:
        raise ValueError(f"--limit must be 0 (all rows) or more, got {limit}")
    if sql is not None:
        frame, skipped = collect(store, query_or_explain, store, sql)
        title = "query"
    elif table is not None:
        frame, skipped = collect(store, table_frame, store, table, all_columns)
        title = table
    else:
        frame, skipped = collect(store, runs_frame, store)
        title = f"runs in {store.root}"
    for message in skipped + uncommitted_messages(store):
        err_console.print("[yellow]warning:[/] " + escape(message), highlight=False, soft_wrap=True)
    render_frame(console, frame, title, limit or None)
    if csv is not None:
        frame.to_csv(csv, index=False)
        console.print(f"wrote {len(frame)} rows to {csv}")
