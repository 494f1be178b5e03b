"""
plan_client: send commands to planner_node and print its answers.

Usage::

    plan_client "帮我拿一瓶水。" [more commands ...] [--id X] [--timeout S] [--json]
                [--topic-command /command] [--topic-plan /action_plan]
    python3 -m robot_llm_planner.ros.plan_client ...

Each command is published as ``{"id": ..., "text": ...}`` once planner_node's subscription
has matched (so the first message is not lost); the client waits for the answers carrying
those ids (answers to other clients are ignored) and prints them as tables, or as raw
/action_plan JSON lines with ``--json``. Give unique ids: the planner keeps its last answers
for late subscribers, and an earlier answer with the same id is only told apart by its stamp.

Exit status (the highest one when several commands are sent): 0 every plan ok, 1 a plan is
invalid, 2 usage error, 3 a plan has status error, 4 a command was rejected, 5 no answer
within --timeout, 6 no planner_node subscribes to the command topic, 130 interrupted.
"""

import argparse
from collections import deque
import json
import os
import sys
import threading
import time
from typing import Callable, Deque, Dict, Iterable, List, Optional
import unicodedata

import rclpy
from rclpy.exceptions import NameValidationException
from rclpy.node import Node
from robot_llm_planner.core.message import to_json
from robot_llm_planner.ros.interface import (command_qos, COMMAND_TOPIC, init_ros, plan_qos,
                                             PLAN_TOPIC)
from std_msgs.msg import String

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_ERROR = 3
EXIT_REJECTED = 4
EXIT_TIMEOUT = 5
EXIT_NO_PLANNER = 6
EXIT_INTERRUPTED = 130
STATUS_EXIT = {'ok': EXIT_OK, 'invalid': EXIT_INVALID, 'error': EXIT_ERROR,
               'rejected': EXIT_REJECTED}

DEPTH = 100
# An answer with our id stamped this long before we sent the command answers an earlier
# request with the same id (kept in the planner's transient-local history); the margin
# allows for clock differences between machines.
STALE_S = 30.0


class PlanClient:
    """
    Publish commands to planner_node and collect the answers that carry their ids.

    Give ``executor`` when the caller's thread should spin the node while waiting (the
    command line); leave it out when an executor already spins the node in another thread.
    """

    def __init__(self, node: Node, command_topic: str = COMMAND_TOPIC,
                 plan_topic: str = PLAN_TOPIC, executor=None) -> None:
        """Subscribe to ``plan_topic`` and create the ``command_topic`` publisher."""
        self.node = node
        self.executor = executor
        self.plan_topic = plan_topic
        self._condition = threading.Condition()
        self._answers: Dict[str, List[dict]] = {}
        self._received: Deque[dict] = deque(maxlen=1000)  # the answers seen, whatever the id
        self._sent_at: Dict[str, float] = {}   # id -> time.time() when published
        self._stale: Dict[str, set] = {}        # id -> stamps of answers seen before that
        self._counter = 0
        self._stem = 'plan_client-%d-%s' % (os.getpid(), os.urandom(2).hex())
        # transient local like the planner's publisher: see wait_for_planner
        self._subscription = node.create_subscription(String, plan_topic, self._on_plan,
                                                      plan_qos(DEPTH))
        self._publisher = node.create_publisher(String, command_topic, command_qos(DEPTH))

    def _on_plan(self, msg: String) -> None:
        try:
            answer = json.loads(msg.data)
            request_id = answer['id']
        except (ValueError, KeyError, TypeError, RecursionError):
            return  # not an /action_plan answer (another publisher on the topic)
        if not isinstance(request_id, str):
            return
        with self._condition:
            self._received.append(answer)
            if self._is_ours(request_id, answer.get('stamp')):
                self._answers.setdefault(request_id, []).append(answer)
                self._condition.notify_all()

    def _is_ours(self, request_id: str, stamp) -> bool:
        # The planner keeps its last answers for late subscribers: an answer with our id
        # seen before we sent it, or stamped long before, is an earlier request's.
        sent_at = self._sent_at.get(request_id)
        if sent_at is None:
            return False
        if not isinstance(stamp, (int, float)):
            return True
        return stamp not in self._stale[request_id] and stamp >= sent_at - STALE_S

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (spinning the node if the client has the executor) until ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._condition:
                if predicate():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if self.executor is None:
                    self._condition.wait(min(remaining, 0.05))
                    continue
            self.executor.spin_once(timeout_sec=min(remaining, 0.05))

    def planner_connected(self) -> bool:
        """Return True when a planner subscribes to our commands and publishes plans."""
        return (self._publisher.get_subscription_count() > 0
                and self.node.count_publishers(self.plan_topic) > 0)

    def wait_for_planner(self, timeout: float) -> bool:
        """
        Wait until a planner_node is connected both ways (False after ``timeout``).

        Once our command publisher has matched the planner's subscription, a command is not
        lost. The answer is not lost either if the planner's plan publisher matches our
        subscription only after answering: it is transient local and the subscription
        too, so the last answers are delivered on matching (and filtered by id here).
        """
        return self.wait_until(self.planner_connected, timeout)

    def new_id(self) -> str:
        """Return a request id unique to this client."""
        with self._condition:
            self._counter += 1
            return '%s-%d' % (self._stem, self._counter)

    def send(self, text: str, request_id: Optional[str] = None) -> str:
        """Publish a command as ``{"id", "text"}``; return its id."""
        request_id = request_id or self.new_id()
        data = json.dumps({'id': request_id, 'text': text}, ensure_ascii=False)
        self.send_raw(data, request_id)
        return request_id

    def send_raw(self, data: str, expect_id: Optional[str] = None) -> None:
        """Publish ``data`` as it is; collect the answers to it that carry ``expect_id``."""
        with self._condition:
            if expect_id is not None:
                self._stale[expect_id] = {answer.get('stamp') for answer in self._received
                                          if answer.get('id') == expect_id}
                self._stale[expect_id].update(answer.get('stamp') for answer in
                                              self._answers.pop(expect_id, []))
                self._sent_at[expect_id] = time.time()
        self._publisher.publish(String(data=data))

    def received(self) -> List[dict]:
        """Return the last 1000 answers seen on the plan topic, whatever their id."""
        with self._condition:
            return list(self._received)

    def answers(self, request_id: str) -> List[dict]:
        """Return the answers received so far for ``request_id``."""
        with self._condition:
            return list(self._answers.get(request_id, []))

    def wait_for_answers(self, ids: Iterable[str], timeout: float) -> Dict[str, dict]:
        """Wait for one answer per id; return those that came (first answer per id)."""
        ids = list(ids)
        self.wait_until(lambda: all(i in self._answers for i in ids), timeout)
        with self._condition:
            return {i: self._answers[i][0] for i in ids if i in self._answers}

    def destroy(self) -> None:
        """Destroy the publisher and the subscription."""
        self.node.destroy_subscription(self._subscription)
        self.node.destroy_publisher(self._publisher)


