"""Every bad input and fault found so far, as a table: each ends with its exit code (2 for input the user must
change, 1 for a run that failed, 130 for Ctrl-C), one line saying what to change, and nothing written."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from granite_bench.cli import app

FAST = ["--batch-size", "2", "--seq-len", "96", "--buckets", "16,32,64", "--num-tokens", "4"]


def make_meta():
    from granite_bench.results import collect_run_metadata
    return collect_run_metadata(suite="test", device="cpu", dtype="float32", config={}, seed=0)


# ----- fixtures: a folder for every kind of broken checkpoint ----------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """name -> a copy of the tiny-gqa checkpoint broken in one way."""
    root = tmp_path_factory.mktemp("broken-checkpoints")

    def copy(name: str) -> Path:
        target = root / name
        shutil.copytree(tiny_model_dir, target)
        return target

    no_weights = copy("no-weights")
    (no_weights / "model.safetensors").unlink()

    yarn = copy("yarn")
    config = json.loads((yarn / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    config.pop("rope_scaling", None)
    (yarn / "config.json").write_text(json.dumps(config))

    truncated = copy("truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])

    wrong_shape = copy("wrong-shape")
    config = json.loads((wrong_shape / "config.json").read_text())
    config["intermediate_size"] = 256  # the weights are 384 wide
    (wrong_shape / "config.json").write_text(json.dumps(config))

    whole = copy("whole")
    vocab_one = copy("vocab-one")
    config = json.loads((vocab_one / "config.json").read_text())
    config["vocab_size"] = 1
    (vocab_one / "config.json").write_text(json.dumps(config))

    uneven_heads = copy("uneven-heads")
    config = json.loads((uneven_heads / "config.json").read_text())
    config.update(num_attention_heads=6, num_key_value_heads=3)  # hidden 128 is not divisible by 6 heads
    (uneven_heads / "config.json").write_text(json.dumps(config))

    not_granite = copy("not-granite")
    config = json.loads((not_granite / "config.json").read_text())
    config["model_type"] = "llama"
    (not_granite / "config.json").write_text(json.dumps(config))
    return {"no-weights": no_weights, "yarn": yarn, "truncated": truncated, "wrong-shape": wrong_shape,
            "not-granite": not_granite, "vocab-one": vocab_one, "whole": whole, "uneven-heads": uneven_heads}


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    binary = tmp_path / "prompts.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    existing = tmp_path / "existing-file"
    existing.write_text("not a folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    good = tmp_path / "prompts.json"
    good.write_text("[[5, 6, 7, 8, 9], [20, 21, 22]]")
    typed = typed_input_files(tmp_path)
    return {"binary": binary, "file": existing, "locked": locked, "prompts": good,
            "missing": tmp_path / "missing.yaml", "store": tmp_path / "store", **typed}


def typed_input_files(folder: Path) -> dict[str, Path]:
    """Files whose values have the wrong type or range (each refused by its schema in granite_bench/schemas.py)."""
    contents = {"float-ids": "[[5.7, 6, 7, 8]]", "bool-ids": "[[true, 6, 7, 8]]", "string-ids": '[["a", 6, 7]]',
                "null-ids": "[[null, 6, 7]]", "two-prompts": "[[5, 6, 7], [8, 9]]", "huge-random": '[{"random_tokens": 1000000000000}]'}
    paths = {}
    for name, text in contents.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(text)
    paths["long-prompt"] = folder / "long.txt"
    paths["long-prompt"].write_text("word " * 400 + "\n")
    paths["words-suite"] = folder / "sixteen.yaml"
    paths["words-suite"].write_text("model: tiny-gqa\nnum_tokens: sixteen\nprompts: [hello]\n")
    paths["goldens-16"] = folder / "goldens-16"
    paths["goldens-16"].mkdir()
    key = {"num_prompts": 2, "num_tokens": 16, "checkpoint_fingerprint": "0" * 64, "prompts_sha256": "1" * 64}
    (paths["goldens-16"] / "golden.json").write_text(json.dumps({"format_version": 2, "key": key, "prompts": []}))
    from granite_bench.reference.golden_files import write_digests
    write_digests(paths["goldens-16"], ["golden.json"])  # whole by its digests: only its key disagrees
    paths["perf-words-suite"] = folder / "perf-five.yaml"
    paths["perf-words-suite"].write_text("model: tiny-gqa\nrounds: five\n")
    return paths


# ----- the table --------------------------------------------------------------------------------------------------
# (case, argv with {placeholders}, exit code, one-line message); {store} is the results dir that must stay absent.
CASES = [
    ("parity --layers 0", ["parity", *FAST, "--layers", "0"], 2, "--layers must be a positive integer, got 0"),
    ("parity --layers beyond the model", ["parity", *FAST, "--layers", "9"], 2, "--layers 9 is more than the 4 layers"),
    ("parity --seq-len 0", ["parity", "--seq-len", "0"], 2, "--seq-len must be a positive integer, got 0"),
    ("parity --batch-size 0", ["parity", "--batch-size", "0"], 2, "--batch-size must be a positive integer, got 0"),
    ("parity --num-tokens 0", ["parity", *FAST[:6], "--num-tokens", "0"], 2, "--num-tokens must be a positive"),
    ("parity --num-tokens -3", ["parity", *FAST[:6], "--num-tokens", "-3"], 2, "--num-tokens must be a positive"),
    ("parity --dtype float7", ["parity", "--dtype", "float7"], 2, "unknown --dtype 'float7'"),
    ("parity --tp not dividing hidden", ["parity", *FAST, "--tp", "3"], 2, "--tp 3 does not divide hidden_size"),
    ("parity --tp above the heads", ["parity", *FAST, "--tp", "16"], 2, "--tp 16 exceeds the 8 attention heads"),
    ("parity --device tpu", ["parity", *FAST, "--device", "tpu"], 2, "unknown --device 'tpu'"),
    ("parity bucket beyond seq-len", ["parity", "--seq-len", "32", "--buckets", "64"], 2,
     "bucket 64 is longer than --seq-len 32"),
    ("parity --seq-len too large for memory", ["parity", "--seq-len", "100000000", "--buckets", "64"], 2,
     "needs at least"),
    ("parity missing suite", ["parity", "--suite", "{missing}"], 2, "suite file"),
    ("parity binary prompts file", ["parity", *FAST, "--prompts", "{binary}"], 2, "is a binary file"),
    ("parity missing prompts file", ["parity", *FAST, "--prompts", "{missing}"], 2, "does not exist"),
    ("parity checkpoint without weights", ["parity", *FAST, "--model", "{ckpt:no-weights}"], 2,
     "has config.json but no weights"),
    ("parity rope_type yarn", ["parity", *FAST, "--model", "{ckpt:yarn}"], 2, "rope_type 'yarn' is not supported"),
    ("parity truncated safetensors", ["parity", *FAST, "--model", "{ckpt:truncated}"], 2, "is truncated"),
    ("parity tensor of the wrong shape", ["parity", *FAST, "--model", "{ckpt:wrong-shape}"], 2,
     "tensor model.layers.0.mlp.gate_proj.weight in"),
    ("parity not a granite config", ["parity", *FAST, "--model", "{ckpt:not-granite}"], 2,
     "model_type 'llama' is not supported; granite-bench runs granite, granitemoe"),
    ("parity --layers on a checkpoint folder", ["parity", *FAST, "--model", "{ckpt:yarn}", "--layers", "2"], 2,
     "--layers applies to presets only"),
    ("parity results dir is a file", ["parity", *FAST, "--results-dir", "{file}"], 2, "is an existing file: give a folder"),
    ("parity results dir under a file", ["parity", *FAST, "--results-dir", "{file}/res"], 2,
     "cannot be created"),
    ("parity results dir not writable", ["parity", *FAST, "--results-dir", "{locked}/res"], 2, "is not writable"),
    ("perf --threads 0", ["perf", "--threads", "0"], 2, "--threads must be a positive integer, got 0"),
    ("perf --threads -2", ["perf", "--threads", "-2"], 2, "--threads must be a positive integer, got -2"),
    ("perf --layers 0", ["perf", "--layers", "0"], 2, "--layers must be a positive integer, got 0"),
    ("perf --seq-len 0", ["perf", "--seq-len", "0"], 2, "--seq-len must be a positive integer, got 0"),
    ("perf --new-tokens 0", ["perf", "--new-tokens", "0"], 2, "--new-tokens must be a positive integer"),
    ("perf --rounds 0", ["perf", "--rounds", "0"], 2, "--rounds must be a positive integer"),
    ("perf --dtype float7", ["perf", "--dtype", "float7"], 2, "unknown --dtype 'float7'"),
    ("perf empty shard", ["perf", "--batch-sizes", "1", "--buckets", "32", "--shard", "1/2"], 2,
     "shard 1/2 of this grid has no points (the grid has 1)"),
    ("perf bad shard", ["perf", "--shard", "3/2"], 2, "--shard 3/2: need 1 <= i <= n"),
    ("perf --tp above the heads", ["perf", "--tp", "16"], 2, "--tp 16 exceeds the 8 attention heads"),
    ("eval --limit 0", ["eval", "--limit", "0"], 2, "--limit must be positive"),
    ("eval --limit -1", ["eval", "--limit", "-1"], 2, "--limit must be positive"),
    ("eval --seq-len 0", ["eval", "--seq-len", "0"], 2, "--seq-len must be a positive integer"),
    ("eval --dtype float7", ["eval", "--dtype", "float7"], 2, "unknown --dtype 'float7'"),
    ("results --limit -5", ["results", "--limit", "-5"], 2, "--limit must be 0 or more, got -5"),
    ("reference --num-tokens 0", ["reference", "--num-tokens", "0"], 2, "--num-tokens must be a positive integer"),
    ("reference --layers 0", ["reference", "--layers", "0"], 2, "--layers must be a positive integer, got 0"),
    ("reference unknown model", ["reference", "--model", "no-such-preset"], 2, "unknown model 'no-such-preset'"),
    ("reference --out an existing file", ["reference", "--out", __file__], 2, "is an existing file: give a folder"),
    ("reference --framework-dtype float32", ["reference", "--framework-dtype", "fp32"], 2,
     "--framework-dtype float32 is the reference itself"),
    ("reference --framework-dtype unknown", ["reference", "--framework-dtype", "int3"], 2,
     "unknown --framework-dtype 'int3'"),
    ("results missing store", ["results"], 2, "no results store at"),
    ("results --csv into a folder", ["results", "--csv", "{locked}"], 2, "is a folder: give a file name"),
    ("dashboard --out an existing file", ["dashboard", "--out", "{file}"], 2, "is an existing file: give a folder"),
    ("dashboard --out under a file", ["dashboard", "--out", "{file}/dash"], 2, "cannot be created"),
    ("dashboard --out unwritable", ["dashboard", "--out", "{locked}/dash"], 2, "is not writable"),
    ("compare --threads 0", ["compare", "--baseline", "HEAD~1", "--threads", "0"], 2, "--threads must be a positive"),
    ("compare --fail-on other", ["compare", "--baseline", "HEAD~1", "--fail-on", "some"], 2, "--fail-on takes"),
    ("compare --design other", ["compare", "--baseline", "HEAD~1", "--design", "bayes"], 2,
     "--design must be one of sequential, pooled"),
    ("compare --clock other", ["compare", "--baseline", "HEAD~1", "--clock", "tsc"], 2, "--clock must be one of"),
    ("compare first look too early", ["compare", "--baseline", "HEAD~1", "--trials", "12", "--looks", "3"], 2,
     "puts the first look under 6 rounds"),
    ("gate-power --per-level -1", ["gate-power", "--per-level", "-1"], 2, "--per-level must be 0 or more, got -1"),
    # typed inputs (granite_bench/schemas.py): wrong types and ranges in files and options, refused before torch
    ("parity --max-memory a word", ["parity", *FAST, "--max-memory", "lots"], 2, "--max-memory 'lots' is not a size"),
    ("parity --max-memory below one layer", ["parity", *FAST, "--max-memory", "1KiB"], 2,
     "--max-memory 1KiB cannot hold the fp32 reference's embedding/head plus one decoder layer"),
    ("parity float token ids", ["parity", *FAST, "--prompts", "{float-ids}"], 2,
     "prompt 0, token 0 must be an integer, got 5.7"),
    ("parity boolean token ids", ["parity", *FAST, "--prompts", "{bool-ids}"], 2,
     "prompt 0, token 0 must be an integer, got True"),
    ("parity string in token ids", ["parity", *FAST, "--prompts", "{string-ids}"], 2,
     "prompt 0, token 0 must be an integer, got 'a'"),
    ("parity null in token ids", ["parity", *FAST, "--prompts", "{null-ids}"], 2,
     "prompt 0, token 0 must be an integer, got None"),
    ("parity random prompt of 10^12 tokens", ["parity", *FAST, "--prompts", "{huge-random}"], 2,
     "prompt 0, random_tokens must be at most 1048576, got 1000000000000"),
    ("parity suite num_tokens sixteen", ["parity", "--suite", "{words-suite}"], 2,
     "num_tokens must be an integer, got 'sixteen'"),
    ("perf suite rounds five", ["perf", "--suite", "{perf-words-suite}"], 2, "rounds must be an integer, got 'five'"),
    ("parity vocabulary of one", ["parity", *FAST, "--model", "{ckpt:vocab-one}"], 2,
     "vocab_size 1 must be at least 2"),
    ("parity hidden not divisible by heads", ["parity", *FAST, "--model", "{ckpt:uneven-heads}"], 2,
     "hidden_size 128 is not divisible by num_attention_heads 6"),
    ("parity prompt longer than the buckets", ["parity", *FAST, "--prompts", "{long-prompt}"], 2,
     "prompt 0 has 2000 tokens, more than the largest bucket (64)"),
    ("parity text longer than the buckets in the model's tokens", ["parity", *FAST, "--model", "canary", "--prompts",
                                                                   "{long-prompt}"], 2,
     "prompt 0 has at least 1201 tokens, more than the largest bucket (64)"),
    ("parity goldens for another number of tokens", ["parity", *FAST, "--prompts", "{prompts}", "--goldens",
                                                     "{goldens-16}"], 2,
     "were made for another number of tokens (num tokens 16 != 4)"),
    ("parity goldens for another checkpoint", ["parity", *FAST[:6], "--num-tokens", "16", "--prompts", "{prompts}",
                                               "--model", "{ckpt:whole}", "--goldens", "{goldens-16}"], 2,
     "were made for another checkpoint (checkpoint fingerprint 000000000000 != "),
    ("parity --device cuda without a GPU", ["parity", *FAST, "--device", "cuda"], 2, "--device cuda: "),
    ("parity --device neuron without Neuron", ["parity", *FAST, "--device", "neuron"], 2,
     "--device neuron needs torch-neuronx"),
    ("eval unknown task", ["eval", "--tasks", "no_such_task_anywhere"], 2, "unknown task 'no_such_task_anywhere'"),
    ("eval --limit nan", ["eval", "--limit", "nan"], 2, "--limit must be a finite number, got nan"),
    ("gate-power --prefill-level -1", ["gate-power", "--prefill-level", "-1"], 2,
     "--prefill-level must be 0 or more, got -1.0"),
    ("gate-power --prefill-level nan", ["gate-power", "--prefill-level", "nan"], 2,
     "--prefill-level must be a finite number, got nan"),
    ("compare --floor -1", ["compare", "--baseline", "HEAD~1", "--floor", "-1"], 2, "--floor must be 0 or more"),
    ("compare --alpha 2", ["compare", "--baseline", "HEAD~1", "--alpha", "2"], 2, "--alpha must be below 1"),
    ("bisect --alpha 0", ["bisect", "--good", "HEAD~1", "--bad", "HEAD", "--alpha", "0"], 2, "--alpha must be "
     "positive"),
    ("gate-power --levels text", ["gate-power", "--levels", "0,ten"], 2, "--levels takes comma-separated"),
    ("gate-power --design other", ["gate-power", "--design", "bayes"], 2, "--design must be one of"),
]

WRITES_RESULTS = {"parity", "perf", "eval", "compare", "gate-power"}


def fill(argv: list[str], files: dict, checkpoints: dict) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("{ckpt:"):
            out.append(str(checkpoints[arg[6:-1]]))
        else:
            out.append(arg.format(**{k: str(v) for k, v in files.items()}))
    return out


@pytest.mark.parametrize("case, argv, code, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_with_its_code_and_one_line_and_writes_nothing(case, argv, code, message, files,
                                                                       checkpoints, tmp_path, monkeypatch):
    if os.geteuid() == 0 and "{locked}" in " ".join(argv) and "not writable" in message:
        pytest.skip("root may write into any folder: a read-only folder cannot be tested as root")
    skip_where_the_device_is_here(argv)
    monkeypatch.chdir(tmp_path)  # the default results dir (./granite-bench-results) must not appear either
    args = fill(argv, files, checkpoints)
    if argv[0] in WRITES_RESULTS and "--results-dir" not in args:
        args += ["--results-dir", str(files["store"])]
    if argv[0] in ("results", "dashboard") and "--results-dir" not in args:
        args += ["--results-dir", str(files["store"])]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith("error: "), result.output  # exactly one line
    assert message in lines[-1], result.output
    assert "Traceback" not in result.output
    assert not files["store"].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created, no default results dir


def skip_where_the_device_is_here(argv: list[str]) -> None:
    from granite_bench.runtime.hardware import cuda_problem, neuron_problem
    here = {"cuda": cuda_problem() is None, "neuron": neuron_problem() is None}
    if "--device" in argv and here.get(argv[argv.index("--device") + 1]):
        pytest.skip("this machine has the device: nothing to refuse")


REFUSALS = [["parity", "--dtype", "float7", "--no-save"], ["perf", "--threads", "0", "--no-save"],
            ["eval", "--limit", "0", "--no-save"], ["results", "--limit", "-5"], ["dashboard", "--out", __file__],
            ["reference", "--num-tokens", "0"]]


@pytest.mark.parametrize("argv", REFUSALS, ids=[a[0] for a in REFUSALS])
def test_refusing_a_bad_option_imports_neither_torch_nor_transformers(argv):
    code = textwrap.dedent(f"""
        import sys
        from typer.testing import CliRunner
        from granite_bench.cli import app
        result = CliRunner().invoke(app, {argv!r})
        assert result.exit_code == 2, result.output
        heavy = sorted(m for m in ("torch", "transformers", "lm_eval") if m in sys.modules)
        print("heavy:", heavy)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout


