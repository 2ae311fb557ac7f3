"""One short CUDA check for a session that has a GPU: parity (eager and compiled, bf16) against the HF fp32 CPU
reference on a real Granite shape truncated to a few layers, then a decode timing.

    python scripts/gpu_check.py                       # granite-3.1-8b shape, 4 layers, bf16, cuda
    python scripts/gpu_check.py --device cpu --model tiny-gqa --dtype float32 --decode-tokens 8   # dry run

Writes gpu_check.json (to $OUT when set, else the current folder) and prints the same numbers. The compiled run
uses one torch.compile graph per (phase, bucket), with CUDA graphs for token generation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from granite_bench.parity.check import run_parity  # noqa: E402
from granite_bench.parity.prompts import encode_prompts  # noqa: E402
from granite_bench.parity.tolerances import profile_for  # noqa: E402
from granite_bench.reference.hf_reference import load_reference  # noqa: E402
from granite_bench.runtime.runner import GraniteRunner  # noqa: E402
from granite_bench.runtime.select import build_runner  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="granite-3.1-8b")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=4, help="first N prompts of suites/parity/default.yaml")
    parser.add_argument("--num-tokens", type=int, default=16)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--skip-compiled", action="store_true")
    return parser.parse_args()


def build(args, compile: bool) -> GraniteRunner:
    return build_runner(args.model, dtype=args.dtype, device=args.device, tp_degree=args.tp, batch_size=4,
                               seq_len=160, buckets=[64, 128], compile=compile, num_layers=args.layers)


def parity(args, runner, reference, prompts) -> dict:
    started = time.perf_counter()
    outcome = run_parity(runner, reference, prompts, args.num_tokens, profile_for(args.dtype))
    worst = {}
    for summary in outcome.prompts:
        for key, value in summary.items():
            is_error = key.startswith(("worst_err_", "worst_max_", "worst_kl_")) and not key.endswith("_position")
            if is_error and isinstance(value, float):
                worst[key] = max(worst.get(key, value), value)
    graphs = getattr(runner, "graphs", None)
    return {"passed": outcome.passed, "seconds": round(time.perf_counter() - started, 1),
            "greedy_match_rate": min(s["greedy_match_rate"] for s in outcome.prompts),
            "worst": worst, "localisation": outcome.localisation,
            "compile_seconds": {f"{p}[{b}]": round(s, 1) for (p, b), s in graphs.compile_seconds.items()},
            "compile_counts": {f"{p}[{b}]": n for (p, b), n in graphs.compile_counts.items()}}


def decode_timing(args, runner, prompt_len: int = 100) -> dict:
    """Batch-1 greedy decode: per-token latency after a warm-up (the runner copies logits to the host each step,
    which synchronises the device)."""
    prompt = torch.randint(3, runner.hf_config.vocab_size, (prompt_len,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    tokens = min(args.decode_tokens, runner.neuron_config.sequence_length - prompt_len)
    runner.generate([prompt], 4)  # warm-up: compiles/captures the graphs this prompt uses
    result = runner.generate([prompt], tokens)
    steps = [ns / 1e9 for ns in result.timings["step_ns"]]
    median = statistics.median(steps)
    params = sum(p.numel() * p.element_size() for p in runner.model.parameters()) if hasattr(runner, "model") else 0
    return {"prompt_len": prompt_len, "tokens": tokens, "context_encoding_ms": round(
        result.timings["ttft_ns"] / 1e6, 2), "median_token_ms": round(median * 1e3, 3),
            "p90_token_ms": round(sorted(steps)[int(0.9 * (len(steps) - 1))] * 1e3, 3),
            "tokens_per_s": round(1 / median, 1), "weight_gb": round(params / 1e9, 3),
            "weight_gb_per_s": round(params / 1e9 / median, 1)}


def cudagraph_skips() -> dict:
    from torch._dynamo.utils import counters
    return dict(counters["inductor"].get("cudagraph_skips", {})) if "inductor" in counters else {}


def main() -> int:
    args = parse_args()
    report = {"model": args.model, "layers": args.layers, "dtype": args.dtype, "device": args.device, "tp": args.tp,
              "torch": torch.__version__, "python": platform.python_version(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps(report), flush=True)
    started = time.perf_counter()
    eager = build(args, compile=False)
    report["load_seconds"] = round(time.perf_counter() - started, 1)
    suite = yaml.safe_load((ROOT / "suites" / "parity" / "default.yaml").read_text())
    prompts = encode_prompts(suite["prompts"][:args.prompts], eager.model_dir, eager.hf_config.vocab_size)
    reference = load_reference(eager.model_dir)
    try:
        report["parity_eager"] = parity(args, eager, reference, prompts)
        print("eager parity", json.dumps(report["parity_eager"]), flush=True)
        report["decode_eager"] = decode_timing(args, eager)
        print("eager decode", json.dumps(report["decode_eager"]), flush=True)
    finally:
        eager.close()
    del eager
    if not args.skip_compiled:
        compiled = build(args, compile=True)
        try:
            report["parity_compiled"] = parity(args, compiled, reference, prompts)
            print("compiled parity", json.dumps(report["parity_compiled"]), flush=True)
            report["decode_compiled"] = decode_timing(args, compiled)
            report["cudagraph_skips"] = cudagraph_skips()
            print("compiled decode", json.dumps(report["decode_compiled"]), report["cudagraph_skips"], flush=True)
        finally:
            compiled.close()
    out = Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    passed = all(report[k]["passed"] for k in ("parity_eager", "parity_compiled") if k in report)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