# ---------------------------------------------------------------------- printing
def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in ('W', 'F') else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + ' ' * max(0, width - _width(text))


def format_table(rows: List[List[str]]) -> List[str]:
    """Return ``rows`` as aligned text lines (CJK characters count two columns)."""
    widths = [max(_width(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ['  '.join(_pad(cell, width) for cell, width in zip(row, widths)).rstrip()
            for row in rows]


def _probability(value) -> str:
    return '%.2f' % value if isinstance(value, (int, float)) else '-'


def format_steps(steps: List[dict], descriptions: bool = True) -> List[str]:
    """
    Return an /action_plan message's steps as aligned table lines.

    Columns: number, action, target, location, the description (unless ``descriptions`` is
    False) and the step's confidence where the message has confidences.
    """
    scored = any(isinstance(step.get('confidence'), (int, float)) for step in steps)
    rows = [['#', 'action', 'target', 'location'] + ['description'] * descriptions
            + ['confidence'] * scored]
    rows += [[str(number), step.get('action', ''), step.get('target', ''),
              step.get('location', '')] + [step.get('description', '')] * descriptions
             + [_probability(step.get('confidence'))] * scored
             for number, step in enumerate(steps, start=1)]
    return format_table(rows)


def format_answer(answer: dict) -> str:
    """Return an /action_plan message as readable text."""
    lines = ['%s  [id %s]' % (answer.get('command', ''), answer.get('id', ''))]
    timing = answer.get('timing') or {}
    status = 'status: %s' % answer.get('status')
    if 'total_ms' in timing:
        status += '   latency: %.0f ms' % timing['total_ms']
        details = ['%s %.0f ms' % (name, timing[key]) for name, key in
                   (('queue', 'queue_ms'), ('inference', 'inference_ms')) if key in timing]
        if timing.get('tokens_generated'):
            details.append('%d tokens' % timing['tokens_generated'])
        if timing.get('cached'):
            details.append('cached')
        if details:
            status += ' (%s)' % ', '.join(details)
    if isinstance(answer.get('confidence'), (int, float)):
        status += '   confidence: %.2f' % answer['confidence']
    lines.append(status)
    steps = answer.get('steps') or []
    if steps:
        lines += ['  ' + line for line in format_steps(steps)]
    errors = answer.get('errors') or []
    if errors:
        lines.append('errors:')
        for error in errors:
            where = '' if error.get('step') is None else ' (step %d)' % (error['step'] + 1)
            lines.append('  - %s%s: %s' % (error.get('code'), where, error.get('message')))
    if answer.get('status') == 'invalid' and answer.get('raw_output'):
        lines.append('model output: %s' % answer['raw_output'])
    return '\n'.join(lines)


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog='plan_client', description='Send commands to planner_node and print the plans.',
        epilog='exit status: 0 ok, 1 invalid, 2 usage, 3 error, 4 rejected, 5 timeout, '
        '6 no planner_node; the highest one when several commands are sent')
    parser.add_argument('commands', nargs='+', metavar='COMMAND', help='command text(s)')
    parser.add_argument('--id', help='request id (several commands: ID-1, ID-2, ...); '
                        'default: a unique id per command')
    parser.add_argument('--timeout', type=seconds, default=60.0, metavar='S',
                        help='seconds to wait for planner_node and all answers (the model '
                        'may still be loading; default: %(default)s)')
    parser.add_argument('--json', action='store_true',
                        help='print each answer as one /action_plan JSON line')
    parser.add_argument('--topic-command', default=COMMAND_TOPIC, help='default: %(default)s')
    parser.add_argument('--topic-plan', default=PLAN_TOPIC, help='default: %(default)s')
    return parser


def _ids(args: argparse.Namespace, client: PlanClient) -> List[str]:
    if not args.id:
        return [client.new_id() for _ in args.commands]
    if len(args.commands) == 1:
        return [args.id]
    return ['%s-%d' % (args.id, number) for number in range(1, len(args.commands) + 1)]


def run(args: argparse.Namespace, node: Node, executor,
        client: Optional[PlanClient] = None) -> int:
    """Send the commands, wait for the answers, print them; return the exit status."""
    if client is None:
        client = PlanClient(node, args.topic_command, args.topic_plan, executor)
    deadline = time.monotonic() + args.timeout
    if not client.wait_for_planner(args.timeout):
        print('plan_client: no planner_node subscribes to %s and publishes %s within %g s '
              '(is it running, with the same ROS_DOMAIN_ID?)'
              % (args.topic_command, args.topic_plan, args.timeout), file=sys.stderr)
        return EXIT_NO_PLANNER
    ids = _ids(args, client)
    for request_id, text in zip(ids, args.commands):
        client.send(text, request_id)
    printed = set()
    code = EXIT_OK
    while len(printed) < len(ids):
        remaining = deadline - time.monotonic()
        client.wait_until(lambda: any(i not in printed and client.answers(i) for i in ids),
                          max(0.0, remaining))
        fresh = [i for i in ids if i not in printed and client.answers(i)]
        if not fresh:
            break
        for request_id in fresh:
            answer = client.answers(request_id)[0]
            printed.add(request_id)
            if args.json:
                print(to_json(answer), flush=True)
            else:
                print(format_answer(answer) + '\n', flush=True)
            code = max(code, STATUS_EXIT.get(answer.get('status'), EXIT_ERROR))
    for request_id, text in zip(ids, args.commands):
        if request_id not in printed:
            print('plan_client: no answer to %s (%s) within %g s'
                  % (request_id, text, args.timeout), file=sys.stderr)
            code = EXIT_TIMEOUT
    return code


def seconds(text: str) -> float:
    """Read a positive duration for argparse, in seconds."""
    value = float(text)  # a ValueError is reported by argparse as an invalid value
    if not value > 0:
        raise argparse.ArgumentTypeError('must be a positive number of seconds, got %s' % text)
    return value


def main(argv: Optional[List[str]] = None) -> int:
    """Run plan_client; return its exit status."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.utilities import remove_ros_args
    argv = list(sys.argv if argv is None else argv)
    try:
        args = build_parser().parse_args(remove_ros_args(argv)[1:])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except RuntimeError as exc:  # rclpy's RCLError: malformed --ros-args
        print('plan_client: %s' % str(exc).strip(), file=sys.stderr)
        return EXIT_USAGE
    context = rclpy.Context()
    node = None
    try:
        try:
            # a bad --ros-args, topic name or remapping is a usage error, not an invalid plan
            init_ros(argv, context)
            node = Node('plan_client_%d' % os.getpid(), context=context)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            client = PlanClient(node, args.topic_command, args.topic_plan, executor)
        except (RuntimeError, ValueError, NameValidationException) as exc:
            print('plan_client: %s: %s' % (type(exc).__name__, str(exc).strip()),
                  file=sys.stderr)
            return EXIT_USAGE
        return run(args, node, executor, client)
    except KeyboardInterrupt:
        print('plan_client: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if node is not None:
            node.destroy_node()
        context.try_shutdown()


if __name__ == '__main__':
    sys.exit(main())
