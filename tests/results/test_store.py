import dataclasses
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from granite_bench.results.metadata import SCHEMA_VERSION, RunMetadata, metadata_column_names
from granite_bench.results.store import CorruptResultFile, ResultStore

BASE_META = RunMetadata(
    run_id="20250101T000000Z-00000000",
    utc_time="2025-01-01T00:00:00.000Z",
    git_sha="abc123",
    git_dirty=False,
    package_versions='{"python": "3.11.0"}',
    machine_fingerprint="f00d",
    machine="x86_64 test 2 cores 4 GiB Linux",
    suite="parity",
    device="cpu",
    dtype="float32",
    config_hash="0123456789abcdef",
    config_json='{"a":1}',
    seed=0,
)


def make_meta(n: int, **changes) -> RunMetadata:
    """The n-th run: ids and times increase with n."""
    return dataclasses.replace(
        BASE_META,
        run_id=f"2025010{n}T000000Z-{n:08x}",
        utc_time=f"2025-01-0{n}T00:00:00.000Z",
        **changes,
    )


def position_rows(n_rows: int = 3) -> list[dict]:
    return [{"position": i, "max_abs_err": 0.1 * i, "passed": i % 2 == 0} for i in range(n_rows)]


def test_write_then_read_round_trips_rows_with_every_metadata_column(tmp_path):
    store = ResultStore(tmp_path)
    meta = make_meta(1)
    path = store.write("parity_positions", position_rows(), meta)

    assert path == tmp_path / "parity_positions" / "schema_version=1" / f"{meta.run_id}.parquet"
    assert path.is_file()
    frame = store.read("parity_positions")
    assert len(frame) == 3
    for name, value in meta.columns("parity_positions").items():
        assert (frame[name] == value).all(), name
    assert list(frame.columns[: len(metadata_column_names())]) == metadata_column_names()
    assert frame["position"].tolist() == [0, 1, 2]
    assert frame["max_abs_err"].tolist() == pytest.approx([0.0, 0.1, 0.2])
    assert frame["passed"].tolist() == [True, False, True]
    assert store.skipped == []


def test_file_lands_under_its_schema_version_partition(tmp_path, monkeypatch):
    monkeypatch.setitem(SCHEMA_VERSION, "perf_summary", 4)
    path = ResultStore(tmp_path).write("perf_summary", [{"ms": 1.0}], make_meta(1))
    assert path.parent.name == "schema_version=4"
    assert path.parent.parent.name == "perf_summary"
    assert pq.read_table(path).column("schema_version").to_pylist() == [4]


def test_dataframe_rows_lose_their_index_and_keep_their_columns(tmp_path):
    store = ResultStore(tmp_path)
    rows = pd.DataFrame({"tokens": [5, 6]}, index=[10, 20])
    store.write("perf_samples", rows, make_meta(1))
    frame = store.read("perf_samples")
    assert frame["tokens"].tolist() == [5, 6]
    assert list(frame.index) == [0, 1]


def test_refuses_to_overwrite_an_existing_run_file(tmp_path):
    store = ResultStore(tmp_path)
    meta = make_meta(1)
    path = store.write("parity_summary", [{"passed": True}], meta)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=meta.run_id):
        store.write("parity_summary", [{"passed": False}], meta)
    assert path.read_bytes() == before
    assert store.read("parity_summary")["passed"].tolist() == [True]


def test_empty_list_writes_nothing_but_empty_frame_keeps_metadata_columns(tmp_path):
    store = ResultStore(tmp_path)
    assert store.write("eval_samples", [], make_meta(1)) is None
    assert store.files() == []

    empty = pd.DataFrame({"doc_id": pd.Series([], dtype="int64")})
    path = store.write("eval_samples", empty, make_meta(2))
    frame = store.read("eval_samples")
    assert path.is_file() and len(frame) == 0
    assert set(metadata_column_names()) | {"doc_id"} == set(frame.columns)


