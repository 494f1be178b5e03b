"""
Grammar-constrained decoding: only plans in the output convention, with the robot's skills.

:class:`PlanGrammar` builds an EBNF grammar from the skills file (config/skills.yaml) and the
output convention of :mod:`robot_llm_planner.core.plan`::

    <description>；...；<description>。<action>，<target>[，<location>]；...

- 1 to ``max_steps`` steps, the same number in output1 and output2 (one alternative per count);
- every action is a skill, with exactly its required arguments and at most its optional ones;
- free text (descriptions, targets, locations) is 1 to ``max_text_chars`` characters without
  the convention's separators (``。；，;,``), whitespace or control characters, except that a
  description may hold the part separators (``，,``) after its first character: output1 is
  not split on them, and the planner's validation accepts such a description;
- or, instead of a plan, :data:`~robot_llm_planner.core.plan.NO_TASK` (``无法执行``) alone: the
  answer to a command that asks for nothing the robot can do. A plan's first description
  cannot start with it, so a model that has written ``无法执行`` can only stop there;
- the stop token (``<|im_end|>``) is allowed only where a plan is complete.

The local backend compiles it once at load with xgrammar against the model's tokenizer
(:meth:`PlanGrammar.compile`) and enforces it at every decoding step: the fast path asks
:meth:`PlanGrammar.matcher` for one :class:`PlanMatcher` per command, which masks a step's
logits only when the grammar refuses the model's own choice
(:meth:`PlanMatcher.accept_if_allowed`, :meth:`PlanMatcher.best_allowed`);
``generate()`` gets a :class:`transformers.LogitsProcessor` from
:meth:`PlanGrammar.logits_processor`. A remote server gets the grammar text in its request
(:meth:`PlanGrammar.guided_request`); vLLM enforces it, servers without guided decoding ignore
it, and the planner validates every plan anyway.

Importing this module needs neither torch nor xgrammar; compiling does.
"""

import json
import time
from typing import Dict, List, Optional, Sequence

from robot_llm_planner.core.backend import EngineError, ModelLoadError
from robot_llm_planner.core.plan import (NO_TASK, PART_SEP, PART_SEPS, SECTION_SEP, SEPARATORS,
                                         STEP_SEP)
from robot_llm_planner.core.prompt import stop_token_ids
from robot_llm_planner.core.settings import REMOTE_FIELDS
from robot_llm_planner.core.skills import SkillSet

DEFAULT_MAX_STEPS = 12        # the data set's longest plans have 12 steps
DEFAULT_MAX_TEXT_CHARS = 24   # its longest description has 19 characters, argument 8


# Never inside free text: C0 and C1 control characters (newlines included), DEL, Unicode line
# and paragraph separators, every whitespace character, and the convention's separators.
_EXCLUDED = ([(0x00, 0x20), (0x7F, 0xA0), (0x1680, 0x1680), (0x2000, 0x200B),
              (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000),
              (0xFEFF, 0xFEFF)] + [(ord(sep), ord(sep)) for sep in SEPARATORS])
# In a description the part separators are plain text: output1 steps have no parts.
_EXCLUDED_IN_DESCRIPTIONS = [r for r in _EXCLUDED if chr(r[0]) not in PART_SEPS]


class GrammarError(ModelLoadError):
    """The plan grammar could not be built or compiled for the model's tokenizer."""


def _literal(text: str) -> str:
    # EBNF string literal: JSON escapes (\" \\ \uXXXX) are also xgrammar's.
    return json.dumps(text, ensure_ascii=False)


def _char_class(ranges: Sequence) -> str:
    parts = []
    for low, high in sorted(set(ranges)):
        parts.append('\\u%04x' % low if low == high else '\\u%04x-\\u%04x' % (low, high))
    return '[^%s]' % ''.join(parts)


