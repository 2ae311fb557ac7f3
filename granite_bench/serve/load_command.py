"""`granite-bench load`: a sweep of concurrency levels or request rates against an endpoint, one row per level in
the `load_points` table; stops at saturation; Ctrl-C keeps the levels already finished."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx

from ..parity.prompts import BYTE_OFFSET
from ..resources import suite_path
from . import load

CORPUS = suite_path("serve/corpus.txt")


class EndpointError(RuntimeError):
    """The endpoint cannot be used (unreachable, or it does not answer what is needed): one line, exit 2."""


class LoadInterrupted(Exception):
    def __init__(self, kept: list[dict], paths: list[Path]):
        super().__init__(f"{len(kept)} finished level(s) kept")
        self.kept, self.paths = kept, paths


@dataclass
class LoadArgs:
    endpoint: str
    api: str = "completions"
    concurrency: list[int] | None = None
    rates: list[float] | None = None
    requests: int | None = None
    duration: float | None = None
    input_len: int = 32
    output_len: int = 16
    slo: dict = field(default_factory=dict)        # {"ttft": ms, "tpot": ms, "itl": ms, "e2e": ms}
    burstiness: float = 1.0
    seed: int = 0
    model: str | None = None                       # a local preset/checkpoint: vocabulary and tokenizer
    vocab_size: int | None = None                  # from --model's config (token-id prompts)
    served_model_name: str | None = None
    results_dir: Path | None = None
    timeout_s: float = 120.0
    stop_at_saturation: bool = True
    ignore_eos: bool = True

    @property
    def mode(self) -> str:
        return "rate" if self.rates else "concurrency"

    @property
    def levels(self) -> list:
        return list(self.rates or self.concurrency or [1])

    def requests_at(self, level) -> int | None:
        """Requests sent at a level: --requests, else none with --duration, else 4 x the concurrency (at least 16),
        or 32 at a rate."""
        if self.requests is not None or self.duration is not None:
            return self.requests
        return max(16, 4 * int(level)) if self.mode == "concurrency" else 32


def served_model(endpoint: str, served_model_name: str | None) -> str:
    """The model name to send: --served-model-name, else the first model /v1/models lists (EndpointError when the
    endpoint cannot be reached or lists none)."""
    try:
        reply = httpx.get(endpoint.rstrip("/") + "/v1/models", timeout=10)
    except httpx.HTTPError as err:
        raise EndpointError(f"endpoint {endpoint} is unreachable ({type(err).__name__}: {err}): start the "
                            f"server or fix --endpoint") from None
    if served_model_name:
        return served_model_name
    try:
        return reply.json()["data"][0]["id"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise EndpointError(f"{endpoint}/v1/models answered HTTP {reply.status_code} without a model list: "
                            f"pass --served-model-name") from None


def prompt_maker(args: LoadArgs) -> Callable[[int], list[int] | str]:
    """Request index -> its prompt: `input_len` random token ids for completions when --model gives the vocabulary,
    else `input_len` words of the shipped corpus from a random place (different per request: no shared prefix)."""
    if args.api == "completions" and args.vocab_size:
        def ids(index: int) -> list[int]:
            draw = random.Random(f"{args.seed}:{index}")
            return [draw.randrange(BYTE_OFFSET, args.vocab_size) for _ in range(args.input_len)]
        return ids
    words = CORPUS.read_text().split()

    def text(index: int) -> str:
        start = random.Random(f"{args.seed}:{index}").randrange(len(words))
        return " ".join(words[(start + i) % len(words)] for i in range(args.input_len))
    return text


def request_body(args: LoadArgs, model: str, prompt) -> tuple[str, dict]:
    common = {"model": model, "max_tokens": args.output_len, "temperature": 0, "stream": True,
              "stream_options": {"include_usage": True}}
    if args.ignore_eos:
        common.update(ignore_eos=True, min_tokens=args.output_len)
    if args.api == "chat":
        return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": prompt}]}
    return "/v1/completions", {**common, "prompt": prompt}


async def run_level(args: LoadArgs, model: str, level, make_prompt, count_tokens, on_done):
    import aiohttp
    timeout = aiohttp.ClientTimeout(total=args.timeout_s)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        async def send(index: int):
            path, body = request_body(args, model, make_prompt(index))
            return await load.stream_request(session, args.endpoint + path, body, args.api, count_tokens)
        if args.mode == "rate":
            return await load.open_loop(send, level, args.requests_at(level), args.duration, args.burstiness,
                                        args.seed, on_done)
        return await load.closed_loop(send, level, args.requests_at(level), args.duration, on_done)


def level_row(args: LoadArgs, model: str, level, results, seconds: float) -> dict:
    row = {"endpoint": args.endpoint, "api": args.api, "served_model": model, "mode": args.mode,
           "concurrency": int(level) if args.mode == "concurrency" else None,
           "rate": float(level) if args.mode == "rate" else None, "input_len": args.input_len,
           "output_len": args.output_len, "burstiness": args.burstiness if args.mode == "rate" else None}
    row.update(load.level_summary(results, seconds, args.slo))
    return row


def token_counter(model: str | None) -> Callable[[str], int] | None:
    """Tokens in a text by the tokenizer of --model's checkpoint folder (None without one: chunks are counted)."""
    from .. import preflight
    from ..parity.prompts import load_tokenizer
    if model is None:
        return None
    _, folder = preflight.model_config(model)
    tokenizer = load_tokenizer(folder) if folder is not None else None
    return None if tokenizer is None else (lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]))


