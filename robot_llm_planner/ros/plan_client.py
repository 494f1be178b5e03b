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

The program around :class:`~robot_llm_planner.ros.client.PlanClient`; answers are printed with
:func:`~robot_llm_planner.core.answer_text.format_answer`.
"""

import argparse
import os
import sys
import time
from typing import List, Optional

import rclpy
from rclpy.exceptions import NameValidationException
from rclpy.node import Node
from robot_llm_planner.core.answer_text import format_answer
from robot_llm_planner.core.message import to_json
from robot_llm_planner.ros.client import PlanClient
from robot_llm_planner.ros.interface import COMMAND_TOPIC, init_ros, PLAN_TOPIC

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
