"""
The fast decode loop: greedy decoding of one command with a static KV cache, phase by phase.

Shapes: ``L`` is the prompt's length, ``V`` the model's logits width, ``k`` the decoder's
``draft_tokens`` and ``n = 1 + k`` the tokens of one step.

- **prefill** (:meth:`StaticCacheDecoder._prefill`, eager): the prompt ``[1, L]`` in one
  forward pass; the logits of its last position ``[1, V]`` give the first token.
- **step** (:meth:`StaticCacheDecoder._step_forward`, compiled on CUDA): the last kept token
  and ``k`` draft tokens ``[1, n]`` at the positions after it; row ``i`` of its logits
  ``[n, V]`` is the model's choice after input ``i``. The drafts are prompt lookup
  (:class:`NgramIndex`): the longest recent n-gram of the sequence that occurred before
  proposes the tokens that followed it then. Compiled, its shape never changes (a missing
  draft token is padding: a wrong guess), so the step never recompiles; eager, it runs only
  the drafts there are.
- **accept** (:meth:`StaticCacheDecoder._accept`): the greedy token of every row, under the
  grammar when there is one; a draft token is kept while it equals the model's own choice,
  and the first row that differs gives one more token. The output is the plain greedy output,
  in fewer forward passes when plans copy words from the command (they do: output2 repeats
  output1's objects).
- **stop** (:class:`_Output`): at a stop token, at the token budget, or when ``stop_event``
  is set.

Each kept token's log-probability is read from the model's logits before the grammar masks
them (the plan's confidence, benchmarks/RESULTS.md "Plan confidence"): one max over the
pass's rows and one log-sum-exp over the rows kept, as tensor operations over all of them at
once. The grammar is asked whether it allows the model's own choice; only a refused row is
masked.

Two host reads per forward pass: the greedy tokens (the grammar's matcher runs on the CPU,
and the stop check and the next draft need them as Python integers), then the kept rows'
log-probabilities, whose log-sum-exp can only start once the kept rows are known (taking it
over every row first would save that wait on a GPU and cost a pass over all 1 + k rows on
the CPU). A step's input is written into one preallocated buffer and the attention mask is a
row lookup in a table made once.

Stale cache entries past the current length (rejected drafts, padding) are harmless: the mask
hides positions beyond the one being computed, and the next step overwrites them. Without
compilation (the CPU), attention reads only the slots up to the current position, rounded up to
:data:`SLOT_STEP`, not the whole cache (``max_prompt_tokens + max_new_tokens`` slots).
"""

from dataclasses import dataclass, field
import math
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

SLOT_STEP = 64  # eager attention reads the cache in steps of this many slots


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
    logprobs: List[float] = field(default_factory=list)  # each kept token's, stop included
    stats: Dict[str, float] = field(default_factory=dict)


class _Output:
    """The tokens kept so far and whether the output has ended (the stop phase)."""

    def __init__(self, budget: int, stop_ids: Sequence[int]) -> None:
        self.budget = budget
        self.stop_ids = stop_ids
        self.tokens: List[int] = []
        self.logprobs: List[float] = []
        self.finished = False  # ended by a stop token (not the budget)

    def add(self, kept: Sequence[int], logprobs: Sequence[float]) -> bool:
        """Add one pass's kept tokens; return True once the output is complete."""
        for token, logprob in zip(kept, logprobs):
            if len(self.tokens) >= self.budget:
                break  # a stop token verified past the budget does not count, as in generate()
            self.logprobs.append(logprob)
            if token in self.stop_ids:
                self.finished = True
                break
            self.tokens.append(token)
        return self.finished or len(self.tokens) >= self.budget