# Refusals that took 6-14 s on the shared 2-core machine because they came after torch (or lm-eval) loaded.
TYPED_REFUSALS = [
    ["parity", "--max-memory", "lots", "--no-save"], ["parity", "--max-memory", "1KiB", "--no-save"],
    ["parity", "--prompts", "{float-ids}", "--no-save"], ["parity", "--prompts", "{null-ids}", "--no-save"],
    ["parity", "--prompts", "{huge-random}", "--no-save"], ["parity", "--suite", "{words-suite}", "--no-save"],
    ["parity", "--prompts", "{long-prompt}", "--buckets", "32,64", "--seq-len", "128", "--no-save"],
    ["parity", "--model", "canary", "--prompts", "{long-prompt}", "--buckets", "32,64", "--seq-len", "128",
     "--no-save"],
    ["parity", "--device", "cuda", "--no-save"], ["parity", "--device", "neuron", "--no-save"],
    ["eval", "--tasks", "no_such_task_anywhere", "--no-save"], ["gate-power", "--prefill-level", "nan"],
    ["reference", "--max-memory", "lots"],
    ["parity", "--prompts", "{two-prompts}", "--goldens", "{goldens-16}", "--num-tokens", "4", "--no-save"],
]


@pytest.mark.parametrize("argv", TYPED_REFUSALS, ids=[" ".join(a[:3]) for a in TYPED_REFUSALS])
def test_typed_and_device_refusals_happen_before_torch_transformers_or_lm_eval_load(argv, tmp_path):
    skip_where_the_device_is_here(argv)
    paths = {k: str(v) for k, v in typed_input_files(tmp_path).items()}
    argv = [a.format(**paths) for a in argv]
    test_refusing_a_bad_option_imports_neither_torch_nor_transformers(argv)