def test_row_column_clashing_with_run_metadata_is_refused(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        store.write("perf_samples", [{"dtype": "bfloat16", "ms": 1.0}], make_meta(1))
    assert store.files() == []
    # The same value as the run's is harmless.
    store.write("perf_samples", [{"dtype": "float32", "ms": 1.0}], make_meta(1))
    assert store.read("perf_samples")["dtype"].tolist() == ["float32"]


def test_unknown_table_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown result table"):
        ResultStore(tmp_path).write("perf_sample", [{"ms": 1.0}], make_meta(1))


def write_old_v1_file(root: Path, meta: RunMetadata) -> Path:
    """A perf_summary file from an older writer: fewer metadata columns, an old metric set."""
    columns = {k: v for k, v in meta.columns("perf_summary").items() if k not in ("machine", "config_json")}
    columns["schema_version"] = 1
    rows = pd.DataFrame([{**columns, "latency_ms": 12.5, "old_only": "x"}])
    path = root / "perf_summary" / "schema_version=1" / f"{meta.run_id}.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), path)
    return path


def test_read_unions_schema_versions_by_column_name(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    old = make_meta(1)
    write_old_v1_file(tmp_path, old)
    monkeypatch.setitem(SCHEMA_VERSION, "perf_summary", 2)
    new = make_meta(2)
    store.write("perf_summary", [{"tokens_per_s": 80.0, "latency_ms": 11.0}], new)

    frame = store.read("perf_summary").set_index("run_id")
    assert frame.loc[old.run_id, "schema_version"] == 1
    assert frame.loc[new.run_id, "schema_version"] == 2
    assert frame.loc[old.run_id, "latency_ms"] == 12.5
    assert frame.loc[new.run_id, "latency_ms"] == 11.0
    assert pd.isna(frame.loc[old.run_id, "tokens_per_s"])
    assert pd.isna(frame.loc[new.run_id, "old_only"])
    assert pd.isna(frame.loc[old.run_id, "machine"])
    assert frame.loc[new.run_id, "machine"] == new.machine

    counts = store.query(
        "select schema_version, count(*) as n, count(tokens_per_s) as with_tps "
        "from perf_summary group by schema_version order by schema_version"
    )
    assert counts.to_dict("records") == [
        {"schema_version": 1, "n": 1, "with_tps": 0},
        {"schema_version": 2, "n": 1, "with_tps": 1},
    ]


def test_read_filters_one_run(tmp_path):
    store = ResultStore(tmp_path)
    for n in (1, 2, 3):
        store.write("parity_positions", position_rows(n), make_meta(n))
    frame = store.read("parity_positions", run_id=make_meta(2).run_id)
    assert len(frame) == 2
    assert set(frame["run_id"]) == {make_meta(2).run_id}
    assert len(store.read("parity_positions")) == 6
    assert store.read("parity_positions", run_id="nope").empty
    assert store.read("no_such_table").empty


def corrupt_files(store: ResultStore, root: Path) -> tuple[Path, Path]:
    """Two good runs plus a garbage file and a truncated copy of a real one."""
    good = store.write("parity_positions", position_rows(3), make_meta(1))
    store.write("parity_positions", position_rows(2), make_meta(2))
    folder = good.parent
    garbage = folder / "20250105T000000Z-garbage0.parquet"
    garbage.write_bytes(b"not a parquet file at all")
    truncated = folder / "20250106T000000Z-truncate.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return garbage, truncated


def test_corrupt_files_are_named_and_skipped_while_others_are_read(tmp_path):
    store = ResultStore(tmp_path)
    garbage, truncated = corrupt_files(store, tmp_path)

    with pytest.warns(UserWarning) as caught:
        frame = store.read("parity_positions")
    messages = " ".join(str(w.message) for w in caught)
    assert str(garbage) in messages and str(truncated) in messages
    assert sorted(store.skipped) == sorted([garbage, truncated])
    assert len(frame) == 5
    assert set(frame["run_id"]) == {make_meta(1).run_id, make_meta(2).run_id}


def test_read_file_raises_naming_the_corrupt_file(tmp_path):
    store = ResultStore(tmp_path)
    garbage, _ = corrupt_files(store, tmp_path)
    with pytest.raises(CorruptResultFile, match=garbage.name):
        store.read_file(garbage)


def test_query_and_runs_skip_corrupt_files(tmp_path):
    store = ResultStore(tmp_path)
    garbage, truncated = corrupt_files(store, tmp_path)
    with pytest.warns(UserWarning, match="corrupt result file"):
        count = store.query("select count(*) as n from parity_positions")
    assert count["n"].tolist() == [5]
    assert sorted(store.skipped) == sorted([garbage, truncated])
    with pytest.warns(UserWarning, match="corrupt result file"):
        runs = store.runs()
    assert runs["run_id"].tolist() == [make_meta(1).run_id, make_meta(2).run_id]


def test_query_counts_rows_through_duckdb(tmp_path):
    store = ResultStore(tmp_path)
    store.write("parity_positions", position_rows(3), make_meta(1))
    store.write("parity_positions", position_rows(4), make_meta(2))
    store.write("parity_summary", [{"passed": True}], make_meta(2))

    assert store.query("select count(*) as n from parity_positions")["n"].tolist() == [7]
    joined = store.query(
        "select p.run_id, count(*) as n from parity_positions p "
        "join parity_summary s using (run_id) group by p.run_id"
    )
    assert joined.to_dict("records") == [{"run_id": make_meta(2).run_id, "n": 4}]


def test_query_reads_schema_version_from_the_hive_partition(tmp_path):
    store = ResultStore(tmp_path)
    store.write("parity_positions", position_rows(2), make_meta(1))
    # A file that lacks the column: only its folder says which version it is.
    folder = tmp_path / "parity_positions" / "schema_version=3"
    folder.mkdir()
    pq.write_table(pa.table({"run_id": ["r3"], "position": [0]}), folder / "r3.parquet")

    frame = store.query(
        "select schema_version, count(*) as n from parity_positions group by 1 order by 1"
    )
    assert frame.to_dict("records") == [{"schema_version": 1, "n": 2}, {"schema_version": 3, "n": 1}]


def test_runs_lists_each_run_once_with_its_tables_sorted_by_time(tmp_path):
    store = ResultStore(tmp_path)
    later, earlier = make_meta(3, suite="perf/default"), make_meta(1)
    store.write("perf_samples", [{"ms": 1.0}, {"ms": 2.0}], later)
    store.write("parity_positions", position_rows(), earlier)
    store.write("parity_summary", [{"passed": True}], earlier)
    # A run whose only file has no rows still counts.
    store.write("eval_summary", pd.DataFrame({"acc": pd.Series([], dtype=float)}), make_meta(2))

    runs = store.runs()
    assert list(runs.columns) == ["run_id", "utc_time", "git_sha", "git_dirty", "suite", "device", "dtype", "tables"]
    assert runs["run_id"].tolist() == [earlier.run_id, make_meta(2).run_id, later.run_id]
    assert runs["tables"].tolist() == ["parity_positions,parity_summary", "eval_summary", "perf_samples"]
    assert runs["suite"].tolist() == ["parity", "parity", "perf/default"]
    assert ResultStore(tmp_path / "missing").runs().empty


def test_runs_reads_metadata_from_rows_of_files_without_footer(tmp_path):
    store = ResultStore(tmp_path)
    write_old_v1_file(tmp_path, make_meta(1))
    runs = store.runs()
    assert runs.to_dict("records") == [{
        "run_id": make_meta(1).run_id, "utc_time": make_meta(1).utc_time, "git_sha": "abc123",
        "git_dirty": False, "suite": "parity", "device": "cpu", "dtype": "float32",
        "tables": "perf_summary",
    }]


def test_tables_and_files_ignore_unrelated_entries(tmp_path):
    store = ResultStore(tmp_path)
    store.write("parity_summary", [{"passed": True}], make_meta(1))
    store.write("perf_summary", [{"ms": 1.0}], make_meta(2))
    (tmp_path / "README.md").write_text("baselines")
    (tmp_path / "notes").mkdir()
    (tmp_path / "parity_summary" / "schema_version=1" / ".hidden.parquet").write_bytes(b"x")
    assert store.tables() == ["parity_summary", "perf_summary"]
    assert [p.parent.parent.name for p in store.files()] == ["parity_summary", "perf_summary"]
    assert len(store.files("perf_summary")) == 1


def fail_replace(src, dst):
    raise OSError("simulated crash before rename")


def fail_inside_writer(table, where, **kwargs):
    where.write(b"PAR1 partial")
    raise OSError("simulated crash while writing")


@pytest.mark.parametrize(
    "target, attribute, failure",
    [(os, "replace", fail_replace), (pq, "write_table", fail_inside_writer)],
    ids=["rename", "write"],
)
def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch, target, attribute, failure):
    store = ResultStore(tmp_path)
    meta = make_meta(1)
    with monkeypatch.context() as patch:
        patch.setattr(target, attribute, failure)
        with pytest.raises(OSError, match="simulated crash"):
            store.write("parity_positions", position_rows(), meta)

    folder = tmp_path / "parity_positions" / "schema_version=1"
    assert list(folder.iterdir()) == []  # neither the target nor the temp file
    assert store.files() == []
    assert store.read("parity_positions").empty
    # Nothing left behind blocks the same run from writing again.
    store.write("parity_positions", position_rows(), meta)
    assert len(store.read("parity_positions")) == 3


# ----- whole runs: a run's tables appear together or not at all -----------------------------------------------------

def test_write_run_commits_every_table_with_one_marker_written_last(tmp_path):
    store = ResultStore(tmp_path)
    written = store.write_run(make_meta(1), {"parity_positions": position_rows(3), "parity_summary": [{"ok": True}]})
    assert [p.parent.parent.name for p in written] == ["parity_positions", "parity_summary"]
    marker = store.commit_marker(make_meta(1).run_id)
    assert marker.exists() and marker.stat().st_mtime_ns >= max(p.stat().st_mtime_ns for p in written)
    assert len(store.read("parity_positions")) == 3 and len(store.read("parity_summary")) == 1
    assert store.runs()["tables"].tolist() == ["parity_positions,parity_summary"]


def test_a_crash_between_a_runs_tables_leaves_neither_visible_and_removes_the_first(tmp_path, monkeypatch):
    from granite_bench.results import store as store_module
    real = store_module.write_rows_atomic

    def crash_after_first(path, frame, footer=None):
        if "parity_summary" in str(path):
            raise OSError(28, "No space left on device")
        return real(path, frame, footer)

    monkeypatch.setattr(store_module, "write_rows_atomic", crash_after_first)
    store = ResultStore(tmp_path)
    with pytest.raises(OSError, match="No space left"):
        store.write_run(make_meta(1), {"parity_positions": position_rows(3), "parity_summary": [{"ok": True}]})
    assert store.read("parity_positions").empty and store.runs().empty
    assert not list(tmp_path.rglob("*.parquet")) and not store.commit_marker(make_meta(1).run_id).exists()


def test_files_of_a_run_that_never_committed_are_listed_and_never_read(tmp_path):
    store = ResultStore(tmp_path)
    store.write_run(make_meta(1), {"parity_summary": [{"ok": True}]})
    orphan = store._write_table("parity_summary", [{"ok": False}], make_meta(2))  # killed before its marker
    assert store.uncommitted() == [orphan]
    assert store.read("parity_summary")["ok"].tolist() == [True]
    assert store.runs()["run_id"].tolist() == [make_meta(1).run_id]
    assert len(store.query("select * from parity_summary")) == 1


def test_files_written_before_commit_markers_existed_are_still_read(tmp_path):
    store = ResultStore(tmp_path)
    write_old_v1_file(tmp_path, make_meta(1))
    assert store.uncommitted() == [] and len(store.read("perf_summary")) == 1


def test_a_later_write_adds_its_table_to_a_committed_run(tmp_path):
    store = ResultStore(tmp_path)
    store.write("parity_positions", position_rows(2), make_meta(1))
    store.write("parity_summary", [{"ok": True}], make_meta(1))
    assert store.runs()["tables"].tolist() == ["parity_positions,parity_summary"]
    with pytest.raises(FileExistsError):
        store.write("parity_summary", [{"ok": False}], make_meta(1))


@pytest.mark.parametrize("sql", ["COPY (SELECT 1) TO 'out.csv'", "CREATE TABLE t AS SELECT 1", "ATTACH 'x.db'",
                                 "SET threads = 1", "SELECT 1; COPY (SELECT 1) TO 'out.csv'"])
def test_read_only_query_refuses_every_statement_that_is_not_a_select(tmp_path, sql, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = ResultStore(tmp_path / "store")
    store.write("parity_summary", [{"ok": True}], make_meta(1))
    with pytest.raises(ValueError, match="read-only"):
        store.query(sql, read_only=True)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "x.db").exists()
    assert store.query("explain select * from parity_summary", read_only=True) is not None


@pytest.mark.parametrize("sql", ["select * from read_csv('/etc/passwd')", "select * from glob('/root/*')",
                                 "select * from sniff_csv('/etc/passwd')", "select * from read_blob('/etc/passwd')",
                                 "select * from read_parquet('http://example.invalid/x.parquet')",
                                 "select * from read_text('{root}/_commits/{run}.json')",
                                 "select * from read_parquet('{root}/parity_summary/*/*.parquet')",
                                 "select * from '{root}/parity_summary/schema_version=1/{uncommitted}.parquet'"])
def test_sql_reads_nothing_but_the_stores_committed_tables(tmp_path, sql):
    """Files outside the store, URLs (no extension is installed or loaded for them), the store's own bookkeeping
    and the files of a run that never committed are refused: only the views' committed files are readable."""
    import duckdb
    store = ResultStore(tmp_path / "store")
    store.write("parity_summary", [{"ok": True}], make_meta(1))
    uncommitted = make_meta(2)
    store._write_table("parity_summary", [{"ok": False}], uncommitted)   # written, never committed
    assert store.uncommitted()
    query = sql.format(root=store.root, run=make_meta(1).run_id, uncommitted=uncommitted.run_id)
    with pytest.raises(duckdb.PermissionException):
        store.query(query, read_only=True)
    assert store.query("select count(*) as n from parity_summary", read_only=True)["n"].tolist() == [1]


def test_sql_cannot_turn_the_sandbox_off(tmp_path):
    store = ResultStore(tmp_path / "store")
    store.write("parity_summary", [{"ok": True}], make_meta(1))
    settings = store.query("select name, value from duckdb_settings() where name in ('enable_external_access', "
                           "'lock_configuration', 'autoload_known_extensions', 'autoinstall_known_extensions')",
                           read_only=True)
    assert dict(zip(settings["name"], settings["value"])) == {
        "enable_external_access": "false", "lock_configuration": "true", "autoload_known_extensions": "false",
        "autoinstall_known_extensions": "false"}
    with pytest.raises(ValueError, match="read-only"):
        store.query("SET enable_external_access = true", read_only=True)


def test_cli_sql_refuses_a_file_outside_the_store_in_one_line(tmp_path):
    from typer.testing import CliRunner
    from granite_bench.cli import app
    store = ResultStore(tmp_path / "store")
    store.write("parity_summary", [{"ok": True}], make_meta(1))
    done = CliRunner().invoke(app, ["results", "--results-dir", str(store.root), "--sql",
                                    "select * from read_csv('/etc/passwd')"])
    assert done.exit_code == 2
    assert "--sql reads only the store's tables" in done.output and "root:" not in done.output
