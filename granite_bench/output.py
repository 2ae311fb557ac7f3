"""How commands print their tables so a person (or a log, or CI) can read them whole.

- In a terminal, a table wider than the window is printed as several tables of the columns that fit, each
  repeating the first column (the row's label), instead of cutting headers to `TT…` and cells to `…`.
- Without a terminal (a log file, a pipe), nothing is cut to a width at all: lines are as long as they need.
- `--format csv` / `--format json`: every table goes to stdout as CSV (a `# title` line, then a header row) or as
  one JSON object per line ({"title", "columns", "rows": [{column: cell}]}); everything else the command says
  (progress, notes, the verdict line) goes to stderr, so stdout stays machine-readable. Cells are the text the
  table shows.
"""

from __future__ import annotations

import csv
import json
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMATS = ("table", "csv", "json")
# Width of a console that writes to a file or pipe: wide enough that no table or line is ever cut or wrapped.
UNBOUNDED_WIDTH = 100_000


def console_width(stream) -> int | None:
    """None (rich measures the terminal) for a terminal, else a width that never cuts."""
    return None if stream.isatty() else UNBOUNDED_WIDTH


class ReportConsole(Console):
    """A rich Console that prints tables whole (folded in a terminal) or, for csv/json, as data on stdout."""

    def __init__(self, table_format: str = "table", data_stream=None, **kwargs):
        if table_format not in FORMATS:
            raise ValueError(f"--format takes {', '.join(FORMATS)}, got {table_format!r}")
        self.table_format = table_format
        self._data_stream = data_stream
        if table_format != "table":
            kwargs.setdefault("file", sys.stderr)  # everything that is not a table: stdout carries the data only
        stream = kwargs.get("file") or sys.stdout
        kwargs.setdefault("width", console_width(stream))
        super().__init__(**kwargs)

    @property
    def data_stream(self):
        """Where csv/json tables go: the given stream, else stdout as it is at the time of printing."""
        return self._data_stream or sys.stdout

    def print(self, *objects, **kwargs) -> None:
        if self.table_format == "table":
            parts = [part for item in objects
                     for table in (fit_width(item, self.width) if isinstance(item, Table) else [item])
                     for part in titled(table)]
            super().print(*parts, **kwargs)
            return
        for table in (item for item in objects if isinstance(item, Table)):
            write_table(self.data_stream, table, self.table_format)
        rest = [item for item in objects if not isinstance(item, Table)]
        if rest or not objects:
            super().print(*rest, **kwargs)


def fit_width(table: Table, width: int) -> list[Table]:
    """The table whole when it fits `width`, else split by columns into tables that fit, each repeating the first
    column; no cell is ever cut."""
    needed = [column_width(c) for c in table.columns]
    if not needed or sum(needed) + 1 <= width:
        return [table]
    groups, current, used = [], [], needed[0] + 1
    for index in range(1, len(needed)):
        if current and used + needed[index] > width:
            groups.append(current)
            current, used = [], needed[0] + 1
        current.append(index)
        used += needed[index]
    groups.append(current)
    return [column_slice(table, [0] + group, f" (columns {k} of {len(groups)})") for k, group in enumerate(groups, 1)]


def titled(item) -> list:
    """A table as [its title as a line of its own, the table without it]: rich wraps a title to the table's width,
    so a long title over a narrow table would read 'parit / y ag / ainst'."""
    if not isinstance(item, Table) or not item.title:
        return [item]
    title = item.title if isinstance(item.title, Text) else Text.from_markup(str(item.title))
    title.stylize("table.title")
    item.title = None
    return [title, item]


def column_width(column) -> int:
    """Characters a column takes unwrapped: its widest cell or header, padding and border."""
    return max([len(cell_text(column.header))] + [len(cell_text(c)) for c in column.cells]) + 3


def column_slice(table: Table, indexes: list[int], note: str) -> Table:
    title = table.title
    part = Table(title=(title + note) if isinstance(title, (str, Text)) and title else None,
                 title_justify=table.title_justify, show_lines=table.show_lines)
    columns = [table.columns[i] for i in indexes]
    for column in columns:
        part.add_column(column.header, justify=column.justify, style=column.style, no_wrap=True)
    for row in zip(*[list(column.cells) for column in columns]):
        part.add_row(*row)
    return part


def cell_text(cell) -> str:
    """A table cell as plain text: markup strings lose their markup, Text its styles."""
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        return Text.from_markup(cell).plain
    return str(cell)


def table_rows(table: Table) -> tuple[str, list[str], list[list[str]]]:
    """(title, column headers, rows of cell texts) of a rich Table."""
    headers = [cell_text(c.header) for c in table.columns]
    cells = [[cell_text(v) for v in c.cells] for c in table.columns]
    rows = [list(row) for row in zip(*cells)] if cells else []
    return cell_text(table.title or ""), headers, rows


def write_table(stream, table: Table, table_format: str) -> None:
    title, headers, rows = table_rows(table)
    if table_format == "json":
        stream.write(json.dumps({"title": title, "columns": headers,
                                 "rows": [dict(zip(headers, row)) for row in rows]}) + "\n")
    else:
        if title:
            stream.write(f"# {title}\n")
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(rows)
        stream.write("\n")
    stream.flush()