# ----- faults during a run ----------------------------------------------------------------------------------------

def test_ctrl_c_during_parity_says_what_was_interrupted_and_writes_nothing(files, monkeypatch):
    from granite_bench.parity import command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "run_parity_on_goldens", interrupted)
    result = CliRunner().invoke(app, ["parity", *FAST, "--prompts", str(files["prompts"]),
                                      "--results-dir", str(files["store"])])
    assert result.exit_code == 130, result.output
    assert "error: parity interrupted (Ctrl-C): nothing was written" in result.output
    assert not files["store"].exists()


@pytest.mark.parametrize("argv, module, function, said", [
    (["perf", "--batch-sizes", "1", "--buckets", "32"], "granite_bench.perf.command", "run_perf_command",
     "error: perf interrupted (Ctrl-C): every point that finished before it is stored"),
    (["eval"], "granite_bench.accuracy.command", "run_eval_command", "error: eval interrupted (Ctrl-C): nothing was"),
], ids=["perf", "eval"])
def test_ctrl_c_in_perf_and_eval_exits_130_with_one_line(argv, module, function, said, files, monkeypatch):
    import importlib

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), function, interrupted)
    result = CliRunner().invoke(app, [*argv, "--results-dir", str(files["store"])])
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1].startswith(said), result.output
    assert not files["store"].exists()


