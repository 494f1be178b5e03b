"""
The planner: command → plan (prompt, generate, then the checks of the answer).

The checks are :class:`~robot_llm_planner.core.output_check.OutputCheck`'s.

ROS-free. :class:`Planner` never raises for a command: every command gets a
:class:`PlanResult` with status ok, invalid (the model answered but the plan failed parsing or
validation), error (the engine failed) or rejected (not run: empty or too long; or the model
answered :data:`~robot_llm_planner.core.plan.NO_TASK`, code ``not_a_task``).
"""

from collections import OrderedDict
import copy
import dataclasses
import time
from typing import List, Optional, Sequence, Tuple

from robot_llm_planner.core.backend import (Backend, EngineError, GenerationCancelled,
                                            GenerationConfig)
from robot_llm_planner.core.command import (check_command, DEFAULT_MAX_COMMAND_CHARS,
                                            prepare_command)
from robot_llm_planner.core.output_check import OutputCheck, PlanResult
from robot_llm_planner.core.plan import Plan, PlanError
from robot_llm_planner.core.prompt import PromptBuilder
from robot_llm_planner.core.skills import SkillSet

__all__ = ['Planner', 'PlanResult']


class Planner:
    """Plans commands with a backend, validating every plan against the robot's skills."""

    def __init__(self, backend: Backend, skills: SkillSet,
                 prompt: Optional[PromptBuilder] = None,
                 generation: Optional[GenerationConfig] = None, cache_size: int = 64,
                 max_command_chars: int = DEFAULT_MAX_COMMAND_CHARS,
                 grounded_arguments: bool = True, min_confidence: float = 0.0,
                 preconditions: bool = True, bt_xml: bool = False,
                 bt_xml_linear: bool = False) -> None:
        """
        Plan with ``backend``; cache ``cache_size`` recent plans when decoding is greedy.

        With ``grounded_arguments`` a plan whose target or location does not appear in the
        command is invalid (``argument_not_in_command``). With ``preconditions`` a plan with
        a step that cannot run where it is (the skills' ``requires``) is invalid
        (``precondition_failed``). A plan whose confidence (the lowest probability the model
        gave a token of it) is below ``min_confidence`` is invalid (``low_confidence``); 0
        turns the check off, and a backend that cannot tell the confidence (a server without
        log-probabilities) is never checked. With ``bt_xml`` every ok plan's message carries
        its BehaviorTree.CPP XML: the recovery structure, or with ``bt_xml_linear`` the plain
        sequence. :class:`OutputCheck` runs these checks.
        """
        self.backend = backend
        self.skills = skills
        self.prompt = prompt or PromptBuilder()
        self.generation = generation or GenerationConfig()
        self.cache_size = cache_size if not self.generation.do_sample else 0
        self.max_command_chars = max_command_chars
        self.checks = OutputCheck(skills, grounded_arguments, preconditions, min_confidence,
                                  self.generation.max_new_tokens, bt_xml, bt_xml_linear)
        self._cache: 'OrderedDict[str, PlanResult]' = OrderedDict()

    def load(self) -> None:
        """Load and warm up the backend's model; raises an EngineError naming the cause."""
        self.backend.load()
        self.backend.warm_up(self.prompt)

    def cancel(self) -> None:
        """Stop the generation in progress (shutdown); its commands come back rejected."""
        self.backend.cancel()

    def check(self, command: str) -> Optional[PlanError]:
        """Return why a command cannot be planned, or None when it can."""
        return check_command(command, self.max_command_chars)

    def _prepare(self, raw: str) -> Tuple[str, Optional[PlanError]]:
        command, reason = prepare_command(raw, self.max_command_chars)
        return command, reason or self._check_prompt_length(command)

    def _check_prompt_length(self, command: str) -> Optional[PlanError]:
        limit = self.backend.max_prompt_tokens
        count = self.backend.prompt_tokens(command, self.prompt)
        if limit and count is not None and count > limit:
            return PlanError('command_too_long', 'the prompt for this command has %d tokens; '
                             'model.max_prompt_tokens is %d' % (count, limit))
        return None

    def plan(self, command: str) -> PlanResult:
        """Plan one command."""
        return self.plan_batch([command])[0]

    def plan_batch(self, commands: Sequence[str],
                   queued_ms: Optional[Sequence[float]] = None) -> List[PlanResult]:
        """Plan several commands, generating the uncached ones as one batch."""
        queued_ms = list(queued_ms or [0.0] * len(commands))
        results: List[Optional[PlanResult]] = [None] * len(commands)
        todo = []
        cleaned = []
        for index, raw in enumerate(commands):
            command, reason = self._prepare(raw)
            cleaned.append(command)
            if reason is not None:
                results[index] = PlanResult(command, 'rejected', Plan(command=command), [reason])
            elif command in self._cache:
                self._cache.move_to_end(command)
                cached = self._cache[command]
                # a copy: what a caller does to its result must not change the cache
                results[index] = _copy(cached, {'inference_ms': 0.0, 'parse_ms': 0.0,
                                                'tokens_generated': 0, 'cached': True})
            else:
                todo.append(index)
        if todo:
            for index, result in zip(todo, self._generate([cleaned[i] for i in todo])):
                results[index] = result
        for result, queue_ms in zip(results, queued_ms):
            result.timing['queue_ms'] = queue_ms
            result.timing['total_ms'] = queue_ms + sum(
                result.timing.get(stage, 0.0) for stage in ('inference_ms', 'parse_ms'))
        return results

    def _generate(self, commands: List[str]) -> List[PlanResult]:
        started = time.perf_counter()
        try:
            generations = self.backend.generate(commands, self.prompt, self.generation)
        except GenerationCancelled as exc:
            return [PlanResult(command, 'rejected', Plan(command=command),
                               [PlanError('cancelled', str(exc))]) for command in commands]
        except EngineError as exc:
            return [self._error(command, 'engine_error', str(exc)) for command in commands]
        except Exception as exc:  # a bug or a library failure must not lose the commands
            return [self._error(command, 'engine_error', '%s: %s' % (type(exc).__name__, exc))
                    for command in commands]
        inference_ms = (time.perf_counter() - started) * 1000.0
        results = []
        for command, generation in zip(commands, generations):
            if generation.error:  # this command failed, the others of the batch did not
                results.append(self._error(command, 'engine_error', generation.error))
                continue
            parse_started = time.perf_counter()
            result = self.checks.check(command, generation.text, generation.finished,
                                       generation.confidence, generation.token_probabilities)
            result.timing = {'inference_ms': inference_ms,
                             'parse_ms': (time.perf_counter() - parse_started) * 1000.0,
                             'tokens_generated': generation.tokens, 'cached': False}
            results.append(result)
            if self.cache_size:
                self._cache[command] = _copy(result, {})
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return results

    @staticmethod
    def _error(command: str, code: str, message: str) -> PlanResult:
        return PlanResult(command, 'error', Plan(command=command), [PlanError(code, message)])


def _copy(result: PlanResult, timing: dict) -> PlanResult:
    """Return ``result`` with ``timing`` and its own plan and errors (the cache keeps its own)."""
    return dataclasses.replace(result, plan=copy.deepcopy(result.plan),
                               errors=copy.deepcopy(result.errors), timing=timing)
