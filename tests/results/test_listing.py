import dataclasses
import re

import pytest
from typer.testing import CliRunner

from granite_bench.cli import app
from granite_bench.results.listing import run_verdicts, runs_frame
from granite_bench.results.metadata import RunMetadata
from granite_bench.results.store import ResultStore

META = RunMetadata(run_id="", utc_time="", git_sha="", git_dirty=False, package_versions="{}",
                   machine_fingerprint="f00d", machine="test", suite="parity/default", device="cpu", dtype="float32",
                   config_hash="0" * 16, config_json="{}", seed=0)


def meta(n: int, **changes) -> RunMetadata:
    return dataclasses.replace(META, run_id=f"2025010{n}T000000Z-0000000{n}", utc_time=f"2025-01-0{n}T00:00:00.000Z",
                               git_sha=f"{n}" * 40, **changes)


def parity(passed: bool) -> list[dict]:
    return [{"model": "tiny-gqa", "prompt": i, "passed": passed, "run_passed": passed, "worst_max_abs_err": 1e-5}
            for i in range(2)]


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path)
    store.write("parity_summary", parity(True), meta(1))
    store.write("parity_summary", parity(False), meta(2, git_dirty=True))
    store.write("eval_summary", [{"task": "canary_recall", "impl_value": 0.95, "passed": True}],
                meta(3, suite="eval/canary"))
    store.write("comparisons", [{"kind": "deterministic", "metric": "passed", "verdict": "regression",
                                 "regressed": True}], meta(4, suite="compare"))
    return store


def test_runs_carry_their_verdicts(store):
    verdicts = run_verdicts(store)
    assert verdicts == {meta(1).run_id: "parity pass", meta(2).run_id: "parity FAIL", meta(3).run_id: "eval pass",
                        meta(4).run_id: "compare REGRESSION"}
    frame = runs_frame(store)
    assert list(frame["run_id"]) == [meta(n).run_id for n in (1, 2, 3, 4)]
    assert frame.loc[1, "git_sha"] == "2" * 10 + "*"  # a dirty tree is marked


def test_cli_lists_runs_and_names_a_corrupt_file_it_skipped(store, tmp_path):
    bad = tmp_path / "parity_summary" / "schema_version=1" / "20250109T000000Z-0000000b.parquet"
    bad.write_bytes(b"not parquet")
    result = CliRunner().invoke(app, ["results", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert bad.name in result.output
    assert meta(1).run_id in result.output and "parity FAIL" in result.output


def test_cli_prints_a_table_and_a_query(store, tmp_path):
    runner = CliRunner()
    table = runner.invoke(app, ["results", "--results-dir", str(tmp_path), "--table", "eval_summary"])
    assert table.exit_code == 0 and "canary_recall" in table.output
    assert "package_versions" not in table.output  # metadata columns only with --all-columns
    query = runner.invoke(app, ["results", "--results-dir", str(tmp_path), "--sql",
                                "select count(*) as failed_prompts from parity_summary where not passed"])
    assert query.exit_code == 0 and "failed_prompts" in query.output
    cells = re.findall(r"│\s*(\S+)\s*│", query.output.split("failed_prompts", 1)[1])
    assert cells == ["2"]


def test_cli_refuses_an_unknown_table_and_bad_sql_in_one_line(store, tmp_path):
    runner = CliRunner()
    unknown = runner.invoke(app, ["results", "--results-dir", str(tmp_path), "--table", "nope"])
    assert unknown.exit_code == 2 and "no table 'nope'" in unknown.output
    bad_sql = runner.invoke(app, ["results", "--results-dir", str(tmp_path), "--sql", "selec 1"])
    assert bad_sql.exit_code == 2 and "query failed" in bad_sql.output


def test_without_a_terminal_every_column_and_cell_is_printed_whole():
    import io

    import pandas as pd
    from rich.console import Console

    from granite_bench.results.listing import render_frame
    frame = pd.DataFrame([{f"column_{i}": f"value {i} " + "x" * 40 for i in range(30)}])
    out = io.StringIO()
    render_frame(Console(file=out, width=100_000), frame, "wide")  # a StringIO is no terminal
    text = out.getvalue()
    assert "…" not in text and "more columns not shown" not in text
    assert "column_29" in text and "value 29 " + "x" * 40 in text
    narrow = io.StringIO()
    render_frame(Console(file=narrow, width=120, force_terminal=True), frame, "wide")
    assert "more columns not shown" in narrow.getvalue()  # a terminal still gets the columns that fit
