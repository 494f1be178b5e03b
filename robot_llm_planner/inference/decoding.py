"""
The fast decode loop: greedy decoding of one command with a static KV cache.

One prefill (the prompt right-padded to a bucket length, so typical commands reuse a few
shapes), then one forward pass per step. With ``draft_tokens`` > 0 each step is a
prompt-lookup speculative step: the longest recent n-gram of the sequence that occurred
before proposes the tokens that followed it then, and one forward pass over
``[last token] + draft`` verifies them; the model's own greedy choice decides every token,
so the output is the plain greedy output, in fewer forward passes when plans copy words
from the command (they do: output2 repeats output1's objects).

Each kept token's probability is read from the model's logits before the grammar masks them;
the lowest one is the answer's ``confidence`` (a cheap, well-separating signal that a plan
may be wrong: benchmarks/RESULTS.md, "Plan confidence").

Stale cache entries past the current length (padding, rejected drafts) are harmless: the
causal mask hides positions beyond the one being computed and the next step overwrites them.

On CUDA the per-token step is compiled (CUDA graphs through ``torch.compile``); its shape is
fixed (``[1, 1]``, or ``[1, 1 + draft_tokens]`` with drafts), so nothing recompiles after
warm-up.
"""

from dataclasses import dataclass, field
import math
import time
from typing import Dict, List, Optional, Sequence

import torch

DEFAULT_BUCKETS = (32, 64, 96, 128, 192, 256, 384, 512)


class NgramIndex:
    """Where each recent n-gram of a token sequence last occurred, for prompt lookup."""

    def __init__(self, max_ngram: int = 3) -> None:
        """Index n-grams of 1..``max_ngram`` tokens."""
        self.max_ngram = max_ngram
        self.tokens: List[int] = []
        # n-gram -> index of the token that followed its first occurrence (the first one
        # leaves the longest continuation to copy, like transformers' prompt lookup)
        self._next: Dict[tuple, int] = {}

    def extend(self, tokens: Sequence[int]) -> None:
        """Append tokens, recording the n-grams they complete as followed."""
        for token in tokens:
            end = len(self.tokens)
            for n in range(1, self.max_ngram + 1):
                if end >= n:
                    self._next.setdefault(tuple(self.tokens[end - n:end]), end)
            self.tokens.append(token)

    def draft(self, count: int) -> List[int]:
        """Return up to ``count`` tokens that followed an earlier match of the longest suffix."""
        for n in range(min(self.max_ngram, len(self.tokens)), 0, -1):
            start = self._next.get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start:start + count]
        return []


@dataclass
class DecodeResult:
    """Generated token ids (without the stop token) and how they were produced."""

    tokens: List[int]
    finished: bool
    stats: Dict[str, float] = field(default_factory=dict)
    confidence: Optional[float] = None  # the lowest probability of a kept token (stop included)
    logprobs: List[float] = field(default_factory=list)  # each kept token's, stop included


