"""
The local backend: a Qwen model on this machine (transformers + PEFT).

Loads a base model directory (or a fully fine-tuned / merged one), applies LoRA adapter(s)
and merges them at load (as LLaMA-Factory does for inference), then decodes greedily unless
told to sample. Several commands are generated as one left-padded batch with
``generate()``; a single greedy command takes the fast path in
:mod:`~robot_llm_planner.inference.decoding` (static KV cache, prompt-lookup drafts, the step
compiled on CUDA) unless ``generation.fast_path`` is off. docs/decoding.md says which path
runs when, and what each costs. Loading goes through :mod:`.model_files`, one function per
phase.
"""

import codecs
import logging
import math
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

from robot_llm_planner.core.backend import (Backend, EngineError, Generation, GenerationCancelled,
                                            GenerationConfig, ModelLoadError)
from robot_llm_planner.core.byte_level import token_bytes
from robot_llm_planner.core.confidence import character_spans
from robot_llm_planner.core.prompt import IM_END, PromptBuilder, stop_token_ids
from robot_llm_planner.core.settings import FAST_PATHS, split_adapters
from robot_llm_planner.inference.model_files import (check_files, decode_by_settings_alone,
                                                     load_model, load_tokenizer, resolve_device,
                                                     resolve_dtype)
import torch
from transformers import LogitsProcessor, StoppingCriteria

WARMUP_COMMAND = '帮我拿一瓶水。'


