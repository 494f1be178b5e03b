"""
PlanClient: send commands to planner_node and collect the answers that carry their ids.

The library behind the ``plan_client`` command line (:mod:`.plan_client`), the demo, the
benchmarks and a behavior tree's node. Each command is published as ``{"id", "text"}``; the
answers (/action_plan messages) with those ids are kept, and an earlier request's answer with
the same id, still in the planner's transient-local history, is told apart by its stamp.

Threads: give ``executor`` when the caller's thread should spin the node while it waits (a
program); leave it out when an executor already spins the node in another thread.
"""

from collections import deque
import json
import os
import threading
import time
from typing import Callable, Deque, Dict, Iterable, List, Optional

from rclpy.node import Node
from robot_llm_planner.ros.interface import command_qos, COMMAND_TOPIC, plan_qos, PLAN_TOPIC
from std_msgs.msg import String

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
