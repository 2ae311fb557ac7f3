"""`granite-bench serve`: the runner's greedy tokens and log-probabilities behind vLLM's completions shapes, over a
real uvicorn server on a loopback port."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch

PROMPTS = [[5, 6, 7, 8, 9], [100, 200, 300], [40] * 11, [7, 3000, 12, 99, 4000, 1, 17]]


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60)


def streamed_events(url: str, body: dict) -> list:
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def reference_generation(runner, prompt: list[int], n: int):
    result = runner.generate([prompt], n)
    return result.tokens[0], torch.log_softmax(result.logits[0], -1)      # [n], [n, V]


def test_greedy_tokens_and_logprobs_are_the_runners_own(served):
    url, _, runner = served
    body = {"model": "tiny-gqa", "prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0, "logprobs": 5,
            "return_tokens_as_token_ids": True}
    reply = post(url, "/v1/completions", body).json()
    choice = reply["choices"][0]
    tokens, logprobs = reference_generation(runner, PROMPTS[0], 6)
    assert choice["logprobs"]["tokens"] == [f"token_id:{t}" for t in tokens]
    assert choice["finish_reason"] == "length"
    assert reply["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    for step, (token, top) in enumerate(zip(tokens, choice["logprobs"]["top_logprobs"])):
        assert len(top) == 5
        assert choice["logprobs"]["token_logprobs"][step] == pytest.approx(float(logprobs[step, token]), abs=1e-5)
        for name, value in top.items():
            assert value == pytest.approx(float(logprobs[step, int(name.split(":")[1])]), abs=1e-5)
        assert max(top, key=top.get) == f"token_id:{token}"   # greedy: the chosen token is the most likely


def test_prompt_logprobs_hold_none_then_each_prompt_token_with_its_rank_and_the_top_k(served):
    url, _, runner = served
    prompt = PROMPTS[3]
    choice = post(url, "/v1/completions", {"prompt": prompt, "max_tokens": 1, "prompt_logprobs": 3})\
        .json()["choices"][0]
    entries = choice["prompt_logprobs"]
    assert len(entries) == len(prompt) and entries[0] is None
    full = torch.log_softmax(runner.context_encode([prompt])[0], -1)                 # [L, V]
    for position in range(1, len(prompt)):
        entry = entries[position]
        row = full[position - 1]
        token = prompt[position]
        assert entry[str(token)]["logprob"] == pytest.approx(float(row[token]), abs=1e-5)
        assert entry[str(token)]["rank"] == int((row > row[token]).sum()) + 1
        top3 = row.topk(3).indices.tolist()
        assert [entry[str(t)]["rank"] for t in top3] == [1, 2, 3]
        assert set(map(str, top3)) <= set(entry)


def test_streaming_sends_one_event_per_token_then_usage_and_the_same_tokens_as_one_reply(served):
    url, _, _ = served
    body = {"prompt": PROMPTS[1], "max_tokens": 5, "logprobs": 1, "return_tokens_as_token_ids": True,
            "stream_options": {"include_usage": True}}
    events = streamed_events(url, body)
    assert len(events) == 6 and events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 5
    streamed = [e["choices"][0]["logprobs"]["tokens"][0] for e in events[:-1]]
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]] == [None] * 4 + ["length"]
    whole = post(url, "/v1/completions", body).json()["choices"][0]["logprobs"]["tokens"]
    assert streamed == whole


def test_concurrent_requests_share_a_batch_and_get_what_they_get_alone(served):
    url, app, runner = served
    calls_before = runner.graphs.calls.copy()

    async def all_at_once():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            replies = await asyncio.gather(*[client.post("/v1/completions", json={
                "prompt": p, "max_tokens": 4, "logprobs": 0, "return_tokens_as_token_ids": True}) for p in PROMPTS])
        return [r.json()["choices"][0]["logprobs"]["tokens"] for r in replies]

    together = asyncio.run(all_at_once())
    context_calls = sum(n for (phase, _), n in (runner.graphs.calls - calls_before).items()
                        if phase == "context_encoding")
    assert context_calls <= 2, "four requests sent at once were not batched"
    for prompt, tokens in zip(PROMPTS, together):
        assert tokens == [f"token_id:{t}" for t in reference_generation(runner, prompt, 4)[0]]


def test_text_prompts_and_chat_are_encoded_and_answered(served):
    url, _, _ = served
    text = post(url, "/v1/completions", {"prompt": "Hello", "max_tokens": 2}).json()
    assert text["usage"]["prompt_tokens"] == 5 and text["choices"][0]["text"]  # byte-level ids: one per byte
    chat = post(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                                              "logprobs": True, "top_logprobs": 2}).json()
    assert chat["object"] == "chat.completion" and chat["usage"]["completion_tokens"] == 3
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert [len(c["top_logprobs"]) for c in chat["choices"][0]["logprobs"]["content"]] == [2, 2, 2]


def test_models_and_health_answer(served):
    url, _, _ = served
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    models = httpx.get(url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["tiny-gqa"] and models["data"][0]["max_model_len"] == 128


@pytest.mark.parametrize("body, says", [
    ({"prompt": [5], "temperature": 0.7}, "temperature 0"),
    ({"prompt": [5] * 65}, "largest context bucket"),
    ({"prompt": [5] * 60, "max_tokens": 100}, "sequence length"),
    ({"prompt": [5], "logprobs": 21}, "logprobs must lie in [0, 20]"),
    ({"prompt": [5], "model": "granite-8b"}, "is not served here"),
    ({"prompt": [99999]}, "prompt token ids"),
    ({"max_tokens": 3}, "prompt"),
])
def test_requests_the_server_cannot_serve_get_400_with_a_reason(served, body, says):
    url, _, _ = served
    reply = post(url, "/v1/completions", body)
    assert reply.status_code == 400
    assert reply.json()["object"] == "error" and says in reply.json()["message"]