class TransformersBackend(Backend):
    """Serve a (LoRA-merged) causal LM with transformers on CPU or CUDA."""

    name = 'transformers'

    def __init__(self, model_path: str, adapter_path: str = '', device: str = 'auto',
                 dtype: str = 'auto', quantization: str = 'none', fast_path: str = 'auto',
                 draft_tokens: int = 0, threads: int = 0,
                 max_prompt_tokens: int = 512, max_new_tokens: int = 128,
                 grammar=None) -> None:
        """
        Remember the settings; :meth:`load` does the work.

        ``grammar`` is an optional :class:`~robot_llm_planner.inference.grammar.PlanGrammar`
        compiled against this model's tokenizer at load and enforced on every generation.
        """
        self.model_path = model_path
        self.adapters = split_adapters(adapter_path)
        self.device_setting = device
        self.dtype_setting = dtype
        self.quantization = quantization
        self.threads = threads
        self.fast_path_setting = fast_path
        self.draft_tokens = draft_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.grammar = grammar
        self.model = None
        self.tokenizer = None
        self.device = None
        self.decoder = None
        self.stop_ids: List[int] = []
        self._special_ids: set = set()
        self.load_seconds = 0.0
        self._cancelled = threading.Event()

    # ------------------------------------------------------------------ loading
    def describe(self) -> Dict[str, str]:
        """Return the backend, base model and adapter(s) served."""
        described = {'backend': self.name, 'base': self.model_path,
                     'adapter': ','.join(self.adapters)}
        if self.quantization != 'none':
            described['quantization'] = self.quantization
        return described

    def load(self) -> None:
        """Load tokenizer, model and adapters, merge, move to the device and warm up."""
        started = time.perf_counter()
        check_files(self.model_path, self.adapters)
        device = resolve_device(self.device_setting)
        dtype = resolve_dtype(self.dtype_setting, device)
        if self.quantization not in ('none', 'int8'):
            raise ModelLoadError('model.quantization must be none or int8, got %r'
                                 % self.quantization)
        if self.fast_path_setting not in FAST_PATHS:
            raise ModelLoadError('generation.fast_path must be auto, on or off, got %r'
                                 % self.fast_path_setting)
        if self.threads:
            torch.set_num_threads(self.threads)  # model.threads: for the whole process
        tokenizer = load_tokenizer(self.model_path)
        model = load_model(self.model_path, self.adapters, device, dtype, self.quantization)
        self.stop_ids = stop_token_ids(tokenizer)
        self._special_ids = set(tokenizer.all_special_ids)
        if not self.stop_ids:
            raise ModelLoadError('model.path: the tokenizer of %s has neither %s nor an eos '
                                 'token to stop on' % (self.model_path, IM_END))
        decode_by_settings_alone(model, tokenizer, self.stop_ids)
        self.model, self.tokenizer, self.device = model, tokenizer, device
        if self.grammar is not None:
            self.grammar.compile(tokenizer, len(tokenizer), model.config.vocab_size,
                                 stop_ids=self.stop_ids)
        if self.fast_path_setting != 'off':
            # 'auto' is on wherever it runs: it is faster than generate() on the CPU as on
            # CUDA (docs/decoding.md); its step is compiled where that pays, on CUDA.
            from robot_llm_planner.inference.decoding import StaticCacheDecoder
            self.decoder = StaticCacheDecoder(
                model, self.stop_ids, tokenizer.pad_token_id, self.max_prompt_tokens,
                self.max_new_tokens, draft_tokens=self.draft_tokens,
                compile_steps=device.type == 'cuda')
        self.load_seconds = time.perf_counter() - started

    def warm_up(self, prompt: PromptBuilder) -> None:
        """Generate once with the served prompt so the first command pays no start-up cost."""
        started = time.perf_counter()
        length = self.prompt_tokens(WARMUP_COMMAND, prompt)
        if length > self.max_prompt_tokens:
            raise ModelLoadError(
                'prompt.system and prompt.instruction alone make a %d-token prompt; '
                'model.max_prompt_tokens is %d' % (length, self.max_prompt_tokens))
        config = GenerationConfig(max_new_tokens=min(8, self.max_new_tokens))
        self.generate([WARMUP_COMMAND], prompt, config)
        if self.decoder is not None and self.decoder.compiled:
            # The step compiled on first use; run it again so that the CUDA graph is recorded
            # and replayed now, not on a user's command. (Eager steps need no second run.)
            self.generate([WARMUP_COMMAND], prompt, config)
        if self.decoder is not None and self.decoder.compile_error:
            logging.getLogger(__name__).warning(
                'fast path: the decode step could not be compiled (%s); decoding eagerly',
                self.decoder.compile_error)
        self.load_seconds += time.perf_counter() - started

    # --------------------------------------------------------------- generating
    def cancel(self) -> None:
        """Stop the generation in progress after its current token; refuse new ones."""
        self._cancelled.set()

    def resume(self) -> None:
        """Accept generations again after :meth:`cancel`."""
        self._cancelled.clear()

    def placement(self) -> Dict[str, str]:
        """Return the device and dtype of the loaded model ('' before it is loaded)."""
        if self.model is None:
            return {'device': '', 'dtype': ''}
        return {'device': str(self.device), 'dtype': str(self.model.dtype).replace('torch.', '')}

    def encode(self, command: str, prompt: PromptBuilder) -> List[int]:
        """Return the prompt token ids for a command (LLaMA-Factory's encoding)."""
        return prompt.token_ids(self.tokenizer, command)

    def prompt_tokens(self, command: str, prompt: PromptBuilder) -> Optional[int]:
        """Return the prompt's length in tokens."""
        return len(self.encode(command, prompt)) if self.tokenizer is not None else None

    def generate(self, commands: List[str], prompt: PromptBuilder,
                 config: GenerationConfig) -> List[Generation]:
        """Generate one answer per command; raise EngineError naming the cause on failure."""
        if self.model is None:
            raise EngineError('the model is not loaded')
        self._raise_if_cancelled()
        prompts = [self.encode(command, prompt) for command in commands]
        too_long = [len(ids) for ids in prompts if len(ids) > self.max_prompt_tokens]
        if too_long:
            raise EngineError('a prompt has %d tokens, more than the %d this backend serves '
                              '(the planner should have rejected it)'
                              % (max(too_long), self.max_prompt_tokens))
        max_new = min(config.max_new_tokens, self.max_new_tokens)
        try:
            if self.decoder is not None and not config.do_sample and len(prompts) == 1:
                results = [self._decode_fast(prompts[0], max_new)]
            else:
                results = self._generate_batch(prompts, max_new, config)
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise EngineError('out of GPU memory on %s while generating %d command(s): %s'
                              % (self.device, len(commands), exc), transient=True) from exc
        self._raise_if_cancelled()
        return results

    def _raise_if_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise GenerationCancelled('generation cancelled: the planner is shutting down')

    def _decode_fast(self, ids: List[int], max_new: int) -> Generation:
        constraint = self.grammar.matcher() if self.grammar is not None else None
        result = self.decoder.decode(ids, max_new, constraint, self._cancelled)
        return self._generation(result.tokens, result.finished, result.logprobs, len(ids),
                                result.stats)

    def _generate_batch(self, prompts: List[List[int]], max_new: int,
                        config: GenerationConfig) -> List[Generation]:
        width = max(len(ids) for ids in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts],
                                 device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts],
                                 device=self.device)
        # Like LLaMA-Factory's engine: explicit settings (and the model's
        # generation_config.json was replaced at load).
        kwargs = {'max_new_tokens': max_new, 'do_sample': config.do_sample,
                  'repetition_penalty': 1.0, 'eos_token_id': self.stop_ids, 'pad_token_id': pad}
        if config.do_sample:
            kwargs.update(temperature=config.temperature, top_p=config.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        confidence = _TokenProbabilities(len(prompts), self.stop_ids)
        kwargs['logits_processor'] = [confidence]  # first: it sees the logits unmasked
        if self.grammar is not None:
            kwargs['logits_processor'].append(self.grammar.logits_processor(len(prompts)))
        kwargs['stopping_criteria'] = [_StopWhenSet(self._cancelled)]
        started = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        elapsed = (time.perf_counter() - started) * 1000.0
        logprobs = confidence.finish(output[:, -1])
        results = []
        for row, ids, scores in zip(output[:, width:].tolist(), prompts, logprobs):
            tokens, finished = _until_stop(row, self.stop_ids, pad)
            results.append(self._generation(
                tokens, finished, scores, len(ids),
                {'generate_ms': elapsed, 'batch_size': len(prompts)}))
        return results

    def _generation(self, tokens: List[int], finished: bool, logprobs: List[float],
                    prompt_tokens: int, stats: dict) -> Generation:
        """Return the Generation of ``tokens`` (stop token left out) and their scores."""
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        text = self._without_cut_character(tokens, text)
        token_probabilities = None
        spans = self._token_spans(tokens, text)
        if spans is not None and len(logprobs) >= len(tokens):
            # the stop token, if it was generated, holds no character of the text
            spans += [(len(text), len(text))] * (len(logprobs) - len(tokens))
            token_probabilities = [(start, end, math.exp(value))
                                   for (start, end), value in zip(spans, logprobs)]
        return Generation(text, tokens=len(tokens), prompt_tokens=prompt_tokens,
                          finished=finished, stats=stats,
                          confidence=math.exp(min(logprobs)) if logprobs else None,
                          token_probabilities=token_probabilities)

    def _spelled(self, tokens: List[int]) -> Optional[List[bytes]]:
        """Return each token's bytes (b'' for a special token); None if not a byte-level BPE."""
        pieces = self.tokenizer.convert_ids_to_tokens(tokens)
        spelled = [b'' if token in self._special_ids else token_bytes(piece)
                   for token, piece in zip(tokens, pieces)]
        return None if None in spelled else spelled

    def _without_cut_character(self, tokens: List[int], text: str) -> str:
        """
        Return ``text`` without a last character its tokens leave unfinished.

        The token limit can cut a character in two (a model without the grammar can also stop
        inside one); its first bytes decode to U+FFFD. vLLM leaves such a character out of its
        text, and so does this backend, so that both give the same text for the same tokens.
        """
        spelled = self._spelled(tokens) if text.endswith('\ufffd') else None
        if spelled is None:
            return text
        decoder = codecs.getincrementaldecoder('utf-8')('replace')
        head = decoder.decode(b''.join(spelled))
        return head if decoder.getstate()[0] and text == head + '\ufffd' else text

    def _token_spans(self, tokens: List[int], text: str) -> Optional[List[Tuple[int, int]]]:
        """
        Return the characters of ``text`` (its decoded form) each token falls in, (start, end).

        A byte-level BPE (Qwen's) spells each token's bytes in GPT-2's byte alphabet, which
        gives the offsets at once (:func:`character_spans`); any other tokenizer decodes every
        prefix (slower), and a token then starts where the one before it ends. None if neither
        agrees with ``text``.
        """
        spelled = self._spelled(tokens)
        if spelled is not None:
            spans, decoded = character_spans(spelled)
            if decoded in (text, text + '\ufffd'):  # the latter: a character cut off
                return [(min(start, len(text)), min(end, len(text))) for start, end in spans]
        ends = [len(self.tokenizer.decode(tokens[:count], skip_special_tokens=True))
                for count in range(1, len(tokens) + 1)]
        if ends and ends[-1] != len(text):
            return None
        return list(zip([0] + ends[:-1], ends))


class _TokenProbabilities(LogitsProcessor):
    """
    Records each row's log-probability of every generated token, its stop token included.

    Placed first among the processors given to generate(), it sees the model's distribution
    before the grammar's mask, greedy or sampled: generate() adds no processor of its own
    with this backend's settings (repetition_penalty 1.0, the model's generation_config
    replaced), and appends temperature and top-p after the given ones. Per step it takes one
    log-sum-exp per row and, at the next step, the logit of the token chosen, both left on the
    device: nothing is read back before :meth:`finish`. (The grammar masks the scores in
    place, but never the logit of a token it allows, the one chosen; transformers' own
    processors return new tensors.)
    """

    def __init__(self, rows: int, stop_ids: Sequence[int]) -> None:
        self.rows = rows
        self.stop_ids = set(stop_ids)
        self.chosen: List[torch.Tensor] = []   # per step: each row's token [rows]
        self.values: List[torch.Tensor] = []   # per step: its log-probability [rows]
        self.previous = None  # (scores [rows, V], log-sum-exp [rows]) of the step to count

    def __call__(self, input_ids, scores):
        self._count(input_ids[:, -1])
        self.previous = (scores, scores.float().logsumexp(-1))
        return scores

    def _count(self, chosen) -> None:
        if self.previous is None:
            return
        scores, total = self.previous
        chosen = chosen.to(scores.device)
        self.chosen.append(chosen)
        self.values.append(scores.gather(1, chosen[:, None])[:, 0].float() - total)
        self.previous = None

    def finish(self, last_tokens) -> List[List[float]]:
        """Count the last step's tokens; return each row's log-probabilities."""
        self._count(last_tokens)
        if not self.chosen:
            return [[] for _ in range(self.rows)]
        tokens = torch.stack(self.chosen, 1).tolist()   # [rows, steps]
        values = torch.stack(self.values, 1).tolist()   # [rows, steps]
        logprobs = []
        for row_tokens, row_values in zip(tokens, values):
            row: List[float] = []
            for token, value in zip(row_tokens, row_values):
                # NaN logits (a broken model) count as impossible, as on the fast path
                row.append(-math.inf if math.isnan(value) else value)
                if token in self.stop_ids:
                    break  # generate() pads a finished row
            logprobs.append(row)
        return logprobs


class _StopWhenSet(StoppingCriteria):
    """A generate() stopping criterion that ends every row once an event is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


def _until_stop(row: Sequence[int], stop_ids: Sequence[int], pad: int):
    for position, token in enumerate(row):
        if token in stop_ids:
            return list(row[:position]), True
    return list(row), False
