"""lm-eval's `LM` over the project's runner.

Tokenisation follows lm-eval's own HF model (`HFLM`) so that, on the same weights, per-request
log-likelihoods match it to float precision:
- loglikelihood: context and continuation are encoded together and split (lm-eval's `TemplateLM`); the input
  is `(context + continuation)[-(max_length + 1):][:-1]`, i.e. truncated from the left;
- loglikelihood_rolling: lm-eval's disjoint rolling windows of `max_length` tokens, the first one conditioned
  on the prefix token (bos, else eos);
- generate_until: the context truncated from the left to `max_length - max_gen_toks`, greedy decoding through the
  runner's one generation loop, stopping a row at eos or at a token whose text holds a stop sequence; the text is
  then cut at the first stop sequence (lm-eval's own gen-kwargs normalisation, stop handling and post-processing).
`max_length` is the runner's largest context bucket (capped by its KV cache length); give the reference HFLM
the same `max_length` when comparing. Requests that had to be truncated are counted per task in `self.truncated`
(a rolling text longer than max_length is split into windows, not truncated, and is not counted).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (configure_pad_token, handle_stop_sequences, normalize_gen_kwargs,
                                   postprocess_generated_text)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

DEFAULT_MAX_GEN_TOKS = 256  # HFLM's default when a task does not set max_gen_toks


class GraniteRunnerLM(TemplateLM):
    """Usable as `lm_eval.simple_evaluate(model=GraniteRunnerLM(runner, tokenizer), tasks=...)`."""

    backend = "causal"

    def __init__(self, runner, tokenizer=None, max_length: int | None = None, add_bos_token: bool | None = None):
        super().__init__()
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(runner.model_dir)
        self.runner = runner
        self.tokenizer = tokenizer
        self.add_bos_token = add_bos_token
        configure_pad_token(self.tokenizer)  # as HFLM: unk, then eos
        self._max_length = max_length or runner_max_length(runner)
        self.truncated: Counter = Counter()   # task name -> requests truncated from the left
        self._task_of_request: list[str] = []
        self._stop_ids: dict[tuple[str, ...], frozenset[int]] = {}

    # -- what lm-eval asks of a model ----------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return DEFAULT_MAX_GEN_TOKS

    @property
    def batch_size(self) -> int:
        return self.runner.neuron_config.batch_size

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len=None,
                   **kwargs) -> list[int]:
        special = {}
        if add_special_tokens is not None:
            special = {"add_special_tokens": add_special_tokens}
        elif self.add_bos_token is not None:
            special = {"add_special_tokens": self.add_bos_token}
        bos_text = self.tokenizer.decode(self.prefix_token_id)
        if add_special_tokens is None and bos_text and string.startswith(bos_text):
            special = {"add_special_tokens": False}  # the string carries its own bos
        ids = self.tokenizer.encode(string, **special)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # -- log-likelihoods -------------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._task_of_request = [task_of(req) for req in requests]
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._task_of_request = []

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: [((context, continuation) | None, context_ids, continuation_ids)] -> [(logprob, is_greedy)].

        Requests with the same model input share one row (multiple choice with one-token answers).
        """
        inputs, by_input = [], defaultdict(list)
        for i, (_, context, continuation) in enumerate(requests):
            assert context and continuation, "lm-eval never sends an empty context or continuation"
            whole = context + continuation
            if len(whole) > self.max_length + 1 and i < len(self._task_of_request):
                self.truncated[self._task_of_request[i]] += 1
            model_input = tuple(whole[-(self.max_length + 1):][:-1])
            if model_input not in by_input:
                inputs.append(model_input)
            by_input[model_input].append(i)

        results: list[tuple[float, bool] | None] = [None] * len(requests)
        inputs.sort(key=len, reverse=True)  # similar lengths share a bucket
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start:start + self.batch_size]
            logits = self.runner.context_encode([list(x) for x in chunk])  # [n, longest, V] float32
            for row, model_input in enumerate(chunk):
                logprobs = F.log_softmax(logits[row, :len(model_input)], dim=-1)  # [len, V]
                for i in by_input[model_input]:
                    (key, _, continuation) = requests[i]
                    results[i] = score_continuation(logprobs, continuation)
                    if key is not None:
                        self.cache_hook.add_partial("loglikelihood", key, results[i])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum of log-likelihoods of each whole text, over disjoint windows of max_length tokens."""
        windows, owners = [], []
        for index, req in enumerate(requests):
            (text,) = req.args
            tokens = self.tok_encode(text)
            for window in get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, 1):
                context, continuation = make_disjoint_window(window)
                windows.append((None, context, continuation))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows), strict=True):
            totals[owner] += logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation ------------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation; requests grouped by their generation settings and packed into the batch size."""
        groups = defaultdict(list)
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            groups[repr(sorted(gen_kwargs.items()))].append(i)
        results: list[str | None] = [None] * len(requests)
        for indices in groups.values():
            gen_kwargs = requests[indices[0]].args[1]
            until, max_gen_toks = self.stop_settings(gen_kwargs)
            stop_ids = self.stop_token_ids(until)
            prompts = [self.generation_prompt(requests[i], max_gen_toks) for i in indices]
            order = sorted(range(len(indices)), key=lambda j: -len(prompts[j]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                generated = self.runner.generate([prompts[j] for j in chunk], max_gen_toks, stop_ids).tokens
                for j, tokens in zip(chunk, generated, strict=True):
                    text = self.finish_text(tokens, until)
                    results[indices[j]] = text
                    self.cache_hook.add_partial("generate_until", requests[indices[j]].args, text)
        return results

    def stop_settings(self, gen_kwargs: dict) -> tuple[list[str], int]:
        """Stop strings (the task's `until` plus the eos text) and the number of tokens to generate."""
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
            raise ValueError("GraniteRunnerLM decodes greedily only: set do_sample: false / temperature: 0")
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        return handle_stop_sequences(list(kwargs.get("until") or []), eos), int(kwargs["max_gen_toks"])

    def stop_token_ids(self, until: list[str]) -> frozenset[int]:
        """Token ids after which a row's text holds a stop sequence: eos, and every token whose own text contains
        one. A stop sequence spread over several tokens is not among them; the text is still cut there."""
        key = tuple(until)
        if key not in self._stop_ids:
            pieces = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))],
                                                 skip_special_tokens=False)
            stops = [stop for stop in until if stop]
            self._stop_ids[key] = frozenset({self.eot_token_id} | {
                i for i, piece in enumerate(pieces) if any(stop in piece for stop in stops)})
        return self._stop_ids[key]

    def generation_prompt(self, request, max_gen_toks: int) -> list[int]:
        room = self.max_length - max_gen_toks
        if room <= 0:
            raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room for a prompt in max_length "
                             f"{self.max_length}: raise --seq-len")
        tokens = self.tok_encode(request.args[0])
        if len(tokens) > room:
            self.truncated[task_of(request)] += 1
        return tokens[-room:]

    def finish_text(self, tokens: list[int], until: list[str]) -> str:
        """Tokens up to the first eos, decoded without special tokens, cut at the first stop string."""
        if self.eot_token_id in tokens:
            tokens = tokens[:tokens.index(self.eot_token_id) + 1]
        return postprocess_generated_text(self.tok_decode(tokens), until, think_end_token=None)

    def get_model_info(self) -> dict:
        return {"model": str(self.runner.model_dir), "max_length": self.max_length,
                "dtype": self.runner.neuron_config.torch_dtype, "tp_degree": self.runner.neuron_config.tp_degree}


def task_of(request) -> str:
    return getattr(request, "task_name", None) or request.request_type


def score_continuation(logprobs: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
    """logprobs [L, V] of a model input whose last len(continuation) positions predict the continuation."""
    scored = logprobs[-len(continuation):]                      # [C, V]
    target = torch.tensor(continuation)
    logprob = scored.gather(1, target[:, None]).sum()
    is_greedy = bool((scored.argmax(-1) == target).all())
    return float(logprob), is_greedy


def runner_max_length(runner) -> int:
    """Longest input one context-encoding call takes: the largest bucket, within the KV cache."""
    config = runner.neuron_config
    largest = max(config.context_encoding_buckets or [config.max_context_length])
    return min(largest, config.sequence_length)