def test_a_hung_tp_rank_message_with_bracketed_paths_is_printed_as_text(files, monkeypatch):
    from granite_bench.parity import command
    from granite_bench.runtime.tp_worker import TPRankError
    message = ("TP rank 1 did not answer context_encode within 6 s (hung); rank 0 then failed: RuntimeError: "
               "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Timed out [bold]x[/]")

    def hung(*args, **kwargs):
        raise TPRankError(message)

    monkeypatch.setattr(command, "run_parity_on_goldens", hung)
    result = CliRunner().invoke(app, ["parity", *FAST, "--prompts", str(files["prompts"]),
                                      "--results-dir", str(files["store"])])
    assert result.exit_code == 1, result.output
    assert f"error: {message} (nothing was written)" in result.output.replace("\n", "")
    assert "Traceback" not in result.output
    assert not files["store"].exists()


def test_a_full_disk_while_writing_leaves_no_half_run_and_says_so(files, monkeypatch):
    import errno

    from granite_bench.results import store as store_module
    real = store_module.write_rows_atomic
    calls = []

    def full_after_first(path, frame, footer=None):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, frame, footer)

    monkeypatch.setattr(store_module, "write_rows_atomic", full_after_first)
    result = CliRunner().invoke(app, ["parity", *FAST, "--prompts", str(files["prompts"]),
                                      "--results-dir", str(files["store"])])
    assert result.exit_code == 1, result.output
    assert "could not write the results to" in result.output and "No space left on device" in result.output
    store = store_module.ResultStore(files["store"])
    assert store.runs().empty and store.read("parity_positions").empty
    assert not list(files["store"].rglob("*.parquet"))  # the first table's file was removed again


