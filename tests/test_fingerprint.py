"""Cache keys cover the code that produced the entry: a changed converter or head plan gets new TP shards."""

import shutil

import torch

from granite_bench import fingerprint
from granite_bench.model.backend.checkpoint import converter_sources, shard_key


def copy_sources(tmp_path, names):
    for name in names:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fingerprint.PACKAGE_DIR / name, target)


def test_shard_key_changes_when_the_converter_or_head_plan_code_changes(tmp_path, monkeypatch):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    package = tmp_path / "pkg"
    sources = converter_sources()
    copy_sources(package, sources)
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", package)
    assert {"model/backend/checkpoint.py", "model/backend/head_sharding.py", "model/modeling_granite.py",
            "model/registry.py"} <= set(sources)
    before = shard_key(checkpoint, 2, torch.float32, True)
    assert shard_key(checkpoint, 2, torch.float32, True) == before  # stable while nothing changes
    for name in ("model/backend/checkpoint.py", "model/backend/head_sharding.py", "model/modeling_granite.py"):
        with open(package / name, "a") as f:
            f.write("\n# changed\n")
        after = shard_key(checkpoint, 2, torch.float32, True)
        assert after["code"] != before["code"], name
        before = after


def test_code_fingerprint_covers_the_versions_it_names(monkeypatch):
    plain = fingerprint.code_fingerprint("fingerprint.py")
    assert fingerprint.code_fingerprint("fingerprint.py", versions_of=("torch",)) != plain
    monkeypatch.setattr(fingerprint, "package_version", lambda: "9.9.9")
    assert fingerprint.code_fingerprint("fingerprint.py") != plain