class PlanGrammar:
    """The grammar of a valid plan for a skill set, and its enforcement during decoding."""

    def __init__(self, skills: SkillSet, max_steps: int = DEFAULT_MAX_STEPS,
                 max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
                 remote_field: str = 'structured_outputs') -> None:
        """
        Describe plans of 1..``max_steps`` steps over ``skills``.

        ``max_text_chars`` bounds each description, target and location. ``remote_field``
        (one of :data:`REMOTE_FIELDS`) chooses how :meth:`guided_request` sends the grammar.
        """
        if int(max_steps) < 1:
            raise ValueError('grammar max_steps must be at least 1, got %r' % max_steps)
        if int(max_text_chars) < 1:
            raise ValueError('grammar max_text_chars must be at least 1, got %r'
                             % max_text_chars)
        if remote_field not in REMOTE_FIELDS:
            raise ValueError('grammar remote_field must be one of %s, got %r'
                             % (', '.join(REMOTE_FIELDS), remote_field))
        self.skills = skills
        self.max_steps = int(max_steps)
        self.max_text_chars = int(max_text_chars)
        self.remote_field = remote_field
        self.ebnf = self._build_ebnf()
        self.compiled = None
        self.vocab_size = 0
        self.stop_ids: List[int] = []
        self.compile_ms = 0.0

    # ------------------------------------------------------------------ the grammar
    def _build_ebnf(self) -> str:
        skills = list(self.skills)
        if not skills:
            raise ValueError('the skill set is empty: no plan can be valid')
        lines = ['root ::= ' + ' | '.join(
            ['no_task'] + ['plan%d' % count for count in range(1, self.max_steps + 1)]),
            'no_task ::= ' + _literal(NO_TASK)]
        step, section, part = _literal(STEP_SEP), _literal(SECTION_SEP), _literal(PART_SEP)
        for count in range(1, self.max_steps + 1):
            more = ' (%s %%s){%d}' % (step, count - 1) if count > 1 else ''
            lines.append('plan%d ::= first_description%s %s action%s' % (
                count, more % 'description' if more else '', section,
                more % 'action' if more else ''))
        lines.append('action ::= ' + ' | '.join('skill%d' % i for i in range(len(skills))))
        for index, skill in enumerate(skills):
            rule = 'skill%d ::= %s' % (index, _literal(skill.name))
            if skill.required:
                rule += ' (%s text){%d}' % (part, len(skill.required))
            if skill.optional:
                rule += ' (%s text){0,%d}' % (part, len(skill.optional))
            lines.append(rule)
        # it starts with a text character: one of separators only would be no step at all
        lines.append('description ::= char' + (' description_char{0,%d}' % (
            self.max_text_chars - 1) if self.max_text_chars > 1 else ''))
        lines.append('description_char ::= ' + _char_class(_EXCLUDED_IN_DESCRIPTIONS))
        lines.append('first_description ::= ' + self._first_description())
        lines.append('text ::= char{1,%d}' % self.max_text_chars)
        lines.append('char ::= ' + _char_class(_EXCLUDED))
        return '\n'.join(lines) + '\n'

    def _first_description(self) -> str:
        """Return a description that does not start with NO_TASK, as EBNF alternatives."""
        alternatives = []
        for length in range(min(len(NO_TASK), self.max_text_chars + 1)):
            # the first ``length`` characters of NO_TASK alone, or then any other character
            prefix = _literal(NO_TASK[:length])
            if length == self.max_text_chars:
                alternatives.append(prefix)
                continue
            allowed = _EXCLUDED if length == 0 else _EXCLUDED_IN_DESCRIPTIONS
            rest = self.max_text_chars - length - 1
            tail = _char_class(allowed + [(ord(NO_TASK[length]),) * 2]) + (
                ' description_char{0,%d}' % rest if rest else '')
            alternatives.append(tail if length == 0 else '%s (%s)?' % (prefix, tail))
        return ' | '.join(alternatives)

    # ------------------------------------------------------------------ compiling
    def compile(self, tokenizer, tokenizer_size: Optional[int] = None,  # noqa: A003
                vocab_size: Optional[int] = None,
                stop_ids: Optional[Sequence[int]] = None) -> None:
        """
        Compile the grammar for ``tokenizer``; raise :class:`GrammarError` if it cannot.

        ``vocab_size`` is the width of the model's logits (``config.vocab_size``), which may
        exceed ``tokenizer_size`` (``len(tokenizer)``, a padded embedding): the padding ids are
        never allowed. ``stop_ids`` are the tokens that end a plan (default ``<|im_end|>``).
        """
        try:
            import xgrammar as xgr
        except ImportError as exc:
            raise GrammarError('generation.constrained is on but xgrammar cannot be imported '
                               '(pip install -r requirements.txt): %s' % exc) from exc
        started = time.perf_counter()
        tokenizer_size = int(tokenizer_size or len(tokenizer))
        vocab_size = int(vocab_size or tokenizer_size)
        if stop_ids is None:
            stop_ids = stop_token_ids(tokenizer)
        stop_ids = [int(token) for token in stop_ids]
        if not stop_ids:
            raise GrammarError('generation.constrained: the tokenizer has no stop token '
                               '(<|im_end|> or eos) to end a plan with')
        if any(token >= vocab_size for token in stop_ids):
            raise GrammarError('generation.constrained: stop token id(s) %s are outside the '
                               "model's %d logits" % (stop_ids, vocab_size))
        try:
            info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                      stop_token_ids=stop_ids)
            compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
            compiled = compiler.compile_grammar(self.ebnf)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError from C++
            raise GrammarError('generation.constrained: cannot compile the plan grammar from '
                               '%s for this tokenizer: %s'
                               % (self.skills.source or 'the skill set',
                                  str(exc).strip().splitlines()[0][:300] if str(exc)
                                  else repr(exc))) from exc
        self.compiled = compiled
        self.vocab_size = vocab_size
        self.stop_ids = stop_ids
        self.compile_ms = (time.perf_counter() - started) * 1000.0

    def _require_compiled(self) -> None:
        if self.compiled is None:
            raise EngineError('the plan grammar is not compiled (load the backend first)')

    # ------------------------------------------------------------------ decoding
    def matcher(self) -> 'PlanMatcher':
        """Return a fresh matcher for one command (the fast path's ``constraint``)."""
        self._require_compiled()
        return PlanMatcher(self)

    def logits_processor(self, batch_size: int = 1):
        """Return a new ``transformers.LogitsProcessor`` for one ``generate()`` call."""
        self._require_compiled()
        return _make_logits_processor(self, batch_size)

    def max_plan_tokens(self) -> int:
        """
        Return the most tokens a plan of this grammar can take, the stop token included.

        Every token but the stop token spells at least one byte, so this is the plan's
        longest UTF-8 length plus one: with ``max_new_tokens`` at least this, constrained
        decoding always ends with a complete plan. With less (the default 128 is much less),
        a plan that needs more is cut short and the planner reports ``truncated_output``; no
        plan is ever completed artificially.
        """
        text = 4 * self.max_text_chars  # a character is at most 4 bytes
        sep = max(len(s.encode('utf-8')) for s in (STEP_SEP, SECTION_SEP, PART_SEP))
        entry = max(len(skill.name.encode('utf-8')) + skill.max_arguments * (sep + text)
                    for skill in self.skills)
        steps = self.max_steps
        return steps * (text + entry) + (2 * steps - 1) * sep + 1

    def accepts(self, text: str) -> bool:
        """Return True when ``text`` followed by the stop token is a complete plan."""
        matcher = self.matcher()
        return (matcher.accept_text(text) and matcher._matcher.accept_token(self.stop_ids[0])
                and matcher.is_complete())

    # ------------------------------------------------------------------ remote servers
    def guided_request(self) -> Dict[str, object]:
        """
        Return the request-body fields that ask an OpenAI-compatible server for this grammar.

        vLLM >= 0.10.2 takes ``structured_outputs.grammar``; older vLLM ``guided_grammar``
        (``remote_field``). ``llamafactory-cli api`` ignores both (its request model drops
        unknown fields), so its plans are only validated after decoding.
        """
        if self.remote_field == 'structured_outputs':
            return {'structured_outputs': {'grammar': self.ebnf}}
        if self.remote_field == 'guided_grammar':
            return {'guided_grammar': self.ebnf}
        return {}