def run_load(args: LoadArgs, progress_bar, say) -> tuple[list[dict], list[Path]]:
    """Every level in order (until saturation); the rows, and the stored files when results_dir is set."""
    model = served_model(args.endpoint, args.served_model_name)
    count_tokens = token_counter(args.model)
    make_prompt = prompt_maker(args)
    rows: list[dict] = []
    try:
        with progress_bar() as progress:
            for level in args.levels:
                name = f"{args.mode} {level:g}" if isinstance(level, float) else f"{args.mode} {level}"
                task = progress.add_task(name, total=args.requests_at(level))
                results, seconds = asyncio.run(run_level(args, model, level, make_prompt, count_tokens,
                                                         lambda r: progress.advance(task)))
                row = level_row(args, model, level, results, seconds)
                row["saturated"] = load.saturated(rows, row)
                rows.append(row)
                if row["requests_ok"] == 0:
                    say(f"{name}: every request failed ({row['first_error']}); the sweep stops")
                    break
                if row["saturated"] and args.stop_at_saturation:
                    say(f"saturated at {name}: output throughput {row['output_throughput']:.1f} tok/s grew less than "
                        f"{load.SATURATION_GROWTH - 1:.0%} over the best level before it while the median E2E "
                        f"latency grew {row['e2e_ms_p50'] / rows[-2]['e2e_ms_p50']:.1f}x; the sweep stops here")
                    break
    except KeyboardInterrupt:
        raise LoadInterrupted(rows, store(args, model, rows) if rows and args.results_dir else []) from None
    return rows, store(args, model, rows) if rows and args.results_dir else []


def store(args: LoadArgs, model: str, rows: list[dict]) -> list[Path]:
    from ..results import ResultStore, collect_run_metadata
    from ..results.metadata import require_directions
    config = {"endpoint": args.endpoint, "served_model": model, "api": args.api, "mode": args.mode,
              "levels": [str(v) for v in args.levels], "requests": args.requests, "duration": args.duration,
              "input_len": args.input_len, "output_len": args.output_len, "slo": args.slo,
              "burstiness": args.burstiness, "model": args.model, "ignore_eos": args.ignore_eos}
    meta = collect_run_metadata(suite="load", device="endpoint", dtype="served", config=config, seed=args.seed)
    return ResultStore(args.results_dir).write_run(meta, {"load_points": require_directions("load_points", rows)})


def render(console, rows: list[dict], slo: dict) -> None:
    from rich.table import Table
    table = Table(title="load sweep", title_justify="left")
    columns = ["level", "ok", "failed", "req/s", "out tok/s", "TTFT p50/p99 ms", "ITL p50/p99 ms", "TPOT p50 ms",
               "E2E p50/p99 ms"] + (["goodput req/s"] if slo else [])
    for column in columns:
        table.add_column(column, justify="right")

    def ms(a, b=None):
        return "-" if a is None else (f"{a:.1f}" if b is None else f"{a:.1f} / {b:.1f}")
    for r in rows:
        level = str(r["concurrency"]) if r["mode"] == "concurrency" else f"{r['rate']:g}/s"
        cells = [level + (" (saturated)" if r["saturated"] else ""), str(r["requests_ok"]), str(r["requests_failed"]),
                 ms(r["request_throughput"]), ms(r["output_throughput"]), ms(r["ttft_ms_p50"], r["ttft_ms_p99"]),
                 ms(r["itl_ms_p50"], r["itl_ms_p99"]), ms(r["tpot_ms_p50"]), ms(r["e2e_ms_p50"], r["e2e_ms_p99"])]
        table.add_row(*cells + ([ms(r.get("goodput"))] if slo else []))
    console.print(table)
    failures = [r for r in rows if r["requests_failed"]]
    for r in failures:
        console.print(f"{r['requests_failed']} failed at {r['mode']} {r['concurrency'] or r['rate']}: "
                      f"{r['first_error']}", markup=False)