def test_too_little_free_space_is_refused_before_any_work(files, monkeypatch):
    from collections import namedtuple

    from granite_bench import preflight
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(1 << 30, (1 << 30) - 4096, 4096))
    result = CliRunner().invoke(app, ["parity", *FAST, "--results-dir", str(files["store"])])
    assert result.exit_code == 2, result.output
    assert "MiB free, the run needs about" in result.output
    assert not files["store"].exists()


def test_sql_that_writes_is_refused_and_writes_nothing(tmp_path):
    from granite_bench.results import ResultStore
    store = tmp_path / "store"
    ResultStore(store).write("parity_summary", [{"x": 1}], make_meta())
    target = tmp_path / "leak.parquet"
    before = sorted(str(p) for p in store.rglob("*"))
    for sql in (f"COPY (SELECT 1 AS a) TO '{target}'", f"COPY (SELECT 1 AS a) TO '{store}/parity_summary/x.parquet'",
                "CREATE TABLE t AS SELECT 1", "SELECT 1; COPY (SELECT 1) TO 'x.csv'"):
        result = CliRunner().invoke(app, ["results", "--results-dir", str(store), "--sql", sql])
        assert result.exit_code == 2, result.output
        assert "--sql is read-only" in result.output
    assert not target.exists() and sorted(str(p) for p in store.rglob("*")) == before
    ok = CliRunner().invoke(app, ["results", "--results-dir", str(store), "--sql", "select count(*) n from "
                                                                                    "parity_summary"])
    assert ok.exit_code == 0 and "│ 1 │" in ok.output