class StaticCacheDecoder:
    """Greedy batch-1 decoding with a static KV cache and optional prompt-lookup drafts."""

    def __init__(self, model, stop_ids: Sequence[int], pad_id: int, max_prompt_tokens: int,
                 max_new_tokens: int, draft_tokens: int = 0, max_ngram: int = 3,
                 buckets: Sequence[int] = DEFAULT_BUCKETS, compile_steps: bool = False):
        """Allocate the cache for the longest prompt and answer this decoder will serve."""
        from transformers import StaticCache

        self.model = model
        self.device = next(model.parameters()).device
        self.stop_ids = set(stop_ids)
        self.pad_id = pad_id
        self.max_new_tokens = max_new_tokens
        self.draft_tokens = draft_tokens
        self.max_ngram = max_ngram
        self.buckets = sorted(b for b in buckets if b < max_prompt_tokens) + [max_prompt_tokens]
        self.max_prompt_tokens = max_prompt_tokens
        cache_len = max_prompt_tokens + max_new_tokens + draft_tokens + 1
        self._key_positions = torch.arange(cache_len, device=self.device)
        self._dtype = next(model.parameters()).dtype
        self.cache = StaticCache(config=model.config, max_cache_len=cache_len)
        # Prefill runs eagerly (one pass per command, padded to a bucket so only a few shapes
        # occur); the per-token steps are compiled: with CUDA graphs their launch overhead is
        # gone, and their shapes ([1, 1] or [1, 1 + draft_tokens]) never change.
        self._step = self._forward_eager
        self.compile_error = ''  # why the compiled step was given up, if it was
        if compile_steps:
            self._step = torch.compile(self._forward_eager, mode='reduce-overhead',
                                       fullgraph=True, dynamic=False)

    def _run_step(self, ids: torch.Tensor, positions: torch.Tensor,
                  position: int) -> torch.Tensor:
        try:
            return self._step(ids, positions)
        except Exception as exc:
            if self._step == self._forward_eager:
                raise
            # A torch/transformers combination that cannot compile this step must not stop
            # the robot: decode eagerly (slower, same output) and say why.
            self.compile_error = '%s: %s' % (type(exc).__name__, str(exc).splitlines()[0][:300])
            self._step = self._forward_eager
            self._rewind(position)
            return self._step(ids, positions)

    def _rewind(self, position: int) -> None:
        # transformers 5 static cache layers append at their own write counter; point it at
        # ``position`` so padding and rejected drafts get overwritten.
        for layer in getattr(self.cache, 'layers', ()):
            counter = getattr(layer, 'cumulative_length', None)
            if counter is not None:
                counter.fill_(position)

    def _forward_eager(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # An explicit mask over the whole static cache: each query sees the keys at or before
        # its position and nothing else. (Without one, transformers lets a single-token query
        # attend to every cache slot, stale and empty ones included.)
        visible = self._key_positions.unsqueeze(0) <= positions.unsqueeze(1)
        mask = torch.zeros(visible.shape, dtype=self._dtype, device=self.device)
        mask = mask.masked_fill(~visible, torch.finfo(self._dtype).min)
        out = self.model(input_ids=ids, past_key_values=self.cache, cache_position=positions,
                         position_ids=positions.unsqueeze(0), attention_mask=mask[None, None],
                         use_cache=True)
        return out.logits[0]

    def _bucket(self, length: int) -> int:
        for bucket in self.buckets:
            if length <= bucket:
                return bucket
        raise ValueError('the prompt has %d tokens; this decoder serves at most %d'
                         % (length, self.max_prompt_tokens))

    @torch.inference_mode()
    def decode(self, prompt_ids: Sequence[int], max_new_tokens: Optional[int] = None,
               constraint=None, stop_event=None) -> DecodeResult:
        """
        Greedy-decode one prompt; ``constraint`` (optional) masks each step's logits.

        ``constraint`` has ``mask(logits) -> logits`` and ``accept(token)``; it sees exactly
        the tokens that are kept, in order, so drafts never advance it. When ``stop_event``
        (a threading.Event) is set, decoding stops after the current step.
        """
        max_new = min(max_new_tokens or self.max_new_tokens, self.max_new_tokens)
        length = len(prompt_ids)
        bucket = self._bucket(length)
        started = time.perf_counter()
        self._rewind(0)  # no need to clear: the mask hides every slot not yet rewritten
        ids = torch.full((1, bucket), self.pad_id, dtype=torch.long, device=self.device)
        ids[0, :length] = torch.tensor(list(prompt_ids), dtype=torch.long)
        logits = self._forward_eager(ids, torch.arange(bucket, device=self.device))
        logits = logits[length - 1:length]
        index = NgramIndex(self.max_ngram)
        index.extend(prompt_ids)
        out: List[int] = []
        draft: List[int] = []  # the proposals checked by the rows of ``logits`` after the first
        passes = drafted = accepted = 0
        prefill_done = None
        finished = False
        scores = []  # each kept token's log-probability, left on the device until the end
        while True:
            kept, logprobs = [], []
            for row_index in range(logits.shape[0]):
                row = logits[row_index]
                total = torch.logsumexp(row.float(), -1)  # before the grammar masks ``row``
                if constraint is not None:
                    row = constraint.mask(row)
                token = int(torch.argmax(row))
                if constraint is not None:
                    constraint.accept(token)
                kept.append(token)
                # an allowed logit is unmasked; NaN logits (a broken model) count as impossible
                logprobs.append(torch.nan_to_num(row[token].float() - total, nan=-math.inf))
                if token in self.stop_ids or row_index >= len(draft) or token != draft[row_index]:
                    break
                accepted += 1
            if prefill_done is None:
                prefill_done = time.perf_counter()
            for token, logprob in zip(kept, logprobs):
                if len(out) >= max_new:
                    break  # a stop token verified past the budget does not count, as in generate()
                scores.append(logprob)
                if token in self.stop_ids:
                    finished = True
                    break
                out.append(token)
            if finished or len(out) >= max_new or (stop_event is not None and stop_event.is_set()):
                break
            index.extend(kept)
            draft = []
            if self.draft_tokens:
                draft = index.draft(min(self.draft_tokens, max_new - len(out)))
                drafted += len(draft)
                # A fixed verify shape (one compiled graph); padding is just a wrong guess.
                draft += [self.pad_id] * (self.draft_tokens - len(draft))
            position = length + len(out) - 1
            step = torch.tensor([[out[-1]] + draft], dtype=torch.long, device=self.device)
            positions = torch.arange(position, position + step.shape[1], device=self.device)
            self._rewind(position)
            logits = self._run_step(step, positions, position)
            passes += 1
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        ended = time.perf_counter()
        logprobs = torch.stack(scores).tolist() if scores else []
        confidence = math.exp(min(logprobs)) if logprobs else None
        return DecodeResult(out, finished, confidence=confidence, logprobs=logprobs, stats={
            'prefill_ms': (prefill_done - started) * 1000.0,
            'decode_ms': (ended - prefill_done) * 1000.0,
            'decode_passes': passes, 'drafted': drafted, 'accepted': accepted,
            'prompt_bucket': bucket})
