"""Shared fixtures: a private checkpoint cache for the whole session, and the tiny-gqa checkpoint built once."""

import os
from pathlib import Path

import pytest

# Inductor compiles the tests' tiny graphs in-process: a pool of compile workers costs more to start than it saves
# (set before torch is imported, so TP worker ranks inherit it too).
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def granite_cache(tmp_path_factory) -> Path:
    """GRANITE_BENCH_CACHE points at a session temp folder, so no test reads or writes ~/.cache."""
    cache = tmp_path_factory.mktemp("granite-bench-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRANITE_BENCH_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread():
    """One intra-op thread: the tiny test shapes gain nothing from more, and on a shared 2-core machine
    oversubscribed threads make them up to 100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(granite_cache) -> Path:
    """The tiny-gqa preset's random-weight checkpoint directory (created on first use, then reused)."""
    from granite_bench.reference.weights import resolve_model_dir

    return resolve_model_dir("tiny-gqa")
