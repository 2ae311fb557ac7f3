"""`granite-bench parity --endpoint URL`: the goldens of a model judged against what an OpenAI-compatible endpoint
serves, through vLLM's completions API.

Per golden prompt, two requests. The prompt as token ids with `prompt_logprobs=K` (every prompt position), greedy
generation of the goldens' number of tokens (`temperature 0`, `ignore_eos`) with `logprobs=K` and
`return_tokens_as_token_ids`: the prompt positions and the generated positions up to and including the first greedy
divergence (where both sides still saw the same tokens) are judged, and the greedy tokens by the same check as `parity`
(a divergence passes only where the reference's own logit gap is within the divergence tolerance); generated positions
run the endpoint's decode path. And prompt + the reference's greedy tokens as the prompt (`prompt_logprobs=K`): every
continuation position teacher-forced, as `parity` does, through the endpoint's prefill path. Positions are judged by
`parity.topk_logprobs`. An endpoint that cannot be reached or leaves out a field this needs is an EndpointError naming
it (exit 2), and nothing is stored as a verdict."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
import torch

from ..parity.metrics import greedy_comparison, tol_key_name
from ..parity.topk_logprobs import judged_keys, position_row
from .load_command import EndpointError

TOKEN_ID_PREFIX = "token_id:"


@dataclass
class ServedPrompt:
    prompt_logprobs: list[dict[int, float]]    # positions 1..L-1: {token: logprob}
    tokens: list[int]                          # the greedy tokens
    top_logprobs: list[dict[int, float]]       # per greedy token: {token: logprob}


def token_id(name: str, where: str) -> int:
    if not name.startswith(TOKEN_ID_PREFIX):
        raise EndpointError(f"{where} names tokens as {name!r}, not 'token_id:N': the endpoint ignores "
                            f"return_tokens_as_token_ids, so its log-probabilities cannot be matched to token ids")
    return int(name[len(TOKEN_ID_PREFIX):])


def parse_choice(reply: dict, prompt_len: int) -> ServedPrompt:
    """The fields parity needs from a completions reply; EndpointError naming the first one missing."""
    try:
        choice = reply["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise EndpointError("the endpoint's reply has no choices[0]: not an OpenAI completions reply") from None
    prompt_lp = choice.get("prompt_logprobs")
    if not prompt_lp:
        raise EndpointError("the endpoint returned no choices[0].prompt_logprobs (vLLM's prompt_logprobs=K): "
                            "it cannot be checked position by position")
    if len(prompt_lp) != prompt_len:
        raise EndpointError(f"choices[0].prompt_logprobs has {len(prompt_lp)} entries for a {prompt_len}-token prompt")
    logprobs = choice.get("logprobs") or {}
    if not logprobs.get("top_logprobs") or not logprobs.get("tokens"):
        raise EndpointError("the endpoint returned no choices[0].logprobs.top_logprobs (logprobs=K): its greedy "
                            "tokens cannot be checked")
    prompt_positions = []
    for entry in prompt_lp[1:]:
        try:
            prompt_positions.append({int(t): float(v["logprob"]) for t, v in entry.items()})
        except (AttributeError, KeyError, TypeError, ValueError):
            raise EndpointError("choices[0].prompt_logprobs entries are not {token_id: {logprob, ...}}") from None
    tokens = [token_id(t, "choices[0].logprobs.tokens") for t in logprobs["tokens"]]
    top = [{token_id(t, "choices[0].logprobs.top_logprobs"): float(v) for t, v in step.items()}
           for step in logprobs["top_logprobs"]]
    return ServedPrompt(prompt_positions, tokens, top)


async def fetch_all(endpoint: str, model: str, prompts: list[list[int]], num_tokens: list[int], k: int,
                    timeout_s: float) -> list[dict]:
    async with httpx.AsyncClient(base_url=endpoint, timeout=timeout_s) as client:
        async def one(prompt, n):
            body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, "logprobs": k,
                    "prompt_logprobs": k, "return_tokens_as_token_ids": True, "ignore_eos": True}
            try:
                reply = await client.post("/v1/completions", json=body)
            except httpx.HTTPError as err:
                raise EndpointError(f"endpoint {endpoint} is unreachable ({type(err).__name__}: {err}): start the "
                                    f"server or fix --endpoint") from None
            if reply.status_code != 200:
                raise EndpointError(f"{endpoint}/v1/completions answered HTTP {reply.status_code}: "
                                    f"{' '.join(reply.text.split())[:200]}")
            try:
                return reply.json()
            except ValueError:
                raise EndpointError(f"{endpoint}/v1/completions answered {reply.headers.get('content-type')}, "
                                    f"not JSON") from None
        return await asyncio.gather(*(one(p, n) for p, n in zip(prompts, num_tokens)))


def judge_prompt(index: int, golden, served: ServedPrompt, forced: ServedPrompt, k: int, tol: dict,
                 divergence_tolerance: float):
    """(position rows, summary row) of one prompt: `served` generated freely from the prompt, `forced` given prompt +
    the reference's tokens as its prompt (every continuation position through the endpoint's prefill path)."""
    length = len(golden.prompt)
    greedy = greedy_comparison(torch.tensor([golden.tokens]), torch.tensor([served.tokens]),
                               golden.logits[length - 1:length - 1 + len(golden.tokens)][None],
                               divergence_tolerance)[0]
    judged_steps = greedy["steps"] if greedy["first_divergence"] is None else greedy["first_divergence"] + 1
    rows = []
    for position, entry in enumerate(served.prompt_logprobs):          # served position p + 1 <- reference row p
        row = position_row(golden.logits[position], entry, golden.prompt[position + 1], k, tol)
        rows.append({"prompt": index, "position": position, "phase": "context_encoding", **row})
    for step in range(judged_steps):
        position = length - 1 + step
        row = position_row(golden.logits[position], served.top_logprobs[step], served.tokens[step], k, tol)
        rows.append({"prompt": index, "position": position, "phase": "token_generation", **row})
    for position in range(length - 1, length + len(golden.tokens) - 1):   # the reference's tokens, teacher-forced
        row = position_row(golden.logits[position], forced.prompt_logprobs[position],
                           golden.tokens[position - length + 1], k, tol)
        rows.append({"prompt": index, "position": position, "phase": "teacher_forced", **row})
    failed = [r for r in rows if not r["passed"]]
    summary = {"prompt": index, "prompt_len": length, "num_tokens": len(golden.tokens), "n_positions": len(rows),
               "n_failed": len(failed), "first_failed": failed[0]["position"] if failed else None,
               "passed": not failed and greedy["divergence_acceptable"],
               "greedy_match_rate": greedy["match_rate"], "first_divergence": greedy["first_divergence"],
               "divergence_gap": greedy["divergence_gap"], "divergence_acceptable": greedy["divergence_acceptable"],
               "worst_topk_overlap": min((r["topk_overlap"] for r in rows), default=None),
               "min_ref_top1_in_served": min((r["ref_top1_in_served"] for r in rows), default=None),
               "worst_served_top1_rank": max((r["served_top1_rank"] for r in rows), default=None)}
    for name in ["logprob_err", "token_logprob_err"] + [f"err_{tol_key_name(key)}" for key in tol]:
        worst = max(rows, key=lambda r: r[name]) if rows else None
        summary[f"worst_{name}"] = worst[name] if worst else None
        summary[f"worst_{name}_position"] = worst["position"] if worst else None
    return rows, summary


@dataclass
class EndpointOutcome:
    positions: list[dict]
    prompts: list[dict]
    passed: bool
    judged: dict          # {k: (atol, rtol)} actually judged


def probe_endpoint(endpoint: str, model: str, prompt: list[int], k: int, timeout_s: float = 60.0) -> None:
    """One short request with every field parity needs, before any reference work: EndpointError naming what the
    endpoint refuses or leaves out."""
    probe = prompt[:2] if len(prompt) >= 2 else prompt * 2
    (reply,) = asyncio.run(fetch_all(endpoint, model, [probe], [1], k, timeout_s))
    parse_choice(reply, len(probe))


def check_endpoint(endpoint: str, model: str, goldens: list, profile, k: int, timeout_s: float = 300.0
                   ) -> EndpointOutcome:
    free = [g.prompt for g in goldens]
    forced = [g.prompt + g.tokens for g in goldens]
    new_tokens = [len(g.tokens) for g in goldens] + [1] * len(forced)
    replies = asyncio.run(fetch_all(endpoint, model, free + forced, new_tokens, k, timeout_s))
    tol = judged_keys(profile.tol_map, k)
    positions, prompts = [], []
    for index, golden in enumerate(goldens):
        served = parse_choice(replies[index], len(free[index]))
        teacher_forced = parse_choice(replies[len(goldens) + index], len(forced[index]))
        rows, summary = judge_prompt(index, golden, served, teacher_forced, k, tol, profile.divergence_tolerance)
        positions += rows
        prompts.append(summary)
    return EndpointOutcome(positions, prompts, all(p["passed"] for p in prompts), tol)