class PlanMatcher:
    """One command's grammar state: masks logits and follows the kept tokens."""

    def __init__(self, grammar: PlanGrammar) -> None:
        """Start at the beginning of a plan."""
        import xgrammar as xgr
        self.grammar = grammar
        self._matcher = xgr.GrammarMatcher(grammar.compiled)
        self._bitmask = None
        self._device_masks: dict = {}
        self.tokens = 0

    def fill(self, bitmask, row: int = 0) -> bool:
        """Write the allowed next tokens into ``bitmask[row]``; return False if all are."""
        if self._matcher.is_terminated():
            bitmask[row].fill_(-1)
            return False
        return self._matcher.fill_next_token_bitmask(bitmask, row)

    def mask(self, logits):
        """Set the logits of every token the grammar forbids next to -inf; return them."""
        if self._bitmask is None:
            import xgrammar as xgr
            self._bitmask = xgr.allocate_token_bitmask(1, self.grammar.vocab_size)
        if self.fill(self._bitmask):
            rows = logits.unsqueeze(0) if logits.dim() == 1 else logits
            apply_bitmask(rows, self._bitmask, self.grammar.vocab_size, self._device_masks)
        return logits

    def accept_if_allowed(self, token: int) -> bool:
        """
        Advance past ``token`` if the grammar allows it next; return whether it did.

        When the grammar allows a logits row's argmax, that is also the argmax of the masked
        row (the mask only lowers other logits; a tie resolves to the first index either
        way): the fast path keeps it without filling a bitmask or touching the row. A refused
        token leaves the matcher as it was.
        """
        if self._matcher.accept_token(int(token)):
            self.tokens += 1
            return True
        return False

    def best_allowed(self, logits) -> int:
        """Mask a logits row in place, advance past its argmax and return it."""
        token = int(self.mask(logits).argmax())
        self.accept(token)
        return token

    def accept(self, token: int) -> None:
        """Advance past a kept token; raise EngineError if the grammar does not allow it."""
        if not self._matcher.accept_token(int(token)):
            raise EngineError('constrained decoding: token %d is not allowed by the plan '
                              'grammar after %d tokens' % (int(token), self.tokens))
        self.tokens += 1

    def accept_text(self, text: str) -> bool:
        """Advance past ``text`` (its bytes, whatever the tokens); return False if refused."""
        return self._matcher.accept_string(text)

    def is_complete(self) -> bool:
        """Return True once a stop token ended a complete plan."""
        return self._matcher.is_terminated()


