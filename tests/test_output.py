"""Tables a person can read: whole without a terminal, split by columns (never cut) in a narrow one, and as CSV or
JSON on stdout alone with --format."""

import csv
import io
import json

from rich.table import Table

from granite_bench.output import ReportConsole

HEADERS = ["point", "TTFT", "TPOT", "TPOT p99", "tok/s", "TTFT/HFe", "TPOT/HFe", "TPOT/HFs", "GB/s", "%matvec",
           "%read", "%matmul", "cpu TPOT", "cpu /HFe", "cpu %mv", "compile s", "RSS MiB", "pad"]


def wide_table() -> Table:
    table = Table(title="implementation (latencies p50 ms)")
    for header in HEADERS:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_row("tp1 b1 ctx128", *[f"{1234.5678 + i:.7g}" for i in range(len(HEADERS) - 1)])
    table.add_row("tp1 b4 ctx128", *["[green]0.75[/]"] * (len(HEADERS) - 1))
    return table


def test_without_a_terminal_a_wide_table_is_written_whole():
    out = io.StringIO()
    ReportConsole(file=out).print(wide_table())  # a StringIO is no terminal
    text = out.getvalue()
    assert "…" not in text
    assert all(f" {header} " in text for header in HEADERS)
    assert "1250.568" in text


def test_in_a_narrow_terminal_a_wide_table_is_split_by_columns_and_nothing_is_cut():
    out = io.StringIO()
    ReportConsole(file=out, width=80, force_terminal=True, color_system=None).print(wide_table())
    text = out.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "(columns 1 of" in text
    assert all(f" {header} " in text for header in HEADERS)
    assert text.count("tp1 b4 ctx128") >= 2  # the row label is repeated beside every slice


def test_csv_and_json_put_only_the_tables_on_stdout():
    for table_format in ("csv", "json"):
        data, chatter = io.StringIO(), io.StringIO()
        console = ReportConsole(table_format, data_stream=data, file=chatter)
        console.print("[bold]perf[/] tiny-gqa · 2 grid points")
        console.print(wide_table())
        assert "perf tiny-gqa" in chatter.getvalue() and "perf" not in data.getvalue().split("\n")[0][2:6]
        if table_format == "json":
            doc = json.loads(data.getvalue())
            assert doc["columns"] == HEADERS and doc["rows"][1]["TTFT/HFe"] == "0.75"
        else:
            lines = data.getvalue().splitlines()
            assert lines[0] == "# implementation (latencies p50 ms)"
            rows = list(csv.reader(lines[1:4]))
            assert rows[0] == HEADERS and rows[2][5] == "0.75"


def test_cli_refuses_an_unknown_format_in_one_line():
    from typer.testing import CliRunner

    from granite_bench.cli import app
    result = CliRunner().invoke(app, ["results", "--results-dir", ".", "--format", "xml"])
    assert result.exit_code == 2
    assert "--format takes table, csv, json, got 'xml'" in result.output


def test_help_shows_no_value_type_beside_flags():
    from typer.testing import CliRunner

    from granite_bench.cli import app
    text = CliRunner().invoke(app, ["parity", "--help"], env={"COLUMNS": "200"}).output
    flag_lines = [line for line in text.splitlines() if "--no-save" in line or "--help" in line or "--eager" in line]
    assert len(flag_lines) == 3 and not any("<bool>" in line for line in flag_lines)
    assert "<int>" in next(line for line in text.splitlines() if "--batch-size" in line)


def test_the_cli_console_does_not_cut_lines_when_stdout_is_no_terminal():
    from granite_bench import cli
    assert not cli.sys.stdout.isatty()
    assert cli.console.width >= 10_000 and cli.err_console.width >= 10_000  # was 160: perf headers read `TT…`


def test_results_format_json_prints_only_json_on_stdout(tmp_path):
    import shutil
    from pathlib import Path

    from typer.testing import CliRunner

    from granite_bench.cli import app
    store = tmp_path / "store"
    shutil.copytree(Path(__file__).resolve().parents[1] / "results", store)
    result = CliRunner().invoke(app, ["results", "--results-dir", str(store), "--format", "json", "--limit", "3"])
    assert result.exit_code == 0, result.output
    (doc,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert doc["columns"][0] == "run_id" and len(doc["rows"]) == 3
