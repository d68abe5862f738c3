"""What cellgate declares on a RabbitMQ broker, and how it copes with what is already there.

Layout, per vhost (one vhost per cell is the recommended setup):

- direct exchange ``cellgate``; *topic queues* ``cellgate:TOPIC`` bound with
  key ``TOPIC`` (shared by the topic's servers: round robin) and
  ``cellgate:TOPIC:SERVER`` bound with ``TOPIC:SERVER``;
- fanout exchange ``cellgate:TOPIC:fanout``; each server binds an exclusive,
  auto-deleted queue of its own to it.

Topic queues are durable, non-exclusive and not auto-deleted, with
``x-queue-type`` (``[rpc] queue_type``: ``classic`` or ``quorum``) given at
declaration. That is the one shape that can be a quorum queue, and the one
RabbitMQ 4 still accepts for shared queues (it refuses transient
non-exclusive ones). Fanout queues belong to one server's connection, so they
are exclusive (always classic: an exclusive queue cannot be replicated).
Exchanges stay transient: they are cluster-wide metadata that survive the
loss of any one node, and every client and server re-declares them on
connecting, so a full cluster restart loses nothing that a reconnect does not
bring back (casts in quorum mode are ``mandatory``, so one published before a
server re-binds is refused, not dropped).

**Queues declared by an older cellgate or under another queue type.** The
broker refuses a declaration that does not match the existing queue (406
PRECONDITION_FAILED) and closes the channel. :func:`declare` then replaces an
existing *classic* queue only if it is empty and has no consumer (the broker
checks both atomically: ``if-unused``, ``if-empty``): that is the upgrade
from the transient queues of earlier releases, once their servers are
stopped. Anything else (a quorum queue, which RabbitMQ cannot delete
conditionally, or a queue still in use or holding messages) raises
:class:`QueueMismatch`, naming the queue and the operator's way out, and
the server retries with its usual backoff, so it starts by itself once the
queue is gone.

Names are joined with ``:``, which a topic or server name cannot contain, so
topic ``a.b`` with server ``c`` never meets topic ``a.b.c``.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from amqp.exceptions import PreconditionFailed
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from cellgate.rpc.target import Target

EXCHANGE: Final = "cellgate"
CLASSIC: Final = "classic"
QUORUM: Final = "quorum"

#: Words of the broker's 406 text that say the existing queue is classic (a
#: transient queue is always classic), the only kind that may be replaced.
_CLASSIC_CURRENT: Final = ("current is 'false'", "current is 'classic'")


class QueueMismatch(Exception):
    """A queue of that name exists with other properties and cannot be replaced now."""

    def __init__(self, *, queue: str, reason: str) -> None:
        self.queue = queue
        self.reason = reason
        super().__init__(
            f"queue {queue!r} exists with other properties ({reason}); stop the servers "
            f"using it and delete it (rabbitmqctl delete_queue -p VHOST {queue}) once empty, "
            "or set [rpc] queue_type back"
        )


def direct_exchange() -> Exchange:
    return Exchange(EXCHANGE, type="direct", durable=False)


def fanout_exchange(topic: str) -> Exchange:
    return Exchange(f"{EXCHANGE}:{topic}:fanout", type="fanout", durable=False)


def routing(target: Target) -> tuple[Exchange, str]:
    """The exchange and routing key a message for ``target`` is published with."""
    if target.fanout:
        return fanout_exchange(target.topic), ""
    key = f"{target.topic}:{target.server}" if target.server else target.topic
    return direct_exchange(), key


def topic_queue(name: str, key: str, queue_type: str) -> Queue:
    """A durable, shared queue of ``queue_type``, bound to the direct exchange."""
    return Queue(
        name,
        direct_exchange(),
        routing_key=key,
        durable=True,
        exclusive=False,
        auto_delete=False,
        queue_arguments={"x-queue-type": queue_type},
    )


def server_queues(target: Target, queue_type: str) -> list[Queue]:
    """What a server of ``target`` consumes from: its topic queues and a fanout queue."""
    topic, server = target.topic, target.server
    queues = [topic_queue(f"{EXCHANGE}:{topic}", topic, queue_type)]
    if server:
        queues.append(topic_queue(f"{EXCHANGE}:{topic}:{server}", f"{topic}:{server}", queue_type))
    queues.append(
        Queue(
            f"{EXCHANGE}:{topic}:fanout:{uuid.uuid4().hex[:12]}",
            fanout_exchange(topic),
            durable=False,
            exclusive=True,
            auto_delete=True,
        )
    )
    return queues


def declare(conn: Connection, queues: list[Queue]) -> Any:
    """Declare ``queues`` (with their exchanges and bindings); return an open channel.

    A classic queue in the way, empty and unused, is replaced (see the module
    docstring); otherwise :class:`QueueMismatch`.
    """
    channel = conn.channel()
    for q in queues:
        try:
            q(channel).declare()
            continue
        except PreconditionFailed as exc:  # the broker has closed the channel
            reason = str(exc).split(" - ", 1)[-1]
        channel = conn.channel()
        if not any(words in reason for words in _CLASSIC_CURRENT):
            raise QueueMismatch(queue=q.name, reason=reason)
        try:
            channel.queue_delete(q.name, if_unused=True, if_empty=True)
        except PreconditionFailed as exc:  # in use or not empty
            raise QueueMismatch(queue=q.name, reason=str(exc).split(" - ", 1)[-1]) from None
        q(channel).declare()
    return channel