def apply_bitmask(logits, bitmask, vocab_size: int, device_masks: Optional[dict] = None,
                  indices: Optional[List[int]] = None) -> None:
    """
    Set (N, width) ``logits`` to -inf in place where the (N, words) CPU ``bitmask`` bit is 0.

    Logits past ``vocab_size`` are set to -inf too. On an accelerator the bitmask is copied
    to a device buffer kept in ``device_masks``.
    """
    import xgrammar as xgr
    device = logits.device
    if device.type != 'cpu':
        buffers = device_masks if device_masks is not None else {}
        target = buffers.get(device)
        if target is None or target.shape != bitmask.shape:
            target = buffers[device] = _empty_like(bitmask, device)
        # Callers refill the CPU bitmask only after reading the previous step's argmax back
        # (a synchronization), so this asynchronous copy never races with the refill.
        target.copy_(bitmask, non_blocking=True)
        bitmask = target
    width = logits.shape[-1]
    if width > vocab_size:
        logits[..., vocab_size:] = float('-inf')
    xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=min(width, vocab_size),
                                    indices=indices, backend=_backend(device))


def _empty_like(bitmask, device):
    import torch
    return torch.empty(bitmask.shape, dtype=bitmask.dtype, device=device)


def _backend(device) -> str:
    if device.type == 'cpu':
        return 'cpu'
    if device.type == 'cuda':
        import importlib.util
        if importlib.util.find_spec('triton') is not None:
            return 'triton'
    return 'torch_native'


def _make_logits_processor(grammar: PlanGrammar, batch_size: int):
    import transformers
    import xgrammar as xgr

    class PlanLogitsProcessor(transformers.LogitsProcessor):
        """Masks each row of a ``generate()`` batch with its own matcher."""

        def __init__(self) -> None:
            self.matchers = [PlanMatcher(grammar) for _ in range(batch_size)]
            self.bitmask = xgr.allocate_token_bitmask(batch_size, grammar.vocab_size)
            self.device_masks: dict = {}
            self.started = False

        def __call__(self, input_ids, scores):
            if input_ids.shape[0] != len(self.matchers):
                raise EngineError('constrained decoding: the logits processor was made for '
                                  '%d row(s), generate() has %d'
                                  % (len(self.matchers), input_ids.shape[0]))
            if self.started:
                for matcher, token in zip(self.matchers, input_ids[:, -1].tolist()):
                    if not matcher.is_complete():  # finished rows only get padding
                        matcher.accept(token)
            self.started = True
            rows = [row for row, matcher in enumerate(self.matchers)
                    if matcher.fill(self.bitmask, row)]
            if rows:
                apply_bitmask(scores, self.bitmask, grammar.vocab_size, self.device_masks,
                              indices=rows)
            return scores

    return PlanLogitsProcessor()