class StaticCacheDecoder:
    """Greedy batch-1 decoding with a static KV cache and optional prompt-lookup drafts."""

    def __init__(self, model, stop_ids: Sequence[int], pad_id: int, max_prompt_tokens: int,
                 max_new_tokens: int, draft_tokens: int = 0, max_ngram: int = 3,
                 compile_steps: bool = False) -> None:
        """
        Allocate the cache for the longest prompt and output this decoder will serve.

        ``compile_steps`` compiles the step with ``torch.compile`` (CUDA graphs on CUDA).
        """
        from transformers import StaticCache

        self.model = model
        parameter = next(model.parameters())
        self.device, dtype = parameter.device, parameter.dtype
        self.stop_ids = set(stop_ids)
        self.pad_id = pad_id
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.draft_tokens = draft_tokens
        self.max_ngram = max_ngram
        length = max_prompt_tokens + max_new_tokens + draft_tokens + 1
        self.cache = StaticCache(config=model.config, max_cache_len=length)
        self._length = length
        # Eagerly (on the CPU) attention reads only the cache slots in use, rounded up to
        # SLOT_STEP: the cache layers hold views [1, heads, visible, head_dim] of their full
        # tensors. (A compiled step keeps the full length: its shapes never change.)
        self._views = not compile_steps
        self._full: List[Tuple[torch.Tensor, torch.Tensor]] = []  # each layer's own tensors
        self._visible = length
        # The attention mask of a query at position p is row p ([length]): 0 for the keys at
        # or before p, the dtype's lowest value for every other slot, stale or empty. (Without
        # an explicit mask transformers lets a one-token query attend to every cache slot.)
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        self._mask_rows = torch.zeros(length, length, dtype=dtype, device=self.device)
        self._mask_rows.masked_fill_(~causal, torch.finfo(dtype).min)        # [length, length]
        self._positions = torch.arange(length, device=self.device)           # [length]
        # One step's input, [0] = the n tokens and [1] = their positions, written on the host
        # through a NumPy view (pinned memory and one asynchronous copy on an accelerator).
        accelerator = self.device.type != 'cpu'
        self._host_input = torch.zeros(2, 1 + draft_tokens, dtype=torch.long,
                                       pin_memory=accelerator and torch.cuda.is_available())
        self._host_view = self._host_input.numpy()
        self._step_input = (torch.zeros_like(self._host_input, device=self.device)
                            if accelerator else self._host_input)                # [2, n]
        # The prefill runs eagerly (its shape is the prompt's); the step is compiled: with
        # CUDA graphs its launch overhead is gone, and its shape [1, n] never changes.
        self.compile_error = ''  # why the compiled step was given up, if it was
        self._compiled_step = None
        if compile_steps:
            self._compiled_step = torch.compile(self._step_forward, mode='reduce-overhead',
                                                fullgraph=True, dynamic=False)

    @property
    def compiled(self) -> bool:
        """Return True while the step runs compiled; a compile error makes it eager for good."""
        return self._compiled_step is not None

    # ------------------------------------------------------------------ model passes
    def _forward(self, ids: torch.Tensor, positions: torch.Tensor,
                 last_only: bool = False) -> torch.Tensor:
        """Run ids [1, m] at positions [m]; return their logits [m, V] ([1, V]: last_only)."""
        # transformers' static cache layers write at their own counter: point it at the
        # first position, so that rejected drafts and padding get overwritten.
        for layer in getattr(self.cache, 'layers', ()):
            counter = getattr(layer, 'cumulative_length', None)
            if counter is not None:
                counter.copy_(positions[:1])
        mask = self._mask_rows.index_select(0, positions)[:, :self._visible]  # [m, visible]
        out = self.model(input_ids=ids, past_key_values=self.cache, cache_position=positions,
                         position_ids=positions.unsqueeze(0), attention_mask=mask[None, None],
                         use_cache=True, logits_to_keep=1 if last_only else 0)
        return out.logits[0]

    def _step_forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run one step, as compiled: ids [1, n] at positions [n] -> logits [n, V]."""
        return self._forward(ids, positions)

    def _fit_cache(self, end: int) -> None:
        """Let attention read the cache slots before ``end`` (rounded up), eagerly only."""
        if not self._views:
            return
        layers = [layer for layer in getattr(self.cache, 'layers', ())
                  if getattr(layer, 'keys', None) is not None]
        if not self._full:
            self._full = [(layer.keys, layer.values) for layer in layers]
        visible = min(self._length, -(-end // SLOT_STEP) * SLOT_STEP)
        if visible == self._visible or not self._full or len(layers) != len(self._full):
            return  # not allocated yet (the first prefill): the full length
        for layer, (keys, values) in zip(layers, self._full):
            layer.keys, layer.values = keys[:, :, :visible], values[:, :, :visible]
        self._visible = visible

    def _prefill(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        """Run the prompt; return the logits of its last position [1, V]."""
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)  # [1, L]
        self._fit_cache(len(prompt_ids) + 1 + self.draft_tokens)
        return self._forward(ids, self._positions[:ids.shape[1]], last_only=True)

    def _step(self, last: int, draft: Sequence[int], position: int) -> torch.Tensor:
        """Run ``[last] + draft`` (n tokens) from ``position`` on; return the logits [n, V]."""
        n = 1 + len(draft)
        self._host_view[0, 0] = last
        self._host_view[0, 1:n] = draft
        self._host_view[1, :n] = range(position, position + n)
        if self._step_input is not self._host_input:
            # asynchronous, and safe: the previous step's input was read before its tokens
            # came back to the host
            self._step_input.copy_(self._host_input, non_blocking=True)
        ids, positions = self._step_input[:1, :n], self._step_input[1, :n]  # [1, n], [n]
        if self._compiled_step is None:
            self._fit_cache(position + len(draft) + 1)
            return self._step_forward(ids, positions)
        try:
            return self._compiled_step(ids, positions)  # torch.compile'd _step_forward
        except Exception as exc:
            # A torch/transformers combination that cannot compile this step must not stop
            # the robot: decode eagerly (slower, same output) and say why.
            self.compile_error = '%s: %s' % (type(exc).__name__, str(exc).splitlines()[0][:300])
            self._compiled_step = None
            return self._step_forward(ids, positions)

    # ------------------------------------------------------------------ choosing tokens
    def _accept(self, logits: torch.Tensor, draft: Sequence[int],
                constraint=None) -> Tuple[List[int], List[float]]:
        """
        Return the tokens one pass keeps and their log-probabilities.

        ``logits`` [n, V]: row i follows input i of the pass (the last kept token, then
        ``draft``). Row i's greedy token is kept; row i + 1 counts only while that token
        equals ``draft[i]`` and is no stop token.
        """
        best, greedy = logits.max(-1)                 # [n], [n]
        tokens = greedy.tolist()  # the pass's one synchronization: the tokens, on the host
        kept: List[int] = []
        overruled = {}  # row -> (its log-sum-exp before the grammar's mask, the token kept)
        for row, token in enumerate(tokens):
            if constraint is not None and not constraint.accept_if_allowed(token):
                total = logits[row].float().logsumexp(-1)  # before the mask changes the row
                token = constraint.best_allowed(logits[row])
                overruled[row] = (total, token)
            kept.append(token)
            if token in self.stop_ids or row >= len(draft) or token != draft[row]:
                break
        # the confidence: the kept rows' log-sum-exp and the kept token's logit, before any mask
        logprobs = best[:len(kept)].float() - logits[:len(kept)].float().logsumexp(-1)  # [m]
        for row, (total, token) in overruled.items():
            logprobs[row] = logits[row, token].float() - total
        # NaN logits (a broken model) make a token impossible, not unknown
        values = [value if value == value else -math.inf for value in logprobs.tolist()]
        return kept, values

    # ------------------------------------------------------------------ the loop
    @torch.inference_mode()
    def decode(self, prompt_ids: Sequence[int], max_new_tokens: Optional[int] = None,
               constraint=None, stop_event=None) -> DecodeResult:
        """
        Greedy-decode one prompt, under ``constraint`` (optional) at every step.

        ``constraint.accept_if_allowed(token)`` advances past a row's greedy token if the
        constraint allows it (and says whether it did); if not,
        ``constraint.best_allowed(logits_row)`` masks the row in place and advances past its
        best allowed token, which it returns. The constraint sees exactly the tokens that are
        kept, in order, so drafts never advance it. When ``stop_event`` (a threading.Event)
        is set, decoding stops after the current pass.
        """
        if len(prompt_ids) > self.max_prompt_tokens:
            raise ValueError('the prompt has %d tokens; this decoder serves at most %d'
                             % (len(prompt_ids), self.max_prompt_tokens))
        budget = min(max_new_tokens or self.max_new_tokens, self.max_new_tokens)
        started = time.perf_counter()
        output = _Output(budget, self.stop_ids)
        index = NgramIndex(self.max_ngram)
        index.extend(prompt_ids)
        padding = [self.pad_id] * self.draft_tokens
        passes = drafted = accepted = 0
        logits = self._prefill(prompt_ids)                                   # [1, V]
        draft: List[int] = []
        prefill_done = None
        while True:
            kept, logprobs = self._accept(logits, draft, constraint)
            accepted += len(kept) - 1
            if prefill_done is None:
                prefill_done = time.perf_counter()
            if output.add(kept, logprobs) or (stop_event is not None and stop_event.is_set()):
                break
            index.extend(kept)
            draft = index.draft(min(self.draft_tokens, budget - len(output.tokens)))
            drafted += len(draft)
            if self.compiled:  # a fixed step shape (one graph): padding is just a wrong guess
                draft += padding[len(draft):]
            position = len(prompt_ids) + len(output.tokens) - 1  # the last kept token's
            logits = self._step(output.tokens[-1], draft, position)          # [n, V]
            passes += 1
        ended = time.perf_counter()
        return DecodeResult(output.tokens, output.finished, output.logprobs, stats={
            'prefill_ms': (prefill_done - started) * 1000.0,
            'decode_ms': (ended - prefill_done) * 1000.0,
            'decode_passes': passes, 'drafted': drafted, 'accepted': accepted})
