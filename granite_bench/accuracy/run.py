"""`run_eval`: the same lm-eval tasks through the implementation (runner + adapter) and through the HF reference
(lm-eval's own HFLM on the same checkpoint), compared sample by sample. Returns frames; storing them is the
caller's job (tables "eval_samples" and "eval_summary")."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from . import compare
from .tasks import DEFAULT_TASKS, TaskError, load_tasks, task_manager

BOOTSTRAP_ITERS = 1000  # stderr of perplexity-type metrics; accuracy stderr is analytic


@dataclass
class EvalOutcome:
    samples: pd.DataFrame                 # one row per request: impl vs ref log-likelihood / text
    summary: pd.DataFrame                 # one row per task: both accuracies, agreement, |Δ|, verdict
    skipped: list[str] = field(default_factory=list)   # one line per task that could not be loaded
    settings: dict = field(default_factory=dict)       # model, dtype, device, tp, limit, max_length, ...
    impl_results: dict = field(default_factory=dict)   # lm-eval aggregate results per task
    ref_results: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(len(self.summary)) and bool(self.summary["passed"].all())

    def worst_samples(self, n: int = 5) -> pd.DataFrame:
        return compare.worst_samples(self.samples, n)


def evaluate(lm, names: list[str], limit: int | float | None, num_fewshot: int | None) -> dict:
    """One lm-eval run over freshly loaded tasks (tasks keep their requests, so each run loads its own)."""
    import lm_eval

    selection = load_tasks(names)
    return lm_eval.simple_evaluate(model=lm, tasks=selection.tasks, task_manager=task_manager(), limit=limit,
                                   num_fewshot=num_fewshot, log_samples=True, bootstrap_iters=BOOTSTRAP_ITERS)


def reference_lm(model_dir, tokenizer, max_length: int, batch_size: int):
    """lm-eval's own HF model on the HF Transformers golden (fp32, CPU), with the implementation's max_length."""
    from lm_eval.models.huggingface import HFLM

    from ..reference.hf_reference import load_reference

    return HFLM(pretrained=load_reference(model_dir), tokenizer=tokenizer, max_length=max_length,
                batch_size=batch_size, device="cpu", dtype="float32")


def load_tokenizer(model_dir):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError) as err:
        raise TaskError(f"{model_dir} has no usable tokenizer ({str(err).splitlines()[0][:80]}): "
                        f"eval needs a checkpoint with one, e.g. --model canary") from None


def run_eval(model: str = "canary", tasks: list[str] | None = None, dtype: str = "float32", device: str = "cpu",
             tp_degree: int = 1, limit: int | float | None = None, num_fewshot: int | None = None,
             batch_size: int = 8, seq_len: int = 256, thresholds: dict | None = None,
             quiet: bool = True) -> EvalOutcome:
    """Run `tasks` through the implementation and the reference; per-sample and per-task comparison."""
    from ..runtime.select import build_runner
    from .lm_adapter import GraniteRunnerLM

    if quiet:
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    names = list(tasks or DEFAULT_TASKS)
    probe = load_tasks(names)
    if not probe.tasks:
        raise TaskError("no task could be loaded:\n" + "\n".join(probe.skipped))
    names = probe.names
    output_types = {t.config.task: t.config.output_type for t in probe.tasks}
    thresholds = thresholds or compare.load_thresholds(dtype)

    runner = build_runner(model, dtype=dtype, device=device, tp_degree=tp_degree, batch_size=batch_size,
                                 seq_len=seq_len)
    try:
        tokenizer = load_tokenizer(runner.model_dir)
        impl_lm = GraniteRunnerLM(runner, tokenizer)
        impl_run = evaluate(impl_lm, names, limit, num_fewshot)
        model_dir, max_length = runner.model_dir, impl_lm.max_length
    finally:
        runner.close()
    ref_run = evaluate(reference_lm(model_dir, tokenizer, max_length, batch_size), names, limit, num_fewshot)

    samples, summary = compare.compare_runs(impl_run, ref_run, output_types, thresholds, dtype,
                                            dict(impl_lm.truncated))
    settings = {"model": model, "model_dir": str(model_dir), "tasks": names, "dtype": dtype, "device": device,
                "tp_degree": tp_degree, "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
                "seq_len": seq_len, "max_length": max_length, "truncated": dict(impl_lm.truncated)}
    return EvalOutcome(samples, summary, probe.skipped, settings, impl_run["results"], ref_run["results"])
