"""
Each command's one answer: the /action_plan message, published once, logged and counted.

:class:`Answers` is the service's only way out. A command is answered with its plan
(:meth:`Answers.send_plan`, or :meth:`Answers.send_batch` for a planned batch), without one
(:meth:`Answers.send_without_plan`: a status and its error), or refused because of the
service's state (:meth:`Answers.refuse`, worded by
:func:`~robot_llm_planner.serving.refusals.refusal`). Whatever comes first answers: a command
answered already is not answered again (a deactivation and the worker may both try), and
once :meth:`Answers.close` has run nothing is published.

Thread-safe: the worker and the node's callbacks answer at the same time.
"""

import threading
from typing import Callable, List, Sequence

from robot_llm_planner.core.command import Command, shown_command
from robot_llm_planner.core.message import plan_message
from robot_llm_planner.core.plan import PlanError
from robot_llm_planner.serving.refusals import CANCELLED, refusal
from robot_llm_planner.serving.state import Phase, StateCell
from robot_llm_planner.serving.status import Tally


class Answers:
    """Publishes every command's answer exactly once."""

    def __init__(self, publish: Callable[[dict], None], tally: Tally, logger,
                 cell: StateCell, max_command_chars: int) -> None:
        """
        Answer through ``publish`` (planner_node publishes the dict on /action_plan).

        :param publish: publishes one /action_plan message (a dict).
        :param tally: counts each answer published.
        :param logger: has ``info`` and ``error`` (an rclpy or a :mod:`logging` logger).
        :param cell: the service's state: the refusals' words and the model answers name.
        :param max_command_chars: how much of a command an unplanned answer echoes.
        """
        self._publish = publish
        self._tally = tally
        self._logger = logger
        self._cell = cell
        self.max_command_chars = max_command_chars
        self._lock = threading.Lock()  # the answered flags and publishing

    def send_plan(self, command: Command, message: dict) -> bool:
        """Publish the planner's answer; False if the command was answered already."""
        with self._lock:
            if command.answered:
                return False
            command.answered = True
            if self._cell.value.phase is Phase.CLOSED:
                self._logger.error('answer to %s lost: the node is closed' % message['id'])
                return False
            self._log(message)
            try:
                self._publish(message)
            except Exception as exc:
                self._logger.error('answer to %s not published: %s' % (message['id'], exc))
                return False
        self._tally.answered(message)
        return True

    def send_without_plan(self, command: Command, status: str, error: PlanError) -> bool:
        """Answer ``status`` with ``error``, echoing the command as the planner would."""
        shown = shown_command(command.text, self.max_command_chars)
        return self.send_plan(command, plan_message(command.request_id, shown, status,
                                                    errors=[error],
                                                    model=self._cell.value.served.model))

    def refuse(self, command: Command, moment: str) -> bool:
        """Answer a command the service will not plan, in the words its state gives."""
        return self.send_without_plan(command, *refusal(self._cell.value, moment))

    def refuse_all(self, commands: List[Command], moment: str) -> None:
        """Refuse each of ``commands`` (the queue's, at a deactivation or a failure)."""
        for command in commands:
            self.refuse(command, moment)

    def send_batch(self, batch: Sequence[Command], results: Sequence) -> None:
        """Answer a planned batch (a cancelled generation is refused) and tally it."""
        model = self._cell.value.served.model
        for command, result in zip(batch, results):
            if any(error.code == 'cancelled' for error in result.errors):
                self.refuse(command, CANCELLED)
            else:
                self.send_plan(command, result.message(command.request_id, model))
        self._tally.planned(results)

    def close(self) -> None:
        """Publish nothing from now on: the state becomes closed once no answer is going out."""
        with self._lock:
            self._cell.apply(lambda state: state.closed())

    def _log(self, message: dict) -> None:
        summary = '[%s] %s' % (message['id'], message['status'])
        if message['errors']:
            summary += ' (%s)' % ', '.join(error['code'] for error in message['errors'])
        if message['status'] in ('ok', 'invalid'):
            summary += ' in %.0f ms' % message['timing'].get('total_ms', 0.0)
        self._logger.info('%s: %s' % (summary, message['command'][:80]))