def test_dashboard_of_a_missing_store_says_so(tmp_path):
    result = CliRunner().invoke(app, ["dashboard", "--results-dir", str(tmp_path / "none"),
                                      "--out", str(tmp_path / "dash")])
    assert result.exit_code == 0, result.output
    assert "warning: no results store at" in result.output


def test_dashboard_names_skipped_corrupt_files_and_unfinished_runs(tmp_path):
    from granite_bench.results import ResultStore
    store = tmp_path / "store"
    ResultStore(store).write("parity_summary", [{"x": 1}], make_meta())
    bad = store / "parity_summary" / "schema_version=1" / "broken.parquet"
    bad.write_bytes(b"PAR1 not parquet")
    result = CliRunner().invoke(app, ["dashboard", "--results-dir", str(store), "--out", str(tmp_path / "dash")])
    assert result.exit_code == 0, result.output
    assert "broken.parquet" in result.output and "left out of the dashboard" in result.output


# ----- a real kill in the middle of a two-table write -------------------------------------------------------------

KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from granite_bench.results import collect_run_metadata
    from granite_bench.results import store as store_module
    real = store_module.write_rows_atomic
    def slow(path, frame, footer=None):
        done = real(path, frame, footer)
        Path(sys.argv[2]).write_text(str(done))  # the first table is on disk: now kill me
        time.sleep(60)
        return done
    store_module.write_rows_atomic = slow
    meta = collect_run_metadata(suite="test", device="cpu", dtype="float32", config={}, seed=0)
    store_module.ResultStore(sys.argv[1]).write_run(meta, {"parity_positions": [{"x": 1}],
                                                           "parity_summary": [{"y": 2}]})
""")


def test_sigkill_between_a_runs_tables_leaves_the_run_invisible_to_every_reader(tmp_path):
    from granite_bench.results import ResultStore
    from granite_bench.results.listing import runs_frame, uncommitted_messages
    store_dir, flag = tmp_path / "store", tmp_path / "first-written"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(store_dir), str(flag)])
    deadline = time.monotonic() + 120
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists(), "the writer never wrote its first table"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert Path(flag.read_text()).exists()  # the first table's file is there ...
    store = ResultStore(store_dir)
    assert store.read("parity_positions").empty  # ... but no reader sees it
    assert store.runs().empty and runs_frame(store).empty
    assert store.files() == [] and "parity_positions" not in store.query("select 1 as one").columns
    assert len(store.uncommitted()) == 1 and "never committed" in uncommitted_messages(store)[0]


def test_safetensors_header_check_reads_only_the_header(tmp_path):
    from granite_bench.preflight import BadInput, safetensors_header
    path = tmp_path / "x.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    assert safetensors_header(path)["w"]["shape"] == [2, 2]
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(BadInput, match="truncated"):
        safetensors_header(path)
