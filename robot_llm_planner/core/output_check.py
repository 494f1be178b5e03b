"""
Every check a model's output goes through, in one place: what makes a plan ok or invalid.

:class:`OutputCheck` turns a model's raw text into the :class:`PlanResult` the planner
publishes: parse, skills (actions and arguments), grounding (arguments copied from the
command), preconditions (the plan run over the symbolic state of the skills file),
truncation, confidence, and whether the plan can be written as BehaviorTree.CPP XML when the
message carries it. The planner runs it on every output its model generates and
``python3 -m robot_llm_planner.cli validate`` on outputs read from a file, so the two never
disagree.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from robot_llm_planner.core.bt_xml import plan_to_bt_xml, recovery_bt_xml, unsafe_value
from robot_llm_planner.core.confidence import assign_step_confidences, published_confidence
from robot_llm_planner.core.message import plan_message
from robot_llm_planner.core.plan import parse_plan, Plan, PlanError, ungrounded_arguments
from robot_llm_planner.core.skills import SkillSet


@dataclass
class PlanResult:
    """The planner's answer to one command."""

    command: str
    status: str
    plan: Plan
    errors: List[PlanError] = field(default_factory=list)  # beyond the parser's own
    timing: dict = field(default_factory=dict)
    confidence: Optional[float] = None  # the backend's Generation.confidence, if it ran
    bt_xml: bool = False  # the message carries the plan's BehaviorTree.CPP XML when ok
    bt_xml_skills: Optional[SkillSet] = None  # that XML has their recovery structure; None: linear

    def message(self, request_id: str, model: Optional[dict] = None) -> dict:
        """Return the /action_plan message for this result (tree ID: ``request_id``)."""
        xml = None
        if self.bt_xml and self.status == 'ok':
            xml = (plan_to_bt_xml(request_id, self.plan.steps) if self.bt_xml_skills is None
                   else recovery_bt_xml(request_id, self.plan.steps, self.bt_xml_skills))
        return plan_message(request_id, self.command, self.status, self.plan, self.errors,
                            self.timing, model, confidence=self.confidence, bt_xml=xml)


@dataclass
class OutputCheck:
    """
    The checks of a model's output, configured as the planner's validation settings are.

    ``grounded_arguments``: a target or location not in the command is invalid
    (``argument_not_in_command``). ``preconditions``: a plan with a step whose ``requires``
    does not hold when it runs is invalid (``precondition_failed``). ``min_confidence``: a plan
    whose confidence is below it is invalid (``low_confidence``; 0 turns it off, and an output
    without a confidence is never checked). ``bt_xml``: messages carry the plan's
    BehaviorTree.CPP XML, so a value it cannot carry makes the plan invalid
    (``bt_xml_unsafe_value``); with ``bt_xml_linear`` that XML is the plain sequence, else the
    recovery structure. ``max_new_tokens`` is named in the ``truncated_output`` error.
    """

    skills: SkillSet
    grounded_arguments: bool = True
    preconditions: bool = True
    min_confidence: float = 0.0
    max_new_tokens: int = 256
    bt_xml: bool = False
    bt_xml_linear: bool = False

    def __post_init__(self) -> None:
        """Refuse a threshold outside [0, 1]."""
        if not 0.0 <= float(self.min_confidence) <= 1.0:
            raise ValueError('min_confidence must be between 0 and 1, got %r'
                             % self.min_confidence)
        self.min_confidence = float(self.min_confidence)

    def check(self, command: str, text: str, finished: bool = True,
              confidence: Optional[float] = None,
              token_probabilities: Optional[Sequence[Tuple[int, int, float]]] = None
              ) -> PlanResult:
        """
        Return the result for the model's output ``text`` for ``command``.

        ``finished`` is False when generation stopped at ``max_new_tokens``;
        ``confidence`` and ``token_probabilities`` are the backend's (None: unknown).
        """
        confidence = published_confidence(confidence)  # the value checked is the one shown
        plan = parse_plan(text, command)
        assign_step_confidences(plan, token_probabilities)
        skill_errors = self.skills.validate(plan)
        errors = list(skill_errors)
        if self.grounded_arguments:
            errors += ungrounded_arguments(plan, command)
        if self.preconditions and plan.ok and not skill_errors:  # a plan of known skills
            errors += self.skills.check_preconditions(plan)
        if not finished:
            errors.append(PlanError(
                'truncated_output', 'the model reached generation.max_new_tokens (%d) '
                'before finishing the plan' % self.max_new_tokens))
        if plan.no_task and finished:
            status = 'rejected'  # the model found nothing to do: a clear no, not a failure
        else:
            if plan.ok and not errors and self.bt_xml:
                problem = unsafe_value(plan.steps)
                if problem:
                    errors.append(PlanError('bt_xml_unsafe_value', problem + ' (message.bt_xml '
                                            'is on)'))
            if plan.ok and not errors and confidence is not None \
                    and confidence < self.min_confidence:
                errors.append(PlanError(
                    'low_confidence', 'the model gave a token of this plan probability '
                    '%.4f, below validation.min_confidence (%g)'
                    % (confidence, self.min_confidence)))
            status = 'ok' if plan.ok and not errors else 'invalid'
        return PlanResult(command, status, plan, errors, confidence=confidence,
                          bt_xml=self.bt_xml,
                          bt_xml_skills=None if self.bt_xml_linear else self.skills)
